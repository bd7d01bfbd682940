"""Kill a CPU training run with SIGKILL mid-way, resume it, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_overrides
from pretrain3d.config import validate_config
from pretrain3d.stages.data import generate, preprocess
from pretrain3d.engine.trainer import CheckpointError, load_checkpoint, load_state_strict


@pytest.fixture(scope="module")
def tiny_cfg_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    over = tiny_overrides(tmp)
    # enough steps that the kill lands mid-run: 3 epochs x 2 scenes, checkpoint every step
    over["data"]["synthetic"]["num_train"] = 2
    over["train"].update({"epochs": 3, "checkpoint_every": 1, "val_every": 1})
    over["tracking"]["enabled"] = False
    cfg = validate_config(over)
    generate(cfg)
    preprocess(cfg)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _finetune_cmd(cfg_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pretrain3d.cli", "finetune", "--config", str(cfg_file), "--method", "scratch",
            "--seed", "0", "--out-dir", str(out), "--no-progress"]


def test_sigkill_then_resume_equals_uninterrupted(tiny_cfg_file, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_finetune_cmd(tiny_cfg_file, ref), check=True, capture_output=True)

    proc = subprocess.Popen(_finetune_cmd(tiny_cfg_file, killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ck = killed / "checkpoint" / "last.pt"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ck.exists():
            state = load_checkpoint(ck)
            if state["global_step"] >= 2:  # past the first epoch boundary, mid-run
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = state["global_step"]
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed; make it longer"
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.pt").exists()  # nothing final was written by the killed run

    subprocess.run(_finetune_cmd(tiny_cfg_file, killed), check=True, capture_output=True)
    a = load_checkpoint(ref / "model.pt")["model"]
    b = load_checkpoint(killed / "model.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ after resume: {k}"
    la = json.loads((ref / "train_log.json").read_text())
    lb = json.loads((killed / "train_log.json").read_text())
    strip = lambda h: [{k: v for k, v in e.items() if k != "train/epoch_seconds"} for e in h]  # noqa: E731
    assert strip(la["history"]) == strip(lb["history"])
    assert la["final_val"] == lb["final_val"]


def test_rerun_of_a_finished_run_trains_again(tiny_cfg_file, tmp_path):
    """A finished run leaves no resume state: a forced rerun (after a code fix, `snakemake -R`, `dvc repro`)
    trains every step again instead of resuming at the end and re-saving the old weights."""
    out = tmp_path / "run"
    subprocess.run(_finetune_cmd(tiny_cfg_file, out), check=True, capture_output=True)
    first = json.loads((out / "train_log.json").read_text())
    assert first["steps"] > 0
    assert not (out / "checkpoint").exists()
    # simulate "the code changed": the old result is still there, the rerun must recompute it
    (out / "model.pt").write_bytes(b"stale")
    subprocess.run(_finetune_cmd(tiny_cfg_file, out), check=True, capture_output=True)
    second = json.loads((out / "train_log.json").read_text())
    # the bug: it resumed at the final step, trained 0 steps and saved the checkpoint's weights again
    assert second["steps_this_process"] == first["steps"] == first["steps_this_process"]
    assert load_checkpoint(out / "model.pt")["kind"] == "segmentor"


def test_sigterm_ends_the_mlflow_run_killed(tiny_cfg_file, tmp_path):
    """A cancelled job (SIGTERM from a scheduler or Snakemake) leaves its MLflow run KILLED, not RUNNING."""
    import sqlite3

    cfg = yaml.safe_load(tiny_cfg_file.read_text())
    cfg["tracking"] = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                       "artifact_root": str(tmp_path / "art")}
    cfg_file = tmp_path / "params.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    proc = subprocess.Popen(_finetune_cmd(cfg_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoint" / "last.pt").exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    con = sqlite3.connect(tmp_path / "mlflow.db")
    statuses = [r[0] for r in con.execute("select status from runs")]
    assert statuses == ["KILLED"], statuses


def test_checkpoint_loading_is_strict(tiny_cfg_file, tmp_path):
    out = tmp_path / "run"
    subprocess.run(_finetune_cmd(tiny_cfg_file, out), check=True, capture_output=True)
    ck = load_checkpoint(out / "model.pt")
    from pretrain3d.config import load_config
    from pretrain3d.models.segmentor import build_segmentor

    cfg = load_config(tiny_cfg_file)
    model = build_segmentor(cfg.model, cfg.data.num_classes)
    load_state_strict(model, ck["model"], "model.pt")  # exact match loads
    broken = dict(ck["model"])
    broken.pop(next(iter(broken)))
    with pytest.raises(CheckpointError, match="missing key"):
        load_state_strict(model, broken, "model.pt")
    extra = dict(ck["model"], **{"bogus.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected key"):
        load_state_strict(model, extra, "model.pt")
    (tmp_path / "trunc.pt").write_bytes((out / "model.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(tmp_path / "trunc.pt")
