"""Supervised semantic segmentation: the loss used by fine-tuning (method `scratch` and the
fine-tuning half of every pre-training method)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain3d.data.labels import IGNORE_INDEX


def semseg_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model(batch)
    target = batch["segment"]
    valid = target != IGNORE_INDEX
    if not bool(valid.any()):
        # A batch with no labelled point (possible with sparse annotations) still steps the
        # schedule, contributes nothing and keeps the graph connected.
        loss = logits.sum() * 0.0
        return loss, {"labelled_fraction": 0.0, "labelled_voxels_per_sample": 0.0}
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        acc = (logits[valid].argmax(1) == target[valid]).float().mean()
    n_samples = len(batch["offset"]) if "offset" in batch else 1
    # labelled voxels that reach the loss, per sample (limited annotations: compare with la_points)
    return loss, {"acc": float(acc), "labelled_fraction": float(valid.float().mean()),
                  "labelled_voxels_per_sample": float(valid.sum()) / n_samples}
