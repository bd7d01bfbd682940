#!/usr/bin/env bash
# The main job: the full embedded benchmark (generate → preprocess → pre-train → fine-tune × seeds →
# evaluate → report), then where the time went and the run's duration in machine-independent
# reference units. Extra arguments go to snakemake.
set -euo pipefail
cd "$(dirname "$0")/.."
t_install=$(date +%s)
bash scripts/bootstrap.sh
venv=${PRETRAIN3D_VENV:-.venv}  # the one scripts/bootstrap.sh made (relative: to the repository)
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
export PATH="$venv/bin:$PATH"
mkdir -p logs
# measured before the pipeline loads the machine; the budget figure divides by it
python scripts/reference_workload.py --json logs/reference_workload.json
start=$(date +%s)
snakemake --cores all --show-failed-logs "$@"
end=$(date +%s)
python scripts/stage_times.py --since "$start"
python scripts/profile_run.py --since "$start" || true  # absent for a dry run
python scripts/run_budget.py --install-start "$t_install" --start "$start" --end "$end" \
    --reference logs/reference_workload.json
echo "Report: results/<experiment.name>/report.md (default results/embedded-benchmark/)   MLflow UI: see README"
