"""Offset batching: a batch is the concatenation of its samples, described by cumulative counts.

``offset`` has one entry per sample: the running total of points, e.g. samples of 3, 2 and 4
points give ``offset = [3, 5, 9]`` and ``batch = [0,0,0,1,1,2,2,2,2]``. Empty samples are allowed
(repeated offsets).
"""

from __future__ import annotations

import torch

__all__ = ["offset2batch", "batch2offset", "offset2bincount"]


def offset2bincount(offset: torch.Tensor) -> torch.Tensor:
    """Points per sample from cumulative offsets."""
    offset = torch.as_tensor(offset).long()
    return torch.diff(offset, prepend=offset.new_zeros(1))


def offset2batch(offset: torch.Tensor) -> torch.Tensor:
    """Per-point sample index (long, length ``offset[-1]``) from cumulative offsets."""
    offset = torch.as_tensor(offset).long()
    counts = offset2bincount(offset)
    if (counts < 0).any():
        raise ValueError(f"offset must be non-decreasing, got {offset.tolist()}")
    return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts)


def batch2offset(batch: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Cumulative offsets (long, length ``batch_size``) from a sorted per-point sample index."""
    batch = torch.as_tensor(batch).long()
    if batch.numel() > 1 and (batch[1:] < batch[:-1]).any():
        raise ValueError("batch indices must be sorted (samples are contiguous)")
    if batch_size is None:
        batch_size = int(batch.max().item()) + 1 if batch.numel() else 0
    return torch.cumsum(torch.bincount(batch, minlength=batch_size), dim=0)
