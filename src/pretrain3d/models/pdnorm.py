"""Prompt-driven normalisation (PDNorm, Wu et al. CVPR 2024 "Point Prompt Training"), for SpUNet.

A multi-dataset backbone normalises each batch under the condition of the dataset it came from
(batches never mix datasets: ``data.multi_dataset``). Two switches, as in Pointcept's
``PDBatchNorm`` (SpUNet-v1m3), so an imported v1m3 checkpoint maps one to one:

* ``decouple``: one BatchNorm1d (running statistics and affine) per condition, else one shared;
* ``adaptive``: a learned prompt per condition (``nn.Embedding(n, context_channels)``) is turned by
  every norm layer into a (shift, scale) pair, ``y = BN(x) * (1 + scale) + shift``, through
  ``SiLU -> Linear(context, 2C)`` (the first C outputs are the shift, the next C the scale).

Design choice (ours): the prompt embedding lives in the backbone (``SpUNet.prompt``) rather than in
the PPT wrapper, so a saved multi-dataset backbone is self-contained. Pointcept keeps it in the
wrapper (``embedding_table``); the checkpoint importer maps it here.

Under one condition and in eval mode a PDNorm layer is an affine map of the normalised input, so
``fold_condition`` turns a PDNorm backbone into a plain SpUNet-v1m1 (BatchNorm) backbone that gives
the same outputs for that condition -- which is how a jointly trained backbone is handed to the
single-dataset fine-tuning stage unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

__all__ = ["PDNormSpec", "PDBatchNorm", "Condition", "condition_of", "fold_condition"]


@dataclass(frozen=True)
class PDNormSpec:
    conditions: tuple[str, ...]      # dataset names, in prompt order (Pointcept: "ScanNet", "S3DIS", ...)
    decouple: bool = True            # per-condition BatchNorm
    adaptive: bool = True            # prompt -> per-layer (shift, scale)
    affine: bool = True              # BatchNorm affine parameters
    context_channels: int = 256      # prompt width (Pointcept: 256)

    def __post_init__(self):
        if not self.conditions:
            raise ValueError("PDNorm needs at least one condition (dataset name)")
        if len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"PDNorm conditions must be distinct, got {list(self.conditions)}")
        if self.context_channels < 1:
            raise ValueError(f"context_channels must be >= 1, got {self.context_channels}")

    def as_dict(self) -> dict:
        return {"conditions": list(self.conditions), "decouple": self.decouple, "adaptive": self.adaptive,
                "affine": self.affine, "context_channels": self.context_channels}

    @classmethod
    def from_dict(cls, d: Mapping) -> "PDNormSpec":
        return cls(conditions=tuple(d["conditions"]), decouple=bool(d["decouple"]), adaptive=bool(d["adaptive"]),
                   affine=bool(d["affine"]), context_channels=int(d["context_channels"]))


@dataclass(frozen=True)
class Condition:
    """The condition of one forward pass: the dataset's index and, when adaptive, its prompt (1, ctx)."""

    index: int
    context: torch.Tensor | None = None


class PDBatchNorm(nn.Module):
    def __init__(self, channels: int, spec: PDNormSpec, eps: float, momentum: float):
        super().__init__()
        self.spec = spec
        if spec.decouple:
            self.bns = nn.ModuleList([nn.BatchNorm1d(channels, eps=eps, momentum=momentum, affine=spec.affine)
                                      for _ in spec.conditions])
        else:
            self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum, affine=spec.affine)
        if spec.adaptive:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(spec.context_channels, 2 * channels))

    def norm_for(self, index: int) -> nn.BatchNorm1d:
        return self.bns[index] if self.spec.decouple else self.bn

    def forward(self, feat: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("a PDNorm backbone needs the batch's dataset condition (batch['condition'])")
        out = self.norm_for(cond.index)(feat)
        if self.spec.adaptive:
            shift, scale = self.modulation(cond.context).chunk(2, dim=1)
            out = out * (1.0 + scale) + shift
        return out


def condition_of(data: Mapping, spec: PDNormSpec, prompt: nn.Embedding | None) -> Condition:
    """The batch's condition from ``data['condition']`` (a name, or one name per sample, all equal)."""
    raw = data.get("condition")
    if raw is None:
        raise ValueError(f"a PDNorm backbone needs batch['condition'], one of {list(spec.conditions)}")
    names = [raw] if isinstance(raw, str) else list(raw)
    if not names or len(set(names)) != 1:
        raise ValueError(f"a batch must come from one dataset (PDNorm conditions per batch), got {sorted(set(names))}")
    name = names[0]
    if name not in spec.conditions:
        raise ValueError(f"unknown dataset condition {name!r}: the backbone's prompts are {list(spec.conditions)}")
    index = spec.conditions.index(name)
    context = None
    if spec.adaptive:
        context = prompt(torch.tensor([index], device=prompt.weight.device))
    return Condition(index, context)


@torch.no_grad()
def fold_condition(model: nn.Module, condition: str) -> dict[str, torch.Tensor]:
    """The state dict of the plain-BatchNorm SpUNet equal to ``model`` (a PDNorm SpUNet) under
    ``condition`` in eval mode: each PDNorm's chosen BatchNorm with the prompt's scale/shift folded into
    its affine (weight' = w(1+s), bias' = b(1+s) + t). Keys are those of ``SpUNet(norm=None)``."""
    spec: PDNormSpec | None = getattr(model, "norm_spec", None)
    if spec is None:
        raise ValueError("fold_condition needs a PDNorm SpUNet (norm_spec is None: already plain)")
    if condition not in spec.conditions:
        raise ValueError(f"unknown condition {condition!r}: the backbone's prompts are {list(spec.conditions)}")
    index = spec.conditions.index(condition)
    context = model.prompt.weight[index:index + 1] if spec.adaptive else None
    out: dict[str, torch.Tensor] = {}
    pd_prefixes = []
    for name, mod in model.named_modules():
        if not isinstance(mod, PDBatchNorm):
            continue
        pd_prefixes.append(name + ".")
        bn = mod.norm_for(index)
        c = bn.num_features
        w = bn.weight if bn.affine else torch.ones(c, device=bn.running_mean.device)
        b = bn.bias if bn.affine else torch.zeros(c, device=bn.running_mean.device)
        if spec.adaptive:
            shift, scale = mod.modulation(context).chunk(2, dim=1)
            w, b = w * (1.0 + scale[0]), b * (1.0 + scale[0]) + shift[0]
        out[f"{name}.weight"], out[f"{name}.bias"] = w.detach().clone(), b.detach().clone()
        out[f"{name}.running_mean"] = bn.running_mean.clone()
        out[f"{name}.running_var"] = bn.running_var.clone()
        out[f"{name}.num_batches_tracked"] = bn.num_batches_tracked.clone()
    for key, value in model.state_dict().items():
        if key.startswith("prompt.") or any(key.startswith(p) for p in pd_prefixes):
            continue
        out[key] = value.detach().clone()
    return out

