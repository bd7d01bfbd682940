# Data: embedded dataset generation and preprocessing into the processed-scene contract.


if PARAMS.data.dataset == "synthetic":

    rule generate_synthetic:
        output:
            directory(RAW_ROOT),
        params:
            config=RESOLVED_CONFIG,
            synthetic=section("data", "synthetic"),
        log:
            "logs/generate_synthetic.log",
        benchmark:
            "benchmarks/generate_synthetic.tsv"
        threads: workflow.cores
        conda:
            "../envs/cpu.yaml"
        shell:
            "pretrain3d generate --config {params.config} > {log} 2>&1"


rule preprocess:
    input:
        RAW_ROOT,
    output:
        directory(PROCESSED_ROOT),
    params:
        config=RESOLVED_CONFIG,
        dataset=section("data", "dataset"),
        num_classes=section("data", "num_classes"),
    log:
        "logs/preprocess.log",
    benchmark:
        "benchmarks/preprocess.tsv"
    threads: workflow.cores
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d preprocess --config {params.config} > {log} 2>&1"


rule preprocess_sevenscenes:
    # Optional target (real RGB-D, no labels): snakemake --cores all data/processed/sevenscenes
    input:
        PARAMS.data.sevenscenes.root,
    output:
        directory("data/processed/sevenscenes"),
    params:
        config=RESOLVED_CONFIG,
        sevenscenes=section("data", "sevenscenes"),
    log:
        "logs/preprocess_sevenscenes.log",
    benchmark:
        "benchmarks/preprocess_sevenscenes.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d preprocess sevenscenes --config {params.config} --raw-root {input}"
        " --out-root {output}/redkitchen > {log} 2>&1"
