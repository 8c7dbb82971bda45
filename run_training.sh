#!/usr/bin/env bash
# Check everything that can fail cheaply, then train with prime-rl, then analyse the run.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$REPO_DIR/scripts/common.sh"

usage() {
  cat <<EOF
Usage: run_training.sh [--config FILE] [--output-dir DIR] [--run-name NAME] [--smoke]
                       [--resume | --move-aside] [--dry-run] [--wandb offline|online]
                       [--hf-token-file FILE] [--prime-rl-dir DIR] [--min-free-gb N] [--help]

Checks, in this order, each failure with its own message and before any GPU work: prime-rl at
the pinned commit; this checkout's environment installed in prime-rl's venv (nothing
shadowing it); the config consistent with the environment; enough idle GPUs, and CUDA visible
to prime-rl's torch; the inference port free; a Hugging Face token that can read the (gated)
model; the model and BoolQ downloaded into the Hugging Face cache; the disk the run needs
(computed from the config and the model: docs/training.md, "Disk"); W&B accepting the key when
online; the output directory (a fresh run refuses an earlier run's state; --resume finds the
step both trainer and orchestrator can resume from); the analysis venv; prime-rl's --dry-run.
Then runs, in the prime-rl folder,
  uv run rl @ CONFIG --output-dir DIR --wandb.offline true|false
     [--ckpt.resume-step STEP --orchestrator.eval.skip-eval-on-resume false]   (with --resume)
beside a process that deletes weight broadcasts no resume can need, and finally
analyze_calibration.py into results/NAME/ (training log) and results/NAME/eval/ (online eval:
base model @0 vs the round after the last step @final).

Options:
  --config FILE        prime-rl config (default: configs/calibrated_qa_gemma2_2b.toml)
  --output-dir DIR     run outputs (default: ROOT/outputs/NAME; ROOT below)
  --run-name NAME      names results/NAME/ and the default output dir (default: config name)
  --smoke              the smoke run: configs/smoke.toml (4 steps of 64 rollouts, a checkpoint,
                       online and final eval) as run smoke-<UTC time>, then a report of per-step
                       times, measured sizes and one PASS/FAIL line per check. Run it first on
                       a new box (docs/training.md, "Smoke run")
  --resume             continue the run in the output dir from the newest step that both the
                       trainer and the orchestrator checkpointed; what is newer (checkpoints,
                       broadcasts, rollouts, log records of redone steps) moves to
                       DIR/aside/<time>-resume-at-STEP/; logs/ becomes logs.partK/ and the
                       records kept generations.partK.jsonl (eval_generations.partK.jsonl)
  --move-aside         start fresh in an output dir that holds an earlier run: move its state
                       into DIR/aside/<time>-earlier-run/ first (nothing is deleted)
  --dry-run            run every check (installs the environment, downloads the model), then
                       stop before training
  --wandb MODE         offline (default; no account needed) or online (needs WANDB_API_KEY
                       in the environment or a \`wandb login\`; the key is checked with W&B)
  --hf-token-file FILE read the Hugging Face token from FILE (default: HF_TOKEN from the
                       environment, else the token saved by \`hf auth login\`)
  --prime-rl-dir DIR   prime-rl checkout (default: \$PRIME_RL_DIR or ROOT/prime-rl)
  --min-free-gb N      override the computed disk need (GB free required at the output dir)
  -h, --help           this help

ROOT: \$CQA_ROOT if set, else \$CQA_VOLUME (default /workspace, RunPod's volume) when it is
mounted on another file system than \$HOME, else \$HOME. With ROOT on such a volume and
HF_HOME/HF_HUB_CACHE unset, the Hugging Face cache is ROOT/.cache/huggingface/hub.
Environment: PRIME_RL_COMMIT overrides the pinned commit ($PRIME_RL_PIN).
Secrets are passed to prime-rl only through the environment; they are never printed or written.
EOF
}

CONFIG=
OUTPUT_DIR=
RUN_NAME=
SMOKE=0
RESUME=0
MOVE_ASIDE=0
DRY_RUN=0
WANDB_MODE_ARG=offline
TOKEN_FILE=
PRIME_RL_DIR=${PRIME_RL_DIR:-}
MIN_FREE_GB=
COMMIT=${PRIME_RL_COMMIT:-$PRIME_RL_PIN}
IDLE_MIB=1024        # a GPU using more memory than this is busy
DATASET=google/boolq # load_environment's default dataset_name

while [[ $# -gt 0 ]]; do
  case $1 in
    --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
    --output-dir) OUTPUT_DIR=${2:?--output-dir needs a value}; shift 2 ;;
    --run-name) RUN_NAME=${2:?--run-name needs a value}; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --resume) RESUME=1; shift ;;
    --move-aside) MOVE_ASIDE=1; shift ;;
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
[[ -z $MIN_FREE_GB || $MIN_FREE_GB =~ ^[0-9]+$ ]] || die "--min-free-gb must be a whole number of GB"
((!(RESUME && MOVE_ASIDE))) || die "--resume and --move-aside exclude each other" \
  "--resume continues the run in the output dir; --move-aside starts a new one there"
if ((SMOKE)); then
  [[ -z $CONFIG ]] || die "--smoke runs configs/smoke.toml; leave out --config"
  CONFIG=$REPO_DIR/configs/smoke.toml
  RUN_NAME=${RUN_NAME:-smoke-$(date -u +%Y%m%dT%H%M%SZ)}
fi
CONFIG=${CONFIG:-$REPO_DIR/configs/calibrated_qa_gemma2_2b.toml}
[[ -f $CONFIG ]] || die "config not found: $CONFIG"
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
use_work_root
PRIME_RL_DIR=${PRIME_RL_DIR:-$WORK_ROOT/prime-rl}
RUN_NAME=${RUN_NAME:-$(basename "$CONFIG" .toml)}
OUTPUT_DIR=${OUTPUT_DIR:-$WORK_ROOT/outputs/$RUN_NAME}
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

# The environment: installed from this checkout (after every sync), verified in prime-rl's venv.
# First, because the checks below read the config through the installed calibrated_qa.
install_environment "$PRIME_RL_DIR" "$REPO_DIR" || die "could not install calibrated-qa into $PRIME_RL_DIR/.venv"
check_environment "$PRIME_RL_DIR" "$REPO_DIR" ||
  die "calibrated-qa in prime-rl's venv is not this checkout's (see above)"
lc() { launch_check "$PRIME_RL_DIR" "$REPO_DIR" "$@"; }
lc config "$CONFIG" || die "$CONFIG does not match the environment (see above)"

# Output directory, first of the cheap checks: a fresh run never starts on another run's state
# (refused, with what was found), a resume names the one step both sides hold. Nothing is moved
# until every check has passed (below).
if ((RESUME)); then
  RESUME_STEP=$(lc resume-step "$OUTPUT_DIR") || die "cannot resume in $OUTPUT_DIR (reason above)"
  echo "resuming at step $RESUME_STEP"
elif ((!MOVE_ASIDE)); then
  lc fresh "$OUTPUT_DIR" || die "$OUTPUT_DIR is not fresh (see above)"
fi

# GPUs: prime-rl takes the first N visible GPUs (N from [deployment]); they must be idle, and
# prime-rl's torch must see them (a driver older than its CUDA fails here, not inside vLLM).
NEED_GPUS=$(lc get "$CONFIG" required_gpus) || die "could not read [deployment] from $CONFIG"
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
lc cuda "$NEED_GPUS" || die "prime-rl's torch cannot use the GPUs (reason above)" \
  "compare the driver's CUDA (nvidia-smi) with torch's, and check CUDA_VISIBLE_DEVICES"
PORT=$(lc get "$CONFIG" port)
lc port "$PORT" || die "the inference port $PORT is taken (reason above)"

# Hugging Face: the token (never printed) can read the gated model; then the model and BoolQ
# are downloaded now, so that a download problem fails first and the run starts cached.
[[ -z $TOKEN_FILE ]] || read_token_file "$TOKEN_FILE"
has_hf_token || die "no Hugging Face token: the model is gated" \
  "export HF_TOKEN=..., or pass --hf-token-file FILE, or run: hf auth login"
MODEL=$(lc get "$CONFIG" model) || die "no [model] name in $CONFIG"
lc hf-access "$MODEL" || die "the Hugging Face token cannot read $MODEL (reason above)"
say "Downloading $MODEL and $DATASET into the Hugging Face cache (${HF_HUB_CACHE:-its default place})"
MODEL_DIR=$(lc prefetch "$MODEL" "$DATASET") || die "could not download $MODEL or $DATASET (reason above)"
echo "model files: $MODEL_DIR"

# Disk: the run's peak need from the config and the model's size (formula: scripts/disk_need.py).
NEED_GB=$(lc disk-need "$CONFIG" "$MODEL_DIR") || die "could not compute the disk need (reason above)"
NEED_GB=${MIN_FREE_GB:-$NEED_GB}
FREE_GB=$(free_gb "$OUTPUT_DIR") || exit 1
((FREE_GB >= NEED_GB)) || die "only $FREE_GB GB free for $OUTPUT_DIR, the run needs $NEED_GB GB at its peak" \
  "free space, or put --output-dir on a larger volume (e.g. /workspace on RunPod)"
echo "disk: $FREE_GB GB free for $OUTPUT_DIR, $NEED_GB GB needed"

# W&B: offline needs nothing; online needs a key W&B accepts (passed on in the environment only).
if [[ $WANDB_MODE_ARG == online ]]; then
  lc wandb || die "W&B is not usable (reason above)"
fi

# The analysis venv of this checkout: the analysis runs there after training.
ensure_analysis_venv "$REPO_DIR" || die "could not build the analysis venv in $REPO_DIR/.venv" \
  "the analysis after training needs it: fix the error above (uv.lock, network), or rerun setup_runpod.sh"

# The config, valid for prime-rl (its own --dry-run).
RL_OPTS=()
if [[ $WANDB_MODE_ARG == offline ]]; then
  RL_OPTS+=(--wandb.offline true)
else
  RL_OPTS+=(--wandb.offline false)
fi
if ((RESUME)); then
  RL_OPTS+=(--ckpt.resume-step "$RESUME_STEP")
  # prime-rl skips the online eval at the resumed step by default; the eval log of the
  # interrupted run keeps only the rounds before that step (below), so run it again.
  [[ $(lc get "$CONFIG" has_eval) == false ]] || RL_OPTS+=(--orchestrator.eval.skip-eval-on-resume false)
fi
export CALIBRATED_QA_LOG_DIR=$OUTPUT_DIR # the env servers inherit it: generation logs go here
export UV_NO_SYNC=1                      # `uv run` (also inside prime-rl) must not re-sync away the environment
export NEVER_CLEAN_OUTPUT_DIR=1          # prime-rl's clean_output_dir would delete DIR (entrypoints/rl.py)
# prime-rl's dry run writes logs/rl.log and configs/ into its output dir, and refuses one that
# holds checkpoints (entrypoints/rl.py rl, utils/pathing.py validate_output_dir): it gets a
# scratch dir, so the run's own dir is untouched until every check has passed.
DRY_DIR=$(mktemp -d "${TMPDIR:-/tmp}/calibrated-qa-dry-run.XXXXXX")
trap 'rm -rf "$DRY_DIR"' EXIT
(cd "$PRIME_RL_DIR" && uv run rl @ "$CONFIG" --output-dir "$DRY_DIR" "${RL_OPTS[@]}" --dry-run) ||
  die "prime-rl rejected the config: its --dry-run failed (see above)"
rm -rf "$DRY_DIR" # our own scratch dir
trap - EXIT

if ((DRY_RUN)); then
  say "All checks passed. Dry run: stopping before training."
  echo "Train with the same arguments without --dry-run."
  exit 0
fi

# Resuming redoes the steps from RESUME_STEP on: move aside what the interrupted run wrote for
# them (checkpoints, broadcasts, rollouts, log records) and keep its logs as parts, which the
# analysis reads in order (scripts/run_state.py, prepare_resume).
if ((RESUME)); then
  lc prepare-resume "$CONFIG" "$OUTPUT_DIR" "$RESUME_STEP" ||
    die "could not set aside the newer state of the interrupted run in $OUTPUT_DIR (see above)"
elif ((MOVE_ASIDE)); then
  lc fresh "$OUTPUT_DIR" --move-aside || die "could not move the earlier run in $OUTPUT_DIR aside"
fi

# The broadcast pruner deletes broadcasts older than the newest resumable step while training
# runs; it stops with this script (trap), or by itself once this script's process is gone.
mkdir -p "$OUTPUT_DIR"
lc prune-broadcasts "$OUTPUT_DIR" --parent $$ >>"$OUTPUT_DIR/pruner.log" 2>&1 &
PRUNER=$!
trap 'kill "$PRUNER" 2>/dev/null || true' EXIT

say "Training (GPU 0: vLLM; the trainer: the next GPUs). Reward per step:"
echo "  grep -a 'Step [0-9]* |' $OUTPUT_DIR/logs/orchestrator.stdout"
(cd "$PRIME_RL_DIR" && uv run rl @ "$CONFIG" --output-dir "$OUTPUT_DIR" "${RL_OPTS[@]}") || die "training failed" \
  "logs: $OUTPUT_DIR/logs/{orchestrator,trainer,inference}.stdout" \
  "continue from the latest common checkpoint with: bash run_training.sh --config $CONFIG --output-dir $OUTPUT_DIR --resume"
kill "$PRUNER" 2>/dev/null || true

say "Analysis -> $RESULTS_DIR"
unset UV_NO_SYNC
ANALYZE=(uv run --project "$REPO_DIR" --locked --no-dev python "$REPO_DIR/analyze_calibration.py")
STATUS=0
# parts_in_order DIR PATTERN: the kept parts of a resumed run, in order (none for a fresh run).
parts_in_order() {
  find "$1" -maxdepth 1 -name "$2" | sort -V
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
if ((SMOKE)); then
  say "Smoke report"
  lc smoke-report "$CONFIG" "$OUTPUT_DIR" "$RESULTS_DIR" || die "the smoke run failed a check (see above)"
fi
say "Done. Outputs: $OUTPUT_DIR  Results: $RESULTS_DIR"
