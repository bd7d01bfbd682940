# Report: results/<experiment>/summary.json and report.md (mean ± std per method). The method comparison
# alone (results/<experiment>/benchmark/) is written first, as soon as every run is evaluated: the
# priorities put its jobs ahead of the studies, scene queries and real-data checks.


rule benchmark_report:
    input:
        unpack(step_inputs("benchmark_report")),
    output:
        **step_outputs("benchmark_report"),
    params:
        fields=step_params("benchmark_report"),
    log:
        f"{LOGS}/benchmark_report.log",
    benchmark:
        f"{BENCH}/benchmark_report.tsv"
    priority: 30
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d report --config $PRETRAIN3D_CONFIG --metrics {input.metrics} --references {input.references}"
        " --no-tracking --out-dir $(dirname {output.summary}) > {log} 2>&1"


rule report:
    input:
        unpack(step_inputs("report")),
    output:
        **step_outputs("report"),
    params:
        fields=step_params("report"),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "pretrain3d report --config $PRETRAIN3D_CONFIG --metrics {input.metrics} --references {input.references}"
        " --renders {input.backbones} --real-check {input.real} --queries {input.queries} --study {input.ppt_study} --out-dir $(dirname {output.summary}) > {log} 2>&1"
