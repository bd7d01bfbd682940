"""The ScanNet semantic-label benchmark format and its official scoring rules.

Format: one ``<scene>.txt`` per scene, one NYU40 id per line, one line per mesh vertex, for
both ground truth and predictions (what the ScanNet test server takes).

Scoring, as ScanNet's ``BenchmarkScripts/3d_evaluation/evaluate_semantic_label.py`` does it
(HEAD e2bf12b):

* Only the 20 benchmark ids (``VALID_CLASS_IDS``) count. A vertex whose ground truth is any
  other id (0 = unannotated, 13, 15, ..., 40, negative, ...) is skipped entirely.
* A prediction outside the 20 ids goes to an extra "unknown" column: it is a false negative
  of the vertex's true class and a false positive of no class.
* ``IoU_c = tp / (tp + fp + fn)`` with ``tp = cm[c, c]``, ``fn = row c minus tp`` (the unknown
  column included) and ``fp = column c over the other valid rows``.
* ``tp + fp + fn == 0`` (no ground truth and no prediction of the class) gives NaN there; the
  official script then crashes while printing. We report the class as undefined (``None``).
  A class with no ground truth but some predictions has IoU 0.
* The 3D script prints per-class IoUs only, no mean. We average like the benchmark's 2D
  sibling (``evalPixelLevelSemanticLabeling.getScoreAverage``): the mean over the classes whose
  IoU is defined. With ground truth for all 20 classes (ScanNet val and test) that is the plain
  mean over the 20.

This module is separate from :mod:`pretrain3d.evaluation.metrics` on purpose: those are our
training-time metrics over 0..K-1 indices; this one reproduces the official semantics on NYU40 ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from pretrain3d.atomic import atomic_dir, atomic_path
from pretrain3d.data.labels import SCANNET20_NAMES, SCANNET20_NYU40_IDS
from pretrain3d.errors import DataError

VALID_CLASS_IDS: tuple[int, ...] = SCANNET20_NYU40_IDS
CLASS_NAMES: tuple[str, ...] = SCANNET20_NAMES
NUM_CLASSES = len(VALID_CLASS_IDS)
UNKNOWN_COLUMN = NUM_CLASSES  # the confusion's extra column: predictions outside VALID_CLASS_IDS
UNANNOTATED_ID = 0  # what ScanNet writes for unannotated vertices; the evaluation ignores it
RESULT_FILE = "semantic_label_evaluation.txt"  # the official script's own output, never a scene

# NYU40 id -> row/column 0..19; any id the table does not list becomes -1 (not valid).
_MAX_ID = max(VALID_CLASS_IDS)
_ID_TO_INDEX = np.full(_MAX_ID + 1, -1, dtype=np.int64)
_ID_TO_INDEX[list(VALID_CLASS_IDS)] = np.arange(NUM_CLASSES)
_INDEX_TO_ID = np.asarray(VALID_CLASS_IDS, dtype=np.int64)


# ----------------------------------------------------------------------------- file format
def read_ids(path: str | Path) -> np.ndarray:
    """One integer per line → (N,) int64. Leading/trailing blanks are accepted (as the official
    parser accepts them); anything else, an empty line included, is a DataError with its line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"not a text file ({e.reason} at byte {e.start})",
                        "expected one integer NYU40 id per line") from None
    lines = text.splitlines()
    try:
        return np.array(lines, dtype=np.int64).reshape(-1)
    except (ValueError, OverflowError):
        pass
    # Slow path only to name the first bad line.
    for lineno, line in enumerate(lines, start=1):
        try:
            v = int(line)
            if not -(2**63) <= v < 2**63:
                raise OverflowError
        except (ValueError, OverflowError):
            raise DataError(path, f"line {lineno}: {line[:40]!r} is not an integer label id",
                            "expected one integer NYU40 id per line") from None
    raise DataError(path, "cannot parse as one integer per line")  # unreachable in practice


def write_ids(path: str | Path, ids) -> None:
    """Write one id per line (atomically)."""
    arr = np.asarray(ids).reshape(-1)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"label ids must be integers, got dtype {arr.dtype}")
    body = "\n".join(map(str, arr.tolist()))
    with atomic_path(path) as tmp:
        tmp.write_text(body + "\n" if len(arr) else "")


def segment20_to_nyu40(segment, ignore_index: int = -1) -> np.ndarray:
    """ScanNet-20 indices (0..19) → NYU40 ids; ``ignore_index`` → 0 (unannotated).

    For ground truth. Anything else is a ValueError: a silent mapping would change the score."""
    seg = np.asarray(segment).reshape(-1)
    if seg.dtype.kind not in "iu":
        raise ValueError(f"segment must be integers, got dtype {seg.dtype}")
    seg = seg.astype(np.int64, copy=False)
    bad = (seg != ignore_index) & ((seg < 0) | (seg >= NUM_CLASSES))
    if bad.any():
        raise ValueError(f"segment values outside [0, {NUM_CLASSES}) and not {ignore_index}: "
                         f"{np.unique(seg[bad])[:10].tolist()}")
    out = np.full(seg.shape, UNANNOTATED_ID, dtype=np.int64)
    keep = seg != ignore_index
    out[keep] = _INDEX_TO_ID[seg[keep]]
    return out


def prediction_to_nyu40(pred) -> np.ndarray:
    """Predicted ScanNet-20 indices (each in 0..19, no ignore) → NYU40 ids for a submission."""
    p = np.asarray(pred).reshape(-1)
    if p.dtype.kind not in "iu":
        raise ValueError(f"predictions must be integers, got dtype {p.dtype}")
    if len(p) and (p.min() < 0 or p.max() >= NUM_CLASSES):
        raise ValueError(f"predicted class indices must lie in [0, {NUM_CLASSES}); got [{p.min()}, {p.max()}]")
    return _INDEX_TO_ID[p.astype(np.int64, copy=False)]


def write_scene_dir(directory: str | Path, ids_by_scene: Mapping[str, np.ndarray]) -> Path:
    """Write ``<scene>.txt`` for every scene into ``directory``, atomically as a whole.

    The folder is replaced, so a submission never mixes scenes of two exports; to keep a
    mistyped path (``.``, a home folder) from being wiped, an existing folder may hold only
    ``*.txt`` files."""
    d = Path(directory)
    if d.exists():
        if not d.is_dir():
            raise DataError(d, "exists and is not a directory")
        other = [p.name for p in d.iterdir() if not (p.is_file() and p.suffix == ".txt")]
        if other:
            raise DataError(d, f"exists and holds more than <scene>.txt files ({', '.join(sorted(other)[:3])}); "
                            "refusing to replace it", "choose an empty or new folder")
    with atomic_dir(d) as tmp:
        for scene, ids in ids_by_scene.items():
            if not scene or "/" in scene or scene.startswith("."):
                raise ValueError(f"bad scene name {scene!r}")
            write_ids(tmp / f"{scene}.txt", ids)
    return d


def scene_files(directory: str | Path) -> dict[str, Path]:
    """``{scene: path}`` for every ``<scene>.txt`` in ``directory`` (the official result file excluded)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(d, "directory not found")
    return {p.stem: p for p in sorted(d.glob("*.txt")) if p.is_file() and p.name != RESULT_FILE}


# ----------------------------------------------------------------------------- scoring
def _to_index(ids: np.ndarray) -> np.ndarray:
    """NYU40 id → 0..19, or -1 for any id outside the benchmark set (including <0 and >40)."""
    out = np.full(ids.shape, -1, dtype=np.int64)
    ok = (ids >= 0) & (ids <= _MAX_ID)
    out[ok] = _ID_TO_INDEX[ids[ok]]
    return out


def scene_confusion(gt_ids, pred_ids) -> np.ndarray:
    """(20, 21) int64: rows = valid ground-truth class, columns = predicted valid class, plus the
    last column for predictions outside the benchmark set. Lengths must match (ValueError)."""
    gt = np.asarray(gt_ids, dtype=np.int64).reshape(-1)
    pred = np.asarray(pred_ids, dtype=np.int64).reshape(-1)
    if gt.shape != pred.shape:
        raise ValueError(f"{len(pred)} predicted values for {len(gt)} vertices")
    g = _to_index(gt)
    keep = g >= 0  # ground truth outside the 20 ids is ignored, whatever was predicted there
    g = g[keep]
    p = _to_index(pred[keep])
    p[p < 0] = UNKNOWN_COLUMN
    cols = NUM_CLASSES + 1
    return np.bincount(g * cols + p, minlength=NUM_CLASSES * cols).reshape(NUM_CLASSES, cols).astype(np.int64)


@dataclass
class BenchmarkResult:
    confusion: np.ndarray  # (20, 21) int64, summed over scenes
    num_scenes: int
    num_vertices: int  # all vertices read (ignored ones included)

    def per_class(self) -> list[dict]:
        cm = self.confusion
        rows = []
        for c in range(NUM_CLASSES):
            tp = int(cm[c, c])
            fn = int(cm[c].sum()) - tp  # includes the unknown column
            fp = int(cm[:, c].sum()) - tp  # rows are valid ground truth only
            denom = tp + fp + fn
            rows.append({"class": CLASS_NAMES[c], "nyu40_id": int(VALID_CLASS_IDS[c]), "tp": tp, "fp": fp, "fn": fn,
                         "iou": tp / denom if denom > 0 else None})
        return rows

    def to_dict(self) -> dict:
        rows = self.per_class()
        defined = [r["iou"] for r in rows if r["iou"] is not None]
        return {
            "format": "scannet",
            "mIoU": float(np.mean(defined)) if defined else None,
            "num_classes_averaged": len(defined),
            "iou_per_class": {r["class"]: r["iou"] for r in rows},
            "undefined_classes": [r["class"] for r in rows if r["iou"] is None],
            "per_class": rows,
            "num_scenes": self.num_scenes,
            "num_vertices": self.num_vertices,
            "num_evaluated_vertices": int(self.confusion.sum()),
            "num_unknown_predictions": int(self.confusion[:, UNKNOWN_COLUMN].sum()),
            "confusion": self.confusion.tolist(),
            "confusion_rows": "gt class (VALID_CLASS_IDS order)",
            "confusion_columns": "predicted class (VALID_CLASS_IDS order), then predictions outside the set",
        }


def evaluate_arrays(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> BenchmarkResult:
    """Score ``(gt_ids, pred_ids)`` pairs of NYU40 ids (one pair per scene)."""
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64)
    n_scenes = n_vertices = 0
    for gt, pred in pairs:
        cm += scene_confusion(gt, pred)
        n_scenes += 1
        n_vertices += len(np.asarray(gt).reshape(-1))
    return BenchmarkResult(cm, n_scenes, n_vertices)


def evaluate_dirs(gt_dir: str | Path, pred_dir: str | Path) -> BenchmarkResult:
    """Score every ``<scene>.txt`` of ``gt_dir`` against ``pred_dir/<scene>.txt``.

    Both sets of scenes must be equal: a ground-truth scene without a prediction and a
    prediction without ground truth are both errors (the official script rejects the latter)."""
    gt_files = scene_files(gt_dir)
    pred_files = scene_files(pred_dir)
    if not gt_files:
        raise DataError(gt_dir, "no <scene>.txt ground-truth files",
                        "export them with `pretrain3d export-benchmark --gt-dir`")
    missing = sorted(set(gt_files) - set(pred_files))
    if missing:
        raise DataError(Path(pred_dir) / f"{missing[0]}.txt",
                        f"no prediction for ground-truth scene {missing[0]!r}"
                        + (f" (and {len(missing) - 1} more scene(s) missing)" if len(missing) > 1 else ""),
                        "every scene of --gt-dir needs a prediction file")
    extra = sorted(set(pred_files) - set(gt_files))
    if extra:
        raise DataError(pred_files[extra[0]], f"prediction for {extra[0]!r} matches no ground-truth file in {gt_dir}"
                        + (f" ({len(extra)} such files)" if len(extra) > 1 else ""))

    def pairs():
        for scene, gt_path in gt_files.items():
            gt = read_ids(gt_path)
            pred = read_ids(pred_files[scene])
            if len(gt) != len(pred):
                raise DataError(pred_files[scene], f"{len(pred)} predicted values but {gt_path} has {len(gt)} "
                                "vertices", "write one id per mesh vertex, in vertex order")
            yield gt, pred

    return evaluate_arrays(pairs())


def format_table(result: Mapping) -> str:
    """The per-class table (4 decimals, where the official script prints 3) and the mean."""
    lines = ["classes                IoU      (tp/denominator)", "-" * 48]
    for r in result["per_class"]:
        iou = r["iou"]
        shown = "   nan" if iou is None else f"{iou:.4f}"
        lines.append(f"{r['class']:<14s}({r['nyu40_id']:<2d}): {shown}   "
                     f"({r['tp']:>9d}/{r['tp'] + r['fp'] + r['fn']:<9d})")
    lines.append("-" * 48)
    miou = result["mIoU"]
    lines.append(f"mIoU: {'nan' if miou is None or math.isnan(miou) else f'{miou:.4f}'} "
                 f"over {result['num_classes_averaged']} classes, {result['num_scenes']} scenes, "
                 f"{result['num_evaluated_vertices']} evaluated vertices")
    return "\n".join(lines)
