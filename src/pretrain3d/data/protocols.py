"""Data-efficient protocols, after the ScanNet data-efficient benchmark (Hou et al., CVPR'21):

- limited annotations (LA): only N labelled points per training scene;
- limited reconstructions (LR): only a fraction of the training scenes.

The selections depend on the dataset and the protocol setting only — never on the run seed — so
every method and seed is trained and compared on exactly the same labels (as with the benchmark's
fixed annotation files).

LA counts labelled *points* per scene (``protocols.la_points``), as the benchmark's
``points/pointsN`` files do (N point indices per scene), so our numbers and the files' stay
comparable. Those points must also reach the loss: training voxelisation keeps one point per voxel,
and Pointcept keeps a random one, so at 8 cm only ~57 of 200 labelled points per scene survived a
step (47-65 measured). Deviation from Pointcept (``protocols.la_voxel_label: labelled``, the
default): a voxel that holds a labelled point keeps one of them (random among them), so every
labelled point reaches the loss except where several share one voxel (one label per voxel; the
others of that voxel are lost). ``random`` restores Pointcept's rule. Each LA run logs the labelled
voxels per sample and step (``train/labelled_voxels_per_sample``, its run mean in train_log.json as
``labelled_voxels_per_sample`` and in MLflow), beside ``labelled_points_per_scene``.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from pretrain3d.data.labels import IGNORE_INDEX


def _rng(*parts) -> np.random.Generator:
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def limited_annotations(segment: np.ndarray, n_points: int, scene_id: str) -> np.ndarray:
    """A copy of ``segment`` in which only ``n_points`` labelled points (chosen uniformly among the
    labelled ones, fixed per scene) keep their label; every other point becomes IGNORE_INDEX."""
    labelled = np.flatnonzero(segment != IGNORE_INDEX)
    keep = labelled if len(labelled) <= n_points else _rng("la", scene_id, n_points).choice(
        labelled, n_points, replace=False)
    out = np.full_like(segment, IGNORE_INDEX)
    out[keep] = segment[keep]
    return out


def limited_reconstructions(scene_ids: Sequence[str], fraction: float) -> list[str]:
    """A fixed subset (at least one scene) of ``fraction`` of the scenes, in sorted order."""
    ids = sorted(scene_ids)
    k = max(1, int(round(fraction * len(ids))))
    order = _rng("lr", len(ids), *ids).permutation(len(ids))
    return sorted(ids[i] for i in order[:k])
