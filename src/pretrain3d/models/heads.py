"""Per-point heads on top of a headless backbone (``SpUNet(num_classes=0)``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearHead", "ProjectionHead"]


class LinearHead(nn.Module):
    """Per-point linear classifier: (N, in_ch) features -> (N, num_classes) logits.

    Used for linear probing (frozen backbone) and for fine-tuning a headless backbone.
    """

    def __init__(self, in_ch: int, num_classes: int):
        super().__init__()
        self.in_ch, self.num_classes = int(in_ch), int(num_classes)
        self.linear = nn.Linear(self.in_ch, self.num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.linear(feat)


class ProjectionHead(nn.Module):
    """MLP projection + L2 normalisation, for contrastive pre-training objectives.

    ``hidden=None`` gives a single Linear(in_ch -> out_ch); otherwise
    Linear(in_ch -> hidden) -> BatchNorm1d -> ReLU -> Linear(hidden -> out_ch). The output rows
    have unit L2 norm.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int | None = None, normalize: bool = True):
        super().__init__()
        self.in_ch, self.out_ch, self.hidden = int(in_ch), int(out_ch), hidden
        self.normalize = normalize
        if hidden is None:
            self.mlp = nn.Linear(self.in_ch, self.out_ch)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(self.in_ch, int(hidden)),
                nn.BatchNorm1d(int(hidden)),
                nn.ReLU(inplace=True),
                nn.Linear(int(hidden), self.out_ch),
            )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        out = self.mlp(feat)
        return F.normalize(out, dim=-1) if self.normalize else out
