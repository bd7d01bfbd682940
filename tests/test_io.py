"""Round trips of the data formats: PLY, processed scenes, frames.json, hashes, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain3d.data import scene as scene_mod
from pretrain3d.data.frames import Frame, FrameIndex, read_depth
from pretrain3d.data.ply import read_ply_vertices, vertex_normals_from_faces, write_ply
from pretrain3d.data.scannet_like import (
    ingest_scannet_like_scene,
    preprocess_scannet_like,
    write_scannet_like_scene,
)
from pretrain3d.data.scene import (
    ProcessedScene,
    hash_directory,
    list_scenes,
    load_processed_scene,
    write_processed_scene,
)

K = np.array([[20.0, 0.0, 15.5], [0.0, 20.0, 11.5], [0.0, 0.0, 1.0]])
W, H = 32, 24


def grid_mesh(n: int = 10):
    """A floor (z=0) and a wall (x=0) as triangle grids, with NYU40 labels."""
    s = np.linspace(0.0, 2.0, n)
    a, b = np.meshgrid(s, s, indexing="ij")
    floor = np.stack([a.ravel(), b.ravel(), np.zeros(n * n)], axis=1)
    wall = np.stack([np.zeros(n * n), a.ravel(), b.ravel() + 0.1], axis=1)
    coord = np.concatenate([floor, wall])
    quads = []
    for off in (0, n * n):
        for i in range(n - 1):
            for j in range(n - 1):
                v = off + i * n + j
                quads += [[v, v + n, v + 1], [v + 1, v + n, v + n + 1]]
    faces = np.array(quads, dtype=np.int64)
    nyu40 = np.concatenate([np.full(n * n, 2), np.full(n * n, 1)])  # floor, wall
    nyu40[:3] = 0  # unannotated
    nyu40[3:5] = 13  # a NYU40 class that ScanNet-20 does not keep
    rng = np.random.default_rng(0)
    color = rng.integers(0, 256, size=(len(coord), 3), dtype=np.uint8)
    return coord, color, faces, nyu40


def top_down_frames(num: int = 3, size=(H, W)):
    """Cameras 2 m above the floor looking straight down: depth is 2000 mm everywhere."""
    rng = np.random.default_rng(1)
    frames = []
    for i in range(num):
        pose = np.eye(4)
        pose[:3, :3] = np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = [0.5 + 0.2 * i, 1.0, 2.0]
        color = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        depth = np.full(size, 2000, dtype=np.uint16)
        depth[0, 0] = 0
        frames.append((color, depth, pose))
    return frames


def make_raw_scene(raw_root: Path, scene_id: str, num_frames: int = 3, **kw) -> Path:
    coord, color, faces, nyu40 = grid_mesh()
    kw.setdefault("faces", faces)
    return write_scannet_like_scene(raw_root / "scans" / scene_id, scene_id, coord, color, nyu40,
                                    frames=top_down_frames(num_frames), intrinsics=K, **kw)


def make_scene(tmp: Path, n: int = 50, with_frames: bool = True) -> ProcessedScene:
    rng = np.random.default_rng(2)
    frames = None
    if with_frames:
        src = tmp / "src_frames"
        src.mkdir(parents=True)
        fl = []
        for i, (c, d, t) in enumerate(top_down_frames(2)):
            Image.fromarray(c).save(src / f"c{i}.jpg")
            Image.fromarray(d).save(src / f"d{i}.png")
            fl.append(Frame(str(i), f"c{i}.jpg", f"d{i}.png", K.copy(), t))
        frames = FrameIndex(fl, W, H, 1000.0, root=src)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return ProcessedScene(
        "scene0000_00",
        rng.uniform(-2, 2, size=(n, 3)).astype(np.float32),
        rng.integers(0, 256, size=(n, 3), dtype=np.uint8),
        normal,
        rng.integers(-1, 20, size=n).astype(np.int64),
        rng.integers(0, 5, size=n).astype(np.int64),
        frames,
    )


# ------------------------------------------------------------------------------------------ PLY


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_ply_round_trip(tmp_path, binary):
    coord, color, faces, nyu40 = grid_mesh(5)
    nrm = vertex_normals_from_faces(coord, faces)
    verts = {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2],
             "nx": nrm[:, 0], "ny": nrm[:, 1], "nz": nrm[:, 2],
             "red": color[:, 0], "green": color[:, 1], "blue": color[:, 2],
             "label": nyu40.astype(np.uint16)}
    path = tmp_path / "m.ply"
    write_ply(path, verts, faces=faces, binary=binary)
    head = path.read_bytes()[:60]
    assert (b"binary_little_endian" in head) == binary and (b"ascii" in head) == (not binary)
    got = read_ply_vertices(path)
    for k, v in verts.items():
        assert got[k].dtype == (np.float32 if k in "x y z nx ny nz".split() else
                                np.uint8 if k in ("red", "green", "blue") else np.uint16)
        np.testing.assert_allclose(got[k], v.astype(got[k].dtype), rtol=1e-6)
    np.testing.assert_array_equal(got["faces"], faces)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ply"]  # no temporary left
    # The file is standard PLY: plyfile's own (non-mapped) reader agrees.
    from plyfile import PlyData

    ref = PlyData.read(str(path), mmap=False)
    np.testing.assert_array_equal(ref["vertex"]["label"], nyu40)
    np.testing.assert_array_equal(np.stack(ref["face"]["vertex_indices"]), faces)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_ply_polygons_are_fan_triangulated(tmp_path, binary):
    coord = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0]], dtype=np.float32)
    path = tmp_path / "q.ply"
    write_ply(path, {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2]},
              faces=[[0, 1, 2, 3], [1, 4, 2]], binary=binary)
    got = read_ply_vertices(path)
    np.testing.assert_array_equal(np.sort(got["faces"], axis=0).shape, (3, 3))
    assert {tuple(f) for f in got["faces"]} == {(0, 1, 2), (0, 2, 3), (1, 4, 2)}
    n = vertex_normals_from_faces(coord, got["faces"])
    np.testing.assert_allclose(n, np.tile([0, 0, 1.0], (5, 1)), atol=1e-6)


# ------------------------------------------------------------------------------ processed scene


def test_processed_scene_round_trip(tmp_path):
    scene = make_scene(tmp_path)
    out = tmp_path / "processed" / "train" / "scene0000_00"
    write_processed_scene(out, scene, num_classes=20)
    assert sorted(p.name for p in out.iterdir()) == [
        "color.npy", "coord.npy", "frames", "frames.json", "instance.npy", "normal.npy", "segment.npy"]
    got = load_processed_scene(out, num_classes=20)
    assert got.scene_id == "scene0000_00" and got.path == out
    for name in ("coord", "color", "normal", "segment", "instance"):
        a, b = getattr(got, name), getattr(scene, name)
        assert a.dtype == b.dtype and a.dtype == {"coord": np.float32, "color": np.uint8, "normal": np.float32,
                                                   "segment": np.int64, "instance": np.int64}[name]
        np.testing.assert_array_equal(a, b)
    assert got.frames is not None and len(got.frames) == 2
    meta = json.loads((out / "frames.json").read_text())
    assert meta["depth_scale"] == 1000.0 and (meta["width"], meta["height"]) == (W, H)
    assert meta["frames"][1]["color"] == "frames/color/1.jpg"
    assert meta["frames"][1]["depth"] == "frames/depth/1.png"
    np.testing.assert_allclose(got.frames[1].pose, scene.frames[1].pose)
    d = got.frames.read_depth(1)
    assert d.dtype == np.float32 and d.shape == (H, W) and d[0, 0] == 0 and d[5, 5] == pytest.approx(2.0)
    assert got.frames.read_color(0).shape == (H, W, 3)
    assert list_scenes(tmp_path / "processed", "train") == [out]
    assert list_scenes(tmp_path / "processed", "val") == []
    # No frames: no frames.json, loads with frames None.
    out2 = tmp_path / "processed" / "train" / "scene0001_00"
    write_processed_scene(out2, make_scene(tmp_path / "b", with_frames=False))
    assert load_processed_scene(out2).frames is None


def test_frames_json_round_trip(tmp_path):
    scene = make_scene(tmp_path)
    idx = scene.frames
    path = idx.root / "frames.json"
    idx.save(path)
    got = FrameIndex.load(path)
    assert got == idx  # dataclass equality ignores root; arrays compared below
    assert got.root == path.parent
    for a, b in zip(got, idx):
        assert (a.id, a.color, a.depth) == (b.id, b.color, b.depth)
        np.testing.assert_array_equal(a.intrinsics, b.intrinsics)
        np.testing.assert_array_equal(a.pose, b.pose)
    assert got.ids == ["0", "1"] and got.color_path(0) == idx.root / "c0.jpg"


def test_pointcept_segment20_accepted(tmp_path):
    d = tmp_path / "scannet" / "train" / "scene0000_00"
    d.mkdir(parents=True)
    n = 40
    rng = np.random.default_rng(0)
    np.save(d / "coord.npy", rng.normal(size=(n, 3)).astype(np.float32))
    np.save(d / "color.npy", rng.integers(0, 256, size=(n, 3)).astype(np.uint8))
    np.save(d / "normal.npy", rng.normal(size=(n, 3)).astype(np.float32))
    seg20 = rng.integers(-1, 20, size=n).astype(np.int16)  # Pointcept stores int16
    np.save(d / "segment20.npy", seg20)
    np.save(d / "segment200.npy", rng.integers(-1, 200, size=n).astype(np.int16))
    np.save(d / "instance.npy", rng.integers(-1, 9, size=n).astype(np.int16))
    s = load_processed_scene(d, num_classes=20)
    assert s.segment.dtype == np.int64 and s.instance.dtype == np.int64
    np.testing.assert_array_equal(s.segment, seg20)
    s200 = load_processed_scene(d, num_classes=200)
    np.testing.assert_array_equal(s200.segment, np.load(d / "segment200.npy"))
    assert list_scenes(tmp_path / "scannet", "train") == [d]


def test_hash_changes_when_a_byte_changes(tmp_path):
    scene = make_scene(tmp_path)
    out = tmp_path / "p" / "s"
    write_processed_scene(out, scene)
    h0 = hash_directory(out)
    assert len(h0) == 64 and hash_directory(out) == h0
    f = out / "frames" / "depth" / "1.png"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    h1 = hash_directory(out)
    assert h1 != h0
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    assert hash_directory(out) == h0
    (out / ".coord.npy.abc.tmp").write_bytes(b"half-written")  # temporaries do not count
    assert hash_directory(out) == h0
    (out / "coord.npy").rename(out / "coord2.npy")  # names count, not just contents
    assert hash_directory(out) != h0


def test_atomic_write_leaves_nothing_behind(tmp_path, monkeypatch):
    scene = make_scene(tmp_path)
    parent = tmp_path / "processed" / "train"
    out = parent / "scene0000_00"
    calls = {"n": 0}
    real_copy = shutil.copyfile

    def failing_copy(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-way: some frames copied, arrays written
            raise OSError("disk full (simulated)")
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(scene_mod.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        write_processed_scene(out, scene)
    assert not out.exists()
    assert list(parent.iterdir()) == []  # no temporary folder either

    # An existing complete scene survives a failed rewrite untouched.
    monkeypatch.setattr(scene_mod.shutil, "copyfile", real_copy)
    write_processed_scene(out, scene)
    h = hash_directory(out)
    calls["n"] = 0
    monkeypatch.setattr(scene_mod.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError):
        write_processed_scene(out, make_scene(tmp_path / "other"))
    assert hash_directory(out) == h
    assert [p.name for p in parent.iterdir()] == ["scene0000_00"]


# ------------------------------------------------------------------------------ ScanNet-like


def test_ingest_scannet_like_scene(tmp_path):
    raw = tmp_path / "raw"
    inst = np.arange(200) % 7
    make_raw_scene(raw, "scene0000_00", num_frames=3, instance=inst)
    out = tmp_path / "processed" / "train" / "scene0000_00"
    s = ingest_scannet_like_scene(raw / "scans" / "scene0000_00", "scene0000_00", out, frame_step=2)
    got = load_processed_scene(out, num_classes=20)
    assert got.num_points == 200 and s.num_points == 200
    # NYU40 floor (2) -> 1, wall (1) -> 0, unannotated (0) and non-benchmark (13) -> -1.
    assert got.segment[:5].tolist() == [-1] * 5
    assert set(got.segment[5:100].tolist()) == {1} and set(got.segment[100:].tolist()) == {0}
    np.testing.assert_array_equal(got.instance, inst)
    np.testing.assert_allclose(np.linalg.norm(got.normal, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.abs(got.normal[:100, 2]), 1.0, atol=1e-5)  # floor normals vertical
    assert got.frames.ids == ["0", "2"]  # frame_step=2
    assert got.frames.read_depth(1)[3, 3] == pytest.approx(2.0)
    np.testing.assert_allclose(got.frames[0].intrinsics, K, atol=1e-6)


def test_ingest_without_normals_or_faces_estimates_them(tmp_path):
    raw = tmp_path / "raw"
    make_raw_scene(raw, "s0", num_frames=1, faces=None)
    out = tmp_path / "out" / "s0"
    ingest_scannet_like_scene(raw / "scans" / "s0", "s0", out)
    got = load_processed_scene(out, num_classes=20)
    c = got.coord
    away_floor = np.flatnonzero((np.arange(200) < 100) & (c[:, 0] > 0.7))  # away from the corner
    away_wall = np.flatnonzero((np.arange(200) >= 100) & (c[:, 2] > 0.8))
    np.testing.assert_allclose(got.normal[away_floor, 2], 1.0, atol=1e-4)  # floor, facing the room
    np.testing.assert_allclose(got.normal[away_wall, 0], 1.0, atol=1e-4)  # wall (x = 0), facing +x


def test_preprocess_scannet_like_manifest(tmp_path):
    raw = tmp_path / "raw"
    for sid in ("scene0000_00", "scene0001_00", "scene0002_00"):
        make_raw_scene(raw, sid, num_frames=2)
    (raw / "splits").mkdir()
    (raw / "splits" / "train.txt").write_text("scene0000_00\nscene0001_00\n")
    (raw / "splits" / "val.txt").write_text("scene0002_00\n")
    out = tmp_path / "processed"
    m = preprocess_scannet_like(raw, out, workers=2, progress=False)
    assert m["splits"] == {"train": ["scene0000_00", "scene0001_00"], "val": ["scene0002_00"]}
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["scenes"]["val"]["scene0002_00"] == {"num_points": 200, "num_frames": 2, "ignored_points": 5}
    assert m["class_histogram"]["train"][:2] == [200, 190] and sum(m["class_histogram"]["train"]) == 390
    assert [p.name for p in list_scenes(out, "train")] == ["scene0000_00", "scene0001_00"]
    # Same inputs -> same data hash, whatever the number of workers; manifest excluded from it.
    m2 = preprocess_scannet_like(raw, tmp_path / "processed2", workers=1, progress=False)
    assert m2["data_hash"] == m["data_hash"]


def test_depth_invalid_values(tmp_path):
    d = np.array([[0, 1000], [65535, 2500]], dtype=np.uint16)
    Image.fromarray(d).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_depth(tmp_path / "d.png"), [[0, 1.0], [0, 2.5]])


def test_normal_backends_agree():
    """The default (scipy PCA) estimator matches Open3D's where Open3D is installed."""
    from pretrain3d.data.scene import estimate_normals

    pytest.importorskip("open3d", reason="open3d not importable here")
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 2, size=(2000, 2))
    pts = np.concatenate([np.c_[a, 0.002 * rng.normal(size=2000)],  # floor
                          np.c_[0.002 * rng.normal(size=2000), a]])  # wall
    ns = estimate_normals(pts, k=16, backend="scipy")
    no = estimate_normals(pts, k=16, backend="open3d")
    np.testing.assert_array_equal(np.sign(np.sum(ns * no, axis=1)), 1)  # same orientation rule
    assert np.median(np.abs(np.sum(ns * no, axis=1))) > 0.999
