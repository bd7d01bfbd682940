# Report: results/summary.json and results/report.md (mean ± std per method).


rule report:
    input:
        metrics_files(),
    output:
        summary="results/summary.json",
        report="results/report.md",
    params:
        config=RESOLVED_CONFIG,
        experiment=section("experiment"),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d report --config {params.config} --metrics {input} --out-dir results > {log} 2>&1"
