"""Tracking under load and faults (issue 13, items 3 and 5): 16 concurrent job processes x 200 metrics
through the sqlite default and through a PostgreSQL-backed MLflow server that the test starts; an
unreachable server fails a job with its URI after bounded retries; a locked store is retried."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pretrain3d.config import TrackingConfig

REPO = Path(__file__).resolve().parents[1]
PROCS, METRICS = 16, 200


def _bench():
    spec = importlib.util.spec_from_file_location("bench_tracking", REPO / "scripts" / "bench_tracking.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _assert_nothing_lost(result: dict) -> None:
    assert result["failed_jobs"] == [], result["failed_jobs"]
    assert result["lost_or_wrong"] == [] and result["runs_found"] == PROCS, result
    assert result["ok"]


def test_sqlite_store_takes_16_concurrent_jobs(tmp_path):
    result = _bench().load_test(f"sqlite:///{tmp_path / 'load.db'}", str(tmp_path / "art"), PROCS, METRICS)
    print(result)  # the figures: wall_s, writes_per_s, retries
    _assert_nothing_lost(result)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """PostgreSQL (installed with apt-get when absent and root) + an MLflow server, both on 127.0.0.1."""
    from pretrain3d.tracking.server import mlflow_server, postgres

    # pytest's folders are private to root; PostgreSQL runs as the postgres user, so its own folder in /tmp
    data = Path(tempfile.mkdtemp(prefix="pretrain3d-tracking-"))
    data.chmod(0o755)
    try:
        with postgres(data) as db, mlflow_server(db, data / "artifacts") as url:
            yield url, data
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_tracking_server_on_postgres_takes_16_concurrent_jobs(tracking_server):
    url, data = tracking_server
    result = _bench().load_test(url, str(data / "artifacts"), PROCS, METRICS, experiment="load-server")
    print(result)
    _assert_nothing_lost(result)


def test_a_job_logs_params_metrics_and_artifacts_through_the_server(tracking_server, tmp_path):
    import mlflow

    from pretrain3d.tracking.mlflow_runs import job_run

    url, _ = tracking_server
    art = tmp_path / "note.txt"
    art.write_text("hello")
    cfg = TrackingConfig(uri=url, experiment="server-job")
    with job_run(cfg, "job", {"k": "v"}, {"p": 1}) as run:
        run.log_metrics({"val/mIoU": 0.5}, step=0)
        run.log_artifact(art)
    client = mlflow.MlflowClient(url)
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.data.params["p"] == "1" and r.data.metrics["val/mIoU"] == 0.5
    assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server, not a client path
    assert [f.path for f in client.list_artifacts(run.run_id)] == ["note.txt"]


def test_unreachable_server_fails_the_job_naming_the_uri(tmp_path):
    from pretrain3d.tracking.mlflow_runs import TrackingError, job_run
    from pretrain3d.tracking.server import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = TrackingConfig(uri=uri, retries=2, retry_backoff=0.2)
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")) as err:
        with job_run(cfg, "job", {}, {}):
            pass
    assert "after 3 attempt(s)" in str(err.value)
    assert time.monotonic() - t0 < 20  # bounded: 0.2 + 0.4 s of backoff, MLflow's own retries off


def test_unreachable_server_fails_a_cli_job_with_exit_2(tmp_path):
    from pretrain3d.tracking.server import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    cfg = tmp_path / "params.yaml"
    cfg.write_text(f"tracking:\n  uri: {uri}\n  retries: 1\n  retry_backoff: 0.1\n")
    r = subprocess.run([sys.executable, "-m", "pretrain3d.cli", "log-references", "--config", str(REPO / "params.yaml"),
                        "--config", str(cfg), "--out", str(tmp_path / "refs.json")],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 2, r.stderr[-2000:]
    assert uri in r.stderr and "after 2 attempt(s)" in r.stderr
    assert not (tmp_path / "refs.json").exists()


def test_a_locked_store_is_retried_with_backoff_then_reported():
    from pretrain3d.tracking.mlflow_runs import TrackingError, _Retry

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    retry = _Retry(TrackingConfig(uri="sqlite:///x.db", retries=3, retry_backoff=0.05))
    assert retry("logging metrics", flaky) == "ok" and retry.retried == 2
    assert calls[2] - calls[1] >= 0.095 and calls[1] - calls[0] >= 0.045  # doubled backoff
    never = _Retry(TrackingConfig(uri="sqlite:///x.db", retries=1, retry_backoff=0.01))
    with pytest.raises(TrackingError, match=r"sqlite:///x\.db: logging metrics failed after 2 attempt"):
        never("logging metrics", lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")))
    with pytest.raises(KeyError):  # not a transient error: raised at once, no retry
        never("x", lambda: {}["missing"])


def test_postgres_missing_without_root_says_what_to_install(monkeypatch):
    from pretrain3d.tracking import server

    monkeypatch.setattr(server, "postgres_bindir", lambda: None)
    monkeypatch.setattr(server.os, "geteuid", lambda: 1000)
    with pytest.raises(server.ServerError, match="apt-get install postgresql"):
        server.ensure_postgres()


def test_postgres_missing_as_root_is_installed_with_apt_get(monkeypatch, tmp_path):
    # a stand-in apt-get on PATH records its calls and "installs" initdb/pg_ctl into a bin folder
    from pretrain3d.tracking import server

    bindir = tmp_path / "pgbin"
    log = tmp_path / "apt.log"
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nmkdir -p {bindir}\n"
                                  f"touch {bindir}/initdb {bindir}/pg_ctl\n")
    (fake / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(server.os, "geteuid", lambda: 0)
    found = iter([None, bindir])
    monkeypatch.setattr(server, "postgres_bindir", lambda: next(found))
    assert server.ensure_postgres(log=lambda *_: None) == bindir
    assert log.read_text().splitlines() == ["update -qq", "install -y -qq --no-install-recommends postgresql"]


def test_tracking_server_script_serves_until_sigterm():
    import signal

    from pretrain3d.tracking.server import free_port, wait_healthy

    data = Path(tempfile.mkdtemp(prefix="pretrain3d-tracking-script-"))
    data.chmod(0o755)
    port = free_port()
    env = {**os.environ, "PRETRAIN3D_VENV": str(Path(sys.executable).parents[1])}
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "tracking_server.sh"), "--data", str(data), "--port",
                             str(port), "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert f"MLflow tracking server at http://127.0.0.1:{port}" in out
        assert (data / "postgres" / "PG_VERSION").exists() and (data / "mlflow-server.log").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)
