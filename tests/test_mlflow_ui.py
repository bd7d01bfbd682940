"""The MLflow UI as the place where methods are compared: the store's layout, and a real browser on it.

The store is made by the project's own tracking code, as the pipeline makes it (Snakefile onstart:
``start_parent``; every job: ``job_run`` under PRETRAIN3D_PARENT_RUN_ID; the report stage; the
log_references stage), then the README's ``mlflow server`` command serves it on a free loopback port
and headless Chromium (Debian package, installed when absent) looks at it as a person would.
Screenshots go to logs/tests/mlflow-ui/; with PRETRAIN3D_UPDATE_SCREENSHOTS=1 the README's picture
(docs/mlflow-ui.png) is replaced too (not by default: a test must not dirty the tracked tree, which
every later run would record as git_dirty).
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from pretrain3d.config import validate_config
from pretrain3d.stages.common import job_tags
from pretrain3d.tracking import mlflow_runs
from pretrain3d.tracking.references import load_references, log_reference_runs

SHOTS = REPO / "logs" / "tests" / "mlflow-ui"
DOCS_SHOT = REPO / "docs" / "mlflow-ui.png"
METHODS = {"scratch": 0.40, "ppkt": 0.45}
PROTOCOLS = ("full", "la")
SEEDS = (0, 1)


def _tracking(wd: Path):
    return validate_config({"experiment": {"name": "ui"},
                            "tracking": {"uri": f"sqlite:///{wd / 'mlflow.db'}",
                                         "artifact_root": str(wd / "mlartifacts")}})


def _runs(db: Path) -> dict[str, dict]:
    """run id -> name, status, lifecycle, tags, latest metrics (read straight from the sqlite store)."""
    con = sqlite3.connect(db)
    runs = {r: {"name": n, "status": s, "stage": lc, "tags": {}, "metrics": {}}
            for r, n, s, lc in con.execute("select run_uuid, name, status, lifecycle_stage from runs")}
    for r, k, v in con.execute("select run_uuid, key, value from tags"):
        runs[r]["tags"][k] = v
    for r, k, v in con.execute("select run_uuid, key, value from latest_metrics"):
        runs[r]["metrics"][k] = v
    return {r: v for r, v in runs.items() if v["stage"] == "active"}


def _experiment_tags(db: Path, name: str) -> dict[str, str]:
    con = sqlite3.connect(db)
    return dict(con.execute("select t.key, t.value from experiment_tags t join experiments e "
                            "on t.experiment_id = e.experiment_id where e.name = ?", (name,)))


# ----------------------------------------------------------------------------- the store's layout
def test_experiment_is_a_model_training_experiment_also_in_old_stores(tmp_path):
    import mlflow

    cfg = _tracking(tmp_path)
    mlflow_runs.setup(cfg.tracking)
    assert _experiment_tags(tmp_path / "mlflow.db", "pretrain3d") == {"mlflow.experimentKind": "custom_model_development"}
    # a store made before the tag existed: the experiment lacks it until the next job opens the store
    old = tmp_path / "old"
    old.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{old / 'mlflow.db'}")
    mlflow.create_experiment("pretrain3d")
    assert _experiment_tags(old / "mlflow.db", "pretrain3d") == {}
    mlflow_runs.setup(_tracking(old).tracking)
    assert _experiment_tags(old / "mlflow.db", "pretrain3d")["mlflow.experimentKind"] == "custom_model_development"


_JOB = """
import os, sys, time
from pretrain3d.config import validate_config
from pretrain3d.tracking import mlflow_runs
cfg = validate_config({"tracking": {"uri": sys.argv[1], "artifact_root": sys.argv[2]}})
mlflow_runs.setup(cfg.tracking)  # done by every job; the race is on the parent, not the experiment
# a barrier: every job is ready (imports done, store open) before any asks for the parent
barrier, n = sys.argv[3], int(sys.argv[5])
if n > 1:
    open(os.path.join(barrier, "ready-" + sys.argv[4]), "w").close()
    while len(os.listdir(barrier)) < n:
        time.sleep(0.01)
with mlflow_runs.job_run(cfg.tracking, "finetune/ppkt/la/seed" + sys.argv[4], {"job": "finetune"}, {}) as run:
    print(run.parent_id)
"""


def test_concurrent_jobs_started_by_hand_share_one_parent(tmp_path):
    """Jobs run by hand with one PRETRAIN3D_PIPELINE_ID, started at the same instant, make one parent."""
    cfg = _tracking(tmp_path)
    mlflow_runs.setup(cfg.tracking)
    n = 4
    env = {**os.environ, mlflow_runs.PIPELINE_ID_ENV: "sweep-1", "PYTHONPATH": str(REPO / "src")}
    env.pop(mlflow_runs.PARENT_ENV, None)
    env.pop("DVC_STAGE", None)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _JOB, cfg.tracking.uri, str(tmp_path / "mlartifacts"),
                               str(barrier), str(i), str(n)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(n)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    parents = {out.strip().splitlines()[-1] for out, _ in outs}
    runs = _runs(tmp_path / "mlflow.db")
    made = [r for r, v in runs.items() if v["tags"].get("parent_key") == "pipeline:sweep-1"]
    assert len(made) == 1 and parents == set(made), (parents, made)
    kids = sorted(v["name"] for v in runs.values() if v["tags"].get("mlflow.parentRunId") == made[0])
    assert kids == [f"finetune/ppkt/la/seed{i}" for i in range(n)]
    assert runs[made[0]]["name"] == "manual/sweep-1" and runs[made[0]]["tags"]["launcher"] == "manual"
    # without an id a job run by hand is a top-level run of its own
    env.pop(mlflow_runs.PIPELINE_ID_ENV)
    r = subprocess.run([sys.executable, "-c", _JOB, cfg.tracking.uri, str(tmp_path / "mlartifacts"), "-", "9", "1"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "None", r.stderr[-2000:]


def _pipeline_store(wd: Path) -> dict:
    """A store as a pipeline run leaves it: references, one parent, evaluate children, the report."""
    from pretrain3d.stages.report import report

    cfg = _tracking(wd)
    log_reference_runs(load_references(), cfg.tracking)
    tags = job_tags(cfg, "pipeline")
    pid = mlflow_runs.start_parent(cfg.tracking, mlflow_runs.parent_run_name("pipeline", "ui"),
                                   {**tags, "launcher": "snakemake"})
    os.environ[mlflow_runs.PARENT_ENV] = pid
    try:
        files = []
        for method, base in METHODS.items():
            for protocol in PROTOCOLS:
                for seed in SEEDS:
                    miou = base + random.Random(f"{method}{protocol}{seed}").uniform(-0.01, 0.01)
                    d = wd / "results" / "runs" / method / protocol / f"seed{seed}"
                    d.mkdir(parents=True)
                    (d / "metrics.json").write_text(json.dumps({
                        "method": method, "protocol": protocol, "seed": seed, "mIoU": miou, "mAcc": miou + 0.1,
                        "allAcc": miou + 0.3, "iou_per_class": {"wall": miou}}))
                    files.append(str(d / "metrics.json"))
                    with mlflow_runs.job_run(cfg.tracking, f"evaluate/{method}/{protocol}/seed{seed}",
                                             job_tags(cfg, "evaluate", method=method, protocol=protocol, seed=seed),
                                             {}) as run:
                        run.log_metrics({"val/mIoU": miou})
        summary = report(cfg, files, wd / "results")
    finally:
        os.environ.pop(mlflow_runs.PARENT_ENV)
    mlflow_runs.end_parent(cfg.tracking, pid)
    return {"parent": pid, "summary": summary}


def test_parent_carries_the_summary_and_references_are_grouped(tmp_path):
    made = _pipeline_store(tmp_path)
    runs = _runs(tmp_path / "mlflow.db")
    top = sorted(v["name"].split("/")[0] for v in runs.values() if "mlflow.parentRunId" not in v["tags"])
    assert top == ["pipeline", "references"]  # two rows, not 26 references beside the pipeline
    parent = runs[made["parent"]]
    g = made["summary"]["groups"]["ppkt/la"]
    c = next(c for c in made["summary"]["comparisons"] if (c["method"], c["protocol"]) == ("ppkt", "la"))
    m = parent["metrics"]
    assert m["la/ppkt/miou_mean"] == pytest.approx(g["mIoU_mean"]) and m["la/ppkt/miou_std"] == pytest.approx(g["mIoU_std"])
    assert m["la/ppkt/n_seeds"] == len(SEEDS) and m["la/ppkt/miou_delta"] == pytest.approx(c["mIoU_diff"])
    assert m["la/ppkt/miou_delta_se"] == pytest.approx(c["mIoU_diff_se"])
    assert "la/scratch/miou_delta" not in m and "la/scratch/miou_mean" in m
    arts = {p.relative_to(tmp_path / "mlartifacts" / made["parent"] / "artifacts").as_posix()
            for p in (tmp_path / "mlartifacts" / made["parent"]).rglob("*") if p.is_file()}
    assert {"report.md", "report.html", "summary.json"} <= arts
    html = (tmp_path / "results" / "report.html").read_text()
    assert "<td>ppkt</td>" in html and f"{100 * c['mIoU_diff']:+.2f}" in html
    kids = sorted(v["name"] for v in runs.values() if v["tags"].get("mlflow.parentRunId") == made["parent"])
    assert kids == sorted([f"evaluate/{m}/{p}/seed{s}" for m in METHODS for p in PROTOCOLS for s in SEEDS] + ["report"])
    # a reference run and our parent share the summary key of their protocol and method
    ref = next(v for v in runs.values() if v["tags"].get("reference_id") == "ppkt-scannet-full-miou")
    assert ref["name"] == "ref/ppkt/full/ppkt-scannet-full-miou"
    assert ref["metrics"]["full/ppkt/miou_mean"] == pytest.approx(0.6956) == ref["metrics"]["val/mIoU"]
    assert "full/ppkt/miou_mean" in m
    assert {k.split("/", 2)[2] for k in m} >= {"miou_mean", "miou_std", "n_seeds", "miou_delta"}


# ----------------------------------------------------------------------------- in a browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_server_command(port: int) -> list[str]:
    """The README's `mlflow server` line, on another port, with this environment's mlflow."""
    text = (REPO / "README.md").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(".venv/bin/mlflow server")]
    assert lines, "README.md has no `.venv/bin/mlflow server ...` command"
    cmd = shlex.split(lines[0])
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1", "the README's server must listen on loopback only"
    cmd[0] = str(Path(sys.executable).parent / "mlflow")
    cmd[cmd.index("--port") + 1] = str(port)
    return cmd


def readme_ui_link() -> str:
    m = re.search(r"http://127\.0\.0\.1:5000(/#/experiments/\d+\?workflowType=machine_learning)",
                  (REPO / "README.md").read_text())
    assert m, "README.md gives no link into the experiment's model-training view"
    return m.group(1)


@pytest.fixture(scope="module")
def chromium():
    from headless_chromium import ensure_chromium

    try:
        return ensure_chromium()
    except RuntimeError as err:  # not root / not Debian: say what to install
        pytest.skip(str(err))


def test_a_person_compares_methods_in_the_mlflow_ui(tmp_path, chromium):
    from headless_chromium import Browser

    made = _pipeline_store(tmp_path)
    port = _free_port()
    t0 = time.monotonic()
    server = subprocess.Popen(["nice", "-n", "19", *readme_server_command(port)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                              start_new_session=True)
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() - t0 < 90, "the MLflow server did not listen within 90 s"
                time.sleep(0.5)
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser = Browser(chromium, tmp_path / "chromium-profile")
        # 1. the README's link: the runs of the model-training view, two top-level rows
        browser.goto(base + readme_ui_link())
        text = browser.wait_for_text("pipeline/ui/", "references/papers", timeout=90)
        assert "Runs" in text and "Token Usage" not in text and "Traces\n0" not in text
        assert "ref/" not in text  # the 26 references are folded into their parent
        assert browser.evaluate("location.hash").startswith("#/experiments/1/runs")
        # the assistant panel takes a third of the page: close it, as a person would
        browser.evaluate("""(() => { const b = Array.from(document.querySelectorAll('button'))
            .find(b => b.getAttribute('aria-label') === 'Close'); if (b) b.click(); })()""")
        # unfold the pipeline: its jobs are nested under it
        browser.evaluate("""Array.from(document.querySelectorAll('[role=row]'))
            .find(r => r.innerText.includes('pipeline/ui/'))
            .querySelector('button[data-component-id*=runnamecellrenderer]').click()""")
        text = browser.wait_for_text("evaluate/ppkt/la/seed0", "evaluate/scratch/full/seed1", "report")
        shot = browser.screenshot(SHOTS / "1-runs.png")
        if os.environ.get("PRETRAIN3D_UPDATE_SCREENSHOTS") == "1":
            DOCS_SHOT.write_bytes(shot.read_bytes())
        # 2. the parent run's page: the summary as metrics
        browser.goto(f"{base}/#/experiments/1/runs/{made['parent']}?workflowType=machine_learning")
        g = made["summary"]["groups"]["ppkt/la"]
        browser.wait_for_text("la/ppkt/miou_mean", "la/ppkt/miou_delta", "la/ppkt/n_seeds",
                              f"{g['mIoU_mean']:.4f}"[:5])
        browser.screenshot(SHOTS / "2-parent.png")
        # 3. compare view: our pipeline beside a paper's number under the same key
        ref = next(r for r, v in _runs(tmp_path / "mlflow.db").items()
                   if v["tags"].get("reference_id") == "ppkt-scannet-full-miou")
        browser.goto(f'{base}/#/compare-runs?runs=["{made["parent"]}","{ref}"]&experiments=["1"]'
                     "&workflowType=machine_learning")
        browser.wait_for_text("full/ppkt/miou_mean", "full/ppkt/miou_std",
                              "ref/ppkt/full/ppkt-scannet-full-miou", "pipeline/ui/", "0.696")
        # the metrics table, where the paper's value and ours share the row full/ppkt/miou_mean
        browser.evaluate("""Array.from(document.querySelectorAll('*'))
            .filter(e => e.children.length === 0 && e.textContent.trim() === 'full/ppkt/miou_mean').pop()
            .scrollIntoView({block: 'center'})""")
        time.sleep(1)
        browser.screenshot(SHOTS / "3-compare.png")
    finally:
        if browser is not None:
            browser.close()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
