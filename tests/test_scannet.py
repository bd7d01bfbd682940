"""ScanNet v2 ingestion from raw release files written here in the official formats (no real data).

Checks: the .sens round trip, exact coordinates / colours / labels, the 20- and 200-class
mappings, axis alignment, the frame skip policy, split handling, Pointcept's npy layout, the
data-efficient benchmark files and errors on bad input.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from scannet_format import (  # noqa: E402
    LABEL_ROWS,
    intrinsics4,
    make_release,
    rot_z,
    write_label_ply,
    write_label_tsv,
    write_sens,
)

from pretrain3d.cli import main  # noqa: E402
from pretrain3d.config import Params  # noqa: E402
from pretrain3d.data.dataset import SceneArrays  # noqa: E402
from pretrain3d.data.efficient import read_la_file, read_lr_file  # noqa: E402
from pretrain3d.data.pointcept_npy import link_pointcept_scenes  # noqa: E402
from pretrain3d.data.scannet import (  # noqa: E402
    ScanNetOptions,
    ingest_scannet_scene,
    preprocess_scannet,
    read_axis_alignment,
    read_label_table,
)
from pretrain3d.data.scannet200 import SCANNET200_NAMES  # noqa: E402
from pretrain3d.data.scene import list_scenes, load_processed_scene  # noqa: E402
from pretrain3d.data.sens import SensReader  # noqa: E402
from pretrain3d.errors import DataError  # noqa: E402
from pretrain3d.stages.finetune import apply_protocol  # noqa: E402

# The ScanNet-20 benchmark ids in order (written out here, independently of the library's table).
BENCH20 = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8, 10: 9, 11: 10, 12: 11, 14: 12, 16: 13, 24: 14,
           28: 15, 33: 16, 34: 17, 36: 18, 39: 19}


def expected_segment20(nyu40) -> np.ndarray:
    return np.array([BENCH20.get(int(v), -1) for v in nyu40], dtype=np.int64)


def expected_from_groups(truth) -> tuple[np.ndarray, np.ndarray]:
    """(segment200, instance) by a per-vertex loop: the last group holding the segment wins."""
    names = {raw: raw for _, raw, _ in LABEL_ROWS}
    seg200, inst = [], []
    for s in truth["seg_indices"]:
        hit = [g for g in truth["groups"] if s in g[2]]
        if not hit:
            seg200.append(-1)
            inst.append(-1)
            continue
        oid, label, _ = hit[-1]
        inst.append(oid)
        seg200.append(SCANNET200_NAMES.index(names[label]) if label in names else -1)
    return np.array(seg200), np.array(inst)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannet")
    return root, make_release(root)


# ----------------------------------------------------------------------------------- .sens


def test_sens_round_trip_and_step(tmp_path):
    rng = np.random.default_rng(3)
    frames = [(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), rng.integers(0, 9000, (4, 5)).astype(np.uint16),
               rot_z(7.0 * i, (i, 2.0, 3.0))) for i in range(7)]
    kc, kd = intrinsics4(9.0, 9.5, 3.5, 2.5), intrinsics4(5.0, 5.5, 2.0, 1.5)
    path = tmp_path / "s.sens"
    write_sens(path, frames, kc, kd, depth_shift=1000.0, color_compression=0, depth_compression=1)
    with SensReader(path) as r:
        h = r.header
        assert (h.color_width, h.color_height, h.depth_width, h.depth_height) == (8, 6, 5, 4)
        assert h.color_compression == "raw" and h.depth_compression == "zlib_ushort" and h.depth_shift == 1000.0
        assert h.num_frames == 7 and h.sensor_name == "StructureSensor"
        np.testing.assert_array_equal(h.intrinsic_depth, kd.astype(np.float32))
        got = list(r.frames(step=3))
        assert [f.index for f in got] == [0, 3, 6]
        for f in got:
            c, d, pose = frames[f.index]
            np.testing.assert_array_equal(r.decode_color(f), c)
            np.testing.assert_array_equal(r.decode_depth(f), d)
            np.testing.assert_array_equal(f.camera_to_world, pose.astype(np.float32))
            assert f.timestamp_color == 1000 * f.index


def test_sens_bad_files_name_the_file(tmp_path):
    path = tmp_path / "x.sens"
    path.write_bytes(struct.pack("<I", 3) + b"\0" * 50)
    with pytest.raises(DataError, match="version 3") as e:
        SensReader(path)
    assert e.value.path == path
    frames = [(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.uint16), np.eye(4))] * 3
    write_sens(path, frames, np.eye(4), np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # cut into the last frame
    with SensReader(path) as r, pytest.raises(DataError, match="truncated"):
        list(r.frames())


# ------------------------------------------------------------------------------ one scene


def test_scene_reproduces_vertices_colours_and_labels_exactly(release, tmp_path):
    root, truths = release
    t = truths["scene0000_00"]
    table = read_label_table(root / "scannetv2-labels.combined.tsv")
    stats = ingest_scannet_scene(t["dir"], tmp_path / "out", table, ScanNetOptions(frame_step=1))
    out = tmp_path / "out"
    coord = np.load(out / "coord.npy")
    assert coord.dtype == np.float32 and np.array_equal(coord, t["coord"])  # bit for bit
    color = np.load(out / "color.npy")
    assert color.dtype == np.uint8 and np.array_equal(color, t["color"])
    seg20 = np.load(out / "segment20.npy")
    np.testing.assert_array_equal(seg20, expected_segment20(t["nyu40"]))  # from labels.ply
    assert {-1, 0, 1, 4, 6, 14, 19, 16, 2} >= set(np.unique(seg20).tolist())
    seg200, inst = expected_from_groups(t)
    np.testing.assert_array_equal(np.load(out / "segment200.npy"), seg200)
    np.testing.assert_array_equal(np.load(out / "instance.npy"), inst)
    for name in ("segment20", "segment200", "instance"):
        assert np.load(out / f"{name}.npy").dtype == np.int64
    normal = np.load(out / "normal.npy")
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-5)
    assert not (out / "segment.npy").exists()  # Pointcept's layout: the loader picks segment20 / segment200
    meta = json.loads((out / "meta.json").read_text())
    np.testing.assert_allclose(meta["axis_alignment"], t["axis"], atol=1e-9)
    assert meta["axis_aligned"] is False and meta["unknown_categories"] == ["mystery thing"]
    assert meta["label_sources"]["segment20"].endswith(".labels.ply")
    assert stats["num_points"] == len(coord) and stats["ignored_points"] == int((seg20 < 0).sum())

    s20 = load_processed_scene(out, num_classes=20)
    assert s20.segment_file == "segment20.npy" and np.array_equal(s20.segment, seg20)
    s200 = load_processed_scene(out, num_classes=200, load_frames=False)
    assert s200.segment_file == "segment200.npy" and np.array_equal(s200.segment, seg200)


def test_frames_skip_policy_resize_and_intrinsics(release, tmp_path):
    _, truths = release
    t = truths["scene0000_01"]
    ingest_scannet_scene(t["dir"], tmp_path / "a", None, ScanNetOptions(frame_step=1))
    scene = load_processed_scene(tmp_path / "a", num_classes=20)
    assert scene.frames.ids == ["0", "1", "4"]
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())["frames"]
    skipped = {s["id"]: s["reason"] for s in meta["skipped"]}
    assert set(skipped) == {"2", "3"} and "pose" in skipped["2"] and "empty depth" in skipped["3"]
    assert meta["total"] == 5 and meta["exported"] == 3
    assert (scene.frames.width, scene.frames.height, scene.frames.depth_scale) == (32, 24, 1000.0)
    for i, fid in enumerate(scene.frames.ids):
        rgb, depth, pose = t["frames"][int(fid)]
        f = scene.frames[i]
        np.testing.assert_array_equal(f.intrinsics, t["k_depth"].astype(np.float32))  # depth K, colour resized
        np.testing.assert_array_equal(f.pose, pose.astype(np.float32))
        np.testing.assert_array_equal(np.asarray(Image.open(scene.frames.depth_path(i))), depth)
        np.testing.assert_allclose(scene.frames.read_depth(i)[5, 5], depth[5, 5] / 1000.0)
        col = scene.frames.read_color(i)
        assert col.shape == (24, 32, 3)
        # the colour of the resized image follows the source's (random noise: compare means)
        assert abs(float(col.mean()) - float(rgb.mean())) < 12
    ingest_scannet_scene(t["dir"], tmp_path / "b", None, ScanNetOptions(frame_step=2))
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())["frames"]
    assert [s["id"] for s in meta["skipped"]] == ["2"] and meta["exported"] == 2
    ingest_scannet_scene(t["dir"], tmp_path / "c", None, ScanNetOptions(export_frames=False))
    assert not (tmp_path / "c" / "frames.json").exists()


def test_axis_alignment_option_moves_points_normals_and_poses(release, tmp_path):
    _, truths = release
    t = truths["scene0011_00"]
    m = t["axis"]
    ingest_scannet_scene(t["dir"], tmp_path / "raw", None, ScanNetOptions(frame_step=1))
    ingest_scannet_scene(t["dir"], tmp_path / "al", None, ScanNetOptions(frame_step=1, axis_align=True))
    raw, al = (load_processed_scene(tmp_path / d, num_classes=20) for d in ("raw", "al"))
    np.testing.assert_array_equal(raw.coord, t["coord"])
    np.testing.assert_allclose(al.coord, t["coord"].astype(np.float64) @ m[:3, :3].T + m[:3, 3], atol=1e-5)
    np.testing.assert_allclose(al.normal, raw.normal @ m[:3, :3].T, atol=1e-5)
    for fr, fa in zip(raw.frames, al.frames):
        np.testing.assert_allclose(fa.pose, m @ fr.pose, atol=1e-9)
    np.testing.assert_array_equal(raw.segment, al.segment)
    meta = json.loads((tmp_path / "al" / "meta.json").read_text())
    assert meta["axis_aligned"] is True
    np.testing.assert_allclose(read_axis_alignment(t["dir"] / "scene0011_00.txt"), m)


def test_labels_from_aggregation_when_labels_ply_is_missing(release, tmp_path):
    root, truths = release
    t = truths["scene0000_00"]
    scan = tmp_path / "scans" / "scene0000_00"
    scan.mkdir(parents=True)
    for f in t["dir"].iterdir():
        if not f.name.endswith((".labels.ply", ".sens")):
            (scan / f.name).write_bytes(f.read_bytes())
    table = read_label_table(root / "scannetv2-labels.combined.tsv")
    ingest_scannet_scene(scan, tmp_path / "out", table)
    nyu_by_name = {raw: nyu for _, raw, nyu in LABEL_ROWS}
    _, inst = expected_from_groups(t)
    label_of = {oid: label for oid, label, _ in t["groups"]}
    want = [BENCH20.get(nyu_by_name.get(label_of[i], 0), -1) if i >= 0 else -1 for i in inst]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "segment20.npy"), want)


# ------------------------------------------------------------------------------ a release


def test_release_splits_manifest_cli_and_test_scenes(release, tmp_path, monkeypatch):
    root, truths = release
    monkeypatch.chdir(tmp_path)  # a user's folder: no params.yaml, so no tracking store is touched
    manifest = preprocess_scannet(root, tmp_path / "p", ScanNetOptions(frame_step=2, export_frames=False))
    assert manifest["splits"] == {"train": ["scene0000_00", "scene0000_01"], "val": ["scene0011_00"]}
    assert len(manifest["data_hash"]) == 64 and manifest["segment200"] is True
    assert [p.name for p in list_scenes(tmp_path / "p", "val")] == ["scene0011_00"]

    # the CLI, as a new user runs it: no params.yaml here, one test scene, then one more scene
    out = tmp_path / "cli"
    rc = main(["preprocess", "scannet", "--raw-root", str(root), "--out-root", str(out), "--scenes", "scene0707_00"])
    assert rc == 0
    test_scene = load_processed_scene(out / "test" / "scene0707_00", allow_unlabelled=True)
    assert (test_scene.segment == -1).all() and np.array_equal(test_scene.coord, truths["scene0707_00"]["coord"])
    with pytest.raises(DataError, match="label file not found"):
        load_processed_scene(out / "test" / "scene0707_00")
    assert main(["preprocess", "scannet", "--raw-root", str(root), "--out-root", str(out),
                 "--scenes", "scene0011_00"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"] == {"test": ["scene0707_00"], "val": ["scene0011_00"]}  # merged with the first run
    assert m["skipped_frames"]["val"] == 0 and m["frame_step"] == 20  # the default step keeps frame 0 only


def test_pointcept_npy_layout_is_accepted_as_is(tmp_path):
    src = tmp_path / "pointcept"
    rng = np.random.default_rng(0)
    for split, scene in (("train", "scene0000_00"), ("val", "scene0011_00"), ("test", "scene0707_00")):
        d = src / split / scene
        d.mkdir(parents=True)
        n = 50
        np.save(d / "coord.npy", rng.normal(size=(n, 3)).astype(np.float32))
        np.save(d / "color.npy", rng.integers(0, 256, (n, 3), dtype=np.uint8))
        np.save(d / "normal.npy", rng.normal(size=(n, 3)).astype(np.float32))
        if split != "test":
            np.save(d / "segment20.npy", rng.integers(-1, 20, n))
            np.save(d / "segment200.npy", rng.integers(-1, 200, n))
            np.save(d / "instance.npy", rng.integers(-1, 5, n))
    m = link_pointcept_scenes(src, tmp_path / "p", splits=("train", "val", "test"))
    assert m["splits"] == {"train": ["scene0000_00"], "val": ["scene0011_00"], "test": ["scene0707_00"]}
    s = load_processed_scene(tmp_path / "p" / "train" / "scene0000_00", num_classes=20)
    np.testing.assert_array_equal(s.segment, np.load(src / "train" / "scene0000_00" / "segment20.npy"))
    np.save(src / "val" / "scene0011_00" / "segment20.npy", np.full(50, 25))  # out of range
    with pytest.raises(DataError, match="segment20.npy"):
        link_pointcept_scenes(src, tmp_path / "q")


# ---------------------------------------------------------------------- data-efficient files


def _scenes() -> list[SceneArrays]:
    z = np.zeros((10, 3))
    return [SceneArrays(f"scene000{i}_00", z, z, z, np.arange(10) % 4 - 1) for i in range(3)]


def test_limited_annotation_and_reconstruction_files(tmp_path):
    la = tmp_path / "points20"
    torch.save({"scene0000_00": np.array([1, 5, 2]), "scene0001_00": torch.tensor([0, 9]),
                "scene0002_00": np.array([], dtype=np.int64)}, la)
    lr = tmp_path / "scannetv2_train_1.txt"
    lr.write_text("scene0002_00\nscene0000_00\n")
    cfg = Params.model_validate({"data": {"scannet": {"la_file": str(la), "lr_file": str(lr)}}})
    got = apply_protocol(cfg, "la", _scenes())
    full = np.arange(10) % 4 - 1
    np.testing.assert_array_equal(np.flatnonzero(got[0].segment != -1), [1, 2, 5])
    np.testing.assert_array_equal(got[0].segment[[1, 2, 5]], full[[1, 2, 5]])
    assert (got[2].segment == -1).all()
    assert [s.scene_id for s in apply_protocol(cfg, "lr", _scenes())] == ["scene0000_00", "scene0002_00"]
    assert read_lr_file(lr) == ["scene0002_00", "scene0000_00"]
    assert sorted(read_la_file(la)) == ["scene0000_00", "scene0001_00", "scene0002_00"]

    torch.save({"scene0000_00": np.array([1, 50])}, la)  # an index past the scene's points
    with pytest.raises(DataError, match="point index 50"):
        apply_protocol(cfg, "la", _scenes())
    torch.save({"other": np.array([1])}, la)
    with pytest.raises(DataError, match="scene0000_00") as e:
        apply_protocol(cfg, "la", _scenes())
    assert e.value.path == la
    lr.write_text("scene0099_00\n")
    with pytest.raises(DataError, match="not training scenes"):
        apply_protocol(cfg, "lr", _scenes())
    la.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="torch-saved"):
        read_la_file(la)


# --------------------------------------------------------------------------------- errors


def test_bad_raw_files_name_the_file_and_leave_nothing(release, tmp_path):
    root, truths = release
    src = truths["scene0000_00"]["dir"]
    scan = tmp_path / "scene0000_00"
    scan.mkdir()
    for f in src.iterdir():
        (scan / f.name).write_bytes(f.read_bytes())
    segs = scan / "scene0000_00_vh_clean_2.0.010000.segs.json"
    obj = json.loads(segs.read_text())
    obj["segIndices"] = obj["segIndices"][:-1]
    segs.write_text(json.dumps(obj))
    with pytest.raises(DataError, match="segIndices has") as e:
        ingest_scannet_scene(scan, tmp_path / "out", None)
    assert e.value.path == segs and not (tmp_path / "out").exists()

    bad_tsv = tmp_path / "labels.tsv"
    bad_tsv.write_text("id\tcategory\n1\twall\n")
    with pytest.raises(DataError, match="raw_category"):
        read_label_table(bad_tsv)
    write_label_tsv(bad_tsv, [(1, "wall", 77)])
    with pytest.raises(DataError, match="line 2"):
        read_label_table(bad_tsv)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no scans/"):
        preprocess_scannet(tmp_path / "empty", tmp_path / "o")


def test_raw_root_may_be_the_scans_folder_or_one_scan_and_odd_label_ids_map_to_ignore(release, tmp_path):
    root, truths = release
    by_scans = preprocess_scannet(root / "scans", tmp_path / "a", ScanNetOptions(export_frames=False),
                                  progress=False)
    assert by_scans["splits"]["val"] == ["scene0011_00"] and by_scans["segment200"] is True  # lists + tsv found
    one = preprocess_scannet(root / "scans" / "scene0011_00", tmp_path / "b", ScanNetOptions(export_frames=False),
                             progress=False)
    assert one["splits"] == {"val": ["scene0011_00"]}

    t = truths["scene0000_00"]
    scan = tmp_path / "odd" / "scene0000_00"
    scan.mkdir(parents=True)
    (scan / "scene0000_00_vh_clean_2.ply").write_bytes((t["dir"] / "scene0000_00_vh_clean_2.ply").read_bytes())
    nyu = t["nyu40"].copy()
    nyu[:4] = [41, 1000, 40, 39]
    write_label_ply(scan / "scene0000_00_vh_clean_2.labels.ply", t["coord"], nyu, t["faces"])
    ingest_scannet_scene(scan, tmp_path / "c", None, ScanNetOptions(export_frames=False))
    seg = np.load(tmp_path / "c" / "segment20.npy")
    assert seg[:4].tolist() == [-1, -1, -1, 19]
    np.testing.assert_array_equal(seg, expected_segment20(nyu))
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["non_nyu40_label_vertices"] == 2
