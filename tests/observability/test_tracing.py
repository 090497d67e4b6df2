"""One trace from the interface through the worker to the reply, across real Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.opentelemetry import RedisTelemetryMiddleware
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dynamic_agents.client import AgentClient
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames, Target
from dynamic_agents.exceptions import ConfigurationError, LLMError
from dynamic_agents.execution import ExecutionResult, FunctionExecutor
from dynamic_agents.llm import RouterConfig, build_router
from dynamic_agents.observability import MetricsHooks, OpenTelemetryMetrics, Tracing, TracingHooks
from dynamic_agents.routing import EventRouter
from dynamic_agents.secrets import SecretsManager, StaticSource
from dynamic_agents.transports import InMemoryTransport, RedisStreamsTransport, Transport
from dynamic_agents.worker import SessionPolicy
from tests.observability.conftest import (
    Stubborn,
    attribute_text,
    by_name,
    hooked_worker,
    taken_before_dead_lettering,
)
from tests.observability.test_metrics import outcomes
from tests.support.waiting import wait_until
from tests.worker.conftest import FAST, request_event

API_KEY = "sk-canary-llm-key-7f3a9c"
METADATA_SECRET = "canary-metadata-secret-51d2"


def finished(exporter: InMemorySpanExporter, name: str) -> bool:
    return any(span.name == name for span in exporter.get_finished_spans())


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def reply_headers(transport: Transport, stream: str) -> dict[str, str]:
    (entry,) = await transport.read_stream(stream, AgentResponseEvent)
    assert entry.message is not None
    return dict(entry.message.headers)


@pytest.mark.redis
async def test_one_trace_from_client_through_worker_and_llm_to_the_reply(
    redis_url: str, redis_prefix: str, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    names = StreamNames(redis_prefix)
    tracing = Tracing(tracer_provider)
    secrets = SecretsManager(StaticSource({"openai": {"api_key": API_KEY}}))
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "g",
                    "litellm_params": {
                        "model": "openai/gpt-4o-mini",
                        "api_key": "secret:openai:api_key",
                        "mock_response": "hello",
                    },
                }
            ]
        }
    )
    llm = await build_router(config, secrets, tracing=tracing)

    async def ask_the_llm(target: Target, request: AgentRequestEvent) -> str:
        response = await llm.acompletion(model="g", messages=[{"role": "user", "content": request.content}])
        return str(response.choices[0].message.content)

    request = request_event(names, "hi", metadata={"api_key": METADATA_SECRET})
    async with (
        RedisStreamsTransport.from_url(redis_url, names=names) as transport,
        AgentClient(transport, tracing=tracing) as client,
        hooked_worker(transport, [tracing.hooks()], FunctionExecutor(ask_the_llm)),
    ):
        response = await client.request(request, timeout=10)
        await wait_until(lambda: finished(exporter, f"{names.requests} process"), what="the process span")
        headers = await reply_headers(transport, names.responses("discord", "c1"))
    await llm.aclose()

    assert response.content == "hello"
    spans = by_name(exporter.get_finished_spans())
    publish = spans[f"{names.requests} publish"]
    process = spans[f"{names.requests} process"]
    route, execute, chat = spans["route"], spans["invoke_agent"], spans["chat g"]
    respond = spans["reply publish"]
    assert {span.context.trace_id for span in spans.values()} == {publish.context.trace_id}
    assert publish.parent is None
    assert parent_of(process) == publish.context.span_id
    assert parent_of(route) == parent_of(execute) == parent_of(respond) == process.context.span_id
    assert parent_of(chat) == execute.context.span_id
    assert (publish.kind, process.kind, respond.kind, chat.kind) == (
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
        SpanKind.CLIENT,
    )
    # the reply carries the worker's context: the interface continues the same trace
    version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        f"{publish.context.trace_id:032x}",
        f"{respond.context.span_id:016x}",
    )
    assert Tracing(tracer_provider).extract(headers) is not None
    attributes = process.attributes or {}
    assert attributes["messaging.system"] == "redis"
    assert attributes["messaging.destination.name"] == names.requests
    assert attributes["dynamic_agents.request_id"] == request.id
    assert attributes["dynamic_agents.session_id"] == request.session_id
    assert attributes["dynamic_agents.target"] == "agent:echo"
    assert attributes["dynamic_agents.outcome"] == "completed"
    assert isinstance(attributes["messaging.message.id"], str)
    chat_attributes = chat.attributes or {}
    assert chat_attributes["gen_ai.request.model"] == "g"
    assert chat_attributes["gen_ai.usage.input_tokens"] > 0
    assert chat_attributes["dynamic_agents.cost_usd"] > 0
    text = attribute_text(list(spans.values()))
    assert API_KEY not in text
    assert METADATA_SECRET not in text


@pytest.mark.redis
@pytest.mark.faststream
async def test_a_trace_from_a_faststream_publisher_through_the_worker_to_a_faststream_consumer(
    redis_url: str, redis_prefix: str, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    names = StreamNames(redis_prefix)
    reply_stream = names.responses("discord", "c1")
    tracing = Tracing(tracer_provider)
    request = request_event(names, "from faststream")
    broker = RedisBroker(redis_url, middlewares=[RedisTelemetryMiddleware(tracer_provider=tracer_provider)])
    delivered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    @broker.subscriber(stream=StreamSub(reply_stream, group="interface", consumer="c1", last_id="0"))
    async def deliver(body: dict[str, Any]) -> None:
        if not delivered.done():
            delivered.set_result(body)

    async with RedisStreamsTransport.from_url(redis_url, names=names) as transport:
        worker = hooked_worker(transport, [tracing.hooks()])
        async with broker:
            await broker.publish(request.model_dump(mode="json"), stream=names.requests)
            await worker.run_until_idle()
            await broker.start()
            body = await asyncio.wait_for(delivered, 10)
        assert body["request_id"] == request.id

    spans = exporter.get_finished_spans()
    (process,) = [s for s in spans if s.name == f"{names.requests} process"]
    (producer,) = [s for s in spans if s.context.span_id == parent_of(process)]
    assert producer.kind == SpanKind.PRODUCER
    assert producer.instrumentation_scope is not None
    assert "faststream" in producer.instrumentation_scope.name
    (respond,) = [s for s in spans if s.name == "reply publish"]
    assert parent_of(respond) == process.context.span_id
    (consumer,) = [
        s
        for s in spans
        if s.kind == SpanKind.CONSUMER and s is not process and parent_of(s) == respond.context.span_id
    ]
    assert consumer.instrumentation_scope is not None
    assert "faststream" in consumer.instrumentation_scope.name
    assert {s.context.trace_id for s in spans} == {producer.context.trace_id}


async def test_the_request_metadata_carries_the_context_when_the_headers_do_not(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    transport = InMemoryTransport(names=StreamNames("test"))
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    request = request_event(transport.names, metadata={"traceparent": f"00-{trace_id}-{span_id}-01"})
    await transport.publish(transport.names.requests, request)  # no headers at all
    await hooked_worker(transport, [Tracing(tracer_provider).hooks()]).run_until_idle()

    process = by_name(exporter.get_finished_spans())[f"{transport.names.requests} process"]
    assert f"{process.context.trace_id:032x}" == trace_id
    assert parent_of(process) == int(span_id, 16)


async def test_the_context_a_propagator_of_several_headers_writes_reaches_the_run(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """``Tracing(propagator=…)`` with OpenTelemetry's default composite (trace context and
    baggage): the client wrote the ``baggage`` header, the worker read only ``traceparent`` and
    ``tracestate`` from the request, and left what it read out of the run's context."""
    propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    tracing = Tracing(tracer_provider, propagator=propagator)
    transport = InMemoryTransport(names=StreamNames("test"))
    seen: list[object] = []

    def read_baggage(target: Target, request: AgentRequestEvent) -> str:
        seen.append(baggage.get_baggage("tenant"))
        return "ok"

    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        await AgentClient(transport, tracing=tracing).publish(request_event(transport.names))
    finally:
        otel_context.detach(token)
    await hooked_worker(transport, [tracing.hooks()], FunctionExecutor(read_baggage)).run_until_idle()

    assert seen == ["acme"]
    headers = await reply_headers(transport, transport.names.responses("discord", "c1"))
    assert headers["baggage"] == "tenant=acme"  # the reply carries it on
    spans = by_name(exporter.get_finished_spans())
    publish, process = (
        spans[f"{transport.names.requests} publish"],
        spans[f"{transport.names.requests} process"],
    )
    assert parent_of(process) == publish.context.span_id


async def test_no_route_and_failed_runs_are_error_spans(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    transport = InMemoryTransport(names=StreamNames("test"))
    tracing = Tracing(tracer_provider)

    unregistered = "sk-proj-CANARY0span0status0000000001"  # a key nobody registered

    def fail(target: Target, request: AgentRequestEvent) -> ExecutionResult:
        raise RuntimeError(f"the tool broke: key {unregistered} refused")

    await transport.publish(transport.names.requests, request_event(transport.names))
    await hooked_worker(transport, [tracing.hooks()], FunctionExecutor(fail)).run_until_idle()
    execute = by_name(exporter.get_finished_spans())["invoke_agent"]
    assert execute.status.status_code == StatusCode.ERROR
    assert "the tool broke" in (execute.status.description or "")
    assert unregistered not in (execute.status.description or "")  # masked as in the reply

    exporter.clear()
    await transport.publish(transport.names.requests, request_event(transport.names))
    await hooked_worker(transport, [tracing.hooks()], router=EventRouter()).run_until_idle()
    spans = by_name(exporter.get_finished_spans())
    assert spans["route"].status.status_code == StatusCode.ERROR
    assert (spans[f"{transport.names.requests} process"].attributes or {})[
        "dynamic_agents.outcome"
    ] == "no_route"


async def test_a_reply_sent_again_as_an_error_ends_the_publish_span_of_the_first(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A reply too large to send is replaced by an error reply: the worker asks the hooks for the
    headers of each, and both ``publish`` spans end (none is left open, never exported)."""
    transport = InMemoryTransport(names=StreamNames("test"))
    hooks = Tracing(tracer_provider).hooks()

    def big(target: Target, request: AgentRequestEvent) -> str:
        return "x" * (transport.codec.max_content_length + 1)

    await transport.publish(transport.names.requests, request_event(transport.names))
    await hooked_worker(transport, [hooks], FunctionExecutor(big)).run_until_idle()

    spans = exporter.get_finished_spans()
    publish = "reply publish"
    first, second = [span for span in spans if span.name == publish]
    assert first.status.status_code == StatusCode.ERROR  # replaced before it was sent
    assert second.status.status_code != StatusCode.ERROR
    process = by_name([span for span in spans if span.name != publish])[f"{transport.names.requests} process"]
    assert parent_of(first) == parent_of(second) == process.context.span_id


def stuck_until_cancelled(started: asyncio.Event) -> FunctionExecutor:
    """An executor whose runs set ``started`` and then wait until they are cancelled."""

    async def stuck(target: Target, request: AgentRequestEvent) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    return FunctionExecutor(stuck)


async def test_an_interrupted_run_ends_its_execute_span_once(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    transport = InMemoryTransport(names=StreamNames("test"))
    started = asyncio.Event()

    await transport.publish(transport.names.requests, request_event(transport.names))
    w = hooked_worker(transport, [Tracing(tracer_provider).hooks()], stuck_until_cancelled(started))
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        async with w:
            await started.wait()
            await w.stop(grace=0)

    spans = by_name(exporter.get_finished_spans())
    assert spans["invoke_agent"].status.description == "interrupted"
    outcome = (spans[f"{transport.names.requests} process"].attributes or {})["dynamic_agents.outcome"]
    assert outcome == "interrupted"
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


BLOCK_OPENTELEMETRY = """
import sys
from importlib.abc import MetaPathFinder

class Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        return None

sys.meta_path.insert(0, Blocker())
"""

WITHOUT_OPENTELEMETRY = """
import asyncio, json
from dynamic_agents.client import AgentClient
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.observability import OpenTelemetryMetrics, Tracing
from dynamic_agents.transports import InMemoryTransport
from dynamic_agents.worker import AgentWorker, WorkerSettings
from tests.worker.conftest import FAST, echo_router, request_event

async def main():
    tracing = Tracing()
    transport = InMemoryTransport(names=StreamNames("test"))
    client = AgentClient(transport, tracing=tracing)
    await client.publish(request_event(transport.names))
    worker = AgentWorker(
        transport,
        transport.coordinator(),
        echo_router(),
        FunctionExecutor(lambda target, request: "ok"),
        settings=WorkerSettings(**FAST),
        hooks=[tracing.hooks()],
    )
    await worker.run_until_idle()
    (entry,) = await transport.read_stream(transport.names.responses("discord", "c1"), AgentResponseEvent)
    try:
        OpenTelemetryMetrics()
        metrics_error = None
    except ImportError as error:
        metrics_error = str(error)
    (request,) = await transport.read_stream(transport.names.requests, AgentRequestEvent)
    print(json.dumps({
        "enabled": tracing.enabled,
        "status": entry.event.status,
        "reply_headers": sorted(entry.message.headers),
        "request_headers": sorted(request.message.headers) if request.message else [],
        "metrics_error": metrics_error,
        "loaded": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
    }))

import sys
asyncio.run(main())
"""


def test_without_opentelemetry_tracing_does_nothing_and_metrics_say_what_to_install() -> None:
    code = BLOCK_OPENTELEMETRY + textwrap.dedent(WITHOUT_OPENTELEMETRY)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["enabled"] is False
    assert report["status"] == "completed"
    assert "traceparent" not in report["reply_headers"]
    assert "traceparent" not in report["request_headers"]
    assert report["loaded"] == []
    assert "pip install 'dynamic-agents[otel]'" in report["metrics_error"]


class RefusingInject(TraceContextTextMapPropagator):
    """A propagator whose ``inject`` fails (a custom one, refusing a header)."""

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        raise ValueError("this propagator refuses the header")


async def test_a_publish_whose_propagator_fails_ends_its_span_as_failed(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The ``publish`` span was started, then the propagator's failure left it open for ever
    (never exported)."""
    tracing = Tracing(tracer_provider, propagator=RefusingInject())
    transport = InMemoryTransport(names=StreamNames("test"))
    with pytest.raises(ValueError, match="refuses the header"):
        await AgentClient(transport, tracing=tracing).publish(request_event(transport.names))
    (publish,) = exporter.get_finished_spans()
    assert publish.name == f"{transport.names.requests} publish"
    assert publish.status.status_code == StatusCode.ERROR


async def test_a_streamed_llm_call_is_one_span_that_ends_with_the_stream(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    secrets = SecretsManager(StaticSource({"openai": {"api_key": API_KEY}}))
    deployment = {"model": "openai/gpt-4o-mini", "api_key": "secret:openai:api_key", "mock_response": "a b c"}
    config = RouterConfig.from_dict({"model_list": [{"model_name": "g", "litellm_params": deployment}]})
    async with await build_router(config, secrets, tracing=Tracing(tracer_provider)) as llm:
        stream = await llm.acompletion(model="g", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert not finished(exporter, "chat g")  # the call returned; the answer is still coming
        chunks = [chunk async for chunk in stream]
    assert chunks
    (chat,) = exporter.get_finished_spans()
    assert chat.name == "chat g"
    assert chat.status.status_code != StatusCode.ERROR
    assert API_KEY not in attribute_text([chat])


async def test_a_failed_llm_call_is_an_error_span_without_the_key(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    secrets = SecretsManager(StaticSource({"openai": {"api_key": API_KEY}}))
    deployment = {
        "model": "openai/gpt-4o-mini",
        "api_key": "secret:openai:api_key",
        "mock_response": "litellm.InternalServerError",
    }
    config = RouterConfig.from_dict(
        {"model_list": [{"model_name": "g", "litellm_params": deployment}], "num_retries": 0}
    )
    async with await build_router(config, secrets, tracing=Tracing(tracer_provider)) as llm:
        with pytest.raises(LLMError):
            await llm.acompletion(model="g", messages=[{"role": "user", "content": "hi"}])
    (chat,) = exporter.get_finished_spans()
    assert chat.status.status_code == StatusCode.ERROR
    assert (chat.attributes or {})["error.type"] == "LLMUnavailableError"
    assert not chat.events  # exceptions are not recorded: their text may quote a key
    assert API_KEY not in attribute_text([chat])


async def test_an_entry_taken_over_before_its_dead_letter_is_an_interrupted_process_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    transport = await taken_before_dead_lettering()  # a worker that died holding the entry
    worker = hooked_worker(transport, [Tracing(tracer_provider).hooks()], max_deliveries=1, **FAST)
    await worker.run_until_idle()  # reclaims it
    spans = by_name(exporter.get_finished_spans())
    process = spans[f"{transport.names.requests} process"]
    assert (process.attributes or {})["dynamic_agents.outcome"] == "interrupted"
    # its error reply was not written (the other consumer had the entry): not a publish
    reply = spans["reply publish"].status
    assert (reply.status_code, reply.description) == (
        StatusCode.ERROR,
        "not sent: the entry was taken over or answered before",
    )


async def test_a_merged_turn_stopped_while_it_runs_detaches_its_context_where_it_was_attached(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    transport = InMemoryTransport(names=StreamNames("test"))
    gate, first_started, merged_started = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def run(target: Target, request: AgentRequestEvent) -> str:
        if request.content == "first":
            first_started.set()
            await gate.wait()
            return "done"
        merged_started.set()
        await asyncio.Event().wait()
        return "never"

    w = hooked_worker(
        transport,
        [Tracing(tracer_provider).hooks()],
        FunctionExecutor(run),
        session_policy=SessionPolicy.MERGE,
    )
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        async with w:
            await transport.publish(transport.names.requests, request_event(transport.names, "first"))
            await first_started.wait()
            for text in ("a", "b"):  # queued behind the first, then run as one turn
                await transport.publish(transport.names.requests, request_event(transport.names, text))
            await wait_until(lambda: w.stats.received == 3, what="the queued requests")
            gate.set()
            await merged_started.wait()
            await w.stop(grace=0)

    execute = [s for s in exporter.get_finished_spans() if s.name == "invoke_agent"]
    assert sorted(s.status.description or "" for s in execute) == ["", "interrupted"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


async def test_a_stream_its_reader_stops_early_ends_its_span_without_an_error(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def chunks() -> AsyncIterator[str]:
        for chunk in ("a", "b", "c"):
            yield chunk

    with Tracing(tracer_provider).llm_call("g") as call:
        stream = call.done(chunks(), stream=True)
    async for _ in stream:
        break  # the reader had enough (a tool call, say)
    await stream.aclose()
    (chat,) = exporter.get_finished_spans()
    assert chat.status.status_code != StatusCode.ERROR
    assert "error.type" not in (chat.attributes or {})


async def test_a_stream_its_caller_never_reads_ends_its_span_when_dropped(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def chunks() -> AsyncIterator[str]:
        yield "a"

    with Tracing(tracer_provider).llm_call("g") as call:
        stream = call.done(chunks(), stream=True)
    assert not finished(exporter, "chat g")
    del stream  # the caller dropped it unread (an exception before it iterated, say)
    gc.collect()
    (chat,) = exporter.get_finished_spans()
    assert chat.status.status_code == StatusCode.UNSET
    assert (chat.attributes or {})["dynamic_agents.stream.consumed"] is False


async def test_a_stream_closed_unread_ends_its_span_as_not_consumed(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    closed = asyncio.Event()

    class Chunks:
        def __aiter__(self) -> Chunks:
            return self

        async def __anext__(self) -> str:
            raise StopAsyncIteration

        async def aclose(self) -> None:
            closed.set()

    with Tracing(tracer_provider).llm_call("g") as call:
        stream = call.done(Chunks(), stream=True)
    await stream.aclose()
    assert closed.is_set()  # the provider's stream (its HTTP response) is closed too
    (chat,) = exporter.get_finished_spans()
    assert chat.status.status_code == StatusCode.UNSET
    assert (chat.attributes or {})["dynamic_agents.stream.consumed"] is False
    await stream.aclose()  # twice: nothing more
    assert len(exporter.get_finished_spans()) == 1


class RecordingChunks:
    """A provider's stream as litellm returns it: an object with ``__anext__`` and ``aclose``
    (not an async generator, which asyncio would close itself once dropped)."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def __aiter__(self) -> RecordingChunks:
        return self

    async def __anext__(self) -> str:
        return "chunk"

    async def aclose(self) -> None:
        self.closed.set()


async def test_a_stream_dropped_part_read_closes_the_providers_stream(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    provider = RecordingChunks()
    with Tracing(tracer_provider).llm_call("g") as call:
        stream = call.done(provider, stream=True)
    async for _ in stream:
        break  # read one chunk, then dropped without aclose()
    del stream
    gc.collect()
    (chat,) = exporter.get_finished_spans()
    assert (chat.attributes or {})["dynamic_agents.stream.consumed"] is False
    await asyncio.wait_for(provider.closed.wait(), 10)  # closed on the loop, soon after


class StalledChunks(RecordingChunks):
    """A provider's stream whose next chunk never comes (a slow model)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def __anext__(self) -> str:
        self.waiting.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_stream_whose_reader_is_cancelled_mid_read_closes_the_providers_stream(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """How a run is usually cut short (its timeout, a cancel request, a stop): the task reading the
    stream is cancelled while it waits for a chunk. The provider's stream (its HTTP response) is
    closed then, not left to the garbage collector or to nobody."""
    provider = StalledChunks()
    with Tracing(tracer_provider).llm_call("g") as call:
        stream = call.done(provider, stream=True)

    async def read_all() -> None:
        async for _ in stream:
            pass

    reader = asyncio.ensure_future(read_all())
    await asyncio.wait_for(provider.waiting.wait(), 10)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await asyncio.wait_for(provider.closed.wait(), 10)
    (chat,) = exporter.get_finished_spans()
    assert (chat.attributes or {})["dynamic_agents.stream.consumed"] is False


async def test_an_async_generator_stream_dropped_part_read_is_closed(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    closed = asyncio.Event()

    async def chunks() -> AsyncIterator[str]:
        try:
            while True:
                yield "chunk"
        finally:
            closed.set()

    with Tracing(tracer_provider).llm_call("g") as call:
        stream = call.done(chunks(), stream=True)
    async for _ in stream:
        break
    del stream
    gc.collect()
    await asyncio.wait_for(closed.wait(), 10)
    assert len(exporter.get_finished_spans()) == 1


async def test_span_names_stay_the_same_whatever_target_and_reply_stream_requests_choose(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A request names its own target (``agent_id``, ``workflow_id``) and reply stream: neither
    may reach a span name (one new name per value, for good, in every backend's span index);
    they are attributes."""
    transport = InMemoryTransport(names=StreamNames("test"))
    for n in range(3):
        await transport.publish(
            transport.names.requests,
            request_event(transport.names, session=f"s{n}", agent_id=f"made-up-{n}").model_copy(
                update={"reply_stream": transport.names.responses("discord", f"channel-{n}")}
            ),
        )
    await transport.publish(
        transport.names.requests, request_event(transport.names, session="w", workflow_id="made-up-flow")
    )
    await hooked_worker(transport, [Tracing(tracer_provider).hooks()]).run_until_idle()

    spans = exporter.get_finished_spans()
    assert {span.name for span in spans} == {
        f"{transport.names.requests} process",
        "route",
        "invoke_agent",
        "invoke_workflow",
        "reply publish",
    }
    runs = {
        (s.attributes or {})["dynamic_agents.target"]: s.attributes or {}
        for s in spans
        if s.name.startswith("invoke_")
    }
    assert sorted(runs) == ["agent:made-up-0", "agent:made-up-1", "agent:made-up-2", "workflow:made-up-flow"]
    assert runs["agent:made-up-0"]["gen_ai.operation.name"] == "invoke_agent"
    assert runs["agent:made-up-0"]["gen_ai.agent.id"] == "made-up-0"
    assert runs["workflow:made-up-flow"]["gen_ai.operation.name"] == "invoke_workflow"
    replies = sorted(
        str((s.attributes or {})["messaging.destination.name"]) for s in spans if s.name == "reply publish"
    )
    assert replies == sorted(
        [transport.names.responses("discord", c) for c in ("channel-0", "channel-1", "channel-2", "c1")]
    )


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"tracer_provider": "http://collector:4317"}, "tracer_provider must be a TracerProvider"),
        ({"tracer_provider": "the meter provider"}, "tracer_provider .* got a MeterProvider"),
        ({"propagator": "tracecontext"}, "propagator must be a TextMapPropagator .* got 'tracecontext'"),
    ],
)
def test_tracing_refuses_bad_arguments_naming_them(
    meter_provider: MeterProvider, arguments: dict[str, Any], named: str
) -> None:
    """A provider of the wrong type failed with a bare AttributeError (get_tracer); a propagator
    at the first publish (out of AgentClient.publish) or request (logged, no span)."""
    if arguments.get("tracer_provider") == "the meter provider":
        arguments = {"tracer_provider": meter_provider}
    with pytest.raises(ConfigurationError, match=named):
        Tracing(**arguments)


def test_tracing_hooks_refuse_what_is_no_tracing(tracer_provider: TracerProvider) -> None:
    """Each was taken, and every hook call failed (logged, no span). The client's check and
    message (check_tracing), without "or None": the hooks need one."""
    for tracing, got in ((None, "None"), (tracer_provider, "a TracerProvider")):
        with pytest.raises(ConfigurationError) as caught:
            TracingHooks(tracing)  # type: ignore[arg-type]
        assert str(caught.value) == f"tracing must be a Tracing (Tracing(tracer_provider)), got {got}"


async def test_the_client_and_the_llm_router_refuse_what_is_no_tracing(
    tracer_provider: TracerProvider,
) -> None:
    """``tracing=`` given the provider (for ``Tracing(provider)``) was taken: every publish then
    failed with a bare AttributeError (no request sent), and every LLM call."""
    transport = InMemoryTransport(names=StreamNames("test"))
    named = r"tracing must be a Tracing \(Tracing\(tracer_provider\)\) or None, got a TracerProvider"
    with pytest.raises(ConfigurationError, match=named):
        AgentClient(transport, tracing=tracer_provider)  # type: ignore[arg-type]
    deployment = {"model": "openai/gpt-4o-mini", "api_key": "secret:openai:api_key", "mock_response": "a"}
    config = RouterConfig.from_dict({"model_list": [{"model_name": "g", "litellm_params": deployment}]})
    secrets = SecretsManager(StaticSource({"openai": {"api_key": API_KEY}}))
    with pytest.raises(ConfigurationError, match=named):
        await build_router(config, secrets, tracing=tracer_provider)  # type: ignore[arg-type]


async def test_an_entry_answered_before_its_handler_is_stopped_keeps_its_outcome(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
) -> None:
    """A request cancelled while queued behind its session's run is answered ``cancelled`` at
    once, and its handler waits on for the run ahead (to keep the order). A stop then cancels
    that handler: its span said ``interrupted`` (nothing published, runs again elsewhere), an
    error, while the answer was written and the entry acked; the metrics counted ``cancelled``."""
    transport = InMemoryTransport(names=StreamNames("test"))
    started = asyncio.Event()

    first = request_event(transport.names, "first")
    queued = request_event(transport.names, "queued")
    for request in (first, queued):
        await transport.publish(transport.names.requests, request)
    hooks = [Tracing(tracer_provider).hooks(), MetricsHooks(OpenTelemetryMetrics(meter_provider))]
    worker = hooked_worker(transport, hooks, stuck_until_cancelled(started), cancel_poll=0.01)
    replies = transport.names.responses("discord", "c1")
    async with worker:
        await started.wait()
        await transport.coordinator().request_cancel(queued.id)
        await wait_until(lambda: _replies(transport, replies), what="the queued request's answer")
        await worker.stop(grace=0)

    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name.endswith(" process") and (s.attributes or {})["dynamic_agents.request_id"] == queued.id
    ]
    assert (span.attributes or {})["dynamic_agents.outcome"] == "cancelled"
    assert span.status.status_code != StatusCode.ERROR
    assert outcomes(metric_reader) == {"cancelled": 1, "interrupted": 1}


async def _replies(transport: Transport, stream: str) -> bool:
    return bool(await transport.read_stream(stream, AgentResponseEvent))


async def test_a_run_abandoned_at_a_stop_has_its_spans_ended_once_the_worker_stopped(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    stubborn: Stubborn,
) -> None:
    """A run still going ``abandon_after`` after its cancellation is let go of by the worker: its
    ``process`` and run spans stayed open (and kept in the hooks) for as long as it went on."""
    transport = InMemoryTransport(names=StreamNames("test"))
    hooks = Tracing(tracer_provider).hooks()
    worker = await stubborn.abandoned_by(transport, hooks)
    assert worker.stats.lost == 1  # abandoned
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"route", "invoke_agent", f"{transport.names.requests} process"}
    assert spans["invoke_agent"].status.description == "interrupted"
    process = spans[f"{transport.names.requests} process"]
    assert (process.attributes or {})["dynamic_agents.outcome"] == "interrupted"
    assert repr(hooks).endswith("in_flight=0)")
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        await stubborn.release()  # its late end ends nothing again
    assert len(exporter.get_finished_spans()) == 3
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


class AnsweredMeanwhile(InMemoryTransport):
    """Another worker answers each request just before this one's answer is written: this one's
    ``complete`` writes nothing (``created`` false)."""

    async def complete(self, delivery: Any, reply: Any, **options: Any) -> Any:
        await super().complete(delivery, reply, record_ttl=options["record_ttl"])  # the other's
        return await super().complete(delivery, reply, **options)


async def test_a_reply_not_written_because_answered_meanwhile_is_no_successful_publish(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    transport = AnsweredMeanwhile(names=StreamNames("test"))
    await transport.publish(transport.names.requests, request_event(transport.names))
    await hooked_worker(transport, [Tracing(tracer_provider).hooks()]).run_until_idle()
    spans = by_name(exporter.get_finished_spans())
    process = spans[f"{transport.names.requests} process"]
    assert (process.attributes or {})["dynamic_agents.outcome"] == "duplicate"
    reply = spans["reply publish"]
    assert reply.status.status_code is StatusCode.ERROR
    assert reply.status.description == "not sent: the request was answered before"
