# Report: results/<experiment>/summary.json and report.md (mean ± std per method).


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
