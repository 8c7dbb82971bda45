"""prime-rl 6cae5cca's orchestrator as far as it drives an environment, each piece naming the
function of ``src/prime_rl/orchestrator/`` it follows. Not here: the trainer, weight updates,
buffers' difficulty filters, monitors (the "trained" policy is the same model).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import verifiers as vf

from calibrated_qa.run_config import RunConfig, eval_checkpoints

REQUIRED_STATE_COLUMNS = ["trajectory", "sampling_args"]  # vf_utils.REQUIRED_STATE_COLUMNS
TOKEN_CLIENT = "openai_chat_completions_token"  # orchestrator.py: use_token_client defaults True


def train_sampling_args(config: RunConfig, temperature: float) -> dict[str, Any]:
    """``utils.get_sampling_args(config.sampling, temperature, is_vllm=True)``."""
    table = config.sampling
    extra_body = dict(table.get("extra_body", {}))
    if (min_tokens := table.get("min_tokens", 0)) > 0:
        extra_body["min_tokens"] = min_tokens
    if (penalty := table.get("repetition_penalty", 1.0)) != 1.0:
        extra_body["repetition_penalty"] = penalty
    extra_body |= {"top_k": -1, "min_p": 0.0, "return_token_ids": True}
    return {"temperature": temperature, "max_tokens": table.get("max_tokens"),
            "seed": table.get("seed"), "top_p": 1.0, "logprobs": True,
            "extra_body": extra_body}  # fmt: skip


def eval_sampling_args(config: RunConfig) -> dict[str, Any]:
    """``eval_utils.get_eval_sampling_args(config.eval.sampling)``: only what is set."""
    table = config.eval.sampling if config.eval else {}
    args = {k: table[k] for k in ("temperature", "max_tokens", "top_p", "reasoning_effort")
            if table.get(k) is not None}  # fmt: skip
    extra_body = dict(table.get("extra_body", {}))
    for key in ("top_k", "min_p", "min_tokens", "repetition_penalty"):
        if table.get(key) is not None:
            extra_body[key] = table[key]
    return {**args, "extra_body": extra_body}


def sent_fields(sampling_args: dict) -> dict:
    """The JSON fields verifiers' token client sends for these args (``OpenAIChatCompletions
    TokenClient.get_native_response``): max_tokens renamed, logprobs and return_token_ids forced,
    extra_body merged, None dropped (so prime-rl's ``seed: None`` never reaches the server)."""
    body = {k: v for k, v in sampling_args.items() if k != "extra_body"}
    body |= sampling_args.get("extra_body", {})
    if "max_tokens" in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
    body |= {"logprobs": True, "return_token_ids": True}
    return {k: v for k, v in body.items() if v is not None}


async def start_env_server(
    env: vf.Environment, extra_env_kwargs: dict, num_workers: int, log_dir: str
) -> None:
    """``vf_utils.spawn_env_server`` + ``setup_env_client`` + ``wait_for_env_servers`` through
    verifiers' ``Environment.start_server``: the same process, plus a death pipe that stops it and
    its workers when this process dies, even by SIGKILL. ``env.stop_server()`` then does what
    orchestrator.py's ``_cleanup_env_processes`` does: terminate, wait, kill."""
    await env.start_server(extra_env_kwargs=extra_env_kwargs, num_workers=num_workers,
                           log_dir=log_dir, console_logging=False,
                           health_check_interval=5.0)  # fmt: skip


@dataclass
class Scheduler:
    """``scheduler.Scheduler`` without policy updates: up to ``max_inflight`` rollouts in flight,
    each its own ``run_rollout`` task, slots refilled as rollouts finish (also after the batch is
    full: ``generate_batch``'s last ``_fill_inflight_requests``), in-flight ones cancelled by
    ``stop``. Examples are drawn at random with replacement (``buffer.Buffer.sample_examples``)."""

    env: vf.Environment
    examples: list[dict]
    client: vf.ClientConfig
    model: str
    sampling_args: dict
    batch_size: int
    rollouts_per_example: int
    max_inflight: int
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    inflight: dict[asyncio.Task, int] = field(default_factory=dict)  # task -> its group
    groups: dict[int, tuple[dict, list[dict]]] = field(default_factory=dict)  # example, finished
    to_schedule: list[int] = field(default_factory=list)  # the open group's id, once per rollout
    started: int = 0
    cancelled: int = 0

    def _fill(self) -> None:
        """``_fill_inflight_requests`` -> ``schedule_rollout`` -> ``vf_utils.run_rollout``: the
        open group's rollouts first, then a new example's."""
        while len(self.inflight) < self.max_inflight:
            if not self.to_schedule:
                self.groups[self.started] = (self.rng.choice(self.examples), [])
                self.to_schedule = [self.started] * self.rollouts_per_example
            group_id = self.to_schedule.pop()
            task = asyncio.create_task(self.env.run_rollout(
                vf.RolloutInput(**self.groups[group_id][0]), client=self.client,
                model=self.model, sampling_args=self.sampling_args, max_retries=0,
                state_columns=REQUIRED_STATE_COLUMNS,
            ))  # fmt: skip
            self.inflight[task] = group_id
            self.started += 1

    async def generate_batch(self) -> list[dict]:
        """``generate_batch``: whole groups until ``batch_size`` rollouts, then refill."""
        batch: list[dict] = []
        while len(batch) < self.batch_size:
            self._fill()
            done, _ = await asyncio.wait(list(self.inflight), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if len(batch) >= self.batch_size:
                    break  # stays in flight, finished: the next batch takes it
                group_id = self.inflight.pop(task)
                rollout = task.result()
                if rollout["error"] is not None or not rollout["trajectory"]:
                    # prime-rl re-schedules it; here an error is a finding, not something to retry
                    raise RuntimeError(f"a rollout failed: {rollout['error']}")
                finished = self.groups[group_id][1]
                finished.append(rollout)
                if len(finished) == self.rollouts_per_example:
                    batch += self.groups.pop(group_id)[1]
        self._fill()
        return batch[: self.batch_size]

    async def stop(self) -> None:
        """``stop`` -> ``cancel_inflight_rollouts``. Counted: the ones still running (prime-rl's
        count also takes in finished, unconsumed ones)."""
        running = [task for task in self.inflight if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
        self.cancelled += len(running)
        self.inflight.clear()
        self.groups.clear()
        self.to_schedule.clear()


async def evaluate(
    env: vf.Environment, client: vf.ClientConfig, model: str, sampling_args: dict,
    num_examples: int, rollouts_per_example: int,
) -> list[dict]:  # fmt: skip
    """``eval_utils.evaluate_env`` -> ``vf_utils.evaluate``: ``run_group`` per repeated input."""
    groups = await asyncio.gather(*(
        env.run_group([vf.RolloutInput(**example)], client=client, model=model,
                      sampling_args=sampling_args, max_retries=0,
                      state_columns=REQUIRED_STATE_COLUMNS)
        for example in env._get_eval_inputs(num_examples, rollouts_per_example)
    ))  # fmt: skip
    return [rollout for group in groups for rollout in group]


def _raise_first(results: list[Any]) -> None:
    """The first exception among ``gather(..., return_exceptions=True)``'s results, raised."""
    if errors := [r for r in results if isinstance(r, BaseException)]:
        raise errors[0]


class RunResult(NamedTuple):
    """What the orchestrator saw, to compare with the logs and the server's request log."""

    eval_rounds: list[list[dict]]
    started: int
    cancelled: int
    seconds: float


async def orchestrate(config: RunConfig, base_url: str, model: str, log_root: str) -> RunResult:
    """``orchestrator.orchestrate`` for one environment: base eval, steps, final eval, stop."""
    start = time.perf_counter()
    entry, eval_entry = config.train_env(), config.eval.envs[0]
    client = vf.ClientConfig(client_idx=0, client_type=TOKEN_CLIENT, api_base_url=f"{base_url}/v1",
                             api_key_var="DRYRUN_NO_KEY", timeout=600.0, max_retries=0)  # fmt: skip
    group = vf.EnvGroup(envs=[vf.load_environment(entry.id, **entry.args)], env_names=[entry.id])
    eval_env = vf.load_environment(eval_entry.id, **eval_entry.args)
    try:
        # configs/orchestrator.py resolve_extra_env_kwargs: for training envs only; score_rollouts
        # follows verification.enabled (default true).
        _raise_first(await asyncio.gather(
            start_env_server(group.envs[0], {"max_seq_len": config.seq_len, "score_rollouts": True},
                             config.env_workers, f"{log_root}/envs/train/{entry.id}"),
            start_env_server(eval_env, {}, config.eval_env_workers,
                             f"{log_root}/envs/eval/{eval_entry.id}"),
            return_exceptions=True,  # both finish starting before either is stopped
        ))  # fmt: skip
        train_args = train_sampling_args(config, config.temperature)
        scheduler = Scheduler(group, list(group.get_dataset()), client, model, train_args,
                              config.batch_size, config.rollouts_per_example,
                              config.max_inflight_rollouts)  # fmt: skip
        eval_round = (eval_env, client, model, eval_sampling_args(config),
                      config.eval.num_examples, config.eval.rollouts_per_example)  # fmt: skip
        online, _ = eval_checkpoints(config.eval.interval, base_model=config.eval.base_model,
                                     max_steps=config.max_steps, rounds=0)  # fmt: skip
        # eval_utils.compute_eval_ckpt_step with max_async_level 0: the base model at step 0,
        # checkpoint c > 0 at the top of step c + 1 (training waits).
        eval_steps, eval_rounds = {c + 1 if c else 0 for c in online}, []
        for step in range(config.max_steps):
            if step in eval_steps:
                eval_rounds.append(await evaluate(*eval_round))
            await scheduler.generate_batch()  # nothing trains on it
        # "Running final evals", then scheduler.stop(): refilled rollouts run on meanwhile.
        eval_rounds.append(await evaluate(*eval_round))
        await scheduler.stop()
        return RunResult(eval_rounds, scheduler.started, scheduler.cancelled,
                         time.perf_counter() - start)  # fmt: skip
    finally:  # both stopped, even if stopping one fails
        stopped = [env.stop_server() for env in (group.envs[0], eval_env)]
        _raise_first(await asyncio.gather(*stopped, return_exceptions=True))
