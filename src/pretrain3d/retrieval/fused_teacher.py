"""Baseline 3D features without any 3D training: the frozen 2D teacher's features fused onto a scene's
points by multi-view averaging (the "lift 2D features to 3D" baseline of the scene queries).

Every point visible in a frame (projection + depth test, ``geometry.camera.visible_mask``) takes the
teacher's feature at its pixel (bilinear, the teacher's cell geometry, as PPKT samples); a point's
feature is the mean over the frames that see it, L2-normalised per frame first so that no view
dominates. Points no frame sees get the mean of the seen points' features (and are reported), so every
point has a feature and keypoint selection can run; with no seen point at all it is a ValueError.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["fused_point_features"]


@torch.no_grad()
def fused_point_features(feature_fn, geometry: dict | None, scene, frame_step: int = 1,
                         batch_size: int = 8, rel_thresh: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D) float32, seen (N,) bool: a frame sees the point)`` of ``scene`` (a processed scene with frames)
    from ``feature_fn(images (B, H, W, 3) uint8) -> (B, D, h, w)`` (e.g. a teacher's forward)."""
    from pretrain3d.evaluation.feature_checks import sample_features
    from pretrain3d.geometry.camera import visible_mask

    frames = scene.frames
    if frames is None or len(frames) == 0:
        raise ValueError(f"scene {scene.scene_id}: no RGB-D frames to fuse teacher features from")
    xyz = np.asarray(scene.coord, np.float64)
    total: torch.Tensor | None = None
    count = np.zeros(len(xyz), np.int64)
    idx = list(range(0, len(frames), max(1, int(frame_step))))
    for s in range(0, len(idx), batch_size):
        chunk = idx[s:s + batch_size]
        maps = feature_fn(np.stack([frames.read_color(k) for k in chunk])).float().cpu()
        for k, fmap in zip(chunk, maps):
            depth = frames.read_depth(k)
            mask, uv = visible_mask(xyz, depth, frames[k].intrinsics, frames[k].pose, rel_thresh=rel_thresh)
            sel = np.flatnonzero(mask)
            if not len(sel):
                continue
            f = F.normalize(sample_features(fmap, uv[sel].astype(np.float64), depth.shape[1], depth.shape[0],
                                            geometry), dim=1)
            if total is None:
                total = torch.zeros(len(xyz), f.shape[1])
            total.index_add_(0, torch.from_numpy(sel), f)
            count[sel] += 1
    seen = count > 0
    if total is None or not seen.any():
        raise ValueError(f"scene {scene.scene_id}: no frame sees any of its {len(xyz)} points")
    out = total.numpy() / np.maximum(count, 1)[:, None]
    out[~seen] = out[seen].mean(0)
    return out.astype(np.float32), seen
