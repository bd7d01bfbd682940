#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/bootstrap.sh), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
venv=${PRETRAIN3D_VENV:-.venv}  # the one scripts/bootstrap.sh made (relative: to the repository)
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
export PATH="$venv/bin:$PATH"
exec python -m pytest -q "$@"
