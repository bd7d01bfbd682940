"""PPKT's model and loss: the 3D backbone with its projection head, the 2D upsampling projection layer
(``UPL``) and the PPNCE InfoNCE loss, with the false-negative mask of ``pair_sampling: masked``.

What is the paper's and what is ours (loss, tau, UPL, masking): the module docstring of ``methods.ppkt``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain3d.methods.ppkt_pairs import PAIR_STAT_KEYS
from pretrain3d.models.heads import ProjectionHead

__all__ = ["UPL", "ppkt_infonce", "false_negative_mask", "PPKTModel", "ppkt_loss"]


class UPL(nn.Module):
    """Upsampling projection layer: 1x1 conv to ``embed_dim``, bilinear upsampling to pixel
    resolution, L2 normalisation -- evaluated only where it is needed.

    ``forward(maps (F, C, h, w), frame (N,), grid (N, 2))`` returns the (N, embed_dim) unit
    embeddings of pixels given by their frame index and their normalised ``grid_sample``
    coordinate (``align_corners=False``; pixel ``(u, v)`` of a ``W x H`` frame is at
    ``((u + 0.5) / W * 2 - 1, (v + 0.5) / H * 2 - 1)``). Sampling with ``padding_mode="border"``
    at pixel centres is exactly ``F.interpolate(..., size=(H, W), mode="bilinear",
    align_corners=False)`` followed by indexing (interpolate clamps the source index at the image
    edge just as ``border`` does), without materialising the full-resolution map.
    """

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.in_dim, self.embed_dim = int(in_dim), int(embed_dim)
        self.proj = nn.Conv2d(self.in_dim, self.embed_dim, kernel_size=1)

    def project(self, maps: torch.Tensor) -> torch.Tensor:
        """The projected, not yet upsampled or normalised maps (F, embed_dim, h, w)."""
        return self.proj(maps)

    def forward(self, maps: torch.Tensor, frame: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        z = self.proj(maps)
        frame = frame.long()
        n = frame.numel()
        if n == 0:
            return z.new_zeros((0, self.embed_dim))
        order = torch.argsort(frame, stable=True)
        counts = torch.bincount(frame[order], minlength=z.shape[0]).tolist()
        g_sorted = grid[order].to(z.dtype)
        pieces = []
        start = 0
        for f, c in enumerate(counts):
            if c == 0:
                continue
            g = g_sorted[start:start + c].view(1, 1, c, 2)
            s = F.grid_sample(z[f:f + 1], g, mode="bilinear", padding_mode="border", align_corners=False)
            pieces.append(s[0, :, 0, :].transpose(0, 1))  # (c, D)
            start += c
        out_sorted = torch.cat(pieces, dim=0)
        out = torch.empty_like(out_sorted)
        out[order] = out_sorted
        return F.normalize(out, dim=1)


def ppkt_infonce(f3d: torch.Tensor, f2d: torch.Tensor, tau: float) -> torch.Tensor:
    """PPNCE: ``-(1/N) sum_i log( exp(<f_i, g_i>/tau) / sum_j exp(<f_i, g_j>/tau) )``.

    ``f3d`` (N, D) point and ``f2d`` (N, D) pixel embeddings, both L2-normalised, pair ``i`` in
    row ``i`` of each; for each point the softmax runs over the N pixels.
    """
    if f3d.shape != f2d.shape:
        raise ValueError(f"f3d {tuple(f3d.shape)} and f2d {tuple(f2d.shape)} must have the same shape")
    return _infonce_from_similarity(f3d @ f2d.transpose(0, 1), tau)


def false_negative_mask(cell_key: torch.Tensor, voxel: torch.Tensor) -> torch.Tensor:
    """(N, N) bool, ``True`` where pixel ``j`` is left out of point ``i``'s InfoNCE denominator
    (``pair_sampling: masked``): pair ``j`` lies in the same (view, teacher cell) as pair ``i``
    (``cell_key``, (N,) integers unique per view and cell over the batch) -- its bilinear feature
    is a near copy of the positive's -- or pairs the same voxel (``voxel``, (N,)). The diagonal
    (the positive) is never masked, so every row keeps a finite logit."""
    cell_key = cell_key.reshape(-1)
    voxel = voxel.reshape(-1)
    if cell_key.shape != voxel.shape:
        raise ValueError(f"{cell_key.numel()} cell keys for {voxel.numel()} voxels")
    mask = (cell_key[:, None] == cell_key[None, :]) | (voxel[:, None] == voxel[None, :])
    mask.fill_diagonal_(False)
    return mask


def _infonce_from_similarity(sim: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PPNCE from the (N, N) point-by-pixel cosine similarities (positives on the diagonal).

    ``mask`` (N, N) bool: logits set to ``-inf`` (removed from the softmax denominator); its
    diagonal must be ``False``."""
    if sim.dtype in (torch.float16, torch.bfloat16):  # AMP: the softmax in float32
        sim = sim.float()
    logits = sim / tau
    if mask is not None:
        if mask.shape != sim.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match similarities {tuple(sim.shape)}")
        if bool(mask.diagonal().any()):
            raise ValueError("the InfoNCE mask must never mask a positive (its diagonal)")
        logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(sim.shape[0], device=sim.device)
    return F.cross_entropy(logits, target)


class PPKTModel(nn.Module):
    """3D backbone + projection head (3D side) and UPL (2D side). The teacher is not part of it.

    ``backbone`` is a headless SpUNet (``models.segmentor.build_backbone``); its state dict is what
    pre-training hands to fine-tuning (``model.backbone``).
    """

    def __init__(self, backbone: nn.Module, teacher_dim: int, embed_dim: int, tau: float = 0.04,
                 mask_false_negatives: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.out_channels, embed_dim)
        self.upl = UPL(teacher_dim, embed_dim)
        self.tau = float(tau)
        self.mask_false_negatives = bool(mask_false_negatives)  # pair_sampling: masked

    def forward(self, batch: dict) -> torch.Tensor:
        """Unit 3D embeddings of every voxel (N, embed_dim)."""
        return self.head(self.backbone(batch))

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        feat = self.backbone(batch)
        pv = batch["pair_voxel"]
        logs: dict[str, float] = {}
        if "pair_stats" in batch and batch["pair_stats"].numel():
            means = batch["pair_stats"].float().mean(dim=0)
            logs.update({f"pairs/{k}": float(v) for k, v in zip(PAIR_STAT_KEYS, means.tolist())})
        if pv.numel() < 2:
            # Nothing to contrast (no view saw the sample): step anyway, contribute nothing.
            loss = feat.sum() * 0.0 + sum(p.sum() for p in self.upl.parameters()) * 0.0
            logs.update({"pairs": float(pv.numel()), "pos_sim": 0.0, "top1": 0.0})
            return loss, logs
        f3d = self.head(feat[pv])
        f2d = self.upl(batch["feats2d"], batch["pair_frame"], batch["pair_grid"])
        sim = f3d @ f2d.transpose(0, 1)
        mask = None
        if self.mask_false_negatives:
            if "pair_cell" not in batch:
                raise ValueError("pair_sampling: masked needs the batch's pair_cell (PPKTDataset with masked sampling)")
            h, w = batch["feats2d"].shape[-2:]
            key = batch["pair_frame"].long() * (h * w) + batch["pair_cell"].long()
            mask = false_negative_mask(key.to(sim.device), pv.to(sim.device))
        loss = _infonce_from_similarity(sim, self.tau, mask)
        with torch.no_grad():
            sim = sim.detach().float()
            n = sim.shape[0]
            pos = sim.diagonal()
            if mask is not None:
                logs["masked_negatives"] = float(mask.sum()) / n  # per pair, left out of its denominator
            ranked = sim if mask is None else sim.masked_fill(mask, float("-inf"))
            top1 = (ranked.argmax(dim=1) == torch.arange(n, device=sim.device)).float().mean()
            if mask is None:
                neg = (sim.sum() - pos.sum()) / max(n * n - n, 1)
            else:  # the mean over the negatives left in the denominators
                keep = ~mask
                neg = (sim.masked_fill(mask, 0.0).sum() - pos.sum()) / max(int(keep.sum()) - n, 1)
        logs.update({"pairs": float(n), "pos_sim": float(pos.mean()), "neg_sim": float(neg), "top1": float(top1)})
        return loss, logs


def ppkt_loss(model: PPKTModel, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """``Trainer`` loss function."""
    return model.loss(batch)
