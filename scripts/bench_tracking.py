#!/usr/bin/env python
"""Tracking under load (issue 13, item 3): N concurrent job processes, each one MLflow run logging M
metric values through the project's own job_run (retries included), against a tracking URI; then
every run is read back. Prints wall time, metric writes per second, retries, and what was lost.

    python scripts/bench_tracking.py --uri sqlite:////tmp/load.db             # the sqlite default
    python scripts/bench_tracking.py --server /tmp/tracking                    # starts PostgreSQL + server
    python scripts/bench_tracking.py --uri http://127.0.0.1:5000 --procs 16 --metrics 200

Each worker logs metric ``m`` at steps 0..M-1, one call per step (a training job logs per epoch: this is
the harsher pattern), in a run tagged with the test's id. Nothing lost = N runs FINISHED, each with M
values of ``m`` at the right steps; exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _tracking(uri: str, artifacts: str, experiment: str):
    from pretrain3d.config import TrackingConfig

    return TrackingConfig(uri=uri, artifact_root=artifacts, experiment=experiment)


def worker(uri: str, artifacts: str, experiment: str, test_id: str, index: int, metrics: int) -> dict:
    from pretrain3d.tracking.mlflow_runs import job_run

    t0 = time.perf_counter()
    with job_run(_tracking(uri, artifacts, experiment), f"load-{index}", {"load_test": test_id, "worker": str(index)},
                 {"worker": index, "metrics": metrics}) as run:
        for step in range(metrics):
            run.log_metrics({"m": float(index * 1000 + step)}, step=step)
    return {"worker": index, "seconds": time.perf_counter() - t0, "retries": run.retry.retried}


def check(uri: str, experiment: str, test_id: str, procs: int, metrics: int) -> dict:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.load_test = '{test_id}'", max_results=1000)
    problems = []
    for r in runs:
        i = int(r.data.tags["worker"])
        hist = client.get_metric_history(r.info.run_id, "m")
        want = {(s, float(i * 1000 + s)) for s in range(metrics)}
        got = {(h.step, h.value) for h in hist}
        if r.info.status != "FINISHED":
            problems.append(f"run of worker {i}: status {r.info.status}")
        if got != want:
            problems.append(f"run of worker {i}: {len(want - got)} value(s) missing, {len(got - want)} unexpected")
    found = {int(r.data.tags["worker"]) for r in runs}
    problems += [f"worker {i}: no run" for i in range(procs) if i not in found]
    return {"runs": len(runs), "problems": problems}


def load_test(uri: str, artifacts: str, procs: int = 16, metrics: int = 200, experiment: str = "load-test") -> dict:
    """Start ``procs`` worker processes at once, wait for all, read everything back."""
    from pretrain3d.tracking.mlflow_runs import setup

    setup(_tracking(uri, artifacts, experiment))  # the experiment exists before the jobs start, as in the pipeline
    test_id = uuid.uuid4().hex[:12]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("PRETRAIN3D_PARENT_RUN_ID", None)
    t0 = time.perf_counter()
    jobs = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), "--uri", uri, "--artifacts", artifacts,
                              "--experiment", experiment, "--test-id", test_id, "--metrics", str(metrics)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for i in range(procs)]
    results, failed = [], []
    for i, p in enumerate(jobs):
        out, err = p.communicate()
        if p.returncode != 0:
            failed.append({"worker": i, "returncode": p.returncode, "stderr": err.strip()[-600:]})
        else:
            results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - t0
    read = check(uri, experiment, test_id, procs, metrics)
    return {"uri": uri, "procs": procs, "metrics_per_proc": metrics, "wall_s": round(wall, 2),
            "writes_per_s": round(procs * metrics / wall, 1), "failed_jobs": failed,
            "retries": sum(r["retries"] for r in results),
            "job_seconds_max": round(max((r["seconds"] for r in results), default=0.0), 2),
            "runs_found": read["runs"], "lost_or_wrong": read["problems"],
            "ok": not failed and not read["problems"] and read["runs"] == procs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", help="tracking URI (sqlite:///... or http://...)")
    ap.add_argument("--server", metavar="DIR", help="start PostgreSQL + an MLflow server with their data in DIR")
    ap.add_argument("--artifacts", default=None, help="artifact root of a file store (default: beside the db)")
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--metrics", type=int, default=200)
    ap.add_argument("--experiment", default="load-test")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--test-id", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.uri, args.artifacts, args.experiment, args.test_id, args.worker, args.metrics)))
        return 0
    if args.server:
        from pretrain3d.tracking.server import mlflow_server, postgres

        with postgres(args.server) as db, mlflow_server(db, Path(args.server) / "artifacts") as url:
            result = load_test(url, str(Path(args.server) / "artifacts"), args.procs, args.metrics, args.experiment)
    else:
        if not args.uri:
            ap.error("--uri or --server")
        artifacts = args.artifacts or str(Path("mlartifacts-load").resolve())
        result = load_test(args.uri, artifacts, args.procs, args.metrics, args.experiment)
    print(f"{result['uri']}: {result['procs']} processes x {result['metrics_per_proc']} metrics in "
          f"{result['wall_s']} s ({result['writes_per_s']} writes/s), {len(result['failed_jobs'])} failed job(s), "
          f"{result['retries']} retried call(s), {len(result['lost_or_wrong'])} run(s) lost or wrong")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
