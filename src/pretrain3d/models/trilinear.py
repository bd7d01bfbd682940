"""Trilinear sampling of a dense feature volume that supports second-order gradients.

The eikonal term of neural-SDF training differentiates the SDF with respect to the sample
position and then back-propagates through that gradient, i.e. it needs the derivative of the
interpolation weights twice. ``torch.nn.functional.grid_sample`` has no double backward for 3D
volumes, so the interpolation is written here with gathers and elementwise products: every
operation has a double backward in autograd, and the gradient is exact (not a finite-difference
estimate, which would also cost six extra field evaluations per sample). PonderV2 uses a custom
CUDA op (SmoothSampler) for the same reason.

Conventions: ``volume`` is ``(B, C, X, Y, Z)``; cell ``i`` along an axis has its centre at
``lo + (i + 0.5) * (hi - lo) / n`` (like ``align_corners=False``); positions outside the box are
clamped to the border cells (zero gradient with respect to the position there).
"""

from __future__ import annotations

import torch

__all__ = ["trilinear_sample"]


def trilinear_sample(volume: torch.Tensor, points: torch.Tensor, box_lo: torch.Tensor,
                     box_hi: torch.Tensor) -> torch.Tensor:
    """Interpolate ``volume`` at ``points``.

    Args:
        volume: (B, C, X, Y, Z) features.
        points: (B, P, 3) positions in the same units as the box.
        box_lo, box_hi: (B, 3) corners of the box the volume spans.

    Returns:
        (B, P, C) features; differentiable twice with respect to ``points`` and once (or more)
        with respect to ``volume``.
    """
    if volume.dim() != 5 or points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"expected volume (B,C,X,Y,Z) and points (B,P,3), got {tuple(volume.shape)} "
                         f"and {tuple(points.shape)}")
    B, C, X, Y, Z = volume.shape
    sizes = torch.tensor([X, Y, Z], device=points.device, dtype=points.dtype)
    lo = box_lo[:, None, :].to(points.dtype)
    extent = (box_hi - box_lo)[:, None, :].to(points.dtype)
    # Continuous cell index with cell centres at integers, clamped inside the grid.
    u = (points - lo) / extent * sizes - 0.5
    u = torch.minimum(torch.clamp(u, min=0.0), sizes - 1)
    i0 = torch.floor(u).detach()
    i0 = torch.minimum(i0, (sizes - 2).clamp(min=0))  # so that i0 + 1 is a valid cell
    frac = u - i0  # in [0, 1]; carries the position's gradient
    i0 = i0.long()

    flat = volume.reshape(B, C, X * Y * Z).transpose(1, 2)  # (B, XYZ, C)
    out = None
    for dx in (0, 1):
        wx = frac[..., 0] if dx else 1 - frac[..., 0]
        ix = (i0[..., 0] + dx).clamp(max=X - 1)
        for dy in (0, 1):
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            iy = (i0[..., 1] + dy).clamp(max=Y - 1)
            for dz in (0, 1):
                wz = frac[..., 2] if dz else 1 - frac[..., 2]
                iz = (i0[..., 2] + dz).clamp(max=Z - 1)
                idx = (ix * Y + iy) * Z + iz  # (B, P)
                f = torch.gather(flat, 1, idx[..., None].expand(-1, -1, C))
                term = f * (wx * wy * wz)[..., None]
                out = term if out is None else out + term
    return out
