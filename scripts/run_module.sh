#!/usr/bin/env bash
# Run a pretrain3d module with the project's environment (made by scripts/bootstrap.sh when missing):
#   bash scripts/run_module.sh pretrain3d.tracking.server --help
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PRETRAIN3D_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    bash "$here/scripts/bootstrap.sh"
fi
module="$1"
shift
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "$venv/bin/python" -m "$module" "$@"
