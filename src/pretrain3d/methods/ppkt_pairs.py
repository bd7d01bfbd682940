"""PPKT's training samples: point clouds paired with the pixels of posed views, and the pair sampling.

``PPKTDataset`` draws a sample's views, builds its point cloud(s) (the fused scene, or one cloud per
frame), pairs points with pixels, augments and voxelises, and keeps at most its budget of pairs
(``select_pairs``: the ``pixel`` / ``cell`` rules; ``masked`` adds each pair's teacher cell for the
loss's mask); the teacher's maps come from the feature cache. ``ppkt_collate`` batches samples.
What is the paper's and what is ours (point source, pair sampling, N): the module docstring of
``methods.ppkt``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pretrain3d.data import transforms as T
from pretrain3d.data.dataset import concat_fields
from pretrain3d.errors import DataError
from pretrain3d.geometry.correspondence import CorrespondenceStats, frame_points_with_attributes, scene_point_pixels
from pretrain3d.teachers.cache import (cell_geometry, load_scene_features, pixel_to_cell, pixel_to_grid,
                                       read_cache_meta)

__all__ = ["PAIR_STAT_KEYS", "select_pairs", "PPKTDataset", "ppkt_collate"]

# Per-sample pair statistics carried in the batch (``pair_stats`` columns) and logged.
PAIR_STAT_KEYS = ("candidates", "pairs_found", "occluded", "in_front", "out_of_image", "no_depth",
                  "pairs_used", "voxels", "paired_voxels")


def select_pairs(voxel: np.ndarray, cap: int, rng: np.random.Generator, cell: np.ndarray | None = None) -> np.ndarray:
    """Indices of at most ``cap`` pairs.

    ``cell=None`` (``pair_sampling: pixel``, and ``masked``, whose cells only reach the loss): one random pair per distinct voxel first (in random
    order), then further pairs of already-chosen voxels only if there are fewer voxels than
    ``cap``. With ``cell`` (P,) integer keys of the pairs' (view, teacher cell)
    (``pair_sampling: cell``): at most one pair per cell key *and* per voxel, nothing else (the
    result may hold fewer than ``cap`` pairs): the random pair of each cell is kept unless its
    voxel was already taken by another cell, in which case that cell is left out."""
    n = len(voxel)
    if n == 0:
        return np.zeros(0, np.int64)
    perm = rng.permutation(n)
    if cell is not None:
        if len(cell) != n:
            raise ValueError(f"{len(cell)} cell keys for {n} pairs")
        _, first = np.unique(cell[perm], return_index=True)
        per_cell = perm[np.sort(first)]  # one random pair per cell, in random order
        _, first_v = np.unique(voxel[per_cell], return_index=True)
        return per_cell[np.sort(first_v)][:cap]
    v = voxel[perm]
    _, first = np.unique(v, return_index=True)
    is_first = np.zeros(n, bool)
    is_first[first] = True
    order = np.concatenate([perm[is_first], perm[~is_first]])
    return order[:cap]


class PPKTDataset(Dataset):
    """PPKT pre-training samples, indexed by ``(scene index, sample seed)`` (``EpochSampler``).

    Each sample: ``frames_per_sample`` frames of the scene drawn with the sample's rng, one or
    more point clouds (``points: scene`` -> the scene cloud; ``points: frame`` -> one cloud per
    frame, its own back-projected depth) augmented with ``train_augment`` and voxelised (a random
    point per voxel), and the point-pixel pairs mapped to voxels. Returns tensors:

    * ``grid_coord`` (V, 3), ``feat`` (V, 6), ``coord`` (V, 3): the voxels of all clouds,
      ``cloud_counts`` (c,): voxels per cloud (each cloud is its own backbone sample);
    * ``pair_voxel`` (P,), ``pair_frame`` (P,), ``pair_grid`` (P, 2): per pair, the voxel row,
      the frame (0..k-1 within the sample) and the pixel's normalised ``grid_sample`` coordinate;
      ``pair_point`` (P,) and ``pair_pix`` (P, 2) name the original point and pixel;
    * ``feats2d`` (k, C, h, w) float32: the cached teacher maps of the chosen frames;
    * ``frame_index`` (k,): the chosen frames' positions in the scene's frame index;
    * ``pair_stats`` (1, len(PAIR_STAT_KEYS)): counts for logging;
    * ``pair_cell`` (P,), only with ``pair_sampling: masked``: the pixel's teacher cell in its
      frame's map (``row * w + col``, ``pixel_to_cell``), for the loss's false-negative mask.

    ``cfg`` is ``config.PretrainConfig``. ``max_pairs`` (default ``num_pairs // batch_size``)
    bounds the pairs per sample. ``frame_stride`` (``points: frame``) subsamples the depth image
    (default: the smallest stride that keeps at most ~32k pixels per frame). ``debug=True`` adds
    ``debug``: per cloud a dict of numpy arrays (original and augmented coordinates, the
    grid-sample inverse, the cloud's first voxel row), for tests. Scene features are kept in an LRU
    of at most ``cache_mbytes`` per dataset (per worker process)."""

    def __init__(self, scenes: Sequence, cache_dir: str | Path, cfg, grid_size: float, *,
                 max_pairs: int | None = None, frame_stride: int | None = None, debug: bool = False,
                 cache_mbytes: float = 512.0):
        from pretrain3d.data.scene import ProcessedScene, load_processed_scene

        self.scenes = [s if isinstance(s, ProcessedScene) else load_processed_scene(s, load_frames=True)
                       for s in scenes]
        self.cache_dir = Path(cache_dir)
        self.cfg = cfg
        self.pc = cfg.ppkt
        self.grid_size = float(grid_size)
        self.max_pairs = int(max_pairs) if max_pairs is not None else max(1, self.pc.num_pairs // cfg.batch_size)
        self.frame_stride = frame_stride
        self.debug = debug
        self.meta = read_cache_meta(self.cache_dir)
        self.geometry = cell_geometry(self.meta, self.cache_dir / "meta.json")
        self._cache: OrderedDict[str, tuple[dict, np.ndarray]] = OrderedDict()
        self._cache_budget = int(cache_mbytes * 2**20)
        for s in self.scenes:
            if s.frames is None or len(s.frames) == 0:
                raise DataError(s.path or s.scene_id, "scene has no RGB-D frames (frames.json)",
                                "PPKT pairs points with pixels of posed frames")
            if not (self.cache_dir / f"{s.scene_id}.npz").is_file():
                raise DataError(self.cache_dir / f"{s.scene_id}.npz", "2D feature cache of this scene not found",
                                "run `pretrain3d features` with the same teacher settings first")

    def __len__(self) -> int:
        return len(self.scenes)

    # -------------------------------------------------------------- teacher features
    def _scene_features(self, scene) -> tuple[dict, np.ndarray]:
        hit = self._cache.get(scene.scene_id)
        if hit is not None:
            self._cache.move_to_end(scene.scene_id)
            return hit
        frame_ids, feats = load_scene_features(self.cache_dir, scene.scene_id)
        pos = {str(f): i for i, f in enumerate(np.asarray(frame_ids).tolist())}
        missing = [f for f in scene.frames.ids if f not in pos]
        if missing:
            raise DataError(self.cache_dir / f"{scene.scene_id}.npz",
                            f"feature cache lacks frames {missing[:5]} of the scene ({len(missing)} in all)",
                            "the cache is stale: re-run `pretrain3d features`")
        entry = (pos, feats)
        self._cache[scene.scene_id] = entry
        total = sum(v[1].nbytes for v in self._cache.values())
        while total > self._cache_budget and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            total -= old[1].nbytes
        return entry

    def _frame_stride(self, frames) -> int:
        if self.frame_stride is not None:
            return int(self.frame_stride)
        return max(1, math.ceil(math.sqrt(frames.width * frames.height / 32768)))

    # -------------------------------------------------------------- clouds and pairs
    def _scene_clouds(self, scene, chosen, rng, stats: CorrespondenceStats) -> list[dict]:
        coord = np.asarray(scene.coord, dtype=np.float64)
        pp, pf, pix = [], [], []
        for j, fi in enumerate(chosen):
            fr = scene.frames[fi]
            depth = scene.frames.read_depth(fi)
            idx, px = scene_point_pixels(coord, depth, fr.intrinsics, fr.pose, rel_thresh=self.pc.visibility_rel,
                                         margin=self.pc.margin, stats=stats)
            pp.append(idx)
            pf.append(np.full(len(idx), j, np.int64))
            pix.append(px)
        cloud = {"coord": coord.copy(), "color": np.asarray(scene.color, np.float64).copy(),
                 "normal": np.asarray(scene.normal, np.float64).copy()}
        return [{"sample": cloud, "pair_point": np.concatenate(pp), "pair_frame": np.concatenate(pf),
                 "pair_pix": np.concatenate(pix).reshape(-1, 2)}]

    def _frame_clouds(self, scene, chosen, rng, stats: CorrespondenceStats) -> list[dict]:
        stride = self._frame_stride(scene.frames)
        clouds = []
        for j, fi in enumerate(chosen):
            fr = scene.frames[fi]
            depth = scene.frames.read_depth(fi)
            color = scene.frames.read_color(fi)
            a = frame_points_with_attributes(depth, fr.intrinsics, fr.pose, color=color, stride=stride,
                                             margin=self.pc.margin)
            n = len(a["coord"])
            H, W = depth.shape
            vs, us = np.mgrid[0:H:stride, 0:W:stride]
            m = self.pc.margin
            inside = (us >= m) & (us <= W - 1 - m) & (vs >= m) & (vs <= H - 1 - m)
            stats.add(CorrespondenceStats(points=int(inside.size), pairs=n, out_of_image=int((~inside).sum()),
                                          no_depth=int(inside.sum()) - n))
            if n == 0:  # no valid depth at all: nothing to pair, nothing to voxelise
                continue
            clouds.append({"sample": {"coord": a["coord"], "color": a["color"], "normal": a["normal"]},
                           "pair_point": np.arange(n, dtype=np.int64), "pair_frame": np.full(n, j, np.int64),
                           "pair_pix": a["pix"]})
        if not clouds:
            raise DataError(scene.path or scene.scene_id,
                            f"frames {[scene.frames[int(i)].id for i in chosen]} have no valid depth")
        return clouds

    def __getitem__(self, key: tuple[int, int]) -> dict:
        idx, seed = key
        scene = self.scenes[idx]
        rng = np.random.default_rng(seed)
        nf = len(scene.frames)
        k = min(self.pc.frames_per_sample, nf)
        chosen = np.sort(rng.choice(nf, size=k, replace=False)).astype(np.int64)
        pos, feats = self._scene_features(scene)
        maps = feats[[pos[scene.frames[int(i)].id] for i in chosen]]

        stats = CorrespondenceStats()
        if self.pc.points == "scene":
            clouds = self._scene_clouds(scene, chosen, rng, stats)
        elif self.pc.points == "frame":
            clouds = self._frame_clouds(scene, chosen, rng, stats)
        else:  # pragma: no cover - the config validates it
            raise ValueError(f"unknown point source {self.pc.points!r}")

        parts, vox_all, base = [], [], 0
        debug = []
        for c in clouds:
            original = c["sample"]["coord"].copy() if self.debug else None
            s = T.train_augment(c["sample"], rng, self.cfg.augment)
            v = T.voxelize_for_model(s, self.grid_size, rng, keep_inverse=True)
            pair_vox = v["inverse"][c["pair_point"]]
            parts.append(v)
            vox_all.append(np.where(pair_vox >= 0, pair_vox + base, -1))
            if self.debug:
                debug.append({"coord": original, "augmented": s["coord"].copy(), "inverse": v["inverse"],
                              "voxel_base": base})
            base += len(v["grid_coord"])
        pair_vox = np.concatenate(vox_all)
        pair_point = np.concatenate([c["pair_point"] for c in clouds])
        pair_frame = np.concatenate([c["pair_frame"] for c in clouds])
        pair_pix = np.concatenate([c["pair_pix"] for c in clouds]).reshape(-1, 2)
        pair_cloud = np.concatenate([np.full(len(c["pair_point"]), i, np.int64) for i, c in enumerate(clouds)])
        ok = pair_vox >= 0
        pair_vox, pair_point, pair_frame, pair_pix, pair_cloud = (
            pair_vox[ok], pair_point[ok], pair_frame[ok], pair_pix[ok], pair_cloud[ok])
        W0, H0 = scene.frames.width, scene.frames.height
        cell_key = pair_cell = None
        if self.pc.pair_sampling in ("cell", "masked"):
            cell = pixel_to_cell(pair_pix, W0, H0, self.geometry)
            h, w = self.geometry["feature_size"]
            pair_cell = cell[:, 1] * w + cell[:, 0]  # the pixel's teacher cell within its frame's map
            cell_key = pair_frame * (h * w) + pair_cell
        # masked: the pixel rule's pairs (same rng use, so the same pairs as ``pixel``), the cells only
        # go to the loss's mask.
        sel = select_pairs(pair_vox, self.max_pairs, rng, cell_key if self.pc.pair_sampling == "cell" else None)
        pair_vox, pair_point, pair_frame, pair_pix, pair_cloud = (
            pair_vox[sel], pair_point[sel], pair_frame[sel], pair_pix[sel], pair_cloud[sel])
        grid = pixel_to_grid(pair_pix.astype(np.float64), W0, H0, self.geometry)

        n_vox = base
        st = [stats.points, stats.pairs, stats.occluded, stats.in_front, stats.out_of_image, stats.no_depth,
              len(sel), n_vox, len(np.unique(pair_vox))]
        out = {
            "grid_coord": torch.from_numpy(np.concatenate([p["grid_coord"] for p in parts]).astype(np.int64)),
            "feat": torch.from_numpy(np.concatenate([p["feat"] for p in parts]).astype(np.float32)),
            "coord": torch.from_numpy(np.concatenate([p["coord"] for p in parts]).astype(np.float32)),
            "cloud_counts": torch.tensor([len(p["grid_coord"]) for p in parts], dtype=torch.int64),
            "pair_voxel": torch.from_numpy(pair_vox.astype(np.int64)),
            "pair_frame": torch.from_numpy(pair_frame.astype(np.int64)),
            "pair_grid": torch.from_numpy(grid.astype(np.float32)),
            "pair_point": torch.from_numpy(pair_point.astype(np.int64)),
            "pair_pix": torch.from_numpy(pair_pix.astype(np.int64)),
            "pair_cloud": torch.from_numpy(pair_cloud.astype(np.int64)),
            "feats2d": torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)),
            "frame_index": torch.from_numpy(chosen),
            "pair_stats": torch.tensor([st], dtype=torch.float32),
            "scene_id": scene.scene_id,
        }
        if self.pc.pair_sampling == "masked":
            out["pair_cell"] = torch.from_numpy(pair_cell[sel].astype(np.int64))
        if self.debug:  # per cloud: original and augmented coordinates, grid-sample inverse, first voxel row
            out["debug"] = debug
        return out


def ppkt_collate(batch: list[dict]) -> dict:
    """Concatenate PPKT samples. ``offset`` counts every cloud as a backbone sample; voxel and frame
    indices of the pairs are shifted to index the whole batch; ``sample_of_pair`` (P,) names each
    pair's sample."""
    out: dict = {}
    counts = torch.cat([b["cloud_counts"] for b in batch])
    out["offset"] = torch.cumsum(counts, dim=0)
    vbase = fbase = 0
    pv, pf, sp = [], [], []
    for i, b in enumerate(batch):
        pv.append(b["pair_voxel"] + vbase)
        pf.append(b["pair_frame"] + fbase)
        sp.append(torch.full((len(b["pair_voxel"]),), i, dtype=torch.int64))
        vbase += len(b["grid_coord"])
        fbase += b["feats2d"].shape[0]
    out["pair_voxel"] = torch.cat(pv)
    out["pair_frame"] = torch.cat(pf)
    out["sample_of_pair"] = torch.cat(sp)
    shapes = {tuple(b["feats2d"].shape[1:]) for b in batch}
    if len(shapes) > 1:
        raise ValueError(f"teacher feature maps of different shapes in one batch: {sorted(shapes)}")
    return concat_fields(batch, out, skip=("pair_voxel", "pair_frame"))
