"""run_training.sh on a fake GPU box: every preflight failure, the exact prime-rl command, resume,
and no secret in any output or file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.scripts.fakebox import PIN, REPO, FakeBox, all_text

CONFIG = REPO / "configs" / "calibrated_qa_gemma2_2b.toml"
TOKEN = "hf_SECRETvalue0123456789"
OK_ENV = {"HF_TOKEN": TOKEN}


@pytest.fixture
def box(tmp_path: Path) -> FakeBox:
    return FakeBox(tmp_path).prepare()


def out_dir(box: FakeBox) -> Path:
    return box.root / "out"


def train(box: FakeBox, *args: str, **env: str):
    return box.run(
        "run_training.sh", "--config", str(CONFIG), "--output-dir", str(out_dir(box)), *args, **env
    )


def rl_calls(box: FakeBox) -> list[str]:
    return [c for c in box.calls("uv") if c.startswith("run rl ")]


def small_config(box: FakeBox, **changes: str) -> Path:
    """The main config with some lines replaced (e.g. a smaller batch for the resume test)."""
    text = CONFIG.read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    path = box.root / "variant.toml"
    path.write_text(text)
    return path


def test_dry_run_runs_every_check_and_prime_rl_dry_run_only(box: FakeBox) -> None:
    result = train(box, "--dry-run", **OK_ENV)
    assert result.returncode == 0, result.stderr
    out = out_dir(box)
    assert rl_calls(box) == [f"run rl @ {CONFIG} --output-dir {out} --wandb.offline true --dry-run"]
    assert "All checks passed" in result.stdout
    pip = [c for c in box.calls("uv") if c.startswith("pip install")]
    assert pip == [
        f"pip install --python {box.prime_rl}/.venv/bin/python --no-deps "
        f"--reinstall-package calibrated-qa {REPO}/calibrated_qa"
    ]
    # The analysis venv is only checked on a prepared box (setup built it).
    assert f"sync --locked --no-dev --inexact --project {REPO} --check" in box.calls("uv")
    assert not [c for c in box.calls("uv") if c.startswith("sync") and "--check" not in c]
    checks = " ".join(box.calls("python"))
    for check in ("required_gpus", "hf-access google/gemma-2-2b-it", "installed", "config"):
        assert check in checks


def test_training_runs_exact_command_then_analysis(box: FakeBox) -> None:
    result = train(box, "--run-name", "unit", **OK_ENV)
    assert result.returncode == 0, result.stderr
    out = out_dir(box)
    assert rl_calls(box) == [
        f"run rl @ {CONFIG} --output-dir {out} --wandb.offline true --dry-run",
        f"run rl @ {CONFIG} --output-dir {out} --wandb.offline true",
    ]
    # The env servers inherit the log dir; uv must not re-sync the environment away.
    assert (box.state / "rl.env").read_text().splitlines()[-1] == (
        f"CALIBRATED_QA_LOG_DIR={out} UV_NO_SYNC=1"
    )
    analysis = [c for c in box.calls("uv") if "analyze_calibration.py" in c]
    prefix = f"run --project {REPO} --locked --no-dev python {REPO}/analyze_calibration.py"
    assert analysis == [
        f"{prefix} --generations {out}/generations.jsonl --config {CONFIG} "
        f"--orchestrator-log {out}/logs/orchestrator.stdout --out {REPO}/results/unit",
        f"{prefix} --split eval --config {CONFIG} --compare "
        f"base={out}/eval_generations.jsonl@0 trained={out}/eval_generations.jsonl@final "
        f"--out {REPO}/results/unit/eval",
    ]


def test_preflight_builds_a_missing_analysis_venv(box: FakeBox) -> None:
    (box.state / "analysis_synced").unlink()
    result = train(box, "--dry-run", **OK_ENV)
    assert result.returncode == 0, result.stderr
    assert f"sync --locked --no-dev --inexact --project {REPO}" in box.calls("uv")
    assert (box.state / "analysis_synced").exists()


def _no_analysis_venv(box: FakeBox) -> None:
    (box.state / "analysis_synced").unlink()


def test_wandb_online_with_key(box: FakeBox) -> None:
    key = {"WANDB_API_KEY": "wandb-secret-key"}
    result = train(box, "--dry-run", "--wandb", "online", **key, **OK_ENV)
    assert result.returncode == 0, result.stderr
    assert rl_calls(box)[0].endswith("--wandb.offline false --dry-run")
    assert "wandb-secret-key" not in result.stdout + result.stderr


def test_secrets_never_printed_or_written(box: FakeBox) -> None:
    token_file = box.root / "secrets" / "hf_token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    runs = [train(box, "--run-name", "leak", **OK_ENV)]
    (out_dir(box) / "checkpoints" / "step_10").mkdir(parents=True)
    runs.append(train(box, "--resume", "--hf-token-file", str(token_file)))
    runs.append(train(box, "--wandb", "online", **OK_ENV))  # fails: no W&B key
    for result in runs:
        assert TOKEN not in result.stdout + result.stderr
    assert TOKEN not in all_text(box.root, skip={token_file})


def _records(n: int, start: int = 0) -> str:
    return "".join(f'{{"example_id": {i % 5}, "i": {start + i}}}\n' for i in range(n))


def test_resume_passes_resume_step_and_splits_the_logs(box: FakeBox) -> None:
    config = small_config(box, **{"batch_size = 1024": "batch_size = 16"})
    out = out_dir(box)
    (out / "checkpoints" / "step_20").mkdir(parents=True)
    (out / "checkpoints" / "step_10").mkdir(parents=True)
    (out / "generations.jsonl").write_text(_records(20 * 16 + 3))
    # Eval rounds of 5 questions: checkpoints 0, 10 and 20 (round 20 ran before the crash and
    # is redone), plus a torn partial round.
    (out / "eval_generations.jsonl").write_text(_records(3 * 5 + 2) + '{"example_id": 3, "i"')
    (out / "logs").mkdir()
    (out / "logs" / "orchestrator.stdout").write_text("SUCCESS Step 0 | Reward: 0.1 |\n")
    result = box.run(
        "run_training.sh", "--config", str(config), "--output-dir", str(out), "--resume", **OK_ENV
    )
    assert result.returncode == 0, result.stderr
    resume = "--ckpt.resume-step -1 --orchestrator.eval.skip-eval-on-resume false"
    assert rl_calls(box) == [
        f"run rl @ {config} --output-dir {out} --wandb.offline true {resume} --dry-run",
        f"run rl @ {config} --output-dir {out} --wandb.offline true {resume}",
    ]
    # Steps 0-19 (20 x 16 records) are kept; the 3 records of the redone step are set aside.
    assert len((out / "generations.part1.jsonl").read_text().splitlines()) == 320
    assert len((out / "generations.part1.redone.jsonl").read_text().splitlines()) == 3
    # Eval rounds of checkpoints 0 and 10 are kept; round 20 is evaluated again after resuming.
    assert len((out / "eval_generations.part1.jsonl").read_text().splitlines()) == 10
    assert len((out / "eval_generations.part1.redone.jsonl").read_text().splitlines()) == 8
    # prime-rl reopens logs/*.stdout with mode "w": the interrupted run's logs are kept.
    assert (out / "logs.part1" / "orchestrator.stdout").read_text().startswith("SUCCESS Step 0")
    analysis = [c for c in box.calls("uv") if "analyze_calibration.py" in c]
    assert f"--generations {out}/generations.part1.jsonl {out}/generations.jsonl " in analysis[0]
    assert f"--orchestrator-log {out}/orchestrator.combined.stdout " in analysis[0]
    assert (out / "orchestrator.combined.stdout").read_text().splitlines() == [
        "SUCCESS Step 0 | Reward: 0.1 |",
        "SUCCESS Step 1 | Time: 1.00s | Reward: 0.5000 |",
    ]
    combined = out / "eval_generations.combined.jsonl"
    assert f"base={combined}@0 trained={combined}@final" in analysis[1]
    # The fake prime-rl appended 1 eval record: parts, then the resumed run's log, in order.
    eval_lines = combined.read_text().splitlines()
    assert eval_lines[:10] == (out / "eval_generations.part1.jsonl").read_text().splitlines()
    assert eval_lines[10:] == ['{"n": 0}']


def test_second_resume_counts_earlier_parts(box: FakeBox) -> None:
    config = small_config(box, **{"batch_size = 1024": "batch_size = 16"})
    out = out_dir(box)
    (out / "checkpoints" / "step_30").mkdir(parents=True)
    (out / "generations.part1.jsonl").write_text(_records(20 * 16))
    (out / "generations.part1.redone.jsonl").write_text(_records(3))
    (out / "eval_generations.part1.jsonl").write_text(_records(10))
    (out / "logs.part1").mkdir()
    (out / "generations.jsonl").write_text(_records(10 * 16 + 5))
    (out / "eval_generations.jsonl").write_text(_records(5 + 5 + 1))  # rounds 20, 30, torn
    result = box.run(
        "run_training.sh", "--config", str(config), "--output-dir", str(out), "--resume", **OK_ENV
    )
    assert result.returncode == 0, result.stderr
    assert len((out / "generations.part2.jsonl").read_text().splitlines()) == 160
    assert len((out / "eval_generations.part2.jsonl").read_text().splitlines()) == 5
    assert len((out / "eval_generations.part2.redone.jsonl").read_text().splitlines()) == 6
    analysis = next(c for c in box.calls("uv") if "--generations" in c)
    assert (
        f"--generations {out}/generations.part1.jsonl {out}/generations.part2.jsonl "
        f"{out}/generations.jsonl " in analysis
    )


def test_resume_without_online_eval_passes_no_eval_flag(box: FakeBox) -> None:
    text = CONFIG.read_text()
    start, end = text.index("[orchestrator.eval]"), text.index("[trainer.optim]")
    config = box.root / "no-eval.toml"
    config.write_text(text[:start] + text[end:])
    out = out_dir(box)
    (out / "checkpoints" / "step_10").mkdir(parents=True)
    result = box.run(
        "run_training.sh", "--config", str(config), "--output-dir", str(out), "--resume", **OK_ENV
    )
    assert result.returncode == 0, result.stderr
    assert rl_calls(box)[-1].endswith("--wandb.offline true --ckpt.resume-step -1")


def _wrong_commit(box: FakeBox) -> None:
    (box.prime_rl / ".git" / "HEAD_SHA").write_text("0" * 40 + "\n")


def _no_venv(box: FakeBox) -> None:
    (box.prime_rl / ".venv" / "bin" / "python").unlink()


def _checkpoints(box: FakeBox) -> None:
    (out_dir(box) / "checkpoints" / "step_10").mkdir(parents=True)


# (case, setup, extra args, env, expected message)
FAILURES = [
    ("no config", None, ["--config", "/nonexistent.toml"], OK_ENV, "config not found"),
    (
        "no prime-rl",
        lambda b: __import__("shutil").rmtree(b.prime_rl),
        [],
        OK_ENV,
        "prime-rl not found",
    ),
    ("wrong commit", _wrong_commit, [], OK_ENV, f"not the pinned {PIN}"),
    ("no venv", _no_venv, [], OK_ENV, "prime-rl's venv is missing"),
    ("no nvidia-smi", lambda b: b.remove_tool("nvidia-smi"), [], OK_ENV, "nvidia-smi not found"),
    ("one GPU", None, [], {**OK_ENV, "FAKE_GPUS": "0, 3"}, "needs 2 GPUs, this machine shows 1"),
    ("busy GPU", None, [], {**OK_ENV, "FAKE_GPUS": "0, 3\\n1, 70000"}, "must be idle; busy: GPU 1"),
    ("driver broken", None, [], {**OK_ENV, "FAKE_NVIDIA_RC": "9"}, "nvidia-smi failed"),
    ("low disk", None, [], {**OK_ENV, "FAKE_DF_KB": str(10 * 1024 * 1024)}, "only 10 GB free"),
    ("no token", None, [], {}, "no Hugging Face token"),
    (
        "gated",
        None,
        [],
        {**OK_ENV, "FAKE_HF_ACCESS": "denied"},
        "token cannot read google/gemma-2-2b-it",
    ),
    ("wandb key", None, ["--wandb", "online"], OK_ENV, "--wandb online needs WANDB_API_KEY"),
    ("bad wandb", None, ["--wandb", "sometimes"], OK_ENV, "--wandb must be offline or online"),
    ("old checkpoints", _checkpoints, [], OK_ENV, "already holds checkpoints"),
    ("nothing to resume", None, ["--resume"], OK_ENV, "--resume: no checkpoint"),
    ("install fails", None, [], {**OK_ENV, "FAKE_UV_PIP_RC": "2"}, "could not install"),
    (
        "analysis venv",
        _no_analysis_venv,
        [],
        {**OK_ENV, "FAKE_ANALYSIS_SYNC_RC": "1"},
        "could not build the analysis venv",
    ),
    ("stale env", None, [], {**OK_ENV, "FAKE_ENV_INSTALLED": "stale"}, "is not this checkout's"),
    (
        "prime-rl rejects",
        None,
        [],
        {**OK_ENV, "FAKE_DRYRUN_RC": "1"},
        "prime-rl rejected the config",
    ),
]


@pytest.mark.parametrize(
    ("setup", "args", "env", "message"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
def test_each_preflight_failure_has_its_own_message(box, setup, args, env, message) -> None:
    if setup is not None:
        setup(box)
    result = train(box, *args, **env)
    assert result.returncode != 0
    assert message in result.stderr
    others = [c[-1] for c in FAILURES if c[-1] != message]
    assert not [m for m in others if m in result.stderr], result.stderr
    assert not [c for c in rl_calls(box) if "--dry-run" not in c], "training must not start"


def test_config_inconsistent_with_environment(box: FakeBox) -> None:
    config = small_config(
        box, **{'args = { max_tokens = 512, length_unit = "chars" }': "args = { max_tokens = 256 }"}
    )
    result = box.run("run_training.sh", "--config", str(config), **OK_ENV)
    assert result.returncode != 0
    assert "does not match the environment" in result.stderr
    assert "max_tokens = 256" in result.stderr
    assert rl_calls(box) == []


def test_help_lists_every_option() -> None:
    import subprocess

    text = subprocess.run(
        [str(REPO / "run_training.sh"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--config", "--output-dir", "--resume", "--dry-run", "--wandb", "--help"):
        assert flag in text
