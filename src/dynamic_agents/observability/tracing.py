"""OpenTelemetry tracing: one trace from the interface, through the worker, to the reply.

The trace context travels in the envelope's ``traceparent`` / ``tracestate`` headers (W3C trace
context), where FastStream's ``RedisTelemetryMiddleware`` writes and reads it, so traces join
FastStream services in both directions; a request without those headers may carry ``traceparent``
in its ``metadata`` instead.

Spans (name — kind):

* ``{stream} publish`` — producer: :meth:`Tracing.publish` (``AgentClient(tracing=…)`` uses it);
* ``{stream} process`` — consumer: the worker handling one entry, child of the publisher's span;
  its children ``route``, ``invoke_agent`` / ``invoke_workflow`` (the run of an agent or team / of
  a workflow; LLM calls nest under it) and ``reply publish`` (the answer, whose envelope carries
  this span's context);
* ``chat {model}`` — client: an LLM call through an ``LLMRouter`` built with ``tracing=``.

Span names never hold what a request may choose — its target or its reply stream — so their
number stays bounded: those are attributes (``dynamic_agents.target``, ``gen_ai.agent.id``,
``messaging.destination.name``). ``{stream}`` is the worker's or client's configured request
stream, ``{model}`` a model group of the router's configuration.

Attributes follow the OpenTelemetry messaging and GenAI conventions plus ``dynamic_agents.*`` ids.
They never hold content, metadata or secrets. Without ``opentelemetry-api`` installed a
:class:`Tracing` does nothing (``enabled`` is false) and costs next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, overload

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import redact_text
from dynamic_agents._validation import shown
from dynamic_agents._version import __version__
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent
from dynamic_agents.exceptions import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

    from dynamic_agents.observability.tracing_hooks import TracingHooks

__all__ = ["LLMCall", "TracedStream", "Tracing"]

logger = get_logger("observability")

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
STREAM_CONSUMED: Final = "dynamic_agents.stream.consumed"
GEN_AI_OPERATION: Final = "gen_ai.operation.name"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
REPLY_SPAN: Final = "reply publish"


class Tracing:
    """Where spans go (``tracer_provider``, else the global one) and how context travels.

    ``propagator`` defaults to the W3C trace-context propagator, the one FastStream's middleware
    uses for the trace (it carries W3C ``baggage`` beside it: pass OpenTelemetry's default
    composite, ``propagate.get_global_textmap()``, to read and write that too). With
    ``opentelemetry-api`` absent, every method is a no-op and :meth:`publish` adds no headers.
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, propagator: TextMapPropagator | None = None
    ) -> None:
        # Each failed late: the provider with a bare AttributeError (get_tracer), the propagator
        # at the first publish (out of AgentClient.publish) or request (logged, no span)
        if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
            raise ConfigurationError(
                "tracer_provider must be a TracerProvider (opentelemetry.sdk.trace.TracerProvider(…)) "
                f"or None (the global one), got {shown(tracer_provider)}"
            )
        if propagator is not None and not all(
            callable(getattr(propagator, method, None)) for method in ("extract", "inject")
        ):
            raise ConfigurationError(
                "propagator must be a TextMapPropagator (TraceContextTextMapPropagator()) or None "
                f"(W3C trace context), got {shown(propagator)}"
            )
        self._tracer: Tracer | None = None
        self._propagator: TextMapPropagator | None = None
        self._fields: tuple[str, ...] = TRACE_HEADERS
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            return
        self._tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider)
        self._propagator = propagator or TraceContextTextMapPropagator()
        # The headers it reads: B3's, or W3C baggage beside the trace context (a composite)
        fields = getattr(self._propagator, "fields", None)
        if isinstance(fields, set | frozenset | list | tuple) and fields:
            self._fields = tuple(fields)

    def __repr__(self) -> str:
        return f"Tracing(enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        """False when ``opentelemetry-api`` is not installed."""
        return self._tracer is not None

    def hooks(self) -> TracingHooks:
        """Worker hooks recording the worker's spans: ``AgentWorker(..., hooks=[tracing.hooks()])``."""
        from dynamic_agents.observability.tracing_hooks import TracingHooks

        return TracingHooks(self)

    # -- context propagation ----------------------------------------------------------------------

    def extract(
        self, headers: Mapping[str, str], metadata: Mapping[str, Any] | None = None
    ) -> Context | None:
        """The context a message carries in the propagator's headers (``traceparent``,
        ``tracestate``; ``baggage``, B3's… with another propagator); without a span context in
        them, its ``metadata``'s ``traceparent`` / ``tracestate`` on top (nothing else of the
        request's content); ``None`` when it carries none of these."""
        if self._propagator is None:
            return None
        carrier = {key: headers[key] for key in self._fields if key in headers}
        context = self._propagator.extract(carrier) if carrier else None
        if metadata is not None and (context is None or not _has_span(context)):
            carrier = {key: value for key in TRACE_HEADERS if isinstance(value := metadata.get(key), str)}
            if carrier:
                context = self._propagator.extract(carrier, context=context)
        return context

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
            attributes={**event_attributes(event), DESTINATION: stream, OPERATION: "send", **attributes},
        )
        assert span is not None
        headers: dict[str, str] = {}
        with _active(span, ends=lambda: True):  # the propagator's failure too ends it
            self.inject(headers, span)
            yield headers

    @contextmanager
    def llm_call(self, model: str) -> Iterator[LLMCall]:
        """A client span around one LLM call (current while it runs); see :class:`LLMCall`."""
        span = self.start_span(
            f"chat {model}",
            None if self._tracer is None else _client_kind(),
            attributes={GEN_AI_OPERATION: "chat", "gen_ai.request.model": model},
        )
        call = LLMCall(span)
        if span is None:
            yield call
            return
        with _active(span, ends=lambda: not call.streaming):  # a stream's span ends with the stream
            yield call


@overload
def check_tracing(tracing: object) -> Tracing | None: ...


@overload
def check_tracing(tracing: object, *, optional: Literal[False]) -> Tracing: ...


def check_tracing(tracing: object, *, optional: bool = True) -> Tracing | None:
    """A ``tracing`` argument (of a client, an LLM router, the worker's hooks): a
    :class:`Tracing`, or ``None`` where ``optional``; else a :class:`ConfigurationError` naming
    it (the provider given for ``Tracing(provider)`` was taken, and every publish, LLM call or
    hook call failed with a bare AttributeError)."""
    if isinstance(tracing, Tracing) or (tracing is None and optional):
        return tracing
    raise ConfigurationError(
        f"tracing must be a Tracing (Tracing(tracer_provider)){' or None' if optional else ''}, "
        f"got {shown(tracing)}"
    )


class LLMCall:
    """One traced LLM call: :meth:`done` records the response's usage, cost and model."""

    def __init__(self, span: Span | None) -> None:
        self.span = span
        self.streaming = False

    def done(self, response: Any, *, stream: bool = False) -> Any:
        """Record ``response`` (a litellm ``ModelResponse``) and return it; a stream comes back
        wrapped so the span ends with it (see :class:`TracedStream`)."""
        if self.span is None:
            return response
        if stream:
            self.streaming = True
            return TracedStream(self.span, response)
        _record_response(self.span, response)
        return response


class TracedStream:
    """A streamed LLM answer whose ``chat`` span ends with it: read to the end (or failed), closed
    (:meth:`aclose`, which closes the provider's stream too), or dropped before its end — garbage
    collected, when the provider's stream is closed too (its ``aclose()`` scheduled on the event
    loop the stream was made in, if that loop still runs). ``dynamic_agents.stream.consumed`` says
    whether it was read to the end; a stream closed or dropped early is not a failure (its status
    stays unset)."""

    def __init__(self, span: Span, stream: Any) -> None:
        self._span = span
        self._stream = stream
        self._iterator: AsyncIterator[Any] | None = None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop: no loop to close a dropped stream on
            loop = None
        # Holds the span and the provider's stream, never this object: it ends the span of a
        # stream nobody closed and closes what it wraps (litellm's stream wrapper is no async
        # generator, so asyncio would not close it, nor its HTTP response).
        self._unread = weakref.finalize(self, _end_unconsumed, span, stream, loop)
        self._unread.atexit = False  # at exit the exporter may be gone; nothing to report then

    def __repr__(self) -> str:
        return f"TracedStream(ended={not self._unread.alive})"

    def __aiter__(self) -> TracedStream:
        return self

    async def __anext__(self) -> Any:
        if not self._unread.alive:
            raise StopAsyncIteration
        if self._iterator is None:
            self._iterator = aiter(self._stream)
        try:
            chunk = await anext(self._iterator)
        except StopAsyncIteration:
            self._end(consumed=True)
            raise
        except BaseException as error:  # cancelled (a run's timeout, a stop) or failed mid-read
            fail_span(self._span, error)
            self._end(consumed=False)
            close = getattr(self._stream, "aclose", None)
            if close is not None:  # its HTTP response too; not awaited here: the error goes on at once
                _close_dropped(close)
            raise
        if getattr(chunk, "usage", None) is not None:
            _record_response(self._span, chunk)
        return chunk

    async def aclose(self) -> None:
        """Stop reading: close the provider's stream and end the span (not as a failure)."""
        if not self._unread.alive:
            return
        self._end(consumed=False)
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()

    def _end(self, *, consumed: bool) -> None:
        self._unread.detach()
        self._span.set_attribute(STREAM_CONSUMED, consumed)
        self._span.end()


_closing: set[asyncio.Future[Any]] = set()  # closes of dropped streams, held until done


def _end_unconsumed(span: Span, stream: Any, loop: asyncio.AbstractEventLoop | None) -> None:
    """A dropped stream's finalizer (any thread, during garbage collection): end its span and
    have its loop close the provider's stream, as asyncio does for a dropped async generator."""
    span.set_attribute(STREAM_CONSUMED, False)
    span.end()
    close = getattr(stream, "aclose", None)
    if close is None or loop is None or loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing runs it any more
        loop.call_soon_threadsafe(_close_dropped, close)


def _close_dropped(close: Callable[[], Awaitable[object]]) -> None:
    try:
        closing = asyncio.ensure_future(close())
    except Exception as error:  # an aclose() that fails at once
        logger.debug("closing a dropped LLM stream failed: %s", redact_text(str(error)))
        return
    _closing.add(closing)
    closing.add_done_callback(_closed)


def _closed(closing: asyncio.Future[Any]) -> None:
    _closing.discard(closing)
    if not closing.cancelled() and (error := closing.exception()) is not None:
        logger.debug("closing a dropped LLM stream failed: %s", redact_text(str(error)))


def event_attributes(event: AgentRequestEvent | AgentResponseEvent) -> dict[str, str | int]:
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
            fail_span(span, error)
            span.end()
            raise
    if ends():
        span.end()


def _has_span(context: Context) -> bool:
    from opentelemetry import trace

    return trace.get_current_span(context).get_span_context().is_valid


def _client_kind() -> SpanKind:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT


def error_status(span: Span, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, redact_text(description)))


def fail_span(span: Span, error: BaseException) -> None:
    """Mark a span failed with the error's type and its redacted text (never the traceback's
    locals: exception events are not recorded)."""
    span.set_attribute("error.type", type(error).__name__)
    error_status(span, f"{type(error).__name__}: {error}")


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
