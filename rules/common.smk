# Shared helpers: config validation, the step declarations every rule wires, MLflow parent run.
# Inputs, outputs and params of every rule come from pretrain3d.workflow.steps, which also generates
# dvc.yaml: one graph, two front ends.
import os

from pretrain3d.config import config_hash, dump_yaml, validate_config
from pretrain3d.workflow import steps as W
from pretrain3d.workflow.sync import write_resolved_config

PARAMS = validate_config(config, source="Snakemake config (params.yaml + --configfile/--config)")
config = PARAMS.model_dump(mode="json")
W.check_runnable(PARAMS, source="Snakemake config (params.yaml + --configfile/--config)")
if os.environ.get("DVC_STAGE"):
    from pretrain3d.workflow.sync import dvc_yaml_is_current

    if not dvc_yaml_is_current():
        raise WorkflowError("dvc.yaml is not what `pretrain3d dvc-yaml` makes of params.yaml (experiment.methods, "
                            "seeds or protocols changed?): run `pretrain3d dvc-yaml`, then `dvc repro` again")

# Every job reads the resolved config (so overlays and --config overrides reach the stages) from a
# content-addressed file that onstart writes atomically: a dry run or --lint writes nothing, and a
# second invocation with another config can never change the config of a running one. Jobs get the
# path from the environment (declared in envvars, so cluster executors pass it on): as a param it
# would be a rerun trigger for every job, and the params below are the exact triggers.
RESOLVED_CONFIG = f".pretrain3d/config-{config_hash(PARAMS)}.yaml"
os.environ["PRETRAIN3D_CONFIG"] = RESOLVED_CONFIG
# Every CLI job writes where its time went (startup, imports, tracking, data, compute; per step
# data/forward/backward) here; scripts/profile_run.py prints the table.
os.environ.setdefault("PRETRAIN3D_PROFILE_DIR", f"logs/{PARAMS.experiment.name}/profile")


envvars:
    "PRETRAIN3D_CONFIG",
    "PRETRAIN3D_PROFILE_DIR",


# Training jobs (pretrain, finetune): one process, or torchrun's N processes on the node
# (train.distributed.nproc_per_node; engine/distributed.py), each with train.threads threads.
_NPROC = PARAMS.train.distributed.nproc_per_node
TRAIN_LAUNCH = "pretrain3d" if _NPROC == 1 else (
    f"torchrun --standalone --local-addr=127.0.0.1 --nproc_per_node={_NPROC} --max-restarts=0 -m pretrain3d.cli")
TRAIN_THREADS = PARAMS.train.threads * _NPROC
TRAIN_GPUS = _NPROC if PARAMS.train.device == "cuda" else 0
# What a cluster executor asks for a training job (cluster section; partition/account: profiles/slurm).
TRAIN_RESOURCES = {"gpu": TRAIN_GPUS, "mem_mb": PARAMS.cluster.train_mem_mb, "runtime": PARAMS.cluster.train_runtime}
if TRAIN_GPUS:
    TRAIN_RESOURCES["cpus_per_gpu"] = PARAMS.cluster.cpus_per_gpu
    if PARAMS.cluster.gpu_model:
        TRAIN_RESOURCES["gpu_model"] = PARAMS.cluster.gpu_model

RESULTS = W.results_dir(PARAMS)
LOGS = f"logs/{PARAMS.experiment.name}"  # per experiment, like the results
BENCH = f"benchmarks/{PARAMS.experiment.name}"
REPORT_FILES = list(W.report_outputs(PARAMS).values())
BENCHMARK_REPORT_FILES = list(W.benchmark_report_outputs(PARAMS).values())


wildcard_constraints:
    method="|".join(W.pretrained_methods(PARAMS)),
    protocol="|".join(PARAMS.experiment.protocols),
    seed=r"\d+",
    source="|".join(W.query_sources(PARAMS)) or "none",
    variant="|".join(W.study_variants(PARAMS)) or "none",


def step_outputs(name):
    """The step's outputs as Snakemake patterns ({method}, {seed}, ...), folders marked directory()."""
    step = W.STEPS[name]
    outs = step.outputs(PARAMS, {k: "{%s}" % k for k in step.wildcards})
    return {k: directory(v) if k in step.directory_outputs else v for k, v in outs.items()}


# Code paths are relative to the repository (the Snakefile's folder), also under --directory elsewhere.
WORKFLOW_ROOT = os.path.dirname(os.path.abspath(workflow.main_snakefile))


def step_inputs(name):
    """Input function: the step's files plus the code it runs (editing that code reruns the job)."""
    step = W.STEPS[name]

    def inputs(wildcards):
        w = dict(wildcards.items())
        code = [os.path.relpath(os.path.join(WORKFLOW_ROOT, f)) for f in step.code(w)]
        return {**step.inputs(PARAMS, w), "code": code}

    return inputs


def job_outputs(name, **w):
    """Outputs of one job of a step whose outputs are config paths, not patterns (one rule per job)."""
    step = W.STEPS[name]
    outs = step.outputs(PARAMS, w)
    return {k: directory(v) if k in step.directory_outputs else v for k, v in outs.items()}


def job_inputs(name, **w):
    step = W.STEPS[name]
    code = [os.path.relpath(os.path.join(WORKFLOW_ROOT, f)) for f in step.code(w)]
    return {**step.inputs(PARAMS, w), "code": code}


def job_params(name, **w):
    return W.STEPS[name].field_values(PARAMS, w)


def step_params(name):
    """The config fields the step reads, {dotted key: value}: Snakemake's params trigger."""
    step = W.STEPS[name]
    return lambda wildcards: step.field_values(PARAMS, dict(wildcards.items()))


def _real_check_inputs(wildcards):
    # The fixture is an input only where it exists: when it appears, Snakemake's input trigger reruns
    # the check (it was a recorded skip before). DVC sees data.sevenscenes.root as a param only.
    root = PARAMS.data.sevenscenes.root
    return {"fixture": [root] if os.path.isdir(root) else []}


def _query_backbone_arg(wildcards):
    # --backbone for a method source (its pre-training run); baselines have none
    inputs = W.STEPS["scene_queries"].inputs(PARAMS, dict(wildcards.items()))
    return f"--backbone {inputs['backbone']}" if "backbone" in inputs else ""


OWN_PARENT = []  # the parent run this invocation created (and so must end)


def start_pipeline_run():
    write_resolved_config(RESOLVED_CONFIG, dump_yaml(PARAMS))
    if not PARAMS.tracking.enabled:
        return
    from pretrain3d.stages.common import job_params as flat_params, job_tags
    from pretrain3d.tracking import mlflow_runs

    tags = job_tags(PARAMS, "pipeline")
    if os.environ.get(mlflow_runs.PARENT_ENV):
        return  # an outer invocation owns the parent
    name = PARAMS.experiment.name
    if os.environ.get("DVC_STAGE"):
        # dvc repro runs one Snakemake per stage: they share one parent, found by pipeline_key.
        run_id = mlflow_runs.find_or_start_dvc_parent(
            PARAMS.tracking, tags["pipeline_key"], mlflow_runs.parent_run_name("dvc", name), tags)
        mlflow_runs.reopen_parent(PARAMS.tracking, run_id)
    elif os.environ.get(mlflow_runs.PIPELINE_ID_ENV):
        # a named invocation (e.g. resumed, or jobs started by hand beside it) joins that id's parent
        pid = os.environ[mlflow_runs.PIPELINE_ID_ENV]
        run_id = mlflow_runs.find_or_create_parent(
            PARAMS.tracking, f"pipeline:{pid}", f"pipeline/{name}/{pid}",
            {**tags, "launcher": "snakemake", "pipeline_id": pid}, params=flat_params(PARAMS))
        mlflow_runs.reopen_parent(PARAMS.tracking, run_id)
    else:
        run_id = mlflow_runs.start_parent(PARAMS.tracking, mlflow_runs.parent_run_name("pipeline", name),
                                          {**tags, "launcher": "snakemake"}, params=flat_params(PARAMS))
    OWN_PARENT.append(run_id)  # ended by this invocation (under DVC: this stage; the next one reopens it)
    os.environ[mlflow_runs.PARENT_ENV] = run_id  # inherited by every job's process


def end_pipeline_run(status):
    from pretrain3d.tracking import mlflow_runs

    for run_id in OWN_PARENT:
        mlflow_runs.end_parent(PARAMS.tracking, run_id, status)


def record_in_dvc():
    """After a successful run outside DVC: record every DVC stage whose outputs this run made up to date."""
    from pretrain3d.workflow.sync import record_dvc_stages

    done = {str(f) for job in workflow.dag.jobs for f in job.output}
    record_dvc_stages(PARAMS, done)
