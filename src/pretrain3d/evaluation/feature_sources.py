"""Feature sources of the feature checks (``evaluation.feature_checks``): the 2D feature function, a
frozen teacher as one, reading a map at frame pixels, and running a function over a scene's frames.

A *2D feature function* is ``fn(images: uint8 ndarray (B, H, W, 3)) -> torch.Tensor (B, D, h, w)``,
used with the cell ``geometry`` of its map (``None`` when the map's cells tile the frame); a frame
pixel reads the map through ``teachers.cache.pixel_to_grid`` and bilinear ``grid_sample`` -- the
same sampling PPKT uses (details: ``evaluation.feature_checks``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pretrain3d.teachers.cache import pixel_to_grid

__all__ = ["FeatureFn", "feature_fn_from_teacher", "sample_features", "frame_feature_maps"]

FeatureFn = Callable[[np.ndarray], torch.Tensor]


# ---------------------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------------------- sampling


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
