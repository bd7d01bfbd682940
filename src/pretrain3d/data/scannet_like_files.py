"""A raw ScanNet-like scene folder: its file names, a reader for each file (mesh PLY, NYU40 labels
PLY, instance ids, exported RGB-D frames) and the writer of the same layout. The readers are shared
by the ScanNet-like ingestion (``scannet_like``) and the real ScanNet one (``scannet``).

Layout (per scene)::

    <id>_vh_clean_2.ply          vertex x,y,z[,nx,ny,nz],red,green,blue[,alpha] (+faces)
    <id>_vh_clean_2.labels.ply   vertex `label` (raw label id, 0 = unannotated)
    <id>_instance.npy            optional (N,) int
    frames/intrinsic/intrinsic_depth.txt, color/<i>.jpg, depth/<i>.png, pose/<i>.txt
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from pretrain3d.atomic import atomic_dir
from pretrain3d.data.frames import (
    Frame,
    FrameIndex,
    image_size,
    read_color,
    read_depth,
    read_intrinsics,
    read_pose,
)
from pretrain3d.data.ply import read_ply_vertices, write_ply
from pretrain3d.errors import DataError

log = logging.getLogger(__name__)

NYU40_MAX = 40


# ------------------------------------------------------------------------------- raw file paths


def vertex_ply_path(scan_dir: Path, scene_id: str) -> Path:
    return Path(scan_dir) / f"{scene_id}_vh_clean_2.ply"


def label_ply_path(scan_dir: Path, scene_id: str) -> Path:
    return Path(scan_dir) / f"{scene_id}_vh_clean_2.labels.ply"


def instance_path(scan_dir: Path, scene_id: str) -> Path:
    return Path(scan_dir) / f"{scene_id}_instance.npy"


# ------------------------------------------------------------------------------------- readers


def read_vertex_ply(path: str | Path) -> dict:
    """The mesh vertices: {"coord" (N,3) f32, "color" (N,3) u8, "normal" (N,3) f32 | None,
    "faces" (F,3) i64 | None}."""
    path = Path(path)
    v = read_ply_vertices(path, required=("x", "y", "z", "red", "green", "blue"))
    coord = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    color = np.stack([v["red"], v["green"], v["blue"]], axis=1)
    if color.dtype != np.uint8:
        if color.size and (color.min() < 0 or color.max() > 255):
            raise DataError(path, f"vertex colours must lie in [0, 255], got [{color.min()}, {color.max()}]")
        color = np.rint(color).astype(np.uint8)
    normal = None
    if all(k in v for k in ("nx", "ny", "nz")):
        normal = np.stack([v["nx"], v["ny"], v["nz"]], axis=1).astype(np.float32)
        if not np.isfinite(normal).all():
            raise DataError(path, "vertex normals contain NaN or inf values")
    return {"coord": coord, "color": color, "normal": normal, "faces": v.get("faces")}


def read_label_ply(path: str | Path, num_vertices: int | None = None) -> np.ndarray:
    """Per-vertex NYU40 ids (0 = unannotated) as (N,) int64, checked against the vertex count."""
    path = Path(path)
    v = read_ply_vertices(path, required=("label",), check_finite=False)
    labels = np.asarray(v["label"])
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError(path, f"labels must be integers, got dtype {labels.dtype} with fractional values")
    labels = labels.astype(np.int64)
    if num_vertices is not None and len(labels) != num_vertices:
        raise DataError(
            path,
            f"label PLY has {len(labels)} vertices but the mesh PLY has {num_vertices}",
            "the two files must have the same vertices in the same order",
        )
    bad = (labels < 0) | (labels > NYU40_MAX)
    if bad.any():
        vals = np.unique(labels[bad])[:10].tolist()
        raise DataError(path, f"NYU40 labels outside [0, {NYU40_MAX}]: values {vals} at {int(bad.sum())} vertices")
    return labels


def read_instance_npy(path: str | Path, num_vertices: int) -> np.ndarray:
    path = Path(path)
    try:
        inst = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise DataError(path, f"truncated or corrupt .npy file ({type(e).__name__}: {e})") from e
    inst = np.asarray(inst).reshape(-1) if np.ndim(inst) == 2 and np.shape(inst)[1] == 1 else np.asarray(inst)
    if inst.ndim != 1 or len(inst) != num_vertices:
        raise DataError(path, f"instance array has shape {inst.shape} but the mesh has {num_vertices} vertices")
    if not np.issubdtype(inst.dtype, np.integer):
        raise DataError(path, f"instance ids must be integers, got dtype {inst.dtype}")
    return inst.astype(np.int64)


def _frame_sort_key(stem: str):
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def read_exported_frames(
    frames_dir: str | Path,
    frame_step: int = 1,
    invalid_pose: str = "error",
    check_images: bool = True,
    depth_scale: float = 1000.0,
) -> FrameIndex:
    """Index an exported frames folder (intrinsic/intrinsic_depth.txt, color/, depth/, pose/).

    Frames are the pose files, sorted numerically, every ``frame_step``-th kept. Each needs its
    colour and depth image; all depth images must have the same size and each colour image the
    size of its depth image. ``invalid_pose="skip"`` drops frames whose pose is NaN/inf (real
    ScanNet has some) instead of raising. Paths in the returned index are relative to
    ``frames_dir`` (its ``root``).
    """
    frames_dir = Path(frames_dir)
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    if invalid_pose not in ("error", "skip"):
        raise ValueError(f"invalid_pose must be 'error' or 'skip', got {invalid_pose!r}")
    if not frames_dir.is_dir():
        raise DataError(frames_dir, "frames folder not found")
    k = read_intrinsics(frames_dir / "intrinsic" / "intrinsic_depth.txt")
    pose_dir = frames_dir / "pose"
    if not pose_dir.is_dir():
        raise DataError(pose_dir, "missing frame file: pose folder not found")
    stems = sorted((p.stem for p in pose_dir.glob("*.txt")), key=_frame_sort_key)
    if not stems:
        raise DataError(pose_dir, "no pose files (*.txt) found")
    stems = stems[::frame_step]
    frames: list[Frame] = []
    hw = None
    for stem in stems:
        cands = [frames_dir / "color" / f"{stem}{ext}" for ext in (".jpg", ".jpeg", ".png")]
        color = next((c for c in cands if c.is_file()), cands[0])
        depth = frames_dir / "depth" / f"{stem}.png"
        for p in (color, depth):
            if not p.is_file():
                raise DataError(p, f"missing frame file (frame {stem!r} has a pose but no {p.parent.name} image)")
        try:
            pose = read_pose(pose_dir / f"{stem}.txt")
        except DataError:
            if invalid_pose == "skip":
                log.warning("skipping frame %s of %s: invalid pose", stem, frames_dir)
                continue
            raise
        if check_images:
            if hw is None:
                hw = image_size(depth)
            d = read_depth(depth, depth_scale, expected_hw=hw)
            read_color(color, expected_hw=d.shape)
        else:
            dhw = image_size(depth)
            hw = hw or dhw
            if dhw != hw:
                raise DataError(depth, f"depth image is {dhw[1]}x{dhw[0]} (WxH) but {hw[1]}x{hw[0]} (WxH) was expected")
            chw = image_size(color)
            if chw != dhw:
                raise DataError(depth, f"depth image is {dhw[1]}x{dhw[0]} (WxH) but its colour image "
                                       f"{color.name} is {chw[1]}x{chw[0]} (WxH)")
        frames.append(Frame(stem, color.relative_to(frames_dir).as_posix(),
                            depth.relative_to(frames_dir).as_posix(), k.copy(), pose))
    if not frames:
        raise DataError(frames_dir, "no usable frames (every pose was invalid)")
    return FrameIndex(frames, width=hw[1], height=hw[0], depth_scale=depth_scale, root=frames_dir)


# ------------------------------------------------------------------------------------- writer


def write_scannet_like_scene(
    scan_dir: str | Path,
    scene_id: str,
    coord: np.ndarray,
    color: np.ndarray,
    nyu40: np.ndarray,
    normal: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    instance: np.ndarray | None = None,
    frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] = (),
    intrinsics: np.ndarray | None = None,
    binary: bool = True,
) -> Path:
    """Write a raw ScanNet-like scene folder atomically (the inverse of the readers above).

    ``frames``: (color (H,W,3) uint8, depth (H,W) uint16 millimetres, pose (4,4) c2w) tuples,
    saved as frames/color/<i>.jpg, depth/<i>.png, pose/<i>.txt; ``intrinsics`` is the 3x3 K.
    """
    from PIL import Image

    scan_dir = Path(scan_dir)
    coord = np.asarray(coord, dtype=np.float32)
    color = np.asarray(color, dtype=np.uint8)
    verts = {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2]}
    if normal is not None:
        normal = np.asarray(normal, dtype=np.float32)
        verts.update(nx=normal[:, 0], ny=normal[:, 1], nz=normal[:, 2])
    verts.update(red=color[:, 0], green=color[:, 1], blue=color[:, 2])
    with atomic_dir(scan_dir) as tmp:
        write_ply(vertex_ply_path(tmp, scene_id), verts, faces=faces, binary=binary)
        lverts = {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2],
                  "label": np.asarray(nyu40).astype(np.uint16)}
        write_ply(label_ply_path(tmp, scene_id), lverts, faces=faces, binary=binary)
        if instance is not None:
            np.save(instance_path(tmp, scene_id), np.asarray(instance, dtype=np.int64))
        if len(frames):
            if intrinsics is None:
                raise ValueError("frames need intrinsics")
            fd = tmp / "frames"
            for sub in ("intrinsic", "color", "depth", "pose"):
                (fd / sub).mkdir(parents=True, exist_ok=True)
            k4 = np.eye(4)
            k4[:3, :3] = np.asarray(intrinsics, dtype=np.float64)
            np.savetxt(fd / "intrinsic" / "intrinsic_depth.txt", k4, fmt="%.6f")
            for i, (c, d, t) in enumerate(frames):
                Image.fromarray(np.asarray(c, dtype=np.uint8)).save(fd / "color" / f"{i}.jpg", quality=95)
                Image.fromarray(np.asarray(d, dtype=np.uint16)).save(fd / "depth" / f"{i}.png")
                np.savetxt(fd / "pose" / f"{i}.txt", np.asarray(t, dtype=np.float64), fmt="%.9f")
    return scan_dir
