"""run_training.sh on a fake GPU box: every preflight failure, the exact prime-rl command, resume,
and no secret in any output or file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fixtures.scripts.fakebox import PIN, REPO, FakeBox, all_text
from tests.fixtures.scripts.run_dir import fake_run, read_steps, records, write_log

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
    """prime-rl launches, with the dry run's scratch output dir written as DRY."""
    calls = [c for c in box.calls("uv") if c.startswith("run rl ")]
    return [
        re.sub(r"--output-dir \S*calibrated-qa-dry-run\.\w+ ", "--output-dir DRY ", c)
        for c in calls
    ]


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
    assert rl_calls(box) == [f"run rl @ {CONFIG} --output-dir DRY --wandb.offline true --dry-run"]
    assert "All checks passed" in result.stdout
    assert not out_dir(box).exists(), "a dry run leaves the run's output dir untouched"
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
        f"run rl @ {CONFIG} --output-dir DRY --wandb.offline true --dry-run",
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
    fake_run(out_dir(box), trainer=(10,), orchestrator=(10,), broadcasts=(10,))
    runs.append(train(box, "--resume", "--hf-token-file", str(token_file)))
    runs.append(
        train(box, "--move-aside", "--wandb", "online", WANDB_API_KEY="wb-secret", **OK_ENV)
    )
    runs.append(train(box, "--wandb", "online", **OK_ENV))  # fails: no W&B key
    assert [r.returncode for r in runs] == [0, 0, 0, 1], [r.stderr for r in runs]
    for result in runs:
        assert TOKEN not in result.stdout + result.stderr
        assert "wb-secret" not in result.stdout + result.stderr
    assert TOKEN not in all_text(box.root, skip={token_file})
    assert "wb-secret" not in all_text(box.root)


def test_resume_passes_the_common_step_and_moves_newer_state_aside(box: FakeBox) -> None:
    """A crash inside checkpoint 20's save window: the orchestrator wrote step 20, the trainer
    had not finished it. Both sides resume at 10, passed explicitly; step 20's state moves aside."""
    config = small_config(box, **{"batch_size = 1024": "batch_size = 16"})
    out = fake_run(
        out_dir(box),
        trainer=(10,),
        unfinished_trainer=(20,),
        orchestrator=(10, 20),
        broadcasts=(10, 19, 20),
        rollouts=tuple(range(21)),
    )
    write_log(out / "generations.jsonl", records(range(21), 16), torn='{"example_id": 3, "i"')
    # Eval rounds of 5 records: checkpoint 0's kept; 10's is evaluated again at the resumed step.
    write_log(out / "eval_generations.jsonl", records(range(0, 30, 10), 5, split="eval"))
    write_log(out / "logs" / "orchestrator.stdout", ["SUCCESS Step 0 | Reward: 0.1 |\n"])
    result = box.run(
        "run_training.sh", "--config", str(config), "--output-dir", str(out), "--resume", **OK_ENV
    )
    assert result.returncode == 0, result.stderr
    resume = "--ckpt.resume-step 10 --orchestrator.eval.skip-eval-on-resume false"
    assert rl_calls(box) == [
        f"run rl @ {config} --output-dir DRY --wandb.offline true {resume} --dry-run",
        f"run rl @ {config} --output-dir {out} --wandb.offline true {resume}",
    ]
    assert "resuming at step 10" in result.stdout
    aside = next((out / "aside").iterdir())
    assert aside.name.endswith("-resume-at-10")
    assert (aside / "run_default" / "checkpoints" / "step_20").is_dir()
    assert (aside / "checkpoints" / "step_20").is_dir()
    assert sorted(p.name for p in (aside / "run_default" / "broadcasts").iterdir()) == [
        "step_19",
        "step_20",
    ]
    # Steps 0-9 (10 x 16 records) are kept; the records of the redone steps are set aside.
    assert read_steps(out / "generations.part1.jsonl") == [s for s in range(10) for _ in range(16)]
    assert read_steps(aside / "generations.redone.jsonl") == [
        s for s in range(10, 21) for _ in range(16)
    ]
    assert read_steps(out / "eval_generations.part1.jsonl") == [0] * 5
    assert read_steps(aside / "eval_generations.redone.jsonl") == [10] * 5 + [20] * 5
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
    assert eval_lines[:5] == (out / "eval_generations.part1.jsonl").read_text().splitlines()
    assert eval_lines[5:] == ['{"n": 0}']


def test_second_resume_counts_earlier_parts(box: FakeBox) -> None:
    config = small_config(box, **{"batch_size = 1024": "batch_size = 16"})
    out = fake_run(out_dir(box), trainer=(30,), orchestrator=(20, 30), broadcasts=(30,))
    write_log(out / "generations.part1.jsonl", records(range(20), 16))
    write_log(out / "eval_generations.part1.jsonl", records(range(0, 20, 10), 5, split="eval"))
    (out / "logs.part1").mkdir()
    write_log(out / "generations.jsonl", records(range(20, 31), 16))
    write_log(out / "eval_generations.jsonl", records(range(20, 40, 10), 5, split="eval"), "{")
    result = box.run(
        "run_training.sh", "--config", str(config), "--output-dir", str(out), "--resume", **OK_ENV
    )
    assert result.returncode == 0, result.stderr
    assert read_steps(out / "generations.part2.jsonl") == [
        s for s in range(20, 30) for _ in range(16)
    ]
    assert read_steps(out / "eval_generations.part2.jsonl") == [20] * 5
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
    out = fake_run(out_dir(box), trainer=(10,), orchestrator=(10,), broadcasts=(10,))
    result = box.run(
        "run_training.sh", "--config", str(config), "--output-dir", str(out), "--resume", **OK_ENV
    )
    assert result.returncode == 0, result.stderr
    assert rl_calls(box)[-1].endswith("--wandb.offline true --ckpt.resume-step 10")


STALE = {
    "broadcasts": {"broadcasts": (1, 2)},
    "rollouts": {"rollouts": (0, 1)},
    "orchestrator ahead": {"orchestrator": (10,), "unfinished_trainer": (10,)},
}


@pytest.mark.parametrize("layout", STALE.values(), ids=STALE.keys())
def test_fresh_run_refuses_stale_state_then_moves_it_aside(box: FakeBox, layout) -> None:
    out = fake_run(out_dir(box), **layout)
    write_log(out / "eval_generations.jsonl", records(range(1), 3, split="eval"))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    refused = train(box, **OK_ENV)
    assert refused.returncode == 1
    assert "holds an earlier run's state" in refused.stderr
    assert "eval_generations.jsonl: 3 records" in refused.stderr
    assert "--resume" in refused.stderr and "--move-aside" in refused.stderr
    assert rl_calls(box) == [], "refused before prime-rl's dry run"
    moved = train(box, "--move-aside", **OK_ENV)
    assert moved.returncode == 0, moved.stderr
    (aside,) = (out / "aside").iterdir()
    assert (
        sorted(p.relative_to(aside).as_posix() for p in aside.rglob("*") if p.is_file()) == before
    )
    assert f"moved to {aside}" in moved.stdout


def test_move_aside_waits_for_every_check(box: FakeBox) -> None:
    """A failed preflight leaves the earlier run where it was."""
    out = fake_run(out_dir(box), rollouts=(0,))
    result = train(box, "--move-aside", **{**OK_ENV, "FAKE_DRYRUN_RC": "1"})
    assert result.returncode == 1
    assert not (out / "aside").exists() and (out / "run_default" / "rollouts" / "step_0").exists()


def test_resume_and_move_aside_exclude_each_other(box: FakeBox) -> None:
    result = train(box, "--resume", "--move-aside", **OK_ENV)
    assert result.returncode == 1
    assert "--resume and --move-aside exclude each other" in result.stderr


def _wrong_commit(box: FakeBox) -> None:
    (box.prime_rl / ".git" / "HEAD_SHA").write_text("0" * 40 + "\n")


def _no_venv(box: FakeBox) -> None:
    (box.prime_rl / ".venv" / "bin" / "python").unlink()


def _checkpoints(box: FakeBox) -> None:
    fake_run(out_dir(box), trainer=(10,))


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
    ("no CUDA", None, [], {**OK_ENV, "FAKE_CUDA_DEVICES": "0"}, "cannot use the GPUs"),
    ("download", None, [], {**OK_ENV, "FAKE_PREFETCH": "fail"}, "could not download"),
    (
        "wandb rejects",
        None,
        ["--wandb", "online"],
        {**OK_ENV, "WANDB_API_KEY": "k", "FAKE_WANDB": "bad"},
        "W&B rejected the API key",
    ),
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
    ("old checkpoints", _checkpoints, [], OK_ENV, "holds an earlier run's state"),
    ("nothing to resume", None, ["--resume"], OK_ENV, "no step that the trainer"),
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


def test_inference_port_in_use(box: FakeBox) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config = small_config(
            box, **{"[inference]\n": f"[inference]\nserver = {{ port = {port} }}\n"}
        )
        result = box.run("run_training.sh", "--config", str(config), **OK_ENV)
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stderr
    assert rl_calls(box) == []


def test_disk_need_is_computed_from_config_and_model(box: FakeBox) -> None:
    """Gemma 2 2B (2,614,341,888 parameters, bf16) at the reference config: ~101 GB at the peak."""
    ok = train(box, "--dry-run", **OK_ENV, FAKE_DF_KB=str(110 * 10**9 // 1024))
    assert ok.returncode == 0, ok.stderr
    assert "110 GB free" in ok.stdout and "101 GB needed" in ok.stdout
    low = train(box, "--dry-run", **OK_ENV, FAKE_DF_KB=str(95 * 10**9 // 1024))
    assert "the run needs 101 GB at its peak" in low.stderr
    smaller = train(box, "--dry-run", **OK_ENV, FAKE_MODEL_PARAMS=str(10**9))
    assert "41 GB needed" in smaller.stdout, smaller.stdout


def test_smoke_runs_the_smoke_config_then_reports(box: FakeBox) -> None:
    result = box.run("run_training.sh", "--smoke", **OK_ENV)
    smoke = REPO / "configs" / "smoke.toml"
    (call,) = [c for c in rl_calls(box) if "--dry-run" not in c]
    assert call.startswith(f"run rl @ {smoke} --output-dir {box.home}/outputs/smoke-")
    assert any(
        c.startswith("scripts/launch_checks.py smoke-report") or "smoke-report" in c
        for c in box.calls("python")
    )
    # The fake prime-rl writes no checkpoint: the report fails, naming each failed check.
    assert result.returncode == 1
    assert "FAIL final trainer checkpoint checkpoints/step_4 finished" in result.stdout
    assert "the smoke run failed a check" in result.stderr


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
