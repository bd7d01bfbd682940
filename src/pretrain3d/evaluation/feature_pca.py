"""Pictures of feature maps for the feature checks (``evaluation.feature_checks``): one shared
3-component PCA of several maps as RGB images (``pca_rgb``) and a row of such panels written as a PNG
(``plot_feature_pca_row``, atomically, like ``evaluation.plots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["pca_rgb", "plot_feature_pca_row"]


# ------------------------------------------------------------------------------------- PCA images


def pca_rgb(maps: Sequence, masks: Sequence | None = None, *, max_fit_pixels: int = 50_000, seed: int = 0,
            percentile: float = 1.0) -> list[np.ndarray]:
    """(h, w, 3) float32 images in [0, 1] of feature maps (D, h, w) (tensors or arrays, sizes may
    differ, D must not), from ONE 3-component PCA fitted over the pixels of all maps together, so a
    colour means the same feature in every panel.

    Components are sign-fixed (largest loading positive) and each is mapped to [0, 1] by its
    ``percentile`` / ``100 - percentile`` values over all maps' pixels (shared), then clipped.
    ``masks`` (optional, (h, w) bool per map, True = valid) leave pixels out of the fit and paint
    them black (e.g. rays of a rendered map that hit nothing). At most ``max_fit_pixels`` pixels
    (a fixed-``seed`` random subset) enter the fit; all are projected.
    """
    arrs = [np.asarray(m.detach().double().cpu().numpy() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
            for m in maps]
    if not arrs:
        return []
    dims = {a.shape[0] for a in arrs}
    if any(a.ndim != 3 for a in arrs) or len(dims) != 1:
        raise ValueError(f"maps must all be (D, h, w) with one D, got {[a.shape for a in arrs]}")
    D = dims.pop()
    if masks is None:
        masks = [np.ones(a.shape[1:], bool) for a in arrs]
    masks = [np.asarray(m, bool) for m in masks]
    if len(masks) != len(arrs) or any(m.shape != a.shape[1:] for m, a in zip(masks, arrs)):
        raise ValueError("one (h, w) mask per map is needed")
    rows = [a.reshape(D, -1).T for a in arrs]
    valid = np.concatenate([r[m.reshape(-1)] for r, m in zip(rows, masks)])
    if len(valid) == 0:
        return [np.zeros((*a.shape[1:], 3), np.float32) for a in arrs]
    rng = np.random.default_rng(seed)
    fit = valid if len(valid) <= max_fit_pixels else valid[np.sort(rng.choice(len(valid), max_fit_pixels,
                                                                              replace=False))]
    mean = fit.mean(axis=0)
    cov = (fit - mean).T @ (fit - mean) / max(len(fit), 1)
    vals, vecs = np.linalg.eigh(cov)  # ascending
    basis = vecs[:, ::-1][:, :3]
    if basis.shape[1] < 3:  # D < 3: pad with zero components
        basis = np.concatenate([basis, np.zeros((D, 3 - basis.shape[1]))], axis=1)
    big = np.argmax(np.abs(basis), axis=0)
    basis = basis * np.where(basis[big, np.arange(3)] < 0, -1.0, 1.0)
    proj_valid = (valid - mean) @ basis
    lo = np.percentile(proj_valid, percentile, axis=0)
    hi = np.percentile(proj_valid, 100.0 - percentile, axis=0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    out = []
    for a, r, m in zip(arrs, rows, masks):
        img = np.clip(((r - mean) @ basis - lo) / span, 0.0, 1.0)
        img[~m.reshape(-1)] = 0.0
        out.append(img.reshape(*a.shape[1:], 3).astype(np.float32))
    return out


def plot_feature_pca_row(panels: Sequence[tuple[str, np.ndarray]], png_path: str | Path,
                         suptitle: str | None = None, dpi: int = 110) -> Path:
    """Write one row of images (PNG, atomically, Agg canvas): ``panels`` are ``(title, image)``
    with images (h, w, 3) uint8 or float in [0, 1], sizes may differ; every panel is drawn at the
    first panel's aspect ratio (e.g. the real frame | teacher PCA | rendered 3D PCA | 2D net PCA)."""
    from pretrain3d.evaluation.plots import _new_figure, _save_png

    if not panels:
        raise ValueError("no panels to plot")
    h0, w0 = np.asarray(panels[0][1]).shape[:2]
    aspect = h0 / w0
    n = len(panels)
    fig = _new_figure((3.2 * n, 3.2 * aspect + (0.7 if suptitle else 0.4)))
    for k, (title, img) in enumerate(panels):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = np.clip(img.astype(np.float32), 0.0, 1.0)
        ax = fig.add_subplot(1, n, k + 1)
        h, w = img.shape[:2]
        ax.imshow(img, interpolation="nearest", extent=(0, w0, h0, 0), aspect="equal")
        ax.set_title(f"{title}" if (h, w) == (h0, w0) else f"{title} ({w}x{h})", fontsize=9)
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save_png(fig, png_path, dpi)
