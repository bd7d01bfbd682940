"""The report's scene-query section: one table (mean ± std over seeds per feature source, chance beside
it) and the first seed's query -> top-3 PNG per query type and source."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

COLUMNS = (("image R@1", ("image", "recall@1"), ("image", "chance@1")),
           ("image R@5", ("image", "recall@5"), None),
           ("pose rot. (°, median)", ("image", "pose", "rotation_deg_median"), None),
           ("pose transl. (m, median)", ("image", "pose", "translation_m_median"), None),
           ("duplicates AP", ("duplicates", "ap"), ("duplicates", "chance")),
           ("language mAP", ("language", "map"), ("language", "chance")),
           ("7-Scenes R@1", ("real_image", "recall@1"), None),
           ("7-Scenes pose rot. (°)", ("real_image", "pose", "rotation_deg_median"), None),
           ("7-Scenes pose transl. (m)", ("real_image", "pose", "translation_m_median"), None))
FIGURE_TITLES = {"image": "image → scene", "scene": "duplicate scenes", "text": "text → scene"}


def metric_key(column: str) -> str:
    """An MLflow-safe key of a column name: ``pose rot. (°, median)`` -> ``pose_rot_median``."""
    return re.sub(r"[^a-z0-9@]+", "_", column.lower()).strip("_").replace("@", "_at_")


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) and d == d else None  # None for NaN


def summarize_queries(files: list[str | Path]) -> dict:
    """{source: {"seeds": [...], column: {"mean", "std", "n"}, ...}} of the query metrics files."""
    by_source: dict[str, list[dict]] = {}
    for f in files:
        r = json.loads(Path(f).read_text())
        r["_file"] = str(f)
        by_source.setdefault(r["source"], []).append(r)
    out = {}
    for src, runs in by_source.items():
        runs.sort(key=lambda r: r["seed"])
        entry: dict = {"seeds": [r["seed"] for r in runs], "files": [r["_file"] for r in runs]}
        for name, path, chance in COLUMNS:
            vals = [v for v in (_get(r, path) for r in runs) if v is not None]
            entry[name] = {"mean": statistics.fmean(vals) if vals else None,
                           "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
            if chance:
                entry[name]["chance"] = _get(runs[0], chance)
        entry["repository"] = runs[0].get("repository")
        entry["fingerprint_rule"] = runs[0].get("fingerprint", {}).get("rule")
        entry["k"] = runs[0].get("fingerprint", {}).get("k")
        out[src] = entry
    return out


def query_section(files: list[str | Path], out_dir: Path) -> tuple[str, list[Path], dict]:
    """Markdown, the PNGs copied under ``renders/queries/``, and the summary (``summarize_queries``)."""
    if not files:
        return "", [], {}
    summary = summarize_queries(files)
    first = next(iter(summary.values()))
    repo = first.get("repository") or {}
    lines = ["## Scene queries (keypoint index of the val repository)\n",
             f"Repository: {repo.get('scenes', '?')} scenes of {repo.get('rooms', '?')} rooms "
             f"({' + '.join(repo.get('splits', []))}); K = {first['k']} keypoints per scene, rule "
             f"`{first['fingerprint_rule']}`. Image queries: every frame of every scene, its own capture left out "
             "(the right answer is another capture of the room); pose from PnP + RANSAC in the right scene. "
             "Mean ± std over seeds (n); chance in brackets. The language head is fitted on ground-truth labels "
             "(`uses_gt_labels=true`); the image and duplicate queries use none. 7-Scenes: the fixture's "
             "held-out frames queried against the repository plus the fused real scene, pose against the real "
             "poses (— where the fixture is absent: a recorded skip in metrics.json).\n",
             "| source | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for src, e in summary.items():
        cells = []
        for name, _, chance in COLUMNS:
            c = e[name]
            if c["mean"] is None:
                cells.append("—")
                continue
            digits = 2 if "pose" in name else 3
            text = f"{c['mean']:.{digits}f} ± {c['std']:.{digits}f} ({c['n']})"
            if chance and c.get("chance") is not None:
                text += f" [{c['chance']:.3f}]"
            cells.append(text)
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    lines.append("")
    pngs: list[Path] = []
    dest = out_dir / "renders" / "queries"
    for kind, title in FIGURE_TITLES.items():
        shown = []
        for src, e in summary.items():
            png = Path(e["files"][0]).parent / "figures" / f"{kind}.png"
            if png.exists():
                dest.mkdir(parents=True, exist_ok=True)
                target = dest / f"{src}-{kind}.png"
                shutil.copyfile(png, target)
                pngs.append(target)
                shown.append(f"![{src}: {title}](renders/queries/{target.name})")
        if shown:
            lines += [f"**{title}** (seed {summary[next(iter(summary))]['seeds'][0]}; green: right answer):\n",
                      *shown, ""]
    return "\n".join(lines) + "\n", pngs, summary
