"""Limited annotations: every labelled point reaches the loss through the voxelisation (issue #16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain3d.config import AugmentConfig, ProtocolsConfig
from pretrain3d.data.dataset import SceneArrays, TrainDataset
from pretrain3d.data.labels import IGNORE_INDEX
from pretrain3d.data.protocols import limited_annotations
from pretrain3d.geometry.voxel import grid_coordinates, grid_sample
from pretrain3d.methods.semseg import semseg_loss


def room(n: int = 20000, seed: int = 0) -> SceneArrays:
    rng = np.random.default_rng(seed)
    coord = rng.uniform(0, [4.0, 3.0, 0.05], (n, 3))  # a floor: ~10 points per 8 cm voxel
    return SceneArrays("room", coord, rng.uniform(0, 255, (n, 3)), np.tile([0.0, 0.0, 1.0], (n, 1)),
                       rng.integers(0, 20, n))


def test_prefer_picks_a_preferred_point_in_every_voxel_that_has_one():
    rng = np.random.default_rng(1)
    coord = rng.uniform(0, 1, (5000, 3))
    prefer = rng.random(5000) < 0.03
    gs = grid_sample(coord, 0.1, np.random.default_rng(2), prefer=prefer)
    vox_with = {tuple(v) for v in grid_coordinates(coord, 0.1)[prefer]}
    kept_pref = {tuple(v) for v, p in zip(gs.grid_coord, prefer[gs.index]) if p}
    assert kept_pref == vox_with and len(vox_with) > 100
    # inverse still maps every point to the voxel that holds it
    np.testing.assert_array_equal(gs.grid_coord[gs.inverse], grid_coordinates(coord, 0.1))
    # without any preferred point (or with all), the same draws give the same result as before
    for p in (np.zeros(5000, bool), np.ones(5000, bool)):
        a = grid_sample(coord, 0.1, np.random.default_rng(3), prefer=p)
        b = grid_sample(coord, 0.1, np.random.default_rng(3))
        np.testing.assert_array_equal(a.index, b.index)
    with pytest.raises(ValueError, match="one entry per point"):
        grid_sample(coord, 0.1, rng, prefer=prefer[:10])


def test_la_training_samples_keep_every_labelled_voxel():
    s = room()
    s.segment = limited_annotations(s.segment, 200, s.scene_id)
    aug = AugmentConfig()
    counts = {}
    for prefer in (False, True):
        ds = TrainDataset([s], 0.08, aug, prefer_labelled=prefer)
        counts[prefer] = [int((ds[(0, seed)]["segment"] != IGNORE_INDEX).sum()) for seed in range(5)]
    # 200 labelled points among ~20k in ~2k voxels: one random point per voxel keeps few of them
    assert max(counts[False]) < 100
    # the labelled-point rule keeps one per voxel holding any: all 200 unless two share a voxel
    assert min(counts[True]) >= 190 and max(counts[True]) <= 200
    assert ProtocolsConfig().la_voxel_label == "labelled"


def test_semseg_loss_logs_labelled_voxels_per_sample():
    logits_model = lambda batch: batch["logits"]  # noqa: E731
    target = torch.full((10,), IGNORE_INDEX)
    target[[1, 3, 7]] = torch.tensor([0, 1, 2])
    batch = {"logits": torch.randn(10, 3, requires_grad=True), "segment": target, "offset": torch.tensor([4, 10])}
    _, logs = semseg_loss(logits_model, batch)
    assert logs["labelled_voxels_per_sample"] == pytest.approx(1.5)


def test_la_run_logs_the_labelled_voxels_that_reach_the_loss(tmp_path):
    pytest.importorskip("spconv.pytorch")
    import json

    import mlflow

    from conftest import tiny_overrides
    from pretrain3d.config import validate_config
    from pretrain3d.data import synthetic as syn
    from pretrain3d.data.scannet_like import preprocess_scannet_like
    from pretrain3d.stages.finetune import finetune

    cfg = validate_config(tiny_overrides(tmp_path))
    syn.generate_dataset(tmp_path / "raw", num_train=2, num_val=1, seed=3, frames_per_scene=2, width=64, height=48,
                         points_per_m2=120.0, workers=1, progress=False)
    preprocess_scannet_like(tmp_path / "raw", tmp_path / "processed", workers=1, progress=False)
    finetune(cfg, "scratch", 0, tmp_path / "run", protocol="la", progress=False)
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["labelled_points_per_scene"] == cfg.protocols.la_points == 50
    assert log["voxel_label"] == "labelled" and 45 <= log["labelled_voxels_per_sample"] <= 50
    assert all("train/labelled_voxels_per_sample" in h for h in log["history"])
    mlflow.set_tracking_uri(cfg.tracking.uri)
    (run,) = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    assert run.data.metrics["train/labelled_voxels_per_sample_mean"] == pytest.approx(log["labelled_voxels_per_sample"])
    assert float(run.data.params["labelled_points_per_scene"]) == 50
