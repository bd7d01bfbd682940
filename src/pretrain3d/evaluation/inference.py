"""Predict every original point of a scene (voxel predictions mapped back through the inverse map),
optionally with test-time-augmentation voting (:mod:`pretrain3d.evaluation.tta`)."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from pretrain3d.data.dataset import EvalDataset
from pretrain3d.evaluation.metrics import ConfusionAccumulator, metrics_from_confusion
from pretrain3d.evaluation.tta import predict_scene_tta


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


def predict_scenes(model: torch.nn.Module, scenes: Sequence, grid_size: float, device: torch.device,
                   tta_views: Sequence | None = None, fragments: bool = True,
                   stats: dict | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``(scene_id, prediction of every original point)`` for each ``SceneArrays``: the single
    pass, or TTA voting over ``tta_views`` when given. ``stats`` (if a dict) receives the number
    of forward passes per scene under ``"forward_passes"``."""
    passes = stats.setdefault("forward_passes", []) if stats is not None else []
    if tta_views is None:
        ds = EvalDataset(scenes, grid_size)
        for i in range(len(ds)):
            sample = ds[i]
            passes.append(1)
            yield sample["scene_id"], predict_scene(model, sample, device)
        return
    for s in scenes:
        res = predict_scene_tta(model, s.coord, s.color, s.normal, grid_size, tta_views, device, fragments)
        passes.append(res.forward_passes)
        yield s.scene_id, res.pred


def score_predictions(predictions: Iterable[tuple[str, np.ndarray, np.ndarray]], num_classes: int, class_names,
                      keep_predictions: bool = False):
    """``(scene_id, pred, target)`` triples → metrics dict and confusion (and the predictions)."""
    acc = ConfusionAccumulator(num_classes)
    preds = {}
    for scene_id, pred, target in predictions:
        acc.update(pred, target)
        if keep_predictions:
            preds[scene_id] = pred
    cm = acc.compute()
    metrics = metrics_from_confusion(cm, class_names)
    return (metrics, cm, preds) if keep_predictions else (metrics, cm)


@torch.no_grad()
def evaluate_scenes(model: torch.nn.Module, samples: Iterable[dict], num_classes: int, class_names,
                    device: torch.device, keep_predictions: bool = False):
    """Confusion over all original points of all scenes → metrics dict (and predictions)."""
    triples = ((s["scene_id"], predict_scene(model, s, device), s["segment_full"].numpy()) for s in samples)
    return score_predictions(triples, num_classes, class_names, keep_predictions)
