"""Hooks around each request: the one interface metrics, tracing and tests plug into.

A worker calls its hooks at these points (every method is optional; a worker without hooks builds
nothing and awaits nothing for them):

* ``on_start(worker)`` / ``on_stop(worker)``: the consume loop starts / ends (after the runs a
  :meth:`~dynamic_agents.worker.AgentWorker.stop` drains); a run cancelled while the ``on_start``
  hooks are called calls ``on_stop`` on every hook (on those not started yet too), and ``stop()``
  cancels the ``on_start`` hooks of a worker it started still going ``block`` + 5 s into it, and
  its ``on_stop`` hooks still going ``abandon_after`` after its runs ended;
* ``on_received(delivery)``: a request entry was read (undecodable ones never get here);
* ``on_duplicate(delivery)``: it was answered before (a redelivery): acked, not run again;
* ``on_routed(delivery, target)``: routed, ``target`` ``None`` when no rule matched;
* ``before_execute(context)`` / ``after_execute(context, result)``: around the run;
* ``before_respond(delivery, response, headers)``: the answer is about to be written; a hook may add
  envelope headers to the reply (``headers`` is the reply's, mutable);
* ``after_respond(delivery, result, completion)``: answered (``completion.created`` false: it had
  been answered already);
* ``after_complete(context, completion)``: the run's own answer was written;
* ``on_dead_letter(delivery, written)``: past ``max_deliveries``, set aside (``written`` false when
  another consumer had taken the entry);
* ``after_handle(delivery, error)``: always last, with the exception that ended the handling or
  ``None``: a cancellation (the worker stopping, or the entry taken over by another consumer),
  :class:`~dynamic_agents.exceptions.RunLostError` for a lost session lease (nothing was published),
  or a failure.

``on_stop`` and ``after_handle`` end what a hook keeps (a sampler, a span, an entry in flight): the
worker cancelled while one hook's call awaits still calls the hooks after it, and the cancellation
goes on after them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dynamic_agents._validation import a_type, shown
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, Target
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.transports import Completion, Delivery

if TYPE_CHECKING:
    from dynamic_agents.worker.worker import AgentWorker

__all__ = ["BaseHooks", "RunContext", "WorkerHooks"]


@dataclass(slots=True)
class RunContext:
    """One request being handled: what it is, where it goes, and room for a hook's own state.

    ``entry_id`` is the id of the entry on ``stream``; entry ids are per stream (two streams may
    have the same one), and one entry is delivered to every group reading its stream and again
    after a redelivery. ``delivery`` is the one being handled (the last of a merged turn): a hook
    shared by several workers keys its state by it (its stream, group, consumer, entry id and
    delivery count), not by the entry id.
    """

    request: AgentRequestEvent
    target: Target
    delivery_count: int
    entry_id: str
    state: dict[str, Any] = field(default_factory=dict)
    stream: str = ""  # after the fields above: a RunContext built with positional arguments keeps working
    delivery: Delivery[AgentRequestEvent] | None = None


class WorkerHooks(Protocol):
    """Called around each request (see the module documentation). Every method is optional
    (subclass :class:`BaseHooks`); a failing hook is logged and does not fail the run."""

    async def on_start(self, worker: AgentWorker) -> None: ...

    async def on_stop(self, worker: AgentWorker) -> None: ...

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None: ...

    async def on_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None: ...

    async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None: ...

    async def before_execute(self, context: RunContext) -> None: ...

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None: ...

    async def before_respond(
        self, delivery: Delivery[AgentRequestEvent], response: AgentResponseEvent, headers: dict[str, str]
    ) -> None: ...

    async def after_respond(
        self, delivery: Delivery[AgentRequestEvent], result: ExecutionResult, completion: Completion
    ) -> None: ...

    async def after_complete(self, context: RunContext, completion: Completion) -> None: ...

    async def on_dead_letter(self, delivery: Delivery[AgentRequestEvent], written: bool) -> None: ...

    async def after_handle(
        self, delivery: Delivery[AgentRequestEvent], error: BaseException | None
    ) -> None: ...


class BaseHooks:
    """No-op hooks to subclass."""

    async def on_start(self, worker: AgentWorker) -> None:
        return None

    async def on_stop(self, worker: AgentWorker) -> None:
        return None

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
        return None

    async def on_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None:
        return None

    async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
        return None

    async def before_execute(self, context: RunContext) -> None:
        return None

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        return None

    async def before_respond(
        self, delivery: Delivery[AgentRequestEvent], response: AgentResponseEvent, headers: dict[str, str]
    ) -> None:
        return None

    async def after_respond(
        self, delivery: Delivery[AgentRequestEvent], result: ExecutionResult, completion: Completion
    ) -> None:
        return None

    async def after_complete(self, context: RunContext, completion: Completion) -> None:
        return None

    async def on_dead_letter(self, delivery: Delivery[AgentRequestEvent], written: bool) -> None:
        return None

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        return None


_HOOK_METHODS = tuple(name for name in vars(BaseHooks) if not name.startswith("_"))


def check_hooks(hooks: Iterable[WorkerHooks]) -> list[WorkerHooks]:
    """A worker's ``hooks`` argument as a list, each with at least one hook method (an instance,
    not a class), else a :class:`ConfigurationError` naming it. The worker skips the methods a
    hook lacks, so one with none of them (``tracing`` for ``tracing.hooks()``, a recorder for its
    ``MetricsHooks``) was taken and did nothing, unsaid. One hooks object given twice is refused
    too: it would be called twice at each point."""
    try:
        checked = list(hooks)
    except TypeError:  # one hooks object, not in a list
        raise ConfigurationError(
            f"hooks must be a list of worker hooks ([tracing.hooks(), …]), got {shown(hooks)}"
        ) from None
    for index, hook in enumerate(checked):
        if isinstance(hook, type) or not any(callable(getattr(hook, name, None)) for name in _HOOK_METHODS):
            got = f"the class {hook.__name__}" if isinstance(hook, type) else shown(hook)
            raise ConfigurationError(
                f"hooks[{index}] must be worker hooks (tracing.hooks(), MetricsHooks(recorder), an "
                f"instance of a BaseHooks subclass), got {got}"
            )
        # called twice at each point: every request counted twice, a span started over another
        first = next(earlier for earlier, other in enumerate(checked) if other is hook)
        if first != index:
            raise ConfigurationError(
                f"hooks[{index}] is hooks[{first}] again ({a_type(hook)}): give each hooks object once"
            )
    return checked
