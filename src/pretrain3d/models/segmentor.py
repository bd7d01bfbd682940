"""Backbone + per-point classifier: the model that fine-tuning trains and evaluation runs."""

from __future__ import annotations

import torch
from torch import nn

from pretrain3d.models.heads import LinearHead
from pretrain3d.models.spunet import SpUNet


def build_backbone(model_cfg) -> SpUNet:
    """A headless SpUNet (per-point features); ``model_cfg`` is a config.ModelConfig."""
    return SpUNet(in_channels=model_cfg.in_channels, num_classes=0, stem_channels=model_cfg.stem_channels,
                  channels=tuple(model_cfg.channels), layers=tuple(model_cfg.layers),
                  bn_eps=model_cfg.bn_eps, bn_momentum=model_cfg.bn_momentum)


class Segmentor(nn.Module):
    """``backbone.*`` keys are what pre-training produces and fine-tuning loads strictly;
    ``head.*`` is the classifier (a per-point linear layer, i.e. SpUNet-v1m1's 1×1 conv head)."""

    def __init__(self, backbone: SpUNet, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = LinearHead(backbone.out_channels, num_classes)
        self.backbone_frozen = False

    def freeze_backbone(self) -> None:
        """Linear probing: no gradients into the backbone and its BatchNorm statistics fixed."""
        self.backbone_frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "Segmentor":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        if self.backbone_frozen:
            with torch.no_grad():
                feat = self.backbone(batch)
            return self.head(feat)
        return self.head(self.backbone(batch))


def build_segmentor(model_cfg, num_classes: int) -> Segmentor:
    return Segmentor(build_backbone(model_cfg), num_classes)
