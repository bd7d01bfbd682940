"""Print the wall time of every pipeline stage from Snakemake's benchmark files.

    python scripts/stage_times.py [--since EPOCH_SECONDS] [--json OUT]

Each rule has a `benchmark:` file (benchmarks/...tsv: wall seconds, max RSS); this groups them
by rule, and prints the sum per rule and the total. `--since` keeps only files written after a
given time (the current run).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="benchmarks")
    ap.add_argument("--since", type=float, default=0.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = defaultdict(list)
    for f in sorted(Path(args.dir).rglob("*.tsv")):
        if f.stat().st_mtime < args.since:
            continue
        # benchmarks/<rule>.tsv (data jobs) or benchmarks/<experiment>/<rule>[/<job>].tsv
        parts = f.relative_to(args.dir).parts
        rule = (parts[0] if len(parts) == 1 else parts[1]).removesuffix(".tsv")
        with open(f) as fh:
            for r in csv.DictReader(fh, delimiter="\t"):
                rows[rule].append((f.stem, float(r["s"]), float(r.get("max_rss") or "nan")))
    if not rows:
        print(f"no benchmark files in {args.dir}/ (newer than {args.since})")
        return
    total = 0.0
    out = {}
    print(f"{'stage':<22}{'jobs':>5}{'wall s (sum)':>14}{'max job s':>11}{'max RSS MB':>12}")
    for rule, items in sorted(rows.items(), key=lambda kv: kv[0]):
        s = sum(i[1] for i in items)
        total += s
        out[rule] = {"jobs": len(items), "wall_s_sum": s, "wall_s_max": max(i[1] for i in items),
                     "max_rss_mb": max(i[2] for i in items)}
        print(f"{rule:<22}{len(items):>5}{s:>14.1f}{out[rule]['wall_s_max']:>11.1f}{out[rule]['max_rss_mb']:>12.0f}")
    print(f"{'sum of job wall times':<27}{total:>14.1f}  (jobs run in parallel, so the elapsed time is lower)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
