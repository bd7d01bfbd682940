# Fine-tuning: supervised semantic segmentation per method and seed.


rule finetune:
    input:
        PROCESSED_ROOT,
    output:
        model="results/runs/{method}/seed{seed}/model.pt",
        train_log="results/runs/{method}/seed{seed}/train_log.json",
        config="results/runs/{method}/seed{seed}/config.yaml",
    params:
        config=RESOLVED_CONFIG,
        model=section("model"),
        train=section("train"),
        num_classes=section("data", "num_classes"),
    log:
        "logs/finetune/{method}-seed{seed}.log",
    benchmark:
        "benchmarks/finetune/{method}-seed{seed}.tsv"
    threads: PARAMS.train.threads
    resources:
        gpu=0,
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d finetune --config {params.config} --method {wildcards.method} --seed {wildcards.seed}"
        " --out-dir results/runs/{wildcards.method}/seed{wildcards.seed} --no-progress > {log} 2>&1"
