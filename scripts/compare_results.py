"""Compare two results folders run by run: are the metrics and pre-trained weights identical?

    python scripts/compare_results.py results/A results/B

For every ``runs/<method>/<protocol>/seed<s>/metrics.json`` in both: mIoU, mAcc, allAcc and every
per-class IoU must be equal to the last digit; for every ``pretrain/<method>/seed<s>/``: the
per-epoch losses in pretrain_log.json and every tensor of backbone.pt. Timings and paths are ignored.
Prints one line per run and exits 1 when anything differs (a refactor that must not change results).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    keep = {k: m[k] for k in ("mIoU", "mAcc", "allAcc") if k in m}
    for k in ("iou_per_class", "per_class_iou", "class_iou"):
        if k in m:
            keep[k] = m[k]
    return keep


def _losses(path: Path) -> list:
    log = json.loads(path.read_text())
    return [{k: v for k, v in h.items() if "time" not in k and "seconds" not in k} for h in log.get("history", [])]


def _tensors_equal(a: Path, b: Path) -> tuple[bool, str]:
    sa = torch.load(a, map_location="cpu", weights_only=False)["backbone"]
    sb = torch.load(b, map_location="cpu", weights_only=False)["backbone"]
    if sa.keys() != sb.keys():
        return False, "different keys"
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    return not diff, f"{len(diff)} of {len(sa)} tensors differ" if diff else f"{len(sa)} tensors equal"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    bad = 0
    runs = sorted(p.relative_to(args.a) for p in args.a.glob("runs/*/*/seed*/metrics.json"))
    for rel in runs:
        other = args.b / rel
        if not other.exists():
            print(f"MISSING  {rel} (only in {args.a})")
            bad += 1
            continue
        ma, mb = _metrics(args.a / rel), _metrics(other)
        same = ma == mb
        bad += not same
        print(f"{'same    ' if same else 'DIFFERENT'} {rel.parent}: mIoU {ma.get('mIoU')!r} vs {mb.get('mIoU')!r}")
    for bb in sorted(p.relative_to(args.a) for p in args.a.glob("pretrain/*/seed*/backbone.pt")):
        other = args.b / bb
        if not other.exists():
            print(f"MISSING  {bb}")
            bad += 1
            continue
        ok, what = _tensors_equal(args.a / bb, other)
        log_a, log_b = args.a / bb.parent / "pretrain_log.json", other.parent / "pretrain_log.json"
        if log_a.exists() and log_b.exists():
            same_loss = _losses(log_a) == _losses(log_b)
            what += "; per-epoch losses " + ("equal" if same_loss else "DIFFER")
            ok = ok and same_loss
        bad += not ok
        print(f"{'same    ' if ok else 'DIFFERENT'} {bb.parent}: {what}")
    print(f"{len(runs)} runs compared: {'all identical' if not bad else f'{bad} differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
