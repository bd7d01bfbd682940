"""scripts/gpu_check.sh / gpu_check.py without a GPU: the branches that can run here (issue 13, item 4).
The CUDA comparison itself runs where a GPU is lent (the note of the issue has its output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _sh(tmp_path: Path, path_prefix: str | None = None, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHON": sys.executable, **env}
    if path_prefix:
        e["PATH"] = f"{path_prefix}:{e['PATH']}"
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=e, cwd=tmp_path)


def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = _sh(tmp_path, PATH=f"{empty}:/usr/bin:/bin")
    assert r.returncode == 2 and "no NVIDIA GPU here" in r.stderr


def test_a_gpu_but_a_cpu_torch_names_the_interpreter(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-test)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    r = _sh(tmp_path, path_prefix=str(fake))
    assert r.returncode == 2 and "has no CUDA build of torch" in r.stderr and sys.executable in r.stderr


def test_the_driver_runs_every_comparison_on_the_cpu(tmp_path):
    # the same code path as on the GPU, both sides on the CPU: every method, the fine-tune, the backbone
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [row["method"] for row in result["rows"]] == ["ppkt", "ponderv2", "condense", "ppt", "finetune"]
    assert all(row["pass"] and row["diff"] == 0.0 for row in result["rows"])  # CPU vs CPU, same seed: equal
    assert result["backbone"]["params"] > 39e6 and "gpu_check: PASS" in r.stdout
