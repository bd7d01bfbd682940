"""A repository index: one small ``.npz`` of keypoints per scene, plus ``index.json`` naming what built it.

Layout (one folder per index)::

    <index>/index.json          {"format", "fingerprint": {...}, "scenes": {scene_id: file}, "k", "dim"}
    <index>/<scene_id>.npz      xyz (K, 3) float32, desc (K, D) float16 (unit rows), score (K,), point_index (K,)

The fingerprint says which model and settings made the descriptors (the caller's dict: e.g. backbone
checkpoint hash, method, keypoint rule, K, config hash). ``load_index`` compares it with the fingerprint
the caller expects and refuses a mismatch, naming the index and the differing keys, so a query never
answers silently from a stale index. Scenes are added one file at a time (``write_scene``, atomic), so
indexing a repository can resume; ``index.json`` is rewritten last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain3d.atomic import atomic_path, write_json
from pretrain3d.errors import DataError
from pretrain3d.retrieval.keypoints import KeypointSet

__all__ = ["FORMAT", "Index", "write_scene", "write_index", "load_index", "read_scene"]

FORMAT = "pretrain3d-keypoints-v1"


@dataclass
class Index:
    """A loaded repository: ``scene_ids`` (S,), ``xyz`` (S, K, 3) float32, ``desc`` (S, K, D) float16 unit."""

    root: Path
    fingerprint: dict
    scene_ids: list[str]
    xyz: np.ndarray
    desc: np.ndarray

    def __len__(self) -> int:
        return len(self.scene_ids)

    def position(self, scene_id: str) -> int:
        try:
            return self.scene_ids.index(scene_id)
        except ValueError:
            raise KeyError(f"scene {scene_id!r} is not in the index {self.root}") from None


def write_scene(root: str | Path, ks: KeypointSet) -> Path:
    """Write one scene's keypoints to ``<root>/<scene_id>.npz`` atomically; returns the path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{ks.scene_id}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
        np.savez(fh, xyz=np.asarray(ks.xyz, np.float32), desc=np.asarray(ks.desc, np.float16),
                 score=np.asarray(ks.score, np.float32), point_index=np.asarray(ks.point_index, np.int64))
    return path


def read_scene(path: str | Path) -> KeypointSet:
    path = Path(path)
    try:
        with np.load(path) as z:
            xyz, desc, score, idx = (z[k] for k in ("xyz", "desc", "score", "point_index"))
    except (OSError, ValueError, KeyError) as e:
        raise DataError(path, f"not a readable keypoint file ({type(e).__name__}: {e})",
                        "rebuild the index (pretrain3d index)") from e
    if xyz.ndim != 2 or xyz.shape[1] != 3 or desc.ndim != 2 or len(desc) != len(xyz):
        raise DataError(path, f"keypoint arrays have shapes xyz {xyz.shape}, desc {desc.shape}",
                        "rebuild the index")
    return KeypointSet(path.stem, xyz.astype(np.float32), desc.astype(np.float32), score, idx)


def write_index(root: str | Path, fingerprint: dict, scene_ids: list[str]) -> Path:
    """Write ``index.json`` over scenes already written with ``write_scene``; every file must exist and
    all must have the same K and D."""
    root = Path(root)
    shapes = {}
    for sid in scene_ids:
        ks = read_scene(root / f"{sid}.npz")
        shapes[sid] = ks.desc.shape
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{root}: scenes differ in keypoints x width: {sorted(set(shapes.values()))}")
    k, d = next(iter(shapes.values())) if shapes else (0, 0)
    write_json(root / "index.json", {"format": FORMAT, "fingerprint": fingerprint, "k": int(k), "dim": int(d),
                                     "scenes": {s: f"{s}.npz" for s in scene_ids}})
    return root / "index.json"


def load_index(root: str | Path, expect: dict | None = None) -> Index:
    """Load an index; with ``expect``, every key of it must equal the stored fingerprint's (else a DataError
    naming the index and the keys that differ). An empty or missing index is a DataError too."""
    root = Path(root)
    meta_path = root / "index.json"
    if not meta_path.exists():
        raise DataError(meta_path, "no index here", "build it first (the keypoints stage / pretrain3d index)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise DataError(meta_path, f"format {meta.get('format')!r}, expected {FORMAT!r}", "rebuild the index")
    fp = meta.get("fingerprint", {})
    if expect is not None:
        diff = {k: (fp.get(k), v) for k, v in expect.items() if fp.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: index has {a!r}, query model has {b!r}" for k, (a, b) in sorted(diff.items()))
            raise DataError(meta_path, f"index built by another model or config ({detail})",
                            "rebuild the index for this model")
    scenes = meta.get("scenes", {})
    if not scenes:
        raise DataError(meta_path, "the repository is empty (no scenes indexed)", "index some scenes first")
    sets = [read_scene(root / f) for f in scenes.values()]
    return Index(root, fp, list(scenes), np.stack([s.xyz for s in sets]),
                 np.stack([s.desc for s in sets]).astype(np.float16))
