#!/usr/bin/env python
"""pretrain3d.scatter: native torch ops vs torch-scatter on the project's shapes, forward and backward.

    PYTHONPATH=src python scripts/bench_scatter.py [--device cpu|cuda|auto] [--shapes embedded scannet-100k
        scannet-1m] [--repeat 5] [--threads N]

Shapes (points -> cells of a B x X x Y x Z volume, C feature channels):

* ``embedded``: params.yaml -- 2 samples of ~5k voxels, backbone width 48 (``model.channels[-1]``) into
  ``pretrain.ponderv2.volume_resolution`` 32 x 32 x 16;
* ``scannet-100k`` / ``scannet-1m``: configs/scannet-ponderv2.yaml -- one scene of 10^5 / 10^6 points, width 96,
  into 128 x 128 x 32 (the paper's volume).

Points lie on a room's floor and four walls (as scanned surfaces do: most cells stay empty). Ops: ``mean``
(the feature volume), ``max`` (values + arg-indices) with their backward, and ``first`` (the lowest row per
cell: keypoint candidates, sparse-conv output order; no gradient). Each time is the median of ``--repeat``
runs after one warm-up; backward times ``.backward()`` of ``(out * w).sum()`` alone. Without torch-scatter
only the native column is filled. The ``AUTO`` table of pretrain3d.scatter holds the per-op choice made
from these figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pretrain3d import scatter as sc  # noqa: E402

SHAPES = {  # name: (points per sample, samples, channels, (X, Y, Z))
    "embedded": (5_000, 2, 48, (32, 32, 16)),
    "scannet-100k": (100_000, 1, 96, (128, 128, 32)),
    "scannet-1m": (1_000_000, 1, 96, (128, 128, 32)),
}
OPS = ("mean", "max", "first")


def room_cells(n: int, samples: int, res: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """(n * samples,) flat cell index of points on a floor and four walls of the unit box, per sample."""
    X, Y, Z = res
    p = torch.rand(n * samples, 3, generator=gen)
    face = torch.randint(0, 5, (len(p),), generator=gen)
    p[face == 0, 2] = 0.0                     # floor
    p[face == 1, 0] = 0.0
    p[face == 2, 0] = 0.999                   # walls
    p[face == 3, 1] = 0.0
    p[face == 4, 1] = 0.999
    cell = (p * torch.tensor([X, Y, Z])).long()
    sample = torch.arange(samples).repeat_interleave(n)
    return ((sample * X + cell[:, 0]) * Y + cell[:, 1]) * Z + cell[:, 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_op(op: str, backend: str, feat: torch.Tensor, index: torch.Tensor, m: int, repeat: int) -> tuple[float, float]:
    """(forward s, backward s; nan for ``first``), medians over ``repeat`` runs after a warm-up."""
    device = feat.device
    w = None
    fwd, bwd = [], []
    for r in range(repeat + 1):
        x = feat.detach().requires_grad_(op != "first")
        _sync(device)
        t0 = time.perf_counter()
        if op == "mean":
            out = sc.scatter_mean(x, index, m, backend=backend)
        elif op == "max":
            out = sc.scatter_max(x, index, m, backend=backend)[0]
        else:
            out = sc.scatter_first(index, m, backend=backend)
        _sync(device)
        t1 = time.perf_counter()
        if op != "first":
            if w is None:
                w = torch.randn(out.shape, device=device, dtype=out.dtype)
            loss = (out * w).sum()
            _sync(device)
            t2 = time.perf_counter()
            loss.backward()
            _sync(device)
            bwd.append(time.perf_counter() - t2)
        fwd.append(t1 - t0)
        if r == 0:  # the warm-up run
            fwd.clear()
            bwd.clear()
    return statistics.median(fwd), (statistics.median(bwd) if bwd else float("nan"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    if a.threads:
        torch.set_num_threads(a.threads)
    have, why = sc.torch_scatter_status()
    backends = sc.BACKENDS if have else ("native",)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    ts_version = getattr(sc._load_torch_scatter()[0], "__version__", "?") if have else f"absent: {why}"
    print(f"# torch {torch.__version__} on {dev_name}; torch-scatter {ts_version}; median of {a.repeat}, seconds")
    print("| shape | points | C | cells | op | native fwd | torch-scatter fwd | native bwd | torch-scatter bwd | faster fwd+bwd |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---|")
    gen = torch.Generator().manual_seed(a.seed)
    for name in a.shapes:
        n, samples, c, res = SHAPES[name]
        m = samples * res[0] * res[1] * res[2]
        index = room_cells(n, samples, res, gen).to(device)
        feat = torch.randn(len(index), c, generator=gen).to(device)
        for op in a.ops:
            t = {b: time_op(op, b, feat, index, m, a.repeat) for b in backends}
            cell = {b: t[b] if b in t else (float("nan"), float("nan")) for b in sc.BACKENDS}
            fmt = lambda v: "-" if v != v else f"{v:.4f}"  # noqa: E731 - nan: not run / no backward
            total = {b: sum(x for x in t[b] if x == x) for b in t}
            best = min(total, key=total.get) if len(total) > 1 else "-"
            print(f"| {name} | {len(index):,} | {c} | {m:,} | {op} | {fmt(cell['native'][0])} | "
                  f"{fmt(cell['torch_scatter'][0])} | {fmt(cell['native'][1])} | {fmt(cell['torch_scatter'][1])} | "
                  f"{best} |", flush=True)
        del feat, index
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
