"""What a worker needs to run a request: the ``Executor`` protocol and its ``ExecutionResult``.

This module is light (no agno, no litellm): a worker depends on the protocol only, and a worker that
runs a plain async function (:class:`FunctionExecutor`) never imports agno or litellm. The agno
implementation is ``dynamic_agents.agents.AgnoExecutor``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import JsonValue

from dynamic_agents._frozen import slot_init
from dynamic_agents._redaction import redact_text
from dynamic_agents._validation import check_choice, check_seconds
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, ResponseStatus, Target

__all__ = ["DeltaCallback", "ExecutionResult", "Executor", "FunctionExecutor", "TokenUsage"]

DeltaCallback = Callable[[str], Awaitable[None]]
"""Receives streamed content as it is produced (each call gets the next slice)."""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


@slot_init
@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """How a run ended and what it produced.

    ``status`` is ``completed``, ``error``, ``timeout`` or ``cancelled`` (``rejected``: a worker too
    busy to run it); a run that reported an error is never ``completed``. ``structured_data`` holds
    a structured output (its JSON is also in ``content``). ``status`` may be given as its text
    (``"timeout"``); any other value is a :class:`~dynamic_agents.exceptions.ConfigurationError`
    here, not a reply that cannot be built later.
    """

    status: ResponseStatus
    content: str = ""
    structured_data: dict[str, JsonValue] | None = None
    error_message: str | None = None
    tokens: TokenUsage | None = None
    cost: float | None = None
    duration_ms: int = 0
    images: tuple[str, ...] = ()
    files: tuple[dict[str, str], ...] = ()
    run_id: str | None = None
    target_name: str | None = None
    metadata: dict[str, JsonValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Built once per request on the worker's path: a member (the common case) costs one
        # identity check; only anything else goes through the full check.
        if type(self.status) is not ResponseStatus:
            object.__setattr__(self, "status", check_choice("status", self.status, ResponseStatus))

    @property
    def ok(self) -> bool:
        return self.status == ResponseStatus.COMPLETED

    def to_response(self, request: AgentRequestEvent, target: Target | None = None) -> AgentResponseEvent:
        """The response event answering ``request`` (secret values masked in its error message)."""
        # Only what differs from the response's defaults: each field passed is validated again.
        fields: dict[str, Any] = {"request_id": request.id, "session_id": request.session_id}
        if self.content:
            fields["content"] = self.content
        if self.structured_data is not None:
            fields["content_type"] = "structured"
            fields["structured_data"] = self.structured_data
        if not self.ok:
            fields["content_type"] = "error"
            fields["status"] = self.status
        if self.error_message:  # an executor's error text may quote a provider error echoing a key
            fields["error_message"] = redact_text(self.error_message)
        if target is not None:
            fields["agent_id"] = target.id
        if self.target_name is not None:
            fields["agent_name"] = self.target_name
        fields["execution_time_ms"] = self.duration_ms
        if self.tokens is not None:
            fields["tokens_used"] = self.tokens.total_tokens
        if self.images:
            fields["images"] = list(self.images)
        if self.files:
            fields["files"] = [dict(item) for item in self.files]
        metadata = dict(self.metadata)
        if target is not None:
            metadata.setdefault("target_type", target.type.value)
        if self.run_id is not None:
            metadata.setdefault("run_id", self.run_id)
        if metadata:
            fields["metadata"] = metadata
        return AgentResponseEvent(**fields)


def _since(started: float) -> int:
    """Milliseconds since ``started`` (``time.monotonic()``)."""
    return round((time.monotonic() - started) * 1000)


@runtime_checkable
class Executor(Protocol):
    """Runs a routed request. Implementations enforce ``timeout`` (returning status ``timeout``)
    and report failures as results, raising only for problems outside the run (an unknown or
    disabled target)."""

    async def execute(
        self,
        target: Target,
        request: AgentRequestEvent,
        *,
        timeout: float | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> ExecutionResult: ...


Handler = Callable[[Target, AgentRequestEvent], Awaitable[str | ExecutionResult] | str | ExecutionResult]


class FunctionExecutor:
    """An :class:`Executor` around a plain (async) function ``(target, request) -> str | ExecutionResult``.

    A string becomes a completed result; an exception, or a return value that is neither a string nor
    an ``ExecutionResult``, an error result naming it. The timeout bounds an async function
    (``asyncio.timeout``); a plain function cannot be interrupted and runs to its end. ``timeout``
    is a number of seconds > 0 (``None`` or ``math.inf``: no limit), else a
    :class:`~dynamic_agents.exceptions.ConfigurationError` before the function is called.
    ``on_delta`` receives a returned string once, whole; a returned ``ExecutionResult`` is passed on
    as it is, without a delta (the function built it, status and content, and has no ``on_delta``).
    """

    def __init__(self, handler: Handler, *, name: str | None = None) -> None:
        self.handler = handler
        self.name = name or getattr(handler, "__name__", "function")

    def __repr__(self) -> str:
        return f"FunctionExecutor({self.name!r})"

    async def execute(
        self,
        target: Target,
        request: AgentRequestEvent,
        *,
        timeout: float | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> ExecutionResult:
        # Checked first: asyncio.timeout("5") raised only once the function was called (its
        # coroutine never awaited); NaN and negatives "timed out" at once.
        timeout = check_seconds("timeout", timeout, forever=True, optional=True)
        started = time.monotonic()
        deadline: asyncio.Timeout | None = None
        try:
            # object: a handler outside the type checker's view may return anything
            outcome: object = self.handler(target, request)
            # an awaitable gets the timeout (a plain function cannot be interrupted); a plain
            # function's str or result skips the Awaitable check, the slow one
            if not isinstance(outcome, str | ExecutionResult) and inspect.isawaitable(outcome):
                async with asyncio.timeout(timeout) as deadline:
                    outcome = await outcome
        except TimeoutError as error:
            if deadline is None or not deadline.expired():  # the function's own (a tool's call, say)
                return ExecutionResult(
                    ResponseStatus.ERROR,
                    error_message=f"{type(error).__name__}: {error}",
                    duration_ms=_since(started),
                )
            return ExecutionResult(
                ResponseStatus.TIMEOUT,
                error_message=f"timed out after {timeout}s",
                duration_ms=_since(started),
            )
        except Exception as error:  # a failed run is a result, not a crash of the worker
            return ExecutionResult(
                ResponseStatus.ERROR,
                error_message=f"{type(error).__name__}: {error}",
                duration_ms=_since(started),
            )
        if isinstance(outcome, ExecutionResult):
            return outcome
        if not isinstance(outcome, str):  # a dict, None (no return)…: the same on every delivery
            return ExecutionResult(
                ResponseStatus.ERROR,
                error_message=f"{self.name} returned {type(outcome).__name__}; a handler returns str or "
                "ExecutionResult",
                duration_ms=_since(started),
            )
        if on_delta is not None and outcome:
            await on_delta(outcome)
        return ExecutionResult(
            ResponseStatus.COMPLETED, content=outcome, duration_ms=_since(started), target_name=self.name
        )
