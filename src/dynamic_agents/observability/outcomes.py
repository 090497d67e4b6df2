"""Which handling of an entry a hook is told about, and how it ended, as spans and metrics name it."""

from __future__ import annotations

import asyncio
from enum import StrEnum

from dynamic_agents.events import AgentRequestEvent, ResponseStatus, Target
from dynamic_agents.exceptions import RunLostError
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.transports import Completion, Delivery

__all__ = ["Outcome", "target_name"]


class Outcome(StrEnum):
    """The ``outcome`` attribute of ``dynamic_agents.worker.outcomes`` and of ``process`` spans.

    The first five are the answer's status. ``duplicate``: answered before (acked, not run again);
    ``no_route``: no rule matched (answered with an error); ``dead_lettered``: set aside after
    ``max_deliveries``; ``interrupted``: the worker stopped, or another worker took the entry or the
    session over (nothing published; it runs again elsewhere); ``failed``: the worker could not
    answer (e.g. Redis unreachable; the entry stays pending for a retry).
    """

    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    NO_ROUTE = "no_route"
    DEAD_LETTERED = "dead_lettered"
    INTERRUPTED = "interrupted"
    FAILED = "failed"

    @classmethod
    def of_answer(cls, result: ExecutionResult, completion: Completion, *, routed: bool) -> Outcome:
        if not completion.created:
            return cls.DUPLICATE
        if not routed and result.status == ResponseStatus.ERROR:
            return cls.NO_ROUTE
        return cls(str(result.status))

    @classmethod
    def of_error(cls, error: BaseException) -> Outcome:
        if isinstance(error, asyncio.CancelledError | RunLostError):
            return cls.INTERRUPTED
        return cls.FAILED


def target_name(target: Target | None) -> str:
    """``agent:support``: how spans and metrics name a target (empty when there is none)."""
    return f"{target.type.value}:{target.id}" if target is not None else ""


DeliveryKey = tuple[str, str, str, str, int]


def delivery_key(delivery: Delivery[AgentRequestEvent]) -> DeliveryKey:
    """What tells one delivery apart from every other one a process handles at once: the same
    entry reaches each group reading its stream, and comes again (to this consumer or another)
    when redelivered, so hooks shared by workers key their state by all of these."""
    return (delivery.stream, delivery.group, delivery.consumer, delivery.entry_id, delivery.delivery_count)
