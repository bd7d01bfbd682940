"""Cross-view consistency, the first feature check (``evaluation.feature_checks``): does a 2D network
give the same feature to a surface point seen from two views?

``cross_view_pairs`` finds the pixels of two frames that see the same surface point (depth test both
ways, edge guard), ``select_view_pairs`` the frame pairs of a scene that overlap enough, and
``cross_view_consistency`` compares the features at matched pixels with those at a random pairing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pretrain3d.evaluation.feature_sources import (FeatureFn, _camera, _frames, _rng, frame_feature_maps,
                                                   sample_features)
from pretrain3d.geometry.camera import backproject_depth, depth_test, project_points, transform_points

__all__ = ["MatchedPixels", "cross_view_pairs", "select_view_pairs", "cross_view_consistency"]


# ------------------------------------------------------------------------------- cross-view pairs


@dataclass(frozen=True, eq=False)
class MatchedPixels:
    """Pixels of frames i and j that see the same surface point; unpacks as ``uv_i, uv_j, xyz``
    and ``len()`` is the number of pairs.

    uv_i: (n, 2) float64 pixel centres ``[u, v]`` of frame i (integer-valued);
    uv_j: (n, 2) float64 continuous projection of the same points into frame j;
    xyz:  (n, 3) float64 world points (frame i's depth back-projected)."""

    uv_i: np.ndarray
    uv_j: np.ndarray
    xyz: np.ndarray

    def __len__(self) -> int:
        return int(len(self.uv_i))

    def __iter__(self):
        return iter((self.uv_i, self.uv_j, self.xyz))


def _match(depth_i, K_i, T_i, depth_j, K_j, T_j, stride: int, margin: int, rel_thresh: float,
           reproj_px: float | None, edge_guard: bool = True) -> tuple[MatchedPixels, int]:
    """Core of ``cross_view_pairs`` on arrays; also returns the number of candidate pixels of i."""
    Hi, Wi = depth_i.shape
    Hj, Wj = depth_j.shape
    pts, pix = backproject_depth(depth_i, K_i, T_i, stride=stride)
    inner = ((pix[:, 0] >= margin) & (pix[:, 0] <= Wi - 1 - margin)
             & (pix[:, 1] >= margin) & (pix[:, 1] <= Hi - 1 - margin))
    pts, pix = pts[inner], pix[inner]
    n_candidates = int(len(pts))
    empty = MatchedPixels(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 3)))
    if not n_candidates:
        return empty, 0
    # i -> j: inside j (margin) and j's measured depth agrees with the point's depth in j
    t = depth_test(pts, depth_j, K_j, T_j, rel_thresh=rel_thresh, margin=margin)
    keep = t.mask
    pts, pix, q = pts[keep], pix[keep], t.uv_int[keep]
    if reproj_px is not None and len(pts):
        # j -> i: the surface that j's pixel measures must come back onto (near) the same pixel of
        # i, with i's depth agreeing: both views see the point (no depth-edge mix-ups)
        Dj = depth_j[q[:, 1], q[:, 0]].astype(np.float64)
        rays = np.concatenate([q.astype(np.float64), np.ones((len(q), 1))], axis=1) @ np.linalg.inv(K_j).T
        Xj = transform_points(T_j, rays / rays[:, 2:3] * Dj[:, None])
        back = depth_test(Xj, depth_i, K_i, T_i, rel_thresh=rel_thresh, margin=0)
        uv_back, _, _ = project_points(Xj, K_i, T_i, Wi, Hi)
        ok = back.mask & (np.linalg.norm(uv_back - pix, axis=1) <= reproj_px)
        pts, pix = pts[ok], pix[ok]
    if not len(pts):
        return empty, n_candidates
    uv_j, z_j, _ = project_points(pts, K_j, T_j, Wj, Hj)
    if edge_guard:
        # all four pixels around the continuous projection (those bilinear sampling reads) must
        # see the point's surface: drops pairs on sub-pixel occlusion edges
        u0 = np.clip(np.floor(uv_j[:, 0]).astype(np.int64), 0, Wj - 2)
        v0 = np.clip(np.floor(uv_j[:, 1]).astype(np.int64), 0, Hj - 2)
        ok = np.ones(len(pts), bool)
        for du in (0, 1):
            for dv in (0, 1):
                D = depth_j[v0 + dv, u0 + du].astype(np.float64)
                ok &= np.isfinite(D) & (D > 0) & (np.abs(D - z_j) <= rel_thresh * D)
        pts, pix, uv_j = pts[ok], pix[ok], uv_j[ok]
    return MatchedPixels(pix.astype(np.float64), uv_j, pts), n_candidates


def _subset(m: MatchedPixels, max_pairs: int | None, rng: np.random.Generator) -> MatchedPixels:
    if max_pairs is None or len(m) <= max_pairs:
        return m
    idx = np.sort(rng.choice(len(m), size=int(max_pairs), replace=False))
    return MatchedPixels(m.uv_i[idx], m.uv_j[idx], m.xyz[idx])


def cross_view_pairs(
    scene,
    i: int,
    j: int,
    max_pairs: int | None = None,
    rng: np.random.Generator | int | None = 0,
    *,
    margin: int = 2,
    rel_thresh: float = 0.05,
    reproj_px: float | None = 1.5,
    edge_guard: bool = True,
    stride: int = 1,
    depths: dict | None = None,
) -> MatchedPixels:
    """Pixel pairs of frames ``i`` and ``j`` of ``scene`` that see the same surface point.

    Valid-depth pixels of i (every ``stride``-th row/column, at least ``margin`` pixels from the
    border) are back-projected to world points and projected into j. A pair is kept when the point
    lands inside j shrunk by ``margin``, j's depth at its nearest pixel agrees with the point's
    depth in j (``|D_j - z_j| <= rel_thresh * D_j``), and -- the mutual check, ``reproj_px`` not
    None -- the surface point that j's pixel measures projects back within ``reproj_px`` pixels of
    the pixel of i with i's depth agreeing the same way: both views see the point, and pairs
    straddling a depth edge are dropped. With ``edge_guard``, the four pixels of j around the
    continuous projection (those bilinear feature sampling reads) must all pass j's depth test
    too, which drops pairs on sub-pixel occlusion edges (a thin occluder that j's pixel centres
    miss).

    At most ``max_pairs`` pairs are kept (a random subset drawn with ``rng``, in pixel order).
    ``depths`` may hold already-read depth maps ``{frame index: (H, W) metres}``.
    Returns ``MatchedPixels(uv_i, uv_j, xyz)``: ``uv_i`` pixel centres of i, ``uv_j`` the exact
    (continuous) projection of the same points into j, ``xyz`` the world points.
    """
    depths = depths if depths is not None else {}
    index = _frames(scene)
    for k in (i, j):
        if k not in depths:
            depths[k] = index.read_depth(k)
    K_i, T_i = _camera(scene, i)
    K_j, T_j = _camera(scene, j)
    m, _ = _match(depths[i], K_i, T_i, depths[j], K_j, T_j, stride, margin, rel_thresh, reproj_px, edge_guard)
    return _subset(m, max_pairs, _rng(rng))


def select_view_pairs(
    scene,
    min_overlap: float = 0.2,
    max_overlap: float = 1.0,
    max_pairs: int | None = None,
    rng: np.random.Generator | int | None = 0,
    *,
    stride: int = 4,
    margin: int = 2,
    rel_thresh: float = 0.05,
    reproj_px: float | None = 1.5,
    edge_guard: bool = True,
    frame_step: int = 1,
    depths: dict | None = None,
) -> list[tuple[int, int, float]]:
    """Frame pairs ``(i, j, overlap)`` (i < j) of ``scene`` that see enough of the same surface.

    ``overlap`` is the symmetric covisibility ``min(|i seen by j| / |i|, |j seen by i| / |j|)``
    over valid-depth pixels on a ``stride`` grid (``cross_view_pairs``' test). Pairs with
    ``min_overlap <= overlap <= max_overlap`` qualify (``max_overlap < 1`` drops near-duplicate
    views, whose agreement proves little); with ``max_pairs``, a random subset of them drawn with
    ``rng``. Sorted by (i, j). Only every ``frame_step``-th frame takes part: the cost is F(F-1)
    strided matchings for F frames, so long real sequences want a step (or ``stride`` 8).
    """
    index = _frames(scene)
    depths = depths if depths is not None else {}
    frames = list(range(0, len(index), max(1, int(frame_step))))
    for k in frames:
        if k not in depths:
            depths[k] = index.read_depth(k)
    cams = {k: _camera(scene, k) for k in frames}
    frac = {}
    for a in frames:
        for b in frames:
            if a == b:
                continue
            m, cand = _match(depths[a], *cams[a], depths[b], *cams[b], stride, margin, rel_thresh, reproj_px,
                             edge_guard)
            frac[a, b] = len(m) / cand if cand else 0.0
    out = []
    for x, a in enumerate(frames):
        for b in frames[x + 1:]:
            ov = float(min(frac[a, b], frac[b, a]))
            if min_overlap <= ov <= max_overlap:
                out.append((a, b, ov))
    if max_pairs is not None and len(out) > max_pairs:
        pick = np.sort(_rng(rng).choice(len(out), size=int(max_pairs), replace=False))
        out = [out[k] for k in pick]
    return out


# ------------------------------------------------------------------------------------ consistency


@torch.no_grad()
def cross_view_consistency(
    fn: FeatureFn | dict[str, FeatureFn],
    geometry: dict | None,
    scenes: Sequence,
    pairs_per_scene: int = 8,
    rng: np.random.Generator | int | None = 0,
    *,
    pixels_per_pair: int = 512,
    min_overlap: float = 0.2,
    max_overlap: float = 1.0,
    batch_size: int = 8,
    margin: int = 2,
    rel_thresh: float = 0.05,
    reproj_px: float | None = 1.5,
    edge_guard: bool = True,
    view_stride: int = 4,
    frame_step: int = 1,
) -> dict:
    """Mean cosine similarity of 2D features at pixel pairs that see the same 3D point.

    Per scene, up to ``pairs_per_scene`` view pairs with enough overlap (``select_view_pairs`` with
    ``min_overlap``/``max_overlap``, ``view_stride`` and ``frame_step``),
    and in each up to ``pixels_per_pair`` matched pixel pairs (``cross_view_pairs``); both
    frames' maps come from ``fn`` and are sampled at the pixels (``sample_features``).

    The raw matched cosine alone proves nothing: a collapsed (constant) feature scores 1 on it.
    The baseline is the mean cosine of *unmatched* pairs -- the same pixels of i paired with a
    random permutation of the matched pixels of j (same views, same image regions, different
    points) -- and ``margin = matched_cos - random_cos`` is the consistency measure: about 0 for a
    constant or a view-random feature, large for a feature that is a function of the surface point
    and discriminates between points.

    Returns ``{"matched_cos", "random_cos", "margin", "matched_cos_std", "random_cos_std",
    "pixel_pairs", "view_pairs", "scenes"}`` (cosines pooled over all pixel pairs; ``None`` when
    no pair was found). ``fn`` may be a dict of named feature functions (sharing ``geometry``): they
    are compared on the very same view pairs, pixel pairs and random pairing, which are found once,
    and the result is a dict of such results by name.
    """
    rng = _rng(rng)
    fns = fn if isinstance(fn, dict) else {None: fn}
    matched: dict = {k: [] for k in fns}
    rand: dict = {k: [] for k in fns}
    n_views = n_scenes = 0
    for scene in scenes:
        index = _frames(scene)
        depths: dict[int, np.ndarray] = {}
        pairs = select_view_pairs(scene, min_overlap, max_overlap, pairs_per_scene, rng, stride=view_stride,
                                  margin=margin, rel_thresh=rel_thresh, reproj_px=reproj_px, edge_guard=edge_guard,
                                  frame_step=frame_step, depths=depths)
        if not pairs:
            continue
        frames = sorted({k for i, j, _ in pairs for k in (i, j)})
        maps = {name: frame_feature_maps(f, scene, frames, batch_size) for name, f in fns.items()}
        W, H = index.width, index.height
        used = 0
        for i, j, _ in pairs:
            m = cross_view_pairs(scene, i, j, pixels_per_pair, rng, margin=margin, rel_thresh=rel_thresh,
                                 reproj_px=reproj_px, edge_guard=edge_guard, depths=depths)
            if len(m) < 2:
                continue
            perm = torch.from_numpy(rng.permutation(len(m)))
            for name in fns:
                fi = sample_features(maps[name][i], m.uv_i, W, H, geometry)
                fj = sample_features(maps[name][j], m.uv_j, W, H, geometry)
                matched[name].append(F.cosine_similarity(fi, fj, dim=1).double())
                rand[name].append(F.cosine_similarity(fi, fj[perm], dim=1).double())
            used += 1
        n_views += used
        n_scenes += used > 0
    out = {name: _consistency_summary(matched[name], rand[name], n_views, n_scenes) for name in fns}
    return out if isinstance(fn, dict) else out[None]


def _consistency_summary(matched: list, rand: list, n_views: int, n_scenes: int) -> dict:
    if not matched:
        return {"matched_cos": None, "random_cos": None, "margin": None, "matched_cos_std": None,
                "random_cos_std": None, "pixel_pairs": 0, "view_pairs": 0, "scenes": 0}
    mc, rc = torch.cat(matched), torch.cat(rand)
    return {"matched_cos": float(mc.mean()), "random_cos": float(rc.mean()),
            "margin": float(mc.mean() - rc.mean()),
            "matched_cos_std": float(mc.std(unbiased=False)), "random_cos_std": float(rc.std(unbiased=False)),
            "pixel_pairs": int(len(mc)), "view_pairs": int(n_views), "scenes": int(n_scenes)}
