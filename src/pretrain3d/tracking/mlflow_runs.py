"""MLflow: one parent run per pipeline invocation, one child run per job.

Every Snakemake job is its own process, so the parent run id travels in the environment
variable PRETRAIN3D_PARENT_RUN_ID (set by the Snakefile's ``onstart``). ``dvc repro`` has no such
hook and runs one Snakemake per stage: there the parent is found (or created) by the tag
``pipeline_key`` = config hash + git commit, so the stages of one repro share a parent.

Under load (hundreds of cluster jobs, or 16 processes on one sqlite file) a tracking call that meets a
locked sqlite store or an unreachable server is retried ``tracking.retries`` times with exponential
backoff (``tracking.retry_backoff``, doubled each time); after that the job fails with a
:class:`TrackingError` naming the URI: never a job that succeeds with its metrics lost. MLflow's own
HTTP retries are turned off (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` unless set) so that this policy is
the one bound. ``scripts/bench_tracking.py`` is the load test (16 processes x 200 metrics).
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
from pretrain3d.errors import Pretrain3DError

log = logging.getLogger(__name__)

# Before any mlflow import: MLflow 3.17's telemetry thread sets and unsets an environment variable while
# a request is being built in the main thread, which failed 1 of 16 jobs of the load test with
# KeyError('_MLFLOW_TELEMETRY_SESSION_ID') (and it only tries to reach the internet).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PARENT_ENV = "PRETRAIN3D_PARENT_RUN_ID"
# Parents reused by later DVC stages only if this recent: a repro older than that is another invocation.
DVC_PARENT_WINDOW_S = 12 * 3600


class TrackingError(Pretrain3DError):
    """The tracking store could not be reached or written after the configured retries."""


_TRANSIENT = ("database is locked", "database table is locked", "connection refused", "max retries exceeded",
              "failed to establish a new connection", "connection aborted", "connection reset", "read timed out",
              "temporarily unavailable", "503", "502", "504")


def _transient(err: BaseException) -> bool:
    """A locked sqlite store or a server that is down/overloaded: worth retrying. Anything else (a bad
    request, a missing run) is not."""
    text = f"{type(err).__name__}: {err}".lower()
    return any(t in text for t in _TRANSIENT) or type(err).__name__ in ("ConnectionError", "Timeout",
                                                                         "ConnectTimeout", "ReadTimeout")


class _Retry:
    """Runs tracking calls under the retry policy of a ``tracking`` config section."""

    def __init__(self, tracking_cfg, uri: str | None = None):
        self.uri = uri or tracking_cfg.uri
        self.retries = getattr(tracking_cfg, "retries", 5)
        self.backoff = getattr(tracking_cfg, "retry_backoff", 0.5)
        self.retried = 0  # retries this handle needed (the load test reports them)

    def __call__(self, what: str, fn: Callable[[], Any]) -> Any:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as err:  # MLflow wraps sqlalchemy and requests errors in several types
                if not _transient(err):
                    raise
                if attempt == self.retries:
                    raise TrackingError(f"MLflow tracking store {self.uri}: {what} failed after {attempt + 1} "
                                        f"attempt(s) over {self.backoff * (2 ** attempt - 1):.1f} s of backoff "
                                        f"({type(err).__name__}: {str(err)[:300]}); is the server up / the "
                                        f"database reachable? (tracking.uri, tracking.retries)") from None
                log.warning("%s: %s failed (%s); retry %d/%d in %.1f s", self.uri, what, type(err).__name__,
                            attempt + 1, self.retries, delay)
                self.retried += 1
                time.sleep(delay)
                delay *= 2


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


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
    # one retry policy (ours, bounded); MLflow's default would retry a dead server for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(getattr(tracking_cfg, "http_timeout", 30))))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    retry = _Retry(tracking_cfg)
    mlflow.set_tracking_uri(resolve_uri(tracking_cfg.uri, root))
    exp = retry("reading the experiment", lambda: mlflow.get_experiment_by_name(tracking_cfg.experiment))
    # a server keeps artifacts where it was told (--artifacts-destination); a file store beside the repo
    art = None if _is_server(tracking_cfg.uri) else Path(root, tracking_cfg.artifact_root).resolve().as_uri()
    if exp is not None:
        if art is not None and exp.artifact_location != art:
            _follow_moved_repository(tracking_cfg.uri, root, exp.artifact_location, art)
        return exp.experiment_id
    try:
        return retry("creating the experiment",
                     lambda: mlflow.create_experiment(tracking_cfg.experiment, artifact_location=art))
    except TrackingError:
        raise
    except Exception:  # created meanwhile by a concurrent job
        exp = retry("reading the experiment", lambda: mlflow.get_experiment_by_name(tracking_cfg.experiment))
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

    def __init__(self, run_id: str | None, retry: _Retry | None = None):
        self.run_id = run_id
        self.retry = retry or (lambda what, fn: fn())

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
            self.retry("logging metrics", lambda: mlflow.log_metrics(clean, step=step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is None or not Path(path).exists():
            return
        import mlflow

        with profiling.phase("tracking"):
            self.retry(f"logging artifact {path}", lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        import mlflow

        with profiling.phase("tracking"):
            self.retry("setting tags", lambda: mlflow.set_tags({k: str(v) for k, v in tags.items()}))


class _TimedContext:
    """Opens (``factory()`` + ``__enter__``) and closes a context, counting both as tracking time; both
    under the retry policy."""

    def __init__(self, factory: Callable[[], Any], retry: _Retry):
        self.factory, self.retry = factory, retry

    def __enter__(self):
        with profiling.phase("tracking"):
            self.cm = self.retry("opening the run", self.factory)
            return self.cm.__enter__()

    def __exit__(self, *exc):
        with profiling.phase("tracking"):
            return self.retry("closing the run", lambda: self.cm.__exit__(*exc))


@contextlib.contextmanager
def job_run(tracking_cfg, run_name: str, tags: dict[str, str], params: dict[str, Any],
            root: str | Path = ".") -> Iterator[JobRun]:
    """A child run of the pipeline's parent (or a top-level run when the stage runs alone)."""
    if not tracking_cfg.enabled:
        yield JobRun(None)
        return
    import mlflow
    from mlflow import MlflowClient

    retry = _Retry(tracking_cfg)
    with profiling.phase("tracking"):
        setup(tracking_cfg, root)
        parent = os.environ.get(PARENT_ENV)
        if parent is None and os.environ.get("DVC_STAGE"):
            parent = find_or_start_dvc_parent(tracking_cfg, tags.get("pipeline_key", tags.get("config_hash", "")),
                                              run_name=f"dvc-{tags.get('config_hash', '')}", tags=tags, root=root)
        exp = retry("reading the experiment", lambda: mlflow.get_experiment_by_name(tracking_cfg.experiment))

    def open_run():
        return mlflow.start_run(run_name=run_name, experiment_id=exp.experiment_id, parent_run_id=parent,
                                tags={**tags, "run_type": tags.get("run_type", "job")})

    with _sigterm_raises(), _TimedContext(open_run, retry) as run:
        with profiling.phase("tracking"):
            retry("logging params", lambda: _log_params(MlflowClient(), run.info.run_id, params))
        try:
            yield JobRun(run.info.run_id, retry)
        except Terminated:
            mlflow.end_run("KILLED")  # the with-block then finds no active run and changes nothing
            raise
