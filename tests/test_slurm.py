"""The pipeline on a real single-node SLURM (issue 13, items 1 and 5): munge, slurmctld and slurmd from
Debian's packages (installed when absent), the executor plugin with profiles/slurm. A slice of the
pipeline (data -> pre-train -> fine-tune -> evaluate, one method and seed) gives the same metrics as the
local run; SLURM's job logs land in logs/slurm; a training job killed mid-run is reported with its log
path, and the rerun resumes from its checkpoint and still ends with the local run's metrics."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from pipeline_util import make_workdir, snakemake

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="the single-node SLURM needs root (CI runs as root)")]

TARGET = "results/tiny/runs/scratch/la/seed0/metrics.json"
EXTRA = {"experiment": {"methods": ["scratch"], "seeds": [0], "protocols": ["la"]},
         "cluster": {"train_mem_mb": 1000, "train_runtime": 10}}


@pytest.fixture(scope="module")
def slurm():
    from pretrain3d.workflow.slurm_node import single_node

    folder = Path(tempfile.mkdtemp(prefix="pretrain3d-slurm-"))
    try:
        with single_node(folder) as env:
            yield env
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _slurm_snakemake(args: list[str], wd: Path, env: dict, check: bool = True):
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]  # pipeline_util passes os.environ on
    try:
        return snakemake(["--workflow-profile", "profiles/slurm", "--jobs", "2", *args], wd, check=check)
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def test_a_pipeline_slice_through_slurm_equals_the_local_run(slurm, tmp_path):
    (tmp_path / "local").mkdir()
    local = make_workdir(tmp_path / "local", extra=EXTRA)
    snakemake(["--cores", "2", TARGET], local)
    expected = json.loads((local / TARGET).read_text())

    (tmp_path / "slurm").mkdir()
    wd = make_workdir(tmp_path / "slurm", extra=EXTRA)
    # 1. the fine-tuning job SIGKILLs itself after its third step (as a preempted job dies): SLURM
    #    reports it failed, Snakemake names its log; the profile's one retry is off for this
    os.environ["PRETRAIN3D_TEST_KILL"] = "0:3"  # of 4 steps; checkpoints at 1 and 2
    try:
        failed = _slurm_snakemake(["--retries", "0", TARGET], wd, slurm, check=False)
    finally:
        os.environ.pop("PRETRAIN3D_TEST_KILL")
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "Error in rule finetune" in out and "logs/slurm/rule_finetune/" in out, out[-4000:]
    ck = wd / "results/tiny/runs/scratch/la/seed0/checkpoint/last.pt"
    assert ck.exists(), "the killed job left its checkpoint"
    # 2. rerun: the job resumes from that checkpoint and the slice ends with the local run's metrics
    _slurm_snakemake([TARGET], wd, slurm)
    got = json.loads((wd / TARGET).read_text())
    assert {k: got[k] for k in ("mIoU", "mAcc", "allAcc")} == {k: expected[k] for k in ("mIoU", "mAcc", "allAcc")}
    log = json.loads((wd / "results/tiny/runs/scratch/la/seed0/train_log.json").read_text())
    assert log["steps_this_process"] < log["steps"]  # resumed, not retrained
    assert not ck.exists()
    # SLURM's own job logs, where the README says
    slurm_logs = list((wd / "logs/slurm").rglob("*.log"))
    assert {p.relative_to(wd / "logs/slurm").parts[0] for p in slurm_logs} >= {
        f"rule_{r}" for r in ("generate_synthetic", "preprocess", "pretrain", "finetune", "evaluate")}
