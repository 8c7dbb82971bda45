"""Installing the environment into a venv like prime-rl's must leave verifiers at 0.1.12.dev1.

The trap (SPEC): an environment requiring ``verifiers>=0.1.12`` makes uv "upgrade" the pinned
pre-release to 0.4.0, which dropped the classic API, and training breaks. This test builds a venv
holding verifiers==0.1.12.dev1 from PyPI and installs the package the way run_training.sh does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PINNED = "0.1.12.dev1"

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")


def uv(*args: str) -> str:
    # From a neutral folder: `uv pip` reads [tool.uv] of a pyproject.toml in its working
    # directory, and this repository's constraints must not steer the venv under test.
    result = subprocess.run(
        ["uv", *args], capture_output=True, text=True, cwd="/", check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def installed_version(python: Path, package: str) -> str:
    return subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def prime_like_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<prime-rl>/.venv/bin/python`` of a venv that holds verifiers at prime-rl's pin."""
    venv = tmp_path_factory.mktemp("prime-rl") / ".venv"
    uv("venv", "--quiet", "--python", sys.executable, str(venv))
    python = venv / "bin" / "python"
    uv("pip", "install", "--quiet", "--python", str(python), f"verifiers=={PINNED}")
    assert installed_version(python, "verifiers") == PINNED
    return python


def assert_environment_loads(python: Path) -> None:
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import calibrated_qa, verifiers as vf; "
            "env = vf.load_environment('calibrated-qa', dataset_name='x'); "
            "print(calibrated_qa.__file__, calibrated_qa.__version__, "
            "isinstance(env, vf.SingleTurnEnv))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout
    assert "site-packages/calibrated_qa/__init__.py" in out
    assert out.split()[-1] == "True"  # a classic vf.SingleTurnEnv


def test_the_launch_scripts_install_keeps_the_pinned_verifiers(prime_like_venv: Path) -> None:
    """``install_environment`` of scripts/common.sh, exactly as setup/run_training call it."""
    prime_rl_dir = prime_like_venv.parent.parent.parent
    subprocess.run(
        [
            "bash",
            "-c",
            'source scripts/common.sh && install_environment "$1" "$2"',
            "-",
            str(prime_rl_dir),
            str(REPO),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert installed_version(prime_like_venv, "verifiers") == PINNED
    assert_environment_loads(prime_like_venv)
    # The environment only: the analysis (numpy, matplotlib) never enters prime-rl's venv.
    site = next(prime_like_venv.parent.parent.glob("lib/python3*/site-packages"))
    shipped = sorted(p.name for p in (site / "calibrated_qa").iterdir() if p.name != "__pycache__")
    assert "analysis" not in shipped and "reward.py" in shipped, shipped


def test_a_plain_install_with_dependencies_keeps_it_too(prime_like_venv: Path) -> None:
    """An install with dependencies and the classic extra is safe as well: it admits the pin."""
    python = prime_like_venv
    uv(
        "pip",
        "install",
        "--python",
        str(python),
        "--reinstall-package",
        "calibrated-qa",
        f"{REPO / 'calibrated_qa'}[classic]",
    )
    assert installed_version(python, "verifiers") == PINNED
    assert_environment_loads(python)


def test_a_naive_requirement_would_upgrade_it(prime_like_venv: Path) -> None:
    """Negative control: the requirement the original recipe used really does move verifiers."""
    plan = uv("pip", "install", "--dry-run", "--python", str(prime_like_venv), "verifiers>=0.1.12")
    assert f"- verifiers=={PINNED}" in plan


def test_lock_holds_prime_rl_versions_of_the_verifiers_runtime() -> None:
    """pyproject pins verifiers' runtime closure to prime-rl 6cae5cc's lock; uv.lock honours it."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    constraints = dict(c.split("==") for c in project["tool"]["uv"]["constraint-dependencies"])
    assert {"verifiers", "openai", "datasets"} <= set(
        d.split("==")[0] for d in project["project"]["dependencies"] if "==" in d
    )
    assert {"pydantic", "numpy", "pyzmq", "msgpack", "anthropic"} <= set(constraints)
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    assert locked["verifiers"] == PINNED
    for name, version in constraints.items():
        assert locked[name] == version, f"{name}: locked {locked[name]}, prime-rl locks {version}"
