#!/usr/bin/env python
"""PonderV2 step time and memory per 1,000 rays, on generated rooms (CPU here; CUDA when present).

    PYTHONPATH=src python scripts/bench_ponderv2.py [--rays 64 128 256] [--views 2] [--batch 2]
        [--steps 5] [--device auto|cpu|cuda] [--config params.yaml ...]

For each rays-per-view setting it runs a few training steps of the configured PonderV2 model on
procedurally generated scenes and prints:

* step time (median over ``--steps`` after one warm-up), split into data loading, backbone + volume,
  rendering forward, and backward + optimiser step;
* activation memory: the bytes of every distinct tensor autograd saves for the backward pass (exact
  and device-independent), and its slope per 1,000 rays (the cost of adding rays);
* peak memory: CUDA ``max_memory_allocated`` on a GPU, process peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pretrain3d.config import load_config  # noqa: E402
from pretrain3d.data import synthetic as syn  # noqa: E402
from pretrain3d.data.scannet_like import preprocess_scannet_like  # noqa: E402
from pretrain3d.engine.seed import resolve_device, seed_everything  # noqa: E402
from pretrain3d.methods.ponderv2 import PonderDataset, PonderV2Model, ponder_collate  # noqa: E402
from pretrain3d.data.scene import load_split_scenes  # noqa: E402
from pretrain3d.models.segmentor import build_backbone  # noqa: E402


class SavedTensorMeter:
    """Sum of the distinct storages autograd saves for backward while active."""

    def __init__(self):
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            return t
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += size
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=None, help="params.yaml and overlays")
    ap.add_argument("--rays", type=int, nargs="+", default=[64, 128, 256], help="rays per view")
    ap.add_argument("--views", type=int, default=None, help="default: pretrain.ponderv2.views")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    cfg = load_config(*(args.config or ["params.yaml"]))
    seed_everything(0, threads=args.threads)
    device = resolve_device(args.device)
    pv0 = cfg.pretrain.ponderv2
    views = args.views or pv0.views
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        s = cfg.data.synthetic
        syn.generate_dataset(tmp / "raw", num_train=max(2, args.batch), num_val=1, seed=1, frames_per_scene=4,
                             width=s.image_width, height=s.image_height, points_per_m2=s.points_per_m2, workers=1,
                             progress=False)
        preprocess_scannet_like(tmp / "raw", tmp / "processed", workers=1, progress=False)
        scenes = load_split_scenes(tmp / "processed", "train", cfg.data.num_classes)
        print(f"device {device}, {args.threads} thread(s); batch {args.batch} scenes x {views} views; "
              f"volume {'x'.join(map(str, pv0.volume_resolution))}, {pv0.samples_uniform}+{pv0.samples_importance} "
              f"samples/ray; grid {cfg.train.grid_size} m")
        print(f"{'rays/view':>9} {'rays/step':>9} {'step s':>7} {'data':>6} {'vol':>6} {'render':>7} {'bwd+opt':>7} "
              f"{'saved MB':>9} {'peak MB':>8}")
        rows = []
        for r in args.rays:
            pv = pv0.model_copy(update={"rays_per_view": r, "views": views})
            pcfg = cfg.pretrain.model_copy(update={"ponderv2": pv})
            ds = PonderDataset(scenes, pcfg, cfg.train.grid_size)
            torch.manual_seed(0)
            model = PonderV2Model(build_backbone(cfg.model), pv).to(device)
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            times, saved, n_rays = [], [], []
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for step in range(args.steps + 1):
                t0 = time.perf_counter()
                batch = ponder_collate([ds[(i % len(ds), step * 31 + i)] for i in range(args.batch)])
                batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                t1 = time.perf_counter()
                meter = SavedTensorMeter()
                with meter:
                    vols = model.volumes(batch)
                    _sync(device)
                    t2 = time.perf_counter()
                    loss, _ = model.loss_from_volumes(batch, vols)
                    _sync(device)
                t3 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _sync(device)
                t4 = time.perf_counter()
                if step > 0:  # the first step pays one-off costs (allocator, spconv tuning)
                    times.append((t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
                    saved.append(meter.bytes)
                    n_rays.append(len(batch["ray_dist"]))
            med = [statistics.median(x) for x in zip(*times)]
            peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            rows.append((statistics.mean(n_rays), statistics.median(saved) / 2**20))
            print(f"{r:>9} {statistics.mean(n_rays):>9.0f} {med[0]:>7.3f} {med[1]:>6.3f} {med[2]:>6.3f} {med[3]:>7.3f} "
                  f"{med[4]:>7.3f} {rows[-1][1]:>9.1f} {peak:>8.0f}")
        if len(rows) >= 2:
            (r0, m0), (r1, m1) = rows[0], rows[-1]
            print(f"activation memory per 1,000 rays (slope {args.rays[0]}->{args.rays[-1]} rays/view): "
                  f"{(m1 - m0) / max(r1 - r0, 1) * 1000:.1f} MB; fixed part (backbone + volume) ~"
                  f"{m0 - (m1 - m0) / max(r1 - r0, 1) * r0:.1f} MB")
    return 0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
