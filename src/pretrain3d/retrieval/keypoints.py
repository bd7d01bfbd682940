"""Sparse keypoints of a scene: K positions with descriptors, chosen from per-point 3D features.

ConDense "condenses" a scene into a compact set of decorated key points that keep 2D-3D consistency
(shared/reference/condense.md); the paper's selection rule is not known, so two rules are implemented
and compared by the query benchmarks (``stages/keypoints``), and neither is presented as the paper's:

* ``fps`` -- farthest point sampling over the scene's points: spatial spread only, the features play no
  part in where the keypoints go. The baseline rule.
* ``distinct`` -- feature distinctiveness + spatial spread: a point's score is how much its feature differs
  from the mean feature of its spatial neighbourhood (``1 - cos(f_i, mean f_j, |x_j - x_i| < radius)``:
  high at object boundaries and on small objects, low inside large uniform surfaces such as walls);
  points are taken greedily by score with a minimum spacing (non-maximum suppression in 3D), and when
  the spacing leaves fewer than K, FPS over the rest fills up.

Descriptors are the 3D features at the keypoints, L2-normalised (the query side normalises too, so
scores are cosines). For ConDense these are the neural field's features, trained to agree with the 2D
network's pixel features (the consistency loss of ``methods.condense``): that training is what makes them
comparable to a query image's features, no stage of its own is needed.

Candidates are first thinned to one point per ``voxel`` (the first point of each occupied voxel), so a
scene of 10^5-10^6 points costs a KD-tree over 10^3-10^4 candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pretrain3d.scatter import scatter_first

__all__ = ["RULES", "KeypointSet", "voxel_candidates", "farthest_point_sampling", "distinctiveness",
           "select_keypoints"]

RULES = ("fps", "distinct")


@dataclass
class KeypointSet:
    """One scene's keypoints: ``xyz`` (K, 3) float32 world coordinates, ``desc`` (K, D) float32 unit
    descriptors, ``score`` (K,) the selection score (distinctiveness; 0 for FPS), ``point_index`` (K,) the
    indices of the chosen scene points."""

    scene_id: str
    xyz: np.ndarray
    desc: np.ndarray
    score: np.ndarray
    point_index: np.ndarray

    def __len__(self) -> int:
        return int(len(self.xyz))


def voxel_candidates(xyz: np.ndarray, voxel: float) -> np.ndarray:
    """Indices of one point per occupied ``voxel``-metre cell (the lowest index in each), sorted."""
    if voxel <= 0:
        return np.arange(len(xyz))
    keys = np.floor(np.asarray(xyz, np.float64) / voxel).astype(np.int64)
    if not len(keys):
        return np.zeros(0, np.int64)
    keys -= keys.min(0)
    span = keys.max(0) + 1
    if float(np.prod(span.astype(np.float64))) < 2.0**62:
        # one int64 per cell: 5x faster than a unique over rows at 10^6 points
        _, inv = torch.unique(torch.from_numpy((keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]),
                              return_inverse=True)
    else:  # too many cells to number in int64
        _, inv = torch.unique(torch.from_numpy(keys), dim=0, return_inverse=True)
    return np.sort(scatter_first(inv, int(inv.max()) + 1).numpy())


def farthest_point_sampling(xyz: np.ndarray, k: int, start: int = 0, taken: np.ndarray | None = None) -> np.ndarray:
    """``k`` indices into ``xyz`` (n, 3), each the point farthest from all chosen so far. ``taken``: indices
    already chosen (they are not returned again; the new ones are spread away from them too)."""
    xyz = np.asarray(xyz, np.float64)
    n = len(xyz)
    k = min(int(k), n - (0 if taken is None else len(taken)))
    if k <= 0:
        return np.zeros(0, np.int64)
    dist = np.full(n, np.inf)
    out = []
    if taken is not None and len(taken):
        for t in taken:
            dist = np.minimum(dist, ((xyz - xyz[t]) ** 2).sum(1))
        cur = int(np.argmax(dist))
    else:
        cur = int(start)
    for _ in range(k):
        out.append(cur)
        dist = np.minimum(dist, ((xyz - xyz[cur]) ** 2).sum(1))
        dist[cur] = -1.0
        cur = int(np.argmax(dist))
    return np.asarray(out, np.int64)


def distinctiveness(xyz: np.ndarray, feats: np.ndarray, radius: float) -> np.ndarray:
    """(n,) ``1 - cos(f_i, mean of the features within radius of x_i)`` (the point itself included)."""
    from scipy.spatial import cKDTree

    f = np.asarray(feats, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    nbrs = cKDTree(np.asarray(xyz, np.float64)).query_ball_point(np.asarray(xyz, np.float64), r=float(radius))
    mean = np.stack([f[idx].mean(0) for idx in nbrs])
    cos = (f * mean).sum(1) / np.maximum(np.linalg.norm(mean, axis=1), 1e-12)
    return 1.0 - cos


def select_keypoints(scene_id: str, xyz: np.ndarray, feats: np.ndarray, k: int, rule: str = "distinct", *,
                     voxel: float = 0.1, radius: float = 0.3, min_spacing: float = 0.25) -> KeypointSet:
    """Choose ``k`` keypoints of a scene from its points ``xyz`` (n, 3) and their features ``feats`` (n, D)
    by ``rule`` (``RULES``, module docstring). Deterministic. A scene with fewer than ``k`` candidate
    points (after the ``voxel`` thinning) is a ValueError naming the scene."""
    if rule not in RULES:
        raise ValueError(f"unknown keypoint rule {rule!r} (one of {', '.join(RULES)})")
    xyz = np.asarray(xyz, np.float32)
    feats = np.asarray(feats, np.float32)
    if len(xyz) != len(feats):
        raise ValueError(f"scene {scene_id}: {len(xyz)} points but {len(feats)} features")
    cand = voxel_candidates(xyz, voxel)
    if len(cand) < k:
        raise ValueError(f"scene {scene_id}: {len(cand)} candidate points (one per {voxel} m voxel of "
                         f"{len(xyz)} points), fewer than the {k} keypoints asked for")
    cx, cf = xyz[cand], feats[cand]
    if rule == "fps":
        # start at the candidate nearest the centroid: deterministic, independent of point order
        start = int(np.argmin(((cx - cx.mean(0)) ** 2).sum(1)))
        pick = farthest_point_sampling(cx, k, start=start)
        score = np.zeros(len(pick), np.float32)
    else:
        s = distinctiveness(cx, cf, radius)
        from scipy.spatial import cKDTree

        order = np.lexsort((np.arange(len(s)), -s))  # by score, ties by index
        tree = cKDTree(cx.astype(np.float64))
        free = np.ones(len(cx), bool)
        chosen: list[int] = []
        for i in order:
            if len(chosen) == k:
                break
            if not free[i]:
                continue
            chosen.append(int(i))
            free[tree.query_ball_point(cx[i].astype(np.float64), r=float(min_spacing))] = False
        pick = np.asarray(chosen, np.int64)
        if len(pick) < k:
            pick = np.concatenate([pick, farthest_point_sampling(cx, k - len(pick), taken=pick)])
        score = s[pick].astype(np.float32)
    d = cf[pick].astype(np.float32)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return KeypointSet(scene_id, cx[pick].copy(), d, score, cand[pick].astype(np.int64))
