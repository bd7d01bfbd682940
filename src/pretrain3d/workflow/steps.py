"""The pipeline's steps, declared once: what each reads (files, code, config fields) and writes.

Snakemake's rules (rules/*.smk) take their inputs, outputs and ``params:`` from here, and dvc.yaml
is generated from here (``pretrain3d dvc-yaml``), so the two front ends cannot drift apart:

* **files**: inputs and outputs as functions of the config and the job's wildcards;
* **code**: the import closure of the step's CLI stage module (workflow.code_deps) — a Snakemake
  input and a DVC dep, so editing code a step runs reruns that step in either tool;
* **config**: the fields the step reads, as dotted prefixes minus the fields that cannot change
  its outputs (threads, worker counts, batch size of a frozen teacher, retries...). Snakemake gets
  their values as ``params`` (its rerun trigger), DVC the same keys as stage params.

Results of an experiment live under ``results/<experiment.name>/`` so that two configs never
overwrite or stand in for each other; data and the feature cache are keyed by their own paths.

Over 500 lines because it is the single declaration of every step that Snakemake and DVC both read;
split, the one graph would be spread over files that must change together.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pretrain3d.config import Params, flatten
from pretrain3d.errors import Pretrain3DError
from pretrain3d.methods import registry
from pretrain3d.workflow.code_deps import import_closure

Wildcards = dict[str, str]


class WorkflowConfigError(Pretrain3DError):
    """The config asks for a graph that cannot run (missing raw data, a method the dataset cannot feed)."""


def needs(method: str) -> frozenset[str]:
    """What a pre-training method needs from the data (its methods.registry line)."""
    return registry.spec(method).needs


def _modules(ref: str | None) -> tuple[str, ...]:
    return (ref.partition(":")[0],) if ref else ()


def method_modules(method: str) -> tuple[str, ...]:
    """The modules a method's pre-training job runs: the stage, the plug-in, its held-out check."""
    s = registry.spec(method)
    return (s.stage, *_modules(s.plugin), *_modules(s.after_training))


def dataset_provides(cfg: Params, data=None) -> set[str]:
    """What a dataset's processed layout holds (``data``: a `data`-style section, default cfg.data): RGB-D
    frames only where the reader exports them."""
    data = data or cfg.data
    ds = data.dataset
    provides = {"scenes", "labels", "features"}
    if ds in ("synthetic", "scannet_like") or (ds == "scannet" and data.scannet.export_frames):
        provides.add("frames")
    if "frames" not in provides:
        provides.discard("features")  # the 2D feature cache is computed from the frames
    return provides


def results_dir(cfg: Params) -> str:
    return f"results/{cfg.experiment.name}"


def features_dir(cfg: Params) -> str:
    t = cfg.teacher
    return f"{t.cache_root}/{t.name}-{t.layer}-{t.input_height}x{t.input_width}"


@dataclass(frozen=True)
class Step:
    name: str                                  # the Snakemake rule
    module: str | Callable[[Wildcards], tuple[str, ...]]  # the CLI stage module(s) it runs (code deps)
    wildcards: tuple[str, ...]
    outputs: Callable[[Params, Wildcards], dict[str, str]]
    inputs: Callable[[Params, Wildcards], dict[str, str | list[str]]] = lambda cfg, w: {}
    fields: Callable[[Params, Wildcards], tuple[str, ...]] = lambda cfg, w: ()
    exclude: tuple[str, ...] | Callable[[Params, Wildcards], tuple[str, ...]] = ()  # leaves under `fields`
                                               # that cannot change the outputs
    extra_deps: tuple[str, ...] = ()           # package data files the stage reads
    directory_outputs: tuple[str, ...] = ()    # output keys that are folders
    # (output key, file in that folder): a file the step writes last whose content is a hash of everything
    # else in the folder (a processed dataset's manifest.json and its data_hash). DVC stages downstream
    # depend on it instead of the folder: DVC hashes the folder once, as this step's out, instead of once
    # per downstream stage (ScanNet with frames: 200k files, a dozen stages; dvc_yaml.py)
    content_digests: tuple[tuple[str, str], ...] = ()
    dvc_group_by: tuple[str, ...] = ()         # wildcards whose jobs differ in fields/inputs: one DVC stage each

    # ------------------------------------------------------------------ derived
    def code(self, w: Wildcards | None = None) -> list[str]:
        """The files a job runs: cli.py (the entry), the stage module's import closure, package data."""
        modules = self.module(w or {}) if callable(self.module) else (self.module,)
        files = ["src/pretrain3d/cli.py", *(f for m in modules for f in import_closure(m)),
                 *(f"src/pretrain3d/{p}" for p in self.extra_deps)]
        return list(dict.fromkeys(files))

    def field_values(self, cfg: Params, w: Wildcards) -> dict[str, Any]:
        """{dotted leaf: value} of every config field the step reads (Snakemake's params)."""
        return select_fields(flatten(cfg.model_dump(mode="json")), self.fields(cfg, w), self.excluded(cfg, w))

    def excluded(self, cfg: Params, w: Wildcards) -> tuple[str, ...]:
        return self.exclude(cfg, w) if callable(self.exclude) else self.exclude

    def jobs(self, cfg: Params) -> list[Wildcards]:
        return [dict(zip(self.wildcards, combo)) for combo in itertools.product(
            *(wildcard_values(cfg, name, self.name) for name in self.wildcards))]


def select_fields(leaves: dict[str, Any], prefixes: tuple[str, ...], exclude: tuple[str, ...]) -> dict[str, Any]:
    def under(key: str, prefix: str) -> bool:
        return key == prefix or key.startswith(prefix + ".")

    return {k: v for k, v in sorted(leaves.items())
            if any(under(k, p) for p in prefixes) and not any(under(k, e) for e in exclude)}


# ----------------------------------------------------------------------------- jobs of the default target
def pretrained_methods(cfg: Params) -> list[str]:
    return list(dict.fromkeys(cfg.experiment.methods + cfg.experiment.pretrain_only))


def wildcard_values(cfg: Params, name: str, step: str) -> list[str]:
    e = cfg.experiment
    if name == "method":
        return pretrained_methods(cfg) if step == "pretrain" else list(e.methods)
    if name == "protocol":
        return list(e.protocols)
    if name == "seed":
        return [str(s) for s in e.seeds]
    if name == "source":
        return query_sources(cfg)
    if name == "dataset":
        return extra_datasets(cfg)
    if name == "variant":
        return study_variants(cfg)
    raise KeyError(name)


def study_variants(cfg: Params) -> list[str]:
    """Jobs of the ppt_study step: ``single-<dataset>`` per dataset, then the joint variants (config order);
    none without multi_dataset.datasets."""
    if not cfg.ppt_study.enabled or not cfg.multi_dataset.datasets:
        return []
    out: list[str] = []
    for v in cfg.ppt_study.variants:
        out += [f"{v}-{d}" for d in study_datasets(cfg)] if v.startswith("single") else [v]
    return out


def study_datasets(cfg: Params) -> list[str]:
    """The datasets of the ppt_study step (ppt_study.datasets, default: every multi_dataset name)."""
    return list(cfg.ppt_study.datasets or cfg.multi_dataset.names())


def study_dir(cfg: Params, w: Wildcards) -> str:
    return f"{results_dir(cfg)}/ppt_study/{w['variant']}/seed{w['seed']}"


def study_jobs(cfg: Params) -> list[Wildcards]:
    return [{"variant": v, "seed": str(s)} for v in study_variants(cfg) for s in cfg.experiment.seeds]


def _study_inputs(cfg: Params, w: Wildcards) -> dict[str, Any]:
    return {"data": cfg.data.processed_root,
            "datasets": [dataset_root(cfg, d) for d in study_datasets(cfg) if d in cfg.multi_dataset.datasets]}


def extra_datasets(cfg: Params) -> list[str]:
    """The multi_dataset.datasets some selected method trains on (registry need ``datasets``)."""
    wanted: list[str] = [d for d in study_datasets(cfg) if d in cfg.multi_dataset.datasets] \
        if study_variants(cfg) else []
    for m in pretrained_methods(cfg):
        if "datasets" in needs(m):
            wanted += [d for d in _method_datasets(cfg, m) if d in cfg.multi_dataset.datasets]
    return list(dict.fromkeys(wanted))


def _method_datasets(cfg: Params, method: str) -> list[str]:
    """Dataset names a multi-dataset method reads: ``pretrain.<section>.datasets`` of its config section."""
    spec = registry.spec(method)
    for prefix in spec.fields:
        node: Any = cfg
        for part in prefix.split("."):
            node = getattr(node, part, None)
        if node is not None and hasattr(node, "datasets") and isinstance(node.datasets, list):
            return list(node.datasets)
    return list(cfg.multi_dataset.names())


def dataset_root(cfg: Params, name: str) -> str:
    return cfg.multi_dataset.datasets[name].processed_root


def query_sources(cfg: Params) -> list[str]:
    """Feature sources of the scene queries: the baselines, then compared methods with query features."""
    return list(cfg.queries.baselines) + [m for m in cfg.experiment.methods if registry.spec(m).query_source]


def pretrain_seed(cfg: Params, seed: int | str) -> str:
    """The pre-training seed whose backbone initialises fine-tuning seed ``seed``: itself with
    ``experiment.pretrain_per_seed``, else the first seed (one pre-training per method)."""
    return str(seed) if cfg.experiment.pretrain_per_seed else str(cfg.experiment.seeds[0])


def pretrain_seeds(cfg: Params) -> list[str]:
    return list(dict.fromkeys(pretrain_seed(cfg, s) for s in cfg.experiment.seeds))


def pretrain_jobs(cfg: Params) -> list[Wildcards]:
    """Compared methods for every pre-training seed; pretrain_only methods for the first seed only."""
    jobs = [{"method": m, "seed": s} for m in cfg.experiment.methods for s in pretrain_seeds(cfg)]
    jobs += [{"method": m, "seed": str(cfg.experiment.seeds[0])} for m in cfg.experiment.pretrain_only]
    return jobs


def real_check_methods(cfg: Params) -> list[str]:
    """Scheduled methods with a check on the real RGB-D fixture (methods.registry ``real_check``)."""
    return [m for m in pretrained_methods(cfg) if registry.spec(m).real_check]


def report_visual_methods(cfg: Params) -> list[str]:
    """Scheduled methods whose saved backbones the report turns into figures (renders, PCA images)."""
    return [m for m in pretrained_methods(cfg) if registry.spec(m).report_visual]


# ----------------------------------------------------------------------------- file templates
def backbone(cfg: Params, method: str, seed: str) -> str:
    return f"{results_dir(cfg)}/pretrain/{method}/seed{seed}/backbone.pt"


def run_dir(cfg: Params, w: Wildcards) -> str:
    return f"{results_dir(cfg)}/runs/{w['method']}/{w['protocol']}/seed{w['seed']}"


def real_check_outputs(cfg: Params, method: str) -> dict[str, str]:
    d = f"{results_dir(cfg)}/real_check/{method}"
    return {"png": f"{d}/render.png", "json": f"{d}/render.json"}


def query_jobs(cfg: Params) -> list[Wildcards]:
    """The scene-query benchmark's jobs: each baseline once (first seed; it trains nothing), each compared method
    with query features (methods.registry ``query_source``) for every pre-training seed (the queries read the
    pre-trained backbone, not a fine-tuned one). None without RGB-D frames or without such a method."""
    methods = [m for m in cfg.experiment.methods if registry.spec(m).query_source]
    if not cfg.queries.enabled or not methods or "frames" not in dataset_provides(cfg):
        return []  # baselines alone compare nothing
    first = str(cfg.experiment.seeds[0])
    return ([{"source": b, "seed": first} for b in cfg.queries.baselines]
            + [{"source": m, "seed": s} for m in methods for s in pretrain_seeds(cfg)])


def query_dir(cfg: Params, w: Wildcards) -> str:
    return f"{results_dir(cfg)}/queries/{w['source']}/seed{w['seed']}"


def _is_method(source: str) -> bool:
    return source in registry.REGISTRY


def _query_inputs(cfg: Params, w: Wildcards) -> dict[str, Any]:
    out: dict[str, Any] = {"data": cfg.data.processed_root}
    if _is_method(w["source"]):
        out["backbone"] = backbone(cfg, w["source"], w["seed"])
    return out


_QUERY_COMMON = ("queries", "data.dataset", "data.num_classes", "data.sevenscenes", "train.grid_size", "train.device",
                 "teacher")


def _query_fields(cfg: Params, w: Wildcards) -> tuple[str, ...]:
    if _is_method(w["source"]):  # the model is rebuilt from the config before its weights are loaded
        return _QUERY_COMMON + ("model",) + registry.spec(w["source"]).fields
    return _QUERY_COMMON


def _query_exclude(cfg: Params, w: Wildcards) -> tuple[str, ...]:
    spec_exclude = registry.spec(w["source"]).exclude if _is_method(w["source"]) else ()
    return ("queries.enabled", "queries.baselines", "teacher.batch_size", "teacher.cache_root") + spec_exclude


def _query_modules(w: Wildcards) -> tuple[str, ...]:
    ref = registry.spec(w["source"]).query_source if _is_method(w.get("source", "")) else None
    return ("pretrain3d.stages.query_benchmark", *_modules(ref))


def report_outputs(cfg: Params) -> dict[str, str]:
    r = results_dir(cfg)
    return {"summary": f"{r}/summary.json", "report": f"{r}/report.md", "html": f"{r}/report.html",
            "renders": f"{r}/renders"}


def benchmark_report_outputs(cfg: Params) -> dict[str, str]:
    """The method comparison alone (fine-tuning protocols x seeds vs the papers), written as soon as its
    runs are evaluated: the full report also waits for the studies, queries and figures."""
    r = f"{results_dir(cfg)}/benchmark"
    return {"summary": f"{r}/summary.json", "report": f"{r}/report.md", "html": f"{r}/report.html"}


def _benchmark_file(cfg: Params, protocol: str) -> list[str]:
    key = {"la": "la_file", "lr": "lr_file"}.get(protocol)
    path = getattr(cfg.data.scannet, key) if key else None
    return [path] if path else []


def _pretrain_inputs(cfg: Params, w: Wildcards) -> dict[str, Any]:
    what = needs(w["method"])
    out: dict[str, Any] = {}
    if what & {"scenes", "frames", "labels"}:
        out["data"] = cfg.data.processed_root
    if "features" in what:
        out["features"] = features_dir(cfg)
    if "datasets" in what:
        out["datasets"] = [dataset_root(cfg, d) for d in _method_datasets(cfg, w["method"])
                           if d in cfg.multi_dataset.datasets]
    out.update(workflow_input_files(cfg, registry.spec(w["method"]).fields))
    return out


def workflow_input_files(cfg: Params, prefixes: tuple[str, ...]) -> dict[str, str]:
    """Files named by config fields marked ``workflow_input`` under ``prefixes`` (a method's section, e.g. the
    checkpoint an imported backbone is converted from): inputs of the step, keyed by their dotted path."""
    from pydantic import BaseModel

    out: dict[str, str] = {}

    def walk(node, dotted: str) -> None:
        if not isinstance(node, BaseModel):
            return
        for name, info in type(node).model_fields.items():
            value, key = getattr(node, name), f"{dotted}.{name}"
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("workflow_input") and value:
                out[key.replace(".", "_")] = str(value)
            walk(value, key)

    for prefix in prefixes:
        node = cfg
        for part in prefix.split("."):
            node = getattr(node, part, None)
        walk(node, prefix)
    return out


# pretrain.* minus the method sections: the loop, optimiser, schedule and augmentation every method shares
_PRETRAIN_COMMON = ("model", "train.grid_size", "train.device", "train.amp", "pretrain.epochs",
                    "pretrain.batch_size", "pretrain.optimizer", "pretrain.lr", "pretrain.momentum",
                    "pretrain.nesterov", "pretrain.weight_decay", "pretrain.scheduler", "pretrain.pct_start",
                    "pretrain.div_factor", "pretrain.final_div_factor", "pretrain.grad_clip", "pretrain.augment",
                    "data.num_classes")


def _pretrain_fields(cfg: Params, w: Wildcards) -> tuple[str, ...]:
    spec = registry.spec(w["method"])
    if spec.plugin is None:  # not trained: the architecture, the seed and its own section make it
        return ("model",) + spec.fields
    return _PRETRAIN_COMMON + spec.fields


def _pretrain_exclude(cfg: Params, w: Wildcards) -> tuple[str, ...]:
    spec = registry.spec(w["method"])
    return spec.exclude + spec.check_only


def _real_check_exclude(cfg: Params, w: Wildcards) -> tuple[str, ...]:
    return registry.spec(w["method"]).exclude


def _real_check_fields(cfg: Params, w: Wildcards) -> tuple[str, ...]:
    return _PRETRAIN_COMMON + registry.spec(w["method"]).fields + ("data.sevenscenes",)


def _ingest_fields(cfg: Params, w: Wildcards) -> tuple[str, ...]:
    ds = cfg.data.dataset
    fields = ("data.dataset", "data.num_classes")
    if ds in ("scannet", "scannet_npy"):
        fields += ("data.scannet",)
    elif ds == "s3dis":
        fields += ("data.s3dis",)
    return fields


def _ingest_inputs(cfg: Params, w: Wildcards) -> dict[str, Any]:
    out: dict[str, Any] = {"raw": cfg.data.raw_root}
    if cfg.data.dataset in ("scannet", "scannet_npy") and cfg.data.scannet.labels_tsv:
        out["tsv"] = cfg.data.scannet.labels_tsv
    return out


def _finetune_fields(cfg: Params, w: Wildcards) -> tuple[str, ...]:
    per_protocol = {"la": ("protocols.la_points", "protocols.la_voxel_label", "data.scannet.la_file"),
                    "lr": ("protocols.lr_fraction", "data.scannet.lr_file"),
                    "probe": ("protocols.probe_epochs", "protocols.probe_lr", "protocols.probe_features"),
                    "full": ()}
    return ("model", "train", "data.num_classes") + per_protocol[w["protocol"]]


def method_runs(cfg: Params, method: str) -> list[Wildcards]:
    """The fine-tuning runs of one method: every protocol and seed."""
    return [{"method": method, "protocol": p, "seed": str(sd)}
            for p in cfg.experiment.protocols for sd in cfg.experiment.seeds]


def _evaluate_outputs(cfg: Params, w: Wildcards) -> dict[str, str]:
    return {f"{k}_{r['protocol']}_seed{r['seed']}": f"{run_dir(cfg, r)}/{k}.{ext}"
            for r in method_runs(cfg, w["method"])
            for k, ext in (("metrics", "json"), ("confusion", "png"), ("render", "png"))}


def _benchmark_report_inputs(cfg: Params, w: Wildcards) -> dict[str, Any]:
    e = cfg.experiment
    metrics = [f"{run_dir(cfg, {'method': m, 'protocol': p, 'seed': str(s)})}/metrics.json"
               for m in e.methods for p in e.protocols for s in e.seeds]
    return {"metrics": metrics, "references": "results/references.json"}


def _report_inputs(cfg: Params, w: Wildcards) -> dict[str, Any]:
    e = cfg.experiment
    metrics = _benchmark_report_inputs(cfg, w)["metrics"]
    # compared methods: every seed (a figure may aggregate over seeds); pretrain_only: the one seed run
    renders = [backbone(cfg, w["method"], w["seed"]) for w in pretrain_jobs(cfg)
               if w["method"] in report_visual_methods(cfg)]
    # pretrain_only runs the figures do not already read (so that they are built all the same)
    only = [b for b in (backbone(cfg, m, str(e.seeds[0])) for m in e.pretrain_only) if b not in renders]
    real = [f for m in real_check_methods(cfg) for f in real_check_outputs(cfg, m).values()]
    queries = [f"{query_dir(cfg, w)}/metrics.json" for w in query_jobs(cfg)]
    study = [f"{study_dir(cfg, w)}/metrics.json" for w in study_jobs(cfg)]
    return {"metrics": metrics, "references": "results/references.json", "backbones": renders,
            "pretrain_only": only, "real": real, "queries": queries, "ppt_study": study}


STEPS: dict[str, Step] = {s.name: s for s in [
    Step("generate_synthetic", "pretrain3d.stages.data", (),
         outputs=lambda cfg, w: {"raw": cfg.data.raw_root}, fields=lambda cfg, w: ("data.synthetic",),
         directory_outputs=("raw",)),
    Step("download", "pretrain3d.stages.download", (),
         outputs=lambda cfg, w: {"raw": cfg.data.raw_root}, fields=lambda cfg, w: ("data.download",),
         # how the bytes are fetched cannot change them (sha256-checked)
         exclude=("data.download.cache_dir", "data.download.retries", "data.download.timeout"),
         directory_outputs=("raw",)),
    Step("preprocess", "pretrain3d.stages.data", (),
         inputs=_ingest_inputs, outputs=lambda cfg, w: {"processed": cfg.data.processed_root},
         fields=_ingest_fields,
         # la/lr files only select fine-tuning labels
         exclude=("data.scannet.la_file", "data.scannet.lr_file"), directory_outputs=("processed",),
         content_digests=(("processed", "manifest.json"),)),
    Step("dataset_data", "pretrain3d.stages.data", ("dataset",), dvc_group_by=("dataset",),
         outputs=lambda cfg, w: {"processed": dataset_root(cfg, w["dataset"])},
         fields=lambda cfg, w: (f"multi_dataset.datasets.{w['dataset']}",),
         exclude=lambda cfg, w: (f"multi_dataset.datasets.{w['dataset']}.workers",),
         directory_outputs=("processed",), content_digests=(("processed", "manifest.json"),)),
    Step("cache_features", "pretrain3d.stages.features", (),
         inputs=lambda cfg, w: {"data": cfg.data.processed_root},
         outputs=lambda cfg, w: {"features": features_dir(cfg)}, fields=lambda cfg, w: ("teacher",),
         exclude=("teacher.batch_size",), directory_outputs=("features",)),
    Step("pretrain", lambda w: method_modules(w["method"]), ("method", "seed"), dvc_group_by=("method",),
         inputs=_pretrain_inputs,
         outputs=lambda cfg, w: {"backbone": backbone(cfg, w["method"], w["seed"])},
         fields=_pretrain_fields, exclude=_pretrain_exclude),
    Step("real_check", lambda w: ("pretrain3d.stages.real_check", *_modules(registry.spec(w["method"]).real_check)),
         ("method",), dvc_group_by=("method",),
         outputs=lambda cfg, w: real_check_outputs(cfg, w["method"]), fields=_real_check_fields,
         exclude=_real_check_exclude),
    Step("finetune", "pretrain3d.stages.finetune", ("method", "protocol", "seed"), dvc_group_by=("protocol",),
         inputs=lambda cfg, w: {"data": cfg.data.processed_root,
                                "backbone": backbone(cfg, w["method"], pretrain_seed(cfg, w["seed"])),
                                "benchmark_file": _benchmark_file(cfg, w["protocol"])},
         outputs=lambda cfg, w: {k: f"{run_dir(cfg, w)}/{f}" for k, f in
                                 (("model", "model.pt"), ("train_log", "train_log.json"), ("config", "config.yaml"))},
         fields=_finetune_fields, exclude=("train.threads", "train.num_workers", "train.val_every")),
    # one job per method evaluates all its fine-tuned models: the val split and the imports are paid once
    Step("evaluate", "pretrain3d.stages.evaluate", ("method",),
         inputs=lambda cfg, w: {"data": cfg.data.processed_root,
                                "models": [f"{run_dir(cfg, r)}/model.pt" for r in method_runs(cfg, w["method"])]},
         outputs=_evaluate_outputs,
         fields=lambda cfg, w: ("train.grid_size", "train.device", "eval", "data.num_classes")),
    Step("scene_queries", _query_modules, ("source", "seed"), dvc_group_by=("source",),
         inputs=_query_inputs,
         outputs=lambda cfg, w: {"metrics": f"{query_dir(cfg, w)}/metrics.json", "index": f"{query_dir(cfg, w)}/index",
                                 "figures": f"{query_dir(cfg, w)}/figures"},
         fields=_query_fields, exclude=_query_exclude, directory_outputs=("index", "figures")),
    Step("ppt_study", "pretrain3d.stages.ppt_study", ("variant", "seed"), dvc_group_by=("variant",),
         inputs=_study_inputs, outputs=lambda cfg, w: {"metrics": f"{study_dir(cfg, w)}/metrics.json"},
         fields=lambda cfg, w: ("model", "train", "ppt_study", "multi_dataset", "data.num_classes", "data.dataset"),
         exclude=("train.threads", "train.num_workers", "train.val_every")),
    Step("log_references", "pretrain3d.stages.references", (),
         outputs=lambda cfg, w: {"references": "results/references.json"},
         fields=lambda cfg, w: ("tracking.uri", "tracking.experiment", "tracking.enabled"),
         extra_deps=("tracking/paper_references.yaml",)),
    Step("benchmark_report", "pretrain3d.stages.report", (),
         inputs=_benchmark_report_inputs, outputs=lambda cfg, w: benchmark_report_outputs(cfg),
         fields=lambda cfg, w: ("experiment", "data.dataset", "data.num_classes")),
    # the report runs the registered methods' figure functions (resolved by name, so not imports)
    Step("report", lambda w: ("pretrain3d.stages.report", *(m for s in registry.REGISTRY.values()
                                                             for m in _modules(s.report_visual))), (),
         inputs=_report_inputs, outputs=lambda cfg, w: report_outputs(cfg),
         fields=lambda cfg, w: ("experiment", "data.dataset", "data.num_classes"),
         directory_outputs=("renders",)),
]}


def active_steps(cfg: Params) -> list[tuple[Step, list[Wildcards]]]:
    """The steps and jobs of the default target for this config, in pipeline order."""
    ds = cfg.data.dataset
    out: list[tuple[Step, list[Wildcards]]] = []
    if cfg.data.download.enabled:
        out.append((STEPS["download"], [{}]))
    elif ds == "synthetic":
        out.append((STEPS["generate_synthetic"], [{}]))
    out.append((STEPS["preprocess"], [{}]))
    if extra_datasets(cfg):
        out.append((STEPS["dataset_data"], [{"dataset": d} for d in extra_datasets(cfg)]))
    if any("features" in needs(m) for m in pretrained_methods(cfg)):
        out.append((STEPS["cache_features"], [{}]))
    out.append((STEPS["pretrain"], pretrain_jobs(cfg)))
    if real_check_methods(cfg):
        out.append((STEPS["real_check"], [{"method": m} for m in real_check_methods(cfg)]))
    out.append((STEPS["finetune"], STEPS["finetune"].jobs(cfg)))
    out.append((STEPS["evaluate"], STEPS["evaluate"].jobs(cfg)))
    if query_jobs(cfg):
        out.append((STEPS["scene_queries"], query_jobs(cfg)))
    if study_jobs(cfg):
        out.append((STEPS["ppt_study"], study_jobs(cfg)))
    out.append((STEPS["log_references"], [{}]))
    out.append((STEPS["benchmark_report"], [{}]))
    out.append((STEPS["report"], [{}]))
    return out


def check_runnable(cfg: Params, source: str = "the config") -> None:
    """Every scheduled method can be fed by the dataset, and the raw data exists or can be made."""
    provides = dataset_provides(cfg) | {"datasets"}
    for m in pretrained_methods(cfg):
        unknown = [d for d in _method_datasets(cfg, m) if d not in cfg.multi_dataset.names()] \
            if "datasets" in needs(m) else []
        if unknown:
            raise WorkflowConfigError(f"{source}: method {m!r} trains on {unknown}, which are neither "
                                      f"multi_dataset.target nor in multi_dataset.datasets ({cfg.multi_dataset.names()})")
        for d in (_method_datasets(cfg, m) if "datasets" in needs(m) else []):
            if d in cfg.multi_dataset.datasets:
                lacking = (needs(m) - {"datasets"}) - dataset_provides(cfg, cfg.multi_dataset.datasets[d])
                if lacking:
                    raise WorkflowConfigError(f"{source}: method {m!r} needs {sorted(lacking)} from every dataset "
                                              f"it trains on, which multi_dataset.datasets.{d} "
                                              f"({cfg.multi_dataset.datasets[d].dataset}) does not provide")
        missing = needs(m) - provides
        if missing:
            where = "experiment.methods" if m in cfg.experiment.methods else "experiment.pretrain_only"
            raise WorkflowConfigError(
                f"{source}: {where} lists {m!r}, which needs {sorted(missing)} that data.dataset "
                f"{cfg.data.dataset!r} does not provide (no RGB-D frames in this layout); remove it from {where}")
    for name in extra_datasets(cfg):
        d = cfg.multi_dataset.datasets[name]
        if d.dataset != "synthetic" and not Path(d.raw_root).exists():
            raise WorkflowConfigError(
                f"{source}: multi_dataset.datasets.{name}.raw_root {d.raw_root} does not exist: put the {d.dataset} "
                f"release there or point raw_root at your copy (downloads run for `data` only)")
    raw = Path(cfg.data.raw_root)
    if cfg.data.dataset != "synthetic" and not cfg.data.download.enabled and not raw.exists():
        raise WorkflowConfigError(
            f"{source}: data.raw_root {raw} does not exist and nothing in the pipeline makes it: put the "
            f"{cfg.data.dataset} release there (see README 'Data'), point data.raw_root at your copy, or configure "
            "data.download (URLs with sha256, or your own download script)")
