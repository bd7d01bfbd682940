"""A single-node SLURM cluster on this machine: munge, slurmctld and slurmd from Debian's packages, no
systemd. For the cluster profile's test (tests/test_slurm.py) and for trying ``profiles/slurm``
before a real cluster:

    bash scripts/slurm_single_node.sh --dir /tmp/slurm        # prints `export SLURM_CONF=...`; Ctrl-C stops

Everything SLURM writes (config, state, spool, logs, pid files) lives under ``--dir``; the daemons read
``<dir>/slurm.conf`` (``-f``), the clients find it through ``SLURM_CONF`` and, inside jobs (where SLURM
does not pass that variable on), through ``/etc/slurm/slurm.conf``, a link to it while the node runs:
a machine with a SLURM configuration of its own is refused, never changed. The configuration is the minimal one of
shared/reference/workflow.md §5 (one node with this machine's cores, partition ``debug``, no
accounting: ``squeue`` answers job status, ``sacct`` does not), with its own ports.
Root is needed (the daemons and the package install); the packages are installed when absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from pretrain3d.errors import Pretrain3DError

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PARTITION = "debug"
MARKER = "# single-node SLURM (pretrain3d.workflow.slurm_node)"


class SlurmError(Pretrain3DError):
    """The single-node SLURM could not be installed or started."""


def _missing() -> list[str]:
    tools = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client", "munged": "munge"}
    return sorted({pkg for tool, pkg in tools.items() if shutil.which(tool, path=os.environ.get("PATH", "") +
                                                                         ":/usr/sbin:/sbin") is None})


def ensure_packages(install: bool = True, log=print) -> None:
    missing = _missing()
    if not missing:
        return
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmError(f"SLURM is not installed (missing: {', '.join(missing)}): run as root on Debian/Ubuntu, "
                         f"or `sudo apt-get install {' '.join(PACKAGES)}`")
    log(f"installing {' '.join(PACKAGES)} (apt-get) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SlurmError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    if _missing():
        raise SlurmError(f"apt-get ran but {', '.join(_missing())} is still missing")


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return max(1000, int(total * 0.8))


def write_conf(folder: Path, cpus: int | None = None, mem_mb: int | None = None) -> Path:
    host = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        MARKER,
        "ClusterName=pretrain3d",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "ProctrackType=proctrack/pgid",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "MinJobAge=300",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb or _mem_mb()} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


def _munge_running() -> bool:
    if shutil.which("munge") is None:
        return False
    enc = subprocess.run(["munge", "-n"], capture_output=True)
    return enc.returncode == 0 and subprocess.run(["unmunge"], input=enc.stdout, capture_output=True).returncode == 0


def _start_munge() -> bool:
    """Start munged as the munge user unless one answers; True when this call started it."""
    if _munge_running():
        return False
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True, capture_output=True)
    run = Path("/run/munge")
    run.mkdir(parents=True, exist_ok=True)
    shutil.chown(run, "munge", "munge")
    r = subprocess.run(["runuser", "-u", "munge", "--", shutil.which("munged", path="/usr/sbin:/sbin:" +
                                                                      os.environ.get("PATH", ""))],
                       capture_output=True, text=True)
    if r.returncode != 0 or not _wait(_munge_running, 20):
        raise SlurmError(f"munged did not start: {r.stderr.strip()[-500:]}")
    return True


def _wait(ok, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ok():
            return True
        time.sleep(0.3)
    return False


def _node_state(env: dict) -> str:
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
    return r.stdout.strip() if r.returncode == 0 else ""


def _kill_pidfile(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(path.read_text().strip()), 15)


@contextlib.contextmanager
def single_node(folder: str | Path, install: bool = True, log=print) -> Iterator[dict]:
    """Start munge (when none answers), slurmctld and slurmd with ``<folder>/slurm.conf``; yields the
    environment the clients need (``SLURM_CONF``); stops what it started on exit."""
    if os.geteuid() != 0:
        raise SlurmError("the single-node SLURM needs root (its daemons run as root here)")
    ensure_packages(install, log)
    folder = Path(folder).resolve()
    conf = write_conf(folder)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # Inside a job SLURM does not pass SLURM_CONF on, and the executor's job step calls srun there:
    # the job finds the configuration at the default path, a link to this one while the node runs.
    system = Path("/etc/slurm/slurm.conf")
    if system.exists() or system.is_symlink():
        target = Path(os.readlink(system)) if system.is_symlink() else None
        ours = target is not None and (not target.exists() or target.read_text().startswith(MARKER))
        if not ours:
            raise SlurmError(f"{system} exists: this machine has a SLURM configuration of its own; use that SLURM "
                             f"(profiles/slurm) instead of a single-node one")
        system.unlink()  # a link left by an earlier single-node run
    system.parent.mkdir(parents=True, exist_ok=True)
    system.symlink_to(conf)
    sbin = "/usr/sbin:/sbin:" + os.environ.get("PATH", "")
    started_munge = _start_munge()
    try:
        for daemon in ("slurmctld", "slurmd"):
            r = subprocess.run([shutil.which(daemon, path=sbin), "-f", str(conf)], capture_output=True, text=True,
                               env=env)
            if r.returncode != 0:
                raise SlurmError(f"{daemon} did not start ({r.returncode}): {r.stderr.strip()[-500:]} "
                                 f"(log: {folder / 'log' / (daemon + '.log')})")
        if not _wait(lambda: _node_state(env) in ("idle", "mixed", "allocated"), 60):
            logs = "\n".join((folder / "log" / f).read_text()[-800:] for f in ("slurmctld.log", "slurmd.log")
                             if (folder / "log" / f).exists())
            raise SlurmError(f"the node did not become idle (sinfo: {_node_state(env)!r}):\n{logs}")
        yield env
    finally:
        subprocess.run(["scontrol", "shutdown"], capture_output=True, env=env)
        time.sleep(1)
        _kill_pidfile(folder / "slurmd.pid")
        _kill_pidfile(folder / "slurmctld.pid")
        if started_munge:
            _kill_pidfile(Path("/run/munge/munged.pid"))
        with contextlib.suppress(FileNotFoundError):
            if system.is_symlink() and Path(os.readlink(system)) == conf:
                system.unlink()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from pretrain3d.foreground import serve

    ap = argparse.ArgumentParser(prog="slurm_single_node.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="folder for slurm.conf, state, spool and logs")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install the packages")
    args = ap.parse_args(argv)
    return serve(lambda: single_node(args.dir, install=not args.no_install),
                 lambda env: (f"single-node SLURM up (partition {PARTITION}): export SLURM_CONF={env['SLURM_CONF']}; "
                              f"Ctrl-C stops it"), SlurmError, "slurm_single_node")


if __name__ == "__main__":
    sys.exit(main())
