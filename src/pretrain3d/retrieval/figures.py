"""One PNG per query type: the query, then the repository's top-3 answers (a top-down view of each scene's
coloured points, its score, a green frame when it is a right answer, red when not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["scene_thumbnail", "query_figure"]


def scene_thumbnail(ax, scene, max_points: int = 40000, ceiling: float = 0.25) -> None:
    """Top-down scatter of ``scene``'s points in their colours, without the top ``ceiling`` metres (which
    would hide the room), every k-th point (deterministic)."""
    xyz, rgb = np.asarray(scene.coord), np.asarray(scene.color)
    keep = xyz[:, 2] < xyz[:, 2].max() - ceiling
    xyz, rgb = xyz[keep], rgb[keep]
    step = max(1, len(xyz) // max_points)
    xyz, rgb = xyz[::step], rgb[::step]
    order = np.argsort(xyz[:, 2], kind="stable")  # higher points drawn last (tables over floors)
    ax.scatter(xyz[order, 0], xyz[order, 1], c=rgb[order] / 255.0, s=2.0, marker=".", linewidths=0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, colour: str) -> None:
    for side in ax.spines.values():
        side.set_edgecolor(colour)
        side.set_linewidth(3)


def query_figure(example: dict, scenes: dict, query_panel, title: str, out_path: str | Path) -> Path:
    """``example``: ``{"top": [(scene_id, score), ...], "right": [scene ids]}`` (retrieval.benchmark);
    ``scenes``: scene id -> processed scene; ``query_panel(ax)`` draws the query."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain3d.atomic import atomic_path

    top = example["top"][:3]
    fig, axes = plt.subplots(1, 1 + len(top), figsize=(3.2 * (1 + len(top)), 3.4))
    query_panel(axes[0])
    axes[0].set_title("query", fontsize=9)
    for ax, (sid, score) in zip(axes[1:], top):
        scene_thumbnail(ax, scenes[sid])
        ok = sid in example["right"]
        _frame(ax, "tab:green" if ok else "tab:red")
        ax.set_title(f"{sid}\nscore {score:.3f}{' (right)' if ok else ''}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out_path
