"""Semantic-segmentation metrics from a confusion matrix.

Conventions
-----------
* ``cm[i, j]`` counts points whose ground truth is class ``i`` and whose prediction is ``j``
  (rows = ground truth, columns = prediction).
* Points whose target equals ``ignore_index`` are dropped before counting. Targets outside
  ``[0, K)`` that are not ``ignore_index`` are an error, and so are predictions outside ``[0, K)``
  (for every non-ignored point): both raise ``ValueError`` naming the offending values.
* ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``.

  - A class with no ground truth *and* no prediction anywhere has an undefined IoU: it is
    reported as ``None`` in ``iou_per_class``, listed in ``absent_classes`` and left out of mIoU.
  - A class with no ground truth but some (false-positive) predictions has IoU 0 and counts
    towards mIoU.

  This differs from Pointcept's evaluator, which averages ``I/(U+1e-10)`` over all K classes
  (so an absent class counts as 0 there).
* ``Acc_c = TP_c / (TP_c + FN_c)`` (recall). ``mAcc`` averages it over classes that have ground
  truth; classes without ground truth report ``None`` in ``acc_per_class``.
* ``allAcc = trace(cm) / sum(cm)`` over non-ignored points.

All reported values are plain Python floats in [0, 1] (``None`` where undefined, and the means
are ``None`` if no class qualifies, e.g. an empty confusion matrix).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["confusion_matrix", "metrics_from_confusion", "ConfusionAccumulator"]


def _to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, torch tensors (any device) and sequences; return a flat int64 array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("labels must be integers; got non-integer floating-point values")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers; got dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64, copy=False)


def _bad_values(values: np.ndarray, limit: int = 10) -> str:
    uniq = np.unique(values)
    shown = ", ".join(str(int(v)) for v in uniq[:limit])
    more = f", ... ({len(uniq)} distinct)" if len(uniq) > limit else ""
    return f"[{shown}{more}]"


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """Return the ``(K, K)`` int64 confusion matrix (rows = ground truth, columns = prediction).

    Points with ``target == ignore_index`` are excluded. Raises ``ValueError`` if ``pred`` and
    ``target`` differ in length, if a kept prediction lies outside ``[0, K)``, or if a target is
    neither ``ignore_index`` nor in ``[0, K)``.
    """
    k = int(num_classes)
    if k <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    p = _to_numpy(pred)
    t = _to_numpy(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same number of points: {p.size} vs {t.size}")
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    bad_t = (t < 0) | (t >= k)
    if bad_t.any():
        raise ValueError(
            f"target values outside [0, {k}) that are not ignore_index={ignore_index}: {_bad_values(t[bad_t])}"
        )
    bad_p = (p < 0) | (p >= k)
    if bad_p.any():
        raise ValueError(f"prediction values outside [0, {k}): {_bad_values(p[bad_p])}")
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    return cm.astype(np.int64, copy=False)


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def metrics_from_confusion(cm: Any, class_names: Sequence[str]) -> dict:
    """Compute mIoU, mAcc, allAcc and per-class IoU/accuracy from a confusion matrix.

    See the module docstring for the exact semantics. Returns::

        {"mIoU": float|None, "mAcc": float|None, "allAcc": float|None,
         "iou_per_class": {name: float|None}, "acc_per_class": {name: float|None},
         "absent_classes": [name, ...]}
    """
    cm = np.asarray(cm.detach().cpu().numpy() if hasattr(cm, "detach") else cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K); got shape {cm.shape}")
    names = list(class_names)
    if len(names) != cm.shape[0]:
        raise ValueError(f"{len(names)} class names for a {cm.shape[0]}-class confusion matrix")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    if (cm < 0).any():
        raise ValueError("confusion matrix has negative counts")
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)  # TP + FN
    predicted = cm.sum(axis=0)  # TP + FP
    union = gt + predicted - tp

    iou_per_class: dict[str, float | None] = {}
    acc_per_class: dict[str, float | None] = {}
    absent: list[str] = []
    ious: list[float] = []
    accs: list[float] = []
    for c, name in enumerate(names):
        if union[c] > 0:
            iou = float(tp[c] / union[c])
            iou_per_class[name] = iou
            ious.append(iou)
        else:
            iou_per_class[name] = None
            absent.append(name)
        if gt[c] > 0:
            acc = float(tp[c] / gt[c])
            acc_per_class[name] = acc
            accs.append(acc)
        else:
            acc_per_class[name] = None
    total = cm.sum()
    return {
        "mIoU": _mean_or_none(ious),
        "mAcc": _mean_or_none(accs),
        "allAcc": float(tp.sum() / total) if total > 0 else None,
        "iou_per_class": iou_per_class,
        "acc_per_class": acc_per_class,
        "absent_classes": absent,
    }


class ConfusionAccumulator:
    """Sum confusion matrices over batches/scenes: ``update(pred, target)`` then ``compute()``.

    ``compute(class_names=None)`` returns the accumulated (K, K) int64 matrix, or, if class names
    are given, the metrics dict of :func:`metrics_from_confusion`.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> np.ndarray:
        """Add one batch; returns that batch's own confusion matrix."""
        batch_cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.cm += batch_cm
        return batch_cm

    def reset(self) -> None:
        self.cm[...] = 0

    def compute(self, class_names: Sequence[str] | None = None):
        if class_names is None:
            return self.cm.copy()
        return metrics_from_confusion(self.cm, class_names)
