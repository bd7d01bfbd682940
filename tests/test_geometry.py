"""Camera math (pretrain3d.geometry.camera) and the ScanNet-20 label tables."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pretrain3d.data.labels import (
    IGNORE_INDEX,
    SCANNET20_NAMES,
    SCANNET20_NYU40_IDS,
    SCANNET20_PALETTE,
    colorize,
    nyu40_to_scannet20,
)
from pretrain3d.errors import DataError
from pretrain3d.geometry.camera import (
    backproject_depth,
    check_pose,
    invert_pose,
    pose_problem,
    project_points,
    scale_intrinsics,
    transform_points,
    visible_mask,
)


def _rot(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _pose(rng) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = _rot(rng)
    T[:3, 3] = rng.uniform(-3, 3, 3)
    return T


K0 = np.array([[525.0, 0.0, 319.5], [0.0, 523.0, 239.5], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------- poses


def test_invert_and_transform():
    rng = np.random.default_rng(0)
    T = _pose(rng)
    np.testing.assert_allclose(invert_pose(T) @ T, np.eye(4), atol=1e-12)
    pts = rng.normal(size=(50, 3))
    back = transform_points(invert_pose(T), transform_points(T, pts))
    np.testing.assert_allclose(back, pts, atol=1e-12)
    np.testing.assert_allclose(transform_points(T, pts), (T @ np.c_[pts, np.ones(50)].T).T[:, :3], atol=1e-12)


def test_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    T = _pose(rng)
    pts = rng.normal(size=(20, 3)) + [0, 0, 6]
    Tt, pt = torch.tensor(T), torch.tensor(pts)
    np.testing.assert_allclose(transform_points(Tt, pt).numpy(), transform_points(T, pts), atol=1e-12)
    np.testing.assert_allclose(invert_pose(Tt).numpy(), invert_pose(T), atol=1e-12)
    uv_n, z_n, in_n = project_points(pts, K0, T, 640, 480)
    uv_t, z_t, in_t = project_points(pt, torch.tensor(K0), Tt, 640, 480)
    np.testing.assert_allclose(uv_t.numpy(), uv_n, atol=1e-9)
    np.testing.assert_allclose(z_t.numpy(), z_n, atol=1e-12)
    assert np.array_equal(in_t.numpy(), in_n)
    np.testing.assert_allclose(scale_intrinsics(torch.tensor(K0), 0.5, 0.25).numpy(), scale_intrinsics(K0, 0.5, 0.25))


def test_check_pose_accepts_rigid():
    T = _pose(np.random.default_rng(2))
    out = check_pose(T, "pose/0.txt")
    assert out.dtype == np.float64 and np.array_equal(out, T)
    assert pose_problem(T) is None


@pytest.mark.parametrize(
    "break_it, words",
    [
        (lambda T: T.__setitem__((0, 3), np.nan), "NaN"),
        (lambda T: T.__setitem__((1, 1), -np.inf), "inf"),
        (lambda T: T.__setitem__(slice(0, 3), T[:3] * [[1.1], [1.1], [1.1]]), "rigid"),  # scaled
        (lambda T: T.__setitem__((slice(0, 3), 0), -T[:3, 0]), "rigid"),  # reflection, det = -1
        (lambda T: T.__setitem__((0, 1), T[0, 1] + 0.05), "rigid|orthonormal"),  # shear
        (lambda T: T.__setitem__((3, 0), 0.5), "bottom row"),
    ],
)
def test_check_pose_rejects(break_it, words):
    T = _pose(np.random.default_rng(3))
    break_it(T)
    with pytest.raises(DataError) as ei:
        check_pose(T, "scans/x/frames/pose/7.txt")
    msg = str(ei.value)
    assert msg.startswith("scans/x/frames/pose/7.txt:")
    assert re.search(words, msg), msg
    assert pose_problem(T) is not None


def test_check_pose_shape_and_orthonormality():
    with pytest.raises(DataError):
        check_pose(np.eye(3), "p.txt")
    T = np.eye(4)
    T[:3, :3] = np.diag([2.0, 0.5, 1.0])  # det 1 but not a rotation
    with pytest.raises(DataError, match="orthonormal"):
        check_pose(T, "p.txt")


# ------------------------------------------------------------ back-/projection


def _random_depth(rng, H=48, W=64):
    d = rng.uniform(0.3, 8.0, size=(H, W))
    d[rng.random((H, W)) < 0.1] = 0.0
    d[rng.random((H, W)) < 0.02] = np.nan
    d[rng.random((H, W)) < 0.02] = np.inf
    d[0, 0] = -1.0
    return d


@pytest.mark.parametrize("skew", [0.0, 1.5])
def test_backproject_project_round_trip(skew):
    rng = np.random.default_rng(4)
    H, W = 48, 64
    K = np.array([[58.0, skew, 31.2], [0.0, 57.0, 24.7], [0.0, 0.0, 1.0]])
    depth = _random_depth(rng, H, W)
    T = _pose(rng)
    pts, pix = backproject_depth(depth, K, T)
    valid = np.isfinite(depth) & (depth > 0)
    assert len(pts) == valid.sum() == len(pix)
    assert valid[pix[:, 1], pix[:, 0]].all()
    uv, z, inside = project_points(pts, K, T, W, H)
    assert inside.all()
    assert np.abs(uv - pix).max() < 1e-4
    np.testing.assert_allclose(z, depth[pix[:, 1], pix[:, 0]], rtol=1e-10)
    # camera frame: X = d K^-1 [u v 1]
    pc, pixc = backproject_depth(depth, K)
    np.testing.assert_allclose(pc[:, 2], depth[pixc[:, 1], pixc[:, 0]])
    np.testing.assert_allclose(transform_points(T, pc), pts, atol=1e-9)


def test_backproject_convention_and_stride():
    K = np.array([[100.0, 0.0, 10.0], [0.0, 100.0, 5.0], [0.0, 0.0, 1.0]])
    depth = np.full((11, 21), 2.0)
    pts, pix = backproject_depth(depth, K)
    # the pixel with indices (u=10, v=5) sits on the optical axis: no half-pixel offset
    i = np.flatnonzero((pix[:, 0] == 10) & (pix[:, 1] == 5))[0]
    np.testing.assert_allclose(pts[i], [0.0, 0.0, 2.0])
    # u grows to the right (+x), v grows downwards (+y)
    j = np.flatnonzero((pix[:, 0] == 20) & (pix[:, 1] == 10))[0]
    np.testing.assert_allclose(pts[j], [2.0 * 10 / 100, 2.0 * 5 / 100, 2.0])
    pts2, pix2 = backproject_depth(depth, K, stride=4)
    assert set(np.unique(pix2[:, 0])) == {0, 4, 8, 12, 16, 20}
    assert set(np.unique(pix2[:, 1])) == {0, 4, 8}
    assert len(pts2) == 18
    with pytest.raises(ValueError):
        backproject_depth(depth[None], K)


def test_project_in_image_and_margin():
    K = np.array([[100.0, 0.0, 49.5], [0.0, 100.0, 39.5], [0.0, 0.0, 1.0]])
    W, H = 100, 80
    uv_target = np.array([[0.0, 0.0], [99.0, 79.0], [-0.49, 10.0], [99.49, 10.0], [-0.51, 10], [99.51, 10], [2.0, 2.0], [50, 40]])
    z = 3.0
    pc = np.c_[(uv_target[:, 0] - 49.5) / 100 * z, (uv_target[:, 1] - 39.5) / 100 * z, np.full(len(uv_target), z)]
    uv, zz, inside = project_points(pc, K, np.eye(4), W, H)
    np.testing.assert_allclose(uv, uv_target, atol=1e-9)
    assert inside.tolist() == [True, True, True, True, False, False, True, True]
    _, _, inside3 = project_points(pc, K, np.eye(4), W, H, margin=3)
    assert inside3.tolist() == [False, False, False, False, False, False, False, True]
    # behind the camera: never in the image, even if it "projects" inside
    _, zb, inb = project_points(-pc, K, np.eye(4), W, H)
    assert (zb < 0).all() and not inb.any()
    # exactly on the camera plane: no division by zero
    uv0, _, in0 = project_points(np.array([[0.1, 0.1, 0.0]]), K, np.eye(4), W, H)
    assert np.isfinite(uv0).all() and not in0.any()


def test_scale_intrinsics_matches_resampling():
    K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(scale_intrinsics(K, 1.0, 1.0), K)
    K2 = scale_intrinsics(K, 0.25, 0.5)  # 640x480 -> 160x240
    # image edges map to image edges (-0.5 -> -0.5, W-0.5 -> W'-0.5)
    p = np.array([[0.3, -0.2, 2.0], [-1.0, 0.7, 3.0]])
    uv1, _, _ = project_points(p, K, None, 640, 480)
    uv2, _, _ = project_points(p, K2, None, 160, 240)
    np.testing.assert_allclose(uv2[:, 0], (uv1[:, 0] + 0.5) * 0.25 - 0.5)
    np.testing.assert_allclose(uv2[:, 1], (uv1[:, 1] + 0.5) * 0.5 - 0.5)
    np.testing.assert_allclose(K2[:2, 2], [79.5, 119.5])  # the centre stays the centre
    np.testing.assert_allclose(scale_intrinsics(K2, 4.0, 2.0), K)


# ------------------------------------------------------------------ visibility


def _two_plane_depth(W=80, H=60):
    """Camera at the origin looking +z: a square occluder at z=2 (|x|,|y| <= 0.4) in front
    of a wall at z=4. Returns (depth, K)."""
    K = np.array([[60.0, 0.0, (W - 1) / 2], [0.0, 60.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
    vs, us = np.mgrid[0:H, 0:W]
    x = (us - K[0, 2]) / K[0, 0]
    y = (vs - K[1, 2]) / K[1, 1]
    occl = (np.abs(x * 2.0) <= 0.4) & (np.abs(y * 2.0) <= 0.4)
    depth = np.where(occl, 2.0, 4.0)
    return depth, K


def test_visible_mask_rejects_occluded_points():
    depth, K = _two_plane_depth()
    H, W = depth.shape
    rng = np.random.default_rng(5)
    # points on the far wall: behind the occluder (shadow |x|,|y| <= 0.8 at z=4) or not
    far = np.c_[rng.uniform(-2.0, 2.0, 3000), rng.uniform(-1.5, 1.5, 3000), np.full(3000, 4.0)]
    near = np.c_[rng.uniform(-0.38, 0.38, 500), rng.uniform(-0.38, 0.38, 500), np.full(500, 2.0)]
    pts = np.concatenate([far, near])
    T = _pose(rng)  # move the whole rig: the world pose must not change the answer
    pw = transform_points(T, pts)
    mask, uv = visible_mask(pw, depth, K, T, rel_thresh=0.1)
    _, _, inside = project_points(pw, K, T, W, H)
    shadow = (np.abs(far[:, 0]) < 0.78) & (np.abs(far[:, 1]) < 0.78)
    clear = (np.abs(far[:, 0]) > 0.82) | (np.abs(far[:, 1]) > 0.82)
    f_mask, f_in = mask[:3000], inside[:3000]
    assert not f_mask[shadow].any(), "points hidden behind the occluder must not be visible"
    assert f_mask[clear & f_in].all()
    assert not f_mask[~f_in].any()
    assert mask[3000:].all(), "the occluder itself is visible"
    np.testing.assert_array_equal(uv[mask], np.floor(project_points(pw, K, T, W, H)[0][mask] + 0.5).astype(int))
    # with an absolute threshold of 2.5 m the depth test no longer separates the two planes
    mask_abs, _ = visible_mask(pw, depth, K, T, abs_thresh=2.5)
    assert mask_abs[:3000][shadow & f_in].all()
    # a tight absolute threshold keeps only on-surface points
    mask_tight, _ = visible_mask(pw + 0.05 * rng.normal(size=pw.shape), depth, K, T, abs_thresh=0.01)
    assert mask_tight.mean() < 0.5


def test_visible_mask_invalid_depth_and_margin():
    depth, K = _two_plane_depth()
    pts = np.array([[0.0, 0.0, 2.0], [1.5, 0.0, 4.0]])
    m, uv = visible_mask(pts, depth, K, np.eye(4))
    assert m.tolist() == [True, True]
    d2 = depth.copy()
    d2[uv[0, 1], uv[0, 0]] = 0.0
    d2[uv[1, 1], uv[1, 0]] = np.nan
    m2, _ = visible_mask(pts, d2, K, np.eye(4))
    assert m2.tolist() == [False, False]
    # margin: the second point projects onto column 62 of 80; a margin of 18 excludes it
    assert uv[1, 0] == 62
    m3, _ = visible_mask(pts, depth, K, np.eye(4), margin=18)
    assert m3.tolist() == [True, False]
    m4, _ = visible_mask(pts, depth, K, np.eye(4), margin=17)
    assert m4.tolist() == [True, True]


# ------------------------------------------------------------------------ labels


def test_scannet20_tables():
    assert len(SCANNET20_NAMES) == len(SCANNET20_NYU40_IDS) == 20
    assert SCANNET20_NAMES[0] == "wall" and SCANNET20_NAMES[-1] == "otherfurniture"
    assert SCANNET20_NAMES[15] == "shower curtain" and SCANNET20_NYU40_IDS[15] == 28
    assert SCANNET20_PALETTE.shape == (20, 3) and SCANNET20_PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in SCANNET20_PALETTE}) == 20
    assert IGNORE_INDEX == -1


def test_nyu40_to_scannet20():
    ids = np.array(SCANNET20_NYU40_IDS)
    np.testing.assert_array_equal(nyu40_to_scannet20(ids), np.arange(20))
    others = np.array([0, 13, 15, 17, 18, 23, 40, 41, 255, -3, 65535])
    out = nyu40_to_scannet20(others)
    assert out.dtype == np.int64 and (out == -1).all()
    lab = np.array([[1, 2], [40, 39]], dtype=np.uint16)
    np.testing.assert_array_equal(nyu40_to_scannet20(lab), [[0, 1], [-1, 19]])
    assert nyu40_to_scannet20(np.array([], dtype=np.uint16)).shape == (0,)
    with pytest.raises(TypeError):
        nyu40_to_scannet20(np.array([1.5]))
    col = colorize(np.array([0, -1, 19]))
    assert col.dtype == np.uint8 and (col[1] == 0).all() and (col[0] == SCANNET20_PALETTE[0]).all()
