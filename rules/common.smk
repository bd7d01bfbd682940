# Shared helpers: config validation, the resolved config file every job reads, MLflow parent run.
import os

from pretrain3d.atomic import write_text
from pretrain3d.config import config_hash, dump_yaml, validate_config

PARAMS = validate_config(config, source="Snakemake config (params.yaml + --configfile/--config)")
config = PARAMS.model_dump(mode="json")

# Every job loads this one file through the same pydantic model (so overlays and --config
# overrides reach the stages). It is rewritten only when its content changes; rerun triggers come
# from each rule's `params:` (the config sections the rule depends on), not from this file.
RESOLVED_CONFIG = ".pretrain3d/config.resolved.yaml"
_resolved = dump_yaml(PARAMS)
if not os.path.exists(RESOLVED_CONFIG) or open(RESOLVED_CONFIG).read() != _resolved:
    os.makedirs(os.path.dirname(RESOLVED_CONFIG), exist_ok=True)
    write_text(RESOLVED_CONFIG, _resolved)

RAW_ROOT = PARAMS.data.raw_root
PROCESSED_ROOT = PARAMS.data.processed_root
METHODS = PARAMS.experiment.methods
PROTOCOLS = PARAMS.experiment.protocols
SEEDS = PARAMS.experiment.seeds
REPORT_FILES = ["results/summary.json", "results/report.md"]
_T = PARAMS.teacher
FEATURES_DIR = f"{_T.cache_root}/{_T.name}-{_T.layer}-{_T.input_height}x{_T.input_width}"


wildcard_constraints:
    method="|".join(METHODS + PARAMS.experiment.pretrain_only),
    protocol="|".join(PROTOCOLS),
    seed=r"\d+",


def section(*keys):
    """A config section as a rule param, so changing it reruns exactly the rules that use it."""
    node = config
    for k in keys:
        node = node[k]
    return node


def metrics_files():
    return expand(
        "results/runs/{method}/{protocol}/seed{seed}/metrics.json",
        method=METHODS,
        protocol=PROTOCOLS,
        seed=SEEDS,
    )


def pretrain_inputs(wildcards):
    """scratch needs nothing but the seed; PPKT needs the 2D feature cache; PonderV2 the RGB-D frames."""
    if wildcards.method == "scratch":
        return []
    if wildcards.method == "ppkt":
        return [PROCESSED_ROOT, FEATURES_DIR]
    return [PROCESSED_ROOT]


def pretrain_params(wildcards):
    """The config sections a pre-training job depends on (scratch: only the model)."""
    if wildcards.method == "scratch":
        return {"model": config["model"]}
    out = {
        "model": config["model"],
        "pretrain": config["pretrain"],
        "grid_size": config["train"]["grid_size"],
    }
    if wildcards.method == "ppkt":
        out["teacher"] = config["teacher"]
    return out


def protocol_files(wildcards):
    """The data-efficient benchmark file a fine-tuning job reads, when configured: data.scannet.la_file
    (protocol la) or lr_file (lr). An input, so a newer file reruns exactly the jobs that read it."""
    key = {"la": "la_file", "lr": "lr_file"}.get(wildcards.protocol)
    path = config["data"]["scannet"][key] if key else None
    return [path] if path else []


def protocol_params(wildcards):
    """The protocols section, plus data.scannet.<la|lr>_file for the la/lr jobs that read one. Jobs
    without a benchmark file (every job of the default config) keep exactly their recorded params."""
    files = protocol_files(wildcards)
    if not files:
        return config["protocols"]
    return {**config["protocols"], f"data.scannet.{wildcards.protocol}_file": files[0]}


PONDER_METHODS = [m for m in METHODS if m.startswith("ponderv2")]
# PonderV2's visual checks in the report: held-out renders of every PonderV2 backbone, and the
# real-data check (7-Scenes; a recorded skip where the fixture is absent). The check is always part
# of the graph, so that DVC's static stage list and Snakemake's DAG agree for every config.
REAL_CHECK = ["results/ponderv2_real/render.png", "results/ponderv2_real/render.json"]

# The report re-renders a held-out view from the first seed's PonderV2 backbone(s) (renderer weights
# are saved in backbone.pt) into results/renders/, a declared output of the report job.
# Methods in experiment.pretrain_only are pre-trained once (first seed) only for this.
RENDER_BACKBONES = expand("results/pretrain/{method}/seed{seed}/backbone.pt", seed=SEEDS[:1],
                          method=PONDER_METHODS + [m for m in PARAMS.experiment.pretrain_only if m.startswith("ponderv2")])
PRETRAIN_ONLY = expand("results/pretrain/{method}/seed{seed}/backbone.pt", method=PARAMS.experiment.pretrain_only,
                       seed=SEEDS[:1])


OWN_PARENT = []  # the parent run this invocation created (and so must end)


def start_pipeline_run():
    if not PARAMS.tracking.enabled:
        return
    from pretrain3d.stages.common import job_tags
    from pretrain3d.tracking import mlflow_runs

    tags = job_tags(PARAMS, "pipeline")
    if os.environ.get(mlflow_runs.PARENT_ENV):
        return  # an outer invocation owns the parent
    if os.environ.get("DVC_STAGE"):
        # dvc repro runs one Snakemake per stage: they share one parent, found by pipeline_key.
        run_id = mlflow_runs.find_or_start_dvc_parent(
            PARAMS.tracking, tags["pipeline_key"], f"dvc-{PARAMS.experiment.name}", tags)
    else:
        run_id = mlflow_runs.start_parent(PARAMS.tracking, f"pipeline-{PARAMS.experiment.name}", tags)
        OWN_PARENT.append(run_id)
    os.environ[mlflow_runs.PARENT_ENV] = run_id  # inherited by every job's process


def end_pipeline_run(status):
    from pretrain3d.tracking import mlflow_runs

    for run_id in OWN_PARENT:
        mlflow_runs.end_parent(PARAMS.tracking, run_id, status)
