"""Report stage: results/summary.json and a Markdown report with the PNGs.

Every (method, protocol) is summarised as mean ± sample std over its seeds; each pre-training
method is compared with `scratch` under the same protocol (same data, labels and budget).

Two differences are reported for each comparison:

* the **difference of means** ± the standard error of a difference of two *independent* means
  (``{k}_diff``, ``{k}_diff_se``);
* the **paired difference** (``{k}_paired_diff``, ``{k}_paired_diff_se``, over ``paired_seeds``):
  the mean of the per-seed differences ``method_s − scratch_s`` ± their standard error
  ``stdev(d) / sqrt(n)``. Runs of two methods with the same seed share the LA labels, the head's
  initialisation and the data order and augmentation, so seed-to-seed variation common to both
  cancels in ``d``; this is the test that matches the design. Only seeds present in both groups
  count; with fewer than two shared seeds the paired standard error is undefined (``None``).
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import statistics
from pathlib import Path

from pretrain3d.atomic import write_json, write_text
from pretrain3d.config import Params, config_hash
from pretrain3d.errors import DataError
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.stages.query_report import metric_key, query_section
from pretrain3d.stages.ppt_report import study_section
from pretrain3d.tracking.mlflow_runs import job_run, summary_key

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
        comp.update(paired_difference(runs, e["method"], "scratch", e["protocol"]))
        comparisons.append(comp)
    return {"runs": runs, "groups": groups, "comparisons": comparisons}


def paired_difference(runs: list[dict], method: str, base: str, protocol: str) -> dict:
    """Mean of per-seed differences ``method − base`` over the seeds both ran, ± its standard error
    (sample std of the differences / sqrt(n); ``None`` with fewer than two shared seeds)."""
    by_seed = {m: {r["seed"]: r for r in runs if r["method"] == m and r["protocol"] == protocol}
               for m in (method, base)}
    seeds = sorted(set(by_seed[method]) & set(by_seed[base]))
    out: dict = {"paired_seeds": seeds}
    for k in KEYS:
        d = [by_seed[method][s][k] - by_seed[base][s][k] for s in seeds]
        out[f"{k}_paired_diff"] = statistics.fmean(d) if d else None
        out[f"{k}_paired_diff_se"] = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _paired_cell(diff: float | None, se: float | None) -> str:
    if diff is None:
        return "—"
    return f"{100 * diff:+.2f}" + ("" if se is None else f" ± {100 * se:.2f}")


def markdown(summary: dict, cfg: Params, out_dir: Path, run_dirs: list[Path]) -> str:
    lines = [
        f"# pretrain3d report — {cfg.experiment.name}", "",
        f"Dataset: `{cfg.data.dataset}` ({cfg.data.processed_root}), {cfg.data.num_classes} classes, "
        f"evaluated on every original point of the val split. Config hash `{config_hash(cfg)}`.",
        "Metrics in %; mean ± sample std over seeds. "
        + ("Every seed pre-trains anew (`experiment.pretrain_per_seed`): the std includes pre-training variance. "
           if cfg.experiment.pretrain_per_seed else
           f"Each method is pre-trained once (seed {cfg.experiment.seeds[0]}) and that backbone initialises every "
           "seed's fine-tuning, as the papers do: the std is fine-tuning variance only "
           "(`experiment.pretrain_per_seed: true` pre-trains per seed). ")
        + "mIoU excludes classes absent from both ground truth "
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
                  "Δ = difference of means ± its standard error (independent samples); paired Δ = mean of "
                  "the per-seed differences ± its standard error (runs with the same seed share LA labels, "
                  "head initialisation and data order, so this is the matching test).", "",
                  "| protocol | method | ΔmIoU | paired ΔmIoU | ΔmAcc | paired ΔmAcc | ΔallAcc | paired ΔallAcc "
                  "| paired seeds |", "|---|---|---|---|---|---|---|---|---|"]
        for c in summary["comparisons"]:
            cells = []
            for k in KEYS:
                cells.append(f"{100 * c[f'{k}_diff']:+.2f} ± {100 * c[f'{k}_diff_se']:.2f}")
                cells.append(_paired_cell(c.get(f"{k}_paired_diff"), c.get(f"{k}_paired_diff_se")))
            lines.append(f"| {PROTOCOL_NAMES.get(c['protocol'], c['protocol'])} | {c['method']} | "
                         + " | ".join(cells) + f" | {len(c.get('paired_seeds', []))} |")
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


def parent_metrics(summary: dict) -> dict[str, float]:
    """The summary as the pipeline parent's metrics: per protocol and method ``la/ppkt/miou_mean``, ``_std``,
    ``n_seeds``, ``miou_delta`` ± ``miou_delta_se`` vs scratch (difference of means) and the paired
    ``miou_paired_delta`` ± ``_se`` where defined; as fractions, like every run's ``val/mIoU``."""
    out: dict[str, float] = {}
    for e in summary["groups"].values():
        p, m = e["protocol"], e["method"]
        out[summary_key(p, m, "n_seeds")] = float(e["n_seeds"])
        for k in KEYS:
            out[summary_key(p, m, f"{k}_mean")] = e[f"{k}_mean"]
            out[summary_key(p, m, f"{k}_std")] = e[f"{k}_std"]
    for c in summary["comparisons"]:
        p, m = c["protocol"], c["method"]
        for name, value in (("miou_delta", c["mIoU_diff"]), ("miou_delta_se", c["mIoU_diff_se"]),
                            ("miou_paired_delta", c.get("mIoU_paired_diff")),
                            ("miou_paired_delta_se", c.get("mIoU_paired_diff_se"))):
            if value is not None:
                out[summary_key(p, m, name)] = value
    return out


def html_table(summary: dict, cfg: Params) -> str:
    """One page the MLflow artifact viewer shows: per protocol, every method's mIoU and Δ vs scratch."""
    comp = {(c["protocol"], c["method"]): c for c in summary["comparisons"]}
    rows = []
    for e in summary["groups"].values():
        c = comp.get((e["protocol"], e["method"]))
        delta = "—" if c is None else f"{100 * c['mIoU_diff']:+.2f} ± {100 * c['mIoU_diff_se']:.2f}"
        paired = "—" if c is None else _paired_cell(c.get("mIoU_paired_diff"), c.get("mIoU_paired_diff_se"))
        cells = [PROTOCOL_NAMES.get(e["protocol"], e["protocol"]), e["method"], str(e["n_seeds"])]
        cells += [f"{_pct(e[f'{k}_mean'])} ± {_pct(e[f'{k}_std'])}" for k in KEYS] + [delta, paired]
        rows.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    head = ["protocol", "method", "seeds", "mIoU %", "mAcc %", "allAcc %", "ΔmIoU vs scratch", "paired ΔmIoU"]
    title = html.escape(f"pretrain3d — {cfg.experiment.name} ({cfg.data.dataset})")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:nth-child(-n+2){text-align:left}</style></head><body><h1>"
            + title + "</h1><p>Mean ± sample std over seeds; Δ = difference of means ± its standard error; "
            "paired Δ = mean of per-seed differences ± its standard error. Full report: report.md.</p><table><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table></body></html>\n")


# Our (dataset, num_classes) → the paper dataset our numbers may be set beside. scannet_npy is ScanNet v2 in
# Pointcept's layout; scannet_like is only a folder layout (the generator writes it too), so it never matches.
_REFERENCE_DATASETS = {("scannet", 20): "scannet", ("scannet", 200): "scannet200", ("scannet_npy", 20): "scannet",
                       ("scannet_npy", 200): "scannet200", ("s3dis", 13): "s3dis"}


def load_reference_table(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        return json.loads(path.read_text())["references"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(path, f"cannot read the paper reference table ({err})",
                        "it is written by `pretrain3d log-references`") from None


def paper_references_section(refs: list[dict], summary: dict, cfg: Params) -> str:
    """The 'Paper references' section: every reference, and ours beside them when the dataset matches."""
    match = _REFERENCE_DATASETS.get((cfg.data.dataset, cfg.data.num_classes))
    lines = ["## Paper references", "",
             "Published headline numbers (`src/pretrain3d/tracking/paper_references.yaml`), also logged to MLflow as "
             "`run_type=reference` runs under the same metric keys as our evaluations (`val/mIoU` etc., as "
             "fractions); here in % as printed. Source says where each number was read: paper (the PDF), readme "
             "(official README / model zoo), code, issue, or secondary (a summary or our notes: verify before "
             "comparing)."]
    if match is None:
        lines.append("")
        lines.append(f"**Not comparable with the results above**: this report's dataset is `{cfg.data.dataset}` "
                     f"({cfg.data.num_classes} classes, small backbone, short schedule), while the papers train "
                     "full-size backbones on ScanNet, S3DIS or nuScenes at scale. Listed for orientation only.")
    lines += ["", "| method | backbone | dataset | split / protocol | metric | value | source | GT labels before "
              "fine-tuning |", "|---|---|---|---|---|---|---|---|"]
    for r in refs:
        split = f"{r['split']} ({r['split_detail']})" if r.get("split_detail") else r["split"]
        source = f"{r['provenance']}: {r['location']}" + ("" if r.get("verified") else " — *verify*")
        if r.get("url"):
            source = f"[{source}]({r['url']})"
        protocol = PROTOCOL_NAMES.get(r["protocol"], r["protocol"])
        lines.append(f"| {r['method']} | {r['backbone']} | {r['dataset']} | {split} / {protocol} | {r['metric']} | "
                     f"{r['printed']} | {source} | {'yes' if r.get('uses_gt_labels') else 'no'} |")
    if match is not None:
        lines += ["", f"### Ours beside the papers ({match}, val split)", "",
                  "Same method, protocol and metric; backbones, schedules and pre-training data still differ "
                  "(see the table above).", "",
                  "| method | backbone (paper) | protocol | metric | paper | ours (mean ± std, seeds) | source |",
                  "|---|---|---|---|---|---|---|"]
        for r in refs:
            if r["dataset"] != match or r["split"] != "val" or r["metric"] not in KEYS:
                continue
            ours = summary["groups"].get(f"{r['method']}/{r['protocol']}")
            k = r["metric"]
            cell = ("—" if ours is None
                    else f"{_pct(ours[k + '_mean'])} ± {_pct(ours[k + '_std'])} ({ours['n_seeds']})")
            lines.append(f"| {r['method']} | {r['backbone']} | {PROTOCOL_NAMES.get(r['protocol'], r['protocol'])} | "
                         f"{r['metric']} | {r['printed']} | {cell} | {r['provenance']} |")
    return "\n".join(lines) + "\n"


def method_figures(cfg: Params, backbones: list[str], real_check: list[str], out_dir: Path) -> tuple[str, list]:
    """The report's figures of the pre-trained methods: each method's ``report_visual`` (methods.registry)
    gets its saved backbones (``.../pretrain/<method>/seed<s>/backbone.pt``) and real-data check files
    (``.../real_check/<method>/render.{png,json}``); methods sharing a function share one section.
    Returns the markdown and the PNGs written (under ``renders/``)."""
    from pretrain3d.methods import registry

    (out_dir / "renders").mkdir(parents=True, exist_ok=True)  # a declared output, even when empty
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for b in backbones:
        ref = registry.spec(Path(b).parent.parent.name).report_visual
        if ref:
            groups.setdefault(ref, ([], []))[0].append(b)
    for f in real_check:
        ref = registry.spec(Path(f).parent.name).report_visual
        if ref:
            groups.setdefault(ref, ([], []))[1].append(f)
    texts, pngs = [], []
    for ref, (bs, rc) in groups.items():
        text, written = registry.resolve(ref)(cfg, bs, rc, out_dir)
        texts.append(text)
        pngs += written
    return "".join(texts), pngs


def report(cfg: Params, metrics_files: list[str], out_dir: str | Path, references: str | Path | None = None,
           renders: list[str] | None = None, real_check: list[str] | None = None,
           queries: list[str] | None = None, ppt_study: list[str] | None = None, track: bool = True) -> dict:
    """summary.json + report.md in ``out_dir``; ``track``: also an MLflow run with the summary metrics and
    the files (the pipeline's early method-comparison report is written without one: the full report
    carries the same metrics)."""
    out_dir = Path(out_dir)
    summary = summarize(metrics_files)
    summary["config_hash"] = config_hash(cfg)
    run_dirs = [Path(f).parent for f in metrics_files]
    text = markdown(summary, cfg, out_dir, run_dirs)
    render_text, pngs = method_figures(cfg, list(renders or []), list(real_check or []), out_dir)
    if render_text:
        text += "\n" + render_text
    query_text, query_pngs, summary["queries"] = query_section(list(queries or []), out_dir)
    if query_text:
        text += "\n" + query_text
        pngs += query_pngs
    study_text, summary["ppt_study"] = study_section(list(ppt_study or []))
    if study_text:
        text += "\n" + study_text
    if references is not None:
        text += "\n" + paper_references_section(load_reference_table(references), summary, cfg)
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "report.md", text)
    write_text(out_dir / "report.html", html_table(summary, cfg))
    if track:
        _track(cfg, summary, out_dir, pngs, real_check, run_dirs)
    for name, e in summary["groups"].items():
        log.info("%s: mIoU %.2f ± %.2f over %d seeds", name, 100 * e["mIoU_mean"], 100 * e["mIoU_std"], e["n_seeds"])
    for c in summary["comparisons"]:
        log.info("%s vs scratch (%s): ΔmIoU %+.2f ± %.2f; paired %s over %d seeds", c["method"], c["protocol"],
                 100 * c["mIoU_diff"], 100 * c["mIoU_diff_se"],
                 _paired_cell(c["mIoU_paired_diff"], c["mIoU_paired_diff_se"]), len(c["paired_seeds"]))
    return summary


def _track(cfg: Params, summary: dict, out_dir: Path, pngs: list, real_check: list[str] | None,
           run_dirs: list[Path]) -> None:
    with job_run(cfg.tracking, "report", job_tags(cfg, "report"), job_params(cfg)) as run:
        for name, e in summary["groups"].items():
            run.log_metrics({f"summary/{name}/{k}": v for k, v in e.items() if isinstance(v, float)})
        for src, e in summary["queries"].items():
            run.log_metrics({f"queries/{src}/{metric_key(k)}": v["mean"] for k, v in e.items()
                             if isinstance(v, dict) and isinstance(v.get("mean"), float)})
        for dataset, e in summary["ppt_study"].items():
            run.log_metrics({f"ppt_study/{dataset}/{k}/mIoU_mean": v["mean"] for k, v in e.items() if k != "delta"})
            run.log_metrics({f"ppt_study/{dataset}/{k}/delta_vs_single": v["mean"] for k, v in e["delta"].items()})
        for c in summary["comparisons"]:
            run.log_metrics({f"compare/{c['method']}-vs-scratch/{c['protocol']}/{k}": v
                             for k, v in c.items() if isinstance(v, float)})
        run.log_artifact(out_dir / "summary.json")
        run.log_artifact(out_dir / "report.md")
        figures = pngs + [Path(p) for p in (real_check or []) if str(p).endswith(".png")]
        for png in figures:
            run.log_artifact(png, "renders")
        # the pipeline's parent tells the story in the UI: the summary under keys that line up across
        # pipelines and paper references, the report with its figures where report.md links them
        artifacts = [(out_dir / n, None) for n in ("report.md", "report.html", "summary.json")]
        artifacts += [(Path(png), "renders") for png in figures]
        for d in run_dirs:
            rel = os.path.relpath(d, out_dir)
            artifacts += [(d / n, rel) for n in ("confusion.png", "render.png") if not rel.startswith("..")]
        run.log_summary(parent_metrics(summary), artifacts)
