"""PPT: label spaces (and Pointcept #425), multi-dataset batches, heads, and a tiny pre-training run."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain3d.config import validate_config
from pretrain3d.data.multi_dataset import MultiDatasetBatches, multi_collate
from pretrain3d.models.ppt_heads import LabelSpaces

from conftest import tiny_overrides

# Pointcept's PPT-v1m1 unified class list (36 names) and its per-dataset union rows, as facts from
# pointcept/models/point_prompt_training/point_prompt_training_v1m1_language_guided.py.
UNIFIED = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "bookcase",
           "picture", "counter", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "ceiling",
           "refrigerator", "television", "shower curtain", "nightstand", "toilet", "sink", "lamp", "bathtub",
           "garbagebin", "board", "beam", "column", "clutter", "otherstructure", "otherfurniture", "otherprop")
S3DIS = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase",
         "board", "clutter")
POINTCEPT_S3DIS_ROWS = (0, 1, 4, 5, 6, 7, 8, 10, 19, 29, 30, 31, 32)  # sorted: the #425 bug


def test_label_spaces_map_each_label_to_its_own_name():
    from pretrain3d.data.labels import SCANNET20_NAMES

    spaces = LabelSpaces.build({"ScanNet": SCANNET20_NAMES, "S3DIS": S3DIS})
    for d, names in spaces.names.items():
        assert [spaces.union[r] for r in spaces.valid_index[d]] == list(names)
    assert len(spaces.union) == 20 + len(set(S3DIS) - set(SCANNET20_NAMES))
    seg = torch.tensor([0, 2, -1, 12])
    assert spaces.to_union("S3DIS", seg).tolist() == [spaces.union.index("ceiling"), spaces.union.index("wall"), -1,
                                                       spaces.union.index("clutter")]


def test_pointcepts_sorted_s3dis_index_is_rejected():
    """The check fails on Pointcept's S3DIS valid_index (issue #425) and passes on the label-order one."""
    spaces = LabelSpaces({"S3DIS": S3DIS}, UNIFIED, {"S3DIS": tuple(UNIFIED.index(c) for c in S3DIS)})
    spaces.check()
    with pytest.raises(ValueError, match="label 0 \\('ceiling'\\) maps to union class 'wall'.*sorted"):
        spaces.check({"S3DIS": POINTCEPT_S3DIS_ROWS})


def test_labels_outside_a_dataset_and_unknown_datasets_fail():
    spaces = LabelSpaces.build({"A": ("x", "y"), "B": ("y", "z", "w")})
    with pytest.raises(ValueError, match="labels \\[2\\] outside dataset 'A'"):
        spaces.check_labels("A", torch.tensor([0, 2, -1]), "scene_7")
    with pytest.raises(ValueError, match="dataset 'C' is not one of"):
        spaces.check_labels("C", torch.tensor([0]))
    with pytest.raises(ValueError, match="repeat"):
        LabelSpaces.build({"A": ("x", "x")})


def test_batches_are_homogeneous_deterministic_resumable_and_follow_the_loops():
    sizes, loops = {"A": 5, "B": 3, "C": 4}, {"A": 1, "B": 2, "C": 1}
    a = list(MultiDatasetBatches(sizes, 2, seed=0, epoch=3, loops=loops))
    assert a == list(MultiDatasetBatches(sizes, 2, seed=0, epoch=3, loops=loops))
    assert a != list(MultiDatasetBatches(sizes, 2, seed=0, epoch=4, loops=loops))
    assert all(len({d for d, _, _ in b}) == 1 for b in a)
    seen = {d: sorted(i for b in a for dd, i, _ in b if dd == d) for d in sizes}
    assert seen == {"A": list(range(5)), "B": sorted(list(range(3)) * 2), "C": list(range(4))}
    assert len(a) == MultiDatasetBatches.num_batches(sizes, 2, loops) == 3 + 3 + 2
    assert list(MultiDatasetBatches(sizes, 2, seed=0, epoch=3, loops=loops, start=5)) == a[5:]
    with pytest.raises(ValueError, match="not in the run"):
        MultiDatasetBatches(sizes, 2, 0, 0, loops={"D": 1})
    with pytest.raises(ValueError, match="mixes datasets"):
        multi_collate([{"grid_coord": torch.zeros(1, 3), "condition": "A"},
                       {"grid_coord": torch.zeros(1, 3), "condition": "B"}])


def _fake_dataset(root: Path, prefix: str, num_classes: int, n_train: int, seed: int, scale: float):
    from pretrain3d.data.scene import ProcessedScene, write_processed_scene

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", 1)):
        for i in range(n):
            m = 600
            coord = rng.uniform(0, 2.0 * scale, (m, 3)).astype(np.float32)
            seg = (coord[:, 2] / (2.0 * scale) * num_classes).astype(np.int64).clip(0, num_classes - 1)
            normal = np.tile(np.float32([0, 0, 1]), (m, 1))
            color = rng.integers(0, 255, (m, 3)).astype(np.uint8)
            write_processed_scene(root / split / f"{prefix}_{split}_{i}",
                                  ProcessedScene(f"{prefix}_{split}_{i}", coord, color, normal, seg))


def _ppt_config(tmp: Path, head="decoupled", datasets=("ScanNet", "S3DIS")):
    o = tiny_overrides(tmp)
    o["experiment"]["methods"] = ["scratch", "ppt"]
    o["data"]["processed_root"] = str(tmp / "scannet")
    o["ppt_study"] = {"enabled": True, "epochs": 1}
    o["multi_dataset"] = {"target": "ScanNet", "loops": {"S3DIS": 2}, "context_channels": 8, "datasets": {
        "S3DIS": {"dataset": "s3dis", "num_classes": 13, "raw_root": str(tmp / "raw_s3dis"),
                  "processed_root": str(tmp / "s3dis")}}}
    o["pretrain"]["ppt"] = {"datasets": list(datasets), "head": head}
    return validate_config(o)


def test_config_checks_the_ppt_datasets(tmp_path):
    with pytest.raises(Exception, match="pretrain.ppt.datasets \\['Matterport'\\]"):
        _ppt_config(tmp_path, datasets=("ScanNet", "Matterport"))
    o = tiny_overrides(tmp_path)
    o["multi_dataset"] = {"datasets": {"S3DIS": {"dataset": "s3dis", "num_classes": 13,
                                                 "raw_root": o["data"]["raw_root"], "processed_root": "x"}}}
    with pytest.raises(Exception, match="its own raw_root"):
        validate_config(o)


@pytest.mark.parametrize("head", ["decoupled", "language", "joint"])
def test_ppt_pretraining_saves_a_backbone_fine_tuning_can_load(tmp_path, head, one_torch_thread):
    from pretrain3d.engine.trainer import load_checkpoint
    from pretrain3d.methods.ppt import ConditionedSegmentor, load_ppt_model
    from pretrain3d.models.segmentor import build_backbone
    from pretrain3d.stages.pretrain import pretrain

    _fake_dataset(tmp_path / "scannet", "sc", 20, 2, 0, 1.0)
    _fake_dataset(tmp_path / "s3dis", "s3", 13, 2, 1, 1.5)
    cfg = _ppt_config(tmp_path, head)
    summary = pretrain(cfg, "ppt", 0, tmp_path / "out", progress=False)
    assert summary["steps"] == 2 * (2 + 4)  # 2 epochs x (ScanNet 2 scenes + S3DIS 2 scenes x 2 loops), batch 1
    ck = load_checkpoint(tmp_path / "out" / "backbone.pt")
    assert ck["uses_gt_labels"] is True and ck["ppt"]["export_condition"] == "ScanNet"
    plain = build_backbone(cfg.model)
    plain.load_state_dict(ck["backbone"], strict=True)  # what fine-tuning loads
    model = load_ppt_model(cfg, tmp_path / "out" / "backbone.pt")
    gc = torch.unique(torch.randint(0, 20, (400, 3)), dim=0)
    batch = {"grid_coord": gc, "feat": torch.rand(len(gc), 6), "offset": torch.tensor([len(gc)])}
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(batch), model.backbone({**batch, "condition": "ScanNet"}), atol=1e-5)
        assert ConditionedSegmentor(model, "S3DIS")(batch).shape == (len(gc), 13)


def test_study_variants_and_jobs(tmp_path):
    from pretrain3d.workflow.steps import extra_datasets, study_jobs, study_variants

    cfg = _ppt_config(tmp_path)
    assert study_variants(cfg) == ["single-ScanNet", "single-S3DIS", "joint", "ppt"]
    assert len(study_jobs(cfg)) == 4 * len(cfg.experiment.seeds)
    every = cfg.model_copy(update={"ppt_study": cfg.ppt_study.model_copy(update={"variants": [
        "single", "single_language", "joint", "ppt", "ppt_decoupled"]})})
    assert study_variants(every) == ["single-ScanNet", "single-S3DIS", "single_language-ScanNet",
                                     "single_language-S3DIS", "joint", "ppt", "ppt_decoupled"]
    assert extra_datasets(cfg) == ["S3DIS"]
    off = validate_config(tiny_overrides(tmp_path))  # the study off, no multi-dataset method
    assert study_variants(off) == [] and extra_datasets(off) == []


def test_study_runs_a_variant_and_the_report_compares_with_single(tmp_path, one_torch_thread):
    import json

    from pretrain3d.stages.ppt_report import study_section
    from pretrain3d.stages.ppt_study import parse_variant, run_variant

    _fake_dataset(tmp_path / "scannet", "sc", 20, 2, 0, 1.0)
    _fake_dataset(tmp_path / "s3dis", "s3", 13, 2, 1, 1.5)
    cfg = _ppt_config(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'Matterport'"):
        parse_variant(cfg, "single-Matterport")
    with pytest.raises(ValueError, match="unknown ppt_study variant"):
        parse_variant(cfg, "joint-S3DIS")
    files = []
    for variant in ("single-S3DIS", "ppt_decoupled"):
        r = run_variant(cfg, variant, 0, tmp_path / variant, progress=False)
        files.append(tmp_path / variant / "metrics.json")
        assert json.loads(files[-1].read_text())["metrics"].keys() == set(r["datasets"])
    assert r["datasets"] == ["ScanNet", "S3DIS"] and r["uses_gt_labels"] is True
    assert r["steps"] == cfg.ppt_study.epochs * (2 + 2 * 2)  # ScanNet 2 scenes + S3DIS 2 scenes x 2 loops
    # the study's crop (ppt_study.max_points) reaches every dataset's training samples
    from pretrain3d.methods.ppt import multi_train_dataset

    md, _ = multi_train_dataset(cfg, ["ScanNet", "S3DIS"], cfg.train.augment, 7)
    for name, ds in md.datasets.items():
        assert all(len(ds[(i, 3)]["grid_coord"]) == 7 for i in range(len(ds))), name
    text, summary = study_section([str(f) for f in files])
    assert "| S3DIS |" in text and "| ScanNet |" in text
    d = summary["S3DIS"]["delta"]["ppt_decoupled"]
    assert d["n"] == 1 and d["mean"] == pytest.approx(summary["S3DIS"]["ppt_decoupled"]["mean"]
                                                      - summary["S3DIS"]["single"]["mean"])


def test_ponderv2_ppt_renders_over_two_datasets_with_the_ppt_loss_in_the_loss(tmp_path, one_torch_thread):
    from pretrain3d.engine.trainer import load_checkpoint
    from pretrain3d.models.segmentor import build_backbone
    from pretrain3d.stages.data import dataset_data, generate, preprocess
    from pretrain3d.stages.pretrain import pretrain

    o = tiny_overrides(tmp_path)
    o["experiment"]["pretrain_only"] = ["ponderv2_ppt"]
    o["pretrain"]["ponderv2_ppt"] = {"datasets": ["ScanNet", "Structured3D"]}
    o["tracking"]["enabled"] = False
    cfg = validate_config(o)
    generate(cfg)
    preprocess(cfg)
    dataset_data(cfg, "Structured3D")
    summary = pretrain(cfg, "ponderv2_ppt", 0, tmp_path / "out", progress=False)
    final = summary["final"]
    assert final["loss_ppt"] > 0 and "loss_depth" in final and summary["uses_gt_labels"] is True
    assert summary["steps"] == 2 * (2 + 2)  # 2 epochs x (2 + 2 training scenes), batch 1
    ck = load_checkpoint(tmp_path / "out" / "backbone.pt")
    build_backbone(cfg.model).load_state_dict(ck["backbone"], strict=True)
    assert ck["ponderv2_ppt"]["export_condition"] == "ScanNet" and "renderer" in ck
    # the PPT term is in the loss that is back-propagated (PonderV2's code only logs it)
    from pretrain3d.methods.ponderv2_ppt import build

    setup = build(cfg, "ponderv2_ppt", None)
    batch = setup.collate([setup.dataset[("Structured3D", 0, 123)]])
    torch.manual_seed(0)
    with_ppt, logs = setup.model.loss(batch)
    setup.model.ppt_weight = 0.0
    torch.manual_seed(0)
    without, _ = setup.model.loss(batch)
    assert float(with_ppt - without) == pytest.approx(logs["loss_ppt"], rel=1e-4) and logs["loss_ppt"] > 0


def test_ppt_pretraining_resumed_after_a_crash_equals_an_uninterrupted_run(tmp_path, one_torch_thread):
    from pretrain3d.engine.trainer import load_checkpoint
    from pretrain3d.stages.pretrain import pretrain

    _fake_dataset(tmp_path / "scannet", "sc", 20, 2, 0, 1.0)
    _fake_dataset(tmp_path / "s3dis", "s3", 13, 2, 1, 1.5)
    cfg = _ppt_config(tmp_path, "decoupled")
    pretrain(cfg, "ppt", 0, tmp_path / "a", progress=False)
    with pytest.raises(SystemExit, match="simulated crash"):
        pretrain(cfg, "ppt", 0, tmp_path / "b", progress=False, crash_after_steps=5)  # mid-epoch 1 of 2
    resumed = pretrain(cfg, "ppt", 0, tmp_path / "b", progress=False)
    assert resumed["steps_this_process"] < resumed["steps"]
    a, b = (load_checkpoint(tmp_path / d / "backbone.pt") for d in ("a", "b"))
    for key in ("backbone", "multi_dataset_backbone", "ppt_head"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
