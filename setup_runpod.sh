#!/usr/bin/env bash
# Install the pinned prime-rl on a fresh RunPod GPU box. Safe to re-run: finished steps are skipped.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$REPO_DIR/scripts/common.sh"

usage() {
  cat <<EOF
Usage: setup_runpod.sh [--prime-rl-dir DIR] [--commit SHA] [--help]

Installs prime-rl at a pinned commit and this checkout's calibrated-qa environment into its venv:
  1. uv $UV_PIN from PyPI (python3 -m pip), unless that version is already on PATH
  2. Python 3.12, provided by uv
  3. prime-rl cloned into DIR and checked out at the pinned commit (verified)
  4. uv sync --all-extras --locked --no-dev in DIR (skipped when already in sync)
  5. calibrated-qa installed into DIR/.venv with uv pip install (never uv sync), then verified
  6. this checkout's own venv for the analysis (uv sync --locked --no-dev --inexact; skipped
     when already in sync), so that the analysis after training cannot fail on a missing venv
Prints the versions it ends with. Re-running it does no step twice. Before installing, checks
that the file system of DIR has SETUP_NEED_GB (default 60) GB free: prime-rl's venv and uv's
cache (torch, vLLM: about 30 GB together, estimated) plus the model (5 GB).

Where it goes: \$CQA_ROOT if set, else the large volume \$CQA_VOLUME (default /workspace,
RunPod's) when it is mounted on another file system than \$HOME, else \$HOME. There go
prime-rl (ROOT/prime-rl), uv's cache and the Hugging Face hub cache (unless UV_CACHE_DIR,
HF_HOME or HF_HUB_CACHE are set); run_training.sh resolves the same ROOT for the outputs.

Options:
  --prime-rl-dir DIR   where prime-rl goes (default: \$PRIME_RL_DIR or ROOT/prime-rl)
  --commit SHA         prime-rl commit (default: \$PRIME_RL_COMMIT or the pin $PRIME_RL_PIN)
  -h, --help           this help
EOF
}

PRIME_RL_DIR=${PRIME_RL_DIR:-}
SETUP_NEED_GB=${SETUP_NEED_GB:-60}
COMMIT=${PRIME_RL_COMMIT:-$PRIME_RL_PIN}
while [[ $# -gt 0 ]]; do
  case $1 in
    --prime-rl-dir) PRIME_RL_DIR=${2:?--prime-rl-dir needs a value}; shift 2 ;;
    --commit) COMMIT=${2:?--commit needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

use_work_root
PRIME_RL_DIR=${PRIME_RL_DIR:-$WORK_ROOT/prime-rl}
say "Installing into $WORK_ROOT (prime-rl: $PRIME_RL_DIR)"
if ! (cd "$PRIME_RL_DIR" 2>/dev/null && [[ -x .venv/bin/python ]]); then
  FREE_GB=$(free_gb "$PRIME_RL_DIR") || exit 1
  ((FREE_GB >= SETUP_NEED_GB)) || die "only $FREE_GB GB free for $PRIME_RL_DIR, setup needs $SETUP_NEED_GB GB" \
    "mount a larger volume (CQA_VOLUME, default /workspace) or set CQA_ROOT / --prime-rl-dir"
  echo "disk: $FREE_GB GB free for $PRIME_RL_DIR"
fi

say "[1/6] uv $UV_PIN"
ensure_uv

say "[2/6] Python 3.12 (managed by uv)"
if uv python find 3.12 >/dev/null 2>&1; then
  echo "Python 3.12 already available: $(uv python find 3.12)"
else
  uv python install 3.12
fi

say "[3/6] prime-rl at $COMMIT in $PRIME_RL_DIR"
if [[ ! -d $PRIME_RL_DIR/.git ]]; then
  [[ ! -e $PRIME_RL_DIR ]] || die "$PRIME_RL_DIR exists but is not a git checkout; move it away"
  git clone "$PRIME_RL_URL" "$PRIME_RL_DIR"
fi
if [[ $(git -C "$PRIME_RL_DIR" rev-parse HEAD) != "$COMMIT"* ]]; then
  [[ -z $(git -C "$PRIME_RL_DIR" status --porcelain --untracked-files=no) ]] ||
    die "$PRIME_RL_DIR has local changes; commit or discard them before switching commits"
  git -C "$PRIME_RL_DIR" cat-file -e "$COMMIT^{commit}" 2>/dev/null ||
    git -C "$PRIME_RL_DIR" fetch origin "$COMMIT"
  git -C "$PRIME_RL_DIR" -c advice.detachedHead=false checkout --detach "$COMMIT"
fi
HEAD_SHA=$(git -C "$PRIME_RL_DIR" rev-parse HEAD)
[[ $HEAD_SHA == "$COMMIT"* ]] || die "prime-rl is at $HEAD_SHA after checkout, expected $COMMIT"
echo "prime-rl at $HEAD_SHA"

say "[4/6] prime-rl's locked environment"
SYNC=(uv sync --all-extras --locked --no-dev)
if [[ -z ${CUDA_HOME:-} && -d /usr/local/cuda ]]; then
  export CUDA_HOME=/usr/local/cuda # for packages built from source during the sync
fi
if (cd "$PRIME_RL_DIR" && "${SYNC[@]}" --inexact --check >/dev/null 2>&1); then
  echo "already in sync with uv.lock"
  SYNCED=0
else
  (cd "$PRIME_RL_DIR" && "${SYNC[@]}")
  SYNCED=1
fi

say "[5/6] calibrated-qa environment in prime-rl's venv"
if [[ $SYNCED == 0 ]] && check_environment "$PRIME_RL_DIR" "$REPO_DIR" >/dev/null 2>&1; then
  echo "calibrated-qa $(checkout_version "$REPO_DIR") already installed from this checkout"
else
  install_environment "$PRIME_RL_DIR" "$REPO_DIR"
fi
INSTALLED=$(check_environment "$PRIME_RL_DIR" "$REPO_DIR") ||
  die "calibrated-qa is not correctly installed in $PRIME_RL_DIR/.venv (see above)"

say "[6/6] the analysis venv of this checkout ($REPO_DIR/.venv)"
ensure_analysis_venv "$REPO_DIR" || die "could not build the analysis venv in $REPO_DIR/.venv" \
  "uv sync --project $REPO_DIR --locked --no-dev failed (see above): check uv.lock and the network"

say "Versions"
echo "uv:            $(uv --version)"
echo "python:        $("$PRIME_RL_DIR/.venv/bin/python" --version)"
echo "prime-rl:      $HEAD_SHA"
echo "calibrated-qa: $INSTALLED"
(cd "$PRIME_RL_DIR" && .venv/bin/python - <<'PY') || warn "could not import the training stack"
from importlib.metadata import version
for name in ("torch", "vllm", "transformers", "verifiers"):
    print(f"{name + ':':15}{version(name)}")
PY
say "Setup complete. Next: bash run_training.sh --smoke (about 10 minutes), then the full run"
