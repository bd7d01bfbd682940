"""Job profiles (src/pretrain3d/profiling.py), the profile table (scripts/profile_run.py), the reference
workload and the run budget line (scripts/reference_workload.py, scripts/run_budget.py)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def prof(monkeypatch, tmp_path):
    """A fresh profiling module (its state is per process) writing into tmp_path."""
    import builtins

    import pretrain3d.profiling as p

    original = builtins.__import__
    p = importlib.reload(p)
    monkeypatch.setenv(p.ENV, str(tmp_path / "profile"))
    yield p
    builtins.__import__ = original


def test_phases_are_exclusive_and_sum_to_the_total(prof):
    prof.start()
    with prof.phase("data"):
        time.sleep(0.05)
        with prof.phase("tracking"):
            time.sleep(0.05)
        time.sleep(0.02)
    with prof.phase("checkpoint"):
        import json as _  # noqa: F401  (cached: not an import cost worth counting, must not break)
        time.sleep(0.03)
    snap = prof.snapshot()
    ph = snap["phases"]
    assert 0.065 <= ph["data"] < 0.2 and 0.045 <= ph["tracking"] < 0.2 and 0.025 <= ph["checkpoint"] < 0.2
    assert abs(sum(ph.values()) - snap["total"]) < 0.01  # nothing counted twice, nothing lost


def test_an_import_inside_a_phase_counts_as_imports(prof, tmp_path, monkeypatch):
    mod = tmp_path / "slow_module_for_profiling.py"
    mod.write_text("import time\ntime.sleep(0.1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prof.start()
    with prof.phase("tracking"):
        import slow_module_for_profiling  # noqa: F401
    ph = prof.snapshot()["phases"]
    assert ph["imports"] >= 0.09 and ph["tracking"] < 0.05


def test_step_split_and_written_record(prof, tmp_path):
    prof.start()
    prof.add_step(0.1, 0.2, 0.3, 0.05)
    prof.add_step(0.1, 0.2, 0.3, 0.05)
    path = prof.write("finetune", "scratch-la-seed0", 0)
    rec = json.loads(path.read_text())
    assert path.name == "finetune-scratch-la-seed0.json"
    assert rec["steps"] == {"steps": 2, "data": 0.2, "forward": 0.4, "backward": 0.6, "optimizer": 0.1}
    assert rec["status"] == 0 and rec["phases"]["startup"] >= 0


def test_nothing_is_wrapped_or_written_without_the_environment_variable(prof, monkeypatch):
    import builtins

    monkeypatch.delenv(prof.ENV)
    before = builtins.__import__
    prof.start()
    assert builtins.__import__ is before and not prof.active()
    assert prof.write("finetune", "x", 0) is None


def test_the_cli_writes_a_profile_per_job(tmp_path):
    env = {"PRETRAIN3D_PROFILE_DIR": str(tmp_path / "p"), "PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "pretrain3d.cli", "validate-config", "--quiet",
                        "--config", str(REPO / "params.yaml")], env=env, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    (rec_path,) = (tmp_path / "p").glob("validate-config*.json")
    rec = json.loads(rec_path.read_text())
    assert rec["command"] == "validate-config" and rec["status"] == 0 and rec["total"] > 0


def test_profile_table_sums_jobs_and_steps(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import profile_run
    finally:
        sys.path.pop(0)
    folder = tmp_path / "logs" / "exp" / "profile"
    folder.mkdir(parents=True)
    for i, phases in enumerate([{"startup": 1.0, "imports": 2.0, "compute": 10.0},
                                {"startup": 1.0, "imports": 2.0, "tracking": 1.0, "compute": 20.0}]):
        (folder / f"finetune-{i}.json").write_text(json.dumps({
            "command": "finetune", "phases": phases, "total": sum(phases.values()),
            "steps": {"steps": 10, "data": 1.0, "forward": 2.0, "backward": 3.0, "optimizer": 0.5}}))
    bench = tmp_path / "benchmarks" / "exp" / "finetune"
    bench.mkdir(parents=True)
    (bench / "a.tsv").write_text("s\th:m:s\n40.0\t0:00:40\n")
    assert profile_run.main(["--root", str(tmp_path), "--experiment", "exp", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    row = summary["commands"]["finetune"]
    assert row["jobs"] == 2 and row["imports"] == 4.0 and row["total"] == 37.0
    assert row["steps"]["steps"] == 20 and summary["benchmark_wall_total"] == 40.0
    # 20 steps: data 100 ms, forward 200, backward 300, optimiser 50 per step
    assert "finetune" in out and "100" in out and "300" in out and "outside the jobs' own clocks" in out
    assert profile_run.main(["--root", str(tmp_path / "empty")]) == 1


def test_reference_workload_and_budget_line(tmp_path):
    ref = tmp_path / "ref.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts/reference_workload.py"), "--repeat", "1",
                        "--json", str(ref)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(ref.read_text())
    assert data["version"] == 2 and data["seconds"] > 0 and set(data["parts"]) == {
        "gemm", "gather_scatter", "sort", "small_ops"}
    ref.write_text(json.dumps({"version": 1, "seconds": 2.0, "parts": {}}))
    line = subprocess.run([sys.executable, str(REPO / "scripts/run_budget.py"), "--install-start", "0",
                           "--start", "120", "--end", "920", "--reference", str(ref)],
                          capture_output=True, text=True).stdout
    assert "install 120 s + pipeline 800 s = 920 s (OVER the 15-minute budget)" in line
    assert "pipeline = 400 reference units" in line
    # the early method-comparison report: timed by its modification time, older files ignored
    early, old = tmp_path / "a" / "benchmark" / "report.md", tmp_path / "b" / "benchmark" / "report.md"
    for f, t in ((early, 700), (old, 100)):
        f.parent.mkdir(parents=True)
        f.write_text("x")
        os.utime(f, (t, t))
    out = subprocess.run([sys.executable, str(REPO / "scripts/run_budget.py"), "--install-start", "0",
                          "--start", "120", "--end", "920", "--reference", str(ref),
                          "--milestone", str(tmp_path / "*" / "benchmark" / "report.md")],
                         capture_output=True, text=True).stdout
    assert f"method comparison {early}: written 580 s into the pipeline, 700 s with the install " \
           "(within the 15-minute budget); 290 reference units" in out
    assert str(old) not in out
