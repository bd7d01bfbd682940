"""Integration: the whole Snakemake pipeline on a tiny profile, MLflow store checked afterwards."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import REPO
from pipeline_util import make_workdir, snakemake

pytestmark = pytest.mark.slow


METHODS = ("scratch", "ppkt", "ponderv2", "ponderv2_semantic", "condense", "ppt")
STUDY = ("single-ScanNet", "single-S3DIS", "single-Structured3D", "ppt")
RUNS = [(m, p, s) for m in METHODS for p in ("la", "probe") for s in (0, 1)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("pipeline"),
                      # pre-training per seed: the per-seed paths (checks, queries, renders) of the extras overlay
                      extra={"experiment": {"methods": list(METHODS), "protocols": ["la", "probe"],
                                            "pretrain_per_seed": True},
                             "data": {"synthetic": {"rescans": 1}},  # the scene queries' duplicates
                             "ppt_study": {"enabled": True, "variants": ["single", "ppt"]}})
    snakemake(["--cores", "2"], wd)
    return wd


def test_pipeline_outputs(finished):
    wd = finished
    summary = json.loads((wd / "results/tiny/summary.json").read_text())
    for m in METHODS:
        for p in ("la", "probe"):
            assert summary["groups"][f"{m}/{p}"]["n_seeds"] == 2
    assert {(c["method"], c["protocol"]) for c in summary["comparisons"]} == {
        (m, p) for m in METHODS[1:] for p in ("la", "probe")}
    assert summary["groups"]["ponderv2_semantic/la"]["uses_gt_labels"] is True
    assert summary["groups"]["ponderv2/la"]["uses_gt_labels"] is False
    meta = json.loads(next((wd / "data/features").glob("*/meta.json")).read_text())
    assert meta["name"] == "dinov2_vits14" and meta["dim"] == 384
    for method, protocol, seed in RUNS:
        d = wd / f"results/tiny/runs/{method}/{protocol}/seed{seed}"
        m = json.loads((d / "metrics.json").read_text())
        assert 0.0 <= m["mIoU"] <= 1.0 and m["num_points"] > 0
        for png in ("confusion.png", "render.png"):
            assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (wd / "results/tiny/report.md").read_text()
    assert "scratch" in report and "ppkt" in report and "±" in report and "render.png" in report
    assert "Pre-training vs scratch" in report
    # PonderV2: held-out renders re-made from the saved renderer, and the real-data check (a recorded
    # skip here: the 7-Scenes path is relative to the repository, not this work dir)
    for m in ("ponderv2", "ponderv2_semantic"):
        assert (wd / f"results/tiny/renders/{m}-seed0.png").read_bytes()[:4] == b"\x89PNG"
        assert f"renders/{m}-seed0.png" in report
        log = json.loads((wd / f"results/tiny/pretrain/{m}/seed0/pretrain_log.json").read_text())
        assert log["uses_gt_labels"] is (m == "ponderv2_semantic") and log["steps"] == 4
    real = json.loads((wd / "results/tiny/real_check/ponderv2/render.json").read_text())
    assert real["status"] == "skipped" and "Real RGB-D (PonderV2)**: skipped" in report
    # ConDense: feature checks per seed beside the backbone, aggregated in the report with the PCA row
    for s in (0, 1):
        checks = json.loads((wd / f"results/tiny/pretrain/condense/seed{s}/checks.json").read_text())
        assert set(checks) >= {"consistency", "probe2d", "co_embedding"}
    assert "## ConDense (reconstruction)" in report and "consistency margin" in report
    assert (wd / "results/tiny/renders/condense-seed0-pca.png").read_bytes()[:4] == b"\x89PNG"
    real = json.loads((wd / "results/tiny/real_check/condense/render.json").read_text())
    assert real["status"] == "skipped" and "Real RGB-D (ConDense)**: skipped" in report
    # scene queries: the teacher baseline once, each method with query features per seed; the report's table
    for src, seeds in (("teacher", (0,)), ("ppkt", (0, 1)), ("condense", (0, 1))):
        for s in seeds:
            q = json.loads((wd / f"results/tiny/queries/{src}/seed{s}/metrics.json").read_text())
            assert q["repository"]["splits"] == ["val", "rescan"] and q["image"]["queries"] > 0
            assert 0.0 <= q["duplicates"]["ap"] <= 1.0 and q["uses_gt_labels"] is True
            assert (wd / f"results/tiny/queries/{src}/seed{s}/index/index.json").exists()
            assert q["real_image"]["status"] == "skipped"  # the fixture path is relative to the repository
    assert "## Scene queries" in report and "| condense |" in report and "| teacher |" in report
    assert (wd / "results/tiny/renders/queries/condense-image.png").read_bytes()[:4] == b"\x89PNG"
    # PPT: the other datasets generated in their own label spaces, the study per variant and seed, the report
    for root, k in (("raw-s3dis", 13), ("raw-structured3d", 25)):
        assert json.loads((wd / root / "meta.json").read_text())["label_space"]
    log = json.loads((wd / "results/tiny/pretrain/ppt/seed0/pretrain_log.json").read_text())
    assert log["uses_gt_labels"] is True and log["ppt"]["datasets"] == ["S3DIS", "Structured3D"]
    for v in STUDY:
        for s in (0, 1):
            m = json.loads((wd / f"results/tiny/ppt_study/{v}/seed{s}/metrics.json").read_text())
            assert all(0.0 <= r["mIoU"] <= 1.0 for r in m["metrics"].values())
    assert "## Several datasets (PPT)" in report and "| Structured3D |" in report
    # every rule logged, and nothing half-written left behind
    assert (wd / "logs/tiny/report.log").exists()
    assert not list(wd.rglob(".*.tmp"))


def test_mlflow_store_holds_parent_and_child_runs(finished):
    con = sqlite3.connect(finished / "mlflow.db")
    runs = con.execute("select run_uuid, name, status from runs").fetchall()
    tags = {}
    for run_uuid, key, value in con.execute("select run_uuid, key, value from tags"):
        tags.setdefault(run_uuid, {})[key] = value
    parents = [r for r in runs if tags[r[0]].get("run_type") == "pipeline"]
    assert len(parents) == 1 and parents[0][2] == "FINISHED"
    pid = parents[0][0]
    children = [r for r in runs if tags[r[0]].get("mlflow.parentRunId") == pid]
    names = sorted(r[1] for r in children)
    expected = ["data/generate", "data/preprocess", "features/dinov2_vits14", "report"]
    expected += [f"data/{j}/{d}" for j in ("generate", "preprocess") for d in ("S3DIS", "Structured3D")]
    expected += [f"ppt_study/{v}/seed{s}" for v in STUDY for s in (0, 1)]
    expected += [f"pretrain/{m}/seed{s}" for m in METHODS for s in (0, 1)]
    expected += [f"{job}/{m}/{p}/seed{s}" for job in ("finetune", "evaluate") for m, p, s in RUNS]
    expected += ["queries/teacher/seed0"] + [f"queries/{m}/seed{s}" for m in ("ppkt", "condense") for s in (0, 1)]
    assert names == sorted(expected)
    # the parent: named by the pipeline, carrying the summary and the report (tests/test_mlflow_ui.py)
    assert parents[0][1].startswith("pipeline/tiny/") and tags[pid]["launcher"] == "snakemake"
    pm = {k for (k,) in con.execute("select key from metrics where run_uuid = ?", (pid,))}
    assert {"la/ppkt/miou_mean", "la/ppkt/miou_std", "la/ppkt/n_seeds", "la/ppkt/miou_delta",
            "probe/scratch/miou_mean"} <= pm
    exp_tags = dict(con.execute("select key, value from experiment_tags"))
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    q = [r for r in children if r[1] == "queries/condense/seed1"][0]
    assert tags[q[0]]["uses_gt_labels"] == "true" and tags[q[0]]["gt_labels_in"] == "language_head"
    qm = {k for (k,) in con.execute("select key from metrics where run_uuid = ?", (q[0],))}
    assert {"queries/image/recall_1", "queries/duplicates/ap", "queries/image/chance_1"} <= qm
    classes = json.loads((finished / "results/tiny/queries/condense/seed1/metrics.json").read_text())["language"]["classes"]
    assert ("queries/language/map" in qm) == (classes > 0)  # NaN (no class to rank) is not logged
    for r in children:
        t = tags[r[0]]
        for key in ("git_commit", "git_dirty", "config_hash", "data_hash"):
            assert key in t, f"{r[1]} lacks tag {key}"
    ev = [r for r in children if r[1] == "evaluate/scratch/la/seed0"][0]
    t = tags[ev[0]]
    assert t["method"] == "scratch" and t["seed"] in ("0", "1") and t["uses_gt_labels"] == "false"
    assert t["protocol"] in ("la", "probe")
    pre = [r for r in children if r[1] == "pretrain/ppkt/seed0"][0]
    t = tags[pre[0]]
    assert t["uses_gt_labels"] == "false" and t["teacher"] == "dinov2_vits14" and t["tau"] == "0.04"
    assert {"teacher_layer", "pairs_per_batch"} <= set(t)
    for m, gt in (("ponderv2", "false"), ("ponderv2_semantic", "true")):
        t = tags[[r for r in children if r[1] == f"pretrain/{m}/seed1"][0][0]]
        assert t["uses_gt_labels"] == gt and t["render_semantic"] == gt and t["method"] == m
    t = tags[[r for r in children if r[1] == "pretrain/ponderv2_semantic/seed0"][0][0]]
    assert t["text_encoder"] == "minilm_l6_v2"
    t = tags[[r for r in children if r[1] == "pretrain/ppt/seed1"][0][0]]
    assert t["uses_gt_labels"] == "true" and t["datasets"] == "S3DIS,Structured3D" and t["head"] == "language"
    t = tags[[r for r in children if r[1] == "ppt_study/ppt/seed0"][0][0]]
    assert t["uses_gt_labels"] == "true" and t["datasets"] == "ScanNet,S3DIS,Structured3D"
    ev_gt = [r for r in children if r[1] == "evaluate/ponderv2_semantic/la/seed0"][0]
    assert tags[ev_gt[0]]["uses_gt_labels"] == "true"  # the flag follows the backbone into every later run
    pre = [r for r in children if r[1] == "pretrain/ponderv2/seed0"][0]
    arts = {k for (k,) in con.execute("select key from metrics where run_uuid = ?", (pre[0],))}
    assert "render/depth_abs_err_median_m" in arts and "train/loss_rgb" in arts
    metrics = {k for (k,) in con.execute("select key from metrics where run_uuid = ?", (ev[0],))}
    assert {"val/mIoU", "val/mAcc", "val/allAcc"} <= metrics
    ft = [r for r in children if r[1] == "finetune/ppkt/la/seed0"][0]
    steps = con.execute("select count(distinct step) from metrics where run_uuid = ? and key = 'train/loss'",
                        (ft[0],)).fetchone()[0]
    assert steps == 2  # one point per epoch
    params = {k for (k,) in con.execute("select key from params where run_uuid = ?", (ft[0],))}
    assert {"train.lr", "model.channels", "data.synthetic.seed"} <= params


def test_nothing_to_do_after_a_complete_run(finished):
    out = snakemake(["-n", "--cores", "2"], finished)
    assert "Nothing to be done" in out.stdout + out.stderr


def test_changing_a_training_param_reruns_only_training_and_after(finished):
    out = snakemake(["-n", "--cores", "2", "--config", "train={'lr': 0.02}"], finished, check=False)
    text = out.stdout + out.stderr
    assert "finetune" in text and "evaluate" in text
    for upstream in ("generate_synthetic", "rule preprocess", "rule cache_features", "rule pretrain"):
        assert upstream not in text


def test_lint_is_clean():
    out = snakemake(["--lint", "--cores", "1"], REPO, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
