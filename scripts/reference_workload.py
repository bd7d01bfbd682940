#!/usr/bin/env python
"""A fixed CPU workload whose time makes a run's duration machine-independent.

    python scripts/reference_workload.py [--json OUT] [--repeat 5]

The README run's wall time depends on the machine (issue 14 measured the same code at 748 s and
1,093 s on two machines of the same kind). Dividing it by the time of this workload, measured in
the same run on the same machine, gives a figure in "reference units" that compares across
machines. The workload mixes what the pipeline spends its time on, single-threaded like its jobs:
small dense GEMMs (sparse-convolution arithmetic, ViT teacher), index gathers and scatter-adds
(kernel maps, voxelisation), numpy sorting (grid sampling) and many small tensor operations
(Python-level overhead of training loops). It never changes: a change here invalidates every
figure measured with it (REFERENCE_VERSION says which one a figure used).

v2 (issue 14): v1's parts took ~40 ms each, and two README runs on one machine measured 0.17 s and
0.14 s (best of 2): too short to be stable. v2 runs each part 4x longer, best of 5 (a figure of
~0.6 s, ~3 s to measure).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REFERENCE_VERSION = 2
SCALE = 4  # v2: every part 4x v1's work


def _gemm() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 64, generator=g)
    w = torch.randn(64, 64, generator=g)
    for _ in range(100 * SCALE):
        a = torch.tanh(a @ w * 0.1)


def _gather_scatter() -> None:
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(30_000, 32, generator=g)
    idx = torch.randint(0, 30_000, (30_000,), generator=g)
    out = torch.zeros_like(feats)
    for _ in range(40 * SCALE):
        out.index_add_(0, idx, feats.index_select(0, idx))


def _sort() -> None:
    rng = np.random.default_rng(2)
    keys = rng.integers(0, 1 << 40, size=400_000)
    for _ in range(2 * SCALE):
        np.unique(keys, return_inverse=True)


def _small_ops() -> None:
    x = torch.zeros(16)
    for _ in range(15_000 * SCALE):
        x = x + 1.0


PARTS = {"gemm": _gemm, "gather_scatter": _gather_scatter, "sort": _sort, "small_ops": _small_ops}


def measure(repeat: int = 5) -> dict:
    """Best-of-``repeat`` seconds of each part (one thread) and their sum."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = {}
        for name, fn in PARTS.items():
            best = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            parts[name] = round(best, 4)
    finally:
        torch.set_num_threads(threads)
    return {"version": REFERENCE_VERSION, "seconds": round(sum(parts.values()), 4), "parts": parts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    result = measure(args.repeat)
    print(f"reference workload v{result['version']}: {result['seconds']:.2f} s "
          f"({', '.join(f'{k} {v:.2f}' for k, v in result['parts'].items())})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
