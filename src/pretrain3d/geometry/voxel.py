"""Voxel grid sampling with the inverse map back to every original point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def grid_coordinates(coord: np.ndarray, grid_size: float) -> np.ndarray:
    """Integer voxel indices, shifted so that the minimum is 0 on each axis."""
    g = np.floor(coord / grid_size).astype(np.int64)
    return g - g.min(axis=0, keepdims=True)


def _voxel_keys(grid: np.ndarray) -> np.ndarray:
    # Exact (collision-free) key: ravel the non-negative indices with the grid's extent.
    dims = grid.max(axis=0) + 1
    return np.ravel_multi_index(grid.T, dims)


@dataclass
class GridSample:
    """Result of sampling one point per voxel.

    index:      (M,) indices of the kept points in the input.
    grid_coord: (M,3) voxel indices of the kept points (unique).
    inverse:    (N,) for every input point, the row of its voxel in ``index`` — so
                ``per_voxel_values[inverse]`` maps predictions back to all N points.
    """

    index: np.ndarray
    grid_coord: np.ndarray
    inverse: np.ndarray


def grid_sample(coord: np.ndarray, grid_size: float, rng: np.random.Generator | None = None) -> GridSample:
    """Keep one point per voxel: a random one when ``rng`` is given (training), else the
    first point of the voxel in input order (deterministic, for evaluation)."""
    grid = grid_coordinates(coord, grid_size)
    keys = _voxel_keys(grid)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    counts = np.diff(np.r_[starts, len(keys)])
    if rng is None:
        pick = starts
    else:
        pick = starts + (rng.random(len(starts)) * counts).astype(np.int64)
    index = order[pick]
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.repeat(np.arange(len(starts)), counts)
    return GridSample(index=index, grid_coord=grid[index], inverse=inverse)
