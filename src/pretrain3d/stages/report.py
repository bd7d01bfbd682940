"""Report stage: results/summary.json and a Markdown report with the PNGs (mean ± std over seeds)."""

from __future__ import annotations

import json
import logging
import os
import statistics
from pathlib import Path

from pretrain3d.atomic import write_json, write_text
from pretrain3d.config import Params, config_hash
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)

KEYS = ("mIoU", "mAcc", "allAcc")


def _mean_std(values: list[float]) -> tuple[float, float]:
    # Sample std (n−1); a single seed has no spread, reported as 0 with n=1 beside it.
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(metrics_files: list[str | Path]) -> dict:
    runs = []
    for f in metrics_files:
        m = json.loads(Path(f).read_text())
        runs.append({"method": m["method"], "seed": m["seed"], **{k: m[k] for k in KEYS},
                     "iou_per_class": m["iou_per_class"], "metrics_file": str(f)})
    runs.sort(key=lambda r: (r["method"], r["seed"]))
    methods: dict[str, dict] = {}
    for method in sorted({r["method"] for r in runs}):
        rs = [r for r in runs if r["method"] == method]
        entry = {"n_seeds": len(rs), "seeds": [r["seed"] for r in rs]}
        for k in KEYS:
            mean, std = _mean_std([r[k] for r in rs])
            entry[f"{k}_mean"], entry[f"{k}_std"] = mean, std
        methods[method] = entry
    return {"runs": runs, "methods": methods}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown(summary: dict, cfg: Params, out_dir: Path, run_dirs: list[Path]) -> str:
    lines = [
        f"# pretrain3d report — {cfg.experiment.name}", "",
        f"Dataset: `{cfg.data.dataset}` ({cfg.data.processed_root}), {cfg.data.num_classes} classes, "
        f"evaluated on every original point of the val split. Config hash `{config_hash(cfg)}`.",
        "Metrics in %; mean ± sample std over seeds. mIoU excludes classes absent from both ground truth "
        "and prediction (see README).", "",
        "## Methods", "", "| method | seeds | mIoU | mAcc | allAcc |", "|---|---|---|---|---|",
    ]
    for method, e in summary["methods"].items():
        cells = [f"{_pct(e[f'{k}_mean'])} ± {_pct(e[f'{k}_std'])}" for k in KEYS]
        lines.append(f"| {method} | {e['n_seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| method | seed | mIoU | mAcc | allAcc |", "|---|---|---|---|---|"]
    for r in summary["runs"]:
        lines.append(f"| {r['method']} | {r['seed']} | " + " | ".join(_pct(r[k]) for k in KEYS) + " |")
    lines += ["", "## Per-class IoU (first seed of each method)", ""]
    seen = set()
    for r in summary["runs"]:
        if r["method"] in seen:
            continue
        seen.add(r["method"])
        lines += [f"**{r['method']}** (seed {r['seed']}): " + ", ".join(
            f"{c} {('—' if v is None else _pct(v))}" for c, v in r["iou_per_class"].items()), ""]
    lines += ["## Figures", ""]
    for d in run_dirs:
        rel = os.path.relpath(d, out_dir)
        lines += [f"### {rel}", "", f"![confusion]({rel}/confusion.png) ![render]({rel}/render.png)", ""]
    return "\n".join(lines) + "\n"


def report(cfg: Params, metrics_files: list[str], out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    summary = summarize(metrics_files)
    summary["config_hash"] = config_hash(cfg)
    run_dirs = [Path(f).parent for f in metrics_files]
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "report.md", markdown(summary, cfg, out_dir, run_dirs))
    with job_run(cfg.tracking, "report", job_tags(cfg, "report"), job_params(cfg)) as run:
        for method, e in summary["methods"].items():
            run.log_metrics({f"summary/{method}/{k}": v for k, v in e.items() if isinstance(v, float)})
        run.log_artifact(out_dir / "summary.json")
        run.log_artifact(out_dir / "report.md")
    for method, e in summary["methods"].items():
        log.info("%s: mIoU %.2f ± %.2f over %d seeds", method, 100 * e["mIoU_mean"], 100 * e["mIoU_std"],
                 e["n_seeds"])
    return summary
