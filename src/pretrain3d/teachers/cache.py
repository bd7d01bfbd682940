"""The 2D feature cache: every frame's teacher feature map, computed once, shared by every method.

Layout::

    <cache_root>/<key>/meta.json          teacher.metadata() (name, layer, dim, stride, input_size,
                                          feature_size, mean, std, weights_source, weights_sha256)
    <cache_root>/<key>/<scene_id>.npz     features  float16 (F, C, h, w)
                                          frame_ids unicode (F,), in the scene's frames.json order

with ``key = f"{name}-{layer}-{H}x{W}"`` (``cache_key``). Each npz is uncompressed ``np.savez``,
written to a temporary name and renamed when complete.

Pixel ↔ feature alignment. The teacher sees the *whole* frame resized to its input size (no crop,
no padding). Where each feature cell is centred is the teacher's property (``Teacher.cell_offset``,
recorded in meta.json as ``cell_offset``): cell i is centred at input pixel ``cell_offset +
stride·i``. A frame pixel u (of w0 columns) sits at input pixel ``x = (u + 0.5)·W/w0 − 0.5``, i.e.
at cell coordinate ``c = (x − cell_offset) / stride``, which ``grid_sample(align_corners=False)``
addresses as ``(2c + 1)/w − 1`` (``pixel_to_grid``; the same for rows). For a patch teacher
(``cell_offset = (stride − 1)/2``) this reduces to::

    x = (u + 0.5) / w0 · 2 − 1,    y = (v + 0.5) / h0 · 2 − 1

independent of the input size; for the padded ResNet it is half a cell to the left/top. Sample
with e.g. ``F.grid_sample(feat[None].float(), grid.view(1, 1, -1, 2), mode="bilinear",
align_corners=False)``. ``pixel_to_cell`` gives the nearest cell (PPKT's one-pair-per-cell sampling).
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


def cell_geometry(meta: dict, source: str | Path = "meta.json") -> dict:
    """``{"stride", "cell_offset", "input_size", "feature_size"}`` of a cache's meta.json (or
    ``Teacher.metadata()``); DataError naming ``source`` when a key is missing or malformed."""
    try:
        geo = {"stride": float(meta["stride"]), "cell_offset": float(meta["cell_offset"]),
               "input_size": [int(v) for v in meta["input_size"]],
               "feature_size": [int(v) for v in meta["feature_size"]]}
    except KeyError as e:
        raise DataError(source, f"feature-cache metadata lacks {e.args[0]!r} (the teacher's cell geometry)",
                        "the cache predates cell geometry: delete the folder and re-run `pretrain3d features`") from None
    except (TypeError, ValueError) as e:
        raise DataError(source, f"feature-cache metadata has a malformed cell geometry ({e})") from None
    if geo["stride"] <= 0 or len(geo["input_size"]) != 2 or len(geo["feature_size"]) != 2 \
            or min(geo["input_size"] + geo["feature_size"]) <= 0:
        raise DataError(source, f"feature-cache metadata has an invalid cell geometry: {geo}")
    return geo


def _cell_coords(uv, width: int, height: int, geometry: dict | None):
    """Continuous (column, row) cell coordinates of frame pixels (cell k's centre at k), and the
    map's (w, h); without a geometry the frame's own pixels are the cells."""
    is_t = isinstance(uv, torch.Tensor)
    if is_t:
        uv = uv.to(torch.float32) if not uv.is_floating_point() else uv
    else:
        uv = np.asarray(uv)
        uv = uv.astype(np.float32) if not np.issubdtype(uv.dtype, np.floating) else uv
    if geometry is None:  # cells tile the frame (patch teachers): cell coordinate = pixel centre scaled
        return uv, (float(width), float(height))
    H, W = geometry["input_size"]
    h, w = geometry["feature_size"]
    S, off = geometry["stride"], geometry["cell_offset"]
    scale = [W / width / S, H / height / S]
    shift = [(-0.5 - off) / S, (-0.5 - off) / S]
    if is_t:
        sc = torch.tensor(scale, dtype=uv.dtype, device=uv.device)
        sh = torch.tensor(shift, dtype=uv.dtype, device=uv.device)
    else:
        sc, sh = np.array(scale, dtype=uv.dtype), np.array(shift, dtype=uv.dtype)
    return (uv + 0.5) * sc + sh, (float(w), float(h))


def pixel_to_grid(uv, width: int, height: int, geometry: dict | None = None):
    """Pixel coordinates (..., 2) = (u column, v row) of a ``width`` x ``height`` frame →
    normalised (x, y) for ``grid_sample(align_corners=False)`` over that frame's cached feature
    map, with the teacher's cell geometry (``cell_geometry(meta)``; see the module docstring).
    ``geometry=None``: cells tile the frame (patch teachers), ((u+0.5)/width·2−1, (v+0.5)/height·2−1).
    Accepts numpy arrays or tensors (returns the same kind, floating point)."""
    c, (w, h) = _cell_coords(uv, width, height, geometry)
    sz = [2.0 / w, 2.0 / h]
    sz = torch.tensor(sz, dtype=c.dtype, device=c.device) if isinstance(c, torch.Tensor) else np.array(sz, c.dtype)
    return (c + 0.5) * sz - 1.0


def cell_to_pixel(cells, width: int, height: int, geometry: dict | None = None) -> np.ndarray:
    """(..., 2) continuous (u column, v row) frame pixel of feature-cell centres (column, row): the
    inverse of the cell coordinates ``pixel_to_grid`` samples at (cell k's centre at k)."""
    c = np.asarray(cells, dtype=np.float64)
    if geometry is None:
        return c.copy()
    H, W = geometry["input_size"]
    S, off = geometry["stride"], geometry["cell_offset"]
    scale = np.array([W / width / S, H / height / S])
    shift = (-0.5 - off) / S
    return (c - shift) / scale - 0.5


def pixel_to_cell(uv, width: int, height: int, geometry: dict) -> np.ndarray:
    """(..., 2) integer (column, row) of the feature cell whose centre is nearest to each pixel
    (clipped to the map), with the teacher's cell geometry."""
    c, (w, h) = _cell_coords(np.asarray(uv, dtype=np.float64), width, height, geometry)
    cell = np.floor(c + 0.5).astype(np.int64)
    return np.stack([np.clip(cell[..., 0], 0, int(w) - 1), np.clip(cell[..., 1], 0, int(h) - 1)], axis=-1)


# --------------------------------------------------------------------------------------- paths


def cache_key(name: str, layer: str | int, input_size: Sequence[int]) -> str:
    H, W = int(input_size[0]), int(input_size[1])
    return f"{name}-{layer}-{H}x{W}"


def cache_dir(cache_root: str | Path, teacher) -> Path:
    """``<cache_root>/<cache_key(teacher)>``: the folder of one teacher configuration."""
    return Path(cache_root) / cache_key(teacher.name, teacher.layer, teacher.input_size)


def configured_cache_dir(teacher_cfg) -> Path:
    """The cache folder of a ``teacher:`` config section (name, layer, input size, cache_root)."""
    t = teacher_cfg
    return Path(t.cache_root) / cache_key(t.name, t.layer, (t.input_height, t.input_width))


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
