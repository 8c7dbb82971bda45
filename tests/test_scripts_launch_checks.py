"""scripts/launch_checks.py: the installed-copy check (stale, shadowing, editable, version,
requirements) on constructed site-packages, and on a real non-editable uv install."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.launch_checks import installed_problems, main

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "calibrated_qa"
VERSION = "0.1.0"


def copy_source(dest: Path) -> Path:
    """A copy of the checkout's package folder (the tests edit it, never the checkout)."""
    shutil.copytree(SOURCE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def dist_info(site: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (folder / "METADATA").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """site-packages as `uv pip install --no-deps calibrated_qa/` leaves it, deps present."""
    site = tmp_path / "site-packages"
    site.mkdir()
    pkg = site / "calibrated_qa"
    pkg.mkdir()
    for f in SOURCE.glob("*.py"):  # the wheel holds the environment only, not analysis/
        (pkg / f.name).write_bytes(f.read_bytes())
    reqs = (
        "datasets>=3.0",
        "verifiers<0.2,>=0.1.12.dev1; extra == 'classic'",
        "verifiers<0.5,>=0.3.1.dev62; extra == 'v1'",
    )
    dist_info(site, "calibrated-qa", VERSION, reqs)
    dist_info(site, "verifiers", "0.1.12.dev1")
    dist_info(site, "datasets", "4.0.0")
    return site


def test_clean_install_passes(site: Path) -> None:
    assert installed_problems(SOURCE, site, [site]) == []


def test_stale_file_is_found(site: Path) -> None:
    (site / "calibrated_qa" / "reward.py").write_text("# an older build\n")
    (site / "calibrated_qa" / "calibrated_qa.py").write_text("# the old flat module\n")
    (problem,) = installed_problems(SOURCE, site, [site])
    assert "reward.py" in problem and "calibrated_qa.py" in problem


def test_shadowing_copy_earlier_on_the_path(site: Path, tmp_path: Path) -> None:
    shadow = tmp_path / "cwd"
    shadow.mkdir()
    (shadow / "calibrated_qa.py").write_text("")
    problems = " | ".join(installed_problems(SOURCE, site, [shadow, site]))
    assert "shadows the installed package" in problems
    assert f"stale copy or editable hook on the import path: {shadow}/calibrated_qa.py" in problems


def test_editable_install_is_refused(site: Path, tmp_path: Path) -> None:
    shutil.rmtree(site / "calibrated_qa")
    (site / "_calibrated_qa.pth").write_text(str(REPO) + "\n")
    problems = " | ".join(installed_problems(SOURCE, site, [site, REPO]))
    assert "imported from the checkout itself" in problems
    assert "_calibrated_qa.pth" in problems


def test_version_and_requirements(site: Path) -> None:
    shutil.rmtree(site / "verifiers-0.1.12.dev1.dist-info")
    dist_info(site, "verifiers", "0.4.0")  # the dependency trap: an "upgraded" verifiers
    shutil.rmtree(site / "calibrated_qa-0.1.0.dist-info")
    dist_info(site, "calibrated-qa", "0.0.9", ("verifiers<0.2,>=0.1.12.dev1; extra == 'classic'",))
    problems = " | ".join(installed_problems(SOURCE, site, [site]))
    assert "version 0.0.9, this checkout is 0.1.0" in problems
    assert "requires verifiers<0.2,>=0.1.12.dev1, installed: 0.4.0" in problems


def test_not_installed(tmp_path: Path) -> None:
    (problem,) = installed_problems(SOURCE, tmp_path, [tmp_path])
    assert "not importable" in problem


def test_real_uv_install_then_edit_then_reinstall(tmp_path: Path) -> None:
    """uv builds and installs the package non-editable; an edit is caught until reinstalled."""
    source = copy_source(tmp_path / "src" / "calibrated_qa")
    site = tmp_path / "site"
    deps = tmp_path / "deps"
    dist_info(deps, "verifiers", "0.1.12.dev1")
    dist_info(deps, "datasets", "4.0.0")

    def install() -> None:
        subprocess.run(
            [
                "uv",
                "pip",
                "install",
                "--no-deps",
                "--reinstall-package",
                "calibrated-qa",
                "--target",
                str(site),
                str(source),
            ],
            check=True,
            capture_output=True,
        )

    install()
    assert installed_problems(source, site, [site, deps]) == []
    with (source / "reward.py").open("a") as f:
        f.write("\n# edited after the install\n")
    (problem,) = installed_problems(source, site, [site, deps])
    assert "reward.py" in problem
    install()
    assert installed_problems(source, site, [site, deps]) == []


def test_cli_get_and_env_args(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(REPO / "configs" / "calibrated_qa_gemma2_2b_no_passage.toml")
    assert main(["get", config, "max_tokens"]) == 0
    assert main(["get", config, "required_gpus"]) == 0
    assert main(["get", config, "port"]) == 0
    assert main(["env-args", config, "--log-dir", "/tmp/eval"]) == 0
    assert main(["get", "/nonexistent.toml", "model"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "512",
        "2",
        "8000",  # prime-rl's default inference port (configs/inference.py)
        '{"include_passage": false, "length_unit": "chars", "log_dir": "/tmp/eval", '
        '"max_tokens": 512}',
    ]
    assert "/nonexistent.toml: no such config file" in err


def test_eval_rounds_before_a_resumed_step(capsys: pytest.CaptureFixture[str]) -> None:
    """prepare-resume counts the eval rounds a resume keeps with run_config's rule and defaults."""
    from calibrated_qa.run_config import parse_run_config

    def schedule(**eval_table: object):
        table = {"env": [{"id": "calibrated-qa"}], **eval_table}
        return parse_run_config({"orchestrator": {"eval": table}}, "c.toml").eval

    # Base model + every 10 steps: rounds 0 | 0, 10 | 0, 10 before steps 10, 15, 20.
    every10 = schedule(interval=10)
    assert [every10.rounds_before(s) for s in (0, 10, 15, 20)] == [0, 1, 2, 2]
    no_base = schedule(interval=10, eval_base_model=False)
    assert [no_base.rounds_before(s) for s in (10, 15, 20)] == [0, 1, 1]
    # prime-rl's EvalConfig defaults apply to keys a config leaves out; no table, no eval.
    default = schedule()
    assert (default.interval, default.base_model) == (100, True)
    assert (default.round_size, default.rollouts_per_example) == (None, 1)  # num_examples -1
    assert parse_run_config({"orchestrator": {}}, "c.toml").eval is None
    config = str(REPO / "configs" / "calibrated_qa_gemma2_2b.toml")
    assert main(["get", config, "has_eval"]) == 0
    assert main(["get", config, "batch_size"]) == 0
    assert main(["get", config, "max_steps"]) == 0
    assert capsys.readouterr().out.splitlines() == ["true", "1024", "50"]


def test_invalid_value_is_a_check_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[orchestrator]\nbatch_size = 8\n[orchestrator.eval]\ninterval = 0\n")
    assert main(["get", str(bad), "has_eval"]) == 1
    assert main(["prepare-resume", str(bad), str(tmp_path), "10"]) == 1
    err = capsys.readouterr().err
    assert err.count(f"{bad}: [orchestrator.eval] interval must be a positive integer, got 0") == 2
    assert list(tmp_path.iterdir()) == [bad]  # nothing moved on a bad config


def test_installed_check_without_calibrated_qa(tmp_path: Path) -> None:
    """The installed check runs where calibrated_qa cannot be imported at all (before install)."""
    code = (
        "import sys; sys.modules['calibrated_qa'] = None\n"
        "from pathlib import Path\n"
        "from launch_checks import installed_problems\n"
        f"print(installed_problems(Path({str(SOURCE)!r}), Path({str(tmp_path)!r}), []))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO / "scripts",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "calibrated_qa is not importable" in done.stdout
