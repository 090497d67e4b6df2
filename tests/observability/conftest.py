from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dynamic_agents.events import AgentRequestEvent, StreamNames, Target, TargetType
from dynamic_agents.execution import Executor, FunctionExecutor
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import InMemoryTransport, Subscription, Transport
from dynamic_agents.worker import AgentWorker, BaseHooks, WorkerHooks, WorkerSettings
from tests.worker.conftest import FAST, request_event


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


def echo(target: Target, request: AgentRequestEvent) -> str:
    return f"echo: {request.content}"


ROOMY = {**FAST, "claim_min_idle": 30.0, "lease_ttl": 30.0, "keep_fresh_every": 1.0}
"""FAST's polling, with leases and idle times no busy machine outlasts: these tests observe one
run each, and a run that stalled past a 0.6 s lease (a first litellm call on a loaded CI runner)
would be taken back and run again, doubling its spans and metrics."""


def hooked_worker(
    transport: Transport,
    hooks: Sequence[WorkerHooks],
    executor: Executor | None = None,
    *,
    router: EventRouter | None = None,
    **settings: Any,
) -> AgentWorker:
    return AgentWorker(
        transport,
        transport.coordinator(),
        router or EventRouter(default=Target(type=TargetType.AGENT, id="echo")),
        executor or FunctionExecutor(echo),
        settings=WorkerSettings(**{**ROOMY, **settings}),
        hooks=hooks,
    )


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    """Spans by name (names are unique within the tests that use this)."""
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def attribute_text(spans: Sequence[ReadableSpan]) -> str:
    """Every attribute, event and status text of the spans, for looking for leaks."""
    parts: list[str] = []
    for span in spans:
        parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        parts += [str(event.attributes) for event in span.events]
        parts.append(span.status.description or "")
    return "\n".join(parts)


class TakenBeforeDeadLettering(InMemoryTransport):
    """Another consumer takes the entry (and settles it) just as this worker would set it aside."""

    async def dead_letter(self, delivery: Any, reason: str, reply: Any = None, **options: Any) -> bool:
        await self.ack(delivery)  # what the other consumer did with it
        return False


async def taken_before_dead_lettering() -> TakenBeforeDeadLettering:
    """Such a transport with one request held by a consumer that died ("crashed"): a worker with
    ``max_deliveries=1`` reclaims it and would dead-letter it."""
    transport = TakenBeforeDeadLettering(names=StreamNames("test"))
    await transport.ensure_group(transport.names.requests, "dynamic-agents")
    await transport.publish(transport.names.requests, request_event(transport.names))
    crashed = Subscription(transport.names.requests, "dynamic-agents", "crashed", AgentRequestEvent, block=0)
    assert len(await transport.read(crashed, 1)) == 1
    return transport


class Stubborn:
    """An executor whose run ignores its cancellation until :meth:`release`: the worker abandons
    it (after ``abandon_after``) at a stop. ``started`` is set once it runs; the hook
    :attr:`ended` is set once its handler's ``after_handle`` hooks ran (its late end)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self._released = asyncio.Event()
        self.ended = asyncio.Event()
        self.executor = FunctionExecutor(self._run)
        stubborn = self

        class EndSeen(BaseHooks):
            async def after_handle(self, delivery: Any, error: BaseException | None) -> None:
                stubborn.ended.set()

        self.end_seen = EndSeen()

    async def _run(self, target: Target, request: AgentRequestEvent) -> str:
        self.started.set()
        while not self._released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self._released.wait()
        return "late"

    async def abandoned_by(self, transport: InMemoryTransport, hooks: WorkerHooks) -> AgentWorker:
        """A worker with ``hooks`` that runs one request with this executor and, stopped, abandons
        the run (``worker.stats.lost`` is 1): the worker, stopped."""
        worker = hooked_worker(transport, [hooks, self.end_seen], self.executor, abandon_after=0.05)
        await transport.publish(transport.names.requests, request_event(transport.names))
        running = asyncio.create_task(worker.run())
        await self.started.wait()
        await worker.stop(grace=0)
        await running
        return worker

    async def release(self) -> None:
        """Let the abandoned run end, and wait for its handler's end."""
        self._released.set()
        await self.ended.wait()


@pytest.fixture
async def stubborn() -> AsyncIterator[Stubborn]:
    """A :class:`Stubborn` run, let go of at the test's end whatever happened (else the event
    loop's close would wait for it for good)."""
    stubborn = Stubborn()
    yield stubborn
    stubborn._released.set()
