"""Linear probing: a frozen backbone's per-voxel features, a linear classifier trained on them.

The backbone is run once per training scene (no augmentation: the features are what the
pre-trained network gives for the scene) and the linear head is then trained on the cached
features — seconds instead of minutes, and exactly the quantity a probe is meant to measure.

Feature scale (``protocols.probe_features``). A frozen backbone runs in eval mode, so its
BatchNorm layers apply whatever running statistics the checkpoint carries. A random backbone
carries the initial ones (mean 0, var 1): BN then does nothing and the trunc-normal(0.02) weights
shrink the activations layer by layer (feature std ~0.009 vs ~0.9 for PPKT), which an AdamW-
trained linear head with weight decay cannot undo in 20 epochs — the scratch baseline predicted
wall/floor only. The probe must not depend on whose BN statistics a backbone carries, so by
default (``standardize``) every method's features are standardised per channel with the mean and
std of the train scenes' voxels before the head, and the affine map is folded into the saved
linear layer afterwards (``fold_standardization``: exact, so evaluation runs the plain
backbone + head). It is an affine, per-channel change of basis: it cannot add information, only
remove the scale handicap, and it is the same operation for every method. ``recompute_bn``
(BN running statistics re-estimated on the train scenes, the backbone's weights unchanged) is the
other scale-free option; it changes the features themselves, by different amounts for different
backbones, so it is kept as an alternative only. ``raw`` is the old behaviour.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from pretrain3d.data.labels import IGNORE_INDEX


@torch.no_grad()
def backbone_features(backbone: torch.nn.Module, samples: Iterable[dict], device: torch.device):
    """Concatenated (features, labels) over the voxels of ``samples`` (EvalDataset items)."""
    backbone.eval()
    feats, labels = [], []
    for s in samples:
        batch = {"grid_coord": s["grid_coord"].to(device), "feat": s["feat"].to(device),
                 "offset": torch.tensor([len(s["grid_coord"])], device=device)}
        feats.append(backbone(batch).float().cpu())
        labels.append(s["segment"])
    return torch.cat(feats), torch.cat(labels)


def feature_standardization(feats: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (population) of ``feats`` (N, C); the std is floored at ``eps``
    times the largest channel std (and at 1e-12), so a dead channel maps to 0 instead of noise."""
    if feats.ndim != 2 or len(feats) == 0:
        raise ValueError(f"features must be a non-empty (N, C) matrix, got shape {tuple(feats.shape)}")
    x = feats.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = std.clamp_min(max(float(std.max()) * eps, 1e-12))
    return mean.to(feats.dtype), std.to(feats.dtype)


@torch.no_grad()
def fold_standardization(linear: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rewrite ``linear`` (trained on ``(f - mean) / std``) in place so that it takes raw ``f``:
    ``W' = W / std``, ``b' = b - W' mean``."""
    w = linear.weight / std[None, :]
    linear.bias.sub_(w @ mean)
    linear.weight.copy_(w)


@torch.no_grad()
def recompute_bn_statistics(backbone: torch.nn.Module, samples: Iterable[dict], device: torch.device) -> int:
    """Re-estimate every BatchNorm's running mean/var as the cumulative average over ``samples``
    (one forward pass per scene, train mode, no gradients); returns the number of BN layers."""
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every scene weighs the same
    backbone.train()
    try:
        for s in samples:
            batch = {"grid_coord": s["grid_coord"].to(device), "feat": s["feat"].to(device),
                     "offset": torch.tensor([len(s["grid_coord"])], device=device)}
            backbone(batch)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        backbone.eval()
    return len(bns)


def fit_linear_head(head: torch.nn.Module, feats: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float,
                    weight_decay: float, seed: int, batch_size: int = 4096) -> list[dict[str, float]]:
    """Train ``head`` (AdamW, cosine decay) on labelled rows; returns per-epoch loss and accuracy."""
    keep = labels != IGNORE_INDEX
    x, y = feats[keep], labels[keep]
    if len(y) == 0:
        raise ValueError("linear probe: the training scenes have no labelled point")
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(y) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    head.train()
    history = []
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            logits = head(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            total += len(idx)
        history.append({"train/loss": loss_sum / total, "train/acc": correct / total, "epoch": epoch,
                        "train/steps": (epoch + 1) * ((len(y) + batch_size - 1) // batch_size)})
    return history


PROBE_FEATURES = ("standardize", "recompute_bn", "raw")


def train_probe(backbone: torch.nn.Module, head: torch.nn.Module, samples: list[dict], features: str, epochs: int,
                lr: float, weight_decay: float, seed: int, device: torch.device) -> list[dict[str, float]]:
    """The whole probe on the frozen ``backbone``: (optionally re-estimated BN statistics,) features of
    ``samples`` (EvalDataset items of the train scenes), (optionally standardised,) ``head`` fitted and
    the standardisation folded into it. ``features`` is ``protocols.probe_features``. The history's
    last entry also holds ``probe/feature_std_mean`` / ``_max``: the per-channel std of the raw
    frozen features (the scale problem this module's docstring describes)."""
    if features not in PROBE_FEATURES:
        raise ValueError(f"probe features must be one of {PROBE_FEATURES}, got {features!r}")
    if features == "recompute_bn":
        recompute_bn_statistics(backbone, samples, device)
    feats, labels = backbone_features(backbone, samples, device)
    raw_std = feats.std(dim=0, unbiased=False)
    if features == "standardize":
        mean, std = feature_standardization(feats)
        feats = (feats - mean) / std
    history = fit_linear_head(head, feats.to(device), labels.to(device), epochs, lr, weight_decay, seed)
    if features == "standardize":
        fold_standardization(head.linear, mean.to(device), std.to(device))
    history[-1].update({"probe/feature_std_mean": float(raw_std.mean()), "probe/feature_std_max": float(raw_std.max())})
    return history
