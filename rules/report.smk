# Report: results/summary.json and results/report.md (mean ± std per method).


rule report:
    input:
        metrics=metrics_files(),
        references="results/references.json",
        backbones=RENDER_BACKBONES,
        pretrain_only=PRETRAIN_ONLY,
        real=REAL_CHECK,
    output:
        summary="results/summary.json",
        report="results/report.md",
        renders=directory("results/renders"),
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
        "pretrain3d report --config {params.config} --metrics {input.metrics} --references {input.references}"
        " --renders {input.backbones} --real-check {input.real} --out-dir results > {log} 2>&1"
