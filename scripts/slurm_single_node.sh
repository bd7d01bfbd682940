#!/usr/bin/env bash
# A single-node SLURM on this machine (pretrain3d.workflow.slurm_node): try profiles/slurm before a cluster.
#   sudo bash scripts/slurm_single_node.sh --dir /tmp/slurm      # then, in another shell:
#   export SLURM_CONF=/tmp/slurm/slurm.conf; snakemake --workflow-profile profiles/slurm
# Installs slurmctld, slurmd, slurm-client and munge with apt-get when absent; Ctrl-C stops it.
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_module.sh" pretrain3d.workflow.slurm_node "$@"
