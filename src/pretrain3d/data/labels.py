"""ScanNet-20 benchmark classes and the NYU40 -> ScanNet-20 mapping; the label spaces of the
embedded generator's domains.

ScanNet annotates with NYU40 ids (1..40, 0 = unannotated); the semantic-segmentation
benchmark keeps 20 of them. ``nyu40_to_scannet20`` maps every other id to ``IGNORE_INDEX``.

The procedural generator (``data.synthetic``, setting ``data.synthetic.domain``) labels each domain
in the label space of the dataset it imitates; ``label_space(domain)`` is the one table of them:
the class names in label order, what the raw label files hold (``raw_set``) and which raw id is
class i. ScanNet-like and Structured3D-like scenes carry NYU40 ids, as the real datasets do
(Pointcept's Structured3D preprocessing keeps 25 NYU40 ids); S3DIS-like scenes carry the S3DIS
class index + 1 (S3DIS has no NYU40 ids; 0 = unannotated, as with NYU40).

This module imports no other project module at load time (``scannet200``'s table, which imports
nothing itself, only on demand), so that every reader and writer of labels (``s3dis``, ``scene``,
the generator) can import it without an import cycle: that is why S3DIS's class list lives here
rather than in ``s3dis``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

IGNORE_INDEX = -1

SCANNET20_NAMES: tuple[str, ...] = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "desk",
    "curtain",
    "refrigerator",
    "shower curtain",
    "toilet",
    "sink",
    "bathtub",
    "otherfurniture",
)

SCANNET20_NYU40_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39,
)

NUM_CLASSES = len(SCANNET20_NAMES)

# Lookup table indexed by NYU40 id (0..40).
_NYU40_TO_20 = np.full(41, IGNORE_INDEX, dtype=np.int64)
for _i, _nyu in enumerate(SCANNET20_NYU40_IDS):
    _NYU40_TO_20[_nyu] = _i

# Distinct colours for renders (our own choice, roughly grouped: structure greys/browns,
# seating warm, storage cool, bathroom cyan/teal). Row i is class i.
SCANNET20_PALETTE = np.array(
    [
        [190, 190, 180],  # wall
        [140, 110, 80],  # floor
        [40, 110, 200],  # cabinet
        [230, 160, 50],  # bed
        [220, 40, 40],  # chair
        [170, 60, 170],  # sofa
        [250, 220, 40],  # table
        [120, 200, 60],  # door
        [100, 220, 230],  # window
        [20, 60, 140],  # bookshelf
        [250, 120, 160],  # picture
        [130, 80, 30],  # counter
        [200, 120, 40],  # desk
        [90, 160, 120],  # curtain
        [60, 60, 220],  # refrigerator
        [150, 230, 180],  # shower curtain
        [240, 240, 240],  # toilet
        [30, 170, 170],  # sink
        [110, 130, 240],  # bathtub
        [80, 80, 80],  # otherfurniture
    ],
    dtype=np.uint8,
)
IGNORE_COLOR = np.array([0, 0, 0], dtype=np.uint8)


def nyu40_to_scannet20(labels) -> np.ndarray:
    """Map NYU40 ids (any int array) to ScanNet-20 indices 0..19; everything else -> -1."""
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iub":
        if lab.dtype.kind == "f" and np.all(np.isfinite(lab)) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise TypeError(f"NYU40 labels must be integers, got dtype {lab.dtype}")
    lab = lab.astype(np.int64, copy=False)
    out = np.full(lab.shape, IGNORE_INDEX, dtype=np.int64)
    ok = (lab >= 0) & (lab <= 40)
    out[ok] = _NYU40_TO_20[lab[ok]]
    return out


def colorize(segment20) -> np.ndarray:
    """RGB uint8 colours for ScanNet-20 indices (ignore -> black)."""
    seg = np.asarray(segment20, dtype=np.int64)
    out = np.empty(seg.shape + (3,), dtype=np.uint8)
    out[...] = IGNORE_COLOR
    ok = (seg >= 0) & (seg < NUM_CLASSES)
    out[ok] = SCANNET20_PALETTE[seg[ok]]
    return out


# ----------------------------------------------------------------------------- Structured3D
# Pointcept's Structured3D list (NYU40 names; "shelves", not "bookshelf"; ceiling, lamp, otherprop kept).
STRUCTURED3D_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "picture",
    "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "ceiling", "refrigerator",
    "television", "nightstand", "sink", "lamp", "otherstructure", "otherfurniture", "otherprop",
)
STRUCTURED3D_NYU40_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 14, 15, 16, 17, 18, 19, 22, 24, 25, 32, 34, 35, 38, 39, 40,
)


# ----------------------------------------------------------------------------- S3DIS
# The 13 classes of Stanford3dDataset_v1.2, in label order (the S3DIS-like domain's raw id is index + 1).
S3DIS_NAMES: tuple[str, ...] = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door",
    "table", "chair", "sofa", "bookcase", "board", "clutter",
)


# ----------------------------------------------------------------------------- generator domains
SYNTHETIC_DOMAINS: tuple[str, ...] = ("scannet", "s3dis", "structured3d")
SYNTHETIC_DATASETS = ("synthetic", "scannet_like")  # the datasets whose scenes the generator makes


@dataclass(frozen=True)
class LabelSpace:
    """A domain's classes (``names``, in label order) and how its raw label files encode them:
    ``raw_set`` names the id set (``nyu40``: 0..40; ``s3dis``: 0..13 = S3DIS index + 1), and
    ``raw_ids[i]`` is the raw id of class i. Raw 0 and every id not listed map to ``IGNORE_INDEX``."""

    domain: str
    name: str
    names: tuple[str, ...]
    raw_set: str
    raw_ids: tuple[int, ...]
    raw_max: int

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_segment(self, raw) -> np.ndarray:
        """Raw label ids (any int array) -> class indices 0..K-1 of this space, else -1."""
        lab = np.asarray(raw)
        if lab.dtype.kind not in "iub":
            raise TypeError(f"raw labels must be integers, got dtype {lab.dtype}")
        lab = lab.astype(np.int64, copy=False)
        lut = np.full(self.raw_max + 1, IGNORE_INDEX, dtype=np.int64)
        lut[list(self.raw_ids)] = np.arange(self.num_classes)
        out = np.full(lab.shape, IGNORE_INDEX, dtype=np.int64)
        ok = (lab >= 0) & (lab <= self.raw_max)
        out[ok] = lut[lab[ok]]
        return out


@lru_cache(maxsize=None)
def label_space(domain: str) -> LabelSpace:
    """The label space of generator domain ``domain`` (one of ``SYNTHETIC_DOMAINS``)."""
    if domain == "scannet":
        return LabelSpace("scannet", "scannet20", SCANNET20_NAMES, "nyu40", SCANNET20_NYU40_IDS, 40)
    if domain == "s3dis":
        return LabelSpace("s3dis", "s3dis13", tuple(S3DIS_NAMES), "s3dis",
                          tuple(range(1, len(S3DIS_NAMES) + 1)), len(S3DIS_NAMES))
    if domain == "structured3d":
        return LabelSpace("structured3d", "structured3d25", STRUCTURED3D_NAMES, "nyu40", STRUCTURED3D_NYU40_IDS, 40)
    raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {', '.join(SYNTHETIC_DOMAINS)}")


# ----------------------------------------------------------------------------- per-dataset label sets
SCANNET200_DATASETS = ("scannet", "scannet_npy")  # the datasets whose 200-class labels are ScanNet200's


def _is_scannet20(dataset: str, num_classes: int) -> bool:
    # synthetic, scannet_like, scannet and scannet_npy all label with ScanNet-20 indices
    return num_classes == NUM_CLASSES and dataset != "s3dis"


def dataset_class_names(dataset: str, num_classes: int, domain: str | None = None) -> list[str]:
    """Names of a dataset's classes, in label order: S3DIS's 13, ScanNet200's 200 (datasets scannet /
    scannet_npy), ScanNet-20's 20 (every other dataset with 20 classes), else ``class<i>``.

    The generated datasets (``synthetic``, ``scannet_like``) take the names of their generator
    domain's label space: ``domain`` when given (its class count must be ``num_classes``), else the
    domain with ``num_classes`` classes (13 S3DIS-like, 20 ScanNet-like, 25 Structured3D-like: the
    config validation ties data.synthetic.domain to data.num_classes, so the count is unambiguous).
    """
    if domain is not None:
        space = label_space(domain)
        if space.num_classes != num_classes:
            raise ValueError(f"domain {domain!r} labels {space.num_classes} classes ({space.name}), "
                             f"not num_classes={num_classes}")
        if dataset in SYNTHETIC_DATASETS:
            return list(space.names)
    if dataset in SYNTHETIC_DATASETS:
        for d in SYNTHETIC_DOMAINS:
            if label_space(d).num_classes == num_classes:
                return list(label_space(d).names)
    if dataset == "s3dis" and num_classes == 13:
        return list(S3DIS_NAMES)
    if dataset in SCANNET200_DATASETS and num_classes == 200:
        from pretrain3d.data.scannet200 import SCANNET200_NAMES

        return list(SCANNET200_NAMES)
    if _is_scannet20(dataset, num_classes):
        return list(SCANNET20_NAMES)
    return [f"class{i}" for i in range(num_classes)]


def _colour_grid(levels: int) -> np.ndarray:
    g = np.linspace(0.0, 255.0, levels).round()
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    # no greys, black or white: renders draw ignored points grey on a white page
    return grid[np.ptp(grid, axis=1) >= 64]


def distinct_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, deterministic and far apart, for any number of classes.

    Greedy farthest-point selection (RGB distance) over a grid of saturated colours, starting at
    red: each colour is the candidate farthest from those already chosen, so a smaller K's palette
    is a prefix of a larger one's and 200 classes still differ by at least one grid step.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    levels = 8
    while len(grid := _colour_grid(levels)) < num_classes:
        levels += 4
    chosen = [int(np.argmin(np.abs(grid - [255.0, 0.0, 0.0]).sum(axis=1)))]
    nearest = np.linalg.norm(grid - grid[chosen[0]], axis=1)
    for _ in range(1, num_classes):
        chosen.append(int(np.argmax(nearest)))  # first maximum: ties break by grid order
        nearest = np.minimum(nearest, np.linalg.norm(grid - grid[chosen[-1]], axis=1))
    return grid[chosen[:num_classes]].astype(np.uint8).reshape(-1, 3)


def dataset_palette(dataset: str, num_classes: int) -> np.ndarray:
    """Render colours of a dataset's classes: SCANNET20_PALETTE for the ScanNet-20 label set,
    ``distinct_palette(num_classes)`` for any other (S3DIS's 13, ScanNet200's 200, ...)."""
    if _is_scannet20(dataset, num_classes):
        return SCANNET20_PALETTE.copy()
    return distinct_palette(num_classes)
