#!/usr/bin/env bash
# The main job, one command on any machine:
#   with 2 or more NVIDIA GPUs: the reference training run (run_training.sh: checks, prime-rl,
#   then the analysis into results/<run-name>/);
#   without: the CPU dry run of the whole pipeline on a tiny local model, driven as prime-rl drives
#   the environment (dry_run.py, configs/dry_run.toml; outputs in the untracked results/dry-run/).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$REPO_DIR/scripts/common.sh"

usage() {
  cat <<EOF
Usage: run.sh [--gpu | --cpu] [--help] [-- ARGS...]

Runs the main job: training on a box with 2 or more NVIDIA GPUs, the CPU dry run elsewhere.
  --gpu     train even if fewer than 2 GPUs are detected (run_training.sh then explains why not)
  --cpu     the CPU dry run, even on a GPU box
  -- ARGS   passed on unchanged: to run_training.sh (see ./run_training.sh --help)
            or to dry_run.py (see: uv run --all-extras python dry_run.py --help)
Installs uv $UV_PIN from PyPI with pip when uv is missing.
EOF
}

MODE=auto
while [[ $# -gt 0 ]]; do
  case $1 in
    --gpu) MODE=gpu; shift ;;
    --cpu) MODE=cpu; shift ;;
    --) shift; break ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

# gpu_count: NVIDIA GPUs this process can see (0 without a driver).
gpu_count() {
  command -v nvidia-smi >/dev/null || { echo 0; return; }
  local rows
  rows=$(gpu_table 2>/dev/null) || { echo 0; return; }
  grep -c . <<<"$rows" || true
}

if [[ $MODE == auto ]]; then
  gpus=$(gpu_count)
  if (( gpus >= 2 )); then
    MODE=gpu
    say "Detected $gpus NVIDIA GPUs: running the training run"
  else
    MODE=cpu
    say "Detected $gpus NVIDIA GPU(s), training needs 2: running the CPU dry run"
  fi
fi

if [[ $MODE == gpu ]]; then
  exec "$REPO_DIR/run_training.sh" "$@"
fi

# Any uv works for the dry run; install the pinned one only when there is none.
command -v uv >/dev/null || ensure_uv
cd "$REPO_DIR"
exec uv run --all-extras python dry_run.py "$@"
