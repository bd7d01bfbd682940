#!/usr/bin/env bash
# PostgreSQL + MLflow tracking server for cluster runs (pretrain3d.tracking.server; README "Tracking server").
#   bash scripts/tracking_server.sh --data /srv/pretrain3d-tracking --host <internal address> --port 5000
# Installs Debian's postgresql with apt-get when absent (as root), keeps everything under --data,
# runs until Ctrl-C.
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_module.sh" pretrain3d.tracking.server "$@"
