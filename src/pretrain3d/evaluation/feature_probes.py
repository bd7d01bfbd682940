"""The linear-classifier feature checks (``evaluation.feature_checks``): per-pixel labels from the
scene's labelled points (``pixel_labels``), the per-pixel 2D probe -- do a network's pixel features
still segment? (``pixel_probe``) -- and the co-embedding transfer -- does a classifier fitted on one
modality work unchanged on the other? (``co_embedding_transfer``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pretrain3d.data.labels import IGNORE_INDEX
from pretrain3d.evaluation.feature_sources import (FeatureFn, _camera, _frames, _rng, frame_feature_maps,
                                                   sample_features)
from pretrain3d.evaluation.metrics import confusion_matrix, metrics_from_confusion
from pretrain3d.geometry.camera import backproject_depth

__all__ = ["pixel_labels", "collect_pixel_features", "pixel_probe", "probe_on_features", "co_embedding_transfer",
           "co_embedding_both_ways"]


# ----------------------------------------------------------------------------------- pixel labels


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


# ------------------------------------------------------------------------------------ pixel probe


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


# -------------------------------------------------------------------------- co-embedding transfer


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
