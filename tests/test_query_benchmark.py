"""Scene-query benchmarks (issue 11): room keys, the three benchmark computations on constructed
repositories whose right answers are known, and the stage end to end on a tiny generated dataset with
rescans (index + metrics + figures + the `query text` CLI on the index it leaves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides

from pretrain3d.config import validate_config
from pretrain3d.errors import DataError
from pretrain3d.retrieval import benchmark as rb


def test_room_key_groups_rescans_and_scannet_captures():
    assert rb.room_key("synth_val_0003_r1") == rb.room_key("synth_val_0003") == "synth_val_0003"
    assert rb.room_key("scene0011_01") == rb.room_key("scene0011_00") == "scene0011"
    assert rb.room_key("Area_5_office_1") == "Area_5_office_1"


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _look_at_origin_pose(eye):
    """Camera-to-world pose (OpenCV axes: x right, y down, z forward) at ``eye`` looking at the origin."""
    z = _unit(-np.asarray(eye, float))
    x = _unit(np.cross([0.0, 0.0, 1.0], z))
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = eye
    return pose


def test_image_benchmark_finds_the_other_capture_and_its_pose():
    """Scenes 0/2 are captures of room A, 1 of room B. A query from scene 0 matches scene 0 best (its own
    capture, left out) and scene 2 next: rank 1. Its cells are scene 2's keypoints projected by a known
    camera, so PnP recovers the pose."""
    rng = np.random.default_rng(0)
    S, K, D = 3, 40, 16
    xyz = rng.uniform(-1, 1, (S, K, 3)).astype(np.float32)
    bank = _unit(rng.normal(size=(S, K, D))).astype(np.float32)
    bank[0] = bank[2]  # room A's two captures share descriptors...
    xyz[0] = xyz[2]
    ids = ["room_a", "room_b", "room_a_r1"]
    Kmat = np.array([[100.0, 0, 80], [0, 100.0, 60], [0, 0, 1]])
    pose = _look_at_origin_pose([0.3, -4.0, 1.0])
    w2c = np.linalg.inv(pose)
    cam = xyz[2] @ w2c[:3, :3].T + w2c[:3, 3]
    uv = (cam @ Kmat.T)[:, :2] / cam[:, 2:3]

    def cells(image):
        return bank[2] + 0.01 * rng.normal(size=bank[2].shape).astype(np.float32), uv

    q = {"scene": "room_a", "frame": 0, "image": np.zeros((120, 160, 3), np.uint8), "intrinsics": Kmat, "pose": pose}
    out = rb.image_benchmark(ids, xyz, bank, [q], cells, shared_frame=True, reproj_px=2.0)
    assert out["queries"] == 1 and out["recall@1"] == 1.0 and out["chance@1"] == pytest.approx(0.5)
    assert out["examples"][0]["top"][0][0] == "room_a_r1"  # its own capture is not in the answer
    assert out["pose"]["evaluated"] == 1
    assert out["pose"]["rotation_deg_median"] < 0.5 and out["pose"]["translation_m_median"] < 0.02
    # a query from room B has no other capture: a counted skip, not a score
    skipped = rb.image_benchmark(ids, xyz, bank, [{**q, "scene": "room_b"}], cells, shared_frame=False)
    assert skipped["queries"] == 0 and skipped["skipped"] == 1 and np.isnan(skipped["recall@1"])
    assert "do not share a world frame" in skipped["pose"]["skipped"]
    # wrong descriptors: the query ranks the wrong room first
    wrong = rb.image_benchmark(ids, xyz, bank, [q], lambda im: (bank[1], uv[:K]), shared_frame=False)
    assert wrong["recall@1"] == 0.0 and wrong["mean_rank"] == 2.0


def test_duplicate_benchmark_average_precision_and_chance():
    rng = np.random.default_rng(1)
    base = _unit(rng.normal(size=(2, 20, 8))).astype(np.float32)
    noisy = _unit(base + 0.05 * rng.normal(size=base.shape)).astype(np.float32)
    ids = ["a", "b", "a_r1", "b_r1"]
    out = rb.duplicate_benchmark(ids, np.concatenate([base, noisy]))
    assert out["pairs"] == 6 and out["positives"] == 2 and out["chance"] == pytest.approx(1 / 3)
    assert out["ap"] == pytest.approx(1.0)
    # identical scenes of different rooms: the positives cannot be told apart (pessimistic ties)
    same = np.repeat(base[:1], 4, axis=0)
    assert rb.duplicate_benchmark(ids, same)["ap"] < 1.0


def test_language_benchmark_scores_classes_with_positives_and_negatives_only():
    D, T = 4, 3
    head = np.eye(T, D, dtype=np.float32)
    text = np.eye(T, dtype=np.float32)
    bank = np.zeros((3, 2, D), np.float32)
    bank[0, 0, 0] = bank[1, 0, 1] = bank[2, 0, 1] = 1.0  # scene 0 has class 0, scenes 1-2 class 1
    bank[:, 1, 3] = 1.0
    rel = np.array([[1, 0, 1], [0, 1, 1], [0, 1, 1]], bool)  # class 2 is everywhere: no ranking
    out = rb.language_benchmark(["s0", "s1", "s2"], bank, head, text, rel, ["c0", "c1", "c2"], ["q0", "q1", "q2"])
    assert out["classes"] == 2 and out["left_out"] == ["c2"] and out["map"] == pytest.approx(1.0)
    assert out["per_class_ap"]["c0"] == 1.0 and out["chance"] == pytest.approx((1 / 3 + 2 / 3) / 2)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from pretrain3d.data import synthetic as syn
    from pretrain3d.data.scannet_like import preprocess_scannet_like

    tmp = tmp_path_factory.mktemp("queries")
    syn.generate_dataset(tmp / "raw", num_train=2, num_val=2, seed=7, frames_per_scene=2, width=64, height=48,
                         points_per_m2=150.0, workers=1, progress=False, rescans=1)
    preprocess_scannet_like(tmp / "raw", tmp / "processed", workers=1, progress=False,
                            splits=("train", "val", "rescan"))
    over = tiny_overrides(tmp)
    over["tracking"] = {"enabled": False}
    return tmp, validate_config(over)


def test_query_benchmark_stage_end_to_end_and_query_text(repo, tmp_path, one_torch_thread, capsys):
    import yaml

    from pretrain3d import cli
    from pretrain3d.stages.query_benchmark import score_queries

    tmp, cfg = repo
    out = tmp_path / "q"
    res = score_queries(cfg, "teacher", 0, out, progress=False)
    assert res["repository"] == {"scenes": 4, "rooms": 2, "splits": ["val", "rescan"]}
    assert res["image"]["queries"] == 8 and res["image"]["chance@1"] == pytest.approx(1 / 3)
    assert 0.0 <= res["image"]["recall@1"] <= res["image"]["recall@5"] == 1.0  # 3 candidates: always in the top 5
    assert res["duplicates"]["pairs"] == 6 and res["duplicates"]["positives"] == 2
    assert res["uses_gt_labels"] is True and res["gt_labels_in"] == "language_head"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["fingerprint"]["k"] == 16 and on_disk["fingerprint"]["source"] == "teacher"
    for kind in ("image", "scene", "text"):
        assert (out / "figures" / f"{kind}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "index" / "text_head.npz").exists()
    # the real fixture's held-out frames: the fused real scene is found among the procedural rooms
    real = res["real_image"]
    if Path(cfg.data.sevenscenes.root).is_dir():
        assert real["status"] == "ok" and real["repository_scenes"] == 5 and real["queries"] == 16
        assert real["recall@1"] >= 0.75  # real RGB vs procedural rooms: the teacher tells them apart
        assert real["pose"]["evaluated"] + real["pose"]["failed"] == 16
    else:
        assert real["status"] == "skipped" and "not found" in real["reason"]
    # the index it leaves answers `pretrain3d query text` (and image/scene, tested elsewhere)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    base = ["--config", str(tmp_path / "p.yaml"), "--source", "teacher", "--index", str(out / "index")]
    capsys.readouterr()
    assert cli.main(["query", "text", *base, "--text", "a room with a bed", "--top", "2"]) == 0
    printed = capsys.readouterr().out
    assert "uses_gt_labels=true" in printed and len([ln for ln in printed.splitlines() if ln.startswith("  ")]) == 2
    # an index without a text head is a clear error, not an answer
    (out / "index" / "text_head.npz").unlink()
    assert cli.main(["query", "text", *base, "--text", "a bed"]) == 2
    assert "has no text head" in capsys.readouterr().err


def test_query_benchmark_refuses_an_empty_repository(tmp_path):
    from pretrain3d.stages.query_benchmark import repository_scenes

    over = tiny_overrides(tmp_path)
    over["data"]["processed_root"] = str(tmp_path / "nothing")
    with pytest.raises(DataError, match="repository is empty"):
        repository_scenes(validate_config(over))


def test_a_method_source_needs_its_backbone(repo):
    from pretrain3d.errors import ConfigError
    from pretrain3d.retrieval.sources import build_source

    _, cfg = repo
    with pytest.raises(ConfigError, match="needs --backbone"):
        build_source(cfg, "condense")
    with pytest.raises(ConfigError, match="no such backbone file"):
        build_source(cfg, "ppkt", Path("/nonexistent/backbone.pt"))
    with pytest.raises(ConfigError, match="unknown scene-query feature source"):
        build_source(cfg, "nope")


def test_report_columns_have_mlflow_safe_metric_keys():
    import re

    from pretrain3d.stages.query_report import COLUMNS, metric_key

    keys = [metric_key(name) for name, _, _ in COLUMNS]
    assert len(set(keys)) == len(keys) and "image_r_at_1" in keys and "7_scenes_pose_rot" in keys
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", k) for k in keys)
