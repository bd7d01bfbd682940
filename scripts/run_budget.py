#!/usr/bin/env python
"""Print a run's duration in seconds and in machine-independent reference units.

    python scripts/run_budget.py --install-start T0 --start T1 --end T2 --reference logs/reference_workload.json

T0..T2 are epoch seconds (scripts/run.sh records them): install = T1 - T0 (bootstrap and the
reference workload), pipeline = T2 - T1. The reference workload (scripts/reference_workload.py)
ran on the same machine just before the pipeline; pipeline / reference is the figure to compare
across machines (issue 14: the README run must take <= 15 minutes, install included, on 2 cores).

The same two figures are printed for the method comparison (``results/<experiment>/benchmark/report.md``,
every method x protocol x seed evaluated, written before the studies, scene queries and real-data
checks finish): the time from the install's start to that file's modification.
"""

from __future__ import annotations

import argparse
import json
import glob
from pathlib import Path

BUDGET_S = 15 * 60
MILESTONE = "results/*/benchmark/report.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--install-start", type=float, required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    ap.add_argument("--reference", required=True, help="JSON written by scripts/reference_workload.py")
    ap.add_argument("--milestone", default=MILESTONE, help="glob of the early method-comparison report(s)")
    args = ap.parse_args(argv)
    ref = json.loads(Path(args.reference).read_text())
    install, pipeline = args.start - args.install_start, args.end - args.start
    total = install + pipeline
    units = pipeline / ref["seconds"]
    print(f"install {install:.0f} s + pipeline {pipeline:.0f} s = {total:.0f} s "
          f"({'within' if total <= BUDGET_S else 'OVER'} the {BUDGET_S // 60}-minute budget); "
          f"pipeline = {units:.0f} reference units (reference workload v{ref['version']}: {ref['seconds']:.2f} s "
          f"on this machine)")
    for f in sorted(glob.glob(args.milestone)):
        t = Path(f).stat().st_mtime
        if not args.start <= t <= args.end + 1:
            continue  # from an earlier run
        print(f"method comparison {f}: written {t - args.start:.0f} s into the pipeline, "
              f"{t - args.install_start:.0f} s with the install "
              f"({'within' if t - args.install_start <= BUDGET_S else 'OVER'} the {BUDGET_S // 60}-minute budget); "
              f"{(t - args.start) / ref['seconds']:.0f} reference units")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
