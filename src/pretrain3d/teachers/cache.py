"""The 2D feature cache: every frame's teacher feature map, computed once, shared by every method.

Layout::

    <cache_root>/<key>/meta.json          teacher.metadata() (name, layer, dim, stride, input_size,
                                          feature_size, mean, std, weights_source, weights_sha256)
    <cache_root>/<key>/<scene_id>.npz     features  float16 (F, C, h, w)
                                          frame_ids unicode (F,), in the scene's frames.json order

with ``key = f"{name}-{layer}-{H}x{W}"`` (``cache_key``). Each npz is uncompressed ``np.savez``,
written to a temporary name and renamed when complete.

Pixel ↔ feature alignment. The teacher sees the *whole* frame resized to its input size (no crop,
no padding), and the input size is a multiple of the stride, so the (h, w) feature map tiles the
whole frame: feature cell (i, j) covers frame rows [i·h0/h, (i+1)·h0/h) and columns
[j·w0/w, (j+1)·w0/w) of a w0×h0 frame. With ``grid_sample(align_corners=False)`` the map spans
the normalised square [-1, 1]² edge to edge, so the pixel (u, v) (column u, row v, its centre at
(u+0.5, v+0.5)) sits at::

    x = (u + 0.5) / w0 · 2 − 1,    y = (v + 0.5) / h0 · 2 − 1          (``pixel_to_grid``)

independent of the teacher's input size or stride. Sample with e.g.
``F.grid_sample(feat[None].float(), grid.view(1, 1, -1, 2), mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pretrain3d.atomic import atomic_path, write_json
from pretrain3d.errors import DataError

log = logging.getLogger(__name__)

META_JSON = "meta.json"
_NPZ_KEYS = ("features", "frame_ids")


# ----------------------------------------------------------------------------------- geometry


def pixel_to_grid(uv, width: int, height: int):
    """Pixel coordinates (..., 2) = (u column, v row) of a ``width`` x ``height`` frame →
    normalised (x, y) for ``grid_sample(align_corners=False)`` over that frame's cached feature
    map: ((u+0.5)/width·2−1, (v+0.5)/height·2−1). Accepts numpy arrays or tensors (returns the
    same kind, floating point)."""
    if isinstance(uv, torch.Tensor):
        uv = uv.to(torch.float32) if not uv.is_floating_point() else uv
        scale = torch.tensor([2.0 / width, 2.0 / height], dtype=uv.dtype, device=uv.device)
        return (uv + 0.5) * scale - 1.0
    uv = np.asarray(uv)
    uv = uv.astype(np.float32) if not np.issubdtype(uv.dtype, np.floating) else uv
    scale = np.array([2.0 / width, 2.0 / height], dtype=uv.dtype)
    return (uv + 0.5) * scale - 1.0


# --------------------------------------------------------------------------------------- paths


def cache_key(name: str, layer: str | int, input_size: Sequence[int]) -> str:
    H, W = int(input_size[0]), int(input_size[1])
    return f"{name}-{layer}-{H}x{W}"


def cache_dir(cache_root: str | Path, teacher) -> Path:
    """``<cache_root>/<cache_key(teacher)>``: the folder of one teacher configuration."""
    return Path(cache_root) / cache_key(teacher.name, teacher.layer, teacher.input_size)


def _normalise_meta(meta: dict) -> dict:
    return json.loads(json.dumps(meta, sort_keys=True))


def read_cache_meta(cache_dir: str | Path) -> dict:
    """meta.json of a cache folder; DataError (naming the file) when missing or corrupt."""
    path = Path(cache_dir) / META_JSON
    if not path.is_file():
        raise DataError(path, "feature-cache metadata (meta.json) not found",
                        "run the feature stage (pretrain3d features) first")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"feature-cache metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DataError(path, "feature-cache metadata must be a JSON object")
    return meta


def _meta_diff(found: dict, expected: dict) -> list[str]:
    found, expected = _normalise_meta(found), _normalise_meta(expected)
    keys = sorted(set(found) | set(expected))
    return [f"{k}: cached {found.get(k)!r} vs teacher {expected.get(k)!r}"
            for k in keys if found.get(k) != expected.get(k)]


def check_cache_meta(cache_dir: str | Path, expected: dict) -> dict:
    """meta.json must equal ``expected`` (a teacher's metadata()); DataError naming the folder if not."""
    meta = read_cache_meta(cache_dir)
    diff = _meta_diff(meta, expected)
    if diff:
        raise DataError(Path(cache_dir), "the feature cache was computed with a different teacher configuration: "
                        + "; ".join(diff),
                        "delete this folder to recompute it, or choose another teacher.cache_root")
    return meta


# ---------------------------------------------------------------------------------- read/write


def write_scene_features(cache_dir: str | Path, scene_id: str, frame_ids: Sequence[str], features) -> Path:
    """Write ``<cache_dir>/<scene_id>.npz`` atomically (features cast to float16)."""
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if feats.ndim != 4:
        raise ValueError(f"features must be (F, C, h, w), got shape {feats.shape}")
    ids = np.asarray([str(i) for i in frame_ids], dtype=np.str_)
    if len(ids) != len(feats):
        raise ValueError(f"{len(ids)} frame ids for {len(feats)} feature maps")
    with np.errstate(over="ignore"):
        f16 = feats.astype(np.float16)
    if not np.isfinite(f16).all():
        raise ValueError(f"scene {scene_id}: features overflow float16 (max |x| = {np.abs(feats).max():.4g})")
    path = Path(cache_dir) / f"{scene_id}.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, features=f16, frame_ids=ids)
    return path


def load_scene_features(cache_dir: str | Path, scene_id: str, expected_meta: dict | None = None
                        ) -> tuple[list[str], np.ndarray]:
    """(frame_ids, features float16 (F, C, h, w)) of one scene.

    The shape is checked against the folder's meta.json (dim, feature_size); with
    ``expected_meta`` (a teacher's metadata()) meta.json must also equal it. Every problem —
    missing, truncated or corrupt file, wrong shape or dtype, metadata mismatch — is a DataError
    naming the file."""
    cache_dir = Path(cache_dir)
    meta = check_cache_meta(cache_dir, expected_meta) if expected_meta is not None else read_cache_meta(cache_dir)
    path = cache_dir / f"{scene_id}.npz"
    if not path.is_file():
        raise DataError(path, f"no cached 2D features for scene {scene_id!r}",
                        "run the feature stage (pretrain3d features) for this scene")
    ids, feats = _read_npz(path)
    want = (int(meta.get("dim", -1)), *[int(s) for s in meta.get("feature_size", (-1, -1))])
    if tuple(feats.shape[1:]) != want:
        raise DataError(path, f"features have shape {feats.shape} but meta.json says "
                        f"(F, {want[0]}, {want[1]}, {want[2]})", "delete the file to recompute it")
    return ids, feats


def _read_npz(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(path, f"feature file lacks arrays {missing}", "delete it to recompute it")
            feats = z["features"]
            ids = z["frame_ids"]
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        raise DataError(path, f"feature file is truncated or corrupt ({type(e).__name__}: {e})",
                        "delete it to recompute it") from e
    if feats.dtype != np.float16 or feats.ndim != 4:
        raise DataError(path, f"features must be float16 (F, C, h, w), got {feats.dtype} {feats.shape}")
    if ids.ndim != 1 or ids.dtype.kind != "U" or len(ids) != len(feats):
        raise DataError(path, f"frame_ids must be a unicode (F,) array matching {len(feats)} maps, "
                        f"got {ids.dtype} {ids.shape}")
    return [str(i) for i in ids], feats


def _scene_done(path: Path, frame_ids: list[str], meta: dict) -> bool:
    """The npz exists, reads completely and holds exactly these frames at the teacher's shape."""
    if not path.is_file():
        return False
    try:
        ids, feats = _read_npz(path)
    except DataError as e:
        log.warning("recomputing %s", e)
        return False
    want = (int(meta["dim"]), *[int(s) for s in meta["feature_size"]])
    if ids != list(frame_ids) or tuple(feats.shape[1:]) != want:
        log.warning("recomputing %s: its frames or shape do not match the scene and teacher", path)
        return False
    return True


# ---------------------------------------------------------------------------------- compute


def prepare_cache_dir(out_dir: str | Path, teacher) -> dict:
    """Create ``out_dir`` with the teacher's meta.json, or check that an existing one matches."""
    out_dir = Path(out_dir)
    meta = _normalise_meta(teacher.metadata())
    if (out_dir / META_JSON).exists():
        check_cache_meta(out_dir, meta)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / META_JSON, meta)
    return meta


def cache_scenes(
    teacher,
    scene_dirs: Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int = 8,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Compute and write ``<out_dir>/<scene_id>.npz`` for every processed scene folder.

    ``out_dir`` is the teacher's cache folder (``cache_dir(cache_root, teacher)``); its meta.json
    is written first, or must equal ``teacher.metadata()`` (DataError naming the folder
    otherwise). Frames come from ``<scene>/frames.json`` in its order and go through the teacher
    ``batch_size`` at a time. With ``resume``, scenes whose npz is complete (readable, same frame
    ids, right shape) are skipped; truncated or stale ones are recomputed.

    Returns ``{"scenes", "scenes_computed", "scenes_skipped", "frames", "frames_skipped",
    "seconds", "frames_per_s", "forward_seconds", "forward_frames_per_s", "decode_seconds",
    "preprocess_seconds", "write_seconds"}`` (frames = frames computed in this call).
    """
    from tqdm import tqdm

    from pretrain3d.data.frames import FRAMES_JSON, FrameIndex

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    meta = prepare_cache_dir(out_dir, teacher)
    scenes = [(Path(d).name, FrameIndex.load(Path(d) / FRAMES_JSON)) for d in scene_dirs]
    names = [s for s, _ in scenes]
    dup = sorted({s for s in names if names.count(s) > 1})
    if dup:
        raise ValueError(f"scene ids must be unique (their folder names); duplicated: {dup}")

    todo, skipped_frames = [], 0
    for scene_id, index in scenes:
        if resume and _scene_done(out_dir / f"{scene_id}.npz", index.ids, meta):
            skipped_frames += len(index)
        else:
            todo.append((scene_id, index))

    teacher.eval()
    t_decode = t_pre = t_fwd = t_write = 0.0
    n_frames = 0
    bar = tqdm(total=sum(len(ix) for _, ix in todo), desc=f"2D features ({teacher.name})", unit="frame",
               disable=not progress)
    try:
        for scene_id, index in todo:
            chunks = []
            for start in range(0, len(index), batch_size):
                idx = range(start, min(start + batch_size, len(index)))
                t0 = time.perf_counter()
                images = np.stack([index.read_color(i) for i in idx])
                t1 = time.perf_counter()
                with torch.no_grad():
                    x = teacher.preprocess(images)
                    t2 = time.perf_counter()
                    feats = teacher(x)
                t3 = time.perf_counter()
                with np.errstate(over="ignore"):  # overflow → inf, rejected by write_scene_features
                    chunks.append(feats.float().cpu().numpy().astype(np.float16))
                t_decode += t1 - t0
                t_pre += t2 - t1
                t_fwd += t3 - t2
                n_frames += len(idx)
                bar.update(len(idx))
            c, (h, w) = teacher.dim, teacher.feature_size
            features = np.concatenate(chunks) if chunks else np.zeros((0, c, h, w), np.float16)
            t0 = time.perf_counter()
            write_scene_features(out_dir, scene_id, index.ids, features)
            t_write += time.perf_counter() - t0
    finally:
        bar.close()
    seconds = time.perf_counter() - t_start
    return {
        "scenes": len(scenes),
        "scenes_computed": len(todo),
        "scenes_skipped": len(scenes) - len(todo),
        "frames": n_frames,
        "frames_skipped": skipped_frames,
        "seconds": seconds,
        "frames_per_s": n_frames / seconds if seconds > 0 and n_frames else 0.0,
        "forward_seconds": t_fwd,
        "forward_frames_per_s": n_frames / t_fwd if t_fwd > 0 else 0.0,
        "decode_seconds": t_decode,
        "preprocess_seconds": t_pre,
        "write_seconds": t_write,
        "cache_dir": str(out_dir),
    }
