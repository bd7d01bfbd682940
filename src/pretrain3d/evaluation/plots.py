"""Evaluation figures: confusion matrix and ground-truth/prediction renderings (PNG, headless).

Both functions write atomically (temporary sibling file, then ``os.replace``) and use the
non-interactive Agg canvas directly, so they never touch a display or pyplot's global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pretrain3d.atomic import atomic_path

__all__ = ["plot_confusion", "render_segmentation", "default_palette", "MAX_RENDER_POINTS"]

MAX_RENDER_POINTS = 60_000
MAX_CONFUSION_INCHES = 32.0
IGNORE_GREY = np.array([0.75, 0.75, 0.75])


def _new_figure(figsize):
    # Agg canvas without pyplot: no backend selection, no global figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def plot_confusion(
    cm: Any,
    class_names: Sequence[str],
    path: str | Path,
    normalize: str | None = "true",
    log: bool = False,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write a confusion-matrix heat map to ``path`` (PNG).

    ``normalize="true"`` divides each row (ground-truth class) by its total, so cells are recall
    fractions; rows without ground truth stay 0. ``normalize=None`` shows raw counts.
    ``log=True`` uses a logarithmic colour scale (useful for raw counts).
    """
    from matplotlib.colors import LogNorm, Normalize

    cm = _np(cm).astype(np.float64)
    names = list(class_names)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(names) != k:
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {len(names)} class names")
    if normalize == "true":
        rows = cm.sum(axis=1, keepdims=True)
        data = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        label = "fraction of ground-truth points"
    elif normalize in (None, "none"):
        data = cm
        label = "points"
    else:
        raise ValueError(f"normalize must be 'true' or None, got {normalize!r}")

    if log:
        positive = data[data > 0]
        vmin = float(positive.min()) if positive.size else 1e-3
        vmax = float(max(data.max(), vmin * 10))
        norm = LogNorm(vmin=vmin, vmax=vmax)
        shown = np.ma.masked_less_equal(data, 0)
    else:
        norm = Normalize(vmin=0.0, vmax=1.0 if normalize == "true" else max(float(data.max()), 1.0))
        shown = data

    # ~0.42 in per class, capped: 200 classes (ScanNet200) would otherwise make a 10k-pixel image (3 GB to draw)
    side = min(max(5.0, 0.42 * k + 2.5), MAX_CONFUSION_INCHES)
    fig = _new_figure((side + 1.2, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    ax.set_xticks(np.arange(k))
    ax.set_yticks(np.arange(k))
    fontsize = 9 if k <= 20 else min(7.0, max(2.0, 0.5 * side * 72 / k))  # points: fit one label per row
    ax.set_xticklabels(names, rotation=60, ha="right", rotation_mode="anchor", fontsize=fontsize)
    ax.set_yticklabels(names, fontsize=fontsize)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 25:  # annotate cells while they stay readable
        thresh = 0.5 * (norm.vmax if norm.vmax is not None else 1.0)
        for i in range(k):
            for j in range(k):
                v = data[i, j]
                if v <= 0:
                    continue
                txt = f"{v:.2f}" if normalize == "true" else f"{int(v)}"
                if normalize == "true" and txt == "0.00":
                    continue
                ax.text(j, i, txt, ha="center", va="center", fontsize=6,
                        color="white" if v > thresh else "black")
    if title:
        ax.set_title(title)
    return _save_png(fig, path, dpi)


def _subsample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def _colours(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    k = palette.shape[0]
    out = np.tile(IGNORE_GREY, (labels.shape[0], 1))
    valid = (labels >= 0) & (labels < k)
    out[valid] = palette[labels[valid]] / 255.0
    return out


def default_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, pairwise different, for when no palette is given: matplotlib's tab20 up to
    20 classes, ``data.labels.distinct_palette`` beyond (tab20 would repeat colours)."""
    from matplotlib import colormaps

    from pretrain3d.data.labels import distinct_palette

    k = max(int(num_classes), 1)
    if k > 20:
        return distinct_palette(k)
    cmap = colormaps["tab20"]
    return (np.array([cmap(i)[:3] for i in range(k)]) * 255).round().astype(np.uint8)


def render_segmentation(
    coord: Any,
    gt: Any,
    pred: Any,
    palette: Any,
    path: str | Path,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
    max_points: int = MAX_RENDER_POINTS,
    elev: float = 55.0,
    azim: float = -60.0,
    dpi: int = 110,
) -> Path:
    """Write ground truth (left) and prediction (right) as two oblique 3D scatter views (PNG).

    ``palette`` is (K, 3) uint8 (``None``: tab20 colours); labels outside ``[0, K)`` (e.g. -1 =
    ignore) are drawn grey.
    At most ``max_points`` points (a fixed-seed random subset) are drawn. The legend lists the
    classes present in either view (``class_names`` default to ``"class <i>"``).
    """
    from matplotlib.lines import Line2D

    coord = _np(coord).astype(np.float64).reshape(-1, 3)
    gt = _np(gt).reshape(-1).astype(np.int64)
    pred = _np(pred).reshape(-1).astype(np.int64)
    if palette is None:
        palette = default_palette(int(max(gt.max(initial=-1), pred.max(initial=-1))) + 1)
    palette = _np(palette).astype(np.float64).reshape(-1, 3)
    n = coord.shape[0]
    if gt.shape[0] != n or pred.shape[0] != n:
        raise ValueError(f"coord ({n}), gt ({gt.shape[0]}) and pred ({pred.shape[0]}) lengths differ")
    k = palette.shape[0]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]

    idx = _subsample(n, max_points)
    xyz, g, p = coord[idx], gt[idx], pred[idx]
    marker_size = float(np.clip(9.0e4 / max(len(idx), 1), 1.5, 12.0))  # area in pt^2

    fig = _new_figure((13.0, 6.0))
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.1, top=0.9, wspace=0.02)
    lo = xyz.min(axis=0) if len(xyz) else np.zeros(3)
    hi = xyz.max(axis=0) if len(xyz) else np.ones(3)
    span = np.maximum(hi - lo, 1e-6)
    for col, (labels, sub) in enumerate(((g, "ground truth"), (p, "prediction"))):
        ax = fig.add_subplot(1, 2, col + 1, projection="3d")
        ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=_colours(labels, palette), s=marker_size,
                   marker="s", linewidths=0, depthshade=False, rasterized=True)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
        ax.set_box_aspect(tuple(span), zoom=1.0)
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        ax.set_title(sub)

    present = set(np.unique(g).tolist()) | set(np.unique(p).tolist())
    valid = sorted(c for c in present if 0 <= c < k)
    entries = [(palette[c] / 255.0, names[c] if c < len(names) else f"class {c}") for c in valid]
    if len(valid) < len(present):  # some label is ignore/out of palette: one grey entry, last
        entries.append((IGNORE_GREY, "ignored / unlabelled"))
    uniq = [Line2D([], [], marker="o", linestyle="", markersize=7, markerfacecolor=colour,
                   markeredgecolor="none", label=label) for colour, label in entries]
    if uniq:
        # Hung below the views (the tight bounding box grows to hold it), so that a long legend
        # (dozens of ScanNet200 classes) never covers the points.
        many = len(uniq) > 28
        fig.legend(handles=uniq, loc="upper center", bbox_to_anchor=(0.5, 0.1), ncol=min(len(uniq), 10 if many
                   else 7), fontsize=7 if many else 8, frameon=False)
    if title:
        fig.suptitle(title, y=0.99)
    return _save_png(fig, path, dpi)


def plot_render_comparison(result: dict, path: str | Path, title: str | None = None, dpi: int = 110) -> Path:
    """Real frame beside the rendering: colour on top, z-depth below (same colour scale), plus the
    absolute depth error. ``result`` is ``methods.ponderv2.render_view``'s output."""
    real_z, z = result["depth_real"], result["depth"]
    valid = real_z > 0
    vmax = float(np.percentile(real_z[valid], 99)) if valid.any() else 1.0
    err = np.where(valid, np.abs(z - real_z), np.nan)
    fig = _new_figure((11.0, 5.6))
    panels = [(result["rgb_real"], "real colour", None), (np.clip(result["rgb"], 0, 1), "rendered colour", None),
              (None, "", None),
              (np.where(valid, real_z, np.nan), "real depth (m)", ("viridis", 0.0, vmax)),
              (z, "rendered depth (m)", ("viridis", 0.0, vmax)),
              (err, f"|depth error| (median {result['depth_abs_err_median']:.3f} m)", ("magma", 0.0, 0.25 * vmax))]
    for i, (img, name, cmap) in enumerate(panels):
        if img is None:
            continue
        ax = fig.add_subplot(2, 3, i + 1)
        if cmap is None:
            ax.imshow(img, interpolation="nearest")
        else:
            im = ax.imshow(img, cmap=cmap[0], vmin=cmap[1], vmax=cmap[2], interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_png(fig, path, dpi)


def plot_message(path: str | Path, message: str, dpi: int = 100) -> Path:
    """A PNG that only says ``message`` (e.g. why a figure was skipped), so reports never show a hole."""
    fig = _new_figure((7.0, 1.6))
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, wrap=True)
    return _save_png(fig, path, dpi)
