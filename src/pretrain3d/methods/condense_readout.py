"""Reading features out of a trained ConDense model, in eval mode, for the feature checks and scene
queries: the field's feature at scene points (``point_features``), features volume-rendered for a
whole view (``rendered_feature_map``) and the 2D network's (or its frozen teacher's) map of a view
(``image_feature_map``), all in the space the rendered features are trained in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pretrain3d.methods.ponderv2 import render_view_rays, scene_volume

if TYPE_CHECKING:
    from pretrain3d.methods.condense import CondenseModel

__all__ = ["point_features", "rendered_feature_map", "image_feature_map"]


def point_features(model: CondenseModel, scene, device="cpu", grid_size: float | None = None,
                   chunk: int = 8192, points: np.ndarray | None = None) -> torch.Tensor:
    """(N, D) field feature at every scene point (the 3D feature in the 2D embedding space), in eval mode;
    ``points`` (indices): at those points only (the volume still sees the whole scene).
    ``grid_size``: the backbone's voxel size (default: the model's, ``train.grid_size`` at build)."""
    was = model.training
    model.eval()
    try:
        vol, box, M = scene_volume(model, scene, grid_size or model.grid_size, device)
        xyz = np.asarray(scene.coord, np.float64)
        pts = (xyz if points is None else xyz[points]) @ M[:3, :3].T + M[:3, 3]
        pts = torch.from_numpy(pts.astype(np.float32)).to(device)
        out = []
        for i in range(0, len(pts), chunk):
            p = pts[None, i:i + chunk]
            r = model.field(vol, p, torch.zeros_like(p), box[None, 0], box[None, 1], with_semantic=True)
            out.append(model.field.decode_semantic(r["semantic_hidden"][0]).detach().cpu())
        return torch.cat(out)
    finally:
        model.train(was)


def rendered_feature_map(model: CondenseModel, scene, frame_idx: int, grid_size: float | None = None,
                         scale: float | None = None, chunk: int | None = None, device="cpu") -> dict:
    """Features volume-rendered for a whole view (every ``1/scale``-th pixel), in eval mode.

    Returns ``features`` (D, h', w'), ``depth`` (h', w') rendered z-depth, ``depth_real`` (0 where
    missing), ``acc`` (h', w') and ``frame_id``."""
    c = model.cfg
    r = render_view_rays(model, scene, frame_idx, grid_size or model.grid_size, scale or c.render_scale,
                         chunk or c.render_chunk, device, with_semantic=True)
    vs, us = r["vs"], r["us"]
    h, w = vs.shape
    real = scene.frames.read_depth(frame_idx)[vs, us]
    valid = np.isfinite(real) & (real > 0)
    return {"features": r["semantic"].T.reshape(-1, h, w),
            "depth": (r["depth"].numpy() / r["ray_scale"]).reshape(h, w),
            "depth_real": np.where(valid, real, 0.0), "acc": r["acc"].numpy().reshape(h, w),
            "frame_id": r["frame"].id}


@torch.no_grad()
def image_feature_map(model: CondenseModel, scene, frame_idx: int, teacher: bool = False) -> torch.Tensor:
    """(D', h, w) features of one view by the trained 2D network (``teacher``: the frozen teacher),
    in the rendered features' space (after the projection, if any)."""
    net = model.image_net
    tok = net.trunk(net.preprocess(scene.frames.read_color(frame_idx)))
    f = net.reference(tok) if teacher else net.head(tok)
    return model.embed_2d(f, 1)[0].cpu()
