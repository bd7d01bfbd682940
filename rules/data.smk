# Data: embedded dataset generation and preprocessing into the processed-scene contract.
# A user-provided raw dataset (no generation, no download) is only an input: nothing here writes it.


if PARAMS.data.dataset == "synthetic" and not PARAMS.data.download.enabled:

    rule generate_synthetic:
        output:
            **step_outputs("generate_synthetic"),
        input:
            unpack(step_inputs("generate_synthetic")),
        params:
            fields=step_params("generate_synthetic"),
        log:
            "logs/generate_synthetic.log",
        benchmark:
            "benchmarks/generate_synthetic.tsv"
        threads: PARAMS.data.workers
        priority: 25  # before the jobs that need no data (real-data checks), which would hold its cores
        conda:
            "../envs/cpu.yaml"
        shell:
            "pretrain3d generate --config $PRETRAIN3D_CONFIG > {log} 2>&1"


rule preprocess:
    input:
        unpack(step_inputs("preprocess")),
    output:
        **step_outputs("preprocess"),
    params:
        fields=step_params("preprocess"),
    log:
        "logs/preprocess.log",
    benchmark:
        "benchmarks/preprocess.tsv"
    threads: PARAMS.data.workers
    priority: 25
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d preprocess --config $PRETRAIN3D_CONFIG > {log} 2>&1"


# The other datasets of a multi-dataset run (multi_dataset.datasets), generated when embedded: one
# rule per dataset, since each has its own configured processed_root.
for _dataset in W.extra_datasets(PARAMS):

    rule:
        name:
            f"dataset_data_{_dataset}"
        input:
            **job_inputs("dataset_data", dataset=_dataset),
        output:
            **job_outputs("dataset_data", dataset=_dataset),
        params:
            fields=job_params("dataset_data", dataset=_dataset),
            dataset=_dataset,
        log:
            f"logs/dataset_data-{_dataset}.log",
        benchmark:
            f"benchmarks/dataset_data-{_dataset}.tsv"
        threads: PARAMS.data.workers
        priority: 25
        conda:
            "../envs/cpu.yaml"
        shell:
            "pretrain3d dataset-data {params.dataset} --config $PRETRAIN3D_CONFIG > {log} 2>&1"


rule preprocess_sevenscenes:
    # Optional target (real RGB-D, no labels): snakemake --cores all data/processed/sevenscenes
    input:
        PARAMS.data.sevenscenes.root,
    output:
        directory("data/processed/sevenscenes"),
    params:
        sevenscenes=config["data"]["sevenscenes"],
    log:
        "logs/preprocess_sevenscenes.log",
    benchmark:
        "benchmarks/preprocess_sevenscenes.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d preprocess sevenscenes --config $PRETRAIN3D_CONFIG --raw-root {input}"
        " --out-root {output}/redkitchen > {log} 2>&1"
