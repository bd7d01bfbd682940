"""Report stage: results/summary.json and a Markdown report with the PNGs.

Every (method, protocol) is summarised as mean ± sample std over its seeds; each pre-training
method is compared with `scratch` under the same protocol (same data, labels and budget).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from pathlib import Path

from pretrain3d.atomic import write_json, write_text
from pretrain3d.config import Params, config_hash
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)

KEYS = ("mIoU", "mAcc", "allAcc")
PROTOCOL_NAMES = {
    "full": "full labels",
    "la": "limited annotations",
    "lr": "limited reconstructions",
    "probe": "linear probe",
}


def _mean_std(values: list[float]) -> tuple[float, float]:
    # Sample std (n−1); a single seed has no spread, reported as 0 with n=1 beside it.
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(metrics_files: list[str | Path]) -> dict:
    runs = []
    for f in metrics_files:
        m = json.loads(Path(f).read_text())
        runs.append({"method": m["method"], "protocol": m.get("protocol", "full"), "seed": m["seed"],
                     "uses_gt_labels": m.get("uses_gt_labels", False), **{k: m[k] for k in KEYS},
                     "iou_per_class": m["iou_per_class"], "metrics_file": str(f)})
    runs.sort(key=lambda r: (r["protocol"], r["method"], r["seed"]))
    groups: dict[str, dict] = {}
    for key in sorted({(r["protocol"], r["method"]) for r in runs}):
        rs = [r for r in runs if (r["protocol"], r["method"]) == key]
        entry = {"protocol": key[0], "method": key[1], "n_seeds": len(rs), "seeds": [r["seed"] for r in rs],
                 "uses_gt_labels": any(r["uses_gt_labels"] for r in rs)}
        for k in KEYS:
            entry[f"{k}_mean"], entry[f"{k}_std"] = _mean_std([r[k] for r in rs])
        groups[f"{key[1]}/{key[0]}"] = entry
    comparisons = []
    for name, e in groups.items():
        base = groups.get(f"scratch/{e['protocol']}")
        if e["method"] == "scratch" or base is None:
            continue
        comp = {"method": e["method"], "protocol": e["protocol"]}
        for k in KEYS:
            comp[f"{k}_diff"] = e[f"{k}_mean"] - base[f"{k}_mean"]
            # standard error of a difference of two independent means
            comp[f"{k}_diff_se"] = math.sqrt(e[f"{k}_std"] ** 2 / e["n_seeds"] + base[f"{k}_std"] ** 2 / base["n_seeds"])
        comparisons.append(comp)
    return {"runs": runs, "groups": groups, "comparisons": comparisons}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown(summary: dict, cfg: Params, out_dir: Path, run_dirs: list[Path]) -> str:
    lines = [
        f"# pretrain3d report — {cfg.experiment.name}", "",
        f"Dataset: `{cfg.data.dataset}` ({cfg.data.processed_root}), {cfg.data.num_classes} classes, "
        f"evaluated on every original point of the val split. Config hash `{config_hash(cfg)}`.",
        "Metrics in %; mean ± sample std over seeds. mIoU excludes classes absent from both ground truth "
        "and prediction (see README). Protocols: limited annotations = "
        f"{cfg.protocols.la_points} labelled points per training scene; limited reconstructions = "
        f"{cfg.protocols.lr_fraction:.0%} of the training scenes; linear probe = frozen backbone + linear head.", "",
        "## Results", "", "| protocol | method | seeds | mIoU | mAcc | allAcc | GT labels in pre-training |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in summary["groups"].values():
        cells = [f"{_pct(e[f'{k}_mean'])} ± {_pct(e[f'{k}_std'])}" for k in KEYS]
        lines.append(f"| {PROTOCOL_NAMES.get(e['protocol'], e['protocol'])} | {e['method']} | {e['n_seeds']} | "
                     + " | ".join(cells) + f" | {'yes' if e['uses_gt_labels'] else 'no'} |")
    if summary["comparisons"]:
        lines += ["", "## Pre-training vs scratch (same protocol, data and budget)", "",
                  "Difference of means ± its standard error.", "",
                  "| protocol | method | ΔmIoU | ΔmAcc | ΔallAcc |", "|---|---|---|---|---|"]
        for c in summary["comparisons"]:
            cells = [f"{100 * c[f'{k}_diff']:+.2f} ± {100 * c[f'{k}_diff_se']:.2f}" for k in KEYS]
            lines.append(f"| {PROTOCOL_NAMES.get(c['protocol'], c['protocol'])} | {c['method']} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| protocol | method | seed | mIoU | mAcc | allAcc |", "|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        lines.append(f"| {r['protocol']} | {r['method']} | {r['seed']} | " + " | ".join(_pct(r[k]) for k in KEYS) + " |")
    lines += ["", "## Per-class IoU (first seed of each group)", ""]
    seen = set()
    for r in summary["runs"]:
        if (r["method"], r["protocol"]) in seen:
            continue
        seen.add((r["method"], r["protocol"]))
        lines += [f"**{r['method']} / {r['protocol']}** (seed {r['seed']}): " + ", ".join(
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
        for name, e in summary["groups"].items():
            run.log_metrics({f"summary/{name}/{k}": v for k, v in e.items() if isinstance(v, float)})
        for c in summary["comparisons"]:
            run.log_metrics({f"compare/{c['method']}-vs-scratch/{c['protocol']}/{k}": v
                             for k, v in c.items() if isinstance(v, float)})
        run.log_artifact(out_dir / "summary.json")
        run.log_artifact(out_dir / "report.md")
    for name, e in summary["groups"].items():
        log.info("%s: mIoU %.2f ± %.2f over %d seeds", name, 100 * e["mIoU_mean"], 100 * e["mIoU_std"], e["n_seeds"])
    for c in summary["comparisons"]:
        log.info("%s vs scratch (%s): ΔmIoU %+.2f ± %.2f", c["method"], c["protocol"], 100 * c["mIoU_diff"],
                 100 * c["mIoU_diff_se"])
    return summary
