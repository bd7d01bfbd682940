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


def backbone_architecture(model_cfg) -> dict:
    """The architecture a backbone file must have for ``build_backbone(model_cfg)`` to load it."""
    return {"in_channels": model_cfg.in_channels, "stem_channels": model_cfg.stem_channels,
            "channels": list(model_cfg.channels), "layers": list(model_cfg.layers), "bn_eps": model_cfg.bn_eps,
            "pdnorm": None}


def check_backbone_architecture(arch: dict | None, model_cfg, source: str) -> None:
    """A backbone file that records its architecture (an imported checkpoint) must match ``model_cfg``:
    the error names the ``model.*`` settings to use. Files without a record are left to the strict load."""
    if not arch:
        return
    from pretrain3d.errors import ConfigError

    if arch.get("pdnorm"):
        conds = arch["pdnorm"].get("conditions")
        raise ConfigError(f"{source}: a PDNorm (SpUNet-v1m3) backbone; fine-tuning builds a plain SpUNet: import it "
                          f"with a dataset condition (--condition / pretrain.imported.condition, one of {conds})")
    want = backbone_architecture(model_cfg)
    keys = ("in_channels", "stem_channels", "channels", "layers", "bn_eps")
    diff = [k for k in keys if k in arch and (list(arch[k]) if isinstance(arch[k], (list, tuple)) else arch[k])
            != want[k]]
    if diff:
        fix = ", ".join(f"model.{k}: {list(arch[k]) if isinstance(arch[k], (list, tuple)) else arch[k]}" for k in diff)
        have = ", ".join(f"model.{k}={want[k]}" for k in diff)
        raise ConfigError(f"{source}: the backbone's architecture differs from the config ({have}); set {fix} "
                          "(the full-size SpUNet: an overlay such as configs/scannet-scratch.yaml)")


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
