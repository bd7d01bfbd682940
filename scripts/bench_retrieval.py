#!/usr/bin/env python
"""Speed of the keypoint repository: selecting one scene's keypoints, and answering one query against
a synthetic repository of N scenes (keypoints only; dense per-point features are never read).

    PYTHONPATH=src python scripts/bench_retrieval.py [--scenes 1000] [--k 256] [--dim 384]
        [--points 50000] [--cells 192] [--repeat 5] [--threads 1]

Prints, as medians over ``--repeat`` runs:
* keypoint selection on one scene of ``--points`` points (both rules of ``retrieval.keypoints``), i.e.
  the indexing cost after the scene's 3D features are computed (that forward pass is the backbone's);
* image -> scene: one query of ``--cells`` 2D feature cells scored against every scene's ``--k``
  keypoints (``retrieval.search.scores_against``), and the repository's memory (float16 descriptors);
* scene -> scene: one scene's keypoints against every scene (symmetric set similarity);
* PnP + RANSAC on the best scene's mutual matches (``estimate_pose``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pretrain3d.retrieval import keypoints as kp  # noqa: E402
from pretrain3d.retrieval import search as rs  # noqa: E402


def _median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--k", type=int, default=256, help="keypoints per scene")
    ap.add_argument("--dim", type=int, default=384, help="descriptor width")
    ap.add_argument("--points", type=int, default=50000, help="points of the scene to index")
    ap.add_argument("--cells", type=int, default=192, help="2D feature cells of a query image (12 x 16 at 224 px)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    # one scene: points on a 6 x 5 x 3 m box surface with smooth features (objects as feature blobs)
    n = args.points
    xyz = rng.uniform([0, 0, 0], [6, 5, 3], (n, 3))
    face = rng.integers(0, 3, n)
    xyz[np.arange(n), face] = np.where(rng.random(n) < 0.5, 0.0, np.array([6, 5, 3])[face])
    centres = rng.uniform([0, 0, 0], [6, 5, 3], (40, 3))
    proto = rs.normalise(rng.normal(size=(40, args.dim)))
    near = np.argmin(((xyz[:, None] - centres[None]) ** 2).sum(2), 1)
    feats = proto[near] + rng.normal(0, 0.1, (n, args.dim)).astype(np.float32)
    print(f"index one scene of {n} points, K={args.k}, D={args.dim} ({args.threads} thread(s)):")
    for rule in kp.RULES:
        s = _median_s(lambda: kp.select_keypoints("bench", xyz, feats, args.k, rule), args.repeat)
        print(f"  keypoints ({rule:>8}): {1000 * s:8.1f} ms")

    bank = rs.normalise(rng.normal(size=(args.scenes, args.k, args.dim))).astype(np.float16)
    mb = bank.nbytes / 2**20
    query = rs.normalise(rng.normal(size=(args.cells, args.dim)))
    s_img = _median_s(lambda: rs.scores_against(query, bank), args.repeat)
    s_scene = _median_s(lambda: rs.scores_against(bank[0], bank, symmetric=True), args.repeat)
    print(f"repository: {args.scenes} scenes x {args.k} keypoints x {args.dim} (float16) = {mb:.0f} MB")
    print(f"  image -> scene, one query of {args.cells} cells: {1000 * s_img:8.1f} ms "
          f"({1e6 * s_img / args.scenes:.0f} us per scene)")
    print(f"  scene -> scene, one query of {args.k} keypoints: {1000 * s_scene:8.1f} ms")

    # PnP on mutual matches of a query that sees 60 of a scene's keypoints
    K = np.array([[120.0, 0, 80], [0, 120.0, 60], [0, 0, 1]])
    kxyz = rng.uniform([-2, -1.5, 2], [2, 1.5, 6], (args.k, 3))
    uv = (kxyz @ K.T)[:, :2] / kxyz[:, 2:3]
    seen = rng.choice(args.k, 60, replace=False)
    kdesc = bank[1].astype(np.float32)
    q = kdesc[seen] + rng.normal(0, 0.02, (60, args.dim)).astype(np.float32)

    def pnp():
        i, j, _ = rs.mutual_matches(q, kdesc)
        return rs.estimate_pose(uv[seen][i], kxyz[j], K)

    s_pnp = _median_s(pnp, args.repeat)
    print(f"  pose (mutual matches + PnP RANSAC, 60 matches): {1000 * s_pnp:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
