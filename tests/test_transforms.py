import numpy as np
import pytest

from pretrain3d.config import AugmentConfig
from pretrain3d.data import transforms as T
from pretrain3d.geometry.voxel import grid_coordinates, grid_sample


def _cloud(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    coord = rng.uniform([0, 0, 0], [4, 3, 2.5], (n, 3))
    normal = rng.normal(size=(n, 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return {"coord": coord, "color": rng.uniform(0, 255, (n, 3)), "normal": normal,
            "segment": rng.integers(-1, 20, n)}


def test_grid_sample_inverse_maps_every_point_to_its_voxel():
    s = _cloud()
    gs = grid_sample(s["coord"], 0.25)
    grid = grid_coordinates(s["coord"], 0.25)
    assert len(np.unique(gs.grid_coord, axis=0)) == len(gs.index)  # one point per voxel
    np.testing.assert_array_equal(grid[gs.index][gs.inverse], grid)  # inverse → same voxel
    # deterministic without rng, random (but still one per voxel) with rng
    np.testing.assert_array_equal(grid_sample(s["coord"], 0.25).index, gs.index)
    r = grid_sample(s["coord"], 0.25, np.random.default_rng(1))
    assert len(r.index) == len(gs.index) and not np.array_equal(np.sort(r.index), np.sort(gs.index))
    np.testing.assert_array_equal(grid[r.index][r.inverse], grid)


def test_rigid_transforms_are_recorded_and_rotate_normals():
    s = _cloud()
    orig = {k: v.copy() for k, v in s.items()}
    rng = np.random.default_rng(3)
    s = T.center_shift(s)
    s = T.random_rotate(s, rng, 1.0, 1 / 64, 1.0)
    s = T.random_scale(s, rng, 0.9, 1.1)
    s = T.random_flip(s, rng, 1.0)
    M = s["transform"]
    homog = np.c_[orig["coord"], np.ones(len(orig["coord"]))]
    np.testing.assert_allclose((homog @ M.T)[:, :3], s["coord"], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(s["normal"], axis=1), 1.0, atol=1e-9)
    # normals follow the linear part (up to scale)
    A = M[:3, :3]
    n = orig["normal"] @ np.linalg.inv(A)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    np.testing.assert_allclose(n, s["normal"], atol=1e-9)


def test_train_augment_is_a_function_of_the_seed():
    aug = AugmentConfig()
    a = T.train_augment(_cloud(), np.random.default_rng(7), aug)
    b = T.train_augment(_cloud(), np.random.default_rng(7), aug)
    c = T.train_augment(_cloud(), np.random.default_rng(8), aug)
    np.testing.assert_array_equal(a["coord"], b["coord"])
    assert not np.allclose(a["coord"], c["coord"])
    assert np.all(a["color"] >= 0) and np.all(a["color"] <= 255)


def test_elastic_distortion_is_smooth_and_bounded():
    s = _cloud(5000)
    before = s["coord"].copy()
    s = T.elastic_distortion(s, np.random.default_rng(0), [(0.2, 0.4)], 1.0)
    d = np.linalg.norm(s["coord"] - before, axis=1)
    assert 0 < d.mean() < 0.4


def test_voxelize_for_model_features_and_inverse():
    s = T.voxelize_for_model(_cloud(), 0.2, rng=None)
    assert s["feat"].shape == (len(s["grid_coord"]), 6) and s["feat"].dtype == np.float32
    assert s["grid_coord"].min() == 0
    assert len(s["inverse"]) == 2000 and s["inverse"].max() == len(s["grid_coord"]) - 1
    cropped = T.voxelize_for_model(_cloud(), 0.05, rng=np.random.default_rng(0), max_points=100)
    assert len(cropped["grid_coord"]) == 100 and "inverse" not in cropped


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_chromatic_ops_keep_range(p):
    s = _cloud()
    rng = np.random.default_rng(0)
    s = T.chromatic_auto_contrast(s, rng, p)
    s = T.chromatic_translation(s, rng, p, 0.05)
    s = T.chromatic_jitter(s, rng, p, 0.05)
    assert s["color"].min() >= 0 and s["color"].max() <= 255


def test_trilinear_matches_scipys_regular_grid_interpolator():
    from scipy.interpolate import RegularGridInterpolator

    from pretrain3d.data.transforms import _trilinear

    rng = np.random.default_rng(0)
    grid = rng.standard_normal((7, 5, 9, 3))
    lo, step = np.array([-1.0, 0.5, 2.0]), 0.3
    axes = [lo[d] + step * np.arange(grid.shape[d]) for d in range(3)]
    hi = np.array([a[-1] for a in axes])
    pts = lo + rng.random((500, 3)) * (hi - lo)
    pts[:3] = [lo, hi, [axes[0][3], axes[1][2], axes[2][8]]]  # a corner, the far corner, a node
    ref = RegularGridInterpolator(axes, grid)(pts)
    np.testing.assert_allclose(_trilinear(grid, lo, step, pts), ref, rtol=1e-10, atol=1e-12)
