#!/usr/bin/env bash
# The main job: the full embedded benchmark (generate → preprocess → fine-tune × seeds →
# evaluate → report), then the wall time of every stage. Extra arguments go to snakemake.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
venv=${PRETRAIN3D_VENV:-.venv}  # the one scripts/bootstrap.sh made (relative: to the repository)
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
export PATH="$venv/bin:$PATH"
start=$(date +%s)
snakemake --cores all --show-failed-logs "$@"
python scripts/stage_times.py --since "$start"
echo "elapsed: $(( $(date +%s) - start )) s"
echo "Report: results/<experiment.name>/report.md (default results/embedded-benchmark/)   MLflow UI: see README"
