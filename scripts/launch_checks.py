"""Checks run_training.sh and eval_model.sh make before spending GPU time, and the run-state steps.

Runs with the Python of prime-rl's venv (3.12), after run_training.sh has installed this
checkout's calibrated-qa there (``installed`` runs before that is verified, with the standard
library and ``packaging`` only). The config is read by ``calibrated_qa.run_config``; the output
directory's state by ``run_state.py``; the disk need by ``disk_need.py`` (both beside this file).
Nothing here imports the analysis. Every subcommand prints what it found; a failed check exits 1
with the reason on stderr, and never prints a secret.

    config CONFIG               config consistent with load_environment, then its summary
    get CONFIG KEY              one value (model, required_gpus, has_eval, max_steps, port, ...)
    env-args CONFIG [--log-dir DIR]   the training environment's args as JSON
    installed --source DIR      the environment is installed from DIR, unshadowed
    cuda N                      torch in this venv sees N CUDA devices
    port PORT                   nothing listens on PORT (prime-rl's inference server)
    hf-access MODEL             the Hugging Face token can read MODEL (gated)
    prefetch MODEL DATASET      model and BoolQ into the Hugging Face cache; prints the model dir
    disk-need CONFIG MODEL_DIR  the peak disk the run needs (GB, formula in disk_need.py)
    wandb                       W&B accepts the API key (WANDB_API_KEY or ~/.netrc)
    fresh DIR [--move-aside]    no earlier run's state in DIR (or move it aside)
    resume-step DIR             the step both sides can resume from
    prepare-resume CONFIG DIR STEP   move aside what is newer than STEP; split the logs
    prune-broadcasts DIR --parent PID   delete broadcasts no resume needs, until PID exits
    smoke-report CONFIG DIR RESULTS   per-step times, measured sizes, one line per check
"""

from __future__ import annotations

import argparse
import base64
import importlib.machinery
import importlib.metadata
import inspect
import json
import netrc
import os
import socket
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import disk_need
import run_state

ENV_ID = "calibrated-qa"
PACKAGE = "calibrated_qa"
DIST = "calibrated-qa"
# The pinned stack runs the classic adapter: its verifiers range lives in the `classic` extra
# (calibrated_qa/pyproject.toml), so the installed verifiers is checked against it too.
CHECKED_EXTRAS = ("", "classic")


class CheckError(Exception):
    """A failed check; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------- config


def read_config(path: str | Path) -> Any:
    from calibrated_qa.run_config import RunConfigError, read_run_config

    try:
        return read_run_config(path)
    except RunConfigError as exc:
        raise CheckError(str(exc)) from None


def config_problems(config: Any, load_environment: Any) -> list[str]:
    """Everything in ``config`` (a ``RunConfig``) that disagrees with the environment or itself.

    ``load_environment``'s signature decides which arguments exist and what the defaults are
    (``max_tokens`` left out means its default); the sampler's ``max_tokens`` must equal the
    environment's M (the environment refuses a mismatch at its first rollout; this finds it
    before the GPUs start).
    """
    problems: list[str] = []
    signature = inspect.signature(load_environment)
    batch, rollouts = config.batch_size, config.rollouts_per_example
    if batch is None or rollouts is None:
        problems.append("set [orchestrator] batch_size and rollouts_per_example explicitly")
    elif batch % rollouts:
        problems.append(
            f"[orchestrator] batch_size ({batch}) is total rollouts per step and must be a "
            f"multiple of rollouts_per_example ({rollouts})"
        )
    groups = [("orchestrator.env", config.envs, config.max_tokens)]
    if config.eval is not None:
        groups.append(("orchestrator.eval.env", config.eval.envs, config.eval.max_tokens))
        if not config.eval.envs:
            problems.append(
                "[orchestrator.eval] has no [[orchestrator.eval.env]]: prime-rl would evaluate "
                "its default environment"
            )
    if not any(e.id == ENV_ID for e in config.envs):
        problems.append(f"no [[orchestrator.env]] with id = {ENV_ID!r}")
    for table, envs, sampler_max in groups:
        sampling_table = table.rsplit(".", 1)[0] + ".sampling"
        for env in envs:
            if env.id != ENV_ID:
                problems.append(f"[[{table}]] id {env.id!r}: only {ENV_ID!r} is supported")
                continue
            try:
                bound = signature.bind(**env.args)
            except TypeError as exc:
                unknown = sorted(set(env.args) - set(signature.parameters))
                problems.append(
                    f"[[{table}]] args rejected by load_environment: {exc}"
                    + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                )
                continue
            bound.apply_defaults()
            if "log_dir" in env.args:
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


def _cmd_config(ns: argparse.Namespace) -> str:
    from calibrated_qa.environment import load_environment

    config = read_config(ns.config)
    problems = config_problems(config, load_environment)
    if problems:
        raise CheckError("\n".join(f"{ns.config}: {p}" for p in problems))
    return (
        f"{ns.config}: consistent with load_environment (batch_size={config.batch_size}, "
        f"rollouts_per_example={config.rollouts_per_example}, max_tokens={config.max_tokens}, "
        f"max_steps={config.max_steps}, gpus={config.required_gpus}, "
        f"env workers={config.env_workers})"
    )


GET_KEYS = {
    "model": lambda c: c.model,
    "required_gpus": lambda c: c.required_gpus,
    "has_eval": lambda c: "true" if c.eval is not None else "false",
    "batch_size": lambda c: c.batch_size,
    "max_steps": lambda c: c.max_steps,
    "max_tokens": lambda c: c.max_tokens,
    "port": lambda c: c.inference_port,
}


def _cmd_env_args(ns: argparse.Namespace) -> str:
    config = read_config(ns.config)
    try:
        args = dict(config.train_env().args)
    except ValueError as exc:
        raise CheckError(str(exc)) from None
    if ns.log_dir:
        args["log_dir"] = ns.log_dir
    return json.dumps(args, sort_keys=True)


def _cmd_get(ns: argparse.Namespace) -> str:
    value = GET_KEYS[ns.key](read_config(ns.config))
    if value is None:
        raise CheckError(f"{ns.config}: {ns.key} is not set")
    return str(value)


# --------------------------------------------------------------------------- installed copy


def _package_files(root: Path) -> dict[str, bytes]:
    """The .py files of the package as the wheel ships them."""
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in root.glob("*.py")}


def installed_problems(source: Path, purelib: Path, search_path: list[Path]) -> list[str]:
    """Why the copy Python would import from ``search_path`` is not this checkout's build.

    ``source`` is the checkout's package folder, ``purelib`` the venv's site-packages and
    ``search_path`` the import path in order (``sys.path`` for the real check).
    """
    from packaging.requirements import Requirement

    problems: list[str] = []
    source = source.resolve()
    purelib = purelib.resolve()
    with open(source / "pyproject.toml", "rb") as f:
        expected = tomllib.load(f)["project"]["version"]

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


def _cmd_installed(ns: argparse.Namespace) -> str:
    purelib = Path(sysconfig.get_paths()["purelib"])
    search = [Path(p or ".").resolve() for p in sys.path]
    problems = installed_problems(Path(ns.source), purelib, search)
    if problems:
        raise CheckError("\n".join(problems))
    import calibrated_qa

    versions = {d: importlib.metadata.version(d) for d in ("verifiers", "datasets")}
    return (
        f"{calibrated_qa.__file__} {calibrated_qa.__version__} "
        f"(verifiers {versions['verifiers']}, datasets {versions['datasets']})"
    )


# --------------------------------------------------------------------------- GPU, port


def cuda_devices(need: int) -> str:
    """torch of this venv sees ``need`` CUDA devices: a driver too old for its CUDA fails here,
    in seconds, instead of inside vLLM and the trainer a minute or two into the run."""
    try:
        import torch
    except ImportError as exc:
        raise CheckError(f"torch is not importable in this venv ({exc}): rerun setup") from None
    built = torch.version.cuda
    if not torch.cuda.is_available():
        raise CheckError(
            f"torch {torch.__version__} (CUDA {built}) sees no CUDA device: the driver may be "
            "older than that CUDA (nvidia-smi shows the driver's CUDA), or CUDA_VISIBLE_DEVICES "
            "hides the GPUs"
        )
    count = torch.cuda.device_count()
    if count < need:
        raise CheckError(f"torch sees {count} CUDA device(s), the config needs {need}")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(need))
    return f"torch {torch.__version__} (CUDA {built}) sees {count} device(s): {names}"


def port_free(port: int) -> str:
    """Nothing listens on ``port``: vLLM would fail to bind it after loading the model."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise CheckError(
                f"port {port} is in use (prime-rl's inference server binds it): stop the process "
                f"listening on it (e.g. a previous run's vLLM: `fuser -k {port}/tcp`), or set "
                "[inference.server] port in the config"
            )
    return f"port {port} is free"


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


MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def prefetch(model: str, dataset: str) -> str:
    """Download the model and BoolQ's splits into the Hugging Face cache, before any GPU work.

    vLLM, the trainer and every env-server worker then read the cache; a download problem
    (network, gated repo, full disk) fails here, first. The dataset goes through the
    environment's own loader, so the cache entry is the one training hits.
    """
    import huggingface_hub

    from calibrated_qa.data import is_local, load_split

    try:
        path = huggingface_hub.snapshot_download(model, allow_patterns=MODEL_FILES)
    except Exception as exc:
        raise CheckError(f"could not download {model}: {type(exc).__name__}: {exc}") from None
    if not is_local(dataset):
        for split in ("train", "validation"):
            try:
                load_split(dataset, split)
            except Exception as exc:
                raise CheckError(f"could not load {dataset} ({split}): {exc}") from None
    return path


def _cmd_disk_need(ns: argparse.Namespace) -> str:
    config = read_config(ns.config)
    try:
        need = disk_need.disk_need(config, disk_need.model_size(Path(ns.model_dir)))
    except disk_need.DiskNeedError as exc:
        raise CheckError(str(exc)) from None
    print("\n".join(need.lines), file=sys.stderr)
    return str(need.need_gb)


# --------------------------------------------------------------------------- W&B


def wandb_key() -> str | None:
    """The key wandb itself would use: WANDB_API_KEY, else the api.wandb.ai entry of ~/.netrc."""
    if key := os.environ.get("WANDB_API_KEY"):
        return key
    try:
        auth = netrc.netrc().authenticators(_wandb_host())
    except (FileNotFoundError, netrc.NetrcParseError):
        return None
    return auth[2] if auth else None


def _wandb_host() -> str:
    """The ~/.netrc machine `wandb login` writes: the API host without its port."""
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    return urllib.parse.urlparse(base).hostname or base


def wandb_check(timeout: float = 20.0) -> str:
    """Ask W&B's API who the key belongs to: a wrong key fails now, not at the trainer's init."""
    key = wandb_key()
    if not key:
        raise CheckError(
            "--wandb online needs WANDB_API_KEY in the environment or a `wandb login`; "
            "or use --wandb offline and `wandb sync` the run later"
        )
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    auth = base64.b64encode(f"api:{key}".encode()).decode()
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": "{ viewer { username entity } }"}).encode(),
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            viewer = (json.load(response).get("data") or {}).get("viewer")
    except urllib.error.HTTPError as exc:
        raise CheckError(f"W&B rejected the API key (HTTP {exc.code}): check it") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CheckError(f"could not reach W&B at {base}: {exc}") from None
    if not viewer:
        raise CheckError("W&B does not know this API key: check it (wandb.ai/authorize)")
    return f"W&B key accepted (user {viewer.get('username')}, entity {viewer.get('entity')})"


# --------------------------------------------------------------------------- run state


def _cmd_fresh(ns: argparse.Namespace) -> str:
    out = Path(ns.output_dir)
    found = run_state.found_state(out)
    if not found:
        return f"{out}: no earlier run"
    if not ns.move_aside:
        raise CheckError(
            f"{out} holds an earlier run's state, which a fresh run would mix into its own:\n"
            + "\n".join(f"  {line}" for line in found)
            + "\ncontinue that run with --resume, or move its state aside (nothing is deleted) "
            "with --move-aside, or choose another --output-dir / --run-name"
        )
    folder = run_state.move_aside_all(out)
    return f"{out}: an earlier run's state moved to {folder}:\n" + "\n".join(
        f"  {line}" for line in found
    )


def _cmd_resume_step(ns: argparse.Namespace) -> str:
    try:
        point = run_state.resume_step(Path(ns.output_dir))
    except run_state.RunStateError as exc:
        raise CheckError(str(exc)) from None
    print(point.note, file=sys.stderr)
    return str(point.step)


def _cmd_prepare_resume(ns: argparse.Namespace) -> str:
    config = read_config(ns.config)
    out = Path(ns.output_dir)
    if config.batch_size is None:
        raise CheckError(f"{ns.config}: [orchestrator] batch_size is not set")
    eval_keep = None
    if config.eval is not None:
        size = config.eval.round_size
        if size is None:  # the whole eval set: the round size is in the log, not the config
            size = run_state.eval_round_ids(out) * config.eval.rollouts_per_example
        eval_keep = config.eval.rounds_before(ns.step) * size
    lines = run_state.prepare_resume(out, ns.step, config.batch_size, eval_keep)
    return "\n".join(lines) or "nothing to move"


def _cmd_smoke_report(ns: argparse.Namespace) -> str:
    from smoke_report import smoke_report  # reads the config: needs calibrated_qa installed

    return smoke_report(ns.config, ns.output_dir, ns.results)


def _cmd_prune(ns: argparse.Namespace) -> str:
    run_state.watch_and_prune(Path(ns.output_dir), ns.parent, ns.every)
    return "pruner stopped: the launcher is gone"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, *args: tuple[str, dict[str, Any]]) -> None:
        p = sub.add_parser(name)
        for flag, kwargs in args:
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)

    plain: dict[str, Any] = {}
    command("config", _cmd_config, ("config", plain))
    command("get", _cmd_get, ("config", plain), ("key", {"choices": sorted(GET_KEYS)}))
    command("env-args", _cmd_env_args, ("config", plain), ("--log-dir", plain))
    command("installed", _cmd_installed, ("--source", {"required": True}))
    command("cuda", lambda ns: cuda_devices(ns.need), ("need", {"type": int}))
    command("port", lambda ns: port_free(ns.port), ("port", {"type": int}))
    command("hf-access", lambda ns: hf_access(ns.model), ("model", plain))
    command(
        "prefetch", lambda ns: prefetch(ns.model, ns.dataset), ("model", plain), ("dataset", plain)
    )
    command("disk-need", _cmd_disk_need, ("config", plain), ("model_dir", plain))
    command("wandb", lambda ns: wandb_check())
    command("fresh", _cmd_fresh, ("output_dir", plain), ("--move-aside", {"action": "store_true"}))
    command("resume-step", _cmd_resume_step, ("output_dir", plain))
    command(
        "prepare-resume",
        _cmd_prepare_resume,
        ("config", plain),
        ("output_dir", plain),
        ("step", {"type": int}),
    )
    command(
        "prune-broadcasts",
        _cmd_prune,
        ("output_dir", plain),
        ("--parent", {"type": int, "required": True}),
        ("--every", {"type": float, "default": 30.0}),
    )
    command(
        "smoke-report",
        _cmd_smoke_report,
        ("config", plain),
        ("output_dir", plain),
        ("results", plain),
    )
    ns = parser.parse_args(argv)
    try:
        print(ns.func(ns))
    except CheckError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
