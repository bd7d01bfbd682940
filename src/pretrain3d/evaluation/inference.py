"""Predict every original point of a scene (voxel predictions mapped back through the inverse map)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from pretrain3d.evaluation.metrics import ConfusionAccumulator, metrics_from_confusion


@torch.no_grad()
def predict_scene(model: torch.nn.Module, sample: dict, device: torch.device) -> np.ndarray:
    """``sample`` is one EvalDataset item; returns (N_original,) predicted class ids."""
    model.eval()
    batch = {
        "grid_coord": sample["grid_coord"].to(device),
        "feat": sample["feat"].to(device),
        "offset": torch.tensor([len(sample["grid_coord"])], device=device),
    }
    logits = model(batch)
    pred_voxel = logits.argmax(1).cpu()
    return pred_voxel[sample["inverse"]].numpy()


@torch.no_grad()
def evaluate_scenes(model: torch.nn.Module, samples: Iterable[dict], num_classes: int, class_names,
                    device: torch.device, keep_predictions: bool = False):
    """Confusion over all original points of all scenes → metrics dict (and predictions)."""
    acc = ConfusionAccumulator(num_classes)
    preds = {}
    for sample in samples:
        pred = predict_scene(model, sample, device)
        acc.update(pred, sample["segment_full"].numpy())
        if keep_predictions:
            preds[sample["scene_id"]] = pred
    cm = acc.compute()
    metrics = metrics_from_confusion(cm, class_names)
    return (metrics, cm, preds) if keep_predictions else (metrics, cm)
