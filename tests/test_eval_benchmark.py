"""ScanNet benchmark format: official scoring semantics, file errors, export of predictions and GT.

The reference semantics are those of ScanNet's BenchmarkScripts/3d_evaluation/evaluate_semantic_label.py
(HEAD e2bf12b), re-derived here independently of the module under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from pretrain3d.cli import main
from pretrain3d.config import validate_config
from pretrain3d.data.labels import SCANNET20_NAMES, SCANNET20_NYU40_IDS, nyu40_to_scannet20
from pretrain3d.data.scene import ProcessedScene, write_processed_scene
from pretrain3d.errors import DataError
from pretrain3d.evaluation import scannet_benchmark as sb

VALID = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]  # typed from the script


def _write(d: Path, scene: str, ids) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{scene}.txt"
    p.write_text("".join(f"{int(v)}\n" for v in ids))
    return p


def official_reference(scenes):
    """Straight re-implementation of the official rules, vertex by vertex."""
    unknown = max(VALID) + 1
    conf = np.zeros((unknown + 1, unknown + 1), dtype=np.uint64)
    for gt, pred in scenes:
        for g, p in zip(gt, pred):
            if g not in VALID:
                continue
            if p not in VALID:
                p = unknown
            conf[g][p] += 1
    ious = {}
    for name, lid in zip(SCANNET20_NAMES, VALID):
        tp = int(conf[lid, lid])
        fn = int(conf[lid, :].sum()) - tp
        fp = int(conf[[v for v in VALID if v != lid], lid].sum())
        denom = tp + fp + fn
        ious[name] = float("nan") if denom == 0 else tp / denom
    defined = [v for v in ious.values() if not math.isnan(v)]  # the benchmark's score average
    return ious, (sum(defined) / len(defined) if defined else float("nan"))


def test_valid_ids_match_the_official_list():
    assert list(sb.VALID_CLASS_IDS) == VALID == list(SCANNET20_NYU40_IDS)


def test_hand_computed_confusion(tmp_path):
    gt_a = [1, 1, 1, 2, 2, 0, 13, 5, 5, 40]
    pr_a = [1, 2, 0, 2, 2, 1, 1, 5, 13, 5]
    # v0 wall TP; v1 wall→floor: FN wall + FP floor; v2 wall→0: FN wall only; v3,v4 floor TP;
    # v5 (gt 0), v6 (gt 13, valid NYU40 but not benchmark), v9 (gt 40) ignored whatever predicted;
    # v7 chair TP; v8 chair→13: FN chair only.
    gt_b, pr_b = [3, 3], [3, 4]  # cabinet TP + cabinet→bed; bed has no gt: IoU 0
    _write(tmp_path / "gt", "scene0000_00", gt_a)
    _write(tmp_path / "pred", "scene0000_00", pr_a)
    _write(tmp_path / "gt", "scene0001_00", gt_b)
    _write(tmp_path / "pred", "scene0001_00", pr_b)
    r = sb.evaluate_dirs(tmp_path / "gt", tmp_path / "pred").to_dict()
    iou = r["iou_per_class"]
    assert iou["wall"] == pytest.approx(1 / 3)
    assert iou["floor"] == pytest.approx(2 / 3)
    assert iou["cabinet"] == pytest.approx(1 / 2)
    assert iou["bed"] == 0.0
    assert iou["chair"] == pytest.approx(1 / 2)
    undefined = [n for n in SCANNET20_NAMES if n not in ("wall", "floor", "cabinet", "bed", "chair")]
    assert all(iou[n] is None for n in undefined) and r["undefined_classes"] == undefined
    assert r["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2 + 0 + 1 / 2) / 5)
    assert r["num_classes_averaged"] == 5
    assert r["num_evaluated_vertices"] == 9 and r["num_vertices"] == 12 and r["num_unknown_predictions"] == 2
    rows = {row["class"]: row for row in r["per_class"]}
    assert (rows["wall"]["tp"], rows["wall"]["fp"], rows["wall"]["fn"]) == (1, 0, 2)
    assert (rows["floor"]["tp"], rows["floor"]["fp"], rows["floor"]["fn"]) == (2, 1, 0)
    ref_iou, ref_miou = official_reference([(gt_a, pr_a), (gt_b, pr_b)])
    assert r["mIoU"] == pytest.approx(ref_miou)


def test_no_ground_truth_and_no_prediction_anywhere(tmp_path):
    _write(tmp_path / "gt", "s", [0, 0, 13])  # nothing evaluable at all
    _write(tmp_path / "pred", "s", [1, 2, 3])
    r = sb.evaluate_dirs(tmp_path / "gt", tmp_path / "pred").to_dict()
    assert r["mIoU"] is None and all(v is None for v in r["iou_per_class"].values())
    assert "mIoU: nan" in sb.format_table(r)


@pytest.mark.parametrize("trial", range(6))
def test_randomised_agreement_with_the_official_formula(tmp_path, trial, capsys):
    rng = np.random.default_rng(100 + trial)
    ids = np.array(VALID)
    absent = rng.choice(ids, size=4, replace=False)  # classes that never occur in gt ...
    pred_only = absent[:2]  # ... two of which are still predicted (IoU 0), two not at all (undefined)
    gt_pool = np.setdiff1d(ids, absent)
    pred_pool = np.setdiff1d(ids, absent[2:])
    scenes = []
    for s in range(int(rng.integers(2, 6))):
        n = int(rng.integers(300, 1500))
        gt = rng.choice(gt_pool, n)
        off = rng.random(n)
        gt[off < 0.15] = rng.choice([0, 13, 15, 40, -1, 41], int((off < 0.15).sum()))  # ignored gt
        pred = np.where(rng.random(n) < 0.6, gt, rng.choice(pred_pool, n))
        pred[~np.isin(pred, VALID)] = rng.choice(pred_pool, int((~np.isin(pred, VALID)).sum()))
        wild = rng.random(n) < 0.05
        pred[wild] = rng.choice([0, 13, 17, 40, 41, 255, -1], int(wild.sum()))  # out-of-set predictions
        _write(tmp_path / "gt", f"scene{s:04d}_00", gt)
        _write(tmp_path / "pred", f"scene{s:04d}_00", pred)
        scenes.append((gt.tolist(), pred.tolist()))
    out = tmp_path / "res.json"
    assert main(["eval-benchmark", "--format", "scannet", "--gt-dir", str(tmp_path / "gt"),
                 "--pred-dir", str(tmp_path / "pred"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    ref_iou, ref_miou = official_reference(scenes)
    for name in SCANNET20_NAMES:
        if math.isnan(ref_iou[name]):
            assert r["iou_per_class"][name] is None
        else:
            assert round(r["iou_per_class"][name], 4) == round(ref_iou[name], 4)
            assert r["iou_per_class"][name] == pytest.approx(ref_iou[name], abs=1e-12)
            assert f"{ref_iou[name]:.4f}" in printed
    assert sum(r["iou_per_class"][n] == 0.0 for n in SCANNET20_NAMES) >= 2  # the predicted-only classes
    assert r["num_classes_averaged"] == 18
    assert round(r["mIoU"], 4) == round(ref_miou, 4)
    assert r["mIoU"] == pytest.approx(ref_miou, abs=1e-12)
    assert f"mIoU: {ref_miou:.4f}" in printed


# ----------------------------------------------------------------------------- bad input
def test_vertex_count_mismatch_names_the_prediction_file(tmp_path):
    _write(tmp_path / "gt", "scene0000_00", [1, 2, 3])
    p = _write(tmp_path / "pred", "scene0000_00", [1, 2])
    with pytest.raises(DataError) as e:
        sb.evaluate_dirs(tmp_path / "gt", tmp_path / "pred")
    assert e.value.path == p and "2 predicted values" in str(e.value) and "3" in str(e.value)


def test_missing_and_extra_prediction_files(tmp_path):
    _write(tmp_path / "gt", "scene0000_00", [1])
    _write(tmp_path / "gt", "scene0001_00", [1])
    _write(tmp_path / "pred", "scene0000_00", [1])
    with pytest.raises(DataError, match="scene0001_00") as e:
        sb.evaluate_dirs(tmp_path / "gt", tmp_path / "pred")
    assert e.value.path == tmp_path / "pred" / "scene0001_00.txt"
    _write(tmp_path / "pred", "scene0001_00", [1])
    _write(tmp_path / "pred", "scene0099_00", [1])
    with pytest.raises(DataError, match="scene0099_00.*matches no ground-truth"):
        sb.evaluate_dirs(tmp_path / "gt", tmp_path / "pred")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no <scene>.txt"):
        sb.evaluate_dirs(tmp_path / "empty", tmp_path / "pred")
    with pytest.raises(DataError, match="directory not found"):
        sb.evaluate_dirs(tmp_path / "nowhere", tmp_path / "pred")


def test_non_integer_lines_name_the_line(tmp_path, capsys):
    _write(tmp_path / "gt", "s", [1, 2, 3])
    p = tmp_path / "pred" / "s.txt"
    p.parent.mkdir()
    for body, line in (("1\n2\n3.0\n", 3), ("1\n\n3\n", 2), ("wall\n2\n3\n", 1), ("1\n2\n99999999999999999999\n", 3)):
        p.write_text(body)
        with pytest.raises(DataError, match=f"line {line}:") as e:
            sb.evaluate_dirs(tmp_path / "gt", tmp_path / "pred")
        assert e.value.path == p
    # Through the CLI: exit code 2 and the file in the message, no traceback.
    assert main(["eval-benchmark", "--gt-dir", str(tmp_path / "gt"), "--pred-dir", str(tmp_path / "pred")]) == 2
    assert f"{p}: line 3" in capsys.readouterr().err


def test_read_ids_parses_like_the_official_loader(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text(" 3\n+4 \r\n-1\n0\n")  # blanks, a sign, CRLF: the official int() parse accepts them
    np.testing.assert_array_equal(sb.read_ids(p), np.array(open(p).read().splitlines(), dtype=np.int64))
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe1\n")
    with pytest.raises(DataError, match="not a text file"):
        sb.read_ids(tmp_path / "b.txt")


# ----------------------------------------------------------------------------- export
def test_label_mappings_round_trip_and_reject_bad_values():
    seg = np.array([-1, 0, 1, 12, 13, 19])
    nyu = sb.segment20_to_nyu40(seg)
    np.testing.assert_array_equal(nyu, [0, 1, 2, 14, 16, 39])
    np.testing.assert_array_equal(nyu40_to_scannet20(nyu), seg)
    np.testing.assert_array_equal(sb.prediction_to_nyu40(np.arange(20)), VALID)
    with pytest.raises(ValueError):
        sb.prediction_to_nyu40([0, 20])
    with pytest.raises(ValueError):
        sb.prediction_to_nyu40([-1])
    with pytest.raises(ValueError):
        sb.segment20_to_nyu40([-2])


def test_write_scene_dir_is_whole_and_refuses_foreign_folders(tmp_path):
    d = tmp_path / "submit"
    sb.write_scene_dir(d, {"scene0000_00": np.array([1, 39]), "scene0001_00": np.array([], dtype=np.int64)})
    assert (d / "scene0000_00.txt").read_text() == "1\n39\n"
    assert sb.read_ids(d / "scene0001_00.txt").shape == (0,)
    sb.write_scene_dir(d, {"scene0002_00": np.array([5])})  # replaced as a whole: no stale scenes
    assert sorted(p.name for p in d.iterdir()) == ["scene0002_00.txt"]
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        sb.write_scene_dir(tmp_path, {"x": np.array([1])})
    assert (tmp_path / "notes.md").read_text() == "mine"


def _tiny_run(tmp: Path):
    """A tiny config, two labelled val scenes, one unlabelled test scene and an untrained segmentor."""
    from pretrain3d.engine.trainer import save_checkpoint
    from pretrain3d.models.segmentor import build_segmentor
    from pretrain3d.stages.finetune import MODEL_FORMAT

    over = tiny_overrides(tmp)
    over["tracking"]["enabled"] = False
    over["train"]["grid_size"] = 0.25
    cfg = validate_config(over)
    rng = np.random.default_rng(0)
    root = Path(cfg.data.processed_root)
    for split, k in (("val", 2), ("test", 1)):
        for i in range(k):
            n = 800
            normal = rng.normal(size=(n, 3))
            seg = rng.integers(-1, 20, n)
            d = write_processed_scene(root / split / f"scene{i:04d}_0{k}", ProcessedScene(
                f"scene{i:04d}_0{k}", rng.uniform(0, [3, 3, 2], (n, 3)).astype(np.float32),
                rng.integers(0, 256, (n, 3)).astype(np.uint8),
                (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32), seg))
            if split == "test":
                (d / "segment.npy").unlink()  # like ScanNet's test split
    torch.manual_seed(0)
    model = build_segmentor(cfg.model, 20)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp / "model.pt", {"format": MODEL_FORMAT, "kind": "segmentor", "model": state,
                                       "num_classes": 20, "uses_gt_labels": True, "fingerprint": "test"})
    return cfg, tmp / "model.pt"


def test_export_then_eval_benchmark_matches_the_internal_metrics(tmp_path, capsys):
    from pretrain3d.stages.evaluate import eval_benchmark, evaluate, export_benchmark

    cfg, model = _tiny_run(tmp_path)
    res = evaluate(cfg, model, tmp_path / "eval", "scratch", 0, export_dir=tmp_path / "pred_eval")
    export_benchmark(cfg, "val", pred_dir=tmp_path / "pred", gt_dir=tmp_path / "gt", model_path=model)
    for scene in ("scene0000_02", "scene0001_02"):  # same predictions from both routes
        assert (tmp_path / "pred" / f"{scene}.txt").read_text() == (tmp_path / "pred_eval" / f"{scene}.txt").read_text()
    bench = eval_benchmark("scannet", tmp_path / "gt", tmp_path / "pred", tmp_path / "bench.json")
    # Predictions are always one of the 20 classes, so official and internal IoUs coincide.
    assert bench["num_evaluated_vertices"] == res["num_points"]
    assert bench["mIoU"] == pytest.approx(res["mIoU"], abs=1e-12)
    assert bench["iou_per_class"] == pytest.approx(res["iou_per_class"])
    assert json.loads((tmp_path / "bench.json").read_text())["mIoU"] == pytest.approx(res["mIoU"])
    # The unlabelled test split exports predictions (one per vertex), but no ground truth.
    export_benchmark(cfg, "test", pred_dir=tmp_path / "pred_test", model_path=model)
    assert len(sb.read_ids(tmp_path / "pred_test" / "scene0000_01.txt")) == 800
    with pytest.raises(DataError, match="label file not found"):
        export_benchmark(cfg, "test", gt_dir=tmp_path / "gt_test")


def test_one_process_evaluates_several_models_each_beside_its_model(tmp_path):
    """The workflow's evaluate job (one per method): the same metrics as one model at a time, written
    beside each model.pt; a checkpoint of another method is refused, naming the file."""
    import shutil

    from pretrain3d.engine.trainer import CheckpointError, load_checkpoint, save_checkpoint
    from pretrain3d.stages.evaluate import evaluate, evaluate_models

    cfg, model = _tiny_run(tmp_path)
    runs = []
    for protocol, seed in (("la", 0), ("probe", 1)):
        d = tmp_path / "runs" / protocol / f"seed{seed}"
        d.mkdir(parents=True)
        ck = load_checkpoint(model)
        save_checkpoint(d / "model.pt", {**ck, "method": "scratch", "protocol": protocol, "seed": seed})
        runs.append(d / "model.pt")
    together = evaluate_models(cfg, runs, "scratch")
    assert [(r["protocol"], r["seed"]) for r in together] == [("la", 0), ("probe", 1)]
    for path, res in zip(runs, together):
        assert (path.parent / "metrics.json").is_file() and (path.parent / "render.png").is_file()
        alone = evaluate(cfg, path, tmp_path / "alone", "scratch", res["seed"], protocol=res["protocol"])
        assert alone["mIoU"] == res["mIoU"] and alone["num_points"] == res["num_points"]
    shutil.rmtree(tmp_path / "alone")
    with pytest.raises(CheckpointError, match=r"seed0/model.pt.*expected method 'ppkt'"):
        evaluate_models(cfg, runs, "ppkt")
