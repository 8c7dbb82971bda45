"""A verifiers ``Client`` that returns scripted completions instead of calling a model server.

Built like the ``MockClient`` of verifiers' own test suite: ``get_response`` is overridden, so the
rest of the rollout and scoring path (state, rubric, cleanup handlers, outputs) is the real one.
"""

from __future__ import annotations

from collections.abc import Callable

from verifiers.clients.client import Client
from verifiers.types import Response, ResponseMessage, Usage

from calibrated_qa.reward import RolloutScore


def user_text(prompt) -> str:
    """The text of the (single) user message of a prompt."""
    message = prompt[-1]
    return message["content"] if isinstance(message, dict) else message.content


class ScriptedClient(Client):
    """Answers each prompt with ``script(user_text)``; reports token usage when ``usage`` is set.

    ``usage(text) -> int`` gives the completion token count to report; None reports no usage,
    as some OpenAI-compatible servers do.
    """

    def __init__(
        self,
        script: Callable[[str], str],
        usage: Callable[[str], int] | None = None,
        finish_reason: str = "stop",
    ) -> None:
        self._client = None
        self._config = None
        self.script = script
        self.usage = usage
        self.finish_reason = finish_reason
        self.prompts: list = []

    async def get_response(self, prompt, model, sampling_args, tools=None, **kwargs) -> Response:
        self.prompts.append(prompt)
        text = self.script(user_text(prompt))
        usage = None
        if self.usage is not None:
            n = self.usage(text)
            usage = Usage(
                prompt_tokens=100, reasoning_tokens=0, completion_tokens=n, total_tokens=100 + n
            )
        return Response(
            id="scripted",
            created=0,
            model=model,
            usage=usage,
            message=ResponseMessage(
                content=text,
                reasoning_content=None,
                finish_reason=self.finish_reason,
                is_truncated=self.finish_reason == "length",
                tokens=None,
                tool_calls=None,
            ),
        )

    # The abstract transport hooks are never reached: get_response is overridden above.
    def setup_client(self, config):
        return None

    async def to_native_tool(self, tool):
        raise NotImplementedError

    async def to_native_prompt(self, messages):
        raise NotImplementedError

    async def get_native_response(self, prompt, model, sampling_args, tools=None, **kwargs):
        raise NotImplementedError

    async def raise_from_native_response(self, response):
        raise NotImplementedError

    async def from_native_response(self, response):
        raise NotImplementedError

    async def close(self) -> None:
        return None


def assert_scored_as(output: dict, expected: RolloutScore) -> None:
    """A rollout output's reward and metrics are exactly the project's score of its completion.

    ``brier`` and ``p_yes`` exist only for parseable rollouts: their metrics are 0 otherwise
    (see ``CalibrationRubric``).
    """
    import pytest

    assert output["reward"] == pytest.approx(expected.reward)
    metrics = output["metrics"]
    assert metrics["calibration_reward"] == pytest.approx(expected.calibration_reward)
    assert metrics["length_penalty"] == pytest.approx(expected.length_penalty)
    assert metrics["parseable"] == float(expected.parseable)
    assert metrics["correct"] == float(expected.correct)
    assert metrics["length"] == pytest.approx(expected.length)
    assert metrics["brier"] == pytest.approx(expected.brier or 0.0)
    assert metrics["p_yes"] == pytest.approx(expected.p_yes or 0.0)
