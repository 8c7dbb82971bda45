# shellcheck shell=bash
# Shared by setup_runpod.sh, run_training.sh and scripts/eval_model.sh (sourced, not run).
# shellcheck disable=SC2034 # the pins below are used by the scripts that source this file

# The pinned stack (see docs/training.md). Override the commit with PRIME_RL_COMMIT=<sha>.
PRIME_RL_PIN=6cae5cca734d0063951efaf700ca9e4bc39c8677
PRIME_RL_URL=https://github.com/PrimeIntellect-ai/prime-rl.git
UV_PIN=0.13.9

say() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
# die MESSAGE...: every failed check ends here, with its own message and exit status 1.
die() {
  printf 'ERROR: %s\n' "$1" >&2
  shift
  local line
  for line in "$@"; do printf '       %s\n' "$line" >&2; done
  exit 1
}

# ensure_uv: uv $UV_PIN on PATH, installed from PyPI with pip if needed (never `curl | sh`).
ensure_uv() {
  if [[ $(uv --version 2>/dev/null | cut -d' ' -f2) == "$UV_PIN" ]]; then
    echo "uv $UV_PIN already installed: $(command -v uv)"
    return
  fi
  command -v python3 >/dev/null || die "python3 not found: it is needed once, to install uv from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_PIN" ||
    die "could not install uv $UV_PIN with pip" \
      "on an externally managed Python, retry with PIP_BREAK_SYSTEM_PACKAGES=1"
  hash -r
  [[ $(uv --version 2>/dev/null | cut -d' ' -f2) == "$UV_PIN" ]] ||
    die "uv $UV_PIN was installed but another uv comes first on PATH: $(command -v uv || echo none)"
}

# The version of calibrated-qa in this checkout (calibrated_qa/pyproject.toml).
checkout_version() {
  sed -n 's/^version *= *"\(.*\)"/\1/p' "$1/calibrated_qa/pyproject.toml" | head -n 1
}

# install_environment PRIME_RL_DIR REPO_DIR
# Installs this checkout's calibrated-qa into prime-rl's venv: non-editable, rebuilt from source
# every time (no stale build is reused), and without dependencies: prime-rl's lock already
# provides verifiers 0.1.12.dev1 and datasets, and resolving them again could "upgrade"
# verifiers past the classic API. Run it after every `uv sync` (which removes the package).
install_environment() {
  local prime_rl_dir=$1 repo_dir=$2
  say "Installing calibrated-qa $(checkout_version "$repo_dir") from $repo_dir/calibrated_qa into prime-rl's venv"
  uv pip install --python "$prime_rl_dir/.venv/bin/python" --no-deps \
    --reinstall-package calibrated-qa "$repo_dir/calibrated_qa"
}

# check_environment PRIME_RL_DIR REPO_DIR: importable from prime-rl's venv, at this checkout's
# version and content, nothing shadowing it, its requirements (verifiers, datasets) satisfied.
# Runs from prime-rl's folder, the working directory of the processes that import it in training.
check_environment() {
  local prime_rl_dir=$1 repo_dir=$2
  (cd "$prime_rl_dir" && .venv/bin/python "$repo_dir/scripts/launch_checks.py" installed \
    --source "$repo_dir/calibrated_qa")
}

# ensure_analysis_venv REPO_DIR: this checkout's own venv (REPO_DIR/.venv, from its uv.lock, no
# dev tools), in which run_training.sh runs the analysis after training. Built before any GPU
# time is spent, so a lock or network problem shows up in setup and preflight, not after ~2 h of
# training. Idempotent: a venv already in sync is only checked. Inexact, like `uv run`.
ANALYSIS_SYNC=(sync --locked --no-dev --inexact)
ensure_analysis_venv() {
  local repo_dir=$1
  if uv "${ANALYSIS_SYNC[@]}" --project "$repo_dir" --check >/dev/null 2>&1; then
    echo "analysis venv already in sync with $repo_dir/uv.lock"
    return 0
  fi
  say "Building the analysis venv from $repo_dir/uv.lock"
  uv "${ANALYSIS_SYNC[@]}" --project "$repo_dir"
}

# launch_check PRIME_RL_DIR REPO_DIR ARGS...: scripts/launch_checks.py with prime-rl's Python.
launch_check() {
  local prime_rl_dir=$1 repo_dir=$2
  shift 2
  "$prime_rl_dir/.venv/bin/python" "$repo_dir/scripts/launch_checks.py" "$@"
}

# read_token_file FILE: exports HF_TOKEN from FILE for child processes; never printed.
read_token_file() {
  [[ -r $1 ]] || die "Hugging Face token file not readable: $1"
  HF_TOKEN=$(tr -d '[:space:]' <"$1")
  [[ -n $HF_TOKEN ]] || die "Hugging Face token file is empty: $1"
  export HF_TOKEN
}

# has_hf_token: HF_TOKEN set, or a token saved by `hf auth login` / `huggingface-cli login`.
has_hf_token() {
  [[ -n ${HF_TOKEN:-} ]] || [[ -s ${HF_TOKEN_PATH:-${HF_HOME:-$HOME/.cache/huggingface}/token} ]]
}

# gpu_table: "index, memory.used MiB" of each GPU visible to this process (CUDA_VISIBLE_DEVICES).
gpu_table() {
  local rows
  rows=$(nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits) || return 1
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    local id
    for id in ${CUDA_VISIBLE_DEVICES//,/ }; do
      grep -E "^ *${id} *," <<<"$rows" || true
    done
  else
    printf '%s\n' "$rows"
  fi
}

# free_gb PATH: GB (10^9 bytes) free on the file system of PATH, or of its nearest existing
# parent when PATH is yet to be created (an output dir, prime-rl's folder before setup).
free_gb() {
  local path=$1 kb
  while [[ ! -e $path ]]; do path=$(dirname "$path"); done
  kb=$(df -Pk "$path" | awk 'NR == 2 {print $4}')
  [[ $kb =~ ^[0-9]+$ ]] || die "could not read free disk space of $path from df"
  echo $((kb * 1024 / 1000000000))
}

# mount_of PATH: the mount point of the file system holding PATH (df's last column).
mount_of() {
  df -Pk "$1" 2>/dev/null | awk 'NR == 2 {print $NF}'
}

# use_work_root: sets WORK_ROOT, where prime-rl, the Hugging Face cache and run outputs go.
# $CQA_ROOT if set; else the large volume $CQA_VOLUME (default /workspace, RunPod's) when it is
# a folder on another file system than $HOME (the container disk is small and lost on restart);
# else $HOME. On that volume, the Hugging Face hub cache and uv's cache go there too, unless
# HF_HOME / HF_HUB_CACHE / UV_CACHE_DIR are set (the token stays where `hf auth login` put it).
use_work_root() {
  local volume=${CQA_VOLUME:-/workspace}
  if [[ -n ${CQA_ROOT:-} ]]; then
    WORK_ROOT=$CQA_ROOT
  elif [[ -d $volume && $(mount_of "$volume") != "$(mount_of "$HOME")" ]]; then
    WORK_ROOT=$volume
  else
    WORK_ROOT=$HOME
  fi
  if [[ $WORK_ROOT != "$HOME" ]]; then
    [[ -n ${HF_HOME:-} || -n ${HF_HUB_CACHE:-} ]] || export HF_HUB_CACHE=$WORK_ROOT/.cache/huggingface/hub
    [[ -n ${UV_CACHE_DIR:-} ]] || export UV_CACHE_DIR=$WORK_ROOT/.cache/uv
  fi
  export WORK_ROOT
}
