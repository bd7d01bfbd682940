# Evaluation on every original point of the val split.


rule evaluate:
    input:
        unpack(step_inputs("evaluate")),
    output:
        **step_outputs("evaluate"),
    params:
        fields=step_params("evaluate"),
    log:
        f"{LOGS}/evaluate/{{method}}-{{protocol}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{method}}-{{protocol}}-seed{{seed}}.tsv"
    threads: PARAMS.train.threads
    priority: 5
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d evaluate --config $PRETRAIN3D_CONFIG --model {input.model} --method {wildcards.method}"
        " --protocol {wildcards.protocol} --seed {wildcards.seed}"
        " --out-dir $(dirname {output.metrics}) > {log} 2>&1"
