"""Read and write PLY point clouds / meshes (binary or ASCII) with errors that name the file.

`read_ply_vertices` returns the vertex element as a dict of 1-D arrays, one per property
(``x``, ``y``, ``z``, ``red``, ``label``, ...), plus ``"faces"`` — an (F, 3) int64 array of
triangles (polygons are fan-triangulated) — when the file has a face element.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pretrain3d.atomic import atomic_path
from pretrain3d.errors import DataError

FACES_KEY = "faces"
_TRIANGLES = {"face": {"vertex_indices": 3, "vertex_index": 3}}


def _open_plydata(path: Path):
    from plyfile import PlyData, PlyElementParseError, PlyHeaderParseError

    if not path.exists():
        raise DataError(path, "PLY file not found")
    if not path.is_file():
        raise DataError(path, "expected a PLY file, found a directory or special file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:3] != b"ply":
        raise DataError(
            path,
            f"not a PLY file: bad header (starts with {magic!r}, expected b'ply')",
        )
    try:
        with open(path, "rb") as f:
            try:
                # Fast path: memory-map binary bodies (triangle faces declared fixed-length).
                # Arrays are copied out by the caller, so no mapping outlives this read.
                return PlyData.read(f, mmap="c", known_list_len=_TRIANGLES)
            except PlyElementParseError as e:
                if "unexpected list length" not in str(e):
                    raise
                f.seek(0)  # polygon faces: plyfile's row-by-row reader
                return PlyData.read(f, mmap=False)
    except PlyHeaderParseError as e:
        raise DataError(path, f"bad PLY header: {e}") from e
    except MemoryError:
        raise
    except Exception as e:  # plyfile raises PlyElementParseError, ValueError, EOFError, ...
        raise DataError(
            path,
            f"PLY body is truncated or corrupt ({type(e).__name__}: {e})",
            "re-export or re-download the file",
        ) from e


def _triangulate(path: Path, face_lists) -> np.ndarray:
    """(F,k) array or object array of index lists -> (T,3) int64 triangles (fan)."""
    if isinstance(face_lists, np.ndarray) and face_lists.dtype != object and face_lists.ndim == 2:
        polys = [face_lists]
    else:
        lists = [np.asarray(f, dtype=np.int64) for f in face_lists]
        if not lists:
            return np.zeros((0, 3), dtype=np.int64)
        lengths = np.array([len(f) for f in lists])
        if np.all(lengths == lengths[0]):
            polys = [np.stack(lists)]
        else:
            polys = [np.stack([lists[i] for i in np.flatnonzero(lengths == k)]) for k in np.unique(lengths)]
    tris = []
    for p in polys:
        p = np.array(p, dtype=np.int64)  # a copy: never a view of a memory-mapped file
        k = p.shape[1]
        if k < 3:
            raise DataError(path, f"face with {k} vertices (a face needs at least 3)")
        for j in range(1, k - 1):
            tris.append(np.stack([p[:, 0], p[:, j], p[:, j + 1]], axis=1))
    return np.concatenate(tris) if tris else np.zeros((0, 3), dtype=np.int64)


def read_ply_vertices(
    path: str | Path,
    required: Sequence[str] = ("x", "y", "z"),
    check_finite: bool = True,
) -> dict[str, np.ndarray]:
    """Read a PLY file's vertex element (and faces, if any).

    Returns ``{property_name: (N,) array}`` in the file's dtypes, plus ``"faces"`` ((F,3) int64
    triangles) when a ``face`` element with ``vertex_indices`` (or ``vertex_index``) exists.
    Raises DataError for a missing file, a non-PLY / bad header, a truncated or corrupt body,
    missing ``required`` properties, non-finite x/y/z, or face indices out of range.
    """
    path = Path(path)
    ply = _open_plydata(path)
    names = [e.name for e in ply.elements]
    if "vertex" not in names:
        raise DataError(path, f"PLY file has no 'vertex' element (elements: {names})")
    vdata = ply["vertex"].data
    props = list(vdata.dtype.names or ())
    missing = [p for p in required if p not in props]
    if missing:
        raise DataError(
            path,
            f"PLY vertex element lacks required properties {missing} (has {props})",
        )
    out: dict[str, np.ndarray] = {p: np.ascontiguousarray(vdata[p]) for p in props}
    n = len(vdata)
    if check_finite:
        for p in ("x", "y", "z"):
            if p in out and np.issubdtype(out[p].dtype, np.floating):
                bad = ~np.isfinite(out[p])
                if bad.any():
                    raise DataError(
                        path,
                        f"{int(bad.sum())} of {n} vertices have non-finite coordinate '{p}' "
                        f"(first at vertex {int(np.flatnonzero(bad)[0])})",
                    )
    if "face" in names:
        fdata = ply["face"].data
        fprops = fdata.dtype.names or ()
        key = "vertex_indices" if "vertex_indices" in fprops else (
            "vertex_index" if "vertex_index" in fprops else None
        )
        if key is None:
            raise DataError(path, f"PLY face element lacks 'vertex_indices' (has {list(fprops)})")
        faces = _triangulate(path, fdata[key])
        if faces.size and (faces.min() < 0 or faces.max() >= n):
            raise DataError(
                path,
                f"face vertex indices out of range: [{int(faces.min())}, {int(faces.max())}] "
                f"for {n} vertices",
            )
        out[FACES_KEY] = faces
    return out


_DEFAULT_DTYPES = {
    "x": "f4", "y": "f4", "z": "f4",
    "nx": "f4", "ny": "f4", "nz": "f4",
    "red": "u1", "green": "u1", "blue": "u1", "alpha": "u1",
}


def write_ply(
    path: str | Path,
    vertices: Mapping[str, np.ndarray],
    faces: np.ndarray | Sequence[Sequence[int]] | None = None,
    binary: bool = True,
) -> None:
    """Write a PLY file atomically (temporary name, then rename).

    ``vertices`` maps property names to 1-D arrays of equal length; x/y/z/nx/ny/nz are stored as
    float32 and red/green/blue/alpha as uint8, other properties keep their dtype. ``faces`` is an
    (F,k) integer array (or a list of index lists) stored as ``vertex_indices``.
    """
    from plyfile import PlyData, PlyElement

    path = Path(path)
    if not vertices:
        raise ValueError("write_ply needs at least one vertex property")
    arrays = {}
    n = None
    for name, arr in vertices.items():
        if name == FACES_KEY:
            continue
        arr = np.asarray(arr)
        if arr.ndim != 1:
            raise ValueError(f"vertex property {name!r} must be 1-D, got shape {arr.shape}")
        if n is None:
            n = len(arr)
        elif len(arr) != n:
            raise ValueError(f"vertex property {name!r} has {len(arr)} values, expected {n}")
        dt = np.dtype(_DEFAULT_DTYPES.get(name, arr.dtype))
        if dt == np.int64:  # PLY has no 64-bit integer type
            dt = np.dtype("i4")
        elif dt == np.uint64:
            dt = np.dtype("u4")
        elif dt == np.bool_:
            dt = np.dtype("u1")
        arrays[name] = arr.astype(dt, copy=False)
    # Little-endian, so the fast binary path below matches its header.
    vstruct = np.empty(n, dtype=[(k, a.dtype.newbyteorder("<")) for k, a in arrays.items()])
    for k, a in arrays.items():
        vstruct[k] = a
    fixed = None
    if faces is not None and isinstance(faces, np.ndarray) and faces.dtype != object and faces.ndim == 2:
        fixed = np.asarray(faces)
    if binary and (faces is None or (fixed is not None and 0 < fixed.shape[1] < 256)):
        _write_binary_fast(path, vstruct, fixed)
        return
    elements = [PlyElement.describe(vstruct, "vertex")]
    if faces is not None:
        flist = [np.asarray(f, dtype=np.int32) for f in faces]
        fstruct = np.empty(len(flist), dtype=[("vertex_indices", object)])
        fstruct["vertex_indices"] = flist
        elements.append(
            PlyElement.describe(fstruct, "face", len_types={"vertex_indices": "u1"},
                                val_types={"vertex_indices": "i4"})
        )
    with atomic_path(path) as tmp:
        PlyData(elements, text=not binary).write(str(tmp))


_PLY_TYPES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
              "f4": "float", "f8": "double"}


def _write_binary_fast(path: Path, vstruct: np.ndarray, faces: np.ndarray | None) -> None:
    """Binary little-endian PLY with fixed-length faces, written with numpy (plyfile writes
    list properties row by row: seconds for a ScanNet-sized mesh)."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vstruct)}"]
    for name in vstruct.dtype.names:
        code = vstruct.dtype[name].str[1:]
        if code not in _PLY_TYPES:
            raise ValueError(f"vertex property {name!r}: dtype {vstruct.dtype[name]} has no PLY type")
        lines.append(f"property {_PLY_TYPES[code]} {name}")
    fbytes = b""
    if faces is not None:
        k = faces.shape[1]
        fstruct = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (k,))])
        fstruct["n"] = k
        fstruct["idx"] = faces
        fbytes = fstruct.tobytes()
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(lines) + "\n").encode("ascii"))
            f.write(vstruct.tobytes())
            f.write(fbytes)


def vertex_normals_from_faces(coord: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals of a triangle mesh; (N,3) float32, unit length.

    Vertices that no face touches (or only degenerate ones) get the zero vector.
    """
    coord = np.asarray(coord, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    normals = np.zeros_like(coord)
    if len(faces):
        v0, v1, v2 = coord[faces[:, 0]], coord[faces[:, 1]], coord[faces[:, 2]]
        fn = np.cross(v1 - v0, v2 - v0)  # length = 2 * area: area weighting for free
        idx = faces.reshape(-1)
        w = np.repeat(fn, 3, axis=0)
        for c in range(3):  # bincount is much faster than np.add.at
            normals[:, c] = np.bincount(idx, weights=w[:, c], minlength=len(coord))
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normals = np.where(norm > 0, normals / np.maximum(norm, 1e-30), 0.0)
    return normals.astype(np.float32)
