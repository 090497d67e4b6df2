"""OpenTelemetry tracing: one trace from the interface, through the worker, to the reply.

The trace context travels in the envelope's ``traceparent`` / ``tracestate`` headers (W3C trace
context), where FastStream's ``RedisTelemetryMiddleware`` writes and reads it, so traces join
FastStream services in both directions; a request without those headers may carry ``traceparent``
in its ``metadata`` instead.

Spans (name — kind):

* ``{stream} publish`` — producer: :meth:`Tracing.publish` (``AgentClient(tracing=…)`` uses it);
* ``{stream} process`` — consumer: the worker handling one entry, child of the publisher's span;
  its children ``route``, ``execute {type}:{id}`` (the run; LLM calls nest under it) and
  ``{reply stream} publish`` (the answer, whose envelope carries this span's context);
* ``chat {model}`` — client: an LLM call through an ``LLMRouter`` built with ``tracing=``.

Attributes follow the OpenTelemetry messaging and GenAI conventions plus ``dynamic_agents.*`` ids.
They never hold content, metadata or secrets. Without ``opentelemetry-api`` installed a
:class:`Tracing` does nothing (``enabled`` is false) and costs next to nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dynamic_agents._redaction import REDACTOR
from dynamic_agents._version import __version__
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, Target
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.observability.outcomes import Outcome, target_name
from dynamic_agents.transports import Completion, Delivery
from dynamic_agents.worker.hooks import BaseHooks, RunContext

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

__all__ = ["LLMCall", "Tracing", "TracingHooks"]

TRACE_HEADERS: Final = ("traceparent", "tracestate")
INSTRUMENTATION_NAME: Final = "dynamic_agents"

MESSAGING_SYSTEM: Final = "messaging.system"
DESTINATION: Final = "messaging.destination.name"
MESSAGE_ID: Final = "messaging.message.id"
CONVERSATION_ID: Final = "messaging.message.conversation_id"
OPERATION: Final = "messaging.operation.type"
CONSUMER_GROUP: Final = "messaging.consumer.group.name"
REQUEST_ID: Final = "dynamic_agents.request_id"
SESSION_ID: Final = "dynamic_agents.session_id"
TARGET: Final = "dynamic_agents.target"
STATUS: Final = "dynamic_agents.status"
OUTCOME: Final = "dynamic_agents.outcome"
DELIVERY_COUNT: Final = "dynamic_agents.delivery_count"


class Tracing:
    """Where spans go (``tracer_provider``, else the global one) and how context travels.

    ``propagator`` defaults to the W3C trace-context propagator (what FastStream uses). With
    ``opentelemetry-api`` absent, every method is a no-op and :meth:`publish` adds no headers.
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, propagator: TextMapPropagator | None = None
    ) -> None:
        self._tracer: Tracer | None = None
        self._propagator: TextMapPropagator | None = None
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            return
        self._tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider)
        self._propagator = propagator or TraceContextTextMapPropagator()

    def __repr__(self) -> str:
        return f"Tracing(enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        """False when ``opentelemetry-api`` is not installed."""
        return self._tracer is not None

    def hooks(self) -> TracingHooks:
        """Worker hooks recording the worker's spans: ``AgentWorker(..., hooks=[tracing.hooks()])``."""
        return TracingHooks(self)

    # -- context propagation ----------------------------------------------------------------------

    def extract(
        self, headers: Mapping[str, str], metadata: Mapping[str, Any] | None = None
    ) -> Context | None:
        """The context a message carries: its ``traceparent`` header, else its ``metadata``'s."""
        if self._propagator is None:
            return None
        carrier = {key: headers[key] for key in TRACE_HEADERS if key in headers}
        if "traceparent" not in carrier and metadata is not None:
            carrier = {key: metadata[key] for key in TRACE_HEADERS if isinstance(metadata.get(key), str)}
        return self._propagator.extract(carrier) if carrier else None

    def inject(self, headers: MutableMapping[str, str], span: Span | None = None) -> None:
        """Write ``span``'s context (else the current one) into ``headers``."""
        if self._propagator is None:
            return
        from opentelemetry import trace

        self._propagator.inject(headers, context=trace.set_span_in_context(span) if span else None)

    # -- spans ------------------------------------------------------------------------------------

    def start_span(
        self,
        name: str,
        kind: SpanKind | None = None,
        *,
        parent: Span | Context | None = None,
        attributes: Mapping[str, str | int] | None = None,
    ) -> Span | None:
        """A started span (``None`` when disabled); ``parent`` a span, an extracted context, or the
        current context when ``None``."""
        if self._tracer is None:
            return None
        from opentelemetry import trace

        context = trace.set_span_in_context(parent) if isinstance(parent, trace.Span) else parent
        return self._tracer.start_span(
            name, context=context, kind=kind or trace.SpanKind.INTERNAL, attributes=attributes
        )

    @contextmanager
    def publish(
        self, stream: str, event: AgentRequestEvent | AgentResponseEvent, **attributes: str | int
    ) -> Iterator[dict[str, str]]:
        """A producer span around publishing ``event``; yields the headers to send with it."""
        if self._tracer is None:
            yield {}
            return
        from opentelemetry import trace

        span = self.start_span(
            f"{stream} publish",
            trace.SpanKind.PRODUCER,
            attributes={**_event_attributes(event), DESTINATION: stream, OPERATION: "send", **attributes},
        )
        assert span is not None
        headers: dict[str, str] = {}
        self.inject(headers, span)
        with _active(span, ends=lambda: True):
            yield headers

    @contextmanager
    def llm_call(self, model: str) -> Iterator[LLMCall]:
        """A client span around one LLM call (current while it runs); see :class:`LLMCall`."""
        span = self.start_span(
            f"chat {model}",
            None if self._tracer is None else _client_kind(),
            attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": model},
        )
        call = LLMCall(span)
        if span is None:
            yield call
            return
        with _active(span, ends=lambda: not call.streaming):  # a stream's span ends with the stream
            yield call


class LLMCall:
    """One traced LLM call: :meth:`done` records the response's usage, cost and model."""

    def __init__(self, span: Span | None) -> None:
        self.span = span
        self.streaming = False

    def done(self, response: Any, *, stream: bool = False) -> Any:
        """Record ``response`` (a litellm ``ModelResponse``) and return it; a stream comes back
        wrapped so the span ends with it."""
        if self.span is None:
            return response
        if stream:
            self.streaming = True
            return self._streamed(self.span, response)
        _record_response(self.span, response)
        return response

    @staticmethod
    async def _streamed(span: Span, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    _record_response(span, chunk)
                yield chunk
        except BaseException as error:
            _fail(span, error)
            raise
        finally:
            span.end()


@dataclass(slots=True)
class _Trace:
    """The spans of one entry being handled, and the context tokens to detach."""

    span: Span
    token: Token[Context]
    execute: Span | None = None
    execute_token: Token[Context] | None = None
    respond: Span | None = None
    routed: bool = True


class TracingHooks(BaseHooks):
    """Worker hooks recording ``process`` / ``route`` / ``execute`` / ``publish`` spans (see the
    module documentation). The ``process`` span is current while the entry is handled and the
    ``execute`` span while it runs, so spans the executor makes (LLM calls) nest under them."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self._traces: dict[str, _Trace] = {}

    def __repr__(self) -> str:
        return f"TracingHooks({self.tracing!r}, in_flight={len(self._traces)})"

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
        if not self.tracing.enabled:
            return
        from opentelemetry import context, trace

        event = delivery.event
        headers = delivery.message.headers if delivery.message is not None else {}
        span = self.tracing.start_span(
            f"{delivery.stream} process",
            trace.SpanKind.CONSUMER,
            parent=self.tracing.extract(headers, event.metadata),
            attributes={
                **_event_attributes(event),
                DESTINATION: delivery.stream,
                MESSAGE_ID: delivery.entry_id,
                OPERATION: "process",
                CONSUMER_GROUP: delivery.group,
                DELIVERY_COUNT: delivery.delivery_count,
            },
        )
        assert span is not None
        self._traces[delivery.entry_id] = _Trace(span, context.attach(trace.set_span_in_context(span)))

    async def on_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None:
        if (found := self._traces.get(delivery.entry_id)) is not None:
            found.span.set_attribute(OUTCOME, Outcome.DUPLICATE.value)

    async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
        found = self._traces.get(delivery.entry_id)
        if found is None:
            return
        span = self.tracing.start_span("route", parent=found.span)
        assert span is not None
        if target is None:
            _error_status(span, "no route")
            found.routed = False
        else:
            span.set_attribute(TARGET, target_name(target))
            found.span.set_attribute(TARGET, target_name(target))
        span.end()

    async def before_execute(self, context: RunContext) -> None:
        found = self._traces.get(context.entry_id)
        if found is None:
            return
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        span = self.tracing.start_span(
            f"execute {target_name(context.target)}",
            parent=found.span,
            attributes={
                TARGET: target_name(context.target),
                REQUEST_ID: context.request.id,
                SESSION_ID: context.request.session_id,
            },
        )
        assert span is not None
        found.execute = span
        found.execute_token = otel_context.attach(trace.set_span_in_context(span))

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        found = self._traces.get(context.entry_id)
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
            _error_status(span, result.error_message or str(result.status))
        _close_execute(found)

    async def before_respond(
        self, delivery: Delivery[AgentRequestEvent], response: AgentResponseEvent, headers: dict[str, str]
    ) -> None:
        found = self._traces.get(delivery.entry_id)
        if found is None:
            return
        from opentelemetry import trace

        stream = delivery.event.reply_stream or (
            delivery.message.reply_to if delivery.message is not None else None
        )
        span = self.tracing.start_span(
            f"{stream or '(no reply stream)'} publish",
            trace.SpanKind.PRODUCER,
            parent=found.span,
            attributes={
                **_event_attributes(response),
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
        found = self._traces.get(delivery.entry_id)
        if found is None:
            return
        found.span.set_attribute(STATUS, str(result.status))
        found.span.set_attribute(OUTCOME, Outcome.of_answer(result, completion, routed=found.routed).value)
        if found.respond is not None:
            found.respond.end()
            found.respond = None

    async def on_dead_letter(self, delivery: Delivery[AgentRequestEvent], written: bool) -> None:
        found = self._traces.get(delivery.entry_id)
        if found is None:
            return
        if found.respond is not None:
            found.respond.end()
            found.respond = None
        if written:
            found.span.set_attribute(OUTCOME, Outcome.DEAD_LETTERED.value)
            _error_status(found.span, "dead-lettered")

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        found = self._traces.pop(delivery.entry_id, None)
        if found is None:
            return
        from opentelemetry import context

        for span in (found.execute, found.respond):
            if span is not None:
                _error_status(span, "interrupted")
                span.end()
        _close_execute(found)
        context.detach(found.token)
        if error is not None:
            found.span.set_attribute(OUTCOME, Outcome.of_error(error).value)
            _fail(found.span, error)
        found.span.end()


def _event_attributes(event: AgentRequestEvent | AgentResponseEvent) -> dict[str, str | int]:
    request_id = event.id if isinstance(event, AgentRequestEvent) else event.request_id
    return {
        MESSAGING_SYSTEM: "redis",
        CONVERSATION_ID: event.id,
        REQUEST_ID: request_id,
        SESSION_ID: event.session_id or "",
    }


@contextmanager
def _active(span: Span, *, ends: Callable[[], bool]) -> Iterator[None]:
    """``span`` is current in the block; a failure marks it (redacted, no exception event) and
    ends it; otherwise it ends after the block when ``ends()`` says so."""
    from opentelemetry import trace

    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        try:
            yield
        except BaseException as error:
            _fail(span, error)
            span.end()
            raise
    if ends():
        span.end()


def _close_execute(found: _Trace) -> None:
    from opentelemetry import context

    if found.execute_token is not None:
        context.detach(found.execute_token)
        found.execute_token = None
    if found.execute is not None:
        found.execute.end()
        found.execute = None


def _client_kind() -> SpanKind:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT


def _error_status(span: Span, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, REDACTOR.redact(description)))


def _fail(span: Span, error: BaseException) -> None:
    """Mark a span failed with the error's type and its redacted text (never the traceback's
    locals: exception events are not recorded)."""
    span.set_attribute("error.type", type(error).__name__)
    _error_status(span, f"{type(error).__name__}: {error}")


def _record_response(span: Span, response: Any) -> None:
    usage = getattr(response, "usage", None)
    if usage is not None:
        for attribute, field in (
            ("gen_ai.usage.input_tokens", "prompt_tokens"),
            ("gen_ai.usage.output_tokens", "completion_tokens"),
        ):
            value = getattr(usage, field, None)
            if isinstance(value, int):
                span.set_attribute(attribute, value)
    model = getattr(response, "model", None)
    if isinstance(model, str):
        span.set_attribute("gen_ai.response.model", model)
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, Mapping):
        cost = hidden.get("response_cost")
        if isinstance(cost, int | float):
            span.set_attribute("dynamic_agents.cost_usd", float(cost))
        provider = hidden.get("custom_llm_provider")
        if isinstance(provider, str):
            span.set_attribute("gen_ai.provider.name", provider)
