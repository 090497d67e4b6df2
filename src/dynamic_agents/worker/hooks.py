"""Hooks around each run: the one interface metrics, tracing and tests plug into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from dynamic_agents.events import AgentRequestEvent, Target
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.transports import Completion

__all__ = ["BaseHooks", "RunContext", "WorkerHooks"]


@dataclass(slots=True)
class RunContext:
    """One request being handled: what it is, where it goes, and room for a hook's own state."""

    request: AgentRequestEvent
    target: Target
    delivery_count: int
    entry_id: str
    state: dict[str, Any] = field(default_factory=dict)


class WorkerHooks(Protocol):
    """Called around each run. Every method is optional (subclass :class:`BaseHooks`); a failing
    hook is logged and does not fail the run."""

    async def before_execute(self, context: RunContext) -> None: ...

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None: ...

    async def after_complete(self, context: RunContext, completion: Completion) -> None: ...


class BaseHooks:
    """No-op hooks to subclass."""

    async def before_execute(self, context: RunContext) -> None:
        return None

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        return None

    async def after_complete(self, context: RunContext, completion: Completion) -> None:
        return None
