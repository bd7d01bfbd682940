# Fine-tuning per method, protocol and seed, from that method's backbone (scratch: random init).


rule finetune:
    input:
        data=PROCESSED_ROOT,
        backbone="results/pretrain/{method}/seed{seed}/backbone.pt",
        benchmark_file=protocol_files,
    output:
        model="results/runs/{method}/{protocol}/seed{seed}/model.pt",
        train_log="results/runs/{method}/{protocol}/seed{seed}/train_log.json",
        config="results/runs/{method}/{protocol}/seed{seed}/config.yaml",
    params:
        config=RESOLVED_CONFIG,
        model=section("model"),
        train=section("train"),
        protocols=protocol_params,
        num_classes=section("data", "num_classes"),
    log:
        "logs/finetune/{method}-{protocol}-seed{seed}.log",
    benchmark:
        "benchmarks/finetune/{method}-{protocol}-seed{seed}.tsv"
    threads: PARAMS.train.threads
    resources:
        gpu=0,
    priority: 10
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d finetune --config {params.config} --method {wildcards.method} --seed {wildcards.seed}"
        " --protocol {wildcards.protocol} --init-backbone {input.backbone}"
        " --out-dir results/runs/{wildcards.method}/{wildcards.protocol}/seed{wildcards.seed}"
        " --no-progress > {log} 2>&1"
