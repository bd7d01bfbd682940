"""The processed-scene contract: write, load and validate one scene folder.

A scene folder (Pointcept-compatible)::

    coord.npy   (N,3) float32 metres
    color.npy   (N,3) uint8 0-255
    normal.npy  (N,3) float32
    segment.npy (N,)  int64, -1 = ignore      (Pointcept's segment20.npy / segment200.npy accepted)
    instance.npy (N,) int64                   optional
    frames.json + frames/color/*, frames/depth/*   optional (see pretrain3d.data.frames)
    meta.json                                 optional: ingestion record (source, axis alignment, skips)

A scene may carry several label sets (ScanNet: segment20.npy and segment200.npy); ``segment_file``
names the one held in ``segment`` and ``extra_labels`` the others. Unlabelled scenes (ScanNet's
test split) have no label file at all.

Scenes are written atomically: built in a temporary sibling folder and renamed when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pretrain3d.atomic import atomic_dir
from pretrain3d.data.frames import FRAMES_JSON, Frame, FrameIndex
from pretrain3d.data.labels import IGNORE_INDEX
from pretrain3d.errors import DataError

META_JSON = "meta.json"


@dataclass
class ProcessedScene:
    scene_id: str
    coord: np.ndarray  # (N,3) float32
    color: np.ndarray  # (N,3) uint8
    normal: np.ndarray  # (N,3) float32
    segment: np.ndarray | None  # (N,) int64, -1 = ignore; None: an unlabelled scene
    instance: np.ndarray | None = None  # (N,) int64
    frames: FrameIndex | None = None
    path: Path | None = None
    segment_file: str = "segment.npy"
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)  # file stem -> (N,) labels
    meta: dict | None = None  # written as meta.json

    @property
    def num_points(self) -> int:
        return int(len(self.coord))

    def validate(
        self,
        source: str | Path | None = None,
        num_classes: int | None = None,
        segment_file: str | None = None,
    ) -> "ProcessedScene":
        """Normalise dtypes in place and check shapes, lengths, finiteness and label range.

        Errors name ``<source>/<file>.npy`` (source defaults to ``self.path`` or the scene id).
        """
        base = Path(source) if source is not None else (self.path or Path(self.scene_id))
        self.coord = _check_array(base / "coord.npy", "coord", self.coord, None)
        n = len(self.coord)
        self.color = _check_color(base / "color.npy", self.color, n)
        self.normal = _check_array(base / "normal.npy", "normal", self.normal, n)
        if self.segment is not None:
            self.segment = check_labels(base / (segment_file or self.segment_file), self.segment, n, num_classes)
        for name, labels in self.extra_labels.items():
            self.extra_labels[name] = check_labels(base / f"{name}.npy", labels, n)
        if self.instance is not None:
            self.instance = _check_int(base / "instance.npy", "instance", self.instance, n)
        return self


# ---------------------------------------------------------------------------------- validation


def _check_array(path: Path, name: str, arr, n: int | None) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DataError(path, f"{name} must have shape (N, 3), got {arr.shape}")
    if n is not None and len(arr) != n:
        raise DataError(path, f"{name} has {len(arr)} rows but coord has {n} points")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(path, f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise DataError(path, f"{name} has {int(bad.sum())} non-finite rows (first at row {int(np.flatnonzero(bad)[0])})")
    return arr


def _check_color(path: Path, arr, n: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DataError(path, f"color must have shape (N, 3), got {arr.shape}")
    if len(arr) != n:
        raise DataError(path, f"color has {len(arr)} rows but coord has {n} points")
    if arr.dtype == np.uint8:
        return arr
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(path, f"color must be numeric, got dtype {arr.dtype}")
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255):
        raise DataError(path, f"color values must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
    return np.rint(arr).astype(np.uint8)


def _check_int(path: Path, name: str, arr, n: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(path, f"{name} must have shape (N,), got {arr.shape}")
    if len(arr) != n:
        raise DataError(path, f"{name} has {len(arr)} values but coord has {n} points")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(path, f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_labels(path: str | Path, labels, n: int | None = None, num_classes: int | None = None) -> np.ndarray:
    """Labels as (N,) int64 in [-1, num_classes); DataError naming the bad values otherwise."""
    path = Path(path)
    labels = np.asarray(labels)
    if n is None:
        n = len(labels)
    labels = _check_int(path, "segment", labels, n)
    hi = num_classes if num_classes is not None else None
    bad = labels < IGNORE_INDEX
    if hi is not None:
        bad |= labels >= hi
    if bad.any():
        vals = np.unique(labels[bad])
        shown = ", ".join(str(v) for v in vals[:10]) + (", ..." if len(vals) > 10 else "")
        rng = f"[{IGNORE_INDEX}, {hi})" if hi is not None else f">= {IGNORE_INDEX}"
        raise DataError(
            path,
            f"labels outside the valid range {rng}: values {{{shown}}} at {int(bad.sum())} of {n} points",
            "-1 means ignore; check the label mapping / num_classes",
        )
    return labels


# ------------------------------------------------------------------------------------- normals


def estimate_normals(
    coord: np.ndarray,
    k: int = 16,
    viewpoints: np.ndarray | None = None,
    backend: str = "scipy",
) -> np.ndarray:
    """Unit normals from the k-nearest-neighbour covariance (PCA), (N,3) float32.

    Orientation: each normal is flipped to face ``viewpoints`` ((3,) or (N,3): e.g. the camera
    each point was seen from); without viewpoints, towards the bounding-box centre (indoor rooms
    are seen from inside). ``backend="scipy"`` (default) is a deterministic numpy/scipy
    implementation that needs no optional dependency; ``"open3d"`` uses Open3D's estimator.
    """
    coord = np.asarray(coord, dtype=np.float64)
    n = len(coord)
    if n == 0:
        return np.zeros((0, 3), dtype=np.float32)
    k = max(3, min(k, n))
    if backend == "open3d":
        import open3d as o3d

        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord))
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=k))
        normals = np.asarray(pcd.normals, dtype=np.float64)
    elif backend == "scipy":
        from scipy.spatial import cKDTree

        tree = cKDTree(coord)
        normals = np.empty_like(coord)
        chunk = 65536
        for s in range(0, n, chunk):
            _, idx = tree.query(coord[s:s + chunk], k=k)
            nb = coord[idx]  # (c,k,3)
            nb = nb - nb.mean(axis=1, keepdims=True)
            cov = np.einsum("nki,nkj->nij", nb, nb)
            _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
            normals[s:s + chunk] = vecs[:, :, 0]
    else:
        raise ValueError(f"unknown normal backend {backend!r}")
    if viewpoints is None:
        viewpoints = (coord.min(axis=0) + coord.max(axis=0)) / 2
    to_view = np.asarray(viewpoints, dtype=np.float64) - coord
    flip = np.einsum("ij,ij->i", normals, to_view) < 0
    normals[flip] *= -1
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(norm > 0, normals / np.maximum(norm, 1e-30), 0.0)
    return normals.astype(np.float32)


# --------------------------------------------------------------------------------- write / load


def _copy_frames(index: FrameIndex, src_root: Path | None, dst: Path) -> FrameIndex:
    """Copy colour/depth files into dst/frames/{color,depth}/<id><ext>; return the rewritten index."""
    (dst / "frames" / "color").mkdir(parents=True, exist_ok=True)
    (dst / "frames" / "depth").mkdir(parents=True, exist_ok=True)
    base = FrameIndex(index.frames, index.width, index.height, index.depth_scale,
                      src_root if src_root is not None else index.root)
    new = []
    for i, f in enumerate(index.frames):
        cs, ds = base.color_path(i), base.depth_path(i)
        crel = f"frames/color/{f.id}{cs.suffix.lower() or '.jpg'}"
        drel = f"frames/depth/{f.id}{ds.suffix.lower() or '.png'}"
        for s, rel in ((cs, crel), (ds, drel)):
            if not s.is_file():
                raise DataError(s, f"missing frame file (frame {f.id!r})")
            shutil.copyfile(s, dst / rel)
        new.append(Frame(f.id, crel, drel, np.asarray(f.intrinsics, np.float64), np.asarray(f.pose, np.float64)))
    return FrameIndex(new, index.width, index.height, index.depth_scale, None)


def write_processed_scene(
    out_dir: str | Path,
    scene: ProcessedScene,
    copy_frames_from: str | Path | None = None,
    num_classes: int | None = None,
) -> Path:
    """Validate ``scene`` and write it to the folder ``out_dir`` atomically.

    Frame files are copied into ``out_dir/frames/``; their paths resolve against
    ``copy_frames_from`` (default: ``scene.frames.root``). An existing folder is replaced only
    once the new one is complete; on any error nothing is left behind.
    """
    out_dir = Path(out_dir)
    scene.validate(num_classes=num_classes)
    if scene.frames is not None:
        scene.frames.validate(check_files=False)
    with atomic_dir(out_dir) as tmp:
        if scene.frames is not None:
            new_index = _copy_frames(scene.frames, Path(copy_frames_from) if copy_frames_from else None, tmp)
            new_index.save(tmp / FRAMES_JSON)
        write_scene_files(tmp, scene, frames=False)
    return out_dir


def write_scene_files(folder: str | Path, scene: ProcessedScene, frames: bool = True) -> None:
    """Write the arrays, meta.json and (with ``frames``) frames.json of an already validated
    scene into ``folder`` — for readers that build the folder themselves inside ``atomic_dir``
    (e.g. ScanNet, whose frame images are decoded straight into it). The frame index must hold
    paths relative to ``folder``."""
    from pretrain3d.atomic import write_json

    folder = Path(folder)
    np.save(folder / "coord.npy", scene.coord)
    np.save(folder / "color.npy", scene.color)
    np.save(folder / "normal.npy", scene.normal)
    if scene.segment is not None:
        np.save(folder / scene.segment_file, scene.segment)
    for name, labels in scene.extra_labels.items():
        np.save(folder / f"{name}.npy", labels)
    if scene.instance is not None:
        np.save(folder / "instance.npy", scene.instance)
    if frames and scene.frames is not None:
        scene.frames.validate(source=folder / FRAMES_JSON, check_files=False)
        scene.frames.save(folder / FRAMES_JSON)
    if scene.meta is not None:
        write_json(folder / META_JSON, scene.meta)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(path, "required array file not found") from None
    except (ValueError, EOFError, OSError) as e:
        raise DataError(path, f"truncated or corrupt .npy file ({type(e).__name__}: {e})") from e


def _segment_file(scene_dir: Path, num_classes: int | None, required: bool = True) -> Path | None:
    candidates = ["segment.npy"]
    if num_classes is not None:
        candidates.append(f"segment{num_classes}.npy")
    candidates.append("segment20.npy")
    for c in candidates:
        if (scene_dir / c).is_file():
            return scene_dir / c
    if not required:
        return None
    raise DataError(scene_dir / "segment.npy", "label file not found (looked for "
                    + ", ".join(candidates) + ")",
                    "unlabelled scenes (e.g. a test split) cannot be used for training or evaluation")


def load_processed_scene(
    scene_dir: str | Path,
    num_classes: int | None = None,
    load_frames: bool = True,
    mmap: bool = False,
    allow_unlabelled: bool = False,
) -> ProcessedScene:
    """Load and validate one processed scene folder (ours or Pointcept's).

    Labels are read from segment.npy, else segment<num_classes>.npy, else segment20.npy, and must
    lie in [-1, num_classes). With ``allow_unlabelled`` a scene without any of them (ScanNet test)
    loads with every label -1. ``load_frames`` reads and validates frames.json when present.
    """
    d = Path(scene_dir)
    if not d.is_dir():
        raise DataError(d, "processed scene folder not found", "run preprocessing first")
    coord = _load_npy(d / "coord.npy", mmap)
    color = _load_npy(d / "color.npy", mmap)
    normal = _load_npy(d / "normal.npy", mmap)
    seg_path = _segment_file(d, num_classes, required=not allow_unlabelled)
    if seg_path is None:
        segment = np.full(len(coord), IGNORE_INDEX, dtype=np.int64)
        seg_path = d / "segment.npy"
    else:
        segment = _load_npy(seg_path, mmap)
    instance = _load_npy(d / "instance.npy", mmap) if (d / "instance.npy").is_file() else None

    scene = ProcessedScene(d.name, coord, color, normal, segment, instance, None, d, segment_file=seg_path.name)
    scene.validate(d, num_classes)
    frames = None
    if load_frames and (d / FRAMES_JSON).is_file():
        frames = FrameIndex.load(d / FRAMES_JSON)
    scene.frames = frames
    return scene


def list_scenes(processed_root: str | Path, split: str) -> list[Path]:
    """Sorted scene folders (those holding coord.npy) of ``processed_root/split``; [] if none."""
    d = Path(processed_root) / split
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "coord.npy").is_file())


# ---------------------------------------------------------------------------------------- hash


def hash_directory(path: str | Path, exclude: Iterable[str] = ()) -> str:
    """sha256 over the sorted relative paths and contents of every file under ``path``.

    Hidden entries (names starting with '.', e.g. temporaries of interrupted atomic writes) and
    top-level names in ``exclude`` are skipped. Files are streamed in 1 MiB chunks.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(root, "cannot hash: not a directory")
    exclude = set(exclude)
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [x for x in dirnames if not x.startswith(".")
                       and not (rel_dir == Path(".") and x in exclude)]
        for fn in filenames:
            if fn.startswith(".") or (rel_dir == Path(".") and fn in exclude):
                continue
            files.append((rel_dir / fn).as_posix())
    files.sort()
    h = hashlib.sha256()
    for rel in files:
        p = root / rel
        h.update(rel.encode("utf-8") + b"\0" + str(p.stat().st_size).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def hash_scenes(scene_dirs: Sequence[str | Path]) -> str:
    """One sha256 over several scene folders (by folder name and content hash, in the given order)."""
    h = hashlib.sha256()
    for d in scene_dirs:
        d = Path(d)
        h.update(f"{d.parent.name}/{d.name}:{hash_directory(d)}\n".encode())
    return h.hexdigest()


def load_split_scenes(processed_root: str | Path, split: str, num_classes: int | None = None) -> list:
    """The processed scenes of one split with their frame indices (``ProcessedScene`` objects)."""
    dirs = list_scenes(processed_root, split)
    if not dirs:
        raise DataError(Path(processed_root) / split, "no processed scenes found",
                        "run the preprocess stage first, or check data.processed_root")
    return [load_processed_scene(d, num_classes=num_classes, load_frames=True) for d in dirs]
