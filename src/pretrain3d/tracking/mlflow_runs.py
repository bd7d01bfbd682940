"""MLflow: one parent run per pipeline invocation, one child run per job.

Every Snakemake job is its own process, so the parent run id travels in the environment
variable PRETRAIN3D_PARENT_RUN_ID (set by the Snakefile's ``onstart``, before any job starts).
``dvc repro`` has no such hook and runs one Snakemake per stage: there the parent is found (or
created) by the tag ``pipeline_key`` = config hash + git commit, so the stages of one repro share a
parent (DVC's repository lock runs the stages one after another, so they cannot race). A job run by
hand has no parent, unless PRETRAIN3D_PIPELINE_ID names one: then every job with that id joins the
parent of that id, created race-free by whichever comes first (:func:`find_or_create_parent`); the
paper reference runs share one parent the same way.

The experiment is tagged as a model-training experiment (``mlflow.experimentKind``), so MLflow 3's
UI opens it on its runs, not on the GenAI overview.

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
PIPELINE_ID_ENV = "PRETRAIN3D_PIPELINE_ID"
# MLflow 3's UI reads the experiment's kind from this tag (mlflow/server/js: "mlflow.experimentKind");
# without it an experiment opens on the GenAI overview (traces, tokens), not on its runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PARENT_KEY_TAG = "parent_key"
# The provenance tags a parent shares with its jobs (stages.common.job_tags)
PIPELINE_TAGS = ("git_commit", "git_dirty", "config_hash", "data_hash", "pipeline_key")
# How long a job waits for the parent another job is creating (creation is two requests).
PARENT_WAIT_S = 60.0
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
        if EXPERIMENT_KIND_TAG not in exp.tags:  # a store made before the tag was set: fix it once
            retry("tagging the experiment",
                  lambda: mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG,
                                                                   EXPERIMENT_KIND))
        return exp.experiment_id
    try:
        return retry("creating the experiment",
                     lambda: mlflow.create_experiment(tracking_cfg.experiment, artifact_location=art,
                                                      tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
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


def summary_key(protocol: str, method: str, stat: str) -> str:
    """``la/ppkt/miou_mean``: the metric key of a per-protocol, per-method summary value. A pipeline's
    parent and a paper reference run log the same key, so MLflow's compare view sets them side by side
    (protocol first: the UI's column filter then finds one protocol's methods together)."""
    return f"{protocol}/{method}/{stat}".lower()


def parent_run_name(kind: str, experiment_name: str) -> str:
    """``pipeline/<experiment>/<UTC start>``: parents sort by time and filter by prefix in the UI."""
    return f"{kind}/{experiment_name}/{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"


def start_parent(tracking_cfg, run_name: str, tags: dict[str, str], params: dict[str, Any] | None = None,
                 root: str | Path = ".") -> str:
    """Create the pipeline's parent run and return its id (the run is left RUNNING)."""
    from mlflow import MlflowClient

    exp_id = setup(tracking_cfg, root)
    client = MlflowClient()
    run = client.create_run(exp_id, run_name=run_name, tags={"run_type": "pipeline", **tags})
    if params:
        _log_params(client, run.info.run_id, params)
    return run.info.run_id


def find_or_create_parent(tracking_cfg, key: str, run_name: str, tags: dict[str, str],
                          params: dict[str, Any] | None = None, root: str | Path = ".") -> str:
    """The parent run tagged ``parent_key=key``, created by whichever process asks first.

    Jobs are separate processes (Snakemake, DVC, SLURM, by hand) and a search-then-create would let two
    of them create two parents. The one atomic test-and-set every MLflow store offers is the unique
    experiment name: the process whose ``create_experiment(<lock name>)`` succeeds creates the run and
    records its id as a tag of that lock experiment, then deletes the lock (deleted experiments keep
    their name, so the lock stays taken and hidden from the UI); the others wait for that tag."""
    import hashlib

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    exp_id = setup(tracking_cfg, root)
    client = MlflowClient()
    retry = _Retry(tracking_cfg)
    found = retry("finding the parent run", lambda: client.search_runs(
        [exp_id], filter_string=f"tags.{PARENT_KEY_TAG} = '{key}'", max_results=1))
    if found:
        return found[0].info.run_id
    lock = f"{tracking_cfg.experiment}/.parent-lock/{hashlib.sha256(key.encode()).hexdigest()[:24]}"
    lock_art = client.get_experiment(exp_id).artifact_location  # never a new folder for the lock
    try:
        lock_id = retry("locking the parent run", lambda: client.create_experiment(
            lock, artifact_location=lock_art, tags={PARENT_KEY_TAG: key}))
    except MlflowException as err:
        if "already exists" not in str(err).lower() and err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return _wait_for_parent(client, retry, lock, key)
    run_id = start_parent(tracking_cfg, run_name, {**tags, PARENT_KEY_TAG: key}, params, root)
    retry("recording the parent run", lambda: client.set_experiment_tag(lock_id, "run_id", run_id))
    retry("releasing the parent lock", lambda: client.delete_experiment(lock_id))
    return run_id


def _wait_for_parent(client, retry: _Retry, lock: str, key: str) -> str:
    deadline = time.monotonic() + PARENT_WAIT_S
    while True:
        exp = retry("reading the parent lock", lambda: client.get_experiment_by_name(lock))
        run_id = exp.tags.get("run_id") if exp is not None else None
        if run_id:
            if client.get_run(run_id).info.lifecycle_stage == "deleted":
                client.restore_run(run_id)  # deleted in the UI: the key still names it
            return run_id
        if time.monotonic() > deadline:
            raise TrackingError(f"MLflow tracking store {retry.uri}: the parent run {key!r} is being created by "
                                f"another job, but its id did not appear within {PARENT_WAIT_S:.0f} s (the lock "
                                f"experiment {lock!r} has no run_id tag: that job died? delete the lock "
                                "experiment permanently with `mlflow gc` and rerun)")
        time.sleep(0.2)


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

    def __init__(self, run_id: str | None, retry: _Retry | None = None, parent_id: str | None = None):
        self.run_id = run_id
        self.parent_id = parent_id  # None: a job run by hand, top-level
        self.retry = retry or (lambda what, fn: fn())

    def log_summary(self, metrics: dict[str, float], artifacts: list[tuple[Path, str | None]]) -> None:
        """Metrics and artifacts for the pipeline's parent run (where the UI compares pipelines), or for
        this run when it has no parent."""
        if self.run_id is None:
            return
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        target = self.parent_id or self.run_id
        client = MlflowClient()
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items()) if v is not None]
        with profiling.phase("tracking"):
            for i in range(0, len(items), 500):
                self.retry("logging the summary", lambda: client.log_batch(target, metrics=items[i:i + 500]))
            for path, artifact_path in artifacts:
                if Path(path).exists():
                    self.retry(f"logging artifact {path}",
                               lambda: client.log_artifact(target, str(path), artifact_path=artifact_path))

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
        launcher = "snakemake" if parent else "manual"
        if parent is None and os.environ.get("DVC_STAGE"):
            launcher = "dvc"
            parent = find_or_start_dvc_parent(tracking_cfg, tags.get("pipeline_key", tags.get("config_hash", "")),
                                              run_name=parent_run_name("dvc", tracking_cfg.experiment),
                                              tags=tags, root=root)
        elif parent is None and os.environ.get(PIPELINE_ID_ENV):
            pid = os.environ[PIPELINE_ID_ENV]
            keep = {k: v for k, v in tags.items() if k in PIPELINE_TAGS}  # not the job's method/seed
            parent = find_or_create_parent(tracking_cfg, f"pipeline:{pid}", f"manual/{pid}",
                                           {**keep, "job": "pipeline", "run_type": "pipeline", "launcher": "manual",
                                            "pipeline_id": pid}, root=root)
        exp = retry("reading the experiment", lambda: mlflow.get_experiment_by_name(tracking_cfg.experiment))

    def open_run():
        return mlflow.start_run(run_name=run_name, experiment_id=exp.experiment_id, parent_run_id=parent,
                                tags={"launcher": launcher, **tags, "run_type": tags.get("run_type", "job")})

    with _sigterm_raises(), _TimedContext(open_run, retry) as run:
        with profiling.phase("tracking"):
            retry("logging params", lambda: _log_params(MlflowClient(), run.info.run_id, params))
        try:
            yield JobRun(run.info.run_id, retry, parent)
        except Terminated:
            mlflow.end_run("KILLED")  # the with-block then finds no active run and changes nothing
            raise
