"""Bad inputs fail with a DataError that names the file and says what is wrong with it,
and a failing ingest leaves no partially-written processed scene behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain3d.data.frames import FrameIndex, read_depth, read_pose
from pretrain3d.data.ply import read_ply_vertices, write_ply
from pretrain3d.data.scannet_like import (
    ingest_scannet_like_scene,
    preprocess_scannet_like,
    write_scannet_like_scene,
)
from pretrain3d.data.scene import load_processed_scene
from pretrain3d.errors import DataError

K = np.array([[20.0, 0.0, 15.5], [0.0, 20.0, 11.5], [0.0, 0.0, 1.0]])
SID = "scene0000_00"


def make_raw_scene(raw_root: Path, scene_id: str = SID, n: int = 400, num_frames: int = 2) -> Path:
    rng = np.random.default_rng(0)
    coord = np.concatenate([rng.uniform(0, 3, size=(n, 2)), np.zeros((n, 1))], axis=1)  # a floor
    color = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    nyu40 = rng.integers(0, 41, size=n)
    normal = np.tile([0.0, 0.0, 1.0], (n, 1))
    frames = []
    for i in range(num_frames):
        pose = np.eye(4)
        pose[:3, :3] = np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = [1.0 + 0.1 * i, 1.5, 2.0]
        frames.append((rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8),
                       np.full((24, 32), 2000, dtype=np.uint16), pose))
    return write_scannet_like_scene(raw_root / "scans" / scene_id, scene_id, coord, color, nyu40,
                                    normal=normal, frames=frames, intrinsics=K)


def ingest(tmp_path: Path, scan: Path, scene_id: str = SID) -> Path:
    out = tmp_path / "processed" / "train" / scene_id
    ingest_scannet_like_scene(scan, scene_id, out)
    return out


def assert_names(err: pytest.ExceptionInfo, path: Path, *phrases: str) -> str:
    msg = str(err.value)
    assert isinstance(err.value, DataError)
    assert msg.startswith(str(path)), msg
    for p in phrases:
        assert p in msg, f"{p!r} not in {msg!r}"
    print(msg)
    return msg


def assert_no_partial_output(tmp_path: Path) -> None:
    parent = tmp_path / "processed" / "train"
    leftovers = list(parent.iterdir()) if parent.exists() else []
    assert leftovers == [], f"partial output left behind: {leftovers}"


# --------------------------------------------------------------------------------------- PLY


def test_truncated_ply(tmp_path):
    scan = make_raw_scene(tmp_path / "raw")
    ply = scan / f"{SID}_vh_clean_2.ply"
    data = ply.read_bytes()
    ply.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_ply_vertices(ply)
    assert_names(e, ply, "truncated or corrupt")
    with pytest.raises(DataError) as e:
        ingest(tmp_path, scan)
    assert_names(e, ply, "truncated or corrupt")
    assert_no_partial_output(tmp_path)


@pytest.mark.parametrize(
    "content, phrase",
    [
        (bytes(range(256)) * 8, "not a PLY file"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex ten\nproperty float x\nend_header\n"
         + b"\x00" * 64, "bad PLY header"),
        (b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\nabc\n",
         "truncated or corrupt"),
    ],
    ids=["garbage", "bad-header-line", "bad-ascii-body"],
)
def test_corrupt_ply(tmp_path, content, phrase):
    ply = tmp_path / "bad.ply"
    ply.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_ply_vertices(ply)
    assert_names(e, ply, phrase)


def test_missing_ply_and_missing_properties(tmp_path):
    with pytest.raises(DataError) as e:
        read_ply_vertices(tmp_path / "nope.ply")
    assert_names(e, tmp_path / "nope.ply", "not found")
    ply = tmp_path / "xy.ply"
    write_ply(ply, {"x": np.zeros(3), "y": np.zeros(3)})
    with pytest.raises(DataError) as e:
        read_ply_vertices(ply)
    assert_names(e, ply, "lacks required properties", "'z'")


def test_non_finite_coordinates(tmp_path):
    ply = tmp_path / "nan.ply"
    write_ply(ply, {"x": np.array([0.0, np.nan, 1.0]), "y": np.zeros(3), "z": np.zeros(3)})
    with pytest.raises(DataError) as e:
        read_ply_vertices(ply)
    assert_names(e, ply, "non-finite", "vertex 1")


def test_mismatched_vertex_counts(tmp_path):
    scan = make_raw_scene(tmp_path / "raw", n=400)
    lab = scan / f"{SID}_vh_clean_2.labels.ply"
    write_ply(lab, {"x": np.zeros(399), "y": np.zeros(399), "z": np.zeros(399),
                    "label": np.ones(399, dtype=np.uint16)})
    with pytest.raises(DataError) as e:
        ingest(tmp_path, scan)
    assert_names(e, lab, "399", "400", "vertices")
    assert_no_partial_output(tmp_path)


# ------------------------------------------------------------------------------------ frames


def test_missing_frame_file(tmp_path):
    scan = make_raw_scene(tmp_path / "raw")
    missing = scan / "frames" / "depth" / "1.png"
    missing.unlink()
    with pytest.raises(DataError) as e:
        ingest(tmp_path, scan)
    assert_names(e, missing, "missing frame file")
    assert_no_partial_output(tmp_path)

    # The same in a processed scene's frames.json.
    scan2 = make_raw_scene(tmp_path / "raw2")
    out = ingest(tmp_path, scan2)
    gone = out / "frames" / "color" / "0.jpg"
    gone.unlink()
    with pytest.raises(DataError) as e:
        FrameIndex.load(out / "frames.json")
    assert_names(e, gone, "missing frame file")
    with pytest.raises(DataError) as e:
        read_depth(tmp_path / "nowhere.png")
    assert_names(e, tmp_path / "nowhere.png", "missing frame file")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_pose_with_nan_or_inf(tmp_path, bad):
    scan = make_raw_scene(tmp_path / "raw")
    pose = scan / "frames" / "pose" / "1.txt"
    m = np.loadtxt(pose)
    m[0, 3] = float(bad)
    np.savetxt(pose, m)
    with pytest.raises(DataError) as e:
        read_pose(pose)
    assert_names(e, pose, "NaN or inf")
    with pytest.raises(DataError) as e:
        ingest(tmp_path, scan)
    assert_names(e, pose, "NaN or inf")
    assert_no_partial_output(tmp_path)


def test_non_rigid_pose(tmp_path):
    pose = tmp_path / "p.txt"
    np.savetxt(pose, np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(DataError) as e:
        read_pose(pose)
    assert_names(e, pose, "not rigid")


def test_depth_of_the_wrong_size(tmp_path):
    scan = make_raw_scene(tmp_path / "raw")
    depth = scan / "frames" / "depth" / "1.png"
    Image.fromarray(np.full((12, 16), 2000, dtype=np.uint16)).save(depth)
    with pytest.raises(DataError) as e:
        ingest(tmp_path, scan)
    assert_names(e, depth, "16x12", "32x24")
    assert_no_partial_output(tmp_path)
    # Against its colour image directly.
    color = scan / "frames" / "color" / "1.jpg"
    with pytest.raises(DataError) as e:
        read_depth(depth, color_path=color)
    assert_names(e, depth, "16x12", "32x24", "1.jpg")


def test_unreadable_image(tmp_path):
    scan = make_raw_scene(tmp_path / "raw")
    color = scan / "frames" / "color" / "0.jpg"
    color.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(DataError) as e:
        ingest(tmp_path, scan)
    assert_names(e, color, "unreadable image")
    assert_no_partial_output(tmp_path)


# ------------------------------------------------------------------------------------ labels


def test_label_outside_the_class_range(tmp_path):
    scan = make_raw_scene(tmp_path / "raw")
    out = ingest(tmp_path, scan)
    seg = np.load(out / "segment.npy")
    seg[[3, 7]] = [25, 20]
    np.save(out / "segment.npy", seg)
    with pytest.raises(DataError) as e:
        load_processed_scene(out, num_classes=20)
    assert_names(e, out / "segment.npy", "outside the valid range [-1, 20)", "20, 25", "2 of 400")
    seg[[3, 7]] = [-2, 0]
    np.save(out / "segment.npy", seg)
    with pytest.raises(DataError) as e:
        load_processed_scene(out, num_classes=20)
    assert_names(e, out / "segment.npy", "-2")


def test_raw_nyu40_label_out_of_range(tmp_path):
    scan = make_raw_scene(tmp_path / "raw", n=50)
    lab = scan / f"{SID}_vh_clean_2.labels.ply"
    labels = np.zeros(50, dtype=np.uint16)
    labels[4] = 300
    write_ply(lab, {"x": np.zeros(50), "y": np.zeros(50), "z": np.zeros(50), "label": labels})
    with pytest.raises(DataError) as e:
        ingest(tmp_path, scan)
    assert_names(e, lab, "NYU40 labels outside [0, 40]", "300")
    assert_no_partial_output(tmp_path)


# ---------------------------------------------------------------------------- whole pipeline


def test_failing_preprocess_raises_the_data_error_and_writes_no_manifest(tmp_path):
    raw = tmp_path / "raw"
    make_raw_scene(raw, "scene0000_00")
    bad = make_raw_scene(raw, "scene0001_00")
    ply = bad / "scene0001_00_vh_clean_2.ply"
    ply.write_bytes(ply.read_bytes()[:300])
    (raw / "splits").mkdir()
    (raw / "splits" / "train.txt").write_text("scene0000_00\nscene0001_00\n")
    (raw / "splits" / "val.txt").write_text("")
    out = tmp_path / "processed"
    with pytest.raises(DataError) as e:
        preprocess_scannet_like(raw, out, workers=2, progress=False)
    assert_names(e, ply, "truncated or corrupt")
    assert not (out / "manifest.json").exists()
    assert not (out / "train" / "scene0001_00").exists()
    names = [p.name for p in (out / "train").iterdir()] if (out / "train").exists() else []
    assert all(not n.startswith(".") for n in names), names  # no temporaries
