"""Retrieval metrics: recall@k of the right scene, average precision of a ranked list."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["rank_of", "recall_at", "average_precision"]


def rank_of(scores: np.ndarray, correct: int) -> int:
    """1-based rank of entry ``correct`` when ``scores`` are sorted high to low; ties count against it
    (a scene tied with the right one is ranked ahead of it, so a constant score never looks good)."""
    s = np.asarray(scores, np.float64)
    return int((s >= s[int(correct)]).sum())


def recall_at(ranks: Sequence[int], k: int) -> float:
    """Fraction of queries whose right answer is within the top ``k``."""
    r = np.asarray(ranks)
    return float((r <= k).mean()) if len(r) else float("nan")


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Non-interpolated average precision: the mean, over relevant items, of the precision of the list cut
    at that item, the list sorted by descending ``scores``. Ties are broken pessimistically (irrelevant
    first). NaN when nothing is relevant."""
    s = np.asarray(scores, np.float64)
    rel = np.asarray(relevant, bool)
    if not rel.any():
        return float("nan")
    order = np.lexsort((rel, -s))  # by score, then irrelevant (False) before relevant among ties
    hits = rel[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())
