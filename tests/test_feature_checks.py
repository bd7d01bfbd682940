"""evaluation.feature_checks: cross-view pixel pairs, 2D consistency, pixel labels and probe,
co-embedding transfer, shared-basis PCA images (tiny procedural rooms, synthetic feature functions)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pretrain3d.data.labels import IGNORE_INDEX, nyu40_to_scannet20
from pretrain3d.evaluation import feature_checks as fc
from pretrain3d.geometry.camera import backproject_depth

SEED, W, H, FRAMES, DENSITY = 3, 64, 48, 6, 300.0
NUM_CLASSES = 20
VOXEL = 0.08  # params.yaml's grid_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fast and core-count independent on a shared CPU


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    from pretrain3d.data import synthetic as syn
    from pretrain3d.data.scannet_like import preprocess_scannet_like
    from pretrain3d.data.scene import load_split_scenes

    tmp = tmp_path_factory.mktemp("featchecks")
    syn.generate_dataset(tmp / "raw", num_train=2, num_val=1, seed=SEED, frames_per_scene=FRAMES, width=W, height=H,
                         points_per_m2=DENSITY, workers=1, progress=False)
    preprocess_scannet_like(tmp / "raw", tmp / "processed", workers=1, progress=False)
    train = load_split_scenes(tmp / "processed", "train")
    val = load_split_scenes(tmp / "processed", "val")
    return tmp, train, val


class FrameLookup:
    """Finds the (scene, frame) an image came from (by its bytes): lets a test feature function be a
    function of the 3D surface behind each pixel, although it only receives images."""

    def __init__(self, scenes):
        self.by_hash = {}
        for s in scenes:
            for k in range(len(s.frames)):
                self.by_hash[self._key(s.frames.read_color(k))] = (s, k)

    @staticmethod
    def _key(img: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()

    def __call__(self, img):
        return self.by_hash[self._key(img)]


def world_encoding_fn(scenes, dim: int = 32, seed: int = 0):
    """Sinusoidal encoding of each pixel's back-projected world point, at frame resolution (0 where
    the depth is invalid)."""
    look = FrameLookup(scenes)
    B = np.random.default_rng(seed).standard_normal((3, dim // 2)) * 0.8  # ~1 cycle per metre

    def fn(images):
        out = []
        for img in images:
            s, k = look(img)
            pts, pix = backproject_depth(s.frames.read_depth(k), s.frames[k].intrinsics, s.frames[k].pose)
            ph = 2 * np.pi * pts @ B
            f = np.zeros((dim, H, W), np.float32)
            f[:, pix[:, 1], pix[:, 0]] = np.concatenate([np.sin(ph), np.cos(ph)], axis=1).T
            out.append(torch.from_numpy(f))
        return torch.stack(out)

    return fn


def random_fn(dim: int = 32):
    def fn(images):
        g = torch.Generator().manual_seed(int(images.sum()) % (2**31))  # different per view
        return torch.randn((len(images), dim, H // 4, W // 4), generator=g)
    return fn


def constant_fn(images):
    return torch.ones((len(images), 16, 3, 4))


# ------------------------------------------------------------------------------- pairs


def test_matched_pairs_see_the_same_world_point(rooms):
    import open3d as o3d

    from pretrain3d.data import synthetic as syn

    _, train, _ = rooms
    scene = train[0]
    mesh = syn.generate_scene(syn.scene_seed(SEED, "train", 0), scene_id=scene.scene_id, num_frames=FRAMES, width=W,
                              height=H, points_per_m2=DENSITY, theme=syn.THEMES[0], nthreads=1)
    assert np.allclose(mesh.poses, np.stack([f.pose for f in scene.frames]))  # the same room
    pairs = fc.select_view_pairs(scene, min_overlap=0.2)
    assert len(pairs) >= 2 and all(i < j and 0.2 <= ov <= 1 for i, j, ov in pairs)
    stepped = fc.select_view_pairs(scene, min_overlap=0.0, frame_step=2)
    assert stepped and all(i % 2 == 0 and j % 2 == 0 for i, j, _ in stepped)
    for i, j, _ in pairs:
        m = fc.cross_view_pairs(scene, i, j)
        assert len(m) > 200
        uv_i, uv_j, xyz = m
        Ki, Ti = scene.frames[i].intrinsics, scene.frames[i].pose
        Kj, Tj = scene.frames[j].intrinsics, scene.frames[j].pose
        di, dj = scene.frames.read_depth(i), scene.frames.read_depth(j)
        # xyz is frame i's back-projected pixel uv_i
        pts, pix = backproject_depth(di, Ki, Ti)
        lut = {tuple(p): q for p, q in zip(pix.tolist(), pts)}
        np.testing.assert_allclose(np.stack([lut[tuple(p)] for p in uv_i.astype(int).tolist()]), xyz, atol=1e-9)
        # frame j's depth at its nearest pixel measures (about) the same point: within a voxel
        q = np.floor(uv_j + 0.5).astype(int)
        rays = np.c_[q, np.ones(len(q))] @ np.linalg.inv(Kj).T
        Xj = (rays * dj[q[:, 1], q[:, 0], None]) @ Tj[:3, :3].T + Tj[:3, 3]
        err = np.linalg.norm(Xj - xyz, axis=1)
        assert np.median(err) < 0.03 and np.percentile(err, 95) < VOXEL, (i, j, np.percentile(err, [50, 95]))
        # the exact ray from camera j to the point hits the mesh at the point: j really sees it
        for T in (Ti, Tj):
            c = T[:3, 3]
            d = xyz - c
            n = np.linalg.norm(d, axis=1)
            rays = np.c_[np.broadcast_to(c, d.shape), d / n[:, None]].astype(np.float32)
            t_hit = mesh.raycaster().cast_rays(o3d.core.Tensor(rays), nthreads=1)["t_hit"].numpy()
            miss = np.abs(t_hit - n)
            assert np.mean(miss < 0.02) > 0.97 and np.percentile(miss, 99) < VOXEL, (i, j, np.percentile(miss, 99))
    # max_pairs: a seeded random subset of the same pairs
    i, j, _ = pairs[0]
    full = fc.cross_view_pairs(scene, i, j)
    sub = fc.cross_view_pairs(scene, i, j, max_pairs=50, rng=np.random.default_rng(1))
    again = fc.cross_view_pairs(scene, i, j, max_pairs=50, rng=np.random.default_rng(1))
    assert len(sub) == 50
    np.testing.assert_array_equal(sub.uv_j, again.uv_j)
    rows = {tuple(r) for r in full.uv_i.tolist()}
    assert all(tuple(r) in rows for r in sub.uv_i.tolist())
    # a frame with itself: every candidate matches onto itself
    self_m = fc.cross_view_pairs(scene, i, i)
    np.testing.assert_allclose(self_m.uv_i, self_m.uv_j, atol=1e-6)


# ---------------------------------------------------------------------------- sampling


def test_sample_features_follows_the_cell_geometry():
    # a map whose channels are its cells' centres in input pixels: bilinear sampling is exact inside
    geo = {"stride": 14.0, "cell_offset": 6.5, "input_size": [56, 70], "feature_size": [4, 5]}
    ys, xs = np.mgrid[0:4, 0:5]
    fmap = torch.tensor(np.stack([6.5 + 14 * xs, 6.5 + 14 * ys]), dtype=torch.float32)
    uv = np.array([[20.0, 15.0], [31.5, 17.25], [40.0, 30.0]])
    got = fc.sample_features(fmap, uv, W, H, geo).numpy()
    want = np.stack([(uv[:, 0] + 0.5) * 70 / W - 0.5, (uv[:, 1] + 0.5) * 56 / H - 0.5], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # no geometry: the map's cells tile the frame; border pixels clamp (no zero padding)
    pix = torch.tensor(np.stack(np.mgrid[0:H, 0:W][::-1]), dtype=torch.float32)  # channels (u, v)
    uv = np.array([[0.0, 0.0], [10.0, 7.0], [W - 1.0, H - 1.0], [12.5, 3.25]])
    np.testing.assert_allclose(fc.sample_features(pix, uv, W, H, None).numpy(), uv, atol=1e-4)
    assert fc.sample_features(pix, np.zeros((0, 2)), W, H, None).shape == (0, 2)


# ------------------------------------------------------------------------- consistency


def test_consistency_margin_separates_surface_features_from_noise_and_collapse(rooms):
    _, train, val = rooms
    scenes = train + val
    enc = world_encoding_fn(scenes)
    good = fc.cross_view_consistency(enc, None, scenes, pairs_per_scene=3, rng=0, pixels_per_pair=256)
    assert good["view_pairs"] >= 4 and good["pixel_pairs"] > 500 and good["scenes"] == 3
    assert good["matched_cos"] > 0.95, good
    assert good["margin"] > 0.5, good
    again = fc.cross_view_consistency(enc, None, scenes, pairs_per_scene=3, rng=0, pixels_per_pair=256)
    assert again == good  # deterministic under the seed

    # the same encoding through a coarse patch map (teacher-like cell geometry): still consistent
    geo = {"stride": 4.0, "cell_offset": 1.5, "input_size": [H, W], "feature_size": [H // 4, W // 4]}
    pooled = fc.cross_view_consistency(lambda im: F.avg_pool2d(enc(im), 4), geo, scenes, pairs_per_scene=3, rng=0,
                                       pixels_per_pair=256)
    assert pooled["margin"] > 0.3, pooled

    noise = fc.cross_view_consistency(random_fn(), None, scenes, pairs_per_scene=3, rng=0, pixels_per_pair=256)
    assert abs(noise["margin"]) < 0.05 and abs(noise["matched_cos"]) < 0.1, noise
    const = fc.cross_view_consistency(constant_fn, None, scenes, pairs_per_scene=3, rng=0, pixels_per_pair=256)
    assert const["matched_cos"] == pytest.approx(1.0, abs=1e-5)
    assert const["margin"] == pytest.approx(0.0, abs=1e-6)
    # several functions at once: the very same pairs for all, each result as if computed alone
    many = fc.cross_view_consistency({"enc": enc, "const": constant_fn}, None, scenes, pairs_per_scene=3, rng=0,
                                     pixels_per_pair=256)
    assert many == {"enc": good, "const": const}


# ------------------------------------------------------------------------ pixel labels


def test_pixel_labels_agree_with_the_points_and_the_rendered_labels(rooms):
    tmp, train, _ = rooms
    scene = train[1]
    radius = 0.1
    seg = scene.segment
    agree, total = 0, 0
    for k in range(len(scene.frames)):
        lab = fc.pixel_labels(scene, k, radius)
        depth = scene.frames.read_depth(k)
        assert lab.shape == (H, W) and lab.dtype == np.int64
        assert np.all(lab[depth <= 0] == IGNORE_INDEX)
        assert lab.min() >= IGNORE_INDEX and lab.max() < NUM_CLASSES
        # a few pixels by brute force: the label of the nearest point within the radius
        pts, pix = backproject_depth(depth, scene.frames[k].intrinsics, scene.frames[k].pose)
        for p, (u, v) in zip(pts[::97], pix[::97]):
            d = np.linalg.norm(scene.coord - p, axis=1)
            want = seg[np.argmin(d)] if d.min() <= radius else IGNORE_INDEX
            assert lab[v, u] == want
        # against the renderer's own per-pixel labels (NYU40 -> ScanNet-20)
        rendered = np.asarray(Image.open(tmp / "raw" / "scans" / scene.scene_id / "frames" / "label"
                                         / f"{scene.frames[k].id}.png")).astype(np.int64)
        ref = nyu40_to_scannet20(rendered)
        both = (lab != IGNORE_INDEX) & (ref != IGNORE_INDEX)
        agree += int((lab[both] == ref[both]).sum())
        total += int(both.sum())
    assert total > 0.5 * len(scene.frames) * H * W
    assert agree / total > 0.9, agree / total


# ------------------------------------------------------------------------- pixel probe


def onehot_label_fn(scenes, radius: float):
    look = FrameLookup(scenes)

    def fn(images):
        out = []
        for img in images:
            s, k = look(img)
            lab = torch.from_numpy(fc.pixel_labels(s, k, radius))
            out.append(F.one_hot(lab + 1, NUM_CLASSES + 1).permute(2, 0, 1).float())
        return torch.stack(out)

    return fn


def test_pixel_probe_reads_labels_from_informative_features_only(rooms):
    _, train, val = rooms
    radius = 0.1
    kw = dict(num_classes=NUM_CLASSES, epochs=15, lr=0.05, seed=0, pixels_per_frame=256, radius=radius)
    oracle = fc.pixel_probe(onehot_label_fn(train + val, radius), None, train, val, **kw)
    assert oracle["miou"] > 0.95 and oracle["allacc"] > 0.98, oracle
    assert oracle["val_pixels"] > 1000 and oracle["train_pixels"] > 2000
    assert set(oracle) >= {"miou", "macc", "allacc", "iou_per_class", "acc_per_class"}
    assert len(oracle["iou_per_class"]) == NUM_CLASSES
    noise = fc.pixel_probe(random_fn(), {"stride": 4.0, "cell_offset": 1.5, "input_size": [H, W],
                                         "feature_size": [H // 4, W // 4]}, train, val, **kw)
    assert noise["miou"] < 0.2, noise
    again = fc.pixel_probe(onehot_label_fn(train + val, radius), None, train, val, **kw)
    assert again == oracle


# ------------------------------------------------------------------ co-embedding transfer


def _mixture(rng, means, n, noise=0.2):
    y = rng.integers(0, len(means), n)
    return means[y] + noise * rng.standard_normal((n, means.shape[1])), y


def test_co_embedding_transfer_needs_a_shared_embedding():
    rng = np.random.default_rng(0)
    k, d = 6, 16
    means = rng.standard_normal((k, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    x2d, y2d = _mixture(rng, means, 3000)
    x3d, y3d = _mixture(rng, means, 2000)
    y3d[:50] = IGNORE_INDEX  # ignored rows are left out
    same = fc.co_embedding_transfer(x2d, y2d, x3d, y3d, k, seed=0)
    assert same["in_domain_miou"] > 0.8, same
    assert abs(same["transfer_miou"] - same["in_domain_miou"]) < 0.05, same
    assert same["fit_rows"] + same["in_domain_rows"] == 3000 and same["transfer_rows"] == 1950
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rotated = fc.co_embedding_transfer(x2d, y2d, x3d @ q, y3d, k, seed=0)
    assert rotated["in_domain_miou"] == same["in_domain_miou"]  # the 2D side did not change
    assert rotated["transfer_miou"] < 0.35, rotated
    # a pure scale difference between the modalities changes nothing (L2 normalisation)
    scaled = fc.co_embedding_transfer(x2d, y2d, 7.0 * x3d, y3d, k, seed=0)
    assert scaled["transfer_miou"] == pytest.approx(same["transfer_miou"], abs=1e-6)
    both = fc.co_embedding_both_ways(x2d, y2d, x3d, y3d, k, seed=0)
    assert both["2d_to_3d"] == same and both["3d_to_2d"]["transfer_miou"] > 0.8


# ------------------------------------------------------------------------- PCA figures


def test_pca_rgb_shares_one_basis_and_the_png_is_written(tmp_path, rooms):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 5, 6)) * np.arange(1, 9)[:, None, None]
    b = rng.standard_normal((8, 4, 4)) * 3.0 + 1.0  # a different distribution and size
    b[:, 1, 2] = a[:, 3, 4]
    ia, ib = fc.pca_rgb([a, torch.from_numpy(b)])
    assert ia.shape == (5, 6, 3) and ib.shape == (4, 4, 3)
    assert ia.min() >= 0 and ia.max() <= 1 and ib.min() >= 0 and ib.max() <= 1
    np.testing.assert_allclose(ia[3, 4], ib[1, 2], atol=1e-6)  # same feature, same colour
    # fitted on b alone, the colours differ: the basis is shared only when fitted jointly
    assert not np.allclose(fc.pca_rgb([b])[0][1, 2], ib[1, 2], atol=1e-3)
    again = fc.pca_rgb([a, b])
    np.testing.assert_array_equal(again[0], ia)
    mask = np.ones((4, 4), bool)
    mask[0, 0] = False
    _, im = fc.pca_rgb([a, b], masks=[np.ones((5, 6), bool), mask])
    assert np.all(im[0, 0] == 0)

    _, train, _ = rooms
    frame = train[0].frames.read_color(0)
    enc = world_encoding_fn(train[:1])(frame[None])[0]
    pcs = fc.pca_rgb([F.avg_pool2d(enc[None], 4)[0], enc, enc + 0.01])
    png = tmp_path / "fig" / "pca.png"
    png.parent.mkdir()
    out = fc.plot_feature_pca_row([("frame", frame), ("teacher", pcs[0]), ("rendered 3D", pcs[1]),
                                   ("ConDense 2D", pcs[2])], png, suptitle="feature PCA")
    assert Path(out) == png and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["pca.png"]  # no temporary left behind
    with Image.open(png) as im:
        assert im.size[0] > 2 * im.size[1]


# ------------------------------------------------------------------------ fused teacher baseline


def test_fused_teacher_features_are_the_feature_of_the_points_own_position(rooms):
    """Multi-view averaging of a per-pixel encoding of the world point gives each seen point (about) the
    encoding of its own position; unseen points are counted and get the mean; no frames is an error."""
    import dataclasses

    from pretrain3d.retrieval.fused_teacher import fused_point_features

    _, train, _ = rooms
    scene = train[0]
    dim = 32
    enc = world_encoding_fn([scene], dim=dim)
    feats, seen = fused_point_features(enc, None, scene)
    assert feats.shape == (scene.num_points, dim) and seen.mean() > 0.5
    B = np.random.default_rng(0).standard_normal((3, dim // 2)) * 0.8  # world_encoding_fn's basis
    ph = 2 * np.pi * np.asarray(scene.coord, np.float64) @ B
    truth = np.concatenate([np.sin(ph), np.cos(ph)], axis=1)
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cos = (f * truth).sum(1)
    assert np.median(cos[seen]) > 0.95, np.median(cos[seen])
    np.testing.assert_allclose(feats[~seen], np.broadcast_to(feats[seen].mean(0), feats[~seen].shape), atol=1e-5)
    with pytest.raises(ValueError, match="no RGB-D frames"):
        fused_point_features(enc, None, dataclasses.replace(scene, frames=scene.frames.subset([])))
