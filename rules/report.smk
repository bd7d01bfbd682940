# Report: results/<experiment>/summary.json and report.md (mean ± std per method).


rule report:
    input:
        unpack(step_inputs("report")),
    output:
        **step_outputs("report"),
    params:
        fields=step_params("report"),
    log:
        LOGS + "/report.log",
    benchmark:
        BENCH + "/report.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d report --config {RESOLVED_CONFIG} --metrics {input.metrics} --references {input.references}"
        " --renders {input.backbones} --real-check {input.real} --out-dir {RESULTS} > {log} 2>&1"
