"""Linear probing: a frozen backbone's per-voxel features, a linear classifier trained on them.

The backbone is run once per training scene (no augmentation: the features are what the
pre-trained network gives for the scene) and the linear head is then trained on the cached
features — seconds instead of minutes, and exactly the quantity a probe is meant to measure.
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
            loss_sum += float(loss) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            total += len(idx)
        history.append({"train/loss": loss_sum / total, "train/acc": correct / total, "epoch": epoch,
                        "train/steps": (epoch + 1) * ((len(y) + batch_size - 1) // batch_size)})
    return history
