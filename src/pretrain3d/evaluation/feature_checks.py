"""Feature checks for 2D/3D co-embedding methods (ConDense): does a 2D network give the same feature
to a surface point seen from two views, do its pixel features still segment, does a classifier
trained on one modality work unchanged on the other, and what do the features look like.

Library only: every function takes processed scenes (``data.scene.ProcessedScene`` with a frame
index) and feature sources, computes, and returns numbers or arrays; writing JSON, logging to
MLflow and choosing parameters is the calling stage's business (the one exception,
``plot_feature_pca_row``, writes the PNG it is asked for, atomically, like ``evaluation.plots``).

Feature sources are generic. A *2D feature function* is::

    fn(images: uint8 ndarray (B, H, W, 3)) -> torch.Tensor (B, D, h, w)

together with the cell ``geometry`` of its map (``teachers.cache.cell_geometry(teacher.metadata())``;
``None`` when the map's cells tile the frame, e.g. a map at frame resolution). A frame pixel
``(u, v)`` (column, row; pixel centres at integers, see ``geometry.camera``) reads the map through
``teachers.cache.pixel_to_grid`` and ``F.grid_sample(bilinear, align_corners=False,
padding_mode="border")`` -- the same sampling PPKT uses. ``feature_fn_from_teacher`` makes the pair
for a frozen teacher; a ConDense 2D network wraps its forward the same way.

Everything is deterministic on CPU for a given seed / ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pretrain3d.data.labels import IGNORE_INDEX
from pretrain3d.evaluation.metrics import confusion_matrix, metrics_from_confusion
from pretrain3d.geometry.camera import backproject_depth, depth_test, project_points, transform_points
from pretrain3d.teachers.cache import pixel_to_grid

__all__ = [
    "FeatureFn",
    "MatchedPixels",
    "feature_fn_from_teacher",
    "cross_view_pairs",
    "select_view_pairs",
    "sample_features",
    "frame_feature_maps",
    "cross_view_consistency",
    "pixel_labels",
    "collect_pixel_features",
    "pixel_probe",
    "co_embedding_transfer",
    "co_embedding_both_ways",
    "pca_rgb",
    "plot_feature_pca_row",
]

FeatureFn = Callable[[np.ndarray], torch.Tensor]


# ------------------------------------------------------------------------------------- helpers


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _frames(scene):
    if scene.frames is None or len(scene.frames) == 0:
        raise ValueError(f"scene {scene.scene_id!r} has no RGB-D frames (frames.json)")
    return scene.frames


def _camera(scene, i: int) -> tuple[np.ndarray, np.ndarray]:
    f = _frames(scene)[i]
    return np.asarray(f.intrinsics, np.float64), np.asarray(f.pose, np.float64)


def feature_fn_from_teacher(teacher) -> tuple[FeatureFn, dict]:
    """``(fn, geometry)`` of a frozen 2D teacher: ``teacher.extract`` and its cell geometry."""
    from pretrain3d.teachers.cache import cell_geometry

    return teacher.extract, cell_geometry(teacher.metadata(), source=f"teacher {teacher.name}")


# ---------------------------------------------------------------------------- 1. cross-view pairs


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


# ------------------------------------------------------------------------------ 2. sampling


def sample_features(fmap, uv, width: int, height: int, geometry: dict | None) -> torch.Tensor:
    """Features (n, D) float32 of frame pixels ``uv`` (n, 2) ``[u, v]`` (continuous allowed) of a
    ``width`` x ``height`` frame, read bilinearly from its map ``fmap`` (D, h, w) (tensor or array)
    with the map's cell ``geometry`` (``None``: cells tile the frame). Pixels beyond the outermost
    cell centres take the border cells' values (``padding_mode="border"``, as PPKT does)."""
    fmap = torch.as_tensor(fmap)
    if fmap.ndim != 3:
        raise ValueError(f"feature map must be (D, h, w), got shape {tuple(fmap.shape)}")
    uv = uv if isinstance(uv, torch.Tensor) else torch.from_numpy(np.asarray(uv, dtype=np.float32))
    uv = uv.to(device=fmap.device, dtype=torch.float32)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv must be (n, 2), got shape {tuple(uv.shape)}")
    if len(uv) == 0:
        return torch.zeros((0, fmap.shape[0]), dtype=torch.float32)
    grid = pixel_to_grid(uv, width, height, geometry).view(1, 1, -1, 2)
    out = F.grid_sample(fmap[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0, :].transpose(0, 1).contiguous().cpu()


@torch.no_grad()
def frame_feature_maps(fn: FeatureFn, scene, frame_indices: Sequence[int], batch_size: int = 8) -> dict:
    """``{frame index: (D, h, w) float32 CPU tensor}``: ``fn`` on the frames' colour images,
    ``batch_size`` frames per call."""
    index = _frames(scene)
    out: dict[int, torch.Tensor] = {}
    idx = list(dict.fromkeys(int(k) for k in frame_indices))
    for s in range(0, len(idx), batch_size):
        chunk = idx[s:s + batch_size]
        images = np.stack([index.read_color(k) for k in chunk])
        maps = fn(images)
        if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[0] != len(chunk):
            raise ValueError(f"a feature function must return a (B, D, h, w) tensor for {len(chunk)} images, "
                             f"got {type(maps).__name__} {tuple(getattr(maps, 'shape', ()))}")
        maps = maps.detach().float().cpu()
        for k, m in zip(chunk, maps):
            out[k] = m
    return out


# -------------------------------------------------------------------------- 3. consistency


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


# ----------------------------------------------------------------------- 4. pixel labels


def _scene_tree(scene):
    from scipy.spatial import cKDTree

    return cKDTree(np.asarray(scene.coord, dtype=np.float64))


def pixel_labels(scene, frame_idx: int, radius: float = 0.05, *, depth: np.ndarray | None = None,
                 tree=None) -> np.ndarray:
    """Per-pixel class ids (H, W) int64 of one frame, from the scene's labelled point cloud.

    Each valid-depth pixel is back-projected to a world point and takes the label (``segment``)
    of the nearest scene point if that lies within ``radius`` metres (scipy ``cKDTree``); −1
    (ignore) where the depth is invalid, no point is that close, or the nearest point is itself
    ignore-labelled (a pixel on clutter stays ignored rather than borrowing a nearby wall's label).
    ``depth`` (the frame's depth map) and ``tree`` (``cKDTree`` over ``scene.coord``) may be passed
    to avoid re-reading / rebuilding them.
    """
    if scene.segment is None:
        raise ValueError(f"scene {scene.scene_id!r} has no labels")
    index = _frames(scene)
    depth = index.read_depth(frame_idx) if depth is None else np.asarray(depth)
    K, T = _camera(scene, frame_idx)
    out = np.full(depth.shape, IGNORE_INDEX, dtype=np.int64)
    pts, pix = backproject_depth(depth, K, T)
    if len(pts) == 0 or scene.num_points == 0:
        return out
    tree = _scene_tree(scene) if tree is None else tree
    d, idx = tree.query(pts, k=1, distance_upper_bound=float(radius))
    ok = np.isfinite(d)
    out[pix[ok, 1], pix[ok, 0]] = np.asarray(scene.segment, dtype=np.int64)[idx[ok]]
    return out


# ------------------------------------------------------------------------- 5. pixel probe


@torch.no_grad()
def collect_pixel_features(
    fn: FeatureFn,
    geometry: dict | None,
    scenes: Sequence,
    pixels_per_frame: int = 512,
    rng: np.random.Generator | int | None = 0,
    *,
    radius: float = 0.05,
    frame_step: int = 1,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (n, D) float32, labels (n,) int64)`` of up to ``pixels_per_frame`` random
    labelled pixels (``pixel_labels`` != −1) of every ``frame_step``-th frame of ``scenes``."""
    rng = _rng(rng)
    feats, labels = [], []
    for scene in scenes:
        index = _frames(scene)
        tree = _scene_tree(scene)
        frames = list(range(0, len(index), max(1, int(frame_step))))
        for s in range(0, len(frames), batch_size):
            chunk = frames[s:s + batch_size]
            maps = frame_feature_maps(fn, scene, chunk, batch_size)
            for k in chunk:
                lab = pixel_labels(scene, k, radius, tree=tree)
                v, u = np.nonzero(lab != IGNORE_INDEX)
                if len(v) == 0:
                    continue
                if len(v) > pixels_per_frame:
                    pick = np.sort(rng.choice(len(v), size=int(pixels_per_frame), replace=False))
                    v, u = v[pick], u[pick]
                uv = np.stack([u, v], axis=1).astype(np.float64)
                feats.append(sample_features(maps[k], uv, index.width, index.height, geometry))
                labels.append(torch.from_numpy(lab[v, u]))
    if not feats:
        return torch.zeros((0, 0)), torch.zeros(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)


def _fit_predict(train_x: torch.Tensor, train_y: torch.Tensor, tests: Sequence[torch.Tensor], num_classes: int,
                 epochs: int, lr: float, weight_decay: float, seed: int, batch_size: int) -> list[np.ndarray]:
    """A linear classifier (zero-initialised: deterministic, the problem is convex) fitted with
    ``methods.linear_probe.fit_linear_head``; predictions for each tensor of ``tests``."""
    from pretrain3d.methods.linear_probe import fit_linear_head

    head = torch.nn.Linear(train_x.shape[1], int(num_classes))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    fit_linear_head(head, train_x, train_y, epochs, lr, weight_decay, seed, batch_size=batch_size)
    head.eval()
    with torch.no_grad():
        return [head(x).argmax(1).numpy() if len(x) else np.zeros(0, np.int64) for x in tests]


def _metrics(pred, target, num_classes: int, class_names: Sequence[str] | None) -> dict:
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(num_classes)]
    m = metrics_from_confusion(confusion_matrix(pred, target, num_classes), names)
    return {"miou": m["mIoU"], "macc": m["mAcc"], "allacc": m["allAcc"], "iou_per_class": m["iou_per_class"],
            "acc_per_class": m["acc_per_class"]}


def pixel_probe(
    fn: FeatureFn,
    geometry: dict | None,
    train_scenes: Sequence,
    val_scenes: Sequence,
    num_classes: int,
    epochs: int = 20,
    lr: float = 0.01,
    seed: int = 0,
    pixels_per_frame: int = 512,
    *,
    radius: float = 0.05,
    weight_decay: float = 0.0,
    frame_step: int = 1,
    batch_size: int = 8,
    fit_batch_size: int = 1024,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Per-pixel 2D linear probe: do ``fn``'s pixel features still segment?

    Pixels: up to ``pixels_per_frame`` random labelled pixels per frame (``collect_pixel_features``;
    labels from ``pixel_labels`` with ``radius``), train scenes' frames for fitting, val scenes'
    frames for evaluation, drawn with ``numpy.random.default_rng(seed)``. Features are standardised
    per channel with the train pixels' mean/std (``methods.linear_probe.feature_standardization``,
    so a network's feature scale does not decide the result), then a zero-initialised linear layer
    is trained (``fit_linear_head``: AdamW, cosine schedule, ``fit_batch_size`` rows a step, ``seed`` for
    the batch order). ``batch_size`` frames go through ``fn`` at a time.

    Returns ``{"miou", "macc", "allacc", "iou_per_class", "acc_per_class", "train_pixels",
    "val_pixels"}`` (per-class dicts keyed by ``class_names``, default ``class_<c>``; metrics as in
    ``evaluation.metrics``: classes absent from the val pixels and never predicted are None).
    """
    rng = np.random.default_rng(seed)
    xtr, ytr = collect_pixel_features(fn, geometry, train_scenes, pixels_per_frame, rng, radius=radius,
                                      frame_step=frame_step, batch_size=batch_size)
    xva, yva = collect_pixel_features(fn, geometry, val_scenes, pixels_per_frame, rng, radius=radius,
                                      frame_step=frame_step, batch_size=batch_size)
    return probe_on_features(xtr, ytr, xva, yva, num_classes, epochs, lr, seed, weight_decay=weight_decay,
                             fit_batch_size=fit_batch_size, class_names=class_names)


def probe_on_features(xtr, ytr, xva, yva, num_classes: int, epochs: int = 20, lr: float = 0.01, seed: int = 0, *,
                      weight_decay: float = 0.0, fit_batch_size: int = 1024,
                      class_names: Sequence[str] | None = None) -> dict:
    """``pixel_probe``'s classifier on features already collected (train rows ``xtr``/``ytr``, val rows
    ``xva``/``yva``): standardised with the train rows' statistics, zero-initialised linear layer.
    Several feature sources sampled at the same pixels share one collection this way."""
    from pretrain3d.methods.linear_probe import feature_standardization

    if len(ytr) == 0 or len(yva) == 0:
        raise ValueError(f"pixel probe: no labelled pixels ({len(ytr)} train, {len(yva)} val); "
                         "check the frames' depth and the label radius")
    mean, std = feature_standardization(xtr)
    pred, = _fit_predict((xtr - mean) / std, ytr, [(xva - mean) / std], num_classes, epochs, lr, weight_decay, seed,
                         fit_batch_size)
    out = _metrics(pred, yva.numpy(), num_classes, class_names)
    out.update({"train_pixels": int(len(ytr)), "val_pixels": int(len(yva))})
    return out


# -------------------------------------------------------------------- 6. co-embedding transfer


def co_embedding_transfer(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    num_classes: int,
    *,
    holdout: float = 0.2,
    epochs: int = 50,
    lr: float = 0.02,
    weight_decay: float = 0.0,
    seed: int = 0,
    batch_size: int = 1024,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Does a linear classifier fitted on one modality work unchanged on the other?

    ``train_feats`` (n, D) with ``train_labels`` (n,) (e.g. 2D pixel features) and ``test_feats``
    (m, D) with ``test_labels`` (m,) (e.g. 3D point features of the same D); labels −1 are ignored.
    A random ``holdout`` fraction of the labelled train rows (drawn with ``seed``) is kept out of
    fitting and gives the in-domain reference; the classifier (zero-initialised linear layer,
    ``fit_linear_head``, ``batch_size`` rows a step) is fitted on the rest and applied to the
    held-out rows (in-domain) and to the other modality (transfer). For the reverse direction swap
    the arguments
    (``co_embedding_both_ways``).

    Features are L2-normalised, not standardised: per-modality standardisation would remove each
    modality's own mean and scale -- exactly the offset a shared embedding must not have -- so two
    spaces that disagree by a shift or scale would look aligned; standardising both with the train
    modality's statistics is a fixed affine map a linear classifier absorbs anyway. L2
    normalisation matches the cosine geometry the methods train with and keeps one shared scale.

    Returns ``{"transfer_miou", "in_domain_miou", "transfer": metrics, "in_domain": metrics,
    "fit_rows", "in_domain_rows", "transfer_rows"}`` with metrics as ``pixel_probe``'s.
    """
    xtr = F.normalize(torch.as_tensor(np.asarray(train_feats), dtype=torch.float32), dim=1)
    xte = F.normalize(torch.as_tensor(np.asarray(test_feats), dtype=torch.float32), dim=1)
    ytr = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64)
    yte = torch.as_tensor(np.asarray(test_labels), dtype=torch.int64)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"features must be (n, D) with the same D, got {tuple(xtr.shape)} and {tuple(xte.shape)}")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError("features and labels differ in length")
    keep = torch.nonzero(ytr != IGNORE_INDEX).view(-1).numpy()
    if len(keep) < 2:
        raise ValueError("co-embedding transfer: fewer than 2 labelled training rows")
    perm = np.random.default_rng(seed).permutation(keep)
    n_hold = int(round(holdout * len(perm))) if holdout > 0 else 0
    n_hold = min(max(n_hold, 1 if holdout > 0 else 0), len(perm) - 1)
    hold, fit = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    fit_t, hold_t = torch.from_numpy(fit), torch.from_numpy(hold)
    p_hold, p_test = _fit_predict(xtr[fit_t], ytr[fit_t], [xtr[hold_t], xte], num_classes, epochs, lr,
                                  weight_decay, seed, batch_size)
    in_dom = _metrics(p_hold, ytr[hold_t].numpy(), num_classes, class_names) if n_hold else None
    trans = _metrics(p_test, yte.numpy(), num_classes, class_names)
    return {"transfer_miou": trans["miou"], "in_domain_miou": in_dom["miou"] if in_dom else None,
            "transfer": trans, "in_domain": in_dom, "fit_rows": int(len(fit)), "in_domain_rows": int(n_hold),
            "transfer_rows": int((yte != IGNORE_INDEX).sum())}


def co_embedding_both_ways(feats_2d, labels_2d, feats_3d, labels_3d, num_classes: int, **kw) -> dict:
    """``{"2d_to_3d": ..., "3d_to_2d": ...}``: ``co_embedding_transfer`` in both directions."""
    return {"2d_to_3d": co_embedding_transfer(feats_2d, labels_2d, feats_3d, labels_3d, num_classes, **kw),
            "3d_to_2d": co_embedding_transfer(feats_3d, labels_3d, feats_2d, labels_2d, num_classes, **kw)}


# ------------------------------------------------------------------------------ 7. PCA images


def pca_rgb(maps: Sequence, masks: Sequence | None = None, *, max_fit_pixels: int = 50_000, seed: int = 0,
            percentile: float = 1.0) -> list[np.ndarray]:
    """(h, w, 3) float32 images in [0, 1] of feature maps (D, h, w) (tensors or arrays, sizes may
    differ, D must not), from ONE 3-component PCA fitted over the pixels of all maps together, so a
    colour means the same feature in every panel.

    Components are sign-fixed (largest loading positive) and each is mapped to [0, 1] by its
    ``percentile`` / ``100 - percentile`` values over all maps' pixels (shared), then clipped.
    ``masks`` (optional, (h, w) bool per map, True = valid) leave pixels out of the fit and paint
    them black (e.g. rays of a rendered map that hit nothing). At most ``max_fit_pixels`` pixels
    (a fixed-``seed`` random subset) enter the fit; all are projected.
    """
    arrs = [np.asarray(m.detach().double().cpu().numpy() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
            for m in maps]
    if not arrs:
        return []
    dims = {a.shape[0] for a in arrs}
    if any(a.ndim != 3 for a in arrs) or len(dims) != 1:
        raise ValueError(f"maps must all be (D, h, w) with one D, got {[a.shape for a in arrs]}")
    D = dims.pop()
    if masks is None:
        masks = [np.ones(a.shape[1:], bool) for a in arrs]
    masks = [np.asarray(m, bool) for m in masks]
    if len(masks) != len(arrs) or any(m.shape != a.shape[1:] for m, a in zip(masks, arrs)):
        raise ValueError("one (h, w) mask per map is needed")
    rows = [a.reshape(D, -1).T for a in arrs]
    valid = np.concatenate([r[m.reshape(-1)] for r, m in zip(rows, masks)])
    if len(valid) == 0:
        return [np.zeros((*a.shape[1:], 3), np.float32) for a in arrs]
    rng = np.random.default_rng(seed)
    fit = valid if len(valid) <= max_fit_pixels else valid[np.sort(rng.choice(len(valid), max_fit_pixels,
                                                                              replace=False))]
    mean = fit.mean(axis=0)
    cov = (fit - mean).T @ (fit - mean) / max(len(fit), 1)
    vals, vecs = np.linalg.eigh(cov)  # ascending
    basis = vecs[:, ::-1][:, :3]
    if basis.shape[1] < 3:  # D < 3: pad with zero components
        basis = np.concatenate([basis, np.zeros((D, 3 - basis.shape[1]))], axis=1)
    big = np.argmax(np.abs(basis), axis=0)
    basis = basis * np.where(basis[big, np.arange(3)] < 0, -1.0, 1.0)
    proj_valid = (valid - mean) @ basis
    lo = np.percentile(proj_valid, percentile, axis=0)
    hi = np.percentile(proj_valid, 100.0 - percentile, axis=0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    out = []
    for a, r, m in zip(arrs, rows, masks):
        img = np.clip(((r - mean) @ basis - lo) / span, 0.0, 1.0)
        img[~m.reshape(-1)] = 0.0
        out.append(img.reshape(*a.shape[1:], 3).astype(np.float32))
    return out


def plot_feature_pca_row(panels: Sequence[tuple[str, np.ndarray]], png_path: str | Path,
                         suptitle: str | None = None, dpi: int = 110) -> Path:
    """Write one row of images (PNG, atomically, Agg canvas): ``panels`` are ``(title, image)``
    with images (h, w, 3) uint8 or float in [0, 1], sizes may differ; every panel is drawn at the
    first panel's aspect ratio (e.g. the real frame | teacher PCA | rendered 3D PCA | 2D net PCA)."""
    from pretrain3d.evaluation.plots import _new_figure, _save_png

    if not panels:
        raise ValueError("no panels to plot")
    h0, w0 = np.asarray(panels[0][1]).shape[:2]
    aspect = h0 / w0
    n = len(panels)
    fig = _new_figure((3.2 * n, 3.2 * aspect + (0.7 if suptitle else 0.4)))
    for k, (title, img) in enumerate(panels):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = np.clip(img.astype(np.float32), 0.0, 1.0)
        ax = fig.add_subplot(1, n, k + 1)
        h, w = img.shape[:2]
        ax.imshow(img, interpolation="nearest", extent=(0, w0, h0, 0), aspect="equal")
        ax.set_title(f"{title}" if (h, w) == (h0, w0) else f"{title} ({w}x{h})", fontsize=9)
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save_png(fig, png_path, dpi)
