"""The RGB-D frame index of a processed scene (``frames.json``) and readers for its files.

``frames.json``::

    {"depth_scale": 1000.0, "width": W, "height": H,
     "frames": [{"id": "0", "color": "frames/color/0.jpg", "depth": "frames/depth/0.png",
                 "intrinsics": [[fx,0,cx],[0,fy,cy],[0,0,1]], "pose": 4x4 camera-to-world}]}

Paths are relative to ``FrameIndex.root`` (the scene folder once written); absolute paths are
allowed in memory (e.g. while ingesting from a raw dataset) and are resolved as they are.
Depth images are 16-bit PNGs; a raw value of 0 or 65535 means "no measurement" and reads as 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pretrain3d.atomic import write_json
from pretrain3d.errors import DataError

FRAMES_JSON = "frames.json"
# Raw 16-bit depth values that mean "no measurement": 0 everywhere, 65535 in 7-Scenes (saturated).
INVALID_DEPTH_VALUES = (0, 65535)
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------------------- readers


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, "missing frame file", "every frame needs its colour, depth and pose file")


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    _require_file(path)
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(path, f"unreadable image: truncated or corrupt ({type(e).__name__}: {e})") from e
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, reading only its header."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(path, f"unreadable image ({type(e).__name__}: {e})") from e
    return h, w


def _fmt_hw(hw: Sequence[int]) -> str:
    return f"{hw[1]}x{hw[0]} (WxH)"


def read_color(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8."""
    path = Path(path)
    img = _open_image(path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if expected_hw is not None and tuple(arr.shape[:2]) != tuple(expected_hw):
        raise DataError(
            path,
            f"colour image is {_fmt_hw(arr.shape[:2])} but {_fmt_hw(expected_hw)} was expected",
        )
    return arr


def read_depth(
    path: str | Path,
    depth_scale: float = 1000.0,
    expected_hw: tuple[int, int] | None = None,
    color_path: str | Path | None = None,
) -> np.ndarray:
    """A 16-bit depth PNG as (H, W) float32 metres (raw / depth_scale); invalid pixels are 0.

    The size is checked against ``expected_hw`` and/or the colour image at ``color_path``.
    """
    path = Path(path)
    img = _open_image(path)
    if img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        raise DataError(
            path,
            f"depth image has mode {img.mode!r}; expected a single-channel 16-bit PNG",
        )
    raw = np.asarray(img)
    hw = tuple(raw.shape[:2])
    if expected_hw is not None and hw != tuple(expected_hw):
        raise DataError(
            path,
            f"depth image is {_fmt_hw(hw)} but {_fmt_hw(expected_hw)} was expected",
        )
    if color_path is not None:
        chw = image_size(color_path)
        if chw != hw:
            raise DataError(
                path,
                f"depth image is {_fmt_hw(hw)} but its colour image {Path(color_path).name} is "
                f"{_fmt_hw(chw)}",
                "colour must be registered to (resized to) the depth resolution",
            )
    if not (np.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be finite and positive, got {depth_scale}")
    raw = raw.astype(np.int64, copy=False)
    invalid = np.isin(raw, INVALID_DEPTH_VALUES) | (raw < 0)
    depth = (raw.astype(np.float32) / np.float32(depth_scale))
    depth[invalid] = 0.0
    return depth


def _read_matrix(path: Path, what: str) -> np.ndarray:
    _require_file(path)
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(path, f"cannot parse {what} as a numeric text matrix ({e})") from e
    return m


def read_pose(path: str | Path) -> np.ndarray:
    """A 4x4 camera-to-world text matrix, checked to be finite and rigid."""
    from pretrain3d.geometry.camera import check_pose

    path = Path(path)
    m = _read_matrix(path, "pose")
    if m.shape != (4, 4):
        raise DataError(path, f"pose must be a 4x4 matrix, got shape {m.shape}")
    return check_pose(m, path)


def read_intrinsics(path: str | Path) -> np.ndarray:
    """A 3x3 K from a 3x3 or 4x4 text matrix (top-left block), validated."""
    path = Path(path)
    m = _read_matrix(path, "intrinsics")
    if m.shape not in ((3, 3), (4, 4)):
        raise DataError(path, f"intrinsics must be a 3x3 or 4x4 matrix, got shape {m.shape}")
    k = m[:3, :3].copy()
    check_intrinsics(k, path)
    return k


def check_intrinsics(k, path: str | Path) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.shape != (3, 3):
        raise DataError(path, f"intrinsics must be 3x3, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise DataError(path, "intrinsics contain NaN or inf values")
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise DataError(path, f"intrinsics need positive focal lengths, got fx={k[0, 0]}, fy={k[1, 1]}")
    if not np.allclose(k[2], [0.0, 0.0, 1.0]):
        raise DataError(path, f"intrinsics' last row must be [0, 0, 1], got {k[2].tolist()}")
    return k


# ---------------------------------------------------------------------------------- frame index


@dataclass(eq=False)
class Frame:
    """One RGB-D view: file paths (relative to the index root, or absolute), K and camera-to-world."""

    id: str
    color: str
    depth: str
    intrinsics: np.ndarray  # (3,3) float64
    pose: np.ndarray  # (4,4) float64, camera-to-world

    def __eq__(self, other) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            (self.id, self.color, self.depth) == (other.id, other.color, other.depth)
            and np.array_equal(self.intrinsics, other.intrinsics)
            and np.array_equal(self.pose, other.pose)
        )

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "color": self.color,
            "depth": self.depth,
            "intrinsics": np.asarray(self.intrinsics, dtype=np.float64).tolist(),
            "pose": np.asarray(self.pose, dtype=np.float64).tolist(),
        }


@dataclass
class FrameIndex:
    frames: list[Frame]
    width: int
    height: int
    depth_scale: float = 1000.0
    root: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def __getitem__(self, i: int) -> Frame:
        return self.frames[i]

    @property
    def ids(self) -> list[str]:
        return [f.id for f in self.frames]

    def resolve(self, rel: str | Path) -> Path:
        p = Path(rel)
        if p.is_absolute() or self.root is None:
            return p
        return self.root / p

    def color_path(self, i: int) -> Path:
        return self.resolve(self.frames[i].color)

    def depth_path(self, i: int) -> Path:
        return self.resolve(self.frames[i].depth)

    def read_color(self, i: int) -> np.ndarray:
        return read_color(self.color_path(i), expected_hw=(self.height, self.width))

    def read_depth(self, i: int) -> np.ndarray:
        return read_depth(self.depth_path(i), self.depth_scale, expected_hw=(self.height, self.width))

    # -- (de)serialisation

    def to_json(self) -> dict:
        return {
            "depth_scale": float(self.depth_scale),
            "width": int(self.width),
            "height": int(self.height),
            "frames": [f.to_json() for f in self.frames],
        }

    def save(self, path: str | Path) -> None:
        """Write frames.json atomically. Paths are stored as they are (make them relative first)."""
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, obj: dict, source: str | Path, root: str | Path | None = None) -> "FrameIndex":
        """Parse a frames.json dict; ``source`` is the path named in errors."""
        source = Path(source)
        if not isinstance(obj, dict):
            raise DataError(source, f"frame index must be a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("width", "height", "frames") if k not in obj]
        if missing:
            raise DataError(source, f"frame index lacks keys {missing}")
        try:
            width, height = int(obj["width"]), int(obj["height"])
            depth_scale = float(obj.get("depth_scale", 1000.0))
        except (TypeError, ValueError) as e:
            raise DataError(source, f"bad width/height/depth_scale ({e})") from e
        frames = []
        if not isinstance(obj["frames"], list):
            raise DataError(source, "'frames' must be a list")
        for j, f in enumerate(obj["frames"]):
            if not isinstance(f, dict):
                raise DataError(source, f"frame #{j} is not a JSON object")
            lack = [k for k in ("id", "color", "depth", "intrinsics", "pose") if k not in f]
            if lack:
                raise DataError(source, f"frame #{j} lacks keys {lack}")
            try:
                k = np.asarray(f["intrinsics"], dtype=np.float64)
                t = np.asarray(f["pose"], dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise DataError(source, f"frame {f['id']!r}: intrinsics/pose are not numeric ({e})") from e
            frames.append(Frame(str(f["id"]), str(f["color"]), str(f["depth"]), k, t))
        return cls(frames, width, height, depth_scale, Path(root) if root is not None else None)

    @classmethod
    def load(cls, path: str | Path, check_files: bool = True) -> "FrameIndex":
        """Read and validate frames.json; relative paths resolve against its folder."""
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "frame index (frames.json) not found")
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(path, f"frame index is not valid JSON (truncated or corrupt: {e})") from e
        index = cls.from_json(obj, path, root=path.parent)
        index.validate(source=path, check_files=check_files)
        return index

    def validate(self, source: str | Path | None = None, check_files: bool = True) -> "FrameIndex":
        """Check sizes, intrinsics (3x3, finite, positive focal), poses (finite, rigid), unique
        filename-safe ids and, with ``check_files``, that every colour/depth file exists."""
        from pretrain3d.geometry.camera import pose_problem

        src = Path(source) if source is not None else (self.root or Path("<frame index>"))
        if self.width <= 0 or self.height <= 0:
            raise DataError(src, f"image size must be positive, got {self.width}x{self.height}")
        if not (np.isfinite(self.depth_scale) and self.depth_scale > 0):
            raise DataError(src, f"depth_scale must be finite and positive, got {self.depth_scale}")
        seen = set()
        for f in self.frames:
            if not _ID_RE.match(f.id):
                raise DataError(src, f"frame id {f.id!r} is not filename-safe ([A-Za-z0-9_.-]+)")
            if f.id in seen:
                raise DataError(src, f"duplicate frame id {f.id!r}")
            seen.add(f.id)
            try:
                check_intrinsics(f.intrinsics, src)
            except DataError as e:
                raise DataError(src, f"frame {f.id!r}: {e.problem}") from e
            problem = pose_problem(f.pose)
            if problem is not None:
                raise DataError(src, f"frame {f.id!r}: {problem}", "expected a rigid 4x4 camera-to-world matrix")
            if check_files:
                for p in (f.color, f.depth):
                    full = self.resolve(p)
                    if not full.is_file():
                        raise DataError(full, f"missing frame file (listed in {src} for frame {f.id!r})")
        return self

    def subset(self, ids: Sequence[str]) -> "FrameIndex":
        keep = set(ids)
        return FrameIndex([f for f in self.frames if f.id in keep], self.width, self.height,
                          self.depth_scale, self.root)
