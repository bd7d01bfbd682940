"""Where a job's time goes: fixed cost (interpreter start, imports, tracking, data loading,
checkpoints) against compute, and per training step data / forward / backward / optimiser.

The CLI starts the clock in ``main`` and, when ``PRETRAIN3D_PROFILE_DIR`` is set (the workflow sets
it to ``logs/<experiment>/profile``), writes one JSON per job there; ``scripts/profile_run.py``
prints the table. Phases are exclusive: time spent importing inside a tracking call counts as
imports, not twice. Every Python ``import`` statement is timed by a wrapper around
``builtins.__import__`` (only the outermost import of a chain), so lazy imports anywhere count.
The cost is a few microseconds per import statement, nothing per training step.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

ENV = "PRETRAIN3D_PROFILE_DIR"
PHASES = ("startup", "imports", "tracking", "data", "checkpoint", "compute")

_totals: dict[str, float] = defaultdict(float)
_steps: dict[str, float] = defaultdict(float)
_stack: list[list] = []  # [phase, time it (re)started]
_started: float | None = None
# the real import, also when this module is reloaded while its wrapper is installed
_original_import = getattr(builtins.__import__, "_pretrain3d_wrapped", builtins.__import__)


def _switch_in(name: str) -> None:
    now = time.perf_counter()
    if _stack:
        top = _stack[-1]
        _totals[top[0]] += now - top[1]
    _stack.append([name, now])


def _switch_out() -> None:
    now = time.perf_counter()
    name, since = _stack.pop()
    _totals[name] += now - since
    if _stack:
        _stack[-1][1] = now


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the time inside as ``name`` (no-op before :func:`start`)."""
    if _started is None:
        yield
        return
    _switch_in(name)
    try:
        yield
    finally:
        _switch_out()


def _timed_import(name, globals=None, locals=None, fromlist=(), level=0):
    if _stack and _stack[-1][0] == "imports":  # nested import: already counted by the outer one
        return _original_import(name, globals, locals, fromlist, level)
    if name in sys.modules and not fromlist:
        return _original_import(name, globals, locals, fromlist, level)
    _switch_in("imports")
    try:
        return _original_import(name, globals, locals, fromlist, level)
    finally:
        _switch_out()


def active() -> bool:
    """Whether this job's profile will be written (the CUDA step split then synchronises)."""
    return _started is not None


_timed_import._pretrain3d_wrapped = _original_import  # type: ignore[attr-defined]


def process_start_epoch() -> float | None:
    """When this process started (seconds since the epoch), from /proc; None where there is none."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        ticks = int(after_name[19])  # field 22 of proc(5): starttime in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def start() -> None:
    """Start the job clock: everything from here is compute unless a phase says otherwise. Only when
    $PRETRAIN3D_PROFILE_DIR is set: otherwise (a stage called by hand, a test) nothing is wrapped."""
    global _started
    if _started is not None or not os.environ.get(ENV):
        return
    born = process_start_epoch()
    _totals["startup"] = max(time.time() - born, 0.0) if born is not None else 0.0
    _started = time.perf_counter()
    _stack.append(["compute", _started])
    builtins.__import__ = _timed_import


def add_step(data: float, forward: float, backward: float, optimizer: float) -> None:
    """One training step's split (seconds); summed per job."""
    _steps["steps"] += 1
    _steps["data"] += data
    _steps["forward"] += forward
    _steps["backward"] += backward
    _steps["optimizer"] += optimizer


def snapshot() -> dict:
    """The job's figures so far: seconds per phase, total, and the per-step sums."""
    if _started is None:
        return {}
    now = time.perf_counter()
    totals = dict(_totals)
    if _stack:  # the running phases up to now
        totals[_stack[-1][0]] = totals.get(_stack[-1][0], 0.0) + now - _stack[-1][1]
    return {"phases": {p: round(totals.get(p, 0.0), 4) for p in PHASES},
            "total": round(totals.get("startup", 0.0) + now - _started, 4),
            "steps": {k: round(v, 4) for k, v in _steps.items()}}


def write(command: str, job: str, status: int) -> Path | None:
    """Write the job's profile to $PRETRAIN3D_PROFILE_DIR (nothing when unset); ``job`` names the
    job within its command (e.g. ``ppkt-la-seed0``)."""
    folder = os.environ.get(ENV)
    if not folder or _started is None:
        return None
    record = {"command": command, "job": job, "status": status, "pid": os.getpid(), **snapshot()}
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job)[:120]
    path = Path(folder) / f"{command}-{safe or 'job'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(path)
    return path
