"""One dry run: config -> environment -> rollouts against the server -> log -> checks -> analysis.

The rollouts take training's data path: the environment's training dataset, grouped K rollouts
per question, through ``Environment.generate`` with a ``vf.ClientConfig`` (verifiers' OpenAI
chat-completions client), in this one process. prime-rl runs the same environment code in
env-server worker processes with its token client; that path is tested in
``tests/test_env_server.py``. Only what a CPU cannot afford changes:
the dataset is the shipped BoolQ folder, length is measured in exact tokens, and ``max_tokens``
may be lowered (both the sampler's and the environment's, which must stay equal).

The checks here are the dry run's purpose, so they are part of the command, not only of the tests:
every request the server received held exactly one ``user`` message, the log holds one valid
record per rollout, and each record's ``completion_tokens`` is the server's own ``usage`` count.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibrated_qa.records import LOG_FILE_NAMES, RecordError, validate_record

if TYPE_CHECKING:
    import verifiers as vf
    from datasets import Dataset

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "calibrated_qa_gemma2_2b.toml"
DEFAULT_DATASET = REPO / "data" / "boolq"
DEFAULT_OUT = REPO / "results" / "dry-run"
ANALYSIS_SCRIPT = REPO / "analyze_calibration.py"
ENV_ID = "calibrated-qa"
API_KEY_VAR = "DRYRUN_API_KEY"  # unset is fine: the local server wants no key ("EMPTY" is sent)


class DryRunError(RuntimeError):
    """The dry run found the pipeline broken; the message says where."""


@dataclass(frozen=True)
class TrainingConfig:
    """What the dry run takes from a prime-rl config: sampler settings and environment arguments."""

    path: Path
    max_tokens: int
    temperature: float
    env_args: dict[str, Any]


def read_config(path: Path) -> TrainingConfig:
    """Read ``[orchestrator.sampling]`` and the ``calibrated-qa`` ``[[orchestrator.env]]`` entry."""
    with Path(path).open("rb") as f:
        config = tomllib.load(f)
    orchestrator = config.get("orchestrator", {})
    sampling = orchestrator.get("sampling", {})
    envs = [env for env in orchestrator.get("env", []) if env.get("id") == ENV_ID]
    if len(envs) != 1:
        raise DryRunError(f"{path}: expected one [[orchestrator.env]] with id = {ENV_ID!r}")
    if "max_tokens" not in sampling:
        raise DryRunError(f"{path}: [orchestrator.sampling] has no max_tokens")
    env_args = dict(envs[0].get("args", {}))
    max_tokens = sampling["max_tokens"]
    if env_args.get("max_tokens", max_tokens) != max_tokens:
        raise DryRunError(
            f"{path}: the environment's max_tokens ({env_args['max_tokens']}) differs from the "
            f"sampler's ({max_tokens}); the length penalty would be computed against the wrong M"
        )
    return TrainingConfig(
        path=Path(path),
        max_tokens=int(max_tokens),
        temperature=float(sampling.get("temperature", 1.0)),  # prime-rl's default
        env_args=env_args,
    )


def dry_run_env_args(
    config: TrainingConfig, *, max_tokens: int, dataset: Path, split: str, log_dir: Path
) -> dict[str, Any]:
    """The config's environment arguments, with the dry run's overrides (local data, tokens)."""
    return {
        **config.env_args,
        "dataset_name": str(dataset),
        "dataset_split": split,
        "eval_split": split,
        "length_unit": "tokens",
        "max_tokens": max_tokens,
        "log_dir": str(log_dir),
    }


@dataclass
class Paths:
    """Where a dry run writes (``out`` is the analysis' folder; the run's own files go in logs/)."""

    out: Path

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def generations(self) -> Path:
        return self.logs / LOG_FILE_NAMES["train"]

    @property
    def requests(self) -> Path:
        return self.logs / "server_requests.jsonl"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def report(self) -> Path:
        return self.out / "dry_run_report.json"

    def fresh(self) -> None:
        """Remove this run's logs from a previous run: the log is appended to, never rewritten."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for path in (self.generations, self.logs / LOG_FILE_NAMES["eval"], self.requests):
            path.unlink(missing_ok=True)


def prepare(
    env_args: dict[str, Any], num_examples: int, rollouts_per_example: int
) -> tuple[vf.Environment, Dataset]:
    """The environment and its rollout inputs (N questions, each repeated K times).

    Built before the server starts, so a bad argument or dataset fails in a second, not after
    the model server has been brought up.
    """
    from calibrated_qa import load_environment

    env = load_environment(**env_args)
    questions = env.get_dataset(n=num_examples)
    if len(questions) < num_examples:
        raise DryRunError(f"asked for {num_examples} questions, the dataset has {len(questions)}")
    return env, questions.repeat(rollouts_per_example)


def run_rollouts(
    env: vf.Environment,
    inputs: Dataset,
    *,
    base_url: str,
    model: str,
    max_tokens: int,
    temperature: float,
    max_concurrent: int,
) -> float:
    """All rollouts, grouped per question, through verifiers; returns the wall time in seconds."""
    import verifiers as vf

    client = vf.ClientConfig(
        api_base_url=f"{base_url}/v1",
        api_key_var=API_KEY_VAR,
        max_retries=0,  # a failing request is a finding, not something to paper over
        timeout=1800.0,
    )
    start = time.perf_counter()
    results = env.generate_sync(
        inputs,
        client=client,
        model=model,
        sampling_args={"max_tokens": max_tokens, "temperature": temperature},
        max_concurrent=max_concurrent,
    )
    seconds = time.perf_counter() - start
    outputs = list(results["outputs"])
    errors = [o["error"] for o in outputs if o.get("error")]
    if errors:
        raise DryRunError(f"{len(errors)} of {len(outputs)} rollouts failed; first: {errors[0]}")
    if len(outputs) != len(inputs):
        raise DryRunError(f"verifiers returned {len(outputs)} rollouts for {len(inputs)} inputs")
    return seconds


def read_log(path: Path) -> list[dict]:
    """Every record of a generation log, validated (a bad line is an error, not skipped)."""
    if not path.exists():
        raise DryRunError(f"no generation log at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        return [validate_record(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, 1)]
    except (RecordError, ValueError) as exc:
        raise DryRunError(f"invalid generation log: {exc}") from exc


@dataclass
class Checks:
    """What the dry run verified about the wire and the log (all must hold)."""

    requests: int
    one_user_message: int  # requests whose messages were exactly [user]
    records: int
    expected_records: int
    tokens_unit: int  # records with length_unit == "tokens"
    usage_matches: int  # records whose completion_tokens equal the server's usage
    analysis_rollouts: int | None = None  # rollouts the analysis counted (None: not run)
    problems: list[str] = field(default_factory=list)


def check(records: list[dict], requests: list[dict], expected: int) -> Checks:
    """Compare the generation log with what the server received and answered."""
    chats = [r for r in requests if r["path"].endswith("/chat/completions")]
    one_user = sum(r["roles"] == ["user"] for r in chats)
    # The server's usage for each completion text (a completion may, rarely, repeat).
    usage_by_text: dict[str, list[int]] = defaultdict(list)
    for r in chats:
        if r["status"] == 200 and r["usage"]:
            usage_by_text[r["content"] or ""].append(r["usage"]["completion_tokens"])
    matches = 0
    for record in records:
        counts = usage_by_text.get(record["completion"])
        if counts and record["completion_tokens"] in counts:
            counts.remove(record["completion_tokens"])
            matches += 1
    result = Checks(
        requests=len(chats),
        one_user_message=one_user,
        records=len(records),
        expected_records=expected,
        tokens_unit=sum(r["length_unit"] == "tokens" for r in records),
        usage_matches=matches,
    )
    if result.records != expected:
        result.problems.append(f"{result.records} log records for {expected} rollouts")
    if result.requests != expected:
        result.problems.append(f"the server received {result.requests} requests for {expected}")
    if one_user != len(chats):
        roles = next(r["roles"] for r in chats if r["roles"] != ["user"])
        bad = len(chats) - one_user
        result.problems.append(f"{bad} requests were not exactly one user message, e.g. {roles}")
    if result.tokens_unit != len(records):
        result.problems.append(f"{len(records) - result.tokens_unit} records without exact tokens")
    if matches != len(records):
        result.problems.append(f"{len(records) - matches} records disagree with the server's usage")
    return result


def run_analysis(
    paths: Paths, *, batch_size: int, rollouts_per_example: int, max_tokens: int, plots: bool
) -> int:
    """``analyze_calibration.py`` on the log, into ``paths.out``; returns its rollout count.

    The whole dry run is one training step (``batch_size`` = N x K). A failure fails the dry run.
    """
    if not ANALYSIS_SCRIPT.exists():
        raise DryRunError(f"{ANALYSIS_SCRIPT} not found (--skip-analysis runs without it)")
    command = [
        sys.executable,
        str(ANALYSIS_SCRIPT),
        "--generations",
        str(paths.generations),
        "--out",
        str(paths.out),
        "--batch-size",
        str(batch_size),
        "--rollouts-per-example",
        str(rollouts_per_example),
        "--max-tokens",
        str(max_tokens),
    ]
    if not plots:
        command.append("--no-plots")
    print("$ " + " ".join(command), flush=True)
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise DryRunError(f"{ANALYSIS_SCRIPT.name} failed with exit code {completed.returncode}")
    return analysis_rollout_count(paths.out)


def analysis_rollout_count(out: Path) -> int:
    """Rollouts the analysis counted: the sum of ``n`` over the steps of ``metrics_by_step.csv``."""
    path = out / "metrics_by_step.csv"
    if not path.exists():
        raise DryRunError(f"the analysis wrote no {path}")
    with path.open(newline="") as f:
        return sum(int(row["n"]) for row in csv.DictReader(f))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass
class Report:
    """The numbers printed at the end, also saved as ``dry_run_report.json``."""

    rollouts: int
    num_examples: int
    rollouts_per_example: int
    max_tokens: int
    seconds: float
    rollouts_per_second: float
    parse_rate: float
    mean_reward: float
    mean_calibration_reward: float
    mean_length_penalty: float
    mean_completion_tokens: float
    truncated_rate: float
    checks: Checks
    build_seconds: float
    server_startup_seconds: float
    files: list[str]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    def text(self) -> str:
        c = self.checks
        lines = [
            f"{self.rollouts} rollouts ({self.num_examples} questions x "
            f"{self.rollouts_per_example}, max_tokens {self.max_tokens}) in {self.seconds:.1f} s: "
            f"{self.rollouts_per_second:.2f} rollouts/s",
            f"parse rate {self.parse_rate:.1%}"
            + (
                "  (expected: a randomly initialised model writes no 'ANSWER: YES with XX% "
                "probability' line)"
                if self.parse_rate == 0
                else ""
            ),
            f"mean reward {self.mean_reward:+.3f} = calibration {self.mean_calibration_reward:+.3f}"
            f" + length penalty {self.mean_length_penalty:+.3f}",
            f"completion tokens: mean {self.mean_completion_tokens:.1f}, "
            f"{self.truncated_rate:.0%} stopped at max_tokens",
            f"server: {c.requests} chat requests, {c.one_user_message} of them exactly one user "
            f"message; {c.usage_matches}/{c.records} log records carry the server's usage count",
            "analysis: "
            + ("not run" if c.analysis_rollouts is None else f"{c.analysis_rollouts} rollouts"),
            f"model build {self.build_seconds:.1f} s, "
            f"server ready in {self.server_startup_seconds:.1f} s",
            "files:",
            *(f"  {name}" for name in self.files),
        ]
        return "\n".join(lines)


def make_report(
    records: list[dict], checks: Checks, *, seconds: float, files: list[str], **settings: Any
) -> Report:
    n = len(records)
    return Report(
        rollouts=n,
        seconds=seconds,
        rollouts_per_second=n / seconds if seconds else float("nan"),
        parse_rate=mean([float(r["parseable"]) for r in records]),
        mean_reward=mean([r["reward"] for r in records]),
        mean_calibration_reward=mean([r["calibration_reward"] for r in records]),
        mean_length_penalty=mean([r["length_penalty"] for r in records]),
        mean_completion_tokens=mean([float(r["completion_tokens"] or 0) for r in records]),
        truncated_rate=mean([float(r["truncated"]) for r in records]),
        checks=checks,
        files=files,
        **settings,
    )
