"""A scripted agno model: test agents, tools and teams offline, one model reply at a time.

:class:`ScriptedModel` is an ``agno.models.base.Model`` whose replies come from a list of steps. Each
model request agno makes consumes the next step:

- a ``str`` is a text reply;
- a :class:`ToolCall`, or a list of them, asks agno to run those tools (agno then calls the model
  again with the results, which consumes the next step);
- an ``Exception`` is raised from the model call; agno turns it into a run with
  ``RunStatus.error`` and the exception's message as content.

Every request is recorded in ``calls`` as a :class:`RecordedCall` (messages, tool names offered,
``tool_choice``, ``response_format``), whether the step succeeds or not. Requests agno makes on its
own (session summaries, memories, output parsing) consume steps too. A request past the end of the
script raises ``AssertionError``; agno reports that as an error run too, so check ``status``.

The four entry points (``invoke``, ``ainvoke``, ``invoke_stream``, ``ainvoke_stream``) share one
script. Streaming yields each step as one delta, or text in ``chunk_size``-character pieces. Each
reply reports 1 input and 1 output token, so agno's run metrics are filled in. ``copy.deepcopy``
of the model shares the script and ``calls`` with the original.

Usage::

    from agno.agent import Agent
    from dynamic_agents.testing import ScriptedModel, ToolCall

    def get_weather(city: str) -> str:
        \"\"\"The weather in a city.\"\"\"
        return f"Sunny in {city}"

    model = ScriptedModel([ToolCall("get_weather", {"city": "Paris"}), "It is sunny in Paris."])
    agent = Agent(model=model, tools=[get_weather], telemetry=False)
    output = agent.run("Weather in Paris?", session_id="demo")

    assert output.content == "It is sunny in Paris."
    assert model.calls[0].tools == ["get_weather"]
    assert model.calls[1].messages[-1]["content"] == "Sunny in Paris"  # the tool's result
    assert model.remaining == 0
"""

from __future__ import annotations

import copy
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

try:
    from agno.metrics import MessageMetrics
    from agno.models.base import Model
    from agno.models.response import ModelResponse
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("scripted agno models", "agents") from error

from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.testing.script import ToolCall

__all__ = ["RecordedCall", "ScriptStep", "ScriptedModel", "ScriptedModels", "ToolCall"]

# Keyword arguments of a model call that RecordedCall keeps in their own fields, or leaves out
# because they are agno's working objects (the message being built, the run), not the request.
_RECORDED_APART = frozenset(
    {"messages", "tools", "tool_choice", "response_format", "assistant_message", "run_response"}
)
_MESSAGE_EXTRAS = ("tool_calls", "tool_call_id", "tool_name", "name")


ScriptStep: TypeAlias = str | ToolCall | Sequence[ToolCall] | Exception
"""One model reply: text, one or more tool calls, or an exception to raise."""


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """What one model request was sent.

    ``messages``: role and content of each message, plus ``tool_calls``, ``tool_call_id``,
    ``tool_name`` and ``name`` where set. ``tools``: names of the tools offered, in agno's order.
    ``kwargs``: any other keyword arguments agno passed (``compress_tool_results`` today).
    """

    messages: list[dict[str, Any]]
    tools: list[str]
    stream: bool
    tool_choice: str | dict[str, Any] | None = None
    response_format: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Script:
    """The steps and records one model and all its copies share."""

    def __init__(self, steps: Iterable[ScriptStep]) -> None:
        self.steps: deque[ScriptStep] = deque(_checked(index, step) for index, step in enumerate(steps))
        self.total = len(self.steps)
        self.calls: list[RecordedCall] = []
        self.tool_calls_made = 0
        # agno may run team members in threads: recording a call and taking its step stay paired.
        self.lock = threading.Lock()


def _checked(index: int, step: object) -> ScriptStep:
    if isinstance(step, str | ToolCall | Exception):
        return step
    if isinstance(step, Sequence) and step and all(isinstance(call, ToolCall) for call in step):
        return list(step)
    raise TypeError(
        f"ScriptedModel script step {index} is {step!r}: expected a str, a ToolCall, "
        "a non-empty list of ToolCall or an Exception"
    )


def _message_snapshot(message: Any) -> dict[str, Any]:
    snapshot: dict[str, Any] = {"role": message.role, "content": copy.deepcopy(message.content)}
    for key in _MESSAGE_EXTRAS:
        value = getattr(message, key, None)
        if value is not None:
            snapshot[key] = copy.deepcopy(value)
    return snapshot


class ScriptedModel(Model):  # type: ignore[misc]  # agno is not analysed by mypy, so Model is Any
    """An agno model that replies with the next step of ``script`` on every request.

    ``chunk_size`` splits text replies into pieces of that many characters when streaming.
    Other keyword arguments go to ``agno.models.base.Model`` (for example ``retries=1``: a
    ``ModelProviderError`` step is then retried, and the retry consumes the next step).
    """

    def __init__(
        self,
        script: Iterable[ScriptStep] = (),
        *,
        id: str = "scripted",
        name: str = "ScriptedModel",
        provider: str = "Scripted",
        chunk_size: int | None = None,
        **options: Any,
    ) -> None:
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"ScriptedModel chunk_size must be a positive int or None, got {chunk_size!r}")
        self._script = _Script(script)
        self.chunk_size = chunk_size
        super().__init__(id=id, name=name, provider=provider, **options)

    @property
    def calls(self) -> list[RecordedCall]:
        """Every model request so far, in order (shared with deep copies of this model)."""
        return self._script.calls

    @property
    def remaining(self) -> int:
        """How many script steps have not been used yet."""
        return len(self._script.steps)

    def __repr__(self) -> str:
        return f"ScriptedModel(id={self.id!r}, remaining={self.remaining}, calls={len(self.calls)})"

    def __deepcopy__(self, memo: dict[int, Any]) -> ScriptedModel:
        # agno copies models attribute by attribute; a copy with its own script would replay it.
        memo[id(self._script)] = self._script
        copied = super().__deepcopy__(memo)
        assert isinstance(copied, ScriptedModel)
        return copied

    def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self._parse_provider_response(self._take_step(kwargs, stream=False))

    async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self._parse_provider_response(self._take_step(kwargs, stream=False))

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
        yield from self._deltas(self._take_step(kwargs, stream=True))

    async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        for delta in self._deltas(self._take_step(kwargs, stream=True)):
            yield delta

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        """Turn a text or tool-call step into agno's ``ModelResponse``."""
        reply = ModelResponse(role=self.assistant_message_role, response_usage=_usage())
        if isinstance(response, str):
            reply.content = response
        elif isinstance(response, ToolCall):
            reply.tool_calls = self._tool_call_dicts([response])
        else:
            reply.tool_calls = self._tool_call_dicts(response)
        return reply

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        return self._parse_provider_response(response)

    def _take_step(self, kwargs: dict[str, Any], *, stream: bool) -> str | ToolCall | Sequence[ToolCall]:
        script = self._script
        with script.lock:
            script.calls.append(self._record(kwargs, stream=stream))
            if not script.steps:
                steps = "1 step" if script.total == 1 else f"{script.total} steps"
                raise AssertionError(
                    f"ScriptedModel {self.id!r} ran out of script: it was given {steps} and this is "
                    f"model call {len(script.calls)}. Add a step, or see `model.calls` for what was sent."
                )
            step = script.steps.popleft()
        if isinstance(step, Exception):
            raise step
        return step

    def _record(self, kwargs: dict[str, Any], *, stream: bool) -> RecordedCall:
        return RecordedCall(
            messages=[_message_snapshot(message) for message in kwargs.get("messages") or []],
            tools=[self._tool_name(tool) for tool in kwargs.get("tools") or []],
            stream=stream,
            tool_choice=kwargs.get("tool_choice"),
            response_format=kwargs.get("response_format"),
            kwargs={key: value for key, value in kwargs.items() if key not in _RECORDED_APART},
        )

    def _deltas(self, step: str | ToolCall | Sequence[ToolCall]) -> Iterator[ModelResponse]:
        if not isinstance(step, str) or not self.chunk_size or len(step) <= self.chunk_size:
            yield self._parse_provider_response(step)
            return
        pieces = [step[start : start + self.chunk_size] for start in range(0, len(step), self.chunk_size)]
        for piece in pieces[:-1]:
            yield ModelResponse(role=self.assistant_message_role, content=piece)
        yield self._parse_provider_response(pieces[-1])  # usage once, on the last piece

    def _tool_call_dicts(self, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
        with self._script.lock:
            first = self._script.tool_calls_made + 1
            self._script.tool_calls_made += len(calls)
        return [
            {
                "id": call.id or f"call_{number}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
            }
            for number, call in enumerate(calls, start=first)
        ]


def _usage() -> MessageMetrics:
    return MessageMetrics(input_tokens=1, output_tokens=1, total_tokens=2)


class ScriptedModels:
    """A model provider for ``AgentRuntime`` whose models replay scripts, one per model name.

    Every agent built for a model name gets a copy of that name's :class:`ScriptedModel`, and the
    copies share its script and ``calls`` — so the script runs on across runs, rebuilt agents and
    team members::

        models = ScriptedModels({"gpt": [ToolCall("get_weather", {"city": "Paris"}), "Sunny."]})
        runtime = AgentRuntime(store, registry, models)
    """

    def __init__(self, scripts: Mapping[str, Iterable[ScriptStep]], *, chunk_size: int | None = None) -> None:
        self.models = {
            name: ScriptedModel(script, id=name, chunk_size=chunk_size) for name, script in scripts.items()
        }

    def __repr__(self) -> str:
        return f"ScriptedModels({sorted(self.models)})"

    def model(self, settings: Any, *, user_id: str | None) -> ScriptedModel:
        if (model := self.models.get(settings.name)) is None:  # as RouterModels refuses it
            raise ConfigurationError(
                f"model {settings.name!r} is not a scripted model; known: {sorted(self.models)}"
            )
        return copy.deepcopy(model)

    def model_names(self) -> frozenset[str]:
        return frozenset(self.models)
