"""Test-time augmentation: grid fragments cover every point, views transform as specified,
identity-only voting equals the single pass, and the evaluate stage uses it when enabled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from pretrain3d.config import validate_config
from pretrain3d.data import transforms as T
from pretrain3d.data.dataset import EvalDataset, SceneArrays
from pretrain3d.errors import ConfigError
from pretrain3d.evaluation.inference import predict_scene
from pretrain3d.evaluation.tta import View, apply_view, grid_fragments, make_views, predict_scene_tta
from pretrain3d.geometry.voxel import grid_sample
from pretrain3d.models.segmentor import build_segmentor

DEVICE = torch.device("cpu")


def _scene(rng, n=1200, extent=(3.0, 3.0, 2.0), shared_voxel_features_at: float | None = None) -> SceneArrays:
    coord = rng.uniform(0, extent, (n, 3))
    color = rng.integers(0, 256, (n, 3)).astype(np.float64)
    normal = rng.normal(size=(n, 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    if shared_voxel_features_at is not None:
        # Every point of a voxel gets the features of the voxel's first point: then each fragment
        # feeds the model the same input as the single pass.
        gs = grid_sample(coord - [(coord[:, 0].min() + coord[:, 0].max()) / 2,
                                  (coord[:, 1].min() + coord[:, 1].max()) / 2, coord[:, 2].min()],
                         shared_voxel_features_at)
        color, normal = color[gs.index][gs.inverse], normal[gs.index][gs.inverse]
    return SceneArrays("scene0000_00", coord, color, normal, rng.integers(-1, 20, n))


def _model(seed=0):
    cfg = validate_config(tiny_overrides(Path("/nonexistent")))
    torch.manual_seed(seed)
    return build_segmentor(cfg.model, 20).eval()


class PointwiseModel(torch.nn.Module):
    """Logits from each voxel's own features only: no spconv, exact bookkeeping."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = torch.nn.Linear(6, 5)

    def forward(self, batch):
        return self.lin(batch["feat"])


def test_fragments_hold_each_voxel_once_and_cover_every_point():
    rng = np.random.default_rng(0)
    coord = rng.uniform(0, 1.0, (3000, 3))
    coord[:40] = 0.01  # one crowded voxel: 40+ points there
    fr = grid_fragments(coord, 0.2)
    gs = grid_sample(coord, 0.2)
    counts = np.bincount(gs.inverse)
    assert fr.max_count == counts.max() >= 40
    seen = np.zeros(len(coord), dtype=int)
    for part in fr.parts:
        assert len(part) == len(gs.index)  # one point per voxel ...
        assert len(np.unique(fr.inverse[part])) == len(part)  # ... each voxel exactly once
        np.testing.assert_array_equal(fr.grid_coord[part], gs.grid_coord)  # same voxel order in every part
        seen[part] += 1
    assert (seen >= 1).all()  # together they hold every original point
    np.testing.assert_array_equal(fr.parts[0], gs.index)  # part 0 is the single pass's sample
    np.testing.assert_array_equal(fr.inverse, gs.inverse)


def test_views_transform_points_and_normals():
    assert len(make_views([0, 0.5, 1, 1.5], [1, 0.95, 1.05], ["none"])) == 12
    c, n = np.array([[1.0, 0.0, 0.5]]), np.array([[1.0, 0.0, 0.0]])
    c2, n2 = apply_view(c, n, View(0.5, 2.0, "none"))
    np.testing.assert_allclose(c2, [[0.0, 2.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(n2, [[0.0, 1.0, 0.0]], atol=1e-12)  # scale leaves normals unit length
    c3, _ = apply_view(c, n, View(0.0, 1.0, "xy"))
    c4, _ = apply_view(c, n, View(1.0, 1.0, "none"))
    np.testing.assert_allclose(c3, c4, atol=1e-12)  # mirroring x and y is a half turn
    c5, n5 = apply_view(c, n, View(0.0, 1.0, "x"))
    np.testing.assert_allclose(c5, [[-1.0, 0.0, 0.5]])
    np.testing.assert_allclose(n5, [[-1.0, 0.0, 0.0]])
    same_c, same_n = apply_view(c, n, View())
    assert same_c is c and same_n is n
    with pytest.raises(ValueError):
        make_views([0], [1], ["z"])
    with pytest.raises(ValueError):
        make_views([0], [0.0], ["none"])


def test_every_point_is_voted_for_by_every_view():
    rng = np.random.default_rng(1)
    s = _scene(rng, n=2000, extent=(2.0, 2.0, 1.0))
    views = make_views([0, 0.5], [1.0, 1.05], ["none", "x"])
    res = predict_scene_tta(PointwiseModel(), s.coord, s.color, s.normal, 0.25, views, DEVICE)
    assert res.pred.shape == (2000,) and res.probs.shape == (2000, 5)
    votes = res.probs.sum(axis=1)  # each softmax sums to 1: this counts how often a point was fed
    assert (votes >= len(views) - 1e-4).all()
    # Exactly: in a voxel of c points among m fragments, point j is fed #{i < m : i mod c == j} times.
    expected = np.zeros(2000)
    passes = 0
    centred = T.center_shift({"coord": s.coord.copy()}, apply_z=True)["coord"]
    for v in views:
        fr = grid_fragments(apply_view(centred, s.normal, v)[0], 0.25)
        passes += fr.max_count
        for part in fr.parts:
            expected[part] += 1
    np.testing.assert_allclose(votes, expected, rtol=1e-5)
    assert res.forward_passes == passes
    np.testing.assert_array_equal(res.pred, res.probs.argmax(axis=1))


def test_identity_only_tta_equals_the_single_pass():
    rng = np.random.default_rng(2)
    model = _model()
    grid = 0.25
    identity = make_views([0.0], [1.0], ["none"])
    # Any scene, one point per voxel per view mapped back: exactly the single pass.
    s = _scene(rng)
    single = predict_scene(model, EvalDataset([s], grid)[0], DEVICE)
    cheap = predict_scene_tta(model, s.coord, s.color, s.normal, grid, identity, DEVICE, fragments=False)
    assert cheap.forward_passes == 1
    np.testing.assert_array_equal(cheap.pred, single)
    # Fragments too, when a voxel's points carry the same features (each fragment = the single pass's input).
    s = _scene(rng, shared_voxel_features_at=grid)
    single = predict_scene(model, EvalDataset([s], grid)[0], DEVICE)
    full = predict_scene_tta(model, s.coord, s.color, s.normal, grid, identity, DEVICE, fragments=True)
    assert full.forward_passes > 1
    np.testing.assert_array_equal(full.pred, single)
    assert len(np.unique(single)) > 1  # a model that predicts one class would prove nothing


def test_tta_config_defaults_off_and_validates():
    cfg = validate_config(tiny_overrides(Path("/nonexistent")))
    t = cfg.eval.tta
    assert t.enabled is False and t.fragments is True
    assert len(make_views(t.rotations_z, t.scales, t.flips)) == 12  # Pointcept's rotation × scale grid
    over = tiny_overrides(Path("/nonexistent"))
    over["eval"] = {"tta": {"scales": [1.0, -0.5]}}
    with pytest.raises(ConfigError, match="scales"):
        validate_config(over)
    over["eval"] = {"tta": {"flips": ["diagonal"]}}
    with pytest.raises(ConfigError, match="flips"):
        validate_config(over)


def test_evaluate_stage_uses_tta_when_enabled(tmp_path):
    from pretrain3d.data.scene import ProcessedScene, write_processed_scene
    from pretrain3d.engine.trainer import save_checkpoint
    from pretrain3d.stages.evaluate import evaluate
    from pretrain3d.stages.finetune import MODEL_FORMAT

    rng = np.random.default_rng(3)
    over = tiny_overrides(tmp_path)
    over["tracking"]["enabled"] = False
    over["train"]["grid_size"] = 0.25
    s = _scene(rng, n=900)
    write_processed_scene(Path(over["data"]["processed_root"]) / "val" / s.scene_id, ProcessedScene(
        s.scene_id, s.coord.astype(np.float32), s.color.astype(np.uint8), s.normal.astype(np.float32), s.segment))
    model = _model()
    save_checkpoint(tmp_path / "model.pt", {"format": MODEL_FORMAT, "kind": "segmentor", "num_classes": 20,
                                            "model": model.state_dict()})

    def run(tta: dict, name: str) -> dict:
        over["eval"] = {"tta": tta}
        evaluate(validate_config(over), tmp_path / "model.pt", tmp_path / name, "scratch", 0)
        return json.loads((tmp_path / name / "metrics.json").read_text())

    plain = run({"enabled": False}, "plain")
    assert plain["tta"] == {"enabled": False, "views": 1, "fragments": False, "forward_passes": 1,
                            "seconds_per_scene": pytest.approx(plain["tta"]["seconds_per_scene"])}
    ident = run({"enabled": True, "rotations_z": [0.0], "scales": [1.0], "flips": ["none"], "fragments": False},
                "ident")
    assert ident["mIoU"] == plain["mIoU"] and ident["iou_per_class"] == plain["iou_per_class"]
    voted = run({"enabled": True, "rotations_z": [0.0, 1.0], "scales": [1.0], "flips": ["none"]}, "voted")
    assert voted["tta"]["enabled"] and voted["tta"]["views"] == 2 and voted["tta"]["forward_passes"] > 2
    assert voted["num_points"] == plain["num_points"] == int((s.segment >= 0).sum())  # every labelled point
