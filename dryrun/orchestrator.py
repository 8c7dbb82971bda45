"""prime-rl 6cae5cca's orchestrator, as far as it drives an environment, on a run config.

Each piece follows the file and function of ``src/prime_rl/orchestrator/`` named in its
docstring: env servers (``vf_utils.spawn_env_server``), sampling args (``utils.get_sampling_args``,
``eval_utils.get_eval_sampling_args``), per-rollout scheduling with refill and cancel-at-stop
(``scheduler.Scheduler``), eval rounds (``eval_utils.evaluate_env``) and their order
(``orchestrator.orchestrate``). What prime-rl does beyond that (trainer, weight updates,
buffers' difficulty filters, monitors) is not here: the "trained" policy is the same model.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import verifiers as vf
from verifiers.serve import ZMQEnvClient, ZMQEnvServer
from verifiers.utils.serve_utils import get_free_port

from calibrated_qa.run_config import RunConfig

REQUIRED_STATE_COLUMNS = ["trajectory", "sampling_args"]  # vf_utils.REQUIRED_STATE_COLUMNS
TOKEN_CLIENT = "openai_chat_completions_token"  # orchestrator.py: use_token_client defaults True


def train_sampling_args(config: RunConfig, temperature: float) -> dict[str, Any]:
    """``utils.get_sampling_args(config.sampling, temperature, is_vllm=True)``."""
    table = dict(config.sampling)
    extra_body = dict(table.get("extra_body", {}))
    if (min_tokens := table.get("min_tokens", 0)) > 0:
        extra_body["min_tokens"] = min_tokens
    if (penalty := table.get("repetition_penalty", 1.0)) != 1.0:
        extra_body["repetition_penalty"] = penalty
    extra_body |= {"top_k": -1, "min_p": 0.0, "return_token_ids": True}
    return {
        "temperature": temperature,
        "max_tokens": table.get("max_tokens"),
        "seed": table.get("seed"),
        "top_p": 1.0,
        "logprobs": True,
        "extra_body": extra_body,
    }


def eval_sampling_args(config: RunConfig) -> dict[str, Any]:
    """``eval_utils.get_eval_sampling_args(config.eval.sampling)``: only what is set."""
    table = dict(config.eval.sampling) if config.eval else {}
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


@dataclass
class EnvServer:
    """One env server process, its client and the pipe whose closing stops it."""

    process: mp.Process
    client: ZMQEnvClient
    death_pipe: Connection

    async def stop(self) -> None:
        """Close the client (its health-check thread too), then orchestrator.py's
        ``_cleanup_env_processes``: terminate, wait 5 s, kill."""
        try:
            await self.client.close()
        finally:
            self.death_pipe.close()
            self.process.terminate()
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)


async def spawn_env_server(
    name: str, env_id: str, args: dict, extra_env_kwargs: dict, num_workers: int, log_dir: str
) -> EnvServer:
    """``vf_utils.spawn_env_server`` + ``setup_env_client`` + ``wait_for_env_servers``.

    One addition: verifiers' death pipe (what ``vf.Environment.start_server`` passes), so that the
    router and its workers stop themselves when this process dies, even by SIGKILL.
    """
    address = f"tcp://127.0.0.1:{get_free_port()}"
    reader, writer = mp.Pipe(duplex=False)
    process = mp.get_context("spawn").Process(
        target=ZMQEnvServer.run_server,
        args=(env_id, args, extra_env_kwargs, None, log_dir),
        kwargs=dict(
            address=address,
            json_logging=False,
            console_logging=False,
            num_workers=num_workers,
            death_pipe=reader,
        ),
        daemon=False,
    )
    process.start()
    reader.close()
    client = ZMQEnvClient(address=address, name=name, health_check_interval=5.0,
                          startup_timeout=600.0, recovery_timeout=600.0)  # fmt: skip
    server = EnvServer(process, client, writer)
    try:
        await client.wait_for_server_startup()
    except BaseException:
        await server.stop()
        raise
    return server


@dataclass
class Group:
    """``scheduler.GroupState``: one example, K rollouts scheduled one by one."""

    example: dict
    to_schedule: int
    completed: list[dict] = field(default_factory=list)


@dataclass
class Scheduler:
    """``scheduler.Scheduler`` without policy updates: up to ``max_inflight`` rollouts in flight,
    each its own ``run_rollout`` task, slots refilled as rollouts finish (also after the batch is
    full, ``generate_batch``'s last ``_fill_inflight_requests``), in-flight ones cancelled by
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
    inflight: dict[asyncio.Task, int] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    started: int = 0
    cancelled: int = 0
    next_group: int = 0

    def _schedule(self, group_id: int) -> None:
        """``schedule_rollout``: ``vf_utils.run_rollout`` on the env group (routed to a server)."""
        self.groups[group_id].to_schedule -= 1
        task = asyncio.create_task(self.env.run_rollout(
            vf.RolloutInput(**self.groups[group_id].example), client=self.client,
            model=self.model, sampling_args=self.sampling_args, max_retries=0,
            state_columns=REQUIRED_STATE_COLUMNS,
        ))  # fmt: skip
        self.inflight[task] = group_id
        self.started += 1

    def _fill(self) -> None:
        """``_fill_inflight_requests``: open groups first, then a new example."""
        while len(self.inflight) < self.max_inflight:
            open_group = next((g for g, s in self.groups.items() if s.to_schedule > 0), None)
            if open_group is None:
                open_group, self.next_group = self.next_group, self.next_group + 1
                example = self.rng.choice(self.examples)
                self.groups[open_group] = Group(example, self.rollouts_per_example)
            self._schedule(open_group)

    async def generate_batch(self) -> list[dict]:
        """``generate_batch``: whole groups until ``batch_size`` rollouts, then refill."""
        batch: list[dict] = []
        while len(batch) < self.batch_size:
            self._fill()
            done, _ = await asyncio.wait(list(self.inflight), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if len(batch) >= self.batch_size:
                    break  # left in flight: its result is dropped, as prime-rl drops it
                group_id = self.inflight.pop(task)
                group = self.groups[group_id]
                rollout = task.result()
                if rollout["error"] is not None or not rollout["trajectory"]:
                    # prime-rl re-schedules it; here an error is a finding, not something to retry
                    raise RuntimeError(f"a rollout failed: {rollout['error']}")
                group.completed.append(rollout)
                if len(group.completed) == self.rollouts_per_example:
                    batch.extend(self.groups.pop(group_id).completed)
        self._fill()
        return batch[: self.batch_size]

    async def stop(self) -> None:
        """``stop`` -> ``cancel_inflight_rollouts``: cancel every in-flight rollout. Counted here:
        the ones still running (prime-rl's count also takes in finished, unconsumed ones)."""
        running = [task for task in self.inflight if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
        self.cancelled += len(running)
        self.inflight.clear()
        self.groups.clear()


async def evaluate(
    env: vf.Environment, client: vf.ClientConfig, model: str, sampling_args: dict,
    num_examples: int, rollouts_per_example: int,
) -> list[dict]:  # fmt: skip
    """``eval_utils.evaluate_env`` -> ``vf_utils.evaluate``: ``run_group`` per repeated input."""
    inputs = env._get_eval_inputs(num_examples, rollouts_per_example)
    groups = await asyncio.gather(*(
        env.run_group([vf.RolloutInput(**example)], client=client, model=model,
                      sampling_args=sampling_args, max_retries=0,
                      state_columns=REQUIRED_STATE_COLUMNS)
        for example in inputs
    ))  # fmt: skip
    return [rollout for group in groups for rollout in group]


@dataclass
class RunResult:
    """What the orchestrator saw, to compare with the logs and the server's request log."""

    train_batches: list[list[dict]]
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
    # configs/orchestrator.py resolve_extra_env_kwargs: training envs only; score_rollouts follows
    # verification.enabled (default true).
    train_kwargs = {"max_seq_len": config.seq_len, "score_rollouts": True}
    servers = await asyncio.gather(
        spawn_env_server("train", entry.id, entry.args, train_kwargs, config.env_workers,
                         f"{log_root}/envs/train/{entry.id}"),
        spawn_env_server("eval", eval_entry.id, eval_entry.args, {}, config.eval_env_workers,
                         f"{log_root}/envs/eval/{eval_entry.id}"),
        return_exceptions=True,
    )  # fmt: skip
    try:
        for server in servers:
            if isinstance(server, BaseException):
                raise server
        group.envs[0].env_client, eval_env.env_client = (s.client for s in servers)
        scheduler = Scheduler(
            env=group,
            examples=list(group.get_dataset()),
            client=client,
            model=model,
            sampling_args=train_sampling_args(config, config.temperature),
            batch_size=config.batch_size,
            rollouts_per_example=config.rollouts_per_example,
            max_inflight=config.max_inflight_rollouts,
        )
        rounds = [config.eval.num_examples, config.eval.rollouts_per_example]
        interval = config.eval.interval
        eval_args = eval_sampling_args(config)
        eval_rounds, batches = [], []
        for step in range(config.max_steps):
            # eval_utils.compute_eval_ckpt_step with max_async_level 0: the base model at step 0,
            # checkpoint k x interval at the top of step k x interval + 1 (training waits).
            ckpt = step - 1
            if (step == 0 and config.eval.base_model) or (ckpt > 0 and ckpt % interval == 0):
                eval_rounds.append(await evaluate(eval_env, client, model, eval_args, *rounds))
            batches.append(await scheduler.generate_batch())
        # "Running final evals", then scheduler.stop(): refilled rollouts run on meanwhile.
        eval_rounds.append(await evaluate(eval_env, client, model, eval_args, *rounds))
        await scheduler.stop()
        return RunResult(batches, eval_rounds, scheduler.started, scheduler.cancelled,
                         time.perf_counter() - start)  # fmt: skip
    finally:
        for server in servers:
            if not isinstance(server, BaseException):
                await server.stop()
