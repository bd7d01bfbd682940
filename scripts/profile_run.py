#!/usr/bin/env python
"""Where the time of a pipeline run went: per stage, fixed cost against compute, and per step.

    python scripts/profile_run.py [--experiment embedded-benchmark] [--since EPOCH_SECONDS] [--json OUT]

Reads the job profiles every CLI job writes under ``logs/<experiment>/profile/`` (see
src/pretrain3d/profiling.py) and Snakemake's benchmark files (``benchmarks/<experiment>/``: the
wall time of the whole job, shell included). Per command it prints the sum over jobs of:
startup (interpreter + CLI import), imports, tracking (MLflow run open/close and logging),
data (loading scenes, frames, features; the data part of every step), checkpoint (save/load),
compute (the rest), and `outside` = Snakemake's job wall minus the job's own total (shell,
process exit). Then per command the mean training step split: data / forward / backward / optimiser.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

PHASES = ("startup", "imports", "tracking", "data", "checkpoint", "compute")


def read_profiles(folder: Path, since: float | None) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.json")):
        if since is not None and path.stat().st_mtime < since:
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping {path}: {err}", file=sys.stderr)
            continue
        rec["file"] = str(path)
        out.append(rec)
    return out


def benchmark_walls(folder: Path, since: float | None) -> dict[str, float]:
    """Job name (``<rule>/<file stem>``) -> wall seconds from Snakemake's benchmark TSVs."""
    walls = {}
    for path in folder.rglob("*.tsv"):
        if since is not None and path.stat().st_mtime < since:
            continue
        lines = path.read_text().strip().splitlines()
        if len(lines) >= 2:
            walls[f"{path.parent.name}/{path.stem}"] = float(lines[-1].split("\t")[0])
    return walls


def summarize(profiles: list[dict], walls: dict[str, float]) -> dict:
    by_cmd: dict[str, dict] = defaultdict(lambda: {"jobs": 0, **{p: 0.0 for p in PHASES}, "total": 0.0,
                                                   "steps": defaultdict(float)})
    for rec in profiles:
        row = by_cmd[rec["command"]]
        row["jobs"] += 1
        for p in PHASES:
            row[p] += rec.get("phases", {}).get(p, 0.0)
        row["total"] += rec.get("total", 0.0)
        for k, v in rec.get("steps", {}).items():
            row["steps"][k] += v
    stage_wall: dict[str, float] = defaultdict(float)
    for name, wall in walls.items():
        stage_wall[name.split("/")[0]] += wall
    return {"commands": {c: {**r, "steps": dict(r["steps"])} for c, r in sorted(by_cmd.items())},
            "benchmark_wall_by_rule": dict(sorted(stage_wall.items())),
            "benchmark_wall_total": sum(walls.values())}


def print_tables(summary: dict) -> None:
    cmds = summary["commands"]
    head = f"{'command':<18}{'jobs':>5}" + "".join(f"{p:>11}" for p in PHASES) + f"{'total':>10}{'fixed %':>9}"
    print("Seconds summed over jobs (fixed = startup + imports + tracking + checkpoint):")
    print(head)
    grand = defaultdict(float)
    for c, r in cmds.items():
        fixed = r["startup"] + r["imports"] + r["tracking"] + r["checkpoint"]
        print(f"{c:<18}{r['jobs']:>5}" + "".join(f"{r[p]:>11.1f}" for p in PHASES)
              + f"{r['total']:>10.1f}{100 * fixed / max(r['total'], 1e-9):>8.0f}%")
        for p in (*PHASES, "total"):
            grand[p] += r[p]
        grand["jobs"] += r["jobs"]
    fixed = grand["startup"] + grand["imports"] + grand["tracking"] + grand["checkpoint"]
    print(f"{'all':<18}{int(grand['jobs']):>5}" + "".join(f"{grand[p]:>11.1f}" for p in PHASES)
          + f"{grand['total']:>10.1f}{100 * fixed / max(grand['total'], 1e-9):>8.0f}%")
    if summary["benchmark_wall_total"]:
        print(f"\nSnakemake job wall (benchmark files) {summary['benchmark_wall_total']:.1f} s; "
              f"outside the jobs' own clocks (shell, exit, no profile): "
              f"{summary['benchmark_wall_total'] - grand['total']:.1f} s")
    print("\nTraining steps (mean ms per step):")
    print(f"{'command':<18}{'steps':>7}{'data':>9}{'forward':>9}{'backward':>10}{'optim':>8}{'step':>8}")
    for c, r in cmds.items():
        s = r["steps"]
        n = s.get("steps", 0)
        if not n:
            continue
        parts = [1000 * s.get(k, 0.0) / n for k in ("data", "forward", "backward", "optimizer")]
        print(f"{c:<18}{int(n):>7}" + "".join(f"{v:>9.0f}" for v in parts[:2]) + f"{parts[2]:>10.0f}"
              f"{parts[3]:>8.0f}{sum(parts):>8.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="embedded-benchmark")
    ap.add_argument("--root", default=".", help="the workspace (default: here)")
    ap.add_argument("--since", type=float, default=None, help="only files written after this time (epoch s)")
    ap.add_argument("--json", default=None, help="also write the summary here")
    args = ap.parse_args(argv)
    root = Path(args.root)
    folder = root / "logs" / args.experiment / "profile"
    profiles = read_profiles(folder, args.since)
    if not profiles:
        print(f"no job profiles in {folder} (jobs write them when PRETRAIN3D_PROFILE_DIR is set, as the "
              "workflow does)", file=sys.stderr)
        return 1
    summary = summarize(profiles, benchmark_walls(root / "benchmarks" / args.experiment, args.since))
    print_tables(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
