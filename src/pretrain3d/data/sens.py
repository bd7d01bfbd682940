"""Read ScanNet's RGB-D stream files (``<scene>.sens``, version 4, as written by ScanNet's
SensorData tools).

Layout (little-endian)::

    header  uint32 version (4) | uint64 n + n bytes sensor name
            4 x float32[16] intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth
            int32 colour compression (-1 unknown, 0 raw, 1 png, 2 jpeg)
            int32 depth compression  (-1 unknown, 0 raw_ushort, 1 zlib_ushort, 2 occi_ushort)
            uint32 colour width, height, depth width, height | float32 depth_shift | uint64 frames
    frame   float32[16] camera-to-world | uint64 colour timestamp, depth timestamp,
            colour byte count, depth byte count | colour bytes | depth bytes

Frames are streamed: the ones not asked for are skipped with a seek, so reading every k-th
frame of a multi-GB file costs little more than decoding those frames.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from pretrain3d.errors import DataError

SENS_VERSION = 4
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_MATRICES = struct.Struct("<64f")
_TAIL = struct.Struct("<iiIIIIfQ")
_FRAME = struct.Struct("<16f4Q")


@dataclass
class SensHeader:
    version: int
    sensor_name: str
    intrinsic_color: np.ndarray  # (4,4) float32, colour-image pixels
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray  # (4,4) float32, depth-image pixels
    extrinsic_depth: np.ndarray
    color_compression: str
    depth_compression: str
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float  # raw depth units per metre (1000 for ScanNet)
    num_frames: int


@dataclass
class SensFrame:
    index: int
    camera_to_world: np.ndarray  # (4,4) float32 as stored (may hold -inf for lost tracking)
    timestamp_color: int
    timestamp_depth: int
    color_data: bytes
    depth_data: bytes


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise DataError(path, f"truncated .sens file: {what} needs {n} bytes, {len(b)} left",
                        "re-download the scene's .sens file")
    return b


class SensReader:
    """Stream the header and frames of a ``.sens`` file; use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "RGB-D stream (.sens) not found")
        self._file: BinaryIO = open(self.path, "rb")
        self._size = self.path.stat().st_size
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise
        self._frames_start = self._file.tell()

    def __enter__(self) -> "SensReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _read_header(self) -> SensHeader:
        f, p = self._file, self.path
        (version,) = struct.unpack("<I", _read_exact(f, 4, p, "version"))
        if version != SENS_VERSION:
            raise DataError(p, f"unsupported .sens version {version} (expected {SENS_VERSION}) or not a .sens file")
        (n,) = struct.unpack("<Q", _read_exact(f, 8, p, "sensor-name length"))
        if n > 4096:
            raise DataError(p, f"corrupt .sens header: sensor-name length {n}")
        name = _read_exact(f, n, p, "sensor name").decode("utf-8", errors="replace")
        mats = np.array(_MATRICES.unpack(_read_exact(f, _MATRICES.size, p, "camera matrices")),
                        dtype=np.float32).reshape(4, 4, 4)
        ccomp, dcomp, cw, ch, dw, dh, shift, nframes = _TAIL.unpack(_read_exact(f, _TAIL.size, p, "header"))
        if ccomp not in COLOR_COMPRESSION or dcomp not in DEPTH_COMPRESSION:
            raise DataError(p, f"corrupt .sens header: compression codes colour={ccomp}, depth={dcomp}")
        if min(cw, ch, dw, dh) == 0:
            raise DataError(p, f"corrupt .sens header: image sizes colour {cw}x{ch}, depth {dw}x{dh}")
        if not (np.isfinite(shift) and shift > 0):
            raise DataError(p, f"corrupt .sens header: depth_shift {shift}")
        return SensHeader(version, name, mats[0], mats[1], mats[2], mats[3], COLOR_COMPRESSION[ccomp],
                          DEPTH_COMPRESSION[dcomp], cw, ch, dw, dh, float(shift), int(nframes))

    def frames(self, step: int = 1) -> Iterator[SensFrame]:
        """Frames 0, step, 2*step, ... (data of the others is skipped, not read)."""
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        f, p = self._file, self.path
        f.seek(self._frames_start)
        for i in range(self.header.num_frames):
            vals = _FRAME.unpack(_read_exact(f, _FRAME.size, p, f"frame {i} header"))
            csize, dsize = vals[18], vals[19]
            if f.tell() + csize + dsize > self._size:
                raise DataError(p, f"truncated .sens file: frame {i} declares {csize + dsize} bytes "
                                   f"beyond the end of the file", "re-download the scene's .sens file")
            if i % step:
                f.seek(csize + dsize, io.SEEK_CUR)
                continue
            pose = np.array(vals[:16], dtype=np.float32).reshape(4, 4)
            yield SensFrame(i, pose, vals[16], vals[17], f.read(csize), f.read(dsize))

    # -- decoding

    def decode_depth(self, frame: SensFrame) -> np.ndarray:
        """(H, W) uint16 raw depth (divide by header.depth_shift for metres; 0 = no measurement)."""
        h = self.header
        if h.depth_compression == "zlib_ushort":
            try:
                raw = zlib.decompress(frame.depth_data)
            except zlib.error as e:
                raise DataError(self.path, f"frame {frame.index}: corrupt zlib depth data ({e})") from e
        elif h.depth_compression == "raw_ushort":
            raw = frame.depth_data
        else:
            raise DataError(self.path, f"depth compression {h.depth_compression!r} is not supported",
                            "ScanNet v2 streams use zlib_ushort")
        expected = h.depth_width * h.depth_height * 2
        if len(raw) != expected:
            raise DataError(self.path, f"frame {frame.index}: depth image has {len(raw)} bytes, expected "
                                       f"{expected} ({h.depth_width}x{h.depth_height} uint16)")
        return np.frombuffer(raw, dtype="<u2").reshape(h.depth_height, h.depth_width).astype(np.uint16)

    def decode_color(self, frame: SensFrame) -> np.ndarray:
        """(H, W, 3) uint8 RGB at the colour resolution."""
        h = self.header
        if h.color_compression in ("jpeg", "png"):
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(io.BytesIO(frame.color_data)) as img:
                    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                raise DataError(self.path, f"frame {frame.index}: corrupt {h.color_compression} colour image "
                                           f"({type(e).__name__}: {e})") from e
        elif h.color_compression == "raw":
            expected = h.color_width * h.color_height * 3
            if len(frame.color_data) != expected:
                raise DataError(self.path, f"frame {frame.index}: raw colour image has {len(frame.color_data)} "
                                           f"bytes, expected {expected}")
            arr = np.frombuffer(frame.color_data, dtype=np.uint8).reshape(h.color_height, h.color_width, 3)
        else:
            raise DataError(self.path, f"colour compression {h.color_compression!r} is not supported")
        if arr.shape[:2] != (h.color_height, h.color_width):
            raise DataError(self.path, f"frame {frame.index}: colour image is {arr.shape[1]}x{arr.shape[0]} but "
                                       f"the header says {h.color_width}x{h.color_height}")
        return arr


def read_sens_header(path: str | Path) -> SensHeader:
    with SensReader(path) as r:
        return r.header
