# Evaluation on every original point of the val split.


rule evaluate:
    input:
        data=PROCESSED_ROOT,
        model="results/runs/{method}/{protocol}/seed{seed}/model.pt",
    output:
        metrics="results/runs/{method}/{protocol}/seed{seed}/metrics.json",
        confusion="results/runs/{method}/{protocol}/seed{seed}/confusion.png",
        render="results/runs/{method}/{protocol}/seed{seed}/render.png",
    params:
        config=RESOLVED_CONFIG,
        grid_size=section("train", "grid_size"),
        eval=section("eval"),
    log:
        "logs/evaluate/{method}-{protocol}-seed{seed}.log",
    benchmark:
        "benchmarks/evaluate/{method}-{protocol}-seed{seed}.tsv"
    threads: PARAMS.train.threads
    priority: 5
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d evaluate --config {params.config} --model {input.model} --method {wildcards.method}"
        " --protocol {wildcards.protocol} --seed {wildcards.seed}"
        " --out-dir results/runs/{wildcards.method}/{wildcards.protocol}/seed{wildcards.seed} > {log} 2>&1"
