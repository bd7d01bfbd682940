#!/usr/bin/env python
"""Which keypoint selection rule wins (issue 11): the three query benchmarks of ``pretrain3d
query-benchmark`` for each rule of ``retrieval.keypoints`` (fps, distinct) and each given source, on the
config's val repository. Prints one table; the full metrics land under ``--out``.

    PYTHONPATH=src python scripts/compare_keypoint_rules.py -c params.yaml \\
        --source teacher --source condense=results/embedded-benchmark/pretrain/condense/seed0/backbone.pt \\
        [--seed 0] [--out /tmp/keypoint-rules]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pretrain3d.config import load_config  # noqa: E402
from pretrain3d.retrieval.keypoints import RULES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", action="append", default=None)
    ap.add_argument("--source", action="append", required=True, help="NAME or NAME=BACKBONE.pt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/keypoint-rules")
    args = ap.parse_args()
    from pretrain3d.stages.query_benchmark import score_queries

    base = load_config(*(args.config or ["params.yaml"]))
    rows = []
    for spec in args.source:
        name, _, backbone = spec.partition("=")
        for rule in RULES:
            cfg = base.model_copy(update={"queries": base.queries.model_copy(update={"rule": rule}),
                                          "tracking": base.tracking.model_copy(update={"enabled": False})})
            r = score_queries(cfg, name, args.seed, Path(args.out) / f"{name}-{rule}", backbone=backbone or None,
                              progress=False)
            pose = r["image"]["pose"]
            rows.append((name, rule, r["image"]["recall@1"], r["image"]["chance@1"], pose.get("rotation_deg_median"),
                         pose.get("translation_m_median"), r["duplicates"]["ap"], r["language"]["map"],
                         r["seconds"]["index_per_scene"]))
    print(f"{'source':<10} {'rule':<9} {'img R@1':>8} {'chance':>7} {'rot°':>7} {'transl m':>9} {'dup AP':>7} "
          f"{'lang mAP':>9} {'s/scene':>8}")
    for n, rule, r1, ch, rot, tr, ap_, lm, sec in rows:
        fmt = (lambda v, d: "—" if v is None or v != v else f"{v:.{d}f}")
        print(f"{n:<10} {rule:<9} {r1:>8.3f} {ch:>7.3f} {fmt(rot, 1):>7} {fmt(tr, 2):>9} {ap_:>7.3f} {lm:>9.3f} "
              f"{sec:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
