"""Test-side writers for raw ScanNet v2 and S3DIS files, following the public formats exactly.

Nothing here is used by the library: these are independent writers, so a reader bug cannot hide
behind a matching writer bug. The ``.sens`` writer follows the layout of ScanNet's SensorData
reader (version 4, little-endian).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

TSV_HEADER = ["id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
              "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
              "wnsynsetkey", "mpcat40", "mpcat40index"]


def write_ply_mesh(path: Path, coord: np.ndarray, color: np.ndarray, faces: np.ndarray, alpha: bool = True,
                   ascii: bool = False) -> None:
    """A mesh PLY like ScanNet's _vh_clean_2.ply: float x y z, uchar red green blue alpha, faces."""
    n = len(coord)
    props = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if alpha:
        props.append(("alpha", "u1"))
    v = np.empty(n, dtype=props)
    v["x"], v["y"], v["z"] = coord[:, 0], coord[:, 1], coord[:, 2]
    v["red"], v["green"], v["blue"] = color[:, 0], color[:, 1], color[:, 2]
    if alpha:
        v["alpha"] = 255
    types = {"<f4": "float", "u1": "uchar", "<u2": "ushort"}
    head = ["ply", "format ascii 1.0" if ascii else "format binary_little_endian 1.0",
            "comment VCGLIB generated", f"element vertex {n}"]
    head += [f"property {types[t]} {name}" for name, t in props]
    head += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode())
        if ascii:
            for row in v:
                f.write((" ".join(repr(float(x)) if isinstance(x, np.floating) else str(int(x)) for x in row)
                         + "\n").encode())
            for tri in faces:
                f.write(("3 " + " ".join(str(int(i)) for i in tri) + "\n").encode())
        else:
            f.write(v.tobytes())
            fs = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
            fs["n"], fs["i"] = 3, faces
            f.write(fs.tobytes())


def write_label_ply(path: Path, coord: np.ndarray, nyu40: np.ndarray, faces: np.ndarray) -> None:
    """Like ScanNet's _vh_clean_2.labels.ply: x y z, colour of the label, ushort label, faces."""
    n = len(coord)
    v = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                           ("blue", "u1"), ("alpha", "u1"), ("label", "<u2")])
    v["x"], v["y"], v["z"] = coord[:, 0], coord[:, 1], coord[:, 2]
    v["red"] = v["green"] = v["blue"] = (nyu40 * 6) % 256
    v["alpha"] = 255
    v["label"] = nyu40
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {n}", "property float x",
            "property float y", "property float z", "property uchar red", "property uchar green",
            "property uchar blue", "property uchar alpha", "property ushort label",
            f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    fs = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    fs["n"], fs["i"] = 3, faces
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode())
        f.write(v.tobytes())
        f.write(fs.tobytes())


def write_segs(path: Path, scene_id: str, seg_indices: np.ndarray) -> None:
    path.write_text(json.dumps({"params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750",
                                           "maxPoints": "5000", "thinThresh": "0.05", "flatThresh": "0.001",
                                           "minLength": "0.02", "maxLength": "1"},
                                "sceneId": scene_id, "segIndices": [int(i) for i in seg_indices]}))


def write_aggregation(path: Path, scene_id: str, groups: Sequence[tuple[int, str, Sequence[int]]]) -> None:
    """groups: (objectId, raw category label, segment ids)."""
    path.write_text(json.dumps({
        "sceneId": f"scannet.{scene_id}", "appId": "Aggregator.v2",
        "segGroups": [{"id": oid, "objectId": oid, "segments": [int(s) for s in segs], "label": label}
                      for oid, label, segs in groups],
        "segmentsFile": f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json"}))


def write_info_txt(path: Path, axis_alignment: np.ndarray | None) -> None:
    lines = []
    if axis_alignment is not None:
        lines.append("axisAlignment = " + " ".join(f"{v:.6f}" for v in np.asarray(axis_alignment).reshape(-1)))
    lines += ["colorHeight = 968", "colorToDepthExtrinsics = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1",
              "colorWidth = 1296", "depthHeight = 480", "depthWidth = 640", "numColorFrames = 3",
              "numDepthFrames = 3", "numIMUmeasurements = 0", "sceneType = Bedroom / Hotel"]
    path.write_text("\r\n".join(lines) + "\r\n")  # ScanNet's info files have Windows line ends


def write_label_tsv(path: Path, rows: Sequence[tuple[int, str, int]]) -> None:
    """rows: (ScanNet id, raw_category, nyu40id); other columns get plausible filler."""
    out = ["\t".join(TSV_HEADER)]
    for sid, raw, nyu in rows:
        cells = [str(sid), raw, raw, "10", str(nyu), "0", raw, raw, "", "", "", "", "", "", "", raw, "0"]
        out.append("\t".join(cells))
    path.write_text("\n".join(out) + "\n")


def write_sens(path: Path, frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
               intrinsic_color: np.ndarray, intrinsic_depth: np.ndarray, depth_shift: float = 1000.0,
               sensor_name: str = "StructureSensor", color_compression: int = 2,
               depth_compression: int = 1) -> None:
    """A .sens stream. frames: (colour (Hc,Wc,3) uint8, depth (Hd,Wd) uint16, camera-to-world 4x4)."""
    ch, cw = frames[0][0].shape[:2]
    dh, dw = frames[0][1].shape[:2]
    with open(path, "wb") as f:
        f.write(struct.pack("<I", 4))
        name = sensor_name.encode()
        f.write(struct.pack("<Q", len(name)) + name)
        for m in (intrinsic_color, np.eye(4), intrinsic_depth, np.eye(4)):
            f.write(np.asarray(m, dtype="<f4").reshape(16).tobytes())
        f.write(struct.pack("<iiIIIIfQ", color_compression, depth_compression, cw, ch, dw, dh, depth_shift,
                            len(frames)))
        for i, (color, depth, pose) in enumerate(frames):
            if color_compression == 2:
                buf = io.BytesIO()
                Image.fromarray(color).save(buf, format="JPEG", quality=90)
                cbytes = buf.getvalue()
            else:  # raw
                cbytes = np.ascontiguousarray(color, dtype=np.uint8).tobytes()
            draw = np.ascontiguousarray(depth, dtype="<u2").tobytes()
            dbytes = zlib.compress(draw) if depth_compression == 1 else draw
            f.write(np.asarray(pose, dtype="<f4").reshape(16).tobytes())
            f.write(struct.pack("<QQQQ", 1000 * i, 1000 * i + 7, len(cbytes), len(dbytes)))
            f.write(cbytes)
            f.write(dbytes)


def intrinsics4(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = fx, fy, cx, cy
    return k


def write_s3dis_object(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """One S3DIS annotation file: lines 'x y z r g b' with 3-decimal coordinates."""
    lines = [f"{x:.3f} {y:.3f} {z:.3f} {int(r)} {int(g)} {int(b)}" for (x, y, z), (r, g, b) in zip(xyz, rgb)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------ a whole fake scan

# (ScanNet category id, raw category, nyu40id) rows of the fake label table. "lamp" is kept by
# ScanNet200 but not by ScanNet-20; "mystery thing" below is absent from the table.
LABEL_ROWS = [(1, "wall", 1), (2, "chair", 5), (3, "floor", 2), (4, "table", 7), (28, "lamp", 35),
              (1163, "object", 40)]


def grid_mesh(n: int, rng: np.random.Generator):
    """An n x n vertex sheet with awkward float32 coordinates and its triangles."""
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    coord = np.stack([a.ravel() * 0.37, b.ravel() * 0.29, np.sin(a.ravel() + b.ravel())], axis=1)
    coord = (coord + rng.normal(0, 1e-3, coord.shape) + np.array([1.2345678, -3.3, 0.5])).astype(np.float32)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            v = i * n + j
            faces += [[v, v + n, v + 1], [v + 1, v + n, v + n + 1]]
    return coord, np.asarray(faces, dtype=np.int64)


def rot_z(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = t
    return m


def make_scan(scans_dir: Path, scene_id: str, seed: int = 0, n: int = 12, labels: bool = True,
              sens: bool = True, axis: np.ndarray | None = None, color_hw=(48, 64), depth_hw=(24, 32)) -> dict:
    """Write one ScanNet scan folder; return what was written (the ground truth of the tests).

    The .sens has 5 frames: 0, 1 and 4 are valid, 2 has a -inf pose (lost tracking), 3 an empty
    depth image. labels.ply deliberately disagrees with the aggregation on a few vertices, so a
    test can tell which one segment20 came from.
    """
    rng = np.random.default_rng(seed)
    d = scans_dir / scene_id
    d.mkdir(parents=True)
    coord, faces = grid_mesh(n, rng)
    nv = len(coord)
    color = rng.integers(0, 256, (nv, 3), dtype=np.uint8)
    write_ply_mesh(d / f"{scene_id}_vh_clean_2.ply", coord, color, faces)
    axis = rot_z(30.0, (1.5, -2.0, 0.0)) if axis is None else axis
    write_info_txt(d / f"{scene_id}.txt", axis)
    truth = {"dir": d, "coord": coord, "color": color, "faces": faces, "axis": np.round(axis, 6)}
    if labels:
        seg_ids = np.array([3, 17, 42, 101, 230, 999])  # sparse, as ScanNet's are
        seg_indices = seg_ids[rng.integers(0, len(seg_ids), nv)]
        groups = [(0, "wall", [3, 17]), (1, "chair", [42]), (2, "lamp", [101]), (3, "mystery thing", [230]),
                  (4, "object", [999]), (5, "table", [17])]  # group 5 overrides segment 17 of group 0
        write_segs(d / f"{scene_id}_vh_clean_2.0.010000.segs.json", scene_id, seg_indices)
        write_aggregation(d / f"{scene_id}.aggregation.json", scene_id, groups)
        nyu40 = rng.choice([0, 1, 2, 5, 7, 13, 24, 39, 40, 33, 3], size=nv).astype(np.uint16)
        write_label_ply(d / f"{scene_id}_vh_clean_2.labels.ply", coord, nyu40, faces)
        truth.update(seg_indices=seg_indices, groups=groups, nyu40=nyu40)
    if sens:
        ch, cw = color_hw
        dh, dw = depth_hw
        kc = intrinsics4(cw * 0.9, cw * 0.9, cw / 2 - 0.5, ch / 2 - 0.5)
        kd = intrinsics4(dw * 0.9, dw * 0.9, dw / 2 - 0.5, dh / 2 - 0.5)
        frames = []
        for i in range(5):
            pose = rot_z(10.0 * i, (0.1 * i, 0.2, 1.5))
            depth = rng.integers(500, 4000, (dh, dw)).astype(np.uint16)
            depth[0, :3] = 0  # a few missing measurements
            if i == 2:
                pose = np.full((4, 4), -np.inf)
            if i == 3:
                depth[:] = 0
            rgb = rng.integers(0, 256, (ch, cw, 3), dtype=np.uint8)
            frames.append((rgb, depth, pose))
        write_sens(d / f"{scene_id}.sens", frames, kc, kd)
        truth.update(frames=frames, k_depth=kd[:3, :3], k_color=kc[:3, :3])
    return truth


def make_release(root: Path, train=("scene0000_00", "scene0000_01"), val=("scene0011_00",),
                 test=("scene0707_00",), sens: bool = True) -> dict:
    """A tiny ScanNet v2 release: scans/, scans_test/, the label table and the split lists."""
    truths = {}
    for i, s in enumerate([*train, *val]):
        truths[s] = make_scan(root / "scans", s, seed=i, sens=sens)
    for i, s in enumerate(test):
        truths[s] = make_scan(root / "scans_test", s, seed=100 + i, labels=False, sens=sens)
    write_label_tsv(root / "scannetv2-labels.combined.tsv", LABEL_ROWS)
    for split, ids in (("train", train), ("val", val), ("test", test)):
        (root / f"scannetv2_{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return truths
