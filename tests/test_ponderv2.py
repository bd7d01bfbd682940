"""PonderV2: double-backward trilinear sampling, feature volume, NeuS renderer, rays under augmentation,
losses, an overfit check of rendered depth, real 7-Scenes frames, and the semantic variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import sevenscenes_root

from pretrain3d.config import validate_config
from pretrain3d.methods.ponderv2 import (
    PonderDataset,
    PonderV2Model,
    camera_rays,
    ponder_collate,
    render_view,
    semantic_infonce,
    unit_cube_transform,
)
from pretrain3d.models.feature_volume import DenseUNet3D, scatter_mean_volume
from pretrain3d.models.neus import render_rays, sample_pdf
from pretrain3d.models.segmentor import build_backbone
from pretrain3d.models.trilinear import trilinear_sample


# ----------------------------------------------------------------------------- trilinear sampling


def test_trilinear_matches_grid_sample_inside_the_volume():
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(2, 5, 6, 7, 4, generator=g, dtype=torch.float64)
    lo = torch.tensor([[-1.0, 0.0, 2.0], [0.5, -0.5, 0.0]], dtype=torch.float64)
    hi = lo + torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 0.5]], dtype=torch.float64)
    # points at least half a cell inside, where align_corners=False sampling needs no padding rule
    sizes = torch.tensor([6, 7, 4], dtype=torch.float64)
    rel = 0.5 / sizes + torch.rand(2, 50, 3, generator=g, dtype=torch.float64) * (1 - 1 / sizes)
    pts = lo[:, None] + rel * (hi - lo)[:, None]
    ours = trilinear_sample(vol, pts, lo, hi)
    # grid_sample wants (B, C, D, H, W) with grid (x, y, z) -> (W, H, D): permute X,Y,Z -> Z,Y,X
    grid = (rel * 2 - 1)[:, :, None, None, :]
    ref = F.grid_sample(vol.permute(0, 1, 4, 3, 2), grid, mode="bilinear", align_corners=False)
    ref = ref[:, :, :, 0, 0].transpose(1, 2)
    assert torch.allclose(ours, ref, atol=1e-12)


def test_trilinear_has_exact_second_order_gradients():
    g = torch.Generator().manual_seed(1)
    vol = torch.randn(1, 3, 4, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    lo, hi = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    pts = (0.15 + 0.7 * torch.rand(1, 6, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    w = torch.randn(3, generator=g, dtype=torch.float64)

    def f(p, v):
        return torch.tanh(trilinear_sample(v, p, lo, hi) @ w)  # a non-linear "SDF" of the features

    assert torch.autograd.gradcheck(f, (pts, vol))
    assert torch.autograd.gradgradcheck(f, (pts, vol))
    # the eikonal path: d/dvol of |d sdf / d p|^2 is non-zero (grid_sample cannot do this backward)
    sdf = f(pts, vol)
    grad, = torch.autograd.grad(sdf.sum(), pts, create_graph=True)
    (grad.norm(dim=-1) ** 2).sum().backward()
    assert vol.grad is not None and vol.grad.abs().sum() > 0


def test_scatter_mean_volume_averages_per_cell_and_leaves_empty_cells_zero():
    feat = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    coord = torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.9, 0.9, 0.9]])
    batch = torch.zeros(3, dtype=torch.long)
    vol = scatter_mean_volume(feat, coord, batch, torch.zeros(1, 3), torch.ones(1, 3), (2, 2, 2))
    assert vol.shape == (1, 2, 2, 2, 2)
    assert vol[0, :, 0, 0, 0].tolist() == [2.0, 20.0]
    assert vol[0, :, 1, 1, 1].tolist() == [5.0, 50.0]
    assert int((vol[0, 0] != 0).sum()) == 2


def test_dense_unet_keeps_the_resolution_for_odd_sizes():
    net = DenseUNet3D(4, 6, (4, 8, 8))
    assert net(torch.randn(2, 4, 9, 7, 5)).shape == (2, 6, 9, 7, 5)


# ----------------------------------------------------------------------------- renderer


class _PlaneField(torch.nn.Module):
    """An analytic SDF: the plane z = h (sdf = z - h), grey above; stands in for the neural field."""

    def __init__(self, h: float, inv_s: float = 2000.0):
        super().__init__()
        self.h, self.inv_s = h, inv_s

    def sdf(self, volume, points, lo, hi):
        s = points[..., 2] - self.h
        return s, None, None

    def forward(self, volume, points, dirs, lo, hi, with_semantic=False):
        s = points[..., 2] - self.h
        grad = torch.zeros_like(points)
        grad[..., 2] = 1.0
        rgb = torch.full_like(points, 0.5)
        return {"sdf": s, "grad": grad, "rgb": rgb}

    def variance(self):
        return torch.tensor(self.inv_s)


def test_neus_renders_the_distance_to_an_analytic_surface():
    field = _PlaneField(h=-0.3)
    g = torch.Generator().manual_seed(0)
    n = 64
    origins = torch.cat([torch.rand(n, 2, generator=g) * 0.4 - 0.2, torch.full((n, 1), 0.2)], dim=1)
    dirs = torch.cat([torch.rand(n, 2, generator=g) * 0.6 - 0.3, -torch.ones(n, 1)], dim=1)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    expected = (origins[:, 2] - field.h) / (-dirs[:, 2])
    lo, hi = torch.full((1, 3), -0.55), torch.full((1, 3), 0.55)
    r = render_rays(field, None, lo, hi, origins, dirs, n_uniform=32, n_importance=32, upsample_steps=2, near=0.01,
                    perturb=False)
    assert r["hit"].all()
    assert (r["acc"] > 0.99).all()
    assert (r["depth"] - expected).abs().max() < 0.01  # 1 % of the unit cube
    # importance sampling concentrates samples at the surface
    close = ((r["t"] - expected[:, None]).abs() < 0.02).sum(1)
    assert (close >= 8).all()


def test_rendered_semantic_feature_is_the_weighted_sum_of_per_sample_features():
    """The renderer composites the semantic MLP's hidden layer and decodes once per ray; that must equal
    compositing the per-sample features (the last layer is linear, its bias scaled by the ray's weight)."""
    from pretrain3d.models.neural_field import NeuralField

    torch.manual_seed(0)
    field = NeuralField(8, hidden=16, semantic_dim=5).eval()
    with torch.no_grad():
        field.semantic_mlp[2].bias.normal_()  # a non-zero bias, or the weight-sum scaling is untested
    vol = torch.randn(1, 8, 6, 6, 6)
    lo, hi = torch.full((1, 3), -0.5), torch.full((1, 3), 0.5)
    origins = torch.rand(20, 3) * 0.4 - 0.2
    dirs = F.normalize(torch.randn(20, 3), dim=1)
    r = render_rays(field, vol, lo, hi, origins, dirs, n_uniform=16, n_importance=8, upsample_steps=1, near=0.01,
                    perturb=False, with_semantic=True)
    R, N = r["t"].shape
    pts = origins[:, None] + dirs[:, None] * r["t"][..., None]
    out = field(vol, pts.reshape(1, -1, 3), dirs[:, None].expand(R, N, 3).reshape(1, -1, 3), lo, hi, with_semantic=True)
    per_sample = field.semantic_mlp[2](out["semantic_hidden"])  # the MLP's own last layer, per sample
    expected = (r["weights"][..., None] * per_sample.reshape(R, N, -1)).sum(1)
    assert r["acc"].min() < 0.99  # some rays do not saturate: the bias scaling matters
    torch.testing.assert_close(r["semantic"], expected, rtol=1e-5, atol=1e-5)
    # and decode_semantic is the MLP's own last layer
    h = torch.randn(7, 16)
    torch.testing.assert_close(field.decode_semantic(h), field.semantic_mlp[2](h))


def test_sample_pdf_follows_the_weights():
    bins = torch.linspace(0, 1, 11)[None]
    w = torch.zeros(1, 10)
    w[0, 7] = 1.0
    s = sample_pdf(bins, w, 20)
    assert ((s >= 0.7) & (s <= 0.8)).float().mean() > 0.9


# ----------------------------------------------------------------------------- rays and transforms


def test_camera_rays_convert_z_depth_to_distance_under_any_affine_map():
    rng = np.random.default_rng(0)
    K = np.array([[100.0, 0, 40], [0, 110.0, 30], [0, 0, 1]])
    a = rng.uniform(-np.pi, np.pi)
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = R @ np.diag([1, -1, -1])  # a camera looking down
    pose[:3, 3] = [1, 2, 3]
    M = np.eye(4)
    M[:3, :3] = 0.37 * np.diag([-1, 1, 1]) @ R.T  # scale, flip, rotation
    M[:3, 3] = [0.1, -0.2, 0.3]
    pix = rng.integers(0, 80, size=(20, 2))
    z = rng.uniform(0.5, 4.0, 20)
    cam = np.c_[pix, np.ones(20)] @ np.linalg.inv(K).T * z[:, None]
    world = cam @ pose[:3, :3].T + pose[:3, 3]
    target = world @ M[:3, :3].T + M[:3, 3]
    o, d, dist, scale = camera_rays(pix, z, K, pose, M)
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.allclose(o + d * dist[:, None], target, atol=1e-9)
    assert np.allclose(dist / scale, z)


def test_unit_cube_transform():
    pts = np.random.default_rng(0).uniform([-3, 1, 2], [5, 4, 4.5], size=(500, 3))
    M = unit_cube_transform(pts)
    u = pts @ M[:3, :3].T + M[:3, 3]
    assert np.isclose((u.max(0) - u.min(0)).max(), 1.0)
    assert np.isclose(u[:, 2].min(), -0.5)
    assert np.allclose((u.max(0) + u.min(0))[:2] / 2, 0.0)


def _cfg(tmp: Path, **ponder):
    over = {"data": {"processed_root": str(tmp / "processed")},
            "model": {"stem_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 16], "layers": [1] * 8},
            "train": {"grid_size": 0.1, "threads": 1},
            "pretrain": {"ponderv2": {"volume_resolution": [16, 16, 8], "volume_channels": 16, "unet_channels": [8, 16],
                                      "hidden": 32, "rays_per_view": 96, "samples_uniform": 24,
                                      "samples_importance": 8, **ponder}},
            "tracking": {"enabled": False}}
    return validate_config(over)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pretrain3d.data import synthetic as syn
    from pretrain3d.data.scannet_like import preprocess_scannet_like

    tmp = tmp_path_factory.mktemp("ponder")
    syn.generate_dataset(tmp / "raw", num_train=2, num_val=1, seed=5, frames_per_scene=6, width=160, height=120,
                         points_per_m2=600.0, workers=1, progress=False)
    preprocess_scannet_like(tmp / "raw", tmp / "processed", workers=1, progress=False)
    from pretrain3d.data.scene import load_split_scenes

    return tmp, load_split_scenes(tmp / "processed", "train", 20)


def test_rays_hit_the_augmented_surface_where_the_depth_says(tiny):
    """Random rotation, tilt, scale, flip and centring are applied to the points; the rays, built from the
    unchanged frames with the composed transform, must still end on the augmented surface."""
    from scipy.spatial import cKDTree

    tmp, scenes = tiny
    cfg = _cfg(tmp)
    aug = cfg.pretrain.augment.model_copy(update={"rotate_p": 1.0, "flip_p": 1.0, "rotate_xy": 0.05,
                                                  "scale": (0.7, 1.3), "jitter_sigma": 0.0})
    pcfg = cfg.pretrain.model_copy(update={"augment": aug})
    ds = PonderDataset(scenes, pcfg, cfg.train.grid_size, debug=True)
    for key in [(0, 11), (1, 12), (0, 13)]:
        s = ds[key]
        pts = s["points_unit"]
        hit = (s["ray_o"] + s["ray_d"] * s["ray_dist"][:, None]).numpy()
        scale = float(np.linalg.norm(s["transform"][0, :3, 0]))  # unit-cube units per metre
        d, _ = cKDTree(pts).query(hit)
        # the scene cloud is a surface sampling with ~4-6 cm spacing: hits lie within a point spacing
        assert np.median(d) / scale < 0.04, np.median(d) / scale
        # the same rays without the poses transformed (the released code's old bug) miss by metres
        M = s["transform"][0].numpy()
        fake = np.linalg.inv(M)[:3, :3]  # undo the augmentation on the ray only
        wrong = (s["ray_o"].numpy() @ fake.T) + s["ray_d"].numpy() @ fake.T * s["ray_dist"].numpy()[:, None]
        dw, _ = cKDTree(pts).query(wrong)
        assert np.median(dw) > 5 * np.median(d)
        assert len(s["ray_dist"]) > 0.8 * cfg.pretrain.ponderv2.views * cfg.pretrain.ponderv2.rays_per_view


def test_losses_are_finite_and_every_term_gets_gradient(tiny):
    tmp, scenes = tiny
    cfg = _cfg(tmp)
    torch.manual_seed(0)
    model = PonderV2Model(build_backbone(cfg.model), cfg.pretrain.ponderv2)
    ds = PonderDataset(scenes, cfg.pretrain, cfg.train.grid_size)
    batch = ponder_collate([ds[(0, 1)], ds[(1, 2)]])
    loss, logs = model.loss(batch)
    assert torch.isfinite(loss)
    for k in ("loss_rgb", "loss_depth", "loss_sdf", "loss_free_space", "loss_eikonal"):
        assert np.isfinite(logs[k]) and logs[k] > 0, k
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("field.semantic"):
            continue
        assert p.grad is not None, name
    assert next(model.backbone.parameters()).grad.abs().sum() > 0  # rendering trains the backbone


def test_semantic_infonce_uses_every_class_including_wall():
    text = F.normalize(torch.eye(4), dim=1)
    labels = torch.tensor([0, 1, 2, 3, -1])
    perfect = torch.cat([torch.eye(4) * 10, torch.zeros(1, 4)])
    assert semantic_infonce(perfect, labels, text, 0.01) < 1e-3
    wrong = perfect[[1, 0, 3, 2, 4]]
    assert semantic_infonce(wrong, labels, text, 0.01) > 10
    # class 0 (wall) is supervised: swapping only the wall ray's feature raises the loss
    swapped = perfect.clone()
    swapped[0] = perfect[1]
    assert semantic_infonce(swapped, labels, text, 0.01) > 1


def test_semantic_rays_get_the_label_of_their_surface(tiny):
    tmp, scenes = tiny
    cfg = _cfg(tmp)
    ds = PonderDataset(scenes, cfg.pretrain, cfg.train.grid_size, semantic=True)
    s = ds[(0, 3)]
    lab = s["ray_label"].numpy()
    assert (lab >= 0).mean() > 0.8  # almost every pixel's surface point has a labelled neighbour
    assert len(np.unique(lab[lab >= 0])) >= 3
    model = PonderV2Model(build_backbone(cfg.model), cfg.pretrain.ponderv2,
                          text_embeddings=F.normalize(torch.randn(20, 12), dim=1))
    loss, logs = model.loss(ponder_collate([s]))
    assert np.isfinite(logs["loss_semantic"]) and logs["loss_semantic"] > 0
    loss.backward()
    assert model.field.semantic_mlp[0].weight.grad.abs().sum() > 0


def test_overfitting_one_scene_renders_its_depth(tiny):
    """A short run on one scene must render a training view's depth far better than the best constant.

    Threshold: the median |z error| must fall below 0.5 x that of predicting the view's median depth
    everywhere (the best constant for this statistic): the field has learned the view's geometry, not a
    mean depth; a broken ray/pose transform or depth conversion stays near or above the constant
    (measured: 0.195 m vs a constant's 0.515 m after 120 steps; 0.33 m after 60 steps)."""
    tmp, scenes = tiny
    cfg = validate_config({"data": {"processed_root": str(tmp / "processed")}, "tracking": {"enabled": False}})
    # one thread, as the pipeline's jobs (train.threads): the run alone defaulted to 2 threads, whose
    # reduction order gave another trajectory (median error 0.260 vs the bound 0.2575, while the suite,
    # where an earlier test had set 1 thread, passed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = PonderV2Model(build_backbone(cfg.model), cfg.pretrain.ponderv2)
    ds = PonderDataset(scenes[:1], cfg.pretrain, cfg.train.grid_size)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for step in range(OVERFIT_STEPS):
        loss, _ = model.loss(ponder_collate([ds[(0, step)]]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    r = render_view(model, scenes[0], 0, cfg.train.grid_size, scale=0.5)
    torch.set_num_threads(threads)
    real = r["depth_real"]
    valid = real > 0
    constant = np.median(np.abs(real[valid] - np.median(real[valid])))
    assert r["depth_abs_err_median"] < 0.5 * constant, (r["depth_abs_err_median"], constant)


OVERFIT_STEPS = 120


def test_real_sevenscenes_frames_losses_fall(tmp_path):
    root = sevenscenes_root()
    if root is None:
        pytest.skip("7-Scenes fixture not found (set PRETRAIN3D_7SCENES)")
    from pretrain3d.stages.render import real_data_check

    cfg = _cfg(tmp_path)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "sevenscenes": cfg.data.sevenscenes.model_copy(update={"root": str(root), "frame_step": 20})})})
    out = real_data_check(cfg, tmp_path / "real", steps=25)
    assert out["status"] == "ok" and out["frames"] == 5
    assert out["loss_last"] < 0.8 * out["loss_first"], (out["loss_first"], out["loss_last"])
    assert (tmp_path / "real" / "render.png").stat().st_size > 10_000
    assert np.isfinite(out["render"]["depth_abs_err_median"])


def test_real_check_is_a_recorded_skip_without_the_fixture(tmp_path):
    import json

    from pretrain3d.stages.render import real_data_check

    cfg = _cfg(tmp_path)
    out = real_data_check(cfg, tmp_path / "real", steps=3, root=tmp_path / "nowhere")
    assert out["status"] == "skipped" and "nowhere" in out["reason"]
    assert json.loads((tmp_path / "real" / "render.json").read_text())["status"] == "skipped"
    assert (tmp_path / "real" / "render.png").is_file()
