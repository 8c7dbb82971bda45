#!/usr/bin/env bash
# Check everything that can fail cheaply, then train with prime-rl, then analyse the run.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$REPO_DIR/scripts/common.sh"

usage() {
  cat <<EOF
Usage: run_training.sh [--config FILE] [--output-dir DIR] [--run-name NAME] [--resume]
                       [--dry-run] [--wandb offline|online] [--hf-token-file FILE]
                       [--prime-rl-dir DIR] [--min-free-gb N] [--help]

Installs this checkout's environment into prime-rl's venv, checks (in this order, each failure
with its own message): prime-rl at the pinned commit, enough idle GPUs, free disk, a Hugging
Face token that can read the (gated) model, W&B credentials when online, the output directory
(fresh run vs --resume), the environment installed from this checkout at its version with
nothing shadowing it, the analysis venv of this checkout (built if needed), the config
consistent with the environment, prime-rl's own --dry-run.
Then runs
  uv run rl @ CONFIG --output-dir DIR --wandb.offline true|false
     [--ckpt.resume-step -1 --orchestrator.eval.skip-eval-on-resume false]   (with --resume)
in the prime-rl folder, and finally analyze_calibration.py into results/NAME/ (training log)
and results/NAME/eval/ (online eval: base model @0 vs the round after the last step @final).

Options:
  --config FILE        prime-rl config (default: configs/calibrated_qa_gemma2_2b.toml)
  --output-dir DIR     run outputs: logs/, weights/step_N, checkpoints/step_N and the
                       generation logs (default: \$HOME/outputs/NAME)
  --run-name NAME      names results/NAME/ and the default output dir (default: config name)
  --resume             continue from the latest checkpoint in --output-dir; the interrupted
                       run's logs/ becomes logs.partK/, and the records of its steps (and eval
                       rounds) before the checkpoint generations.partK.jsonl
                       (eval_generations.partK.jsonl); the rest goes to *.partK.redone.jsonl
  --dry-run            run every check (installs the environment), then stop before training
  --wandb MODE         offline (default; no account needed) or online (needs WANDB_API_KEY
                       in the environment or a \`wandb login\`)
  --hf-token-file FILE read the Hugging Face token from FILE (default: HF_TOKEN from the
                       environment, else the token saved by \`hf auth login\`)
  --prime-rl-dir DIR   prime-rl checkout (default: \$PRIME_RL_DIR or \$HOME/prime-rl)
  --min-free-gb N      free disk required at the output dir (default: 80)
  -h, --help           this help

Environment: PRIME_RL_COMMIT overrides the pinned commit ($PRIME_RL_PIN).
Secrets are passed to prime-rl only through the environment; they are never printed or written.
EOF
}

CONFIG=$REPO_DIR/configs/calibrated_qa_gemma2_2b.toml
OUTPUT_DIR=
RUN_NAME=
RESUME=0
DRY_RUN=0
WANDB_MODE_ARG=offline
TOKEN_FILE=
PRIME_RL_DIR=${PRIME_RL_DIR:-$HOME/prime-rl}
MIN_FREE_GB=80
COMMIT=${PRIME_RL_COMMIT:-$PRIME_RL_PIN}
IDLE_MIB=1024 # a GPU using more memory than this is busy

while [[ $# -gt 0 ]]; do
  case $1 in
    --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
    --output-dir) OUTPUT_DIR=${2:?--output-dir needs a value}; shift 2 ;;
    --run-name) RUN_NAME=${2:?--run-name needs a value}; shift 2 ;;
    --resume) RESUME=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --wandb) WANDB_MODE_ARG=${2:?--wandb needs offline or online}; shift 2 ;;
    --hf-token-file) TOKEN_FILE=${2:?--hf-token-file needs a value}; shift 2 ;;
    --prime-rl-dir) PRIME_RL_DIR=${2:?--prime-rl-dir needs a value}; shift 2 ;;
    --min-free-gb) MIN_FREE_GB=${2:?--min-free-gb needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $WANDB_MODE_ARG == offline || $WANDB_MODE_ARG == online ]] ||
  die "--wandb must be offline or online, not $WANDB_MODE_ARG"
[[ $MIN_FREE_GB =~ ^[0-9]+$ ]] || die "--min-free-gb must be a whole number of GB"

[[ -f $CONFIG ]] || die "config not found: $CONFIG"
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
RUN_NAME=${RUN_NAME:-$(basename "$CONFIG" .toml)}
OUTPUT_DIR=${OUTPUT_DIR:-$HOME/outputs/$RUN_NAME}
[[ $OUTPUT_DIR == /* ]] || OUTPUT_DIR=$PWD/$OUTPUT_DIR
RESULTS_DIR=$REPO_DIR/results/$RUN_NAME

say "Preflight: $CONFIG -> $OUTPUT_DIR"

# prime-rl: present, at the pin, synced. The rest of the checks use its Python.
[[ -d $PRIME_RL_DIR/.git ]] || die "prime-rl not found at $PRIME_RL_DIR" \
  "run: bash setup_runpod.sh (or pass --prime-rl-dir)"
HEAD_SHA=$(git -C "$PRIME_RL_DIR" rev-parse HEAD)
[[ $HEAD_SHA == "$COMMIT"* ]] || die "prime-rl at $PRIME_RL_DIR is at $HEAD_SHA, not the pinned $COMMIT" \
  "run: bash setup_runpod.sh (it checks out the pin; PRIME_RL_COMMIT overrides it)"
[[ -x $PRIME_RL_DIR/.venv/bin/python ]] || die "prime-rl's venv is missing ($PRIME_RL_DIR/.venv)" \
  "run: bash setup_runpod.sh"
command -v uv >/dev/null || die "uv not found on PATH" "run: bash setup_runpod.sh"
echo "prime-rl $HEAD_SHA, $(uv --version)"

# GPUs: prime-rl takes the first N visible GPUs (N from [deployment]); they must be idle.
NEED_GPUS=$(launch_check "$PRIME_RL_DIR" "$REPO_DIR" get "$CONFIG" required_gpus) ||
  die "could not read [deployment] from $CONFIG"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this machine has no NVIDIA GPU driver" \
  "training needs $NEED_GPUS GPUs (GPU 0: vLLM inference, the others: the trainer)"
GPUS=$(gpu_table) || die "nvidia-smi failed: the GPU driver is not working"
HAVE_GPUS=$(grep -c . <<<"$GPUS" || true)
((HAVE_GPUS >= NEED_GPUS)) || die "$CONFIG needs $NEED_GPUS GPUs, this machine shows $HAVE_GPUS" \
  "use a box with $NEED_GPUS GPUs, or a config whose [deployment] fits"
BUSY=$(head -n "$NEED_GPUS" <<<"$GPUS" | awk -F', *' -v max="$IDLE_MIB" '$2 + 0 > max {printf "GPU %s (%s MiB used) ", $1, $2}')
[[ -z $BUSY ]] || die "the first $NEED_GPUS GPUs must be idle; busy: $BUSY" \
  "stop the processes using them (nvidia-smi shows them), e.g. a previous run's vLLM"
echo "GPUs: $NEED_GPUS needed, $HAVE_GPUS visible, the first $NEED_GPUS idle"

# Disk: checkpoints (~31 GB each, two at a time while saving), weights, logs.
DISK_PATH=$OUTPUT_DIR
while [[ ! -e $DISK_PATH ]]; do DISK_PATH=$(dirname "$DISK_PATH"); done
FREE_KB=$(df -Pk "$DISK_PATH" | awk 'NR == 2 {print $4}')
[[ $FREE_KB =~ ^[0-9]+$ ]] || die "could not read free disk space of $DISK_PATH from df"
FREE_GB=$((FREE_KB / 1024 / 1024))
((FREE_GB >= MIN_FREE_GB)) || die "only $FREE_GB GB free at $DISK_PATH, need $MIN_FREE_GB GB" \
  "free space, or put --output-dir on a larger volume (e.g. /workspace on RunPod)"
echo "disk: $FREE_GB GB free at $DISK_PATH"

# Hugging Face token: from the file, the environment or a saved login; never printed.
[[ -z $TOKEN_FILE ]] || read_token_file "$TOKEN_FILE"
has_hf_token || die "no Hugging Face token: the model is gated" \
  "export HF_TOKEN=..., or pass --hf-token-file FILE, or run: hf auth login"
MODEL=$(launch_check "$PRIME_RL_DIR" "$REPO_DIR" get "$CONFIG" model) || die "no [model] name in $CONFIG"
launch_check "$PRIME_RL_DIR" "$REPO_DIR" hf-access "$MODEL" ||
  die "the Hugging Face token cannot read $MODEL (reason above)"

# W&B: offline needs nothing; online needs a key, passed on through the environment only.
if [[ $WANDB_MODE_ARG == online ]]; then
  [[ -n ${WANDB_API_KEY:-} ]] || grep -qs 'api.wandb.ai' "$HOME/.netrc" ||
    die "--wandb online needs WANDB_API_KEY in the environment or a \`wandb login\`" \
      "or use --wandb offline and \`wandb sync\` the run later"
fi

# Output directory: a fresh run must not overwrite checkpoints; --resume needs one.
LATEST_CKPT=
if [[ -d $OUTPUT_DIR/checkpoints ]]; then
  LATEST_CKPT=$(find "$OUTPUT_DIR/checkpoints" -maxdepth 1 -name 'step_*' | sort -V | tail -n 1)
fi
if ((RESUME)); then
  [[ -n $LATEST_CKPT ]] || die "--resume: no checkpoint in $OUTPUT_DIR/checkpoints" \
    "checkpoints are written every [ckpt] interval steps; start a fresh run instead"
  RESUME_STEP=${LATEST_CKPT##*step_}
  echo "resuming from checkpoint step $RESUME_STEP"
else
  [[ -z $LATEST_CKPT ]] || die "$OUTPUT_DIR already holds checkpoints of an earlier run" \
    "continue it with --resume, or choose another --output-dir"
fi

# The environment: installed from this checkout (after every sync), verified in prime-rl's venv.
install_environment "$PRIME_RL_DIR" "$REPO_DIR" || die "could not install calibrated-qa into $PRIME_RL_DIR/.venv"
check_environment "$PRIME_RL_DIR" "$REPO_DIR" ||
  die "calibrated-qa in prime-rl's venv is not this checkout's (see above)"

# The analysis venv of this checkout: the analysis runs there after training.
ensure_analysis_venv "$REPO_DIR" || die "could not build the analysis venv in $REPO_DIR/.venv" \
  "the analysis after training needs it: fix the error above (uv.lock, network), or rerun setup_runpod.sh"

# The config: consistent with the environment, then valid for prime-rl (its own --dry-run).
launch_check "$PRIME_RL_DIR" "$REPO_DIR" config "$CONFIG" ||
  die "$CONFIG does not match the environment (see above)"
RL_ARGS=(@ "$CONFIG" --output-dir "$OUTPUT_DIR")
if [[ $WANDB_MODE_ARG == offline ]]; then
  RL_ARGS+=(--wandb.offline true)
else
  RL_ARGS+=(--wandb.offline false)
fi
if ((RESUME)); then
  RL_ARGS+=(--ckpt.resume-step -1)
  # prime-rl skips the online eval at the resumed step by default; the eval log of the
  # interrupted run keeps only the rounds before that step (below), so run it again.
  HAS_EVAL=$(launch_check "$PRIME_RL_DIR" "$REPO_DIR" get "$CONFIG" has_eval)
  [[ $HAS_EVAL == false ]] || RL_ARGS+=(--orchestrator.eval.skip-eval-on-resume false)
fi
export CALIBRATED_QA_LOG_DIR=$OUTPUT_DIR # the env servers inherit it: generation logs go here
export UV_NO_SYNC=1 # `uv run` (also inside prime-rl) must not re-sync away the environment
(cd "$PRIME_RL_DIR" && uv run rl "${RL_ARGS[@]}" --dry-run) ||
  die "prime-rl rejected the config: its --dry-run failed (see above)"

if ((DRY_RUN)); then
  say "All checks passed. Dry run: stopping before training."
  echo "Train with the same arguments without --dry-run."
  exit 0
fi

# Resuming redoes the steps after the checkpoint, and prime-rl reopens logs/*.stdout with mode
# "w". Keep what the interrupted run wrote for the steps before the checkpoint as parts (logs/ ->
# logs.partK/, generations.partK.jsonl, eval_generations.partK.jsonl), set the records of redone
# steps and eval rounds aside (*.partK.redone.jsonl); the analysis reads the parts in order.
if ((RESUME)); then
  launch_check "$PRIME_RL_DIR" "$REPO_DIR" resume-split "$CONFIG" "$OUTPUT_DIR" "$RESUME_STEP" ||
    die "could not set aside the logs of the interrupted run in $OUTPUT_DIR (see above)"
fi

say "Training (GPU 0: vLLM; the trainer: the next GPUs). Reward per step:"
echo "  grep -a 'Step [0-9]* |' $OUTPUT_DIR/logs/orchestrator.stdout"
(cd "$PRIME_RL_DIR" && uv run rl "${RL_ARGS[@]}") || die "training failed" \
  "logs: $OUTPUT_DIR/logs/{orchestrator,trainer,inference}.stdout" \
  "continue from the latest checkpoint with: bash run_training.sh --config $CONFIG --output-dir $OUTPUT_DIR --resume"

say "Analysis -> $RESULTS_DIR"
unset UV_NO_SYNC
ANALYZE=(uv run --project "$REPO_DIR" --locked --no-dev python "$REPO_DIR/analyze_calibration.py")
STATUS=0
# parts_in_order DIR PATTERN: the kept parts of a resumed run, in order (none for a fresh run).
parts_in_order() {
  find "$1" -maxdepth 1 -name "$2" ! -name '*.redone.jsonl' | sort -V
}
mapfile -t LOGS < <(parts_in_order "$OUTPUT_DIR" 'generations.part*.jsonl')
# --orchestrator-log takes one file: after a resume, the logs of all parts in order (a redone
# step's line comes later and wins).
ORCH_LOG=$OUTPUT_DIR/logs/orchestrator.stdout
mapfile -t ORCH_PARTS < <(find "$OUTPUT_DIR" -maxdepth 2 -path "$OUTPUT_DIR/logs.part*/orchestrator.stdout" | sort -V)
if ((${#ORCH_PARTS[@]})); then
  [[ ! -f $ORCH_LOG ]] || ORCH_PARTS+=("$ORCH_LOG")
  ORCH_LOG=$OUTPUT_DIR/orchestrator.combined.stdout
  cat "${ORCH_PARTS[@]}" >"$ORCH_LOG"
fi
"${ANALYZE[@]}" --generations "${LOGS[@]}" "$OUTPUT_DIR/generations.jsonl" --config "$CONFIG" \
  --orchestrator-log "$ORCH_LOG" --out "$RESULTS_DIR" || STATUS=$?
# Eval rounds are labelled by the checkpoint they evaluate; @final is the round after the loop.
EVAL_LOG=$OUTPUT_DIR/eval_generations.jsonl
mapfile -t EVAL_PARTS < <(parts_in_order "$OUTPUT_DIR" 'eval_generations.part*.jsonl')
if ((${#EVAL_PARTS[@]})) && [[ -s $EVAL_LOG ]]; then
  EVAL_LOG=$OUTPUT_DIR/eval_generations.combined.jsonl
  cat "${EVAL_PARTS[@]}" "$OUTPUT_DIR/eval_generations.jsonl" >"$EVAL_LOG"
fi
if [[ -s $EVAL_LOG ]]; then
  "${ANALYZE[@]}" --split eval --config "$CONFIG" \
    --compare "base=$EVAL_LOG@0" "trained=$EVAL_LOG@final" --out "$RESULTS_DIR/eval" || STATUS=$?
fi
((STATUS == 0)) || die "training finished, but the analysis failed (see above)" \
  "the run's outputs are complete in $OUTPUT_DIR; rerun the analysis commands of docs/training.md"
say "Done. Outputs: $OUTPUT_DIR  Results: $RESULTS_DIR"
