"""The procedural scene generator (pretrain3d.data.synthetic) and its raw ScanNet-like layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

o3d = pytest.importorskip("open3d")
from PIL import Image  # noqa: E402
from plyfile import PlyData  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from pretrain3d.data import synthetic as syn  # noqa: E402
from pretrain3d.data.labels import SCANNET20_NAMES, nyu40_to_scannet20  # noqa: E402
from pretrain3d.geometry.camera import (  # noqa: E402
    backproject_depth,
    check_pose,
    pixel_rays,
    project_points,
    visible_mask,
)


@pytest.fixture(scope="module")
def scene():
    return syn.generate_scene(syn.scene_seed(0, "train", 0), scene_id="synth_train_0000")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory, scene):
    root = tmp_path_factory.mktemp("raw")
    syn.write_raw_scene(root, scene.scene_id, scene)
    return root / "scans" / scene.scene_id


def _dist_to_triangles(scene, pts, tri):
    """Exact (float64) distance of each point to the plane of its triangle, plus its
    barycentric coordinates (all >= 0 inside the triangle)."""
    V = scene.vertices.astype(np.float64)
    a, b, c = (V[scene.triangles[tri, k]] for k in range(3))
    n = np.cross(b - a, c - a)
    area2 = np.einsum("ij,ij->i", n, n)
    q = pts - a
    plane = np.einsum("ij,ij->i", q, n) / np.sqrt(area2)
    w_b = np.einsum("ij,ij->i", np.cross(q, c - a), n) / area2
    w_c = np.einsum("ij,ij->i", np.cross(b - a, q), n) / area2
    return np.abs(plane), np.c_[1.0 - w_b - w_c, w_b, w_c]


def _frame_points(scene, f):
    pts, pix = backproject_depth(scene.frame_depth[f], scene.K, scene.poses[f])
    return pts, pix


# ------------------------------------------------------------------ point cloud


def test_point_cloud_basics(scene):
    N = len(scene.coord)
    assert 30_000 <= N <= 90_000
    for a, shape, dt in [
        (scene.coord, (N, 3), np.float32),
        (scene.coord_clean, (N, 3), np.float32),
        (scene.normal, (N, 3), np.float32),
        (scene.color, (N, 3), np.uint8),
        (scene.label, (N,), np.int64),
        (scene.instance, (N,), np.int64),
    ]:
        assert a.shape == shape and a.dtype == dt
    np.testing.assert_allclose(np.linalg.norm(scene.normal, axis=1), 1.0, atol=1e-5)
    Lx, Ly, H = scene.room_size
    c = scene.coord_clean
    assert c[:, 0].min() >= -1e-4 and c[:, 0].max() <= Lx + 1e-4
    assert c[:, 1].min() >= -1e-4 and c[:, 1].max() <= Ly + 1e-4
    assert c[:, 2].min() >= -1e-4 and c[:, 2].max() <= H + 1e-4
    # labels/instances agree with the object table
    obj_nyu = np.array([o["nyu40"] for o in scene.objects])
    np.testing.assert_array_equal(obj_nyu[scene.instance], scene.label)
    floor = scene.label == syn.NYU40["floor"]
    np.testing.assert_allclose(scene.normal[floor], np.tile([0, 0, 1], (floor.sum(), 1)), atol=1e-6)
    assert set(np.unique(scene.label)).issubset(set(syn.NYU40.values()))


def test_points_on_surfaces_and_noise_along_normal(scene):
    plane, bary = _dist_to_triangles(scene, scene.coord_clean.astype(np.float64), scene.point_tri)
    assert plane.max() < 2e-6  # float32 storage of coordinates
    assert bary.min() > -1e-4
    # Open3D's nearest-surface query agrees (it is float32 and slightly off on long
    # skinny triangles, hence the looser bound)
    dist = scene.raycaster().compute_distance(o3d.core.Tensor(scene.coord_clean)).numpy()
    assert dist.max() < 1e-3
    delta = (scene.coord - scene.coord_clean).astype(np.float64)
    along = np.einsum("ij,ij->i", delta, scene.normal)
    assert np.abs(delta - along[:, None] * scene.normal).max() < 1e-5  # purely along the normal
    assert 0.004 < along.std() < 0.006


def test_hidden_surfaces_are_not_sampled(scene):
    # no floor samples under objects that stand on the floor with a closed bottom
    floor = scene.coord_clean[scene.label == syn.NYU40["floor"]]
    checked = 0
    for o in scene.objects:
        if o["class"] not in ("bed", "refrigerator", "counter", "bathtub", "cabinet", "bookshelf"):
            continue
        lo, hi = np.array(o["aabb"][0]), np.array(o["aabb"][1])
        if lo[2] > 0.01:  # wall-hung
            continue
        # shrink the box past door fronts, handles and recessed plinths
        inner = np.all((floor[:, :2] > lo[:2] + 0.12) & (floor[:, :2] < hi[:2] - 0.12), axis=1)
        assert not inner.any(), o
        checked += 1
    assert checked >= 1
    # no samples behind the walls or under the floor
    assert (scene.coord_clean[:, 2] > -1e-4).all()


def test_colours_come_from_the_surface_colour_function(scene):
    clean = scene.surface_color(scene.coord_clean, scene.point_tri).astype(int)
    diff = scene.color.astype(int) - clean
    assert np.abs(diff).mean() < 4.0 and 1.0 < diff.std() < 5.0
    assert np.abs(diff).max() <= 20


# ------------------------------------------------------------------ RGB-D frames


def test_frames_shapes_and_consistency(scene):
    F, H, W = len(scene.poses), scene.height, scene.width
    assert (F, H, W) == (8, 120, 160)
    assert scene.frame_color.shape == (F, H, W, 3) and scene.frame_color.dtype == np.uint8
    assert scene.frame_depth.shape == (F, H, W) and scene.frame_depth.dtype == np.float32
    assert scene.frame_label.dtype == np.uint16
    np.testing.assert_allclose(scene.K, [[144, 0, 79.5], [0, 144, 59.5], [0, 0, 1]])
    miss = scene.frame_depth == 0
    np.testing.assert_array_equal(miss, scene.frame_label == 0)
    np.testing.assert_array_equal(miss, scene.frame_instance == -1)
    assert (scene.frame_color[miss] == 0).all()
    assert scene.frame_depth.max() <= syn.MAX_DEPTH_M
    assert (~miss).mean() > 0.8  # cameras look into the room
    Lx, Ly, H_room = scene.room_size
    for P in scene.poses:
        check_pose(P, "pose")
        x, y, z = P[:3, 3]
        assert 0 < x < Lx and 0 < y < Ly and 1.0 < z < H_room
        assert P[2, 2] < 0.2  # looking roughly horizontal / downwards (z forward is world -z-ish)


def test_backprojected_pixels_lie_on_true_surfaces(scene):
    rc = scene.raycaster()
    tree = cKDTree(scene.coord)
    agree, total = 0, 0
    for f in range(len(scene.poses)):
        pts, pix = _frame_points(scene, f)
        dist = rc.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy()
        assert dist.max() < 1e-3, f"frame {f}: back-projected pixel {dist.max() * 1000:.2f} mm off the surface"
        # and exactly on the triangle the ray hit
        view = scene.render(scene.K, scene.poses[f], scene.width, scene.height)
        tri = view["tri"][pix[:, 1], pix[:, 0]]
        plane, bary = _dist_to_triangles(scene, pts, tri)
        assert plane.max() < 1e-5 and bary.min() > -1e-3
        _, nn = tree.query(pts)
        lab = scene.frame_label[f][pix[:, 1], pix[:, 0]]
        agree += int((scene.label[nn] == lab).sum())
        total += len(pts)
    assert agree / total >= 0.95, agree / total


def test_pixel_colour_equals_colour_function(scene):
    for f in (0, 5):
        view = scene.render(scene.K, scene.poses[f], scene.width, scene.height)
        np.testing.assert_array_equal(view["color"], scene.frame_color[f])
        np.testing.assert_array_equal(view["depth"], scene.frame_depth[f])
        pts, pix = _frame_points(scene, f)
        tri = view["tri"][pix[:, 1], pix[:, 0]]
        assert (tri >= 0).all()
        np.testing.assert_array_equal(scene.tri_label[tri], scene.frame_label[f][pix[:, 1], pix[:, 0]])
        expect = scene.surface_color(pts, tri).astype(int)
        got = scene.frame_color[f][pix[:, 1], pix[:, 0]].astype(int)
        d = np.abs(expect - got).max(axis=1)
        # identical up to a rounding step; a hash-cell boundary may flip a rare pixel
        assert (d <= 1).mean() > 0.995


def test_depth_is_z_depth_not_ray_length(scene, raw_dir):
    f = 3
    P = scene.poses[f]
    dirs_c, pix = pixel_rays(scene.K, scene.width, scene.height)
    norm = np.linalg.norm(dirs_c, axis=1)
    unit_w = (dirs_c / norm[:, None]) @ P[:3, :3].T
    rays = np.c_[np.broadcast_to(P[:3, 3], unit_w.shape), unit_w].astype(np.float32)
    rng_len = scene.raycaster().cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    cos = 1.0 / norm  # angle between the pixel ray and the optical axis
    png = np.asarray(Image.open(raw_dir / "frames" / "depth" / f"{f}.png")).astype(np.float64) / 1000.0
    d_png = png[pix[:, 1], pix[:, 0]]
    hit = np.isfinite(rng_len)
    assert hit.mean() > 0.8
    np.testing.assert_allclose(d_png[hit], rng_len[hit] * cos[hit], atol=1e-3)
    # the corners differ from the ray length by centimetres: it really is z-depth
    corner = hit & (cos < 0.85)
    assert corner.any() and (np.abs(d_png[corner] - rng_len[corner]) > 0.05).all()


def test_visible_mask_on_generated_frames(scene):
    rc = scene.raycaster()
    pts = scene.coord_clean.astype(np.float64)
    for f in (1, 6):
        P = scene.poses[f]
        _, _, inside = project_points(pts, scene.K, P, scene.width, scene.height)
        c = P[:3, 3]
        ray = pts - c
        dist = np.linalg.norm(ray, axis=1)
        rays = np.c_[np.broadcast_to(c, ray.shape), ray / dist[:, None]].astype(np.float32)
        t = rc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        seen = inside & (t >= dist - 0.01)
        occluded = inside & (t < 0.7 * dist)  # another surface well in front of it
        assert occluded.sum() > 500
        mask, _ = visible_mask(pts, scene.frame_depth[f], scene.K, P)
        assert mask[seen].mean() > 0.98
        assert 1.0 - mask[occluded].mean() > 0.98


# ------------------------------------------------------------------ determinism


def _arrays(s):
    return {
        k: getattr(s, k)
        for k in (
            "coord", "coord_clean", "normal", "color", "label", "instance", "vertices", "triangles",
            "poses", "frame_color", "frame_depth", "frame_label", "frame_instance",
        )
    }


def test_same_seed_identical_different_seed_differs(scene):
    again = syn.generate_scene(syn.scene_seed(0, "train", 0), scene_id="synth_train_0000", nthreads=1)
    for k, a in _arrays(scene).items():
        b = getattr(again, k)
        assert a.dtype == b.dtype and np.array_equal(a, b), k
    other = syn.generate_scene(syn.scene_seed(1, "train", 0), num_frames=1)
    assert other.coord.shape != scene.coord.shape or not np.array_equal(other.coord, scene.coord)
    assert not np.array_equal(other.frame_color[0], scene.frame_color[0])
    # the point cloud does not depend on the camera settings (independent random streams)
    no_frames = syn.generate_scene(syn.scene_seed(0, "train", 0), num_frames=0)
    np.testing.assert_array_equal(no_frames.coord, scene.coord)
    np.testing.assert_array_equal(no_frames.color, scene.color)
    assert syn.scene_seed(0, "train", 3).entropy == syn.scene_seed(0, "train", 3).entropy
    assert syn.scene_seed(0, "train", 3).spawn_key == ()
    a = np.random.default_rng(syn.scene_seed(0, "train", 3)).random(4)
    b = np.random.default_rng(syn.scene_seed(0, "val", 3)).random(4)
    assert not np.array_equal(a, b)


def test_all_benchmark_classes_across_the_themes():
    seen = set()
    for i, theme in enumerate(syn.THEMES):
        s = syn.generate_scene(syn.scene_seed(0, "train", i), theme=theme, num_frames=0)
        assert s.theme == theme
        seen |= set(np.unique(nyu40_to_scannet20(s.label)).tolist())
    missing = [SCANNET20_NAMES[c] for c in range(20) if c not in seen]
    assert not missing, missing
    assert -1 in seen  # otherprop / pillows / books exercise the ignore label


# ------------------------------------------------------------------ raw layout


def test_raw_layout_round_trip(scene, raw_dir):
    sid = scene.scene_id
    ply = PlyData.read(str(raw_dir / f"{sid}_vh_clean_2.ply"))
    assert not ply.text and ply.byte_order == "<"
    v = ply["vertex"].data
    assert list(v.dtype.names) == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue", "alpha"]
    np.testing.assert_array_equal(np.c_[v["x"], v["y"], v["z"]], scene.coord)
    np.testing.assert_array_equal(np.c_[v["nx"], v["ny"], v["nz"]], scene.normal)
    np.testing.assert_array_equal(np.c_[v["red"], v["green"], v["blue"]], scene.color)
    assert (v["alpha"] == 255).all()
    assert "face" in ply and ply["face"].count == 0

    lab = PlyData.read(str(raw_dir / f"{sid}_vh_clean_2.labels.ply"))["vertex"]
    assert lab["label"].dtype == np.uint16
    np.testing.assert_array_equal(lab["label"], scene.label)
    np.testing.assert_array_equal(np.c_[lab["x"], lab["y"], lab["z"]], scene.coord)
    np.testing.assert_array_equal(np.c_[lab["red"], lab["green"], lab["blue"]], scene.color)
    inst = np.load(raw_dir / f"{sid}_instance.npy")
    assert inst.dtype == np.int64
    np.testing.assert_array_equal(inst, scene.instance)

    fr = raw_dir / "frames"
    K4 = np.loadtxt(fr / "intrinsic" / "intrinsic_depth.txt")
    assert K4.shape == (4, 4)
    np.testing.assert_allclose(K4[:3, :3], scene.K, atol=1e-8)
    F = len(scene.poses)
    assert sorted(p.name for p in (fr / "color").iterdir()) == sorted(f"{i}.jpg" for i in range(F))
    for i in range(F):
        P = np.loadtxt(fr / "pose" / f"{i}.txt")
        np.testing.assert_allclose(P, scene.poses[i], atol=1e-8)
        check_pose(P, fr / "pose" / f"{i}.txt")
        d = np.asarray(Image.open(fr / "depth" / f"{i}.png"))
        assert d.dtype == np.uint16
        np.testing.assert_allclose(d / 1000.0, scene.frame_depth[i], atol=0.0005 + 1e-6)
        np.testing.assert_array_equal(d == 0, scene.frame_depth[i] == 0)
        c = np.asarray(Image.open(fr / "color" / f"{i}.jpg"))
        assert c.shape == (scene.height, scene.width, 3)
        assert np.abs(c.astype(int) - scene.frame_color[i]).mean() < 4.0
        lab_img = np.asarray(Image.open(fr / "label" / f"{i}.png"))
        np.testing.assert_array_equal(lab_img, scene.frame_label[i])
    info = json.loads((raw_dir / "generator.json").read_text())
    assert info["num_points"] == len(scene.coord) and info["theme"] == scene.theme


def test_write_is_atomic(tmp_path, scene, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(RuntimeError):
        syn.write_raw_scene(tmp_path, "broken", scene)
    assert list((tmp_path / "scans").iterdir()) == []


def test_generate_dataset_is_worker_independent(tmp_path):
    kw = dict(num_train=3, num_val=2, seed=7, frames_per_scene=2, width=64, height=48, points_per_m2=60.0, progress=False)
    meta = syn.generate_dataset(tmp_path / "a", workers=1, **kw)
    syn.generate_dataset(tmp_path / "b", workers=2, **kw)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "splits" / "train.txt").read_text().split() == [f"synth_train_{i:04d}" for i in range(3)]
    assert (a / "splits" / "val.txt").read_text().split() == ["synth_val_0000", "synth_val_0001"]
    assert meta["class_names"] == list(SCANNET20_NAMES)
    assert json.loads((a / "meta.json").read_text()) == meta
    assert [meta["scenes"][f"synth_train_{i:04d}"]["theme"] for i in range(3)] == list(syn.THEMES[:3])
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert not [p for p in files_a if p.name.startswith(".")], "temporary files left behind"
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # resume: an unchanged request rewrites nothing
    ply = a / "scans" / "synth_val_0001" / "synth_val_0001_vh_clean_2.ply"
    mtime = ply.stat().st_mtime_ns
    syn.generate_dataset(a, workers=1, **kw)
    assert ply.stat().st_mtime_ns == mtime


def test_a_rescan_is_the_same_room_captured_again_with_a_few_objects_moved():
    seed = syn.scene_seed(3, "val", 1)
    a = syn.generate_scene(seed, num_frames=2, width=64, height=48, points_per_m2=150.0, nthreads=1)
    b = syn.generate_scene(syn.scene_seed(3, "val", 1), num_frames=2, width=64, height=48, points_per_m2=150.0,
                           nthreads=1, rescan=1)
    b2 = syn.generate_scene(syn.scene_seed(3, "val", 1), num_frames=2, width=64, height=48, points_per_m2=150.0,
                            nthreads=1, rescan=1)
    c = syn.generate_scene(syn.scene_seed(3, "val", 1), num_frames=2, width=64, height=48, points_per_m2=150.0,
                           nthreads=1, rescan=2)
    np.testing.assert_array_equal(b.coord, b2.coord)  # deterministic
    assert a.theme == b.theme and np.array_equal(a.room_size, b.room_size)
    assert [o["class"] for o in a.objects] == [o["class"] for o in b.objects]
    moved = [oa["class"] for oa, ob in zip(a.objects, b.objects) if oa["aabb"] != ob["aabb"]]
    assert 1 <= len(moved) <= 3 and set(moved) <= set(syn.MOVABLE), moved
    for oa, ob in zip(a.objects, b.objects):
        if oa["aabb"] != ob["aabb"]:  # a moved object stays inside the room
            lo, hi = np.array(ob["aabb"])
            assert np.all(lo[:2] > 0) and np.all(hi[:2] < b.room_size[:2])
    # a new capture: other camera path, other surface samples and noise
    assert np.abs(a.poses - b.poses).max() > 0.1
    assert a.coord.shape != b.coord.shape or not np.array_equal(a.coord, b.coord)
    assert not np.array_equal(b.coord, c.coord[: len(b.coord)]) or len(b.coord) != len(c.coord)


def test_generate_dataset_writes_rescans_as_their_own_split(tmp_path):
    kw = dict(num_train=1, num_val=2, seed=7, frames_per_scene=1, width=48, height=32, points_per_m2=40.0,
              progress=False)
    plain = syn.generate_dataset(tmp_path / "a", **kw)
    meta = syn.generate_dataset(tmp_path / "b", rescans=2, **kw)
    a, b = tmp_path / "a", tmp_path / "b"
    assert "rescans" not in plain and not (a / "splits" / "rescan.txt").exists()
    ids = ["synth_val_0000_r1", "synth_val_0000_r2", "synth_val_0001_r1", "synth_val_0001_r2"]
    assert (b / "splits" / "rescan.txt").read_text().split() == ids
    assert meta["rescan_of"] == {i: i[:-3] for i in ids} and set(ids) <= set(meta["scenes"])
    # train and val are the same files, byte for byte
    for rel in [p.relative_to(a) for p in (a / "scans").rglob("*") if p.is_file()]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # rescans dropped again: the split file goes too
    syn.generate_dataset(b, **kw)
    assert not (b / "splits" / "rescan.txt").exists()


def test_generate_and_preprocess_stages_carry_the_rescan_split(tmp_path):
    """data.synthetic.rescans reaches the generator, and preprocessing ingests the rescan split beside train/val."""
    from conftest import tiny_overrides

    from pretrain3d.config import validate_config
    from pretrain3d.data.scene import list_scenes
    from pretrain3d.stages.data import generate, preprocess

    over = tiny_overrides(tmp_path)
    over["data"]["synthetic"].update({"num_train": 1, "num_val": 1, "frames_per_scene": 1, "rescans": 1})
    over["tracking"]["enabled"] = False
    cfg = validate_config(over)
    generate(cfg)
    preprocess(cfg)
    assert [p.name for p in list_scenes(cfg.data.processed_root, "rescan")] == ["synth_val_0000_r1"]
    assert [p.name for p in list_scenes(cfg.data.processed_root, "val")] == ["synth_val_0000"]
