"""Pinhole camera math: back-projection, projection, visibility, pose checks.

Conventions (used everywhere in pretrain3d):

* OpenCV camera frame: x right, y down, z forward (optical axis).
* ``K`` is the 3x3 pinhole matrix ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``.
* Pixel ``(u, v)``: ``u`` = column index, ``v`` = row index. The pixel with indices
  ``(u, v)`` looks along ``K^-1 [u, v, 1]^T`` -- integer pixel indices *are* the image
  coordinates of pixel centres, no ``+0.5`` (the ScanNet / 7-Scenes / OpenScene convention).
  Pixel ``(u, v)`` therefore covers ``[u-0.5, u+0.5) x [v-0.5, v+0.5)``, and a projected
  point belongs to pixel ``(floor(u+0.5), floor(v+0.5))``.
* Depth maps hold z-depth in metres (distance along the optical axis, not along the ray);
  ``0`` or a non-finite value means invalid.
* Poses are 4x4 camera-to-world matrices ``[[R, t], [0, 0, 0, 1]]``: ``X_w = R X_c + t``.

Everything is numpy (float64 internally). ``transform_points``, ``invert_pose``,
``project_points`` and ``scale_intrinsics`` also accept torch tensors and then return
torch tensors (same device/dtype), so they can be used inside a training step.
"""

from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass

import numpy as np

from pretrain3d.errors import DataError

__all__ = [
    "backproject_depth",
    "project_points",
    "visible_mask",
    "invert_pose",
    "transform_points",
    "pose_problem",
    "check_pose",
    "scale_intrinsics",
    "pixel_rays",
]


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _as_np(x, dtype=np.float64) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# ----------------------------------------------------------------------------- poses


def transform_points(T, pts):
    """Apply the 4x4 rigid/affine transform ``T`` to points ``pts`` (..., 3)."""
    if _is_torch(pts) or _is_torch(T):
        import torch

        ref = pts if _is_torch(pts) else T
        T = torch.as_tensor(T, dtype=ref.dtype, device=ref.device)
        pts = torch.as_tensor(pts, dtype=ref.dtype, device=ref.device)
        return pts @ T[:3, :3].transpose(0, 1) + T[:3, 3]
    T = np.asarray(T)
    pts = np.asarray(pts)
    return pts @ T[:3, :3].T + T[:3, 3]


def invert_pose(T):
    """Inverse of a rigid 4x4 transform (uses R^T, does not call a general inverse)."""
    if _is_torch(T):
        import torch

        R = T[:3, :3]
        t = T[:3, 3]
        out = torch.eye(4, dtype=T.dtype, device=T.device)
        out[:3, :3] = R.transpose(0, 1)
        out[:3, 3] = -(R.transpose(0, 1) @ t)
        return out
    T = np.asarray(T, dtype=np.float64)
    R = T[:3, :3]
    t = T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def pose_problem(T, rot_tol: float = 1e-3) -> str | None:
    """Why ``T`` is not a valid rigid camera-to-world pose, or ``None`` if it is.

    ScanNet marks frames without tracking with ``-inf`` poses; readers can use this to
    skip such frames without an exception.
    """
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        return f"pose has shape {T.shape}, expected (4, 4)"
    if not np.all(np.isfinite(T)):
        return "pose contains NaN or inf"
    if np.max(np.abs(T[3] - np.array([0.0, 0.0, 0.0, 1.0]))) > 1e-6:
        return f"pose bottom row is {T[3].tolist()}, expected [0, 0, 0, 1]"
    R = T[:3, :3]
    det = float(np.linalg.det(R))
    if abs(det - 1.0) > rot_tol:
        return f"pose rotation is not rigid: det(R) = {det:.6g}"
    err = float(np.max(np.abs(R.T @ R - np.eye(3))))
    if err > rot_tol:
        return f"pose rotation is not orthonormal: max|R^T R - I| = {err:.3g}"
    return None


def check_pose(T, path: str | Path = "<pose>", rot_tol: float = 1e-3) -> np.ndarray:
    """Return ``T`` as a float64 (4, 4) array, or raise ``DataError(path, ...)``.

    Rejects NaN/inf, a bottom row other than ``[0, 0, 0, 1]`` and a rotation block that
    is not a proper rotation (``|det R - 1| > rot_tol`` or ``max|R^T R - I| > rot_tol``).
    """
    problem = pose_problem(T, rot_tol=rot_tol)
    if problem is not None:
        raise DataError(path, problem, "expected a rigid 4x4 camera-to-world matrix")
    return np.asarray(T, dtype=np.float64)


# ----------------------------------------------------------------------- intrinsics


def scale_intrinsics(K, sx: float, sy: float):
    """Intrinsics after resizing the image by ``sx`` (width) and ``sy`` (height).

    ``sx = new_width / old_width``. Uses the half-pixel-exact mapping that matches
    PIL / ``torch.nn.functional.interpolate(align_corners=False)`` resizing under our
    pixel-centre convention: the image edge ``-0.5`` stays at ``-0.5``, so
    ``fx' = sx fx``, ``cx' = sx (cx + 0.5) - 0.5`` (same for y).
    """
    if _is_torch(K):
        out = K.clone()
    else:
        out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0] = K[0, 0] * sx
    out[0, 1] = K[0, 1] * sx
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 1] = K[1, 1] * sy
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def pixel_rays(K, width: int, height: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame ray directions ``K^-1 [u, v, 1]`` (z component = 1) for a pixel grid.

    Returns ``(dirs (h*w, 3) float64, pix (h*w, 2) int64 [u, v])`` in row-major order
    over the strided grid.
    """
    K = _as_np(K)
    vs, us = np.mgrid[0:height:stride, 0:width:stride]
    pix = np.stack([us.ravel(), vs.ravel()], axis=1).astype(np.int64)
    hom = np.concatenate([pix.astype(np.float64), np.ones((len(pix), 1))], axis=1)
    dirs = hom @ np.linalg.inv(K).T
    dirs /= dirs[:, 2:3]  # exact z = 1 even for slightly odd K
    return dirs, pix


# -------------------------------------------------------------- back-/projection


def backproject_depth(depth_m, K, pose_c2w=None, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Lift valid depth pixels to 3D.

    Args:
        depth_m: (H, W) z-depth in metres; pixels with depth <= 0 or non-finite are skipped.
        K: (3, 3) intrinsics.
        pose_c2w: (4, 4) camera-to-world pose; ``None`` returns camera coordinates.
        stride: take every ``stride``-th row and column (starting at 0).

    Returns:
        points (M, 3) float64 and pix (M, 2) int64 ``[u, v]`` of the pixels they came from.
        ``X_c = depth[v, u] * K^-1 [u, v, 1]``.
    """
    depth = _as_np(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    H, W = depth.shape
    dirs, pix = pixel_rays(K, W, H, stride)
    d = depth[pix[:, 1], pix[:, 0]]
    valid = np.isfinite(d) & (d > 0)
    pts = dirs[valid] * d[valid, None]
    if pose_c2w is not None:
        pts = transform_points(_as_np(pose_c2w), pts)
    return pts, pix[valid]


def project_points(points_world, K, pose_c2w, width: int, height: int, margin: int = 0):
    """Project world points into an image.

    Returns ``(uv (N, 2) float, z (N,) float, in_image (N,) bool)``. ``uv`` are continuous
    image coordinates (pixel centres at integers); ``z`` is the camera-frame depth.
    ``in_image`` is ``z > 0`` and the nearest pixel ``floor(uv + 0.5)`` lies inside the image
    shrunk by ``margin`` pixels on every side. Points with ``z <= 0`` get finite but
    meaningless ``uv``. Works with numpy arrays or torch tensors.
    """
    if pose_c2w is None:
        p = points_world
    else:
        p = transform_points(invert_pose(pose_c2w), points_world)
    if _is_torch(p):
        import torch

        Kt = torch.as_tensor(K, dtype=p.dtype, device=p.device)
        z = p[:, 2]
        zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
        uvw = p @ Kt.transpose(0, 1)
        uv = uvw[:, :2] / zs[:, None]
        pi = torch.floor(uv + 0.5)
    else:
        K = _as_np(K)
        p = np.asarray(p, dtype=np.float64)
        z = p[:, 2]
        zs = np.where(np.abs(z) > 1e-12, z, 1e-12)
        uvw = p @ K.T
        uv = uvw[:, :2] / zs[:, None]
        pi = np.floor(uv + 0.5)
    in_image = (
        (z > 0)
        & (pi[:, 0] >= margin)
        & (pi[:, 0] <= width - 1 - margin)
        & (pi[:, 1] >= margin)
        & (pi[:, 1] <= height - 1 - margin)
    )
    return uv, z, in_image


@dataclass
class DepthTest:
    """Per-point outcome of projecting points into one depth frame (see ``depth_test``)."""

    uv_int: np.ndarray   # (N, 2) nearest pixel [u, v] (meaningful where ``inside``)
    inside: np.ndarray   # (N,) in front of the camera and inside the image shrunk by the margin
    valid: np.ndarray    # (N,) inside and the pixel has a valid depth D
    diff: np.ndarray     # (N,) z - D where ``valid`` (0 elsewhere): > tol occluded, < -tol in front
    mask: np.ndarray     # (N,) visible: valid and |z - D| <= tol

    @property
    def occluded(self) -> np.ndarray:
        return self.valid & ~self.mask & (self.diff > 0)

    @property
    def in_front(self) -> np.ndarray:
        return self.valid & ~self.mask & (self.diff < 0)


def depth_test(points_world, depth_m, K, pose_c2w, abs_thresh: float | None = None, rel_thresh: float = 0.25,
               margin: int = 0) -> DepthTest:
    """Project points into a depth frame and apply the depth test ``|D - z| <= rel_thresh * D``
    (OpenScene's rule; ``<= abs_thresh`` when given) — one projection serving both the visibility
    mask and the statistics of why points were rejected."""
    depth = _as_np(depth_m)
    H, W = depth.shape
    uv, z, inside = project_points(_as_np(points_world), K, _as_np(pose_c2w), W, H, margin)
    uv_int = np.floor(uv + 0.5)
    uv_int = np.clip(np.nan_to_num(uv_int, nan=-1.0), -(2**62), 2**62).astype(np.int64)
    n = len(z)
    valid, diff, mask = np.zeros(n, bool), np.zeros(n), np.zeros(n, bool)
    idx = np.flatnonzero(inside)
    if len(idx):
        D = depth[uv_int[idx, 1], uv_int[idx, 0]]
        ok = np.isfinite(D) & (D > 0)
        Dv = np.where(ok, D, 0.0)
        tol = abs_thresh if abs_thresh is not None else rel_thresh * Dv
        d = z[idx] - Dv
        valid[idx], diff[idx] = ok, np.where(ok, d, 0.0)
        mask[idx] = ok & (np.abs(d) <= tol)
    return DepthTest(uv_int=uv_int, inside=inside, valid=valid, diff=diff, mask=mask)


def visible_mask(
    points_world,
    depth_m,
    K,
    pose_c2w,
    abs_thresh: float | None = None,
    rel_thresh: float = 0.25,
    margin: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Which points a depth frame sees (projection + depth test, see ``depth_test``).

    Returns ``(mask (N,) bool, uv_int (N, 2) int64)``; ``uv_int`` is the nearest pixel
    ``[u, v]`` for every point (meaningful where ``mask`` is true).
    """
    t = depth_test(points_world, depth_m, K, pose_c2w, abs_thresh, rel_thresh, margin)
    return t.mask, t.uv_int
