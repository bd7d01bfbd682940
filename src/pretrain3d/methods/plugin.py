"""What a pre-training method hands to the shared pre-training loop (stages.pretrain).

A method module (``methods/ppkt.py``, ``methods/ponderv2.py``, ...) defines
``build(cfg, method, scenes) -> MethodSetup``; its static facts (config section, data it needs,
ground-truth use, visual checks) are its line in ``methods.registry``. The loop, checkpoints,
resumption and tracking are shared, so no stage or rule names a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset


@dataclass
class AfterTraining:
    """Context of a method's post-training check (``MethodSpec.after_training``: a held-out render,
    feature checks...), which writes its files beside backbone.pt and logs them to the run."""

    cfg: Any             # pretrain3d.config.Params
    model: torch.nn.Module
    out_dir: Path        # the pre-training folder (beside backbone.pt)
    device: torch.device
    run: Any             # the MLflow job run (log_metrics, log_artifact)
    method: str
    seed: int

    @property
    def title(self) -> str:
        return f"{self.method} seed {self.seed}"


@dataclass
class MethodSetup:
    """What differs between pre-training methods."""

    dataset: Dataset
    collate: Callable
    model: torch.nn.Module                          # has .backbone (the SpUNet kept for fine-tuning)
    loss_fn: Callable                               # (model, batch) -> (loss, {name: float})
    tags: dict[str, Any]                            # MLflow tags of the run (uses_gt_labels comes from the registry)
    fingerprint: dict[str, Any]                     # extra identity of the run (teacher meta...): never resume across
    checkpoint: dict[str, Any] = field(default_factory=dict)   # static extras saved in backbone.pt
    save_extras: Callable[[torch.nn.Module], dict] | None = None  # trained parts saved beside the backbone
    summary: dict[str, Any] = field(default_factory=dict)      # extra entries of pretrain_log.json
    # several datasets (PPT): (seed, epoch, start batch) -> batches of dataset keys; steps per epoch
    batches: Callable[[int, int, int], Any] | None = None
    steps_per_epoch: int | None = None
    export_backbone: Callable[[torch.nn.Module], dict] | None = None  # the state handed to fine-tuning


def head_state(model: torch.nn.Module, skip: str = "backbone.") -> dict:
    """The model's state minus the backbone: the pre-training head saved beside it (renderer, 2D net)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(skip)}
