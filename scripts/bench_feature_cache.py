#!/usr/bin/env python
"""Frames/s of the 2D feature-cache stage vs the bare teacher forward on the same frames.

    python scripts/bench_feature_cache.py --max-frames 48 --threads 1
    python scripts/bench_feature_cache.py --teacher dinov2_vits14 --input-size 168x224 --batch-size 8

* cache stage: ``cache_scenes`` end to end — frame-index loading, image decoding, preprocessing
  (resize + normalise), teacher forward and the atomic fp16 ``.npz`` writes — into a temporary
  folder (resume off, so every frame is computed);
* bare forward: the teacher's forward alone on the same frames, already decoded and preprocessed.

Their ratio tells how much of the stage is the network (ratio near 1) and how much decoding and
I/O (ratio well below 1). The teacher's weight hash (part of meta.json) is computed before the
clock starts. Scenes come from ``--processed-root`` (any folder below it with a frames.json, in
sorted order, whole scenes until --max-frames is reached); when there are none a tiny synthetic
dataset is generated and preprocessed in a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pretrain3d.data.frames import FRAMES_JSON, FrameIndex  # noqa: E402
from pretrain3d.teachers.cache import cache_dir, cache_scenes  # noqa: E402
from pretrain3d.teachers.registry import build_teacher, teacher_names  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"input size must be HxW (e.g. 168x224), got {text!r}")
    return int(parts[0]), int(parts[1])


def find_scenes(root: Path, max_frames: int) -> tuple[list[Path], int]:
    scenes, total = [], 0
    for fj in sorted(root.rglob(FRAMES_JSON)) if root.is_dir() else []:
        n = len(FrameIndex.load(fj, check_files=False))
        if n == 0:
            continue
        scenes.append(fj.parent)
        total += n
        if total >= max_frames:
            break
    return scenes, total


def make_tiny_dataset(tmp: Path, frames: int) -> Path:
    from pretrain3d.data.scannet_like import preprocess_scannet_like
    from pretrain3d.data.synthetic import generate_dataset

    per_scene = 8
    n = max(1, math.ceil(frames / per_scene))
    print(f"no processed scenes found: generating {n} synthetic scenes x {per_scene} frames in {tmp}", flush=True)
    generate_dataset(tmp / "raw", num_train=n, num_val=0, frames_per_scene=per_scene, width=160, height=120,
                     points_per_m2=100.0, progress=False)
    preprocess_scannet_like(tmp / "raw", tmp / "processed", splits=("train",), workers=1, progress=False)
    return tmp / "processed"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processed-root", default="data/processed/synthetic")
    ap.add_argument("--teacher", default="dinov2_vits14", choices=teacher_names())
    ap.add_argument("--layer", default="last")
    ap.add_argument("--weights", default=None, help="local state dict (teachers other than dinov2_vits14)")
    ap.add_argument("--input-size", type=parse_size, default=(168, 224), help="HxW (default 168x224)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-frames", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_feature_cache.") as tmpdir:
        tmp = Path(tmpdir)
        scenes, total = find_scenes(Path(args.processed_root), args.max_frames)
        if not scenes:
            scenes, total = find_scenes(make_tiny_dataset(tmp, args.max_frames), args.max_frames)
        t0 = time.perf_counter()
        teacher = build_teacher(args.teacher, layer=args.layer, input_size=args.input_size, weights=args.weights)
        t_build = time.perf_counter() - t0
        meta = teacher.metadata()  # hashes the weights once (memoised)
        first = FrameIndex.load(scenes[0] / FRAMES_JSON)
        print(f"teacher {args.teacher} layer {teacher.layer} input {args.input_size[0]}x{args.input_size[1]} "
              f"→ {teacher.dim}x{teacher.feature_size[0]}x{teacher.feature_size[1]}, built in {t_build:.2f}s; "
              f"{len(scenes)} scenes, {total} frames of {first.width}x{first.height}; batch {args.batch_size}, "
              f"{torch.get_num_threads()} thread(s)", flush=True)

        with torch.no_grad():  # warm-up (thread pools, allocator), not timed
            teacher(teacher.preprocess(np.zeros((min(args.batch_size, total), first.height, first.width, 3), np.uint8)))

        # 1) the cache stage, end to end
        out = cache_dir(tmp / "features", teacher)
        stats = cache_scenes(teacher, scenes, out, batch_size=args.batch_size, progress=False, resume=False)
        size = sum(p.stat().st_size for p in out.glob("*.npz"))

        # 2) the bare forward on the same frames, decoded and preprocessed beforehand
        batches = []
        for d in scenes:
            index = FrameIndex.load(d / FRAMES_JSON)
            for s in range(0, len(index), args.batch_size):
                imgs = np.stack([index.read_color(i) for i in range(s, min(s + args.batch_size, len(index)))])
                batches.append(teacher.preprocess(imgs))
        n = sum(len(b) for b in batches)
        with torch.no_grad():
            t0 = time.perf_counter()
            for x in batches:
                teacher(x)
            t_fwd = time.perf_counter() - t0

    cache_fps = stats["frames_per_s"]
    fwd_fps = n / t_fwd
    print(f"cache stage : {stats['frames']} frames in {stats['seconds']:.2f}s = {cache_fps:.1f} frames/s "
          f"(decode {stats['decode_seconds']:.2f}s, preprocess {stats['preprocess_seconds']:.2f}s, "
          f"forward {stats['forward_seconds']:.2f}s, write {stats['write_seconds']:.2f}s; "
          f"{size / max(stats['frames'], 1) / 1024:.0f} KiB/frame fp16)")
    print(f"bare forward: {n} frames in {t_fwd:.2f}s = {fwd_fps:.1f} frames/s")
    print(f"ratio cache/forward = {cache_fps / fwd_fps:.2f} "
          f"({'the network dominates' if cache_fps / fwd_fps > 0.8 else 'decoding and I/O matter'})")
    print(json.dumps({"teacher": args.teacher, "layer": teacher.layer, "input_size": list(args.input_size),
                      "batch_size": args.batch_size, "threads": torch.get_num_threads(), "frames": n,
                      "cache_frames_per_s": round(cache_fps, 2), "forward_frames_per_s": round(fwd_fps, 2),
                      "ratio": round(cache_fps / fwd_fps, 3), "weights_sha256": meta["weights_sha256"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
