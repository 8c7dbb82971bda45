"""Checks run_training.sh and eval_model.sh make before spending GPU time.

Runs with the Python of prime-rl's venv (3.12, where calibrated-qa is installed). ``installed``
and ``hf-access`` need only the standard library, ``packaging`` and ``huggingface_hub``, so they
work where calibrated_qa is missing or stale; ``get`` and ``resume-split`` read the config through
``calibrated_qa.analysis.steps`` (the one definition of prime-rl's eval defaults and rounds;
numpy only), imported inside the functions that need it. Every subcommand prints what it found; a
failed check exits non-zero with the reason on stderr.

    launch_checks.py config CONFIG          config consistent with the environment
    launch_checks.py get CONFIG KEY         one value (see `get --help`)
    launch_checks.py env-args CONFIG [--log-dir DIR]   training env args as JSON
    launch_checks.py hf-access MODEL        the Hugging Face token can read MODEL (gated)
    launch_checks.py installed --source DIR the environment is installed from DIR, unshadowed
    launch_checks.py resume-split CONFIG DIR STEP   before --resume: keep logs of steps < STEP
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import inspect
import json
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from calibrated_qa.analysis.steps import RunShape

ENV_ID = "calibrated-qa"
PACKAGE = "calibrated_qa"
DIST = "calibrated-qa"
# The pinned stack runs the classic adapter: its verifiers range lives in the `classic` extra
# (calibrated_qa/pyproject.toml), so the installed verifiers is checked against it too.
CHECKED_EXTRAS = ("", "classic")


class CheckError(Exception):
    """A failed check; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------- config


def load_config(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CheckError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CheckError(f"{path} is not valid TOML: {exc}") from None


def _env_id(env: dict[str, Any]) -> str:
    return str(env.get("id", "")).split("@")[0]


def required_gpus(config: dict[str, Any]) -> int:
    """GPUs a single-node run uses: prime-rl's [deployment] defaults are 1 inference + 1 trainer."""
    deployment = config.get("deployment", {})
    if config.get("inference") is None:
        return int(deployment.get("num_train_gpus", 1))
    return (
        int(deployment.get("num_infer_gpus", 1))
        + int(deployment.get("num_train_gpus", 1))
        + int(deployment.get("num_teacher_gpus") or 0)
    )


def model_name(config: dict[str, Any]) -> str:
    name = config.get("model", {}).get("name")
    if not name:
        raise CheckError("the config sets no [model] name")
    return name


def train_env_args(config: dict[str, Any]) -> dict[str, Any]:
    envs = [e for e in config.get("orchestrator", {}).get("env", []) if _env_id(e) == ENV_ID]
    if len(envs) != 1:
        raise CheckError(f"expected exactly one [[orchestrator.env]] with id = {ENV_ID!r}")
    return dict(envs[0].get("args", {}))


def config_problems(config: dict[str, Any], load_environment: Any) -> list[str]:
    """Everything in ``config`` that disagrees with the environment or with itself.

    ``load_environment`` is the environment's entry point: its signature decides which
    arguments exist and what the defaults are (``max_tokens`` left out means its default).
    """
    problems: list[str] = []
    signature = inspect.signature(load_environment)
    orch = config.get("orchestrator", {})

    batch_size = orch.get("batch_size")
    rollouts = orch.get("rollouts_per_example")
    if not isinstance(batch_size, int) or not isinstance(rollouts, int):
        problems.append("set [orchestrator] batch_size and rollouts_per_example explicitly")
    elif rollouts <= 0 or batch_size % rollouts != 0:
        problems.append(
            f"[orchestrator] batch_size ({batch_size}) is total rollouts per step and must be a "
            f"multiple of rollouts_per_example ({rollouts})"
        )

    eval_cfg = orch.get("eval")
    groups = [("orchestrator.env", orch.get("env", []), orch.get("sampling", {}))]
    if eval_cfg is not None:
        eval_envs = eval_cfg.get("env", [])
        groups.append(("orchestrator.eval.env", eval_envs, eval_cfg.get("sampling", {})))

    if eval_cfg is not None and not eval_cfg.get("env"):
        problems.append(
            "[orchestrator.eval] has no [[orchestrator.eval.env]]: prime-rl would evaluate its "
            "default environment"
        )
    if not any(_env_id(e) == ENV_ID for e in orch.get("env", [])):
        problems.append(f"no [[orchestrator.env]] with id = {ENV_ID!r}")
    for table, envs, sampling in groups:
        sampler_max = sampling.get("max_tokens")
        sampling_table = table.rsplit(".", 1)[0] + ".sampling"
        for env in envs:
            if _env_id(env) != ENV_ID:
                problems.append(f"[[{table}]] id {env.get('id')!r}: only {ENV_ID!r} is supported")
                continue
            args = env.get("args", {})
            try:
                bound = signature.bind(**args)
            except TypeError as exc:
                unknown = sorted(set(args) - set(signature.parameters))
                problems.append(
                    f"[[{table}]] args rejected by load_environment: {exc}"
                    + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                )
                continue
            bound.apply_defaults()
            if "log_dir" in args:
                problems.append(
                    f"[[{table}]] sets log_dir: leave it out, run_training.sh points "
                    "CALIBRATED_QA_LOG_DIR at the run's output directory"
                )
            env_max = bound.arguments["max_tokens"]
            if sampler_max is None:
                problems.append(
                    f"[{sampling_table}] max_tokens is not set: it must equal the "
                    f"environment's max_tokens ({env_max})"
                )
            elif sampler_max != env_max:
                problems.append(
                    f"[[{table}]] max_tokens = {env_max} (the length penalty's M) differs from "
                    f"[{sampling_table}] max_tokens = {sampler_max}: set both to the same value"
                )
    return problems


# --------------------------------------------------------------------------- installed copy


def _package_files(root: Path) -> dict[str, bytes]:
    """The .py files of the package as the wheel ships them (``*.py`` and ``analysis/*.py``)."""
    files = list(root.glob("*.py")) + list(root.glob("analysis/*.py"))
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in files}


def _source_version(source: Path) -> str:
    with open(source / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def installed_problems(source: Path, purelib: Path, search_path: list[Path]) -> list[str]:
    """Why the copy Python would import from ``search_path`` is not this checkout's build.

    ``source`` is the checkout's package folder, ``purelib`` the venv's site-packages and
    ``search_path`` the import path in order (``sys.path`` for the real check).
    """
    from packaging.requirements import Requirement

    problems: list[str] = []
    source = source.resolve()
    purelib = purelib.resolve()
    expected = _source_version(source)

    spec = importlib.machinery.PathFinder.find_spec(PACKAGE, [str(p) for p in search_path])
    if spec is None or spec.origin is None:
        return [f"{PACKAGE} is not importable: install it (uv pip install ... {source})"]
    origin = Path(spec.origin).resolve()
    if origin.parent == source or source in origin.parents:
        problems.append(
            f"{PACKAGE} is imported from the checkout itself ({origin}): an editable install or "
            "the working directory is on sys.path; install it non-editable"
        )
    elif origin.name != "__init__.py" or origin.parent.parent != purelib:
        problems.append(
            f"{PACKAGE} resolves to {origin}, not to {purelib / PACKAGE}: a stale or foreign "
            "copy shadows the installed package; remove it"
        )

    # Leftovers anywhere on the path: flat modules, editable hooks, second packages.
    for entry in search_path:
        if not entry.is_dir():
            continue
        for item in entry.iterdir():
            name = item.name
            if item.resolve() == purelib / PACKAGE:
                continue
            flat = name in (f"{PACKAGE}.py", PACKAGE) or name.startswith(f"{PACKAGE}.")
            hook = name.endswith(".pth") and PACKAGE in name
            if (flat and not name.endswith(".dist-info")) or hook:
                problems.append(f"stale copy or editable hook on the import path: {item}")

    dists = [
        d
        for d in importlib.metadata.distributions(path=[str(purelib)])
        if d.metadata["Name"] and d.metadata["Name"].lower().replace("_", "-") == DIST
    ]
    if len(dists) != 1:
        problems.append(
            f"expected one {DIST} distribution in {purelib}, found {len(dists)}: reinstall it"
        )
    else:
        dist = dists[0]
        if dist.version != expected:
            problems.append(
                f"installed {DIST} is version {dist.version}, this checkout is {expected}"
            )
        installed_versions = {
            (d.metadata["Name"] or "").lower().replace("_", "-"): d.version
            for d in importlib.metadata.distributions(path=[str(p) for p in search_path])
        }
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in CHECKED_EXTRAS
            ):
                continue
            have = installed_versions.get(req.name.lower().replace("_", "-"))
            if have is None or not req.specifier.contains(have, prereleases=True):
                needed = f"{req.name}{req.specifier}"
                problems.append(f"{DIST} requires {needed}, installed: {have or 'nothing'}")

    if origin.name == "__init__.py" and not problems:
        ours, theirs = _package_files(source), _package_files(origin.parent)
        changed = sorted(k for k in ours if ours[k] != theirs.get(k))
        extra = sorted(set(theirs) - set(ours))
        if changed or extra:
            problems.append(
                "the installed files differ from this checkout "
                f"(changed/missing: {changed or '-'}, not in checkout: {extra or '-'}): "
                "reinstall with --reinstall-package calibrated-qa"
            )
    return problems


# --------------------------------------------------------------------------- resume


def run_shape(config: dict[str, Any], source: str) -> RunShape:
    """The config's ``RunShape``: ``calibrated_qa.analysis.steps`` is the one reader of its keys.

    Imported here, not at the top, so the stdlib-only checks (``installed``, ``hf-access``) run
    where calibrated_qa is missing or stale.
    """
    from calibrated_qa.analysis.readers import AnalysisInputError
    from calibrated_qa.analysis.steps import run_shape_from_dict

    try:
        return run_shape_from_dict(config, source)
    except AnalysisInputError as exc:
        raise CheckError(str(exc)) from None


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def _kept_parts(out: Path, stem: str) -> list[Path]:
    parts = [p for p in out.glob(f"{stem}.part*.jsonl") if not p.name.endswith(".redone.jsonl")]
    return sorted(parts, key=lambda p: int(p.name[len(stem) + 5 : -6]))


def _split(out: Path, stem: str, part: int, keep_total: int, what: str) -> str | None:
    """Keep the first ``keep_total`` records of the run (earlier parts count) as ``stem.partK``."""
    current = out / f"{stem}.jsonl"
    lines = _lines(current)
    if not lines:
        return None
    previous = sum(len(_lines(p)) for p in _kept_parts(out, stem))
    keep = max(keep_total - previous, 0)
    kept, redone = lines[:keep], lines[keep:]
    (out / f"{stem}.part{part}.jsonl").write_bytes(b"".join(kept))
    (out / f"{stem}.part{part}.redone.jsonl").write_bytes(b"".join(redone))
    current.unlink()
    message = (
        f"{stem}.jsonl: {len(kept)} records of {what} kept as {stem}.part{part}.jsonl, "
        f"{len(redone)} set aside as {stem}.part{part}.redone.jsonl"
    )
    if len(kept) < keep:
        message += f" (WARNING: expected {keep}; the analysis will misattribute steps)"
    return message


def resume_split(
    config: dict[str, Any], out: Path, step: int, source: str = "the config"
) -> list[str]:
    """Before resuming at checkpoint ``step``: keep the logs of earlier steps, set aside the rest.

    prime-rl reopens ``logs/*.stdout`` with mode "w" (entrypoints/rl.py), so ``logs/`` moves to
    ``logs.partK/``. The training log keeps ``step x batch_size`` records (earlier parts count);
    the eval log keeps the complete rounds of the checkpoints before ``step`` (all finished
    before checkpoint ``step`` was written); the resumed run (with skip_eval_on_resume = false)
    evaluates checkpoint ``step`` again when it is an eval step. Later records go to
    ``*.partK.redone.jsonl``. K is the first number no part uses yet.
    """
    part = 1
    while any(
        (out / name).exists()
        for name in (
            f"generations.part{part}.jsonl",
            f"eval_generations.part{part}.jsonl",
            f"logs.part{part}",
        )
    ):
        part += 1
    messages = []
    if (out / "logs").is_dir():
        (out / "logs").rename(out / f"logs.part{part}")
        messages.append(
            f"logs/ of the interrupted run moved to logs.part{part}/ (prime-rl overwrites logs/)"
        )
    from calibrated_qa.analysis.steps import eval_rounds_before

    shape = run_shape(config, source)
    if shape.batch_size is None:
        raise CheckError("[orchestrator] batch_size is not set")
    message = _split(out, "generations", part, step * shape.batch_size, f"steps < {step}")
    if message:
        messages.append(message)
    eval_log = out / "eval_generations.jsonl"
    if shape.has_eval and _lines(eval_log):
        rounds = eval_rounds_before(step, shape.eval_interval, base_model=shape.eval_base_model)
        size = shape.eval_size
        if size is None:  # the whole eval set (num_examples = -1): its size is not in the config
            ids = set()
            for path in [*_kept_parts(out, "eval_generations"), eval_log]:
                for line in _lines(path):
                    try:
                        ids.add(json.loads(line)["example_id"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line
            size = len(ids) * shape.eval_rollouts_per_example
        what = f"{rounds} eval round(s) of {size} (checkpoints < {step})"
        messages.append(_split(out, "eval_generations", part, rounds * size, what) or "")
    return [m for m in messages if m]


# --------------------------------------------------------------------------- Hugging Face


def hf_access(model: str) -> str:
    """Read access of the current token (HF_TOKEN or the cached login) to ``model``.

    Asks the Hub every time (``auth_check``), so a revoked token or an unaccepted licence is
    caught even when the model is already in the local cache. The token is never printed.
    """
    import huggingface_hub
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if not huggingface_hub.get_token():
        raise CheckError("no Hugging Face token (HF_TOKEN, --hf-token-file or `hf auth login`)")
    try:
        huggingface_hub.auth_check(model)
    except GatedRepoError:
        raise CheckError(
            f"the token has no access to the gated model {model}: accept its licence at "
            f"https://huggingface.co/{model} with the account that owns the token"
        ) from None
    except RepositoryNotFoundError:
        raise CheckError(f"{model} not found, or the token is invalid") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", "?")
        raise CheckError(f"Hugging Face refused the request for {model} (HTTP {status})") from None
    except Exception as exc:  # network errors come from several libraries
        reason = type(exc).__name__
        raise CheckError(f"could not ask huggingface.co about {model}: {reason}") from None
    return f"token can read {model}"


# --------------------------------------------------------------------------- CLI


def _load_environment() -> Any:
    from calibrated_qa.environment import load_environment

    return load_environment


def _cmd_config(ns: argparse.Namespace) -> str:
    config = load_config(ns.config)
    problems = config_problems(config, _load_environment())
    if problems:
        raise CheckError("\n".join(f"{ns.config}: {p}" for p in problems))
    orch = config["orchestrator"]
    return (
        f"{ns.config}: consistent with load_environment (batch_size={orch['batch_size']}, "
        f"rollouts_per_example={orch['rollouts_per_example']}, "
        f"max_tokens={orch['sampling']['max_tokens']}, gpus={required_gpus(config)})"
    )


def _cmd_get(ns: argparse.Namespace) -> str:
    config = load_config(ns.config)
    if ns.key == "model":
        return model_name(config)
    if ns.key == "required_gpus":
        return str(required_gpus(config))
    shape = run_shape(config, ns.config)
    if ns.key == "has_eval":
        return "true" if shape.has_eval else "false"
    if ns.key == "batch_size":
        return str(shape.batch_size)
    if ns.key == "max_steps":
        if shape.max_steps is None:
            raise CheckError(f"{ns.config}: max_steps is not set")
        return str(shape.max_steps)
    if shape.max_tokens is None:
        raise CheckError(f"{ns.config}: [orchestrator.sampling] max_tokens is not set")
    return str(shape.max_tokens)


def _cmd_env_args(ns: argparse.Namespace) -> str:
    args = train_env_args(load_config(ns.config))
    if ns.log_dir:
        args["log_dir"] = ns.log_dir
    return json.dumps(args, sort_keys=True)


def _cmd_installed(ns: argparse.Namespace) -> str:
    source = Path(ns.source)
    purelib = Path(sysconfig.get_paths()["purelib"])
    search = [Path(p or ".").resolve() for p in sys.path]
    problems = installed_problems(source, purelib, search)
    if problems:
        raise CheckError("\n".join(problems))
    import calibrated_qa

    versions = {d: importlib.metadata.version(d) for d in ("verifiers", "datasets")}
    return (
        f"{calibrated_qa.__file__} {calibrated_qa.__version__} "
        f"(verifiers {versions['verifiers']}, datasets {versions['datasets']})"
    )


def _cmd_resume_split(ns: argparse.Namespace) -> str:
    lines = resume_split(load_config(ns.config), Path(ns.output_dir), ns.step, ns.config)
    return "\n".join(lines) or "nothing to split"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="config consistent with load_environment")
    p.add_argument("config")
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("get", help="one value of a config")
    p.add_argument("config")
    p.add_argument(
        "key",
        choices=["model", "batch_size", "max_tokens", "max_steps", "required_gpus", "has_eval"],
    )
    p.set_defaults(func=_cmd_get)
    p = sub.add_parser("env-args", help="training env args of a config, as JSON")
    p.add_argument("config")
    p.add_argument("--log-dir")
    p.set_defaults(func=_cmd_env_args)
    p = sub.add_parser("hf-access", help="the Hugging Face token can read a (gated) model")
    p.add_argument("model")
    p.set_defaults(func=lambda ns: hf_access(ns.model))
    p = sub.add_parser("installed", help="environment installed from this checkout, unshadowed")
    p.add_argument("--source", required=True, help="the checkout's calibrated_qa/ folder")
    p.set_defaults(func=_cmd_installed)
    p = sub.add_parser("resume-split", help="before --resume: keep the logs of steps < STEP")
    p.add_argument("config")
    p.add_argument("output_dir")
    p.add_argument("step", type=int, help="the checkpoint step the run resumes from")
    p.set_defaults(func=_cmd_resume_split)
    ns = parser.parse_args(argv)
    try:
        print(ns.func(ns))
    except CheckError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
