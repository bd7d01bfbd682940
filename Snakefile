# pretrain3d: one dependency graph from raw data to the report.
#   snakemake --cores all                      the embedded benchmark (params.yaml)
#   snakemake --cores all --configfile configs/X.yaml    a real-scale overlay
# The config is validated by the same pydantic model every CLI stage uses (rules/common.smk); the
# steps' inputs, outputs and params come from pretrain3d.workflow.steps, as does dvc.yaml.

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"
include: "rules/queries.smk"
include: "rules/ppt_study.smk"
include: "rules/references.smk"
include: "rules/report.smk"


onstart:
    start_pipeline_run()


onsuccess:
    end_pipeline_run("FINISHED")
    record_in_dvc()


onerror:
    end_pipeline_run("FAILED")


rule all:
    default_target: True
    input:
        BENCHMARK_REPORT_FILES,
        REPORT_FILES,
