"""dvc.yaml and the Snakemake DAG agree; `dvc repro`, `dvc metrics show` and `dvc exp run -S` work."""

from __future__ import annotations

import re
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import REPO
from pipeline_util import make_workdir, run, snakemake


def _snakemake_jobs(cwd, targets) -> list[tuple[str, set[str]]]:
    """(rule, outputs) of every job in a forced dry run of the default target and ``targets``."""
    out = snakemake(["-n", "--forceall", "--cores", "1", "all", *targets], cwd).stdout
    jobs = []
    for block in re.split(r"\n(?=(?:localrule|rule) \w+:)", out):
        m = re.match(r"(?:localrule|rule) (\w+):", block.strip())
        if not m:
            continue
        outs = re.search(r"^\s+output: (.*)$", block, re.M)
        files = {f.strip() for f in outs.group(1).split(",")} if outs else set()
        jobs.append((m.group(1), files))
    return jobs


def _dvc_stages(cwd) -> dict[str, tuple[str, set[str]]]:
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        return {s.addressing: (s.cmd, {str(o.def_path) for o in s.outs}) for s in repo.index.stages}


def test_dvc_stages_build_exactly_the_snakemake_jobs(tmp_path):
    # pretrain_only as in params.yaml, so its DVC stage (a matrix indexed by the first seed) is covered
    wd = make_workdir(tmp_path, git=True, extra={"experiment": {"pretrain_only": ["ponderv2_semantic"]}})
    shutil.copytree(REPO / ".dvc", wd / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    run([sys.executable, "-m", "pretrain3d.cli", "dvc-yaml"], wd)  # this workdir's params.yaml
    stages = _dvc_stages(wd)
    targets = sorted({t for cmd, _ in stages.values() for t in cmd.split()[4:]})
    jobs = [(r, o) for r, o in _snakemake_jobs(wd, targets) if r != "all"]
    assert jobs and stages
    matched = set()
    for name, (cmd, outs) in stages.items():
        assert cmd.startswith("snakemake --cores all --force "), f"{name}: a DVC stage must only ask Snakemake"
        targets = set(cmd.split()[4:])
        job = [j for j in jobs if targets <= j[1]]
        assert len(job) == 1, f"{name}: targets {targets} are not the outputs of one Snakemake job"
        # a folder with a digest file (a processed dataset) is DVC-tracked by that file alone
        folded = {str(Path(o).parent) if Path(o).name == "manifest.json" and str(Path(o).parent) in job[0][1] else o
                  for o in outs}
        assert folded == job[0][1], f"{name}: DVC outs {sorted(outs)} != Snakemake outputs {sorted(job[0][1])}"
        matched.add(frozenset(job[0][1]))
    missing = [j for j in jobs if frozenset(j[1]) not in matched]
    assert not missing, f"Snakemake jobs without a DVC stage: {missing}"


@pytest.mark.slow
def test_dvc_repro_metrics_and_experiment(tmp_path):
    wd = make_workdir(tmp_path, git=True, extra={"experiment": {"seeds": [0]}})
    shutil.copytree(REPO / ".dvc", wd / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    run([sys.executable, "-m", "pretrain3d.cli", "dvc-yaml"], wd)
    shutil.copy2(REPO / ".dvcignore", wd / ".dvcignore")
    shutil.copy2(REPO / ".gitignore", wd / ".gitignore")
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], wd)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "dvc"], wd)

    run([*dvc, "repro"], wd)
    # one MLflow parent for the whole repro (one Snakemake per DVC stage), every job under it
    con = sqlite3.connect(wd / "mlflow.db")
    tags = {}
    for run_uuid, key, value in con.execute("select run_uuid, key, value from tags"):
        tags.setdefault(run_uuid, {})[key] = value
    parents = [r for r, t in tags.items() if t.get("run_type") == "pipeline"]
    assert len(parents) == 1 and tags[parents[0]].get("launcher") == "dvc"
    # the last stage's Snakemake ended the shared parent: not RUNNING forever
    assert con.execute("select status from runs where run_uuid = ?", parents[:1]).fetchone()[0] == "FINISHED"
    children = [r for r, t in tags.items() if t.get("mlflow.parentRunId") == parents[0]]
    # generate, preprocess, pretrain (scratch init), finetune, evaluate, report (no 2D features: scratch only)
    assert sorted(tags[c]["job"] for c in children) == sorted(
        ["generate", "preprocess", "pretrain", "finetune", "evaluate", "report"])
    shown = run([*dvc, "metrics", "show"], wd).stdout
    assert "mIoU" in shown, shown
    # Snakemake agrees that everything is up to date.
    assert "Nothing to be done" in "".join(snakemake(["-n", "--cores", "1"], wd).stdout)
    # DVC agrees too.
    status = run([*dvc, "status"], wd).stdout
    assert "up to date" in status.lower(), status

    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], wd)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline"], wd)
    exp = run([*dvc, "exp", "run", "-S", "train.lr=0.02"], wd)
    text = exp.stdout + exp.stderr
    assert "Running stage 'finetune-full@scratch-0'" in text
    assert "Running stage 'evaluate@scratch'" in text
    for upstream in ("generate_synthetic", "preprocess", "pretrain-scratch@0"):
        assert f"Running stage '{upstream}'" not in text
    diff = run([*dvc, "metrics", "diff", "--all"], wd).stdout
    assert "mIoU" in diff


@pytest.mark.slow
def test_after_a_snakemake_run_dvc_is_up_to_date_and_repro_trains_nothing(tmp_path):
    """The README run then DVC, with the real stages on a tiny config: Snakemake's run is recorded in
    dvc.lock, so `dvc status` is clean and `dvc repro` only hashes."""
    wd = make_workdir(tmp_path, git=True, extra={"experiment": {"seeds": [0], "protocols": ["probe"]},
                                                 "tracking": {"enabled": False}})
    shutil.copytree(REPO / ".dvc", wd / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    run([sys.executable, "-m", "pretrain3d.cli", "dvc-yaml"], wd)
    shutil.copy2(REPO / ".dvcignore", wd / ".dvcignore")
    shutil.copy2(REPO / ".gitignore", wd / ".gitignore")
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], wd)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "dvc"], wd)
    done = snakemake(["--cores", "2"], wd)
    assert "DVC stage(s) in dvc.lock" in done.stderr
    before = (wd / "results/tiny/runs/scratch/probe/seed0/metrics.json").read_text()
    dvc = [sys.executable, "-m", "dvc"]
    assert "up to date" in run([*dvc, "status"], wd).stdout
    repro = run([*dvc, "repro"], wd)
    assert "Running stage" not in repro.stdout, repro.stdout
    assert (wd / "results/tiny/runs/scratch/probe/seed0/metrics.json").read_text() == before
    assert "Nothing to be done" in snakemake(["-n", "--cores", "1"], wd).stdout
