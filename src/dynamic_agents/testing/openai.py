"""A scripted OpenAI-compatible HTTP API for litellm's real SDK path, offline.

``FakeOpenAI`` answers chat completions from a script (text, tool calls, or an HTTP error) and
records every request, including the ``Authorization`` header — which is how tests see which key a
call really carried::

    fake = FakeOpenAI(["Hello!", ToolCall("get_weather", {"city": "Paris"}), "Sunny."])
    with fake.installed():          # litellm's HTTP clients now go through the fake
        ...                         # deployments: {"model": "openai/…", "api_base": fake.api_base}
    fake.requests[0].authorization  # 'Bearer sk-…'

Without a script it answers ``"ok"`` to every chat completion; ``handler`` replaces the script with a
function of the request. Streaming requests get server-sent events (the usage chunk only with
``stream_options: {"include_usage": true}``, as from OpenAI). Like the real API, it answers
only ``POST /v1/chat/completions`` (on any host): other paths and methods (embeddings, an
``api_base`` without ``/v1``) get OpenAI's ``404 Invalid URL``, and a body that is not a JSON object
its ``400``, as does a request OpenAI refuses (no ``model``, no or empty ``messages``, a message
with no role or an unknown one, tool calls and tool results that do not pair up), recorded but
using no script step. What ``handler`` returns is checked as script steps are.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from dynamic_agents._validation import check_seconds
from dynamic_agents.exceptions import ConfigurationError, MissingDependencyError
from dynamic_agents.testing.script import ToolCall

__all__ = ["FakeOpenAI", "FakeOpenAIRequest", "HTTPErrorStep"]

_CHAT_COMPLETIONS = "/v1/chat/completions"
_EXPECTED = "expected a str, a ToolCall, a non-empty list of ToolCall or an HTTPErrorStep"


@dataclass(frozen=True, slots=True)
class HTTPErrorStep:
    """A script step answering an HTTP error, e.g. ``HTTPErrorStep(401, "Incorrect API key")``."""

    status: int
    message: str = "error"
    retry_after: float | None = None
    """Seconds for a ``Retry-After`` header (a 429's, say); ``None`` sends none."""

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or not 400 <= self.status <= 599:
            raise ConfigurationError(
                f"HTTPErrorStep status must be an error status (400-599), got {self.status!r}"
            )
        check_seconds("retry_after", self.retry_after, zero=True, optional=True)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": f"{self.retry_after:g}"}


@dataclass(frozen=True, slots=True)
class FakeOpenAIRequest:
    url: str
    authorization: str | None = field(repr=False)
    body: Mapping[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages", [])
        return list(messages) if isinstance(messages, list) else []

    @property
    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.body.get("tools") or []]


ToolCalls = list[ToolCall] | tuple[ToolCall, ...]
Step = str | ToolCall | ToolCalls | HTTPErrorStep
Handler = Callable[[FakeOpenAIRequest], Step]


class FakeOpenAI:
    """An OpenAI chat-completions endpoint in memory; see the module documentation."""

    api_base = "http://fake-openai.localhost/v1"

    def __init__(self, script: Iterable[Step] = (), *, handler: Handler | None = None) -> None:
        self._script: deque[Step] = deque(_checked(index, step) for index, step in enumerate(script))
        self._scripted = bool(self._script)
        self._handler = handler
        self.requests: list[FakeOpenAIRequest] = []
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"FakeOpenAI({len(self.requests)} requests, {len(self._script)} steps left)"

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body = _json_object(request.content) if request.method == "POST" else {}
        recorded = FakeOpenAIRequest(str(request.url), request.headers.get("authorization"), body or {})
        self.requests.append(recorded)
        if (request.method, request.url.path) != ("POST", _CHAT_COMPLETIONS):
            # What the real API answers: a test must not pass on an endpoint production lacks.
            message = f"Invalid URL ({request.method} {request.url.path})"
            return httpx.Response(404, json={"error": _error(message)})
        if body is None:  # as the real API answers a body it cannot read (no script step used)
            message = "We could not parse the JSON body of your request."
            return httpx.Response(400, json={"error": _error(message)})
        refusal = _refusal(body)
        if refusal is not None:  # what OpenAI refuses (no script step used)
            return httpx.Response(400, json={"error": _error(refusal)})
        step = self._next(recorded)
        if isinstance(step, HTTPErrorStep):
            return httpx.Response(step.status, json={"error": _error(step.message)}, headers=step.headers())
        text, calls = _split(step)
        if body.get("stream"):
            return self._stream(text, calls, body)
        return httpx.Response(200, json=self._completion(text, calls, body))

    def _next(self, request: FakeOpenAIRequest) -> Step:
        if self._handler is not None:
            step = self._handler(request)
            try:
                return _checked(0, step)
            except ConfigurationError:  # named as the handler's, not as a script step
                raise ConfigurationError(
                    f"FakeOpenAI handler returned {type(step).__name__} {step!r:.60}: {_EXPECTED}"
                ) from None
        if not self._scripted:
            return "ok"
        if not self._script:
            raise AssertionError(f"FakeOpenAI: the script is exhausted (request {len(self.requests)})")
        return self._script.popleft()

    def _tool_calls(self, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
        return [
            {
                "id": call.id or f"call_{next(self._ids)}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
            }
            for call in calls
        ]

    def _completion(
        self, text: str | None, calls: Sequence[ToolCall] | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = self._tool_calls(calls)
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": 1,
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }

    def _stream(
        self, text: str | None, calls: Sequence[ToolCall] | None, body: Mapping[str, Any]
    ) -> httpx.Response:
        base = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": body.get("model", "fake"),
        }
        chunks = []
        if calls:
            deltas = [
                delta
                for index, call in enumerate(self._tool_calls(calls))
                for delta in _call_deltas(index, call)
            ]
            deltas[0] = {"role": "assistant", "content": None, **deltas[0]}
            chunks += [
                {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas
            ]
            chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        else:
            content = text or ""
            for piece in (content[: len(content) // 2], content[len(content) // 2 :]):
                delta = {"role": "assistant", "content": piece}
                chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:  # as OpenAI: else none
            usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            chunks.append({**base, "choices": [], "usage": usage})
        text_body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, content=text_body.encode(), headers={"content-type": "text/event-stream"})

    @contextmanager
    def installed(self) -> Iterator[FakeOpenAI]:
        """Route litellm's HTTP clients through this fake (and back afterwards).

        litellm caches SDK clients per key for an hour; the cache is flushed on the way in and out,
        so no client built around another transport is reused.
        """
        try:
            import litellm
        except ImportError as error:
            raise MissingDependencyError("FakeOpenAI.installed() (litellm)", "agents") from error

        saved = (litellm.aclient_session, litellm.client_session)
        litellm.in_memory_llm_clients_cache.flush_cache()
        litellm.aclient_session = httpx.AsyncClient(transport=self.transport)
        litellm.client_session = httpx.Client(transport=self.transport)
        try:
            yield self
        finally:
            litellm.aclient_session, litellm.client_session = saved
            litellm.in_memory_llm_clients_cache.flush_cache()


def _call_deltas(index: int, call: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A tool call's stream deltas, as OpenAI sends them: its id, type and name (arguments ``""``)
    first, then its arguments in pieces, each with only the call's ``index``."""
    arguments: str = call["function"]["arguments"]
    half = len(arguments) // 2
    head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
    pieces = [
        {"index": index, "function": {"arguments": part}} for part in (arguments[:half], arguments[half:])
    ]
    return [{"tool_calls": [{"index": index, **head}]}, *({"tool_calls": [piece]} for piece in pieces)]


def _checked(index: int, step: object) -> Step:
    if isinstance(step, str | ToolCall | HTTPErrorStep):
        return step
    if isinstance(step, list | tuple) and step and all(isinstance(call, ToolCall) for call in step):
        return list(step)
    raise ConfigurationError(
        f"FakeOpenAI script step {index} is {type(step).__name__} {step!r:.60}: {_EXPECTED}"
    )


def _json_object(content: bytes) -> dict[str, Any] | None:
    """The request body as a JSON object, or ``None`` when it is not one."""
    try:
        body = json.loads(content or b"{}")
    except ValueError:  # not JSON, or not UTF-8
        return None
    return body if isinstance(body, dict) else None


def _refusal(body: Mapping[str, Any]) -> str | None:
    """OpenAI's 400 message for a chat completion it refuses, or ``None``: no ``model``, no
    ``messages`` (or not a non-empty array), or tool results that do not pair up with the tool
    calls of the assistant message right before them (see :func:`_unpaired_tool_calls`)."""
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        return "you must provide a model parameter"
    if messages is None:
        return "Missing required parameter: 'messages'."
    if not isinstance(messages, list):
        return f"Invalid type for 'messages': expected an array, but got {type(messages).__name__} instead."
    if not messages:
        return "Invalid 'messages': empty array. Expected an array with minimum length 1."
    return _unreadable_message(messages) or _unpaired_tool_calls(messages)


_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_JSON_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array"}


def _unreadable_message(messages: Sequence[object]) -> str | None:
    """OpenAI's message for the first message that is no object, or has no role or an unknown one."""
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            kind = "null" if message is None else _JSON_KINDS.get(type(message), "a value")
            return f"Invalid type for 'messages[{index}]': expected an object, but got {kind} instead."
        if "role" not in message:
            return f"Missing required parameter: 'messages[{index}].role'."
        if message["role"] not in _ROLES:
            supported = ", ".join(f"'{role}'" for role in _ROLES[:-1])
            return (
                f"Invalid value: {message['role']!r}. Supported values are: {supported}, and '{_ROLES[-1]}'."
            )
    return None


def _unpaired_tool_calls(messages: Sequence[object]) -> str | None:
    """Each tool call of an assistant message answered by a ``tool`` message right after it (in
    any order), and no ``tool`` message answering anything else; else OpenAI's message."""
    unanswered: list[str] = []  # the calls of the last assistant message not answered yet
    expected: set[str] = set()
    for message in messages:
        entry: Mapping[str, Any] = message if isinstance(message, dict) else {}
        role = entry.get("role")
        if role == "tool":
            call_id = entry.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in expected:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    "message with 'tool_calls'."
                )
            if call_id in unanswered:  # a second answer to one call is left to the model
                unanswered.remove(call_id)
            continue
        if unanswered:
            return _unanswered(unanswered)
        calls = entry.get("tool_calls") if role == "assistant" else None
        listed = calls if isinstance(calls, list) else []
        unanswered = [str(call.get("id")) for call in listed if isinstance(call, dict)]
        expected = set(unanswered)
    return _unanswered(unanswered) if unanswered else None


def _unanswered(call_ids: Sequence[str]) -> str:
    return (
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(call_ids)}"
    )


def _error(message: str) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": None, "code": None}


def _split(step: str | ToolCall | ToolCalls) -> tuple[str | None, list[ToolCall] | None]:
    if isinstance(step, str):
        return step, None
    if isinstance(step, list | tuple):
        return None, list(step)
    return None, [step]
