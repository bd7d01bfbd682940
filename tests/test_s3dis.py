"""S3DIS ingestion from annotation files written here in the release's format (no real data).

Checks: exact coordinates / colours / classes / instances, the Area-5 split, the repair-or-skip
policy for malformed lines (the release's stray NUL byte in Area_5/hallway_6), errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from scannet_format import write_s3dis_object  # noqa: E402

from pretrain3d.cli import main  # noqa: E402
from pretrain3d.data.s3dis import S3DIS_NAMES, parse_object_file, preprocess_s3dis, repair_line  # noqa: E402
from pretrain3d.data.scene import list_scenes, load_processed_scene  # noqa: E402
from pretrain3d.errors import DataError  # noqa: E402

CLASSES = ["ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase",
           "board", "clutter"]  # the 13 S3DIS classes in label order, written out independently
# (area, room, [(object file stem, n points)])
ROOMS = [
    (1, "office_1", [("ceiling_1", 40), ("floor_1", 40), ("wall_1", 30), ("chair_2", 12), ("chair_10", 9)]),
    (1, "conferenceRoom_1", [("table_1", 25), ("board_1", 10), ("stairs_1", 8)]),
    (5, "hallway_6", [("ceiling_1", 50), ("floor_1", 30), ("door_1", 7)]),
]


def _room_points(rng, n):
    xyz = np.round(rng.uniform(-20, 40, (n, 3)), 3)
    rgb = rng.integers(0, 256, (n, 3))
    return xyz, rgb


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3dis") / "Stanford3dDataset_v1.2_Aligned_Version"
    rng = np.random.default_rng(0)
    truth = {}
    for area, room, objects in ROOMS:
        rd = root / f"Area_{area}" / room
        for stem, n in objects:
            xyz, rgb = _room_points(rng, n)
            write_s3dis_object(rd / "Annotations" / f"{stem}.txt", xyz, rgb)
            truth[(area, room, stem)] = (xyz, rgb)
        (rd / f"{room}.txt").write_text("whole-room file (not read)\n")
    (root / "Area_1" / "Area_1_alignmentAngle.txt").write_text("## global angle\noffice_1 0\n")
    # The release's corruption: a NUL byte in place of the space between two colour values.
    ceiling = root / "Area_5" / "hallway_6" / "Annotations" / "ceiling_1.txt"
    lines = ceiling.read_bytes().split(b"\n")
    x, y, z, r, g, b = lines[9].split()
    lines[9] = b" ".join([x, y, z, r]) + b"\x00" + b" ".join([g, b])
    lines[19] = lines[19].replace(b".", b".\x10", 1)  # a stray byte inside a number
    lines[29] = b"1.000 2.000 3.000 12"  # a short line: not recoverable
    ceiling.write_bytes(b"\n".join(lines))
    return root.parent, root, truth


def _expected_room(truth, area, room, objects, drop=()):
    order = sorted(stem for stem, _ in objects)  # files are concatenated in sorted name order
    xyz, rgb, seg, inst = [], [], [], []
    for obj_id, stem in enumerate(order):
        p, c = truth[(area, room, stem)]
        keep = np.ones(len(p), bool)
        if stem == "ceiling_1" and room == "hallway_6":
            keep[list(drop)] = False
        name = stem.split("_")[0]
        xyz.append(p[keep])
        rgb.append(c[keep])
        seg.append(np.full(keep.sum(), CLASSES.index(name if name in CLASSES else "clutter")))
        inst.append(np.full(keep.sum(), obj_id))
    return (np.concatenate(xyz).astype(np.float32), np.concatenate(rgb).astype(np.uint8), np.concatenate(seg),
            np.concatenate(inst))


def test_rooms_are_reproduced_exactly_and_area5_is_val(release, tmp_path):
    raw_parent, root, truth = release
    m = preprocess_s3dis(raw_parent, tmp_path / "p", workers=1, progress=False)  # the parent folder works too
    assert tuple(S3DIS_NAMES) == tuple(CLASSES) and m["class_names"] == CLASSES
    assert m["splits"] == {"train": ["Area_1_conferenceRoom_1", "Area_1_office_1"], "val": ["Area_5_hallway_6"]}
    for area, room, objects in ROOMS:
        split = "val" if area == 5 else "train"
        s = load_processed_scene(tmp_path / "p" / split / f"Area_{area}_{room}", num_classes=13)
        coord, color, seg, inst = _expected_room(truth, area, room, objects, drop=(29,))
        assert s.coord.dtype == np.float32 and np.array_equal(s.coord, coord)
        assert s.color.dtype == np.uint8 and np.array_equal(s.color, color)
        np.testing.assert_array_equal(s.segment, seg)
        np.testing.assert_array_equal(s.instance, inst)
        np.testing.assert_allclose(np.linalg.norm(s.normal, axis=1), 1.0, atol=1e-5)
    meta = json.loads((tmp_path / "p" / "train" / "Area_1_conferenceRoom_1" / "meta.json").read_text())
    assert meta["relabelled_as_clutter"] == {"Area_1/conferenceRoom_1/Annotations/stairs_1.txt": "clutter"}


def test_malformed_lines_repair_skip_and_error(release, tmp_path):
    raw_parent, root, truth = release
    m = preprocess_s3dis(root, tmp_path / "r", policy="repair", areas=[5], progress=False)
    issues = {i["line"]: i for i in m["line_issues"]}
    assert set(issues) == {10, 20, 30}
    assert issues[10]["action"] == "repaired" and issues[20]["action"] == "repaired"
    assert issues[30]["action"] == "skipped" and issues[10]["file"].endswith("hallway_6/Annotations/ceiling_1.txt")
    xyz, rgb = truth[(5, "hallway_6", "ceiling_1")]
    np.testing.assert_allclose(issues[10]["values"], [*xyz[9], *rgb[9]])  # 185\x00187 -> 185 187
    np.testing.assert_allclose(issues[20]["values"], [*xyz[19], *rgb[19]])  # 1.\x10234 -> 1.234
    s = load_processed_scene(tmp_path / "r" / "val" / "Area_5_hallway_6", num_classes=13)
    assert s.num_points == 50 + 30 + 7 - 1

    m = preprocess_s3dis(root, tmp_path / "s", policy="skip", areas=[5], progress=False)
    assert sorted(i["line"] for i in m["line_issues"] if i["action"] == "skipped") == [10, 20, 30]
    assert load_processed_scene(tmp_path / "s" / "val" / "Area_5_hallway_6").num_points == 50 + 30 + 7 - 3

    with pytest.raises(DataError, match="line 10") as e:
        preprocess_s3dis(root, tmp_path / "e", policy="error", areas=[5], progress=False)
    assert e.value.path.name == "ceiling_1.txt" and not list_scenes(tmp_path / "e", "val")


def test_line_repair_rules():
    assert repair_line(b"22.350 6.692 3.048 185\x00187 182") == [22.35, 6.692, 3.048, 185, 187, 182]
    assert repair_line(b"1.5 2.0 103.0\x100000 1 2 3") == [1.5, 2.0, 103.0, 1, 2, 3]
    assert repair_line(b"1.5 2.0 3.0 1 2") is None  # nothing stray to fix
    assert repair_line(b"1.5 2.0 3.0 1 2 3\x00 4") is None  # neither reading gives one valid point
    assert repair_line(b"1.5 2.0 3.0 1 2 300\x01") is None  # colour out of range


def test_val_area_option_cli_and_errors(release, tmp_path):
    raw_parent, root, _ = release
    out = tmp_path / "cli"
    cfg = tmp_path / "over.yaml"
    cfg.write_text("data:\n  dataset: s3dis\n  num_classes: 13\n  workers: 1\n  s3dis:\n    val_area: 1\n"
                   "tracking:\n  enabled: false\n")
    assert main(["preprocess", "s3dis", "--config", str(cfg), "--raw-root", str(root), "--out-root", str(out)]) == 0
    assert [p.name for p in list_scenes(out, "train")] == ["Area_5_hallway_6"]
    assert len(list_scenes(out, "val")) == 2

    empty = tmp_path / "Area_9" / "room_1" / "Annotations"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match="no annotation files"):
        preprocess_s3dis(tmp_path, tmp_path / "x", progress=False)
    with pytest.raises(DataError, match="no Area_"):
        preprocess_s3dis(tmp_path / "Area_9", tmp_path / "y", progress=False)


def test_parse_fast_path_matches_slow_path(tmp_path):
    rng = np.random.default_rng(1)
    xyz, rgb = _room_points(rng, 200)
    f = tmp_path / "chair_1.txt"
    write_s3dis_object(f, xyz, rgb)
    p1, c1, issues = parse_object_file(f)
    assert not issues and np.array_equal(p1, xyz) and np.array_equal(c1, rgb.astype(np.uint8))
    f.write_bytes(f.read_bytes().replace(b"\n", b"\r\n", 5) + b"1 2 3 4 5 6\x00\n")  # forces the slow path
    p2, c2, issues = parse_object_file(f)
    assert np.array_equal(p2[:200], xyz) and np.array_equal(c2[:200], c1)
    assert len(p2) == 201 and issues[0].action == "repaired"
