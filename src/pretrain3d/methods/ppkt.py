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

from typing import Sequence

from pretrain3d.methods.ppkt_model import UPL, PPKTModel, false_negative_mask, ppkt_infonce, ppkt_loss
from pretrain3d.methods.ppkt_model import _infonce_from_similarity  # noqa: F401 (tests import it from here)
from pretrain3d.methods.ppkt_pairs import PAIR_STAT_KEYS, PPKTDataset, ppkt_collate, select_pairs

# The method is this module (the plug-in's build) and two more: methods.ppkt_model (model and loss) and
# methods.ppkt_pairs (samples, pair sampling, collate); their names are importable from here as before.
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
