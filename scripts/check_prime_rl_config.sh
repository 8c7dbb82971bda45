#!/usr/bin/env bash
# Copied from the calibrated-qa project's shared tools (check_prime_rl_config.sh), unchanged but
# for this header and --help; it is the offline check of configs against prime-rl's own config
# classes.
# Validate prime-rl TOML configs against prime-rl's own RLConfig classes at the pinned commit,
# on a machine with no GPU: torch and wandb are stubbed (the config modules only import them).
#
# Needs two git repositories (a clone or a bare git dir each):
#   PRIME_RL_GIT         PrimeIntellect-ai/prime-rl     (must contain the pinned commit)
#   PYDANTIC_CONFIG_GIT  samsja/pydantic_config         (commit 1562882, what that prime-rl locks)
# Usage: PRIME_RL_GIT=... PYDANTIC_CONFIG_GIT=... check_prime_rl_config.sh CONFIG.toml [...]
# Prints "OK <file>: <key values>" per valid file, "INVALID <file>: <error>" otherwise; exit 1 if any invalid.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '5,12s/^# \{0,1\}//p' "$0"  # the description and usage above
  exit 0
fi
PRIME_RL_COMMIT=${PRIME_RL_COMMIT:-6cae5cca734d0063951efaf700ca9e4bc39c8677}
PYDANTIC_CONFIG_COMMIT=${PYDANTIC_CONFIG_COMMIT:-1562882}
CACHE=${CACHE:-${TMPDIR:-/tmp}/prime-rl-config-check}
: "${PRIME_RL_GIT:?set PRIME_RL_GIT to a git clone (or git dir) of PrimeIntellect-ai/prime-rl}"
: "${PYDANTIC_CONFIG_GIT:?set PYDANTIC_CONFIG_GIT to a git clone (or git dir) of samsja/pydantic_config}"
[[ $# -ge 1 ]] || { echo "usage: $0 CONFIG.toml [...]" >&2; exit 2; }

mkdir -p "$CACHE"
src="$CACHE/prime-rl-$PRIME_RL_COMMIT"
if [[ ! -d $src/src/prime_rl ]]; then
  mkdir -p "$src"
  git -C "$PRIME_RL_GIT" archive "$PRIME_RL_COMMIT" src | tar -x -C "$src"
fi
venv="$CACHE/venv"
if ! "$venv/bin/python" -c "import pydantic_config, tyro" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" -q install pydantic==2.12.5 tyro==1.0.8 tomli tomli-w loguru 2>/dev/null
  pcdir="$CACHE/pydantic_config"; rm -rf "$pcdir"; mkdir -p "$pcdir"
  git -C "$PYDANTIC_CONFIG_GIT" archive "$PYDANTIC_CONFIG_COMMIT" | tar -x -C "$pcdir"
  "$venv/bin/pip" -q install --no-deps "$pcdir" 2>/dev/null
fi
cat > "$CACHE/validate.py" <<'PY'
import sys, types, warnings
warnings.filterwarnings("ignore")
for name in ["torch", "torch.distributed", "wandb"]:
    sys.modules[name] = types.ModuleType(name)
t = sys.modules["torch"]; t.distributed = sys.modules["torch.distributed"]
for a in ["device", "dtype", "Tensor", "nn"]:
    setattr(t, a, type(a, (), {}))
from prime_rl.configs.rl import RLConfig
from prime_rl.utils.config import cli
cfg = cli(RLConfig, args=["@", sys.argv[1]])
o = cfg.orchestrator
print(f"OK {sys.argv[1]}: model={o.model.name} batch_size={o.batch_size} "
      f"rollouts_per_example={o.rollouts_per_example} max_tokens={o.sampling.max_tokens} "
      f"max_steps={o.max_steps} seq_len={o.seq_len} envs={[(e.id, e.args) for e in o.env]}")
PY
rc=0
for f in "$@"; do
  if ! PYTHONPATH="$src/src" "$venv/bin/python" "$CACHE/validate.py" "$f" 2>"$CACHE/err.txt"; then
    echo "INVALID $f: $(grep -v '^[[:space:]]*$' "$CACHE/err.txt" | tail -4 | tr '\n' ' ')"
    rc=1
  fi
done
exit $rc
