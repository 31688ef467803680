#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try workflow/profiles/slurm before a real cluster: munge, MariaDB,
# slurmdbd, slurmctld and slurmd from Debian's packages (scripts/install-system-packages.sh installs them), all in
# one private folder with free ports and its own munge key; partitions `cpu` and `gpu` as the profile names them,
# no GPUs, this machine's CPUs and memory, the account `medti`. Needs root (the daemons run as root).
# tests/test_slurm_cluster.py starts the same cluster with the same code (tests/slurm_support.py).
#
#   scripts/local-slurm-cluster.sh start [DIR]          # default DIR: /tmp/medti-slurm
#   eval "$(scripts/local-slurm-cluster.sh env [DIR])"  # SLURM_CONF and PATH for sinfo, sbatch, squeue, sacct
#   snakemake --profile workflow/profiles/slurm $(scripts/local-slurm-cluster.sh profile-args)
#   scripts/local-slurm-cluster.sh stop [DIR]           # cancels its jobs, stops its daemons (rm -r DIR after)
#
# profile-args restates the profile's resources for a node without GPUs (no GPU, memory that fits, the account
# `medti`): Snakemake's command line replaces a profile's resources whole, so they are all given again.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
action="${1:-}"
python="${MEDTI_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
case "$action" in
  start|stop|env)
    dir="${2:-/tmp/medti-slurm}"
    mkdir -p "$dir"
    exec "$python" "$root/tests/slurm_support.py" "$action" "$dir" ;;
  profile-args)
    exec "$python" "$root/tests/slurm_support.py" profile-args "${2:-$root/workflow/profiles/slurm/config.yaml}" ;;
  *)
    echo "usage: $0 start|stop|env [DIR] | profile-args [PROFILE_CONFIG]" >&2
    exit 2 ;;
esac
