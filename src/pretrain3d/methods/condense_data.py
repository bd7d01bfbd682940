"""ConDense's training samples: PonderV2's samples plus the 2D side's views and ray pixels.

``CondenseDataset`` adds to each PonderV2 sample the pixel of every ray in its view and the views'
images and trunk-cache keys (``frame_key``); frames with too little valid depth are skipped
(``usable_frames``). ``condense_collate`` batches them. The choices behind it: the module docstring
of ``methods.condense``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import torch

from pretrain3d.errors import DataError
from pretrain3d.methods.ponderv2 import PonderDataset, ponder_collate

# the method's logger, as before the module was split out (the log lines name it)
log = logging.getLogger("pretrain3d.methods.condense")

__all__ = ["frame_key", "usable_frames", "CondenseDataset", "condense_collate"]


def frame_key(scene_id: str, frame_id: str) -> str:
    return f"{scene_id}/{frame_id}"


def usable_frames(scene, min_valid: float) -> tuple[list[str], list[dict]]:
    """Frame ids of ``scene`` with at least ``min_valid`` valid-depth pixels (and at least one), and
    the skipped ones with their valid fraction."""
    keep, skipped = [], []
    for i, fr in enumerate(scene.frames or []):
        depth = scene.frames.read_depth(i)
        ok = np.isfinite(depth) & (depth > 0)
        frac = float(ok.mean()) if ok.size else 0.0
        if ok.any() and frac >= min_valid:
            keep.append(fr.id)
        else:
            skipped.append({"scene": scene.scene_id, "frame": fr.id, "valid_depth_fraction": frac})
    return keep, skipped


class CondenseDataset(PonderDataset):
    """PonderV2's samples (same augmentation, voxels, unit cube, ray sampler) plus what the 2D side
    needs: ``ray_pix`` (R, 2) the (u, v) pixel of each ray in its frame, ``ray_view`` (R,) the
    sample's view it came from, ``view_key`` (list of "scene/frame" ids, the trunk-cache key),
    ``view_image`` (list of uint8 (H, W, 3) tensors). Frames with too little valid depth are skipped
    (``stats``); a scene without any usable frame is a DataError naming its folder."""

    def __init__(self, scenes: Sequence, cfg, grid_size: float):
        from pretrain3d.data.scene import ProcessedScene, load_processed_scene

        cc = cfg.condense
        scenes = [s if isinstance(s, ProcessedScene) else load_processed_scene(s, load_frames=True) for s in scenes]
        kept, skipped = [], []
        for s in scenes:
            if s.frames is None or len(s.frames) == 0:
                raise DataError(s.path or s.scene_id, "scene has no RGB-D frames (frames.json)",
                                "ConDense renders the scene's posed RGB-D views")
            ids, sk = usable_frames(s, cc.min_valid_depth)
            if not ids:
                raise DataError(s.path or s.scene_id,
                                f"no usable RGB-D frame: all {len(s.frames)} frames have less than "
                                f"{cc.min_valid_depth:.0%} valid-depth pixels",
                                "check the depth images / depth scale, or lower pretrain.condense.min_valid_depth")
            skipped += sk
            kept.append(s if len(ids) == len(s.frames) else dataclasses.replace(s, frames=s.frames.subset(ids)))
        super().__init__(kept, cfg, grid_size)
        self.pc = cc  # PonderDataset reads views, rays_per_view, near, box_padding, input_dropout from it
        self.skipped_frames = skipped
        self.stats = {"scenes": len(kept), "frames_used": sum(len(s.frames) for s in kept),
                      "frames_skipped": len(skipped)}
        if skipped:
            log.warning("ConDense: skipped %d frame(s) with < %.0f%% valid depth (first: %s)", len(skipped),
                        100 * cc.min_valid_depth, skipped[0])
        self._parts: list[dict] | None = None

    def frame_keys(self) -> list[str]:
        return [frame_key(s.scene_id, f.id) for s in self.scenes for f in s.frames]

    def read_image(self, key: str) -> np.ndarray:
        sid, _, fid = key.partition("/")
        for s in self.scenes:
            if s.scene_id == sid:
                return s.frames.read_color(s.frames.ids.index(fid))
        raise KeyError(key)

    def _view_rays(self, scene, frame, pix: np.ndarray, color: np.ndarray) -> None:
        # PonderDataset's ray sampler calls this for every view it keeps (in order, also with 0 rays),
        # so the 2D side sees exactly the rays the renderer gets.
        if self._parts is not None:
            self._parts.append({"pix": pix.astype(np.float32), "key": frame_key(scene.scene_id, frame.id),
                                "image": torch.from_numpy(np.ascontiguousarray(color))})

    def __getitem__(self, key: tuple[int, int]) -> dict:
        self._parts = []
        try:
            out = super().__getitem__(key)
            parts = self._parts
        finally:
            self._parts = None
        # PonderDataset keeps every view with valid depth, in order: the same list as ``parts``.
        out["ray_pix"] = torch.from_numpy(np.concatenate([p["pix"] for p in parts]))
        out["ray_view"] = torch.cat([torch.full((len(p["pix"]),), i, dtype=torch.int64) for i, p in enumerate(parts)])
        assert len(out["ray_pix"]) == len(out["ray_dist"])
        out["view_key"] = [p["key"] for p in parts]
        out["view_image"] = [p["image"] for p in parts]
        return out


def condense_collate(batch: list[dict]) -> dict:
    """``ponder_collate`` plus the 2D fields; ``ray_view`` indexes the batch's flat view list."""
    extra = ("ray_view", "view_key", "view_image")
    out = ponder_collate([{k: v for k, v in b.items() if k not in extra} for b in batch])
    n = np.cumsum([0] + [len(b["view_key"]) for b in batch])
    out["ray_view"] = torch.cat([b["ray_view"] + int(n[i]) for i, b in enumerate(batch)])
    out["view_key"] = [k for b in batch for k in b["view_key"]]
    out["view_image"] = [im for b in batch for im in b["view_image"]]
    return out
