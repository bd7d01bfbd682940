"""The report's "Several datasets (PPT)" section, from the ``ppt_study`` jobs' metrics.json files.

Per dataset (rows) and variant (columns: single, joint, ppt, ppt_decoupled): val mIoU mean ± std over
seeds, and each joint variant's difference from single-dataset training paired by seed (mean ± s.e.).
A difference below zero by more than its standard error is flagged as negative transfer.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

COLUMNS = ("single", "single_language", "joint", "ppt", "ppt_decoupled")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_study(files: list[str | Path]) -> dict:
    """{dataset: {variant kind: {"mean", "std", "n", "by_seed"}, "delta": {kind: {"mean", "se", "n"}}}}."""
    by: dict[str, dict[str, dict[int, float]]] = {}
    for f in files:
        m = json.loads(Path(f).read_text())
        for dataset, r in m["metrics"].items():
            if r.get("mIoU") is not None:
                by.setdefault(dataset, {}).setdefault(m["kind"], {})[int(m["seed"])] = float(r["mIoU"])
    out: dict[str, dict] = {}
    for dataset, kinds in by.items():
        entry: dict = {}
        for kind, seeds in kinds.items():
            mean, std = _mean_std(list(seeds.values()))
            entry[kind] = {"mean": mean, "std": std, "n": len(seeds), "by_seed": dict(sorted(seeds.items()))}
        single = kinds.get("single", {})
        entry["delta"] = {}
        for kind, seeds in kinds.items():
            common = sorted(set(seeds) & set(single))
            if kind == "single" or not common:
                continue
            diffs = [seeds[s] - single[s] for s in common]
            mean, std = _mean_std(diffs)
            entry["delta"][kind] = {"mean": mean, "se": std / math.sqrt(len(diffs)), "n": len(diffs)}
        out[dataset] = entry
    return out


def study_section(files: list[str | Path]) -> tuple[str, dict]:
    if not files:
        return "", {}
    s = summarize_study(files)
    kinds = [k for k in COLUMNS if any(k in e for e in s.values())]
    lines = ["## Several datasets (PPT)", "",
             "Val mIoU (%) per dataset, mean ± std over seeds; in brackets the difference from single-dataset "
             "training paired by seed (mean ± s.e.), ⚠ = negative transfer (below zero by more than its s.e.). "
             "single: one model per dataset; single_language: the same with the language-guided head; joint: shared BatchNorm, one head over the union of class names; "
             "ppt: PDNorm + language-guided alignment; ppt_decoupled: PDNorm + a head per dataset. "
             "All variants are supervised (uses_gt_labels=true).", "",
             "| dataset | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for dataset, e in s.items():
        cells = []
        for k in kinds:
            if k not in e:
                cells.append("–")
                continue
            cell = f"{100 * e[k]['mean']:.1f} ± {100 * e[k]['std']:.1f}"
            d = e["delta"].get(k)
            if d:
                flag = " ⚠" if d["mean"] < 0 and -d["mean"] > d["se"] else ""
                cell += f" ({100 * d['mean']:+.1f} ± {100 * d['se']:.1f}{flag})"
            cells.append(cell)
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    n = max((e[k]["n"] for e in s.values() for k in kinds if k in e), default=0)
    runs = [json.loads(Path(f).read_text()) for f in files]
    schedule = sorted({(r.get("epochs"), r.get("max_points", "?")) for r in runs}, key=str)
    crop = {None: ", whole scenes", "?": ""}  # "?": written before the crop was recorded
    said = "; ".join(f"{e} epochs" + crop.get(m, f", scenes cropped to {m} voxels") for e, m in schedule)
    lines += ["", f"Seeds: {n}. Each variant trains `ppt_study.epochs` passes over its data ({said}).", ""]
    return "\n".join(lines), s
