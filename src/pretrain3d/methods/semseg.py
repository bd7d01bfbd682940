"""Supervised semantic segmentation: the loss used by fine-tuning (method `scratch` and the
fine-tuning half of every pre-training method)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain3d.data.labels import IGNORE_INDEX
from pretrain3d.engine import distributed


def semseg_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model(batch)
    target = batch["segment"]
    valid = target != IGNORE_INDEX
    if not bool(valid.any()) and distributed.world_size() == 1:
        # A batch with no labelled point (possible with sparse annotations) still steps the
        # schedule, contributes nothing and keeps the graph connected.
        loss = logits.sum() * 0.0
        return loss, {"labelled_fraction": 0.0, "labelled_voxels_per_sample": 0.0}
    if distributed.world_size() > 1:
        # the global batch's mean: local sum over (global count / processes); gradients are averaged
        n = distributed.global_count(valid.sum().to(logits.dtype)).clamp_min(1e-6)  # no label anywhere: loss 0
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") / n
    else:
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    n_samples = len(batch["offset"]) if "offset" in batch else 1
    # labelled voxels that reach the loss, per sample (limited annotations: compare with la_points)
    logs = {"labelled_fraction": float(valid.float().mean()), "labelled_voxels_per_sample": float(valid.sum()) / n_samples}
    if bool(valid.any()):
        with torch.no_grad():
            logs["acc"] = float((logits[valid].argmax(1) == target[valid]).float().mean())
    return loss, logs
