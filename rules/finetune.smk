# Fine-tuning per method, protocol and seed, from that method's backbone (scratch: random init).


rule finetune:
    input:
        unpack(step_inputs("finetune")),
    output:
        **step_outputs("finetune"),
    params:
        fields=step_params("finetune"),
    log:
        f"{LOGS}/finetune/{{method}}-{{protocol}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/finetune/{{method}}-{{protocol}}-seed{{seed}}.tsv"
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    priority: 10
    conda:
        "../envs/cpu.yaml"
    shell:
        f"{TRAIN_LAUNCH} finetune --config $PRETRAIN3D_CONFIG --method {{wildcards.method}} --seed {{wildcards.seed}}"
        f" --protocol {{wildcards.protocol}} --init-backbone {{input.backbone}}"
        f" --out-dir $(dirname {{output.model}})"
        f" --no-progress > {{log}} 2>&1"
