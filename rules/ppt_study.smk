# The Point Prompt Training paper's multi-dataset experiment (issue 12): per variant and seed, train on the multi_dataset
# datasets and score each one's val split. No jobs without multi_dataset.datasets.


rule ppt_study:
    input:
        unpack(step_inputs("ppt_study")),
    output:
        **step_outputs("ppt_study"),
    log:
        f"{LOGS}/ppt_study/{{variant}}-seed{{seed}}.log",
    params:
        fields=step_params("ppt_study"),
    benchmark:
        f"{BENCH}/ppt_study/{{variant}}-seed{{seed}}.tsv"
    threads: PARAMS.train.threads
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d multi-dataset-study --config $PRETRAIN3D_CONFIG --variant {wildcards.variant} --seed {wildcards.seed}"
        " --out-dir $(dirname {output.metrics}) --no-progress > {log} 2>&1"
