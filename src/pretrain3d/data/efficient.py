"""The ScanNet data-efficient benchmark's files (Hou et al., CVPR'21), as Pointcept loads them.

- Limited annotations (``la_file``, e.g. ``tasks/points/points20``): a ``torch.save``d dict
  {scene id: indices of the labelled vertices}; every other vertex of that scene is ignored.
  Indices refer to the ``_vh_clean_2`` vertex order, which ingestion keeps.
- Limited reconstructions (``lr_file``, e.g. ``tasks/scenes/1.txt`` / ``scannetv2_train_1.txt``):
  a text file of training scene ids, one per line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretrain3d.data.labels import IGNORE_INDEX
from pretrain3d.errors import DataError


def _numpy_safe_globals() -> list:
    """What ``torch.load(weights_only=True)`` must accept to rebuild numpy index arrays: the
    array rebuild function (``numpy.core`` in files written under numpy 1, ``numpy._core`` under
    numpy 2), ndarray, dtypes, and ``bytes`` (an empty array's buffer)."""
    core = getattr(np, "_core", None) or np.core
    rebuild = core.multiarray._reconstruct
    allowed = [rebuild, (rebuild, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, bytes]
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        allowed.append(type(np.dtype(t)))
    return allowed


def read_la_file(path: str | Path) -> dict[str, np.ndarray]:
    """{scene id: sorted unique int64 vertex indices} from a limited-annotation file.

    Loaded with ``torch.load(weights_only=True)``: plain containers, tensors and numpy integer
    arrays only, so a crafted file cannot run code.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "limited-annotation file not found",
                        "the benchmark's tasks/points/points{20,50,100,200} (data.scannet.la_file)")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (not a torch file), EOFError, ...
        raise DataError(path, f"cannot read as a torch-saved dict of index arrays ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from e
    if not isinstance(obj, dict) or not obj:
        raise DataError(path, f"expected a non-empty dict scene id -> indices, got {type(obj).__name__}")
    out = {}
    for scene_id, idx in obj.items():
        arr = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise DataError(path, f"scene {scene_id!r}: indices must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and arr.min() < 0:
            raise DataError(path, f"scene {scene_id!r}: negative point index {int(arr.min())}")
        out[str(scene_id)] = np.unique(arr)
    return out


def read_lr_file(path: str | Path) -> list[str]:
    """Scene ids (in file order, without duplicates) of a limited-reconstruction list."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "limited-reconstruction scene list not found",
                        "the benchmark's tasks/scenes/{1,5,10,20}.txt (data.scannet.lr_file)")
    ids = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    ids = list(dict.fromkeys(i for i in ids if i and not i.startswith("#")))
    if not ids:
        raise DataError(path, "scene list is empty")
    return ids


def keep_labelled_points(segment: np.ndarray, indices: np.ndarray, scene_id: str,
                         source: str | Path) -> np.ndarray:
    """A copy of ``segment`` in which only ``indices`` keep their label (the rest -1)."""
    if indices.size and indices.max() >= len(segment):
        raise DataError(source, f"scene {scene_id!r}: point index {int(indices.max())} but the scene has "
                                f"{len(segment)} points", "the file must match the _vh_clean_2 vertices (not "
                                "a resampled cloud)")
    out = np.full_like(segment, IGNORE_INDEX)
    out[indices] = segment[indices]
    return out


def select_scenes(scene_ids: list[str], wanted: list[str], source: str | Path) -> list[str]:
    """``wanted`` ∩ training scenes; every wanted scene must be a training scene."""
    have = set(scene_ids)
    missing = [s for s in wanted if s not in have]
    if missing:
        raise DataError(source, f"{len(missing)} listed scenes are not training scenes, e.g. {missing[:5]}",
                        "check the file and data.processed_root/train")
    return [s for s in scene_ids if s in set(wanted)]
