"""Run per-scene ingestion jobs in worker processes, and tidy up after killed runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence


def run_jobs(fn: Callable, jobs: Sequence[tuple], workers: int = 1, desc: str = "scenes",
             progress: bool = True) -> list:
    """``[fn(*job) for job in jobs]``, in ``workers`` processes when more than one.

    The first failing job raises its exception (a DataError keeps its path, problem and hint)
    once the jobs already running have finished; pending jobs are cancelled. ``fn`` must be a
    module-level function (workers are spawned, not forked).
    """
    from tqdm import tqdm

    results: list = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="scene", disable=not progress)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                results[i] = fn(*job)
                bar.update(1)
            return results
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: never fork a parent that may hold threads (torch, BLAS); a dead worker raises
        # BrokenProcessPool instead of hanging.
        ex = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"))
        try:
            futures = {ex.submit(fn, *job): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        return results
    finally:
        bar.close()


def remove_stale_temporaries(out_dirs: Sequence[str | Path]) -> None:
    """Remove the hidden ``.<name>.*.tmp`` / ``.<name>.old`` siblings that an atomic write of one
    of ``out_dirs`` leaves behind when its process is killed (a killed worker runs no cleanup)."""
    for d in out_dirs:
        d = Path(d)
        if d.parent.is_dir():
            for tmp in [*d.parent.glob(f".{d.name}.*.tmp"), *d.parent.glob(f".{d.name}.old")]:
                shutil.rmtree(tmp, ignore_errors=True)
