#!/usr/bin/env python
"""ConDense step time and memory per 1,000 rays, with and without the trunk cache (CPU here; CUDA when present).

    PYTHONPATH=src python scripts/bench_condense.py [--rays 64 128] [--batch 2] [--steps 3]
        [--device auto|cpu|cuda] [--feature-dim 64] [--config params.yaml ...]

For each trunk-cache setting (on / off) and rays-per-view setting it runs a few training steps of the
configured ConDense model (``pretrain.condense``, ``teacher.*``) on procedurally generated scenes and prints:

* step time (median over ``--steps`` after one warm-up), split into data loading, 2D network (trunk
  tokens from the cache or from the whole ViT, trainable top blocks, teacher reference, sampling at the
  ray pixels, the losses), 3D backbone + volume, rendering forward (with PonderV2's geometry terms), and
  backward + optimiser step;
* activation memory: the bytes of every distinct tensor autograd saves for the backward pass (exact and
  device-independent; ``torch.autograd.graph.saved_tensors_hooks``), and its slope per 1,000 rays;
* peak memory: CUDA ``max_memory_allocated`` on a GPU, process peak RSS on CPU (``getrusage``);
* the one-off cost of filling the trunk cache (frames, seconds, MB).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ponderv2 import SavedTensorMeter  # noqa: E402

from pretrain3d.config import load_config  # noqa: E402
from pretrain3d.data import synthetic as syn  # noqa: E402
from pretrain3d.data.scannet_like import preprocess_scannet_like  # noqa: E402
from pretrain3d.engine.seed import resolve_device, seed_everything  # noqa: E402
from pretrain3d.methods import condense as C  # noqa: E402
from pretrain3d.data.scene import load_split_scenes  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=None, help="params.yaml and overlays")
    ap.add_argument("--rays", type=int, nargs="+", default=[64, 128], help="rays per view")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--feature-dim", type=int, default=None, help="override pretrain.condense.feature_dim")
    args = ap.parse_args()

    cfg = load_config(*(args.config or ["params.yaml"]))
    seed_everything(0, threads=args.threads)
    device = resolve_device(args.device)
    cc0 = cfg.pretrain.condense
    if args.feature_dim:
        cc0 = cc0.model_copy(update={"feature_dim": args.feature_dim})
    t0 = time.perf_counter()
    teacher = C.build_condense_teacher(cfg)
    print(f"teacher {teacher.name} layer {teacher.layer} input {teacher.input_size} -> {teacher.feature_size} "
          f"cells, built in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        s = cfg.data.synthetic
        syn.generate_dataset(tmp / "raw", num_train=max(2, args.batch), num_val=1, seed=1, frames_per_scene=4,
                             width=s.image_width, height=s.image_height, points_per_m2=s.points_per_m2, workers=1,
                             progress=False)
        preprocess_scannet_like(tmp / "raw", tmp / "processed", workers=1, progress=False)
        scenes = load_split_scenes(tmp / "processed", "train", cfg.data.num_classes)
        print(f"device {device}, {args.threads} thread(s); batch {args.batch} scenes x {cc0.views} views; "
              f"train_blocks {cc0.train_blocks}; feature dim {cc0.feature_dim or teacher.dim}; volume {'x'.join(map(str, cc0.volume_resolution))}, "
              f"{cc0.samples_uniform}+{cc0.samples_importance} samples/ray; grid {cfg.train.grid_size} m")
        print("times in ms (median); memory: autograd-saved tensors (exact) and peak "
              + ("CUDA allocated" if device.type == "cuda" else "process RSS (getrusage)"))
        print(f"{'cache':>5} {'rays/view':>9} {'rays':>5} {'step':>7} {'data':>6} {'2D':>6} {'3D+vol':>7} "
              f"{'render':>7} {'bwd+opt':>7} {'saved MB':>9} {'peak MB':>8}")
        summary = {}
        for cache in (True, False):
            rows = []
            for r in args.rays:
                cc = cc0.model_copy(update={"rays_per_view": r, "cache_trunk": cache})
                c2 = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"condense": cc})})
                torch.manual_seed(0)
                t0 = time.perf_counter()
                setup = C.build(c2, "condense", scenes, teacher=teacher)
                setup_s = time.perf_counter() - t0
                if cache and r == args.rays[0]:
                    nb = sum(t.numel() * t.element_size() for t in setup.model.image_net.trunk_cache.values())
                    nb += sum(t.numel() * t.element_size() for t in setup.model.image_net.reference_cache.values())
                    print(f"trunk cache: {len(setup.model.image_net.trunk_cache)} frames, {nb / 2**20:.1f} MB, "
                          f"setup (incl. cache) {setup_s:.2f} s")
                ds, model = setup.dataset, setup.model.to(device)
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
                times, saved, n_rays = [], [], []
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                for step in range(args.steps + 1):
                    t0 = time.perf_counter()
                    batch = setup.collate([ds[(i % len(ds), step * 31 + i)] for i in range(args.batch)])
                    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                    t1 = time.perf_counter()
                    split: dict = {}
                    meter = SavedTensorMeter()
                    with meter:
                        loss, _ = model.loss(batch, timings=split)
                    t3 = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t4 = time.perf_counter()
                    if step > 0:  # the first step pays one-off costs (allocator, spconv tuning)
                        times.append((t4 - t0, t1 - t0, split["2d"], split["3d"], split["render"], t4 - t3))
                        saved.append(meter.bytes)
                        n_rays.append(len(batch["ray_dist"]))
                med = [1000 * statistics.median(x) for x in zip(*times)]
                peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                rows.append((statistics.mean(n_rays), statistics.median(saved) / 2**20))
                print(f"{'on' if cache else 'off':>5} {r:>9} {rows[-1][0]:>5.0f} {med[0]:>7.0f} {med[1]:>6.0f} "
                      f"{med[2]:>6.0f} {med[3]:>7.0f} {med[4]:>7.0f} {med[5]:>7.0f} {rows[-1][1]:>9.1f} {peak:>8.0f}")
                summary[(cache, r)] = med
            if len(rows) >= 2:
                (r0, m0), (r1, m1) = rows[0], rows[-1]
                print(f"  cache {'on' if cache else 'off'}: activation memory per 1,000 rays (slope) "
                      f"{(m1 - m0) / max(r1 - r0, 1) * 1000:.1f} MB; fixed part ~{m0 - (m1 - m0) / max(r1 - r0, 1) * r0:.1f} MB")
        r = args.rays[-1]
        on, off = summary[(True, r)], summary[(False, r)]
        views = args.batch * cc0.views
        print(f"2D part at {r} rays/view: cached trunk {on[2]:.0f} ms vs whole ViT {off[2]:.0f} ms per step "
              f"({views} views: {(off[2] - on[2]) / views:.0f} ms per view saved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
