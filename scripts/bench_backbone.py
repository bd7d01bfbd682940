#!/usr/bin/env python
"""Time SpUNet forward+backward on synthetic room-like voxel clouds; print ms/iter and peak RSS.

    PYTHONPATH=src python scripts/bench_backbone.py --points 25000 --batch 2 --width small --iters 5

Each sample is the surface of a room (floor + four walls) with a few boxes inside, voxelised on
an integer grid (unique voxels, like GridSample at 2 cm) and subsampled to exactly --points
voxels, so neighbourhoods look like real indoor scans rather than a uniform cloud.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pretrain3d.models.spunet import SMALL_CONFIG, SpUNet  # noqa: E402

WIDTHS = {"small": SMALL_CONFIG, "full": {}}


def room_voxels(n_points: int, seed: int) -> np.ndarray:
    """(n_points, 3) int32 unique voxel coordinates >= 0 on a room-like surface."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_points / 2.2))) + 4  # floor + 4 walls of height side/2 ~ 3*side^2
    height = max(side // 2, 4)
    faces = []
    a, b = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    faces.append(np.stack([a.ravel(), b.ravel(), np.zeros(a.size, int)], 1))  # floor
    a, h = np.meshgrid(np.arange(side), np.arange(height), indexing="ij")
    a, h = a.ravel(), h.ravel()
    faces += [np.stack([a, np.zeros_like(a), h], 1), np.stack([a, np.full_like(a, side - 1), h], 1),
              np.stack([np.zeros_like(a), a, h], 1), np.stack([np.full_like(a, side - 1), a, h], 1)]
    for _ in range(4):  # furniture: box surfaces
        lo = rng.integers(2, side // 2, size=3)
        lo[2] = 0
        ext = rng.integers(4, max(side // 4, 5), size=3)
        g = np.stack(np.meshgrid(*[np.arange(lo[i], lo[i] + ext[i]) for i in range(3)], indexing="ij"), -1)
        g = g.reshape(-1, 3)
        on_surface = ((g == lo) | (g == lo + ext - 1)).any(1)
        faces.append(g[on_surface])
    vox = np.unique(np.concatenate(faces), axis=0)
    vox = vox[(vox >= 0).all(1)]
    if len(vox) < n_points:
        raise ValueError(f"generator produced {len(vox)} < {n_points} voxels")
    keep = rng.choice(len(vox), size=n_points, replace=False)
    return vox[keep].astype(np.int32)


def make_batch(points: int, batch: int, in_channels: int = 6, seed: int = 0) -> dict:
    coords = [torch.from_numpy(room_voxels(points, seed + i)) for i in range(batch)]
    g = torch.Generator().manual_seed(seed)
    return {
        "grid_coord": torch.cat(coords),
        "feat": torch.rand(points * batch, in_channels, generator=g),
        "offset": torch.arange(1, batch + 1) * points,
    }


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def bench(points: int = 25_000, batch: int = 2, width: str = "small", iters: int = 5,
          warmup: int = 1, device: str = "cpu", num_classes: int = 20) -> dict:
    torch.manual_seed(0)
    model = SpUNet(in_channels=6, num_classes=num_classes, **WIDTHS[width]).to(device).train()
    data = {k: v.to(device) for k, v in make_batch(points, batch).items()}
    params = sum(p.numel() for p in model.parameters())

    def step():
        model.zero_grad(set_to_none=True)
        out = model(data)
        out.float().square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    result = {
        "width": width, "points_per_sample": points, "batch": batch, "iters": iters,
        "device": device, "threads": torch.get_num_threads(), "params": params,
        "ms_per_iter_median": float(np.median(times)), "ms_per_iter_min": float(np.min(times)),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    if device.startswith("cuda"):
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=25_000, help="voxels per sample")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", choices=sorted(WIDTHS), default="small")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = bench(args.points, args.batch, args.width, args.iters, args.warmup, args.device)
    print(f"{r['width']} SpUNet ({r['params'] / 1e6:.2f} M params), {r['batch']} x {r['points_per_sample']} "
          f"voxels on {r['device']} ({r['threads']} threads): {r['ms_per_iter_median']:.0f} ms/iter "
          f"forward+backward (median of {r['iters']}), peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
