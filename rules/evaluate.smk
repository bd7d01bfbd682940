# Evaluation on every original point of the val split: one job per method evaluates all its
# fine-tuned models (every protocol and seed), each into its own run folder.


rule evaluate:
    input:
        unpack(step_inputs("evaluate")),
    output:
        **step_outputs("evaluate"),
    params:
        fields=step_params("evaluate"),
    log:
        f"{LOGS}/evaluate/{{method}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{method}}.tsv"
    threads: PARAMS.train.threads
    priority: 15
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d evaluate --config $PRETRAIN3D_CONFIG --method {wildcards.method} --model {input.models}"
        " > {log} 2>&1"
