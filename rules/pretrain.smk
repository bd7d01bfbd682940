# 2D feature cache and pre-training (scratch = a seeded random initialisation, saved the same way).
# Priorities put the long pre-train -> fine-tune chains first; short jobs (probe, evaluate, the
# real-data check) then fill the idle core at the end instead of a lone long job.


rule cache_features:
    input:
        unpack(step_inputs("cache_features")),
    output:
        **step_outputs("cache_features"),
    params:
        fields=step_params("cache_features"),
    log:
        "logs/cache_features.log",
    benchmark:
        "benchmarks/cache_features.tsv"
    threads: PARAMS.train.threads  # torch threads of the teacher (stages/features.py)
    priority: 22  # ahead of the pre-training jobs: PPKT's waits for it
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d features --config $PRETRAIN3D_CONFIG --no-progress > {log} 2>&1"


rule pretrain:
    input:
        unpack(step_inputs("pretrain")),
    output:
        **step_outputs("pretrain"),
    params:
        fields=step_params("pretrain"),
    log:
        f"{LOGS}/pretrain/{{method}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{method}}-seed{{seed}}.tsv"
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,
    priority: 20
    conda:
        "../envs/cpu.yaml"
    shell:
        f"{TRAIN_LAUNCH} pretrain --config $PRETRAIN3D_CONFIG --method {{wildcards.method}} --seed {{wildcards.seed}}"
        f" --out-dir $(dirname {{output.backbone}}) --no-progress > {{log}} 2>&1"


rule real_check:
    # A method's short run on real RGB-D (the 7-Scenes fixture) and its figure for the report
    # (methods.registry real_check). A missing fixture is a recorded skip (render.json says why).
    input:
        unpack(step_inputs("real_check")),
        unpack(_real_check_inputs),
    output:
        **step_outputs("real_check"),
    params:
        fields=step_params("real_check"),
    log:
        f"{LOGS}/real_check/{{method}}.log",
    benchmark:
        f"{BENCH}/real_check/{{method}}.tsv"
    threads: PARAMS.train.threads
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d real-check --config $PRETRAIN3D_CONFIG --method {wildcards.method} --out-dir $(dirname {output.png})"
        " --no-progress > {log} 2>&1"
