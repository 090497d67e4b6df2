"""``TracingHooks``: the worker's spans — ``process``, ``route``, the run (``invoke_agent`` /
``invoke_workflow``) and ``reply publish`` — recorded through its hooks (see
:mod:`dynamic_agents.observability.tracing`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, Target, TargetType
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.observability.outcomes import DeliveryKey, Outcome, delivery_key, target_name
from dynamic_agents.observability.tracing import (
    CONSUMER_GROUP,
    DELIVERY_COUNT,
    DESTINATION,
    GEN_AI_AGENT_ID,
    GEN_AI_OPERATION,
    MESSAGE_ID,
    OPERATION,
    OUTCOME,
    REPLY_SPAN,
    REQUEST_ID,
    SESSION_ID,
    STATUS,
    TARGET,
    Tracing,
    check_tracing,
    error_status,
    event_attributes,
    fail_span,
)
from dynamic_agents.transports import Completion, Delivery
from dynamic_agents.worker.hooks import BaseHooks, RunContext

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from dynamic_agents.worker import AgentWorker

__all__ = ["TracingHooks"]


@dataclass(slots=True)
class _Trace:
    """The spans of one entry being handled, and the context tokens to detach."""

    span: Span
    token: Token[Context]
    execute: Span | None = None
    execute_token: Token[Context] | None = None
    # The task whose context holds ``execute_token``: a merged turn runs in the handler of its
    # first entry while its spans are the last entry's, whose own handler may end it.
    execute_task: asyncio.Task[object] | None = None
    respond: Span | None = None
    routed: bool = True
    ended: bool = False  # its outcome is set


class TracingHooks(BaseHooks):
    """Worker hooks recording ``process`` / ``route`` / ``invoke_*`` / ``reply publish`` spans (see
    the module documentation). The ``process`` span is current while the entry is handled and the
    run's span while it runs, so spans the executor makes (LLM calls) nest under them."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = check_tracing(tracing, optional=False)  # Tracing.hooks() makes these
        self._traces: dict[DeliveryKey, _Trace] = {}  # by delivery

    def __repr__(self) -> str:
        return f"TracingHooks({self.tracing!r}, in_flight={len(self._traces)})"

    async def on_stop(self, worker: AgentWorker) -> None:
        """End the spans of the runs the worker abandoned (still going after their cancellation;
        their entries run again elsewhere), whose handlers' ``after_handle`` comes late, if ever
        (a run stuck in a thread): interrupted."""
        consumer = (worker.stream, worker.settings.group, worker.settings.consumer)
        for key in [key for key in self._traces if key[:3] == consumer]:
            # (its context tokens are its handler's task's, which ends with them, if ever)
            self._end(self._traces.pop(key), asyncio.CancelledError("abandoned"), detach=False)

    def _of(self, context: RunContext) -> _Trace | None:
        return self._traces.get(delivery_key(context.delivery)) if context.delivery is not None else None

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
        if not self.tracing.enabled:
            return
        from opentelemetry import context, trace

        event = delivery.event
        headers = delivery.message.headers if delivery.message is not None else {}
        parent = self.tracing.extract(headers, event.metadata)
        span = self.tracing.start_span(
            f"{delivery.stream} process",
            trace.SpanKind.CONSUMER,
            parent=parent,
            attributes={
                **event_attributes(event),
                DESTINATION: delivery.stream,
                MESSAGE_ID: delivery.entry_id,
                OPERATION: "process",
                CONSUMER_GROUP: delivery.group,
                DELIVERY_COUNT: delivery.delivery_count,
            },
        )
        assert span is not None
        # In the context the message carried: its baggage, say, is the run's too (and the reply's)
        token = context.attach(trace.set_span_in_context(span, parent))
        self._traces[delivery_key(delivery)] = _Trace(span, token)

    async def on_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None:
        if (found := self._traces.get(delivery_key(delivery))) is not None:
            found.span.set_attribute(OUTCOME, Outcome.DUPLICATE.value)
            found.ended = True

    async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
        found = self._traces.get(delivery_key(delivery))
        if found is None:
            return
        span = self.tracing.start_span("route", parent=found.span)
        assert span is not None
        if target is None:
            error_status(span, "no route")
            found.routed = False
        else:
            span.set_attribute(TARGET, target_name(target))
            found.span.set_attribute(TARGET, target_name(target))
        span.end()

    async def before_execute(self, context: RunContext) -> None:
        found = self._of(context)
        if found is None:
            return
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        operation = _operation(context.target)
        attributes: dict[str, str | int] = {
            GEN_AI_OPERATION: operation,
            TARGET: target_name(context.target),
            REQUEST_ID: context.request.id,
            SESSION_ID: context.request.session_id,
        }
        if context.target.type is not TargetType.WORKFLOW:
            attributes[GEN_AI_AGENT_ID] = context.target.id
        # The name is the operation alone: the target is often the request's to choose.
        span = self.tracing.start_span(operation, parent=found.span, attributes=attributes)
        assert span is not None
        found.execute = span
        found.execute_token = otel_context.attach(trace.set_span_in_context(span))
        found.execute_task = asyncio.current_task()

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        found = self._of(context)
        if found is None or found.execute is None:
            return
        span = found.execute
        span.set_attribute(STATUS, str(result.status))
        if result.tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", result.tokens.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", result.tokens.output_tokens)
        if result.cost is not None:
            span.set_attribute("dynamic_agents.cost_usd", result.cost)
        if not result.ok:
            error_status(span, result.error_message or str(result.status))
        _close_execute(found)

    async def before_respond(
        self, delivery: Delivery[AgentRequestEvent], response: AgentResponseEvent, headers: dict[str, str]
    ) -> None:
        found = self._traces.get(delivery_key(delivery))
        if found is None:
            return
        from opentelemetry import trace

        if found.respond is not None:  # a reply that could not be sent (too large), replaced by this one
            error_status(found.respond, "not sent: replaced by another reply")
            found.respond.end()
        stream = delivery.event.reply_stream or (
            delivery.message.reply_to if delivery.message is not None else None
        )
        span = self.tracing.start_span(
            REPLY_SPAN,  # not the stream: each conversation (and request) may have its own
            trace.SpanKind.PRODUCER,
            parent=found.span,
            attributes={
                **event_attributes(response),
                DESTINATION: stream or "",
                OPERATION: "send",
                STATUS: str(response.status),
            },
        )
        assert span is not None
        found.respond = span
        self.tracing.inject(headers, span)

    async def after_respond(
        self, delivery: Delivery[AgentRequestEvent], result: ExecutionResult, completion: Completion
    ) -> None:
        found = self._traces.get(delivery_key(delivery))
        if found is None:
            return
        found.span.set_attribute(STATUS, str(result.status))
        found.span.set_attribute(OUTCOME, Outcome.of_answer(result, completion, routed=found.routed).value)
        found.ended = True
        if found.respond is not None:
            if not completion.created:  # its reply was not written: another had answered it
                error_status(found.respond, "not sent: the request was answered before")
            found.respond.end()
            found.respond = None

    async def on_dead_letter(self, delivery: Delivery[AgentRequestEvent], written: bool) -> None:
        found = self._traces.get(delivery_key(delivery))
        if found is None:
            return
        if found.respond is not None:
            if not written:  # its error reply was not written either
                error_status(found.respond, "not sent: the entry was taken over or answered before")
            found.respond.end()
            found.respond = None
        if written:
            found.span.set_attribute(OUTCOME, Outcome.DEAD_LETTERED.value)
            error_status(found.span, "dead-lettered")
            found.ended = True

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        found = self._traces.pop(delivery_key(delivery), None)
        if found is None:
            return
        self._end(found, error, detach=True)

    @staticmethod
    def _end(found: _Trace, error: BaseException | None, *, detach: bool) -> None:
        """End an entry's spans, once its handling ended with ``error`` (or ``None``); ``detach``:
        in its handler's task, whose context is restored."""
        from opentelemetry import context

        if found.execute is not None:
            error_status(found.execute, "interrupted")
        _close_execute(found)
        if found.respond is not None:
            error_status(found.respond, "interrupted")
            found.respond.end()
        if detach:
            context.detach(found.token)
        # Answered (or set aside) before the handler ended: that outcome stands, as in the
        # metrics, whatever ended the handler after it (a stop while a request cancelled in the
        # queue waits for the run ahead of it, to keep the order)
        if not found.ended:
            if error is not None:
                found.span.set_attribute(OUTCOME, Outcome.of_error(error).value)
                fail_span(found.span, error)
            else:  # handed back unanswered: taken over by another consumer, say
                found.span.set_attribute(OUTCOME, Outcome.INTERRUPTED.value)
        found.span.end()


def _operation(target: Target) -> str:
    """The run's GenAI operation (``gen_ai.operation.name``), which also names its span."""
    return "invoke_workflow" if target.type is TargetType.WORKFLOW else "invoke_agent"


def _close_execute(found: _Trace) -> None:
    from opentelemetry import context

    if found.execute_token is not None:
        # Only in the context it was attached to; that task's own process token, detached when
        # it ends, restores what was current before either.
        if asyncio.current_task() is found.execute_task:
            context.detach(found.execute_token)
        found.execute_token = None
        found.execute_task = None
    if found.execute is not None:
        found.execute.end()
        found.execute = None
