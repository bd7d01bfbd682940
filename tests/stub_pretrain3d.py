#!/usr/bin/env python
"""A stand-in for the `pretrain3d` CLI in workflow tests: writes the outputs the step declarations
promise, with content = hash of the files and config fields the step reads, in milliseconds.

So Snakemake's and DVC's bookkeeping (what reruns when) is tested without training anything, and a
rerun that should change an output visibly does. Every call is appended to $STUB_LOG.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from pretrain3d.config import load_config
from pretrain3d.workflow.steps import STEPS

COMMAND_STEP = {"generate": "generate_synthetic", "preprocess": "preprocess", "features": "cache_features",
                "pretrain": "pretrain", "real-check": "real_check", "finetune": "finetune",
                "evaluate": "evaluate", "log-references": "log_references", "report": "report",
                "download": "download", "query-benchmark": "scene_queries"}


def _digest(paths, fields) -> str:
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for p in sorted(paths):
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("--config", action="append")
    ap.add_argument("--method")
    ap.add_argument("--seed")
    ap.add_argument("--protocol")
    ap.add_argument("--source")
    ap.add_argument("--no-tracking", action="store_true")  # `report` as the early method comparison
    args, _ = ap.parse_known_args(argv)
    step = STEPS["benchmark_report" if args.cmd == "report" and args.no_tracking else COMMAND_STEP[args.cmd]]
    cfg = load_config(*args.config)
    w = {k: getattr(args, k) for k in step.wildcards}
    inputs = [f for v in step.inputs(cfg, w).values() for f in ([v] if isinstance(v, str) else v)]
    content = _digest(inputs, step.field_values(cfg, w))
    for key, out in step.outputs(cfg, w).items():
        out = Path(out)
        if key in step.directory_outputs:
            out.mkdir(parents=True, exist_ok=True)
            (out / "stub.txt").write_text(content)
            digest = dict(step.content_digests).get(key)
            if digest:  # the folder's digest file (a processed dataset's manifest.json)
                (out / digest).write_text(content)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"mIoU": 0.5, "stub": content}) if out.suffix == ".json" else content)
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(" ".join([step.name, *(f"{k}={v}" for k, v in w.items())]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
