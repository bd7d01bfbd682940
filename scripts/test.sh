#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/bootstrap.sh), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -q "$@"
