"""ConDense's checks: feature checks and the PCA image after training, the real-data check (run and
recorded skip), the report section (mean ± std over seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from pretrain3d.config import validate_config
from pretrain3d.stages import condense_checks as CC

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes-redkitchen"


def _cfg(tmp: Path, **over):
    o = tiny_overrides(tmp)
    o["data"]["processed_root"] = str(tmp / "processed")
    o["pretrain"]["condense"] = {"volume_resolution": [12, 12, 6], "volume_channels": 8, "unet_channels": [8],
                                 "hidden": 16, "rays_per_view": 48, "samples_uniform": 12, "samples_importance": 4,
                                 "render_scale": 0.25}
    o["protocols"]["probe_epochs"] = 5
    o["tracking"] = {"enabled": False}
    for k, v in over.items():
        o.setdefault(k, {}).update(v)
    return validate_config(o)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pretrain3d.data import synthetic as syn
    from pretrain3d.data.scannet_like import preprocess_scannet_like

    tmp = tmp_path_factory.mktemp("condense_checks")
    syn.generate_dataset(tmp / "raw", num_train=2, num_val=1, seed=5, frames_per_scene=4, width=64, height=48,
                         points_per_m2=300.0, workers=1, progress=False)
    preprocess_scannet_like(tmp / "raw", tmp / "processed", workers=1, progress=False)
    return tmp


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


class _Run:
    def __init__(self):
        self.metrics, self.artifacts = {}, []

    def log_metrics(self, m, step=None):
        self.metrics.update(m)

    def log_artifact(self, path, sub=None):
        self.artifacts.append(Path(path).name)


def test_after_training_writes_checks_and_the_pca_row(tiny, tmp_path):
    from pretrain3d.data.scene import load_split_scenes
    from pretrain3d.methods import condense
    from pretrain3d.methods.plugin import AfterTraining

    cfg = _cfg(tiny)
    scenes = load_split_scenes(cfg.data.processed_root, "train", 20)
    torch.manual_seed(0)
    setup = condense.build(cfg, "condense", scenes)
    run = _Run()
    out = CC.after_training(AfterTraining(cfg, setup.model, tmp_path, torch.device("cpu"), run, "condense", 0))
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert out["checks"]["consistency"] == checks["consistency"]
    # untrained: the 2D net IS the teacher, so every 2D number is the teacher's to the last digit
    assert checks["consistency"]["teacher"] == checks["consistency"]["condense"]
    assert checks["probe2d"]["teacher"] == checks["probe2d"]["condense"]
    c = checks["consistency"]["teacher"]
    assert -1 <= c["random_cos"] < c["matched_cos"] <= 1 and checks["consistency"]["pixel_pairs"] > 0
    for v in checks["co_embedding"].values():
        assert 0 <= v["transfer_miou"] <= 1
    assert "control_2d_to_untrained_3d" in checks["co_embedding"]
    assert (tmp_path / "feature_pca.png").read_bytes()[:4] == b"\x89PNG"
    assert {"feature_pca.png", "checks.json"} <= set(run.artifacts)
    assert "check/consistency_margin/condense" in run.metrics


def test_real_data_check_is_a_recorded_skip_without_the_fixture(tiny, tmp_path):
    cfg = _cfg(tiny)
    out = CC.real_data_check(cfg, tmp_path, steps=2, root=tmp_path / "nowhere")
    assert out["status"] == "skipped" and "nowhere" in out["reason"]
    assert json.loads((tmp_path / "render.json").read_text())["status"] == "skipped"
    assert (tmp_path / "render.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not SHARED.is_dir(), reason="7-Scenes fixture (../shared/data) absent")
def test_real_data_check_runs_on_real_frames(tiny, tmp_path):
    cfg = _cfg(tiny, data={"sevenscenes": {"root": str(SHARED), "frame_step": 25, "voxel_size": 0.05}})
    out = CC.real_data_check(cfg, tmp_path, steps=4)
    assert out["status"] == "ok" and out["steps"] == 4 and out["frames"] >= 3
    for k in ("loss_first", "loss_last", "loss_consistency_first", "loss_geometry_last"):
        assert out[k] == out[k] and out[k] > 0  # finite, positive
    assert (tmp_path / "render.png").read_bytes()[:4] == b"\x89PNG"


def _checks(margin_t, margin_c, probe_t, probe_c, t23, t32):
    def cons(m):
        return {"matched_cos": 0.5 + m, "random_cos": 0.5, "margin": m}

    return {"consistency": {"teacher": cons(margin_t), "condense": cons(margin_c), "pixel_pairs": 100},
            "probe2d": {"teacher": {"miou": probe_t}, "condense": {"miou": probe_c}},
            "co_embedding": {"2d_to_3d": {"transfer_miou": t23, "in_domain_miou": 0.3},
                             "3d_to_2d": {"transfer_miou": t32, "in_domain_miou": 0.3},
                             "control_2d_to_untrained_3d": {"transfer_miou": 0.02}},
            "pca_png": "feature_pca.png"}


def test_report_section_gives_mean_and_std_over_seeds(tmp_path):
    backbones = []
    for seed, (a, b) in enumerate([(0.10, 0.20), (0.30, 0.40)]):
        d = tmp_path / "pretrain" / "condense" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "checks.json").write_text(json.dumps(_checks(a, b, 0.2, 0.25, 0.1, 0.12)))
        (d / "feature_pca.png").write_bytes(b"\x89PNG fake")
        backbones.append(str(d / "backbone.pt"))
    out = tmp_path / "report"
    text, pngs = CC.report_section(None, backbones, [], out)
    assert "| consistency margin (same − random) | 20.00 ± 14.14 | 30.00 ± 14.14 |" in text
    assert "| per-pixel 2D linear probe mIoU | 20.00 ± 0.00 | 25.00 ± 0.00 |" in text
    assert "control: 2D → untrained 3D | 2.00 ± 0.00" in text
    assert pngs == [out / "renders" / "condense-seed0-pca.png"] and pngs[0].exists()


def test_report_section_names_a_missing_checks_file(tmp_path):
    from pretrain3d.errors import DataError

    d = tmp_path / "pretrain" / "condense" / "seed0"
    d.mkdir(parents=True)
    with pytest.raises(DataError, match="checks.json"):
        CC.report_section(None, [str(d / "backbone.pt")], [], tmp_path / "r")


def test_the_checks_reuse_the_trunk_tokens_of_pre_training(tiny):
    """The frozen trunk runs once per training frame: the checks take pre-training's cached tokens, and
    they are exactly what running the trunk gives."""
    from pretrain3d.data.scene import load_split_scenes
    from pretrain3d.methods import condense

    cfg = _cfg(tiny)
    scenes = load_split_scenes(cfg.data.processed_root, "train", 20)
    setup = condense.build(cfg, "condense", scenes)
    net = setup.model.image_net
    memo = CC._TrunkMemo(net)
    assert memo.reuse(scenes) == sum(len(s.frames) for s in scenes) == len(net.trunk_cache)
    img = scenes[0].frames.read_color(1)
    cached = memo.fn(True)([img])
    assert torch.allclose(cached, net.reference(net.trunk(net.preprocess([img]))), atol=1e-5)


def test_report_section_shows_a_gap_where_no_views_overlap(tmp_path):
    """Val scenes without overlapping views give no consistency (None): the report says —, not a number."""
    d = tmp_path / "pretrain" / "condense" / "seed0"
    d.mkdir(parents=True)
    c = _checks(0.1, 0.2, 0.2, 0.25, 0.1, 0.12)
    for side in ("teacher", "condense"):
        c["consistency"][side] = {"matched_cos": None, "random_cos": None, "margin": None}
    (d / "checks.json").write_text(json.dumps(c))
    text, _ = CC.report_section(None, [str(d / "backbone.pt")], [], tmp_path / "r")
    assert "| consistency margin (same − random) | — | — |" in text
    run = _Run()
    CC._log_checks(run, c)
    assert "check/consistency_margin/teacher" not in run.metrics and "check/probe2d_miou/teacher" in run.metrics
