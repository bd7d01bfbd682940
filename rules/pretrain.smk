# 2D feature cache and pre-training (scratch = a seeded random initialisation, saved the same way).
# Priorities put the long pre-train -> fine-tune chains first; short jobs (probe, evaluate, the
# real-data check) then fill the idle core at the end instead of a lone long job.


rule cache_features:
    input:
        PROCESSED_ROOT,
    output:
        directory(FEATURES_DIR),
    params:
        config=RESOLVED_CONFIG,
        teacher=section("teacher"),
    log:
        "logs/cache_features.log",
    benchmark:
        "benchmarks/cache_features.tsv"
    threads: workflow.cores
    priority: 20
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d features --config {params.config} --no-progress > {log} 2>&1"


rule pretrain:
    input:
        pretrain_inputs,
    output:
        backbone="results/pretrain/{method}/seed{seed}/backbone.pt",
    params:
        config=RESOLVED_CONFIG,
        sections=pretrain_params,
    log:
        "logs/pretrain/{method}-seed{seed}.log",
    benchmark:
        "benchmarks/pretrain/{method}-seed{seed}.tsv"
    threads: PARAMS.train.threads
    priority: 20
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d pretrain --config {params.config} --method {wildcards.method} --seed {wildcards.seed}"
        " --out-dir results/pretrain/{wildcards.method}/seed{wildcards.seed} --no-progress > {log} 2>&1"


rule ponderv2_real_check:
    # PonderV2 on real RGB-D (the 7-Scenes fixture): a short run and a held-out view for the report.
    # A missing fixture is a recorded skip (render.json says why), so the DAG never depends on it.
    output:
        png="results/ponderv2_real/render.png",
        json="results/ponderv2_real/render.json",
    params:
        config=RESOLVED_CONFIG,
        sections=lambda wildcards: {"model": config["model"], "pretrain": config["pretrain"],
                                    "sevenscenes": config["data"]["sevenscenes"],
                                    "grid_size": config["train"]["grid_size"]},
    log:
        "logs/ponderv2_real_check.log",
    benchmark:
        "benchmarks/ponderv2_real_check.tsv"
    threads: PARAMS.train.threads
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d ponderv2-real-check --config {params.config} --out-dir results/ponderv2_real --no-progress"
        " > {log} 2>&1"
