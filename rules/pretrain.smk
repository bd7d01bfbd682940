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
    threads: PARAMS.data.workers
    priority: 20
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
    threads: PARAMS.train.threads
    priority: 20
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d pretrain --config $PRETRAIN3D_CONFIG --method {wildcards.method} --seed {wildcards.seed}"
        " --out-dir $(dirname {output.backbone}) --no-progress > {log} 2>&1"


rule ponderv2_real_check:
    # PonderV2 on real RGB-D (the 7-Scenes fixture): a short run and a held-out view for the report.
    # A missing fixture is a recorded skip (render.json says why).
    input:
        unpack(step_inputs("ponderv2_real_check")),
        unpack(_real_check_inputs),
    output:
        **step_outputs("ponderv2_real_check"),
    params:
        fields=step_params("ponderv2_real_check"),
    log:
        f"{LOGS}/ponderv2_real_check.log",
    benchmark:
        f"{BENCH}/ponderv2_real_check.tsv"
    threads: PARAMS.train.threads
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d ponderv2-real-check --config $PRETRAIN3D_CONFIG --out-dir $(dirname {output.png}) --no-progress"
        " > {log} 2>&1"
