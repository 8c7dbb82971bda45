#!/usr/bin/env bash
# Evaluate a model or checkpoint on the balanced BoolQ validation split, offline, on one GPU.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/common.sh
source "$REPO_DIR/scripts/common.sh"

usage() {
  cat <<EOF
Usage: eval_model.sh --model M --out DIR [--num-examples N] [--rollouts-per-example K]
                     [--temperature T] [--port P] [--gpu I] [--config FILE]
                     [--hf-token-file FILE] [--prime-rl-dir DIR] [--help]

Serves M with the vLLM of prime-rl's venv on one GPU, runs the calibrated-qa environment's eval
split (balanced BoolQ validation) through verifiers' vf-eval against it, and writes the
generation log DIR/eval_generations.jsonl (records with split "eval"). The server is always
stopped at the end, also on failure or Ctrl-C.

Options:
  --model M                a Hugging Face id (e.g. google/gemma-2-2b-it) or a checkpoint folder
                           (e.g. ~/outputs/calibrated_qa_gemma2_2b/weights/step_50)
  --out DIR                output folder (must not hold an eval log already)
  --num-examples N         questions to evaluate, -1 for all 2,474 (default: -1)
  --rollouts-per-example K samples per question (default: 1)
  --temperature T          sampling temperature; 0 is greedy (default: 1.0, as in training)
  --port P                 port of the vLLM server on 127.0.0.1 (default: 8011)
  --gpu I                  GPU index to serve on (default: 0)
  --config FILE            training config whose environment arguments and max_tokens are used
                           (default: configs/calibrated_qa_gemma2_2b.toml)
  --hf-token-file FILE     Hugging Face token for gated hub models (default: HF_TOKEN or login)
  --prime-rl-dir DIR       prime-rl checkout (default: \$PRIME_RL_DIR or ROOT/prime-rl, ROOT as
                           in run_training.sh --help)
  -h, --help               this help

Environment: EVAL_SERVER_TIMEOUT (seconds to wait for vLLM, default 900).
EOF
}

MODEL=
OUT=
NUM_EXAMPLES=-1
ROLLOUTS=1
TEMPERATURE=1.0
PORT=8011
GPU=0
CONFIG=$REPO_DIR/configs/calibrated_qa_gemma2_2b.toml
TOKEN_FILE=
PRIME_RL_DIR=${PRIME_RL_DIR:-}
TIMEOUT=${EVAL_SERVER_TIMEOUT:-900}
IDLE_MIB=1024

while [[ $# -gt 0 ]]; do
  case $1 in
    --model) MODEL=${2:?--model needs a value}; shift 2 ;;
    --out) OUT=${2:?--out needs a value}; shift 2 ;;
    --num-examples) NUM_EXAMPLES=${2:?--num-examples needs a value}; shift 2 ;;
    --rollouts-per-example) ROLLOUTS=${2:?--rollouts-per-example needs a value}; shift 2 ;;
    --temperature) TEMPERATURE=${2:?--temperature needs a value}; shift 2 ;;
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --gpu) GPU=${2:?--gpu needs a value}; shift 2 ;;
    --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
    --hf-token-file) TOKEN_FILE=${2:?--hf-token-file needs a value}; shift 2 ;;
    --prime-rl-dir) PRIME_RL_DIR=${2:?--prime-rl-dir needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ -n $MODEL ]] || { usage >&2; die "--model is required"; }
[[ -n $OUT ]] || { usage >&2; die "--out is required"; }
[[ $NUM_EXAMPLES =~ ^(-1|[1-9][0-9]*)$ ]] || die "--num-examples must be -1 or a positive integer"
[[ $ROLLOUTS =~ ^[1-9][0-9]*$ ]] || die "--rollouts-per-example must be a positive integer"
[[ $TEMPERATURE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--temperature must be a number >= 0"
if ! [[ $PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT > 65535)); then die "--port must be a TCP port number"; fi
[[ $GPU =~ ^[0-9]+$ ]] || die "--gpu must be a GPU index"
[[ -f $CONFIG ]] || die "config not found: $CONFIG"
[[ $OUT == /* ]] || OUT=$PWD/$OUT
use_work_root
PRIME_RL_DIR=${PRIME_RL_DIR:-$WORK_ROOT/prime-rl}

VENV=$PRIME_RL_DIR/.venv
[[ -x $VENV/bin/python && -x $VENV/bin/vllm && -x $VENV/bin/vf-eval ]] ||
  die "prime-rl's venv with vllm and vf-eval not found at $VENV" "run: bash setup_runpod.sh"

# The model: an existing checkpoint folder, or a hub id the token can read.
if [[ -d $MODEL ]]; then
  MODEL=$(cd "$MODEL" && pwd)
  [[ -f $MODEL/config.json ]] || die "$MODEL is not a model folder (no config.json)" \
    "pass a weights/step_N folder of a run, not its checkpoints/step_N (optimizer state)"
elif [[ $MODEL == /* || $MODEL == .* || $MODEL == "~"* || $MODEL == *step_* || $MODEL == */*/* ]]; then
  die "checkpoint folder not found: $MODEL" \
    "list the saved weights with: ls <output-dir>/weights/"
else
  [[ -z $TOKEN_FILE ]] || read_token_file "$TOKEN_FILE"
  launch_check "$PRIME_RL_DIR" "$REPO_DIR" hf-access "$MODEL" ||
    die "cannot read $MODEL from the Hugging Face hub (reason above)"
fi

# One idle GPU and a free port.
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this machine has no NVIDIA GPU driver" \
  "eval_model.sh serves the model with vLLM on one GPU"
GPUS=$(gpu_table) || die "nvidia-smi failed: the GPU driver is not working"
ROW=$(awk -F', *' -v id="$GPU" '$1 == id' <<<"$GPUS")
[[ -n $ROW ]] || die "GPU $GPU not found; visible GPUs: $(cut -d, -f1 <<<"$GPUS" | tr '\n' ' ')"
USED=$(awk -F', *' '{print $2 + 0}' <<<"$ROW")
((USED <= IDLE_MIB)) || die "GPU $GPU is busy ($USED MiB used)" \
  "pick another --gpu, or stop what runs there (training uses GPUs 0 and 1)"
"$VENV/bin/python" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' \
  "$PORT" 2>/dev/null || die "port $PORT is in use" "pick another --port"

mkdir -p "$OUT"
[[ ! -s $OUT/eval_generations.jsonl ]] || die "$OUT already holds an eval log" \
  "use a new --out folder per evaluation, so runs never mix"

install_environment "$PRIME_RL_DIR" "$REPO_DIR" || die "could not install calibrated-qa into $VENV"
check_environment "$PRIME_RL_DIR" "$REPO_DIR" || die "calibrated-qa in prime-rl's venv is not this checkout's"
MAX_TOKENS=$(launch_check "$PRIME_RL_DIR" "$REPO_DIR" get "$CONFIG" max_tokens)
ENV_ARGS=$(launch_check "$PRIME_RL_DIR" "$REPO_DIR" env-args "$CONFIG" --log-dir "$OUT")

SERVER_PID=
stop_server() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    say "Stopping the vLLM server (pid $SERVER_PID)"
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$SERVER_PID" 2>/dev/null || return 0; sleep 1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

say "Serving $MODEL on GPU $GPU, port $PORT (log: $OUT/vllm.log)"
# Its own process group (setsid), so the whole server, workers included, is stopped at the end.
CUDA_VISIBLE_DEVICES=$GPU setsid "$VENV/bin/vllm" serve "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --gpu-memory-utilization 0.9 >"$OUT/vllm.log" 2>&1 &
SERVER_PID=$!

for ((waited = 0; ; waited += 2)); do
  kill -0 "$SERVER_PID" 2>/dev/null || die "the vLLM server exited during startup; last lines of $OUT/vllm.log:" \
    "$(tail -n 15 "$OUT/vllm.log")"
  "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$PORT/health" 2>/dev/null && break
  ((waited < TIMEOUT)) || die "the vLLM server was not healthy after $TIMEOUT s (see $OUT/vllm.log)"
  sleep 2
done
say "Server healthy after ~${waited} s"

printf 'model=%s\nnum_examples=%s\nrollouts_per_example=%s\ntemperature=%s\nmax_tokens=%s\nenv_args=%s\nconfig=%s\n' \
  "$MODEL" "$NUM_EXAMPLES" "$ROLLOUTS" "$TEMPERATURE" "$MAX_TOKENS" "$ENV_ARGS" "$CONFIG" >"$OUT/eval_args.txt"
say "Evaluating (the environment's eval split; log: $OUT/eval_generations.jsonl)"
(cd "$PRIME_RL_DIR" && EVAL_API_KEY=local "$VENV/bin/vf-eval" calibrated-qa \
  --model "$MODEL" --api-base-url "http://127.0.0.1:$PORT/v1" --api-key-var EVAL_API_KEY \
  --api-client-type openai_chat_completions --env-args "$ENV_ARGS" \
  --num-examples "$NUM_EXAMPLES" --rollouts-per-example "$ROLLOUTS" \
  --temperature "$TEMPERATURE" --max-tokens "$MAX_TOKENS" --max-concurrent 256 \
  --output-dir "$OUT/vf-eval") || die "vf-eval failed (see above)"

[[ -s $OUT/eval_generations.jsonl ]] || die "vf-eval finished but wrote no $OUT/eval_generations.jsonl"
say "Wrote $(wc -l <"$OUT/eval_generations.jsonl") records to $OUT/eval_generations.jsonl"
echo "Compare with: python analyze_calibration.py --split eval --compare base=DIR1/eval_generations.jsonl trained=$OUT/eval_generations.jsonl --out results/eval-compare"
