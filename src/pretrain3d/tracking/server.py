"""A PostgreSQL-backed MLflow tracking server on this machine: for cluster runs (hundreds of jobs cannot
share one sqlite file on a network filesystem), the tracking load test and its pytest fixture.

    scripts/tracking_server.sh --data tracking/ --port 5000      # README: "Tracking server"

What it does, each step skipped when already there:

1. PostgreSQL: ``initdb``/``pg_ctl`` from ``PATH`` or Debian's ``/usr/lib/postgresql/<v>/bin``; when
   absent and this process is root on a Debian-like machine, ``apt-get install postgresql`` (what a
   fresh machine needs); otherwise an error that says what to install. PostgreSQL refuses to run as
   root: as root the cluster belongs to the ``postgres`` user (created by the package) and its commands
   run through ``runuser``.
2. A database cluster in ``<data>/postgres`` (trust authentication, listening on 127.0.0.1 only), the
   database ``mlflow``.
3. ``mlflow server`` with ``--backend-store-uri postgresql://postgres@127.0.0.1:<pg port>/mlflow`` and
   ``--artifacts-destination <data>/artifacts`` (clients upload artifacts through the server), on
   ``host:port``; ready when ``/health`` answers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from pretrain3d.errors import Pretrain3DError

__all__ = ["ServerError", "postgres_bindir", "ensure_postgres", "free_port", "postgres", "mlflow_server"]


class ServerError(Pretrain3DError):
    """PostgreSQL or the MLflow server could not be installed or started."""


def postgres_bindir() -> Path | None:
    """The folder with initdb and pg_ctl: PATH first, then Debian's versioned folders (newest)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    return None


def ensure_postgres(install: bool = True, log=print) -> Path:
    """PostgreSQL's bin folder, installing Debian's ``postgresql`` first when it is absent and allowed."""
    bindir = postgres_bindir()
    if bindir is not None:
        return bindir
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerError("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
                          "install it, e.g. `sudo apt-get install postgresql`, or point tracking.uri at an "
                          "existing server")
    log("installing PostgreSQL (apt-get install postgresql) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                "postgresql"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise ServerError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    bindir = postgres_bindir()
    if bindir is None:
        raise ServerError("apt-get installed postgresql but initdb/pg_ctl are still not found")
    return bindir


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_db_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses root: run its commands as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        raise ServerError("running as root without `runuser`: cannot start PostgreSQL as the postgres user")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ServerError(f"{what}: `{' '.join(cmd)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")


@contextlib.contextmanager
def postgres(data: str | Path, port: int | None = None, install: bool = True, log=print) -> Iterator[str]:
    """A running PostgreSQL cluster in ``<data>/postgres`` on 127.0.0.1; yields the ``mlflow`` database's
    SQLAlchemy URI and stops the server on exit."""
    bindir = ensure_postgres(install, log)
    data = Path(data).resolve()
    pgdata, sockets = data / "postgres", data / "pg-socket"
    port = port or free_port()
    data.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError("running as root but there is no `postgres` user (Debian's postgresql package "
                              "creates it)") from None
        if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(data)]).returncode != 0:
            raise ServerError(f"{data}: PostgreSQL runs as the postgres user, who cannot enter this folder (a parent "
                              f"without o+x?): choose a folder it can reach, e.g. under /srv or /tmp")
        os.chown(sockets, pw.pw_uid, pw.pw_gid)
        (data / "postgres.log").touch()
        os.chown(data / "postgres.log", pw.pw_uid, pw.pw_gid)
        if not pgdata.exists():
            pgdata.mkdir(mode=0o700)
            os.chown(pgdata, pw.pw_uid, pw.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        _run(_as_db_user([str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                          "--encoding=UTF8", "--no-instructions"]), "creating the database cluster")
    opts = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
    _run(_as_db_user([str(bindir / "pg_ctl"), "-D", str(pgdata), "-o", opts, "-l", str(data / "postgres.log"),
                      "-w", "-t", "60", "start"]), f"starting PostgreSQL (log: {data / 'postgres.log'})")
    try:
        psql = [str(bindir / "psql")] if (bindir / "psql").exists() else ["psql"]
        have = subprocess.run(_as_db_user([*psql, "-h", str(sockets), "-p", str(port), "-U", "postgres", "-tAc",
                                           "select 1 from pg_database where datname = 'mlflow'"]),
                              capture_output=True, text=True)
        if have.stdout.strip() != "1":
            _run(_as_db_user([*psql, "-h", str(sockets), "-p", str(port), "-U", "postgres", "-c",
                              "create database mlflow"]), "creating the mlflow database")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_db_user([str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0, log_file: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_file.read_text()[-1500:] if log_file and log_file.exists() else ""
            raise ServerError(f"the MLflow server exited ({proc.returncode}) before answering {url}/health:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise ServerError(f"the MLflow server did not answer {url}/health within {timeout:.0f} s"
                      + (f" (log: {log_file})" if log_file else ""))


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: str | Path, host: str = "127.0.0.1", port: int | None = None,
                  workers: int = 2, log_file: str | Path | None = None) -> Iterator[str]:
    """``mlflow server`` on ``host:port`` over ``backend_uri``; yields its URL, stops it on exit."""
    port = port or free_port()
    artifacts = Path(artifacts).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_file) if log_file else artifacts.parent / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port), "--workers", str(workers)]
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "GIT_PYTHON_REFRESH": "quiet",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://{host}:{port}"
    try:
        wait_healthy(url, proc, log_file=log_path)
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Run PostgreSQL + the MLflow server in the foreground until Ctrl-C (scripts/tracking_server.sh)."""
    import argparse

    from pretrain3d.foreground import serve

    ap = argparse.ArgumentParser(prog="tracking_server.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder for the database cluster, the artifacts and the logs")
    ap.add_argument("--host", default="127.0.0.1", help="an address the cluster's nodes reach (internal network: the server has no authentication)")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--db-port", type=int, default=None, help="PostgreSQL's port (default: a free one)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--no-install", action="store_true", help="never apt-get install postgresql")
    args = ap.parse_args(argv)
    data = Path(args.data)

    @contextlib.contextmanager
    def start():
        with postgres(data, args.db_port, install=not args.no_install) as db, \
                mlflow_server(db, data / "artifacts", args.host, args.port, args.workers,
                              data / "mlflow-server.log") as url:
            yield url, db

    return serve(start, lambda v: (f"MLflow tracking server at {v[0]} (database {v[1]}, artifacts "
                                   f"{data / 'artifacts'}); set tracking.uri: {v[0]} (the nodes' address of this "
                                   f"host). Ctrl-C stops."), ServerError, "tracking_server")


if __name__ == "__main__":
    sys.exit(main())
