"""Sparse per-voxel features -> a dense feature volume over each scene's box (PonderV2's projector).

``scatter_mean_volume`` averages the backbone's voxel features into the cells of a dense grid
(``pretrain3d.scatter.scatter_mean``: torch's own ``scatter_reduce``, or torch-scatter when installed and
faster); empty cells are zero. ``DenseUNet3D`` is a small dense 3D UNet (conv-BN-ReLU, stride-2 downsampling,
transposed-conv upsampling with skip connections) that spreads the features into empty space,
so that the field can be queried anywhere a ray passes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pretrain3d.scatter import scatter_mean

__all__ = ["scatter_mean_volume", "DenseUNet3D"]


def scatter_mean_volume(feat: torch.Tensor, coord: torch.Tensor, batch: torch.Tensor, box_lo: torch.Tensor,
                        box_hi: torch.Tensor, resolution: Sequence[int]) -> torch.Tensor:
    """Mean of ``feat`` (N, C) per cell of a (X, Y, Z) grid spanning ``[box_lo[b], box_hi[b]]``.

    ``coord`` (N, 3) are the points' positions in the box's units, ``batch`` (N,) their sample.
    Returns (B, C, X, Y, Z) with B = len(box_lo).
    """
    X, Y, Z = (int(r) for r in resolution)
    B, C = box_lo.shape[0], feat.shape[1]
    sizes = torch.tensor([X, Y, Z], device=coord.device)
    rel = (coord - box_lo[batch]) / (box_hi - box_lo)[batch]
    cell = torch.floor(rel * sizes).long()
    cell = torch.minimum(cell.clamp(min=0), sizes - 1)
    flat = ((batch * X + cell[:, 0]) * Y + cell[:, 1]) * Z + cell[:, 2]
    out = scatter_mean(feat, flat, B * X * Y * Z)
    return out.view(B, X, Y, Z, C).permute(0, 4, 1, 2, 3).contiguous()


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class DenseUNet3D(nn.Module):
    """``in_channels`` -> ``out_channels`` at the input resolution; ``channels[i]`` is the width of
    level i (level i has resolution / 2**i). Odd sizes are handled by cropping/padding the upsampled
    map to the skip connection's size."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = (16, 32)):
        super().__init__()
        channels = list(channels)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(channels):
            if i > 0:
                self.down.append(nn.Sequential(nn.Conv3d(prev, c, 2, stride=2, bias=False), nn.BatchNorm3d(c),
                                               nn.ReLU(inplace=True)))
                prev = c
            self.enc.append(nn.Sequential(_block(prev, c), _block(c, c)))
            prev = c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(channels) - 1, 0, -1):
            self.up.append(nn.Sequential(nn.ConvTranspose3d(channels[i], channels[i - 1], 2, stride=2, bias=False),
                                         nn.BatchNorm3d(channels[i - 1]), nn.ReLU(inplace=True)))
            self.dec.append(_block(2 * channels[i - 1], channels[i - 1]))
        self.head = nn.Conv3d(channels[0], out_channels, 1)

    @staticmethod
    def _match(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        pad = []
        for d in (4, 3, 2):  # F.pad order: last dim first
            diff = ref.shape[d] - x.shape[d]
            pad += [0, diff] if diff >= 0 else [0, 0]
        x = nn.functional.pad(x, pad)
        return x[:, :, :ref.shape[2], :ref.shape[3], :ref.shape[4]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.enc):
            if i > 0:
                x = self.down[i - 1](x)
            x = enc(x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = self._match(up(x), skip)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)
