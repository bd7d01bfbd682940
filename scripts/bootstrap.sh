#!/usr/bin/env bash
# Create .venv and install the pinned CPU environment + this package (editable).
# Re-running is cheap: it reinstalls only when the requirement files changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${PRETRAIN3D_VENV:-.venv}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "pretrain3d needs Python >= 3.10")'

stamp="$VENV/.pretrain3d-installed"
want=$(cat envs/requirements-cpu.txt envs/requirements-nodeps.txt envs/constraints-cpu.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/pretrain3d" ]; then
  exit 0
fi
echo "[bootstrap] installing the pinned environment into $VENV (first run: a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q -r envs/requirements-cpu.txt -c envs/constraints-cpu.txt 2>&1 \
  | grep -v '^WARNING: Location' >&2 || true
"$VENV/bin/python" -m pip install -q --no-deps -r envs/requirements-nodeps.txt 2>&1 | grep -v '^WARNING: Location' >&2 || true
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v '^WARNING: Location' >&2 || true
# open3d's wheel links the system library libusb-1.0 (absent from minimal Debian images).
if ! "$VENV/bin/python" -c 'import open3d' 2>/dev/null; then
  if "$VENV/bin/python" -c 'import open3d' 2>&1 | grep -q 'libusb-1.0'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[bootstrap] installing the system library libusb-1.0-0 that open3d needs" >&2
      (apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null; })
    else
      echo "[bootstrap] open3d needs the system library libusb-1.0 (Debian/Ubuntu: sudo apt-get install libusb-1.0-0)" >&2
      exit 1
    fi
  fi
fi
"$VENV/bin/python" -c 'import torch, spconv, open3d, snakemake, dvc, mlflow, onnx, tokenizers, safetensors, pretrain3d' \
  || { echo "[bootstrap] the environment is incomplete (see the pip output above)" >&2; exit 1; }
echo "$want" > "$stamp"
