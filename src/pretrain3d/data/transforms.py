"""3D augmentations (numpy, per-sample ``np.random.Generator``).

Every function takes and returns a dict with at least ``coord`` (N,3); ``normal`` is rotated and
flipped with the points, ``color`` (N,3, 0–255 float) is changed by the chromatic ones. Each
transform also returns the 4×4 matrix it applied to the coordinates where it is rigid/affine, so
that later methods can apply the same change to camera poses (``sample["transform"]``).
The recipe follows Pointcept's ScanNet SpUNet config (see shared/reference/pointcept.md §4).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates, uniform_filter

from pretrain3d.geometry.voxel import column_bounds, grid_sample


def _compose(sample: dict, T: np.ndarray) -> None:
    sample["transform"] = T @ sample.get("transform", np.eye(4))


def _apply_linear(sample: dict, A: np.ndarray, t: np.ndarray | None = None) -> None:
    sample["coord"] = sample["coord"] @ A.T
    if t is not None:
        sample["coord"] = sample["coord"] + t
    if "normal" in sample:
        # Normals transform with the inverse transpose; for rotations/flips that is A itself,
        # for a uniform scale it only changes the length, which we renormalise away.
        n = sample["normal"] @ np.linalg.inv(A)
        norm = np.sqrt(np.einsum("ij,ij->i", n, n))[:, None]
        sample["normal"] = n / np.maximum(norm, 1e-12)
    T = np.eye(4)
    T[:3, :3] = A
    if t is not None:
        T[:3, 3] = t
    _compose(sample, T)


def center_shift(sample: dict, apply_z: bool = True) -> dict:
    """Centre x/y on the bounding box centre; put the floor (min z) at 0 when apply_z."""
    lo, hi = column_bounds(sample["coord"])
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] if apply_z else 0.0])
    _apply_linear(sample, np.eye(3), -shift)
    return sample


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def random_rotate(sample: dict, rng: np.random.Generator, z_max: float, xy_max: float, p: float) -> dict:
    """Rotate about the scene centre: z by U(±z_max·π), x and y by U(±xy_max·π), each with prob p."""
    center = sum(column_bounds(sample["coord"])) / 2
    A = np.eye(3)
    for axis, lim in ((2, z_max), (0, xy_max), (1, xy_max)):
        if lim > 0 and rng.random() < p:
            A = _rot(axis, rng.uniform(-lim, lim) * np.pi) @ A
    _apply_linear(sample, A, center - A @ center)
    return sample


def random_scale(sample: dict, rng: np.random.Generator, low: float, high: float) -> dict:
    s = rng.uniform(low, high)
    _apply_linear(sample, np.eye(3) * s)
    return sample


def random_flip(sample: dict, rng: np.random.Generator, p: float) -> dict:
    """Mirror x and y (independently, each with prob p) about the scene centre."""
    center = sum(column_bounds(sample["coord"])) / 2
    d = np.ones(3)
    for axis in (0, 1):
        if rng.random() < p:
            d[axis] = -1.0
    A = np.diag(d)
    _apply_linear(sample, A, center - A @ center)
    return sample


def random_jitter(sample: dict, rng: np.random.Generator, sigma: float, clip: float) -> dict:
    if sigma > 0:
        noise = np.clip(sigma * rng.standard_normal(sample["coord"].shape), -clip, clip)
        sample["coord"] = sample["coord"] + noise
    return sample


def _trilinear(grid: np.ndarray, lo: np.ndarray, step: float, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``grid`` (X, Y, Z, C), node ``(i, j, k)`` at ``lo + step * (i, j, k)``, at
    ``points`` inside the grid: what scipy's RegularGridInterpolator computes, by ``map_coordinates``
    (order 1, one compiled pass per channel): ~7 ms for 50k points where eight numpy gathers took ~17 ms
    (the elastic distortion runs twice per training sample; scripts/bench_data.py)."""
    f = ((points - lo) / step).T
    out = np.empty((len(points), grid.shape[3]), dtype=np.result_type(grid, points))
    for c in range(grid.shape[3]):
        out[:, c] = map_coordinates(grid[..., c], f, order=1, mode="nearest", prefilter=False)
    return out


def elastic_distortion(sample: dict, rng: np.random.Generator, params, p: float) -> dict:
    """Smooth random displacement fields at several granularities (non-rigid: no pose update)."""
    if not params or rng.random() >= p:
        return sample
    coord = sample["coord"]
    for granularity, magnitude in params:
        lo, hi = column_bounds(coord)
        lo, hi = lo - 3 * granularity, hi + 3 * granularity
        shape = np.ceil((hi - lo) / granularity).astype(int) + 1
        noise = rng.standard_normal((*shape, 3))
        for _ in range(2):  # blur twice with a 3-voxel box: a smooth, band-limited field
            noise = uniform_filter(noise, size=(3, 3, 3, 1), mode="constant")
        coord = coord + _trilinear(noise, lo, granularity, coord) * magnitude
    sample["coord"] = coord
    return sample


def chromatic_auto_contrast(sample: dict, rng: np.random.Generator, p: float) -> dict:
    if rng.random() < p:
        c = sample["color"]
        lo, hi = (b[None] for b in column_bounds(c))
        scale = 255.0 / np.maximum(hi - lo, 1e-6)
        blend = rng.random()
        sample["color"] = (1 - blend) * c + blend * (c - lo) * scale
    return sample


def chromatic_translation(sample: dict, rng: np.random.Generator, p: float, ratio: float) -> dict:
    if rng.random() < p:
        tr = (rng.random(3) - 0.5) * 255 * 2 * ratio
        sample["color"] = np.clip(sample["color"] + tr, 0, 255)
    return sample


def chromatic_jitter(sample: dict, rng: np.random.Generator, p: float, std: float) -> dict:
    if rng.random() < p:
        noise = rng.standard_normal(sample["color"].shape) * std * 255
        sample["color"] = np.clip(sample["color"] + noise, 0, 255)
    return sample


def crop_points(sample: dict, rng: np.random.Generator | None, max_points: int) -> dict:
    """Keep the ``max_points`` points nearest to a centre (random in training, the scene centre
    otherwise) — Pointcept's SphereCrop."""
    keep = _crop_index(sample["coord"], rng, max_points)
    return sample if keep is None else select(sample, keep)


def _crop_index(coord: np.ndarray, rng: np.random.Generator | None, max_points: int) -> np.ndarray | None:
    """Sorted indices that ``crop_points`` keeps, or None when nothing is cropped."""
    n = len(coord)
    if n <= max_points:
        return None
    if rng is not None:
        center = coord[rng.integers(n)]
    else:
        center = coord.mean(axis=0)
    d2 = ((coord - center) ** 2).sum(axis=1)
    return np.sort(np.argpartition(d2, max_points - 1)[:max_points])


PER_POINT_KEYS = ("coord", "color", "normal", "segment", "instance", "grid_coord")


def select(sample: dict, idx: np.ndarray) -> dict:
    out = dict(sample)
    for k in PER_POINT_KEYS:
        if k in out and out[k] is not None:
            out[k] = out[k][idx]
    return out


def train_augment(sample: dict, rng: np.random.Generator, aug) -> dict:
    """The training recipe (``aug`` is a config.AugmentConfig)."""
    sample = center_shift(sample, apply_z=True)
    sample = random_rotate(sample, rng, aug.rotate_z, aug.rotate_xy, aug.rotate_p)
    sample = random_scale(sample, rng, *aug.scale)
    sample = random_flip(sample, rng, aug.flip_p)
    sample = random_jitter(sample, rng, aug.jitter_sigma, aug.jitter_clip)
    sample = elastic_distortion(sample, rng, aug.elastic, aug.elastic_p)
    sample = chromatic_auto_contrast(sample, rng, aug.chromatic_contrast_p)
    sample = chromatic_translation(sample, rng, aug.chromatic_translation_p, aug.chromatic_translation_ratio)
    sample = chromatic_jitter(sample, rng, aug.chromatic_jitter_p, aug.chromatic_jitter_std)
    return sample


def voxelize_for_model(sample: dict, grid_size: float, rng: np.random.Generator | None,
                       max_points: int | None = None, keep_inverse: bool = False,
                       prefer_labelled: bool = False) -> dict:
    """Grid-sample (one point per voxel; random in training), optionally crop, centre x/y,
    and build the model features (colour/255 ‖ normal). Keeps ``inverse`` when not training.

    ``keep_inverse=True`` also keeps ``inverse`` in training (pre-training maps points paired with
    pixels to their voxels through it): ``inverse[i]`` is the row of input point ``i``'s voxel, or
    ``-1`` when the ``max_points`` crop dropped that voxel. It changes nothing else (same random
    draws, same output).

    ``prefer_labelled=True`` (limited annotations): a voxel holding a labelled point (``segment``
    not IGNORE_INDEX) keeps one of them, so the sparse labels reach the loss (see
    ``geometry.voxel.grid_sample``)."""
    prefer = None
    if prefer_labelled:
        from pretrain3d.data.labels import IGNORE_INDEX

        prefer = np.asarray(sample["segment"]) != IGNORE_INDEX
    gs = grid_sample(sample["coord"], grid_size, rng, prefer=prefer)
    out = select(sample, gs.index)
    out["grid_coord"] = gs.grid_coord
    if rng is None or keep_inverse:
        out["inverse"] = gs.inverse
    if max_points is not None and rng is not None:  # never in evaluation: it would break `inverse`
        keep = _crop_index(out["coord"], rng, max_points)
        if keep is not None:
            out = select(out, keep)
            if keep_inverse:
                row = np.full(len(gs.index), -1, dtype=np.int64)
                row[keep] = np.arange(len(keep))
                out["inverse"] = row[gs.inverse]
        out["grid_coord"] = out["grid_coord"] - column_bounds(out["grid_coord"])[0]
    out = center_shift(out, apply_z=False)
    out["feat"] = np.concatenate([out["color"] / 255.0, out["normal"]], axis=1).astype(np.float32)
    return out
