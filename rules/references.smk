# Paper reference numbers: MLflow reference runs (run_type=reference, same metric keys as our
# evaluations) and results/references.json for the report. Re-running replaces nothing unchanged.


rule log_references:
    input:
        "src/pretrain3d/tracking/paper_references.yaml",
    output:
        "results/references.json",
    params:
        config=RESOLVED_CONFIG,
        tracking=section("tracking"),
    log:
        "logs/log_references.log",
    benchmark:
        "benchmarks/log_references.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d log-references --config {params.config} --references {input} --out {output} > {log} 2>&1"
