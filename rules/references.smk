# Paper references: MLflow reference runs (run_type=reference, same metric keys as our
# evaluations) and results/references.json for the report. Re-running replaces nothing unchanged.


rule log_references:
    input:
        unpack(step_inputs("log_references")),
    output:
        **step_outputs("log_references"),
    params:
        fields=step_params("log_references"),
    log:
        "logs/log_references.log",
    benchmark:
        "benchmarks/log_references.tsv"
    priority: 15  # the early method-comparison report waits for it
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d log-references --config $PRETRAIN3D_CONFIG --references src/pretrain3d/tracking/paper_references.yaml"
        " --out {output.references} > {log} 2>&1"
