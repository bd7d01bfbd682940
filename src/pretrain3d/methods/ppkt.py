"""PPKT: pixel-to-point knowledge transfer (Liu et al., arXiv 2104.04687).

A frozen 2D teacher's feature maps (read from the feature cache, never computed here) are
distilled into the 3D backbone: each 3D point's embedding is pulled towards the embedding of the
pixel it corresponds to and pushed away from the other pixels of the batch with an InfoNCE loss
(the paper's "PPNCE"). Only the 3D backbone, its projection head and the 2D upsampling projection
layer (UPL) train.

What is the paper's and what is ours (sources: shared/reference/methods.md section 1, with its
provenance tags; SLidR = valeoai/SLidR's PPKT re-implementation, pretrain/lightning_trainer.py
and criterion.py, read at 003d438):

* **Loss** -- paper: ``L = -(1/N) sum_i log softmax_j(<f_i, g_j> / tau)`` over the N sampled
  pairs, f the point and g the pixel embeddings, both L2-normalised; softmax over pixels for each
  point. Ours: the same (``ppkt_infonce``; SLidR's ``NCELoss`` is the same cross-entropy).
* **tau** -- paper 0.04 [2nd]; SLidR 0.07 [code]. Ours: ``pretrain.ppkt.tau`` (default 0.04).
* **N (pairs per batch)** -- paper: unknown [PDF]; SLidR: 4096 drawn uniformly from all pairs of
  the batch [code]. Ours: ``pretrain.ppkt.num_pairs`` (default 4096) per batch, taken as
  ``num_pairs // batch_size`` per sample by the dataset (deterministic, so a resumed run sees the
  same pairs), and the InfoNCE runs over all pairs of the batch (negatives from other samples too,
  as in SLidR).
* **Pair sampling** -- paper: pair each voxel with its pixel(s) [2nd]; SLidR: 4096 random pairs
  [code], and its own method pools over superpixels because neighbouring pixels' bilinear features
  are near copies. A 12x16 ViT map of a 160x120 frame has ~100 pixels per cell, and ~2,048 pairs
  per sample from 2 views put ~5 pairs in each cell: those pairs' pixel features are bilinear
  blends of the same few cells as the positive's (false negatives). Ours,
  ``pretrain.ppkt.pair_sampling``:

  - ``masked`` (default): the ``pixel`` pairs (all ``num_pairs``, the same ones for the same
    seed), but each pair's InfoNCE denominator leaves out every other pair in the same (view,
    teacher cell) as its pixel and every other pair of the same voxel (a boolean mask, logits set
    to ``-inf``; the positive is never masked, and with no shared cell or voxel the loss is plain
    InfoNCE exactly). Chosen because it removes the false negatives by construction without
    giving up positives; it masks ~7.3 of the 4,095 negatives per pair (measured), so the
    objective changes little.
  - ``pixel``: distinct voxels first (a random pixel each), more pairs of already-paired voxels
    only when the sample has fewer paired voxels than its budget; plain InfoNCE.
  - ``cell``: at most one pair per (view, teacher cell) and per voxel -- no near copies at all, but
    only ~735 pairs per batch instead of 4,096.

  Cells are located with the teacher's own cell geometry (``teachers.base``; ``cell_offset`` in
  the cache's meta.json, ``pixel_to_cell``: nearest cell centre), as is the bilinear sampling of
  the UPL. Measured on the embedded benchmark, 8 epochs, probe (``standardize``) and LA200
  (``labelled``) mIoU, seeds 0/1/2/3 (issues #16 and this one):

  ========  =====  ============  ===============================  =============
  sampling  pairs  loss (s0)     probe s0 / s1 / s2 / s3 (mean)   LA200 s0 / s1
  ========  =====  ============  ===============================  =============
  masked    4,096  7.64          15.61 / 17.62 / 18.11 / 16.35    12.10 / 12.79
                                 (16.92)
  pixel     4,096  7.64          16.18 / 17.45 / 16.39 / 16.68    13.52 / 11.40
                                 (16.68)
  cell        735  5.93          15.70 / 15.31 / - / -            10.76 / -
  ========  =====  ============  ===============================  =============

  Paired masked − pixel: probe +0.25 ± 0.51 (s.e., 4 seeds), LA200 −0.02 ± 1.40 (2 seeds): a tie
  within noise, so the default is the variant without false negatives. ``cell`` − pixel: probe
  −1.31 ± 0.83 (2 seeds): at this short schedule the lost pairs cost more than the false
  negatives did.
* **UPL** -- paper: learned projection of the teacher features to the embedding width, then
  upsampling to pixel resolution [2nd]; SLidR: Conv1x1 + bilinear upsampling, L2 [code]. Ours: the
  same (``UPL``), but the bilinear upsampling is evaluated only at the paired pixels
  (``grid_sample`` at pixel centres; identical to upsampling the whole map, far cheaper).
  Width: ``pretrain.ppkt.embed_dim`` (paper 128 [2nd], SLidR 64 [code]).
* **Point source** -- paper: each RGB-D frame back-projected into its own point cloud (camera
  coordinates, exact pairs, no occlusion test) [2nd]. Ours, ``pretrain.ppkt.points``:
  ``frame`` = the paper's single-frame clouds (one cloud per frame, in world coordinates with
  z up so that the augmentations' "rotate about z" means gravity; normals from the depth image,
  colours from the image); ``scene`` (default) = the fused scene cloud that fine-tuning also sees,
  paired with ``frames_per_sample`` posed views by projection with the depth test
  ``|D - z| <= visibility_rel * D`` (OpenScene's rule, methods.md section 6) and a border margin.
  Pairs are computed on the original coordinates, before the 3D augmentation; the 2D side is not
  augmented (the paper's 2D flip / resize are not used: the cache holds one map per frame).
* **Teacher** -- paper: ImageNet ResNet-50 layer4 [2nd]. Ours: whatever the feature cache holds
  (``teacher.*``; default the offline DINOv2 ViT-S/14), recorded with the backbone.
* **Optimiser / schedule** -- paper: SGD lr 0.5, wd 1e-4, 60k iterations, batch 24 [2nd].
  Ours: ``pretrain.*`` (the embedded default is sized for 2 CPU cores).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pretrain3d.data import transforms as T
from pretrain3d.data.dataset import concat_fields
from pretrain3d.errors import DataError
from pretrain3d.geometry.correspondence import CorrespondenceStats, frame_points_with_attributes, scene_point_pixels
from pretrain3d.models.heads import ProjectionHead
from pretrain3d.teachers.cache import (cell_geometry, load_scene_features, pixel_to_cell, pixel_to_grid,
                                       read_cache_meta)

__all__ = [
    "UPL",
    "ppkt_infonce",
    "false_negative_mask",
    "PPKTModel",
    "ppkt_loss",
    "PPKTDataset",
    "ppkt_collate",
    "select_pairs",
    "PAIR_STAT_KEYS",
]

# Per-sample pair statistics carried in the batch (``pair_stats`` columns) and logged.
PAIR_STAT_KEYS = ("candidates", "pairs_found", "occluded", "in_front", "out_of_image", "no_depth",
                  "pairs_used", "voxels", "paired_voxels")


# ============================================================================ model


class UPL(nn.Module):
    """Upsampling projection layer: 1x1 conv to ``embed_dim``, bilinear upsampling to pixel
    resolution, L2 normalisation -- evaluated only where it is needed.

    ``forward(maps (F, C, h, w), frame (N,), grid (N, 2))`` returns the (N, embed_dim) unit
    embeddings of pixels given by their frame index and their normalised ``grid_sample``
    coordinate (``align_corners=False``; pixel ``(u, v)`` of a ``W x H`` frame is at
    ``((u + 0.5) / W * 2 - 1, (v + 0.5) / H * 2 - 1)``). Sampling with ``padding_mode="border"``
    at pixel centres is exactly ``F.interpolate(..., size=(H, W), mode="bilinear",
    align_corners=False)`` followed by indexing (interpolate clamps the source index at the image
    edge just as ``border`` does), without materialising the full-resolution map.
    """

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.in_dim, self.embed_dim = int(in_dim), int(embed_dim)
        self.proj = nn.Conv2d(self.in_dim, self.embed_dim, kernel_size=1)

    def project(self, maps: torch.Tensor) -> torch.Tensor:
        """The projected, not yet upsampled or normalised maps (F, embed_dim, h, w)."""
        return self.proj(maps)

    def forward(self, maps: torch.Tensor, frame: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        z = self.proj(maps)
        frame = frame.long()
        n = frame.numel()
        if n == 0:
            return z.new_zeros((0, self.embed_dim))
        order = torch.argsort(frame, stable=True)
        counts = torch.bincount(frame[order], minlength=z.shape[0]).tolist()
        g_sorted = grid[order].to(z.dtype)
        pieces = []
        start = 0
        for f, c in enumerate(counts):
            if c == 0:
                continue
            g = g_sorted[start:start + c].view(1, 1, c, 2)
            s = F.grid_sample(z[f:f + 1], g, mode="bilinear", padding_mode="border", align_corners=False)
            pieces.append(s[0, :, 0, :].transpose(0, 1))  # (c, D)
            start += c
        out_sorted = torch.cat(pieces, dim=0)
        out = torch.empty_like(out_sorted)
        out[order] = out_sorted
        return F.normalize(out, dim=1)


def ppkt_infonce(f3d: torch.Tensor, f2d: torch.Tensor, tau: float) -> torch.Tensor:
    """PPNCE: ``-(1/N) sum_i log( exp(<f_i, g_i>/tau) / sum_j exp(<f_i, g_j>/tau) )``.

    ``f3d`` (N, D) point and ``f2d`` (N, D) pixel embeddings, both L2-normalised, pair ``i`` in
    row ``i`` of each; for each point the softmax runs over the N pixels.
    """
    if f3d.shape != f2d.shape:
        raise ValueError(f"f3d {tuple(f3d.shape)} and f2d {tuple(f2d.shape)} must have the same shape")
    return _infonce_from_similarity(f3d @ f2d.transpose(0, 1), tau)


def false_negative_mask(cell_key: torch.Tensor, voxel: torch.Tensor) -> torch.Tensor:
    """(N, N) bool, ``True`` where pixel ``j`` is left out of point ``i``'s InfoNCE denominator
    (``pair_sampling: masked``): pair ``j`` lies in the same (view, teacher cell) as pair ``i``
    (``cell_key``, (N,) integers unique per view and cell over the batch) -- its bilinear feature
    is a near copy of the positive's -- or pairs the same voxel (``voxel``, (N,)). The diagonal
    (the positive) is never masked, so every row keeps a finite logit."""
    cell_key = cell_key.reshape(-1)
    voxel = voxel.reshape(-1)
    if cell_key.shape != voxel.shape:
        raise ValueError(f"{cell_key.numel()} cell keys for {voxel.numel()} voxels")
    mask = (cell_key[:, None] == cell_key[None, :]) | (voxel[:, None] == voxel[None, :])
    mask.fill_diagonal_(False)
    return mask


def _infonce_from_similarity(sim: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PPNCE from the (N, N) point-by-pixel cosine similarities (positives on the diagonal).

    ``mask`` (N, N) bool: logits set to ``-inf`` (removed from the softmax denominator); its
    diagonal must be ``False``."""
    if sim.dtype in (torch.float16, torch.bfloat16):  # AMP: the softmax in float32
        sim = sim.float()
    logits = sim / tau
    if mask is not None:
        if mask.shape != sim.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match similarities {tuple(sim.shape)}")
        if bool(mask.diagonal().any()):
            raise ValueError("the InfoNCE mask must never mask a positive (its diagonal)")
        logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(sim.shape[0], device=sim.device)
    return F.cross_entropy(logits, target)


class PPKTModel(nn.Module):
    """3D backbone + projection head (3D side) and UPL (2D side). The teacher is not part of it.

    ``backbone`` is a headless SpUNet (``models.segmentor.build_backbone``); its state dict is what
    pre-training hands to fine-tuning (``model.backbone``).
    """

    def __init__(self, backbone: nn.Module, teacher_dim: int, embed_dim: int, tau: float = 0.04,
                 mask_false_negatives: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.out_channels, embed_dim)
        self.upl = UPL(teacher_dim, embed_dim)
        self.tau = float(tau)
        self.mask_false_negatives = bool(mask_false_negatives)  # pair_sampling: masked

    def forward(self, batch: dict) -> torch.Tensor:
        """Unit 3D embeddings of every voxel (N, embed_dim)."""
        return self.head(self.backbone(batch))

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        feat = self.backbone(batch)
        pv = batch["pair_voxel"]
        logs: dict[str, float] = {}
        if "pair_stats" in batch and batch["pair_stats"].numel():
            means = batch["pair_stats"].float().mean(dim=0)
            logs.update({f"pairs/{k}": float(v) for k, v in zip(PAIR_STAT_KEYS, means.tolist())})
        if pv.numel() < 2:
            # Nothing to contrast (no view saw the sample): step anyway, contribute nothing.
            loss = feat.sum() * 0.0 + sum(p.sum() for p in self.upl.parameters()) * 0.0
            logs.update({"pairs": float(pv.numel()), "pos_sim": 0.0, "top1": 0.0})
            return loss, logs
        f3d = self.head(feat[pv])
        f2d = self.upl(batch["feats2d"], batch["pair_frame"], batch["pair_grid"])
        sim = f3d @ f2d.transpose(0, 1)
        mask = None
        if self.mask_false_negatives:
            if "pair_cell" not in batch:
                raise ValueError("pair_sampling: masked needs the batch's pair_cell (PPKTDataset with masked sampling)")
            h, w = batch["feats2d"].shape[-2:]
            key = batch["pair_frame"].long() * (h * w) + batch["pair_cell"].long()
            mask = false_negative_mask(key.to(sim.device), pv.to(sim.device))
        loss = _infonce_from_similarity(sim, self.tau, mask)
        with torch.no_grad():
            sim = sim.detach().float()
            n = sim.shape[0]
            pos = sim.diagonal()
            if mask is not None:
                logs["masked_negatives"] = float(mask.sum()) / n  # per pair, left out of its denominator
            ranked = sim if mask is None else sim.masked_fill(mask, float("-inf"))
            top1 = (ranked.argmax(dim=1) == torch.arange(n, device=sim.device)).float().mean()
            if mask is None:
                neg = (sim.sum() - pos.sum()) / max(n * n - n, 1)
            else:  # the mean over the negatives left in the denominators
                keep = ~mask
                neg = (sim.masked_fill(mask, 0.0).sum() - pos.sum()) / max(int(keep.sum()) - n, 1)
        logs.update({"pairs": float(n), "pos_sim": float(pos.mean()), "neg_sim": float(neg), "top1": float(top1)})
        return loss, logs


def ppkt_loss(model: PPKTModel, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """``Trainer`` loss function."""
    return model.loss(batch)


# ============================================================================ data


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


# ============================================================================ plug-in


def build(cfg, method: str, scenes: Sequence):
    """The PPKT plug-in (methods.registry): dataset over the teacher's feature cache, model, loss, tags."""
    from pretrain3d.methods.plugin import MethodSetup, head_state
    from pretrain3d.models.segmentor import build_backbone
    from pretrain3d.teachers.cache import configured_cache_dir, read_cache_meta

    pc = cfg.pretrain
    cache = configured_cache_dir(cfg.teacher)
    meta = read_cache_meta(cache)
    model = PPKTModel(build_backbone(cfg.model), int(meta["dim"]), pc.ppkt.embed_dim, tau=pc.ppkt.tau,
                      mask_false_negatives=pc.ppkt.pair_sampling == "masked")
    return MethodSetup(
        dataset=PPKTDataset(scenes, cache, pc, cfg.train.grid_size), collate=ppkt_collate, model=model,
        loss_fn=ppkt_loss,
        tags={"teacher": str(meta.get("name", cfg.teacher.name)),
              "teacher_layer": str(meta.get("layer", cfg.teacher.layer)),
              "pairs_per_batch": pc.ppkt.num_pairs, "tau": pc.ppkt.tau, "point_source": pc.ppkt.points,
              "num_views": pc.ppkt.frames_per_sample, "pair_sampling": pc.ppkt.pair_sampling},
        fingerprint={"teacher": meta}, checkpoint={"teacher": meta},
        # the 3D projection head and the 2D UPL: together they map points and teacher pixels into PPKT's
        # shared embedding (the scene-query baseline reads it)
        save_extras=lambda m: {"ppkt_heads": head_state(m)},
        summary={"teacher": meta, "cache_dir": str(cache), "point_source": pc.ppkt.points,
                 "pairs_per_batch": pc.ppkt.num_pairs, "pair_sampling": pc.ppkt.pair_sampling, "tau": pc.ppkt.tau})
