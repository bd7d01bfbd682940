"""Helpers for tests that run the real Snakemake/DVC pipeline in a scratch copy of the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, tiny_overrides
from pretrain3d.config import deep_merge, load_config

COPY = ["Snakefile", "rules", "envs", "dvc.yaml", "src", "scripts", "pyproject.toml", "profiles"]


def make_workdir(tmp: Path, extra: dict | None = None, git: bool = False) -> Path:
    """A repo-like folder with the workflow files and a tiny params.yaml (paths inside it)."""
    wd = tmp / "wd"
    wd.mkdir()
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, wd / name)
    over = tiny_overrides(Path("."))
    # relative paths, as in the real params.yaml
    over["data"]["raw_root"] = "data/raw/synthetic"
    over["data"]["processed_root"] = "data/processed/synthetic"
    over["tracking"] = {"uri": "sqlite:///mlflow.db", "artifact_root": "mlartifacts"}
    over["teacher"]["cache_root"] = "data/features"
    over["experiment"]["seeds"] = [0, 1]
    if extra:
        over = deep_merge(over, extra)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (wd / "params.yaml").write_text(yaml.safe_dump(deep_merge(base, over), sort_keys=False))
    load_config(wd / "params.yaml")  # fail early if the tiny profile is invalid
    if git:
        run(["git", "init", "-q"], wd)
        run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], wd)
        run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], wd)
    return wd


def env() -> dict:
    e = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    e["PATH"] = bindir + os.pathsep + e.get("PATH", "")
    e.pop("PRETRAIN3D_PARENT_RUN_ID", None)
    e.pop("DVC_STAGE", None)
    e["DVC_NO_ANALYTICS"] = "1"
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


def snakemake(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", *args], cwd, check=check)
