"""Microsoft 7-Scenes sequences: list the RGB-D frames, fuse them into a coloured point cloud.

Sequence layout (one folder)::

    frame-XXXXXX.color.jpg   640x480 RGB
    frame-XXXXXX.depth.png   640x480 uint16 millimetres; 0 and 65535 = no measurement
    frame-XXXXXX.pose.txt    4x4 camera-to-world, metres
    camera-intrinsics.txt    3x3 K (optional: the published fx = fy = 585, cx = 320, cy = 240)

Depth and colour are not perfectly registered in 7-Scenes; colours are sampled at the depth
pixel as they are. There are no semantic labels: ``segment`` is all -1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain3d.data.frames import Frame, FrameIndex, read_color, read_depth, read_intrinsics, read_pose
from pretrain3d.data.scene import ProcessedScene, estimate_normals, write_processed_scene
from pretrain3d.errors import DataError

DEFAULT_INTRINSICS = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])
DEPTH_SCALE = 1000.0
_FRAME_RE = re.compile(r"^frame-(\d+)\.(color\.(?:jpg|png)|depth\.png|pose\.txt)$")


@dataclass(frozen=True)
class SevenScenesFrame:
    id: str  # the six digits, e.g. "000120"
    color: Path
    depth: Path
    pose: Path


def list_sevenscenes_frames(root: str | Path) -> list[SevenScenesFrame]:
    """Every frame of the sequence folder, sorted by number. A frame with any of its three files
    missing raises DataError ("missing frame file")."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "7-Scenes sequence folder not found")
    parts: dict[str, dict[str, Path]] = {}
    for p in root.iterdir():
        m = _FRAME_RE.match(p.name)
        if m:
            kind = m.group(2).split(".")[0]
            parts.setdefault(m.group(1), {})[kind] = p
    if not parts:
        raise DataError(root, "no frame-XXXXXX.{color.jpg,depth.png,pose.txt} files found")
    frames = []
    for fid in sorted(parts, key=int):
        have = parts[fid]
        for kind, name in (("color", f"frame-{fid}.color.jpg"), ("depth", f"frame-{fid}.depth.png"),
                           ("pose", f"frame-{fid}.pose.txt")):
            if kind not in have:
                raise DataError(root / name, f"missing frame file (frame {fid} has "
                                             f"{sorted(have)} but no {kind})")
        frames.append(SevenScenesFrame(fid, have["color"], have["depth"], have["pose"]))
    return frames


def read_sevenscenes_intrinsics(root: str | Path) -> np.ndarray:
    path = Path(root) / "camera-intrinsics.txt"
    return read_intrinsics(path) if path.is_file() else DEFAULT_INTRINSICS.copy()


def select_frames(frames: list, frame_step: int = 5, max_frames: int | None = None) -> list:
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    sel = frames[::frame_step]
    return sel[:max_frames] if max_frames is not None else sel


def voxel_average(coord: np.ndarray, voxel_size: float, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Average points (and per-point values) within each voxel of side ``voxel_size``.

    Returns (coord_mean, *value_means), one row per occupied voxel, ordered by voxel key
    (deterministic)."""
    grid = np.floor(coord / voxel_size).astype(np.int64)
    grid -= grid.min(axis=0)
    dims = grid.max(axis=0) + 1
    keys = np.ravel_multi_index(grid.T, dims)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    m = len(counts)
    out = []
    for arr in (coord, *values):
        arr = np.asarray(arr, dtype=np.float64)
        cols = [np.bincount(inverse, weights=arr[:, c], minlength=m) for c in range(arr.shape[1])]
        out.append(np.stack(cols, axis=1) / counts[:, None])
    return tuple(out)


def fuse_sevenscenes(
    root: str | Path,
    frame_step: int = 5,
    max_frames: int | None = None,
    voxel_size: float = 0.02,
    pixel_stride: int = 2,
    max_depth: float = 4.0,
    normal_knn: int = 16,
    scene_id: str | None = None,
) -> ProcessedScene:
    """Back-project every ``frame_step``-th frame (at most ``max_frames``) into world coordinates
    with its colours, fuse, average within ``voxel_size`` voxels and estimate normals (oriented
    towards the cameras that saw each voxel). Depth beyond ``max_depth`` metres is dropped."""
    from pretrain3d.geometry.camera import backproject_depth

    root = Path(root)
    k = read_sevenscenes_intrinsics(root)
    chosen = select_frames(list_sevenscenes_frames(root), frame_step, max_frames)
    if not chosen:
        raise DataError(root, "no frames selected (check frame_step / max_frames)")
    pts, cols, cams, index = [], [], [], []
    hw = None
    for f in chosen:
        depth = read_depth(f.depth, DEPTH_SCALE, expected_hw=hw, color_path=f.color)
        hw = depth.shape
        color = read_color(f.color, expected_hw=hw)
        pose = read_pose(f.pose)
        if max_depth is not None:
            depth = np.where(depth <= max_depth, depth, 0.0).astype(np.float32)
        p, pix = backproject_depth(depth, k, pose, stride=pixel_stride)
        pix = np.asarray(pix).astype(np.int64)
        pts.append(np.asarray(p, dtype=np.float64))
        cols.append(color[pix[:, 1], pix[:, 0]])
        cams.append(np.broadcast_to(pose[:3, 3], (len(p), 3)))
        index.append(Frame(f.id, f.color.name, f.depth.name, k.copy(), pose))
    coord = np.concatenate(pts)
    if len(coord) == 0:
        raise DataError(root, "the selected frames have no valid depth")
    color = np.concatenate(cols).astype(np.float64)
    cam = np.concatenate(cams)
    coord_v, color_v, cam_v = voxel_average(coord, voxel_size, color, cam)
    normal = estimate_normals(coord_v, k=normal_knn, viewpoints=cam_v)
    frames = FrameIndex(index, width=hw[1], height=hw[0], depth_scale=DEPTH_SCALE, root=root)
    n = len(coord_v)
    return ProcessedScene(
        scene_id=scene_id or root.name,
        coord=coord_v.astype(np.float32),
        color=np.clip(np.rint(color_v), 0, 255).astype(np.uint8),
        normal=normal,
        segment=np.full(n, -1, dtype=np.int64),
        instance=None,
        frames=frames,
    )


def preprocess_sevenscenes(root: str | Path, out_dir: str | Path, **fuse_kwargs) -> ProcessedScene:
    """Fuse a 7-Scenes sequence and write it as a processed scene to ``out_dir`` (atomically),
    with the used frames copied to ``out_dir/frames``."""
    scene = fuse_sevenscenes(root, **fuse_kwargs)
    write_processed_scene(out_dir, scene, copy_frames_from=root)
    scene.path = Path(out_dir)
    scene.frames = FrameIndex.load(Path(out_dir) / "frames.json", check_files=False)
    return scene
