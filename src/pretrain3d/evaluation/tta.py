"""Test-time augmentation: vote softmax probabilities over augmented views and grid fragments.

Follows Pointcept's ``SemSegTester`` (shared/reference/pointcept.md §4):

1. The scene is centred (x/y on the bounding-box centre, floor at z = 0), as for the single pass.
2. Each view rotates it about z through the origin, scales it about the origin and mirrors x
   and/or y, in that order (Pointcept's RandomRotateTargetAngle → RandomScale → RandomFlip).
3. Each view is voxelised in "test" mode: with ``m`` the largest point count of any voxel,
   fragment ``i`` (``0 <= i < m``) holds, for every voxel, its point number ``i mod count``.
   Every fragment therefore has every voxel exactly once (a valid sparse input), and together
   they contain every original point, so every point gets its own prediction at least once.
4. Softmax probabilities are summed into the points each fragment holds; the argmax wins.

Fragment 0 takes each voxel's first point in input order, which is exactly what the single pass
(:func:`pretrain3d.geometry.voxel.grid_sample` without an rng) keeps.

``fragments=False`` is a cheaper variant (one pass per view, each voxel's probabilities given to
all of its points through the inverse map); with the identity as only view it *is* the single pass.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pretrain3d.data import transforms as T
from pretrain3d.geometry.voxel import grid_coordinates

FLIPS: dict[str, tuple[float, float]] = {"none": (1.0, 1.0), "x": (-1.0, 1.0), "y": (1.0, -1.0), "xy": (-1.0, -1.0)}


@dataclass(frozen=True)
class View:
    rotation_z: float = 0.0  # in units of pi, like Pointcept's RandomRotateTargetAngle
    scale: float = 1.0
    flip: str = "none"  # a key of FLIPS

    def orthogonal(self) -> np.ndarray:
        """The rotation/mirror part (3×3), which is also what normals go through."""
        if self.flip not in FLIPS:
            raise ValueError(f"unknown flip {self.flip!r}; use one of {sorted(FLIPS)}")
        fx, fy = FLIPS[self.flip]
        a = self.rotation_z * np.pi
        c, s = np.cos(a), np.sin(a)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return np.diag([fx, fy, 1.0]) @ rot

    @property
    def is_identity(self) -> bool:
        return self.rotation_z % 2 == 0 and self.scale == 1.0 and self.flip == "none"


def make_views(rotations_z: Sequence[float], scales: Sequence[float], flips: Sequence[str]) -> list[View]:
    """Every combination rotation × scale × flip, in that nesting order."""
    views = [View(float(r), float(s), str(f)) for f, s, r in itertools.product(flips, scales, rotations_z)]
    if not views:
        raise ValueError("test-time augmentation needs at least one rotation, scale and flip")
    for v in views:
        v.orthogonal()  # validates the flip name
        if not v.scale > 0:
            raise ValueError(f"scales must be positive, got {v.scale}")
    return views


def apply_view(coord: np.ndarray, normal: np.ndarray, view: View) -> tuple[np.ndarray, np.ndarray]:
    """Transform a centred scene for one view (the identity returns the arrays unchanged, so the
    identity view sees bit-for-bit what the single pass sees)."""
    if view.is_identity:
        return coord, normal
    q = view.orthogonal()
    # Normals of an orthogonal map times a uniform scale go through the orthogonal part only.
    return (coord @ q.T) * view.scale, normal @ q.T


@dataclass
class Fragments:
    grid_coord: np.ndarray  # (N,3) voxel index of every point (min-shifted, as in grid_sample)
    parts: list[np.ndarray]  # point indices of each fragment, one per voxel, voxels in the same order
    inverse: np.ndarray  # (N,) row of each point's voxel in every part

    @property
    def max_count(self) -> int:
        return len(self.parts)


def grid_fragments(coord: np.ndarray, grid_size: float) -> Fragments:
    """Pointcept's GridSample test mode: see the module docstring (step 3)."""
    grid = grid_coordinates(coord, grid_size)
    dims = grid.max(axis=0) + 1
    keys = np.ravel_multi_index(grid.T, dims)
    # Stable sort: within a voxel the points stay in input order, so part 0 is the single pass's sample.
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    counts = np.diff(np.r_[starts, len(keys)])
    parts = [order[starts + i % counts] for i in range(int(counts.max()))]
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.repeat(np.arange(len(starts)), counts)
    return Fragments(grid, parts, inverse)


@dataclass
class TTAPrediction:
    pred: np.ndarray  # (N,) argmax of the summed probabilities
    probs: np.ndarray  # (N, K) float32 summed softmax (votes)
    forward_passes: int


@torch.no_grad()
def predict_scene_tta(model: torch.nn.Module, coord, color, normal, grid_size: float, views: Sequence[View],
                      device: torch.device, fragments: bool = True) -> TTAPrediction:
    """Vote over ``views`` (and grid fragments) for every point of one scene.

    ``coord`` (N,3) metres, ``color`` (N,3) 0-255, ``normal`` (N,3): the processed scene as stored."""
    model.eval()
    sample = {"coord": np.array(coord, dtype=np.float64), "normal": np.array(normal, dtype=np.float64)}
    sample = T.center_shift(sample, apply_z=True)  # same centring as EvalDataset
    color01 = np.asarray(color, dtype=np.float64) / 255.0
    n = len(sample["coord"])
    probs: torch.Tensor | None = None
    passes = 0
    for view in views:
        c, nrm = apply_view(sample["coord"], sample["normal"], view)
        fr = grid_fragments(c, grid_size)
        parts = fr.parts if fragments else fr.parts[:1]
        for idx in parts:
            feat = np.concatenate([color01[idx], nrm[idx]], axis=1).astype(np.float32)  # as voxelize_for_model
            batch = {
                "grid_coord": torch.from_numpy(fr.grid_coord[idx]).to(device),
                "feat": torch.from_numpy(feat).to(device),
                "offset": torch.tensor([len(idx)], device=device),
            }
            p = torch.softmax(model(batch).float(), dim=1)
            passes += 1
            if probs is None:
                probs = torch.zeros((n, p.shape[1]), dtype=torch.float32, device=device)
            if fragments:
                # Indices within one part are unique, so this is deterministic on GPU too.
                probs.index_add_(0, torch.from_numpy(idx).to(device), p)
            else:
                probs += p[torch.from_numpy(fr.inverse).to(device)]
    assert probs is not None
    probs_np = probs.cpu().numpy()
    return TTAPrediction(probs_np.argmax(axis=1).astype(np.int64), probs_np, passes)
