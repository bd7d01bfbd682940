"""PonderV2: pre-training a 3D backbone by differentiable neural rendering (Zhu et al., arXiv 2310.08586).

The backbone's per-voxel features are averaged into a dense volume over the scene's box, a dense 3D
UNet spreads them, and a NeuS-style SDF field decoded from the volume renders colour and depth (and,
in the ``ponderv2_semantic`` variant, features compared with class-name text embeddings) along rays
of the scene's real RGB-D views. Only the backbone is kept; volume, field and renderer are
pre-training scaffolding.

What is the paper's and what is ours (facts: shared/reference/methods.md section 3, pointcept.md
section 3):

* **Scene normalisation** -- paper: scene scaled to the unit cube by its largest extent, floor at
  z = -0.5, cameras transformed with it. Ours: the same, applied after the augmentation and the
  voxelisation (the 4x4 of every step is composed in ``sample["transform"]`` and applied to the
  camera poses, so a ray still meets the surface where the depth says -- tested).
* **Augmentation** -- paper: grid sampling, RandomDropout(0.8), z-rotation, small tilt, scale
  0.9-1.1, flip (all rigid or uniform scale, all applied to the cameras). Ours: the configured
  ``pretrain.augment`` minus elastic distortion (non-rigid: the cameras cannot follow it); jitter
  (<= 2 cm, zero-mean) and the colour augmentations touch only the backbone's input, never the
  rendering targets. Input dropout: ``pretrain.ponderv2.input_dropout`` (paper 0.8 at 2 cm).
* **Volume** -- paper: mean-scatter into 128 x 128 x 32 over the unit cube, UNet3D 96 -> 128, split
  64/64. Ours: mean-scatter over the scene's padded bounding box (no cells spent above the ceiling),
  ``DenseUNet3D``, split half/half; sizes in ``pretrain.ponderv2``.
* **Trilinear sampling** -- paper: SmoothSampler CUDA op (double backward). Ours: gathers
  (``models.trilinear``), exact second-order gradients on CPU and GPU.
* **Rays** -- paper: 256 random valid-depth pixels x 5 views, near 0.01, 96 + 36 samples. Ours:
  the same sampler with configurable counts; rays whose surface point lies outside the scene box
  are dropped (the volume cannot explain them). Depth targets are converted from z-depth to
  distance along the (transformed) ray: ``t = z * |A R K^-1 [u, v, 1]|``.
* **Losses** -- paper weights (``pretrain.ponderv2.loss_weights``): RGB L1 x10, depth L1 x1,
  near-surface SDF |t + sdf - d| within the truncation x10, free space relu(trunc - sdf) x1,
  eikonal x0.01; semantic InfoNCE x0.1 across the rays (tau 0.01; rays of the same class are
  negatives, as in the paper) -- over every class including wall (the released code skips class 0).
* **Semantic labels** -- paper: ScanNet's 2D label images. Ours: the label of the nearest labelled
  scene point within ``label_radius`` of the ray's surface point (works for every dataset with 3D
  labels); ``uses_gt_labels=true`` is tagged on those runs.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pretrain3d.data import transforms as T
from pretrain3d.data.dataset import concat_fields
from pretrain3d.errors import DataError
from pretrain3d.models.feature_volume import DenseUNet3D, scatter_mean_volume
from pretrain3d.models.neural_field import NeuralField
from pretrain3d.models.neus import render_rays

__all__ = ["unit_cube_transform", "camera_rays", "PonderDataset", "ponder_collate", "PonderV2Model",
           "ponder_loss", "render_view"]


# ============================================================================ geometry


def unit_cube_transform(coord: np.ndarray) -> np.ndarray:
    """4x4 that maps ``coord`` into the unit cube: x/y centred, largest extent 1, floor at z = -0.5."""
    lo, hi = coord.min(axis=0), coord.max(axis=0)
    s = 1.0 / max(float((hi - lo).max()), 1e-6)
    M = np.eye(4)
    M[:3, :3] *= s
    M[:3, 3] = -s * np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]) + np.array([0.0, 0.0, -0.5])
    return M


def camera_rays(pix: np.ndarray, z: np.ndarray, K: np.ndarray, pose_c2w: np.ndarray, M: np.ndarray):
    """Rays of pixels ``pix`` (n, 2) [u, v] with z-depths ``z`` (n,) in a space reached from the world by
    the affine ``M`` (4x4; rotation, uniform scale, flip, translation).

    Returns ``origins`` (n, 3), unit ``dirs`` (n, 3), ``dist`` (n,) distance along the ray to the surface
    in M's units, and ``ray_scale`` (n,) = dist / z (to convert rendered distances back to z-depth)."""
    hom = np.concatenate([pix.astype(np.float64), np.ones((len(pix), 1))], axis=1)
    d_cam = hom @ np.linalg.inv(K).T
    d_cam /= d_cam[:, 2:3]  # z = 1: the point at depth z is origin + z * d
    A = M[:3, :3] @ pose_c2w[:3, :3]
    d = d_cam @ A.T
    o = M[:3, :3] @ pose_c2w[:3, 3] + M[:3, 3]
    n = np.linalg.norm(d, axis=1)
    return np.broadcast_to(o, d.shape).copy(), d / n[:, None], z * n, n


def unit_cube_voxels(sample: dict, grid_size: float, rng: np.random.Generator | None, padding: float):
    """Voxelise an (augmented) sample for the backbone and map it into the unit cube.

    Returns ``(v, coord_unit, M, lo, hi)``: the voxelised sample, its voxel positions in the unit cube, the
    4x4 from the scene's original coordinates into the unit cube (every step composed), and the padded box."""
    v = T.voxelize_for_model(sample, grid_size, rng)
    # Jitter moves points off the affine map; the unit cube is fitted to the voxels actually seen.
    U = unit_cube_transform(v["coord"])
    coord_unit = v["coord"] @ U[:3, :3].T + U[:3, 3]
    return v, coord_unit, U @ v["transform"], coord_unit.min(axis=0) - padding, coord_unit.max(axis=0) + padding


def camera_consistent_augment(sample: dict, rng: np.random.Generator, aug) -> dict:
    """``pretrain.augment`` without elastic distortion: every coordinate change is affine (recorded in
    ``sample["transform"]``) except a small zero-mean jitter."""
    sample = T.center_shift(sample, apply_z=True)
    sample = T.random_rotate(sample, rng, aug.rotate_z, aug.rotate_xy, aug.rotate_p)
    sample = T.random_scale(sample, rng, *aug.scale)
    sample = T.random_flip(sample, rng, aug.flip_p)
    sample = T.random_jitter(sample, rng, aug.jitter_sigma, aug.jitter_clip)
    sample = T.chromatic_auto_contrast(sample, rng, aug.chromatic_contrast_p)
    sample = T.chromatic_translation(sample, rng, aug.chromatic_translation_p, aug.chromatic_translation_ratio)
    sample = T.chromatic_jitter(sample, rng, aug.chromatic_jitter_p, aug.chromatic_jitter_std)
    return sample


# ============================================================================ data


class PonderDataset(Dataset):
    """PonderV2 samples, indexed by ``(scene index, sample seed)`` (``EpochSampler``).

    Each sample: the scene cloud (optionally with input dropout), augmented and voxelised for the
    backbone, mapped into the unit cube; ``views`` frames with ``rays_per_view`` random valid-depth
    pixels each, turned into rays in the same space. Tensors:

    * ``grid_coord`` (V, 3), ``feat`` (V, 6): backbone input; ``coord_unit`` (V, 3): voxel positions
      in the unit cube; ``box`` (1, 2, 3): the padded scene box;
    * ``ray_o``, ``ray_d`` (R, 3), ``ray_dist`` (R,) target distance, ``ray_scale`` (R,) distance per
      metre of z-depth, ``ray_rgb`` (R, 3) in [0, 1], ``ray_label`` (R,) class or -1;
    * ``transform`` (1, 4, 4): world -> unit cube.

    ``cfg`` is ``config.PretrainConfig``; ``semantic`` adds labels; ``debug`` adds ``points_unit``
    (every augmented scene point in the unit cube, before voxelisation)."""

    def __init__(self, scenes: Sequence, cfg, grid_size: float, *, semantic: bool = False, debug: bool = False,
                 voxel_labels: bool = False, pc=None):
        from pretrain3d.data.scene import ProcessedScene, load_processed_scene

        self.scenes = [s if isinstance(s, ProcessedScene) else load_processed_scene(s, load_frames=True)
                       for s in scenes]
        self.cfg = cfg
        self.pc = pc or cfg.ponderv2
        self.grid_size = float(grid_size)
        self.semantic = semantic
        self.voxel_labels = voxel_labels  # a per-voxel ``segment`` (a supervised head beside the renderer)
        self.debug = debug
        self._trees: dict[str, object] = {}
        for s in self.scenes:
            if s.frames is None or len(s.frames) == 0:
                raise DataError(s.path or s.scene_id, "scene has no RGB-D frames (frames.json)",
                                "PonderV2 renders the scene's posed RGB-D views")
            if (semantic or voxel_labels) and s.segment is None:
                raise DataError(s.path or s.scene_id, "scene has no labels",
                                "ponderv2_semantic needs per-point labels; use ponderv2 (label-free)")

    def __len__(self) -> int:
        return len(self.scenes)

    def _labels_at(self, scene, points_world: np.ndarray) -> np.ndarray:
        from scipy.spatial import cKDTree

        tree = self._trees.get(scene.scene_id)
        if tree is None:
            tree = self._trees[scene.scene_id] = cKDTree(np.asarray(scene.coord, np.float64))
        dist, idx = tree.query(points_world, distance_upper_bound=self.pc.label_radius)
        ok = np.isfinite(dist)
        out = np.full(len(points_world), -1, np.int64)
        out[ok] = np.asarray(scene.segment)[idx[ok]]
        return out

    def _rays(self, scene, frame_idx: int, M: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng) -> dict:
        fr = scene.frames[frame_idx]
        depth = scene.frames.read_depth(frame_idx)
        color = scene.frames.read_color(frame_idx)
        vs, us = np.nonzero(np.isfinite(depth) & (depth > 0))
        if len(vs) == 0:
            return {}
        take = rng.choice(len(vs), size=min(self.pc.rays_per_view, len(vs)), replace=False)
        vs, us = vs[take], us[take]
        z = depth[vs, us].astype(np.float64)
        pix = np.stack([us, vs], axis=1)
        o, d, dist, scale = camera_rays(pix, z, fr.intrinsics, fr.pose, M)
        hit = o + d * dist[:, None]
        keep = np.all((hit >= lo) & (hit <= hi), axis=1) & (dist > self.pc.near)
        out = {"o": o[keep], "d": d[keep], "dist": dist[keep], "scale": scale[keep],
               "rgb": color[vs[keep], us[keep]].astype(np.float64) / 255.0}
        self._view_rays(scene, fr, pix[keep], color)
        if self.semantic:
            K_inv = np.linalg.inv(fr.intrinsics)
            hom = np.concatenate([pix[keep].astype(np.float64), np.ones((int(keep.sum()), 1))], axis=1)
            cam = (hom @ K_inv.T)
            cam = cam / cam[:, 2:3] * z[keep, None]
            world = cam @ fr.pose[:3, :3].T + fr.pose[:3, 3]
            out["label"] = self._labels_at(scene, world)
        return out

    def _view_rays(self, scene, frame, pix: np.ndarray, color: np.ndarray) -> None:
        """Hook: the kept rays' pixels (u, v) of one view and its image (a subclass pairs them with 2D
        features); nothing here."""

    def __getitem__(self, key: tuple[int, int]) -> dict:
        idx, seed = key
        scene = self.scenes[idx]
        rng = np.random.default_rng(seed)
        sample = {"coord": np.asarray(scene.coord, np.float64).copy(),
                  "color": np.asarray(scene.color, np.float64).copy(),
                  "normal": np.asarray(scene.normal, np.float64).copy()}
        if self.voxel_labels:
            sample["segment"] = np.asarray(scene.segment, np.int64).copy()
        if self.pc.input_dropout > 0:
            keep = rng.random(len(sample["coord"])) >= self.pc.input_dropout
            if keep.sum() < 16:
                keep[:16] = True
            sample = T.select(sample, np.nonzero(keep)[0])
        s = camera_consistent_augment(sample, rng, self.cfg.augment)
        points_aug = s["coord"].copy() if self.debug else None
        v, coord_unit, M, lo, hi = unit_cube_voxels(s, self.grid_size, rng, self.pc.box_padding)

        nf = len(scene.frames)
        chosen = np.sort(rng.choice(nf, size=min(self.pc.views, nf), replace=False))
        parts = [r for r in (self._rays(scene, int(i), M, lo, hi, rng) for i in chosen) if r]
        if not parts:
            raise DataError(scene.path or scene.scene_id,
                            f"frames {[scene.frames[int(i)].id for i in chosen]} give no ray inside the scene box",
                            "check the frame poses against the scene cloud")

        def cat(key, dtype=np.float32):
            return torch.from_numpy(np.ascontiguousarray(np.concatenate([p[key] for p in parts]), dtype=dtype))

        out = {
            "grid_coord": torch.from_numpy(np.ascontiguousarray(v["grid_coord"], dtype=np.int64)),
            "feat": torch.from_numpy(np.ascontiguousarray(v["feat"], dtype=np.float32)),
            "coord_unit": torch.from_numpy(np.ascontiguousarray(coord_unit, dtype=np.float32)),
            "box": torch.tensor(np.stack([lo, hi])[None], dtype=torch.float32),
            "ray_o": cat("o"), "ray_d": cat("d"), "ray_dist": cat("dist"), "ray_scale": cat("scale"),
            "ray_rgb": cat("rgb"),
            "ray_label": (cat("label", np.int64) if self.semantic
                          else torch.full((sum(len(p["dist"]) for p in parts),), -1, dtype=torch.int64)),
            "transform": torch.tensor(M[None], dtype=torch.float64),
            "scene_id": scene.scene_id,
        }
        if self.voxel_labels:
            out["segment"] = torch.from_numpy(np.ascontiguousarray(v["segment"], dtype=np.int64))
        if self.debug:  # augmented points (before voxelisation) -> unit cube: M after undoing the augmentation
            U = M @ np.linalg.inv(s["transform"])
            out["points_unit"] = points_aug @ U[:3, :3].T + U[:3, 3]
        return out


def ponder_collate(batch: list[dict]) -> dict:
    """Concatenate samples; ``offset`` counts voxels per sample, ``ray_sample`` (R,) names each ray's
    sample, ``voxel_sample`` (V,) each voxel's."""
    counts = torch.tensor([len(b["grid_coord"]) for b in batch])
    out = {"offset": torch.cumsum(counts, 0),
           "voxel_sample": torch.repeat_interleave(torch.arange(len(batch)), counts),
           "ray_sample": torch.cat([torch.full((len(b["ray_dist"]),), i, dtype=torch.int64)
                                    for i, b in enumerate(batch)])}
    return concat_fields(batch, out)


# ============================================================================ model


class PonderV2Model(nn.Module):
    """Backbone + feature volume + neural field. ``text_embeddings`` (K, D), L2-normalised, switch on
    the semantic head (its output width is D)."""

    def __init__(self, backbone: nn.Module, cfg, text_embeddings: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg  # config.PonderV2Config
        self.backbone = backbone
        self.unet = DenseUNet3D(backbone.out_channels, cfg.volume_channels, cfg.unet_channels)
        semantic_dim = None if text_embeddings is None else int(text_embeddings.shape[1])
        self.field = NeuralField(cfg.volume_channels, cfg.hidden, semantic_dim, variance_init=cfg.variance_init)
        if text_embeddings is not None:
            self.register_buffer("text_embeddings", F.normalize(text_embeddings.float(), dim=1))
        else:
            self.text_embeddings = None

    def volumes(self, batch: dict, feats: torch.Tensor | None = None) -> torch.Tensor:
        """The sample volumes from the backbone's point features (computed here unless given)."""
        feats = self.backbone(batch) if feats is None else feats
        box = batch["box"]
        vol = scatter_mean_volume(feats, batch["coord_unit"], batch["voxel_sample"], box[:, 0], box[:, 1],
                                  self.cfg.volume_resolution)
        return self.unet(vol)

    def render(self, vol: torch.Tensor, box: torch.Tensor, origins: torch.Tensor, dirs: torch.Tensor, *,
               perturb: bool, with_semantic: bool = False) -> dict:
        c = self.cfg
        return render_rays(self.field, vol, box[None, 0], box[None, 1], origins, dirs, n_uniform=c.samples_uniform,
                           n_importance=c.samples_importance, upsample_steps=c.upsample_steps, near=c.near,
                           perturb=perturb, with_semantic=with_semantic)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_from_volumes(batch, self.volumes(batch))

    def loss_from_volumes(self, batch: dict, vols: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Render every sample's rays through its volume and combine the weighted loss terms."""
        c, w = self.cfg, self.cfg.loss_weights
        semantic = self.text_embeddings is not None
        keys = ("rgb", "mse", "depth", "sdf", "free", "eik", "sem", "label")
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for b in range(vols.shape[0]):
            m = batch["ray_sample"] == b
            if not bool(m.any()):
                continue
            r = self.render(vols[b:b + 1], batch["box"][b], batch["ray_o"][m], batch["ray_d"][m], perturb=True,
                            with_semantic=semantic)
            d = batch["ray_dist"][m]
            diff = r["rgb"] - batch["ray_rgb"][m]
            parts["rgb"].append(diff.abs().mean(-1))
            parts["mse"].append(diff.detach().pow(2).mean(-1))
            parts["depth"].append((r["depth"] - d).abs())
            gap = d[:, None] - r["t"]  # signed distance to the surface along the ray
            near = gap.abs() <= c.truncation
            parts["sdf"].append((r["sdf"] - gap).abs()[near])
            parts["free"].append(F.relu(c.truncation - r["sdf"])[gap > c.truncation])
            parts["eik"].append(((r["grad"].norm(dim=-1) - 1.0) ** 2).reshape(-1))
            if semantic:
                parts["sem"].append(r["semantic"])
                parts["label"].append(batch["ray_label"][m])

        def mean(key):
            x = torch.cat(parts[key]) if parts[key] else vols.new_zeros(0)
            return x.mean() if x.numel() else vols.sum() * 0.0

        terms = {"rgb": mean("rgb"), "depth": mean("depth"), "sdf": mean("sdf"), "free_space": mean("free"),
                 "eikonal": mean("eik")}
        if semantic:
            terms["semantic"] = semantic_infonce(torch.cat(parts["sem"]), torch.cat(parts["label"]),
                                                 self.text_embeddings, c.semantic_tau)
        loss = sum(getattr(w, k) * v for k, v in terms.items())
        logs = {f"loss_{k}": float(v.detach()) for k, v in terms.items()}
        logs["inv_s"] = float(self.field.variance().detach())
        mse = torch.cat(parts["mse"]).mean() if parts["mse"] else vols.new_ones(())
        logs["psnr"] = float(-10 * torch.log10(mse.clamp(min=1e-10)))
        return loss, logs


def semantic_infonce(rendered: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """PonderV2's semantic term: InfoNCE across the rays between each ray's normalised rendered
    feature and the text embedding of its class (rays with label -1 are left out)."""
    ok = labels >= 0
    if int(ok.sum()) < 2:
        return rendered.sum() * 0.0
    f = F.normalize(rendered[ok], dim=1)
    t = text[labels[ok]]
    logits = f @ t.T / tau
    return F.cross_entropy(logits, torch.arange(len(f), device=f.device))


def ponder_loss(model: PonderV2Model, batch: dict):
    """``Trainer`` loss function."""
    return model.loss(batch)


# ============================================================================ visual check


@torch.no_grad()
@torch.no_grad()
def scene_volume(model: PonderV2Model, scene, grid_size: float, device: torch.device | str = "cpu"):
    """The whole scene through backbone + feature volume: ``(volume (1, C, X, Y, Z), box (2, 3), M)`` with
    ``M`` the world -> unit-cube map (``unit_cube_voxels``), for rendering views or querying the field."""
    sample = {"coord": np.asarray(scene.coord, np.float64).copy(), "color": np.asarray(scene.color, np.float64).copy(),
              "normal": np.asarray(scene.normal, np.float64).copy()}
    sample = T.center_shift(sample, apply_z=True)
    v, coord_unit, M, lo, hi = unit_cube_voxels(sample, grid_size, None, model.cfg.box_padding)
    batch = {
        "grid_coord": torch.from_numpy(v["grid_coord"].astype(np.int64)),
        "feat": torch.from_numpy(v["feat"].astype(np.float32)),
        "coord_unit": torch.from_numpy(coord_unit.astype(np.float32)),
        "offset": torch.tensor([len(v["grid_coord"])]),
        "voxel_sample": torch.zeros(len(v["grid_coord"]), dtype=torch.int64),
        "box": torch.tensor(np.stack([lo, hi])[None], dtype=torch.float32),
    }
    batch = {k: t.to(device) for k, t in batch.items()}
    return model.volumes(batch)[0:1], batch["box"][0], M


@torch.no_grad()
def render_view_rays(model: PonderV2Model, scene, frame_idx: int, grid_size: float, scale: float, chunk: int,
                     device: torch.device | str = "cpu", with_semantic: bool = False) -> dict:
    """Render every ``1/scale``-th pixel of one of ``scene``'s views, the model in eval mode. Returns the
    per-ray outputs concatenated (``rgb``, ``depth`` distance, ``acc``, ``semantic`` when asked; CPU
    tensors), the pixel grid ``vs``, ``us`` (h, w), ``ray_scale`` (distance -> z-depth) and ``frame``."""
    was_training = model.training
    model.eval()
    try:
        vol, box, M = scene_volume(model, scene, grid_size, device)
        fr = scene.frames[frame_idx]
        H, W = scene.frames.read_depth(frame_idx).shape
        step = max(1, int(round(1.0 / scale)))
        vs, us = np.mgrid[0:H:step, 0:W:step]
        pix = np.stack([us.ravel(), vs.ravel()], axis=1)
        o, d, _, ray_scale = camera_rays(pix, np.ones(len(pix)), fr.intrinsics, fr.pose, M)
        o_t = torch.from_numpy(o.astype(np.float32)).to(device)
        d_t = torch.from_numpy(d.astype(np.float32)).to(device)
        keys = ("rgb", "depth", "acc") + (("semantic",) if with_semantic else ())
        parts: dict[str, list] = {k: [] for k in keys}
        for i in range(0, len(pix), chunk):
            r = model.render(vol, box, o_t[i:i + chunk], d_t[i:i + chunk], perturb=False, with_semantic=with_semantic)
            for k in keys:
                parts[k].append(r[k].cpu())
    finally:
        model.train(was_training)
    return {**{k: torch.cat(v) for k, v in parts.items()}, "vs": vs, "us": us, "ray_scale": ray_scale, "frame": fr}


def render_view(model: PonderV2Model, scene, frame_idx: int, grid_size: float, scale: float = 0.5,
                chunk: int = 1024, device: torch.device | str = "cpu") -> dict:
    """Render one of ``scene``'s views whole (every ``1/scale``-th pixel) with the model in eval mode.

    Returns numpy arrays: ``rgb`` / ``rgb_real`` (h, w, 3) in [0, 1], ``depth`` / ``depth_real`` (h, w)
    z-depth in metres (real: 0 where missing), and ``depth_abs_err_median`` over pixels with depth."""
    r = render_view_rays(model, scene, frame_idx, grid_size, scale, chunk, device)
    vs, us = r["vs"], r["us"]
    h, w = vs.shape
    depth = scene.frames.read_depth(frame_idx)
    color = scene.frames.read_color(frame_idx)
    rgb = r["rgb"].numpy().reshape(h, w, 3)
    z = (r["depth"].numpy() / r["ray_scale"]).reshape(h, w)
    real_z = depth[vs, us]
    valid = np.isfinite(real_z) & (real_z > 0)
    err = float(np.median(np.abs(z[valid] - real_z[valid]))) if valid.any() else math.nan
    return {"rgb": rgb, "rgb_real": color[vs, us].astype(np.float64) / 255.0, "depth": z,
            "depth_real": np.where(valid, real_z, 0.0), "depth_abs_err_median": err,
            "depth_real_median": float(np.median(real_z[valid])) if valid.any() else math.nan,
            "frame_id": r["frame"].id}


# ============================================================================ plug-in


def class_text_embeddings(cfg) -> tuple[torch.Tensor, dict]:
    """Text embeddings of the class names (cached per encoder, templates and class list)."""
    from pretrain3d.data.labels import dataset_class_names
    from pretrain3d.teachers.text import build_text_encoder, class_embeddings

    pv = cfg.pretrain.ponderv2
    names = dataset_class_names(cfg.data.dataset, cfg.data.num_classes)
    encoder = build_text_encoder(pv.text_encoder, weights=pv.text_encoder_weights)
    emb = class_embeddings(encoder, names, pv.text_templates, cache_dir="data/text_embeddings")
    return torch.as_tensor(emb, dtype=torch.float32), {"text_encoder": pv.text_encoder, "classes": names,
                                                       "templates": list(pv.text_templates)}


def build(cfg, method: str, scenes: Sequence):
    """The PonderV2 plug-in (methods.registry); ``ponderv2_semantic`` adds the text-embedding loss."""
    from pretrain3d.methods.plugin import MethodSetup, head_state
    from pretrain3d.models.segmentor import build_backbone

    pv = cfg.pretrain.ponderv2
    semantic = method == "ponderv2_semantic"
    text, text_meta = class_text_embeddings(cfg) if semantic else (None, {})
    model = PonderV2Model(build_backbone(cfg.model), pv, text_embeddings=text)
    tags = {"views": pv.views, "rays_per_view": pv.rays_per_view,
            "samples": f"{pv.samples_uniform}+{pv.samples_importance}",
            "volume_resolution": "x".join(map(str, pv.volume_resolution)), "render_semantic": str(semantic).lower()}
    if semantic:
        tags["text_encoder"] = pv.text_encoder
    return MethodSetup(
        dataset=PonderDataset(scenes, cfg.pretrain, cfg.train.grid_size, semantic=semantic), collate=ponder_collate,
        model=model, loss_fn=ponder_loss, tags=tags, fingerprint=text_meta,
        checkpoint={"teacher": None, "text": text_meta or None},
        save_extras=lambda m: {"renderer": head_state(m)},  # volume UNet + field: the report re-renders views
        summary={"ponderv2": pv.model_dump(mode="json")})
