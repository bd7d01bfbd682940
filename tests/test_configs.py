"""The full-scale overlays in configs/: each validates, and Snakemake plans the expected jobs for it
against a tiny fake raw tree (ScanNet release, Pointcept npy folder, S3DIS). One preprocess job
runs for real through the rule, as a user's first step would."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO  # noqa: E402
from pipeline_util import make_workdir, snakemake  # noqa: E402
from scannet_format import make_release, write_s3dis_object  # noqa: E402

from pretrain3d.config import load_config  # noqa: E402
from pretrain3d.data.scene import list_scenes, load_processed_scene  # noqa: E402

SPUNET_V1M1 = {"stem_channels": 32, "channels": [32, 64, 128, 256, 256, 128, 96, 96],
               "layers": [2, 3, 4, 6, 2, 2, 2, 2]}

# overlay(s) -> (jobs expected per rule; rules that must not appear). Rules other helpers own
# (log_references, real_check, ...) are not counted here.
CASES = {
    (): ({"generate_synthetic": 1, "preprocess": 1}, []),  # the (tiny) default DAG keeps its data jobs
    ("scannet-scratch",): ({"preprocess": 1, "pretrain": 1, "finetune": 1, "evaluate": 1, "report": 1, "all": 1},
                           ["generate_synthetic", "cache_features"]),
    ("scannet-ppkt",): ({"preprocess": 1, "cache_features": 1, "pretrain": 2, "finetune": 4, "evaluate": 2,
                         "report": 1}, ["generate_synthetic"]),
    ("scannet-ponderv2",): ({"preprocess": 1, "pretrain": 2, "finetune": 4, "evaluate": 2, "report": 1},
                            ["generate_synthetic", "cache_features"]),
    ("s3dis-scratch",): ({"preprocess": 1, "pretrain": 1, "finetune": 1, "evaluate": 1, "report": 1},
                         ["generate_synthetic", "cache_features"]),
    ("scannet-ppkt", "scannet-efficient"): ({"preprocess": 1, "cache_features": 1, "pretrain": 2, "finetune": 6,
                                             "evaluate": 2}, ["generate_synthetic"]),
    ("ppt-scannet-s3dis",): ({"preprocess": 1, "dataset_data_S3DIS": 1, "pretrain": 2, "finetune": 2, "evaluate": 2,
                              "ppt_study": 3, "report": 1}, ["generate_synthetic", "cache_features"]),
    ("scannet-scratch", "scannet-npy"): ({"preprocess": 1, "pretrain": 1, "finetune": 1, "evaluate": 1},
                                         ["generate_synthetic", "cache_features"]),
}


def _fake_raw_trees(wd: Path) -> None:
    make_release(wd / "data/raw/scannet", sens=False)
    # the data-efficient benchmark files of configs/scannet-efficient.yaml (inputs of its la/lr jobs)
    tasks = wd / "data/raw/scannet/tasks"
    (tasks / "points").mkdir(parents=True)
    (tasks / "scenes").mkdir()
    (tasks / "points/points20").write_bytes(b"a limited-annotation file")
    (tasks / "scenes/1.txt").write_text("scene0000_00\n")
    rng = np.random.default_rng(0)
    for area, room in ((1, "office_1"), (5, "hallway_6")):
        for stem in ("ceiling_1", "chair_1"):
            write_s3dis_object(wd / f"data/raw/s3dis/Area_{area}/{room}/Annotations/{stem}.txt",
                               np.round(rng.uniform(0, 5, (30, 3)), 3), rng.integers(0, 256, (30, 3)))
    for split in ("train", "val"):
        d = wd / "data/scannet" / split / f"scene000{split == 'val'}_00"
        d.mkdir(parents=True)
        np.save(d / "coord.npy", rng.normal(size=(20, 3)).astype(np.float32))
        np.save(d / "color.npy", rng.integers(0, 256, (20, 3), dtype=np.uint8))
        np.save(d / "normal.npy", rng.normal(size=(20, 3)).astype(np.float32))
        np.save(d / "segment20.npy", rng.integers(-1, 20, 20))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("configs"))
    shutil.copytree(REPO / "configs", wd / "configs")
    _fake_raw_trees(wd)
    return wd


def _job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def _block(stdout: str, rule: str) -> str:
    return re.search(rf"^rule {rule}:\n(.*?)(?=^\[|\Z)", stdout, re.M | re.S).group(1)


def test_every_config_is_covered_and_validates():
    names = {p.stem for p in (REPO / "configs").glob("*.yaml")}
    assert names == {n for case in CASES for n in case}, "add new configs to CASES"
    for case in filter(None, CASES):
        cfg = load_config(REPO / "params.yaml", *(REPO / "configs" / f"{n}.yaml" for n in case))
        assert not cfg.ppt_study.enabled or case == ("ppt-scannet-s3dis",)  # the embedded study stays embedded
        if case[0] != "scannet-npy":
            m = cfg.model
            assert (m.stem_channels, m.channels, m.layers) == tuple(SPUNET_V1M1.values())
            assert cfg.train.grid_size == 0.02 and cfg.model.in_channels == 6


@pytest.mark.parametrize("case", list(CASES), ids=["+".join(c) or "default" for c in CASES])
def test_dry_run_plans_the_expected_jobs(workdir, case):
    expected, absent = CASES[case]
    files = ["--configfile", *(f"configs/{n}.yaml" for n in case)] if case else []  # one flag: a second replaces it
    out = snakemake(["-n", "--forceall", "--cores", "4", *files], workdir).stdout
    counts = _job_counts(out)
    for rule, n in expected.items():
        assert counts.get(rule) == n, f"{case}: {rule} planned {counts.get(rule)} times, expected {n}\n{counts}"
    for rule in absent:
        assert rule not in counts, f"{case}: unexpected {rule} jobs"
    cfg = load_config(REPO / "params.yaml", *(REPO / "configs" / f"{n}.yaml" for n in case))
    block = _block(out, "preprocess")
    assert f"input: {cfg.data.raw_root}" in block and f"output: {cfg.data.processed_root}" in block
    # la/lr jobs take a configured benchmark file as input (a newer file reruns them); no other job does
    bench = {"la": cfg.data.scannet.la_file, "lr": cfg.data.scannet.lr_file}
    for block in re.findall(r"^rule finetune:\n(.*?)(?=^\[|\Z)", out, re.M | re.S):
        protocol = re.search(r"protocol=(\w+)", block).group(1)
        inputs = re.search(r"^\s+input: (.*)$", block, re.M).group(1).split(", ")
        assert [f for f in inputs if f in bench.values()] == [f for f in [bench.get(protocol)] if f], block


def test_preprocess_rule_runs_on_a_fake_release(workdir):
    (workdir / "no-tracking.yaml").write_text(yaml.safe_dump({"tracking": {"enabled": False},
                                                              "data": {"workers": 1}}))
    snakemake(["data/processed/scannet", "--cores", "1", "--configfile", "configs/scannet-scratch.yaml",
               "no-tracking.yaml"], workdir)
    root = workdir / "data/processed/scannet"
    assert [p.name for p in list_scenes(root, "train")] == ["scene0000_00", "scene0000_01"]
    s = load_processed_scene(root / "val" / "scene0011_00", num_classes=20)
    assert s.frames is None and (s.segment >= -1).all()
    assert not (root / "test").exists()  # data.scannet.splits: train and val
