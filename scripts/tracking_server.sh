#!/usr/bin/env bash
# PostgreSQL + MLflow tracking server for cluster runs (pretrain3d.tracking.server; README "Tracking server").
#   bash scripts/tracking_server.sh --data /srv/pretrain3d-tracking --host 0.0.0.0 --port 5000
# Installs Debian's postgresql with apt-get when absent (as root), keeps everything under --data,
# runs until Ctrl-C. Uses the project's environment (scripts/bootstrap.sh makes it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PRETRAIN3D_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    bash "$here/scripts/bootstrap.sh"
fi
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "$venv/bin/python" -m pretrain3d.tracking.server "$@"
