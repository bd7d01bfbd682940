"""PonderV2's neural field: SDF, colour and (optional) semantic MLPs over a dense feature volume.

The volume's channels are split in half: geometry features feed the SDF MLP (Softplus with
beta = 100, as NeuS/PonderV2), appearance features feed the colour and semantic MLPs together with
the SDF MLP's geometry feature, the SDF gradient (the surface normal) and, for colour, the view
direction. Sizes follow shared/reference/methods.md section 3 (paper: 64 + 64 volume channels,
hidden 128, one block; semantic output = the text-embedding width).

The semantic MLP's last layer is linear, so a volume-rendered feature sum_i w_i (W h_i + b) equals
W (sum_i w_i h_i) + b sum_i w_i: the renderer composites the hidden layer and decodes once per ray
(``decode_semantic``) instead of once per sample -- the same result, a ray's samples (48 here) fewer
(hidden x D) matmuls, which were most of ConDense's backward pass at D = 384.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain3d.models.trilinear import trilinear_sample

__all__ = ["NeuralField", "LearnedVariance"]


class LearnedVariance(nn.Module):
    """NeuS's single learned sharpness: ``inv_s = exp(10 * v)`` (v initialised at 0.3 in PonderV2)."""

    def __init__(self, init: float = 0.3):
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)


class NeuralField(nn.Module):
    def __init__(self, volume_channels: int, hidden: int = 64, semantic_dim: int | None = None,
                 variance_init: float = 0.3):
        super().__init__()
        if volume_channels % 2:
            raise ValueError(f"volume_channels must be even (half geometry, half appearance), got {volume_channels}")
        g = a = volume_channels // 2
        self.geo_channels = g
        self.sdf_mlp = nn.Sequential(nn.Linear(g, hidden), nn.Softplus(beta=100), nn.Linear(hidden, 1 + g))
        self.color_mlp = nn.Sequential(nn.Linear(g + a + 3 + 3, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 3))
        self.semantic_mlp = None
        if semantic_dim:
            self.semantic_mlp = nn.Sequential(nn.Linear(g + a + 3, hidden), nn.ReLU(inplace=True),
                                              nn.Linear(hidden, semantic_dim))
        self.variance = LearnedVariance(variance_init)

    def sdf(self, volume: torch.Tensor, points: torch.Tensor, box_lo: torch.Tensor, box_hi: torch.Tensor):
        """SDF and geometry feature at ``points`` (B, P, 3) -> (B, P), (B, P, g), (B, P, a) appearance."""
        f = trilinear_sample(volume, points, box_lo, box_hi)
        geo, app = f[..., :self.geo_channels], f[..., self.geo_channels:]
        out = self.sdf_mlp(geo)
        return out[..., 0], out[..., 1:], app

    def forward(self, volume: torch.Tensor, points: torch.Tensor, dirs: torch.Tensor, box_lo: torch.Tensor,
                box_hi: torch.Tensor, with_semantic: bool = False) -> dict[str, torch.Tensor]:
        """Everything the renderer needs at ``points`` (B, P, 3) seen along ``dirs`` (B, P, 3, unit).

        The SDF gradient is taken with ``create_graph=True`` so that the eikonal loss (and the colour
        MLP, which sees the normal) back-propagate through it into the volume and the MLPs.
        """
        points = points.detach().requires_grad_(True)
        with torch.enable_grad():
            sdf, geo_feat, app = self.sdf(volume, points, box_lo, box_hi)
            grad, = torch.autograd.grad(sdf, points, torch.ones_like(sdf), create_graph=self.training,
                                        retain_graph=True)
        h = torch.cat([geo_feat, app, grad], dim=-1)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([h, dirs], dim=-1)))
        out = {"sdf": sdf, "grad": grad, "rgb": rgb}
        if with_semantic:
            if self.semantic_mlp is None:
                raise ValueError("this field has no semantic head (semantic_dim was not set)")
            out["semantic_hidden"] = self.semantic_mlp[1](self.semantic_mlp[0](h))
        return out

    def decode_semantic(self, hidden: torch.Tensor, weight_sum: torch.Tensor | None = None) -> torch.Tensor:
        """The semantic MLP's last (linear) layer on ``hidden`` (..., hidden): a per-point feature, or, for
        a weighted sum of hidden vectors, the same weighted sum of features when ``weight_sum`` (...,)
        is the sum of the weights (the bias is scaled by it)."""
        last = self.semantic_mlp[2]
        out = hidden @ last.weight.T
        return out + (last.bias if weight_sum is None else weight_sum[..., None] * last.bias)
