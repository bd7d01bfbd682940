"""MLflow: one parent run per pipeline invocation, one child run per job.

Every Snakemake job is its own process, so the parent run id travels in the environment
variable PRETRAIN3D_PARENT_RUN_ID (set by the Snakefile's ``onstart``). ``dvc repro`` has no such
hook and runs one Snakemake per stage: there the parent is found (or created) by the tag
``pipeline_key`` = config hash + git commit, so the stages of one repro share a parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from pretrain3d import profiling

log = logging.getLogger(__name__)

PARENT_ENV = "PRETRAIN3D_PARENT_RUN_ID"
# Parents reused by later DVC stages only if this recent: a repro older than that is another invocation.
DVC_PARENT_WINDOW_S = 12 * 3600


def resolve_uri(uri: str, root: str | Path = ".") -> str:
    """Make a relative sqlite path absolute (jobs may run in other working directories)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((Path(root) / uri[len(prefix):]).resolve())
    return uri


def setup(tracking_cfg, root: str | Path = "."):
    """Point MLflow at the store and make sure the experiment exists; returns the experiment id.

    Call once before parallel jobs start (concurrent first-time schema migrations race)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(resolve_uri(tracking_cfg.uri, root))
    exp = mlflow.get_experiment_by_name(tracking_cfg.experiment)
    art = Path(root, tracking_cfg.artifact_root).resolve().as_uri()
    if exp is not None:
        if exp.artifact_location != art:
            _follow_moved_repository(tracking_cfg.uri, root, exp.artifact_location, art)
        return exp.experiment_id
    try:
        return mlflow.create_experiment(tracking_cfg.experiment, artifact_location=art)
    except Exception:  # created meanwhile by a concurrent job
        exp = mlflow.get_experiment_by_name(tracking_cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _follow_moved_repository(uri: str, root: str | Path, old: str, new: str) -> None:
    """MLflow stores absolute artifact locations. When the repository (store and artifacts together) was
    moved, the old location no longer exists: rewrite it to the new one in the sqlite store, for the
    experiment and its runs, so logging and the UI keep working. Another existing location is left alone."""
    import sqlite3
    from urllib.parse import urlparse

    prefix = "sqlite:///"
    old_path = Path(urlparse(old).path) if old.startswith("file:") else None
    if not uri.startswith(prefix) or old_path is None or old_path.exists() or not Path(urlparse(new).path).exists():
        return
    db = resolve_uri(uri, root)[len(prefix):]
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        con.execute("update experiments set artifact_location = ? where artifact_location = ?", (new, old))
        con.execute("update runs set artifact_uri = ? || substr(artifact_uri, ?) "
                    "where substr(artifact_uri, 1, ?) = ?", (new, len(old) + 1, len(old), old))
    log.info("MLflow store %s: artifact location moved from %s to %s", db, old, new)


def start_parent(tracking_cfg, run_name: str, tags: dict[str, str], params: dict[str, Any] | None = None,
                 root: str | Path = ".") -> str:
    """Create the pipeline's parent run and return its id (the run is left RUNNING)."""
    from mlflow import MlflowClient

    exp_id = setup(tracking_cfg, root)
    client = MlflowClient()
    run = client.create_run(exp_id, run_name=run_name, tags={**tags, "run_type": "pipeline"})
    if params:
        _log_params(client, run.info.run_id, params)
    return run.info.run_id


def find_or_start_dvc_parent(tracking_cfg, pipeline_key: str, run_name: str, tags: dict[str, str],
                             root: str | Path = ".") -> str:
    from mlflow import MlflowClient

    exp_id = setup(tracking_cfg, root)
    client = MlflowClient()
    since = int((time.time() - DVC_PARENT_WINDOW_S) * 1000)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.pipeline_key = '{pipeline_key}' and tags.run_type = 'pipeline' "
                      f"and tags.launcher = 'dvc' and attributes.start_time > {since}",
        order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        return found[0].info.run_id
    return start_parent(tracking_cfg, run_name, {**tags, "pipeline_key": pipeline_key, "launcher": "dvc"}, root=root)


def end_parent(tracking_cfg, run_id: str, status: str = "FINISHED", root: str | Path = ".") -> None:
    from mlflow import MlflowClient

    setup(tracking_cfg, root)
    MlflowClient().set_terminated(run_id, status=status)


def reopen_parent(tracking_cfg, run_id: str, root: str | Path = ".") -> None:
    """A DVC repro's parent is ended by each stage's Snakemake (so the last one leaves it FINISHED or
    FAILED, never RUNNING forever) and marked RUNNING again by the next stage."""
    from mlflow import MlflowClient

    setup(tracking_cfg, root)
    MlflowClient().update_run(run_id, status="RUNNING")


class Terminated(SystemExit):
    """SIGTERM (a scheduler's cancel, Snakemake stopping its jobs) turned into an exception, so that
    context managers run and the MLflow run ends KILLED instead of staying RUNNING forever."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum, frame):
        raise Terminated(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


class JobRun:
    """Thin handle over an active child run; every call is a no-op when tracking is disabled."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run_id is None:
            return
        with profiling.phase("tracking"):
            self._log_metrics(metrics, step)

    def _log_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        import mlflow

        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items()
                 if v is not None and isinstance(v, (int, float))}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is None or not Path(path).exists():
            return
        import mlflow

        with profiling.phase("tracking"):
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        import mlflow

        with profiling.phase("tracking"):
            mlflow.set_tags({k: str(v) for k, v in tags.items()})


class _TimedContext:
    """Opens (``factory()`` + ``__enter__``) and closes a context, counting both as tracking time."""

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory

    def __enter__(self):
        with profiling.phase("tracking"):
            self.cm = self.factory()
            return self.cm.__enter__()

    def __exit__(self, *exc):
        with profiling.phase("tracking"):
            return self.cm.__exit__(*exc)


@contextlib.contextmanager
def job_run(tracking_cfg, run_name: str, tags: dict[str, str], params: dict[str, Any],
            root: str | Path = ".") -> Iterator[JobRun]:
    """A child run of the pipeline's parent (or a top-level run when the stage runs alone)."""
    if not tracking_cfg.enabled:
        yield JobRun(None)
        return
    import mlflow
    from mlflow import MlflowClient

    with profiling.phase("tracking"):
        setup(tracking_cfg, root)
        parent = os.environ.get(PARENT_ENV)
        if parent is None and os.environ.get("DVC_STAGE"):
            parent = find_or_start_dvc_parent(tracking_cfg, tags.get("pipeline_key", tags.get("config_hash", "")),
                                              run_name=f"dvc-{tags.get('config_hash', '')}", tags=tags, root=root)
        exp = mlflow.get_experiment_by_name(tracking_cfg.experiment)

    def open_run():
        return mlflow.start_run(run_name=run_name, experiment_id=exp.experiment_id, parent_run_id=parent,
                                tags={**tags, "run_type": tags.get("run_type", "job")})

    with _sigterm_raises(), _TimedContext(open_run) as run:
        with profiling.phase("tracking"):
            _log_params(MlflowClient(), run.info.run_id, params)
        try:
            yield JobRun(run.info.run_id)
        except Terminated:
            mlflow.end_run("KILLED")  # the with-block then finds no active run and changes nothing
            raise
