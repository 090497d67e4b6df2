"""Background work around runs: lifecycle events go out in order and never hold up or fail a
reply; lease renewals survive a failing call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from dynamic_agents.events import (
    AgentRequestEvent,
    ContentDelta,
    EventCodec,
    LifecycleEvent,
    ResponseStatus,
    RunStarted,
    StreamNames,
    Target,
)
from dynamic_agents.execution import ExecutionResult, FunctionExecutor
from dynamic_agents.transports import InMemoryCoordinator, InMemoryServer, InMemoryTransport, Lease
from dynamic_agents.worker.lifecycle import EventSink, LifecyclePublisher
from tests.worker.conftest import Backend, replies, request_event, wait_for, worker


def started(n: int) -> RunStarted:
    return RunStarted(request_id=f"r{n}", session_id="s", delivery_count=1)


async def test_events_are_published_in_the_order_emitted(backend: Backend) -> None:
    transport = await backend.transport()
    sink = EventSink(transport, maxlen=10_000)
    for n in range(300):
        sink.emit(started(n))
        if n % 7 == 0:
            await asyncio.sleep(0)  # batches of different sizes, written while more are emitted
    await sink.flush()
    events = await transport.read_stream(backend.names.events, LifecycleEvent, count=1000)
    assert [e.event.request_id for e in events] == [f"r{n}" for n in range(300)]


class GatedEvents(InMemoryTransport):
    """Writes to the events stream wait for ``gate`` (or fail while ``failing``)."""

    def __init__(self, server: InMemoryServer, names: StreamNames) -> None:
        super().__init__(server, names=names)
        self.gate = asyncio.Event()
        self.failing = False

    async def publish_fields(
        self, stream: str, fields: Mapping[str, bytes] | Mapping[bytes, bytes], **options: Any
    ) -> str:
        if stream == self.names.events:
            await self.gate.wait()
            if self.failing:
                from dynamic_agents.exceptions import TransportError

                raise TransportError("events stream unavailable")
        return await super().publish_fields(stream, fields, **options)


async def test_a_stuck_events_stream_does_not_hold_up_the_reply() -> None:
    names = StreamNames("test")
    transport = GatedEvents(InMemoryServer(), names)
    await transport.publish(names.requests, request_event(names, "hello"))
    w = worker(transport, events=True)
    async with w:
        await wait_for(lambda: _answered(w))
        assert [r.content for r in await replies(transport, names)] == ["echo: hello"]
        assert await transport.read_stream(names.events, LifecycleEvent) == []  # still waiting
        transport.gate.set()
    events = await transport.read_stream(names.events, LifecycleEvent)  # stop() flushed them
    assert [e.event.type for e in events] == [  # type: ignore[attr-defined]
        "request.accepted",
        "run.started",
        "run.content_delta",
        "run.completed",
    ]


async def test_stop_drops_events_the_events_stream_never_takes(caplog: pytest.LogCaptureFixture) -> None:
    """Redis away for the events: stop() gives them its grace (at least a second), then drops them
    instead of waiting out the transport's retries batch after batch."""
    names = StreamNames("test")
    transport = GatedEvents(InMemoryServer(), names)  # the gate never opens
    await transport.publish(names.requests, request_event(names, "hello"))
    w = worker(transport, events=True)
    await w.__aenter__()
    await wait_for(lambda: _answered(w))
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        async with asyncio.timeout(30):  # a hang guard: before, stop() never returned
            await w.stop(grace=0.1)
    assert w.events.dropped == 4  # accepted, started, a delta, completed
    assert "lifecycle events not published within 1.0 s: 4 dropped" in caplog.text
    assert await transport.read_stream(names.events, LifecycleEvent) == []


async def test_stop_without_a_grace_waits_for_the_runs_and_writes_the_events() -> None:
    names = StreamNames("test")
    transport = GatedEvents(InMemoryServer(), names)
    transport.gate.set()
    await transport.publish(names.requests, request_event(names, "hello"))
    w = worker(transport, events=True)
    await w.__aenter__()
    await wait_for(lambda: _answered(w))
    await w.stop(grace=None)  # however long the runs take; the events as long as they take too
    assert w.events.dropped == 0
    assert len(await transport.read_stream(names.events, LifecycleEvent)) == 4


async def test_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    names = StreamNames("test")
    transport = GatedEvents(InMemoryServer(), names)
    transport.gate.set()
    transport.failing = True
    sink = EventSink(transport, maxlen=100)
    sink.emit(started(1))
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        await sink.flush()
    assert "could not publish 1 lifecycle events: events stream unavailable" in caplog.text
    assert sink.dropped == 1  # lost: counted, as those dropped on the way are
    transport.failing = False
    sink.emit(started(2))
    await sink.flush()
    assert [e.event.request_id for e in await transport.read_stream(names.events, LifecycleEvent)] == ["r2"]
    assert sink.dropped == 1


async def test_an_event_that_cannot_be_encoded_is_dropped_alone(caplog: pytest.LogCaptureFixture) -> None:
    transport = InMemoryTransport(codec=EventCodec(max_content_length=10))
    sink = EventSink(transport, maxlen=100)
    too_long = ContentDelta(request_id="r1", session_id="s", sequence=0, content="x" * 11)
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        for event in (started(0), too_long, started(2)):
            sink.emit(event)
    await sink.flush()
    dropped = "dropping a ContentDelta of request r1: content is 11 characters long, over the limit of 10"
    assert dropped in caplog.text
    assert sink.dropped == 1
    events = await transport.read_stream(transport.names.events, LifecycleEvent)
    assert [e.event.request_id for e in events] == ["r0", "r2"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("x" * 11, "content is 11 characters long, over the limit of 10"),
        (
            "pair \ud800",
            "content: cannot be written as JSON",
        ),  # no UTF-8 for it: declined by LifecycleJson, refused by the codec
    ],
)
async def test_a_delta_that_cannot_be_encoded_is_dropped_alone(
    caplog: pytest.LogCaptureFixture, content: str, why: str
) -> None:
    """The publisher's JSON writer declines what the model path refuses, which names it; the
    request's other events go out."""
    transport = InMemoryTransport(codec=EventCodec(max_content_length=10))
    sink = EventSink(transport, maxlen=100)
    publisher = LifecyclePublisher(sink, request_id="r1", session_id="s", target=None, delta_interval=0)
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        await publisher.accepted()
        await publisher.delta(content)
        await publisher.delta("fine")
        await publisher.finished(ExecutionResult(ResponseStatus.COMPLETED, content="ok"))
    await sink.flush()
    (dropped,) = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert dropped.startswith("dropping a ContentDelta of request r1: ")
    assert why in dropped
    assert sink.dropped == 1
    events = [e.event for e in await transport.read_stream(transport.names.events, LifecycleEvent)]
    assert [e.type for e in events] == ["request.accepted", "run.content_delta", "run.completed"]  # type: ignore[attr-defined]
    assert [(e.sequence, e.content) for e in events if isinstance(e, ContentDelta)] == [(1, "fine")]


async def test_an_event_written_as_json_over_max_size_is_dropped_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = InMemoryTransport(codec=EventCodec(max_size=400))
    sink = EventSink(transport, maxlen=100)
    publisher = LifecyclePublisher(sink, request_id="r1", session_id="s" * 300, target=None, delta_interval=0)
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        await publisher.accepted()
    assert sink.dropped == 1
    assert "dropping a RequestAccepted of request r1: encoded event is " in caplog.text
    sink.emit(started(2))
    await sink.flush()
    events = await transport.read_stream(transport.names.events, LifecycleEvent)
    assert [e.event.request_id for e in events] == ["r2"]


async def test_emitted_events_wait_encoded() -> None:
    """What waits for the write is bytes, not the event: nothing for the garbage collector."""
    transport = InMemoryTransport()
    sink = EventSink(transport, maxlen=100)
    event = started(1)
    sink.emit(event)
    assert sink._queue == [transport.codec.encode_envelope(event)]
    await sink.flush()


async def test_past_max_pending_new_events_are_dropped_and_counted() -> None:
    transport = InMemoryTransport()
    sink = EventSink(transport, maxlen=100, max_pending=3)
    for n in range(5):  # no await in between: nothing is written yet
        sink.emit(started(n))
    await sink.flush()
    assert sink.dropped == 2
    events = await transport.read_stream(transport.names.events, LifecycleEvent)
    assert [e.event.request_id for e in events] == ["r0", "r1", "r2"]


async def test_overflowing_is_logged_though_an_event_was_dropped_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning that new events are being dropped (too many waiting: Redis away for long) was
    logged only while nothing had been dropped yet: after one event too large to send, a later
    overflow dropped every new event unsaid. It is logged when each overflow begins."""
    transport = InMemoryTransport(codec=EventCodec(max_content_length=10))
    sink = EventSink(transport, maxlen=100, max_pending=2)
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        sink.emit(ContentDelta(request_id="r0", session_id="s", sequence=0, content="x" * 11))
        await sink.flush()
        for _overflow in range(2):  # two outages, each a while after the other
            for n in range(4):  # no await in between: nothing is written yet
                sink.emit(started(n))
            await sink.flush()
    assert sink.dropped == 1 + 2 + 2
    overflowing = [r for r in caplog.records if "wait to be published; dropping new ones" in r.getMessage()]
    assert len(overflowing) == 2


async def test_a_buffered_delta_is_published_when_its_interval_ends(backend: Backend) -> None:
    """Output coalesced within ``delta_interval`` goes out when the interval ends, not when the
    next slice happens to come: a model that pauses (for a tool call, say) would hide it that long."""
    transport = await backend.transport()
    sink = EventSink(transport, maxlen=100)
    publisher = LifecyclePublisher(sink, request_id="r", session_id="s", target=None, delta_interval=0.05)
    await publisher.delta("Let me check")  # the first slice goes out at once
    await publisher.delta(" the weather.")  # within the interval: buffered; nothing comes after it

    async def deltas() -> list[str]:
        await sink.flush()
        events = [e.event for e in await transport.read_stream(backend.names.events, LifecycleEvent)]
        return [e.content for e in events if isinstance(e, ContentDelta)]

    async def both_out() -> bool:
        return len(await deltas()) == 2

    await wait_for(both_out)
    assert await deltas() == ["Let me check", " the weather."]


async def _answered(w: Any) -> bool:
    return bool(w.stats.completed == 1)


class FlakyRenewals(InMemoryCoordinator):
    """Raises a bug-like error on the first renewal, then renews normally."""

    failures = 0

    async def renew(self, lease: Lease, ttl: float | None = None) -> bool:
        if not self.failures:
            self.failures += 1
            raise RuntimeError("a bug in a coordinator")
        return await super().renew(lease, ttl)


async def test_a_failing_renewal_does_not_stop_the_lease_loop(caplog: pytest.LogCaptureFixture) -> None:
    """One renewal raising an unexpected error is logged; the loop goes on renewing, so a run
    longer than the lease's TTL keeps its lease and is answered."""
    server, names = InMemoryServer(), StreamNames("test")
    transport = InMemoryTransport(server, names=names)
    coordinator = FlakyRenewals(server, names=names)

    async def outlives_the_lease(target: Target, request: AgentRequestEvent) -> str:
        await asyncio.sleep(1.5)  # lease_ttl 0.6 s, renewed every 0.2 s
        return "still mine"

    await transport.publish(names.requests, request_event(names, "long"))
    w = worker(transport, FunctionExecutor(outlives_the_lease), coordinator=coordinator)
    with caplog.at_level(logging.ERROR, logger="dynamic_agents.worker"):
        await w.run_until_idle()
    assert coordinator.failures == 1
    assert "renewing the lease of request" in caplog.text
    assert [r.content for r in await replies(transport, names)] == ["still mine"]
    assert w.stats.lost == 0


class FlakyHelpers(InMemoryTransport):
    """``keep_fresh`` raises an unexpected error once (a bug, not Redis trouble)."""

    def __init__(self, server: InMemoryServer, *, names: StreamNames) -> None:
        super().__init__(server, names=names)
        self.keep_fresh_calls = 0

    async def keep_fresh(self, deliveries: Any) -> Any:
        self.keep_fresh_calls += 1
        if self.keep_fresh_calls == 1:
            raise RuntimeError("a bug in a transport")
        return await super().keep_fresh(deliveries)


class FlakyCancellations(InMemoryCoordinator):
    """``cancelled`` raises an unexpected error once ``armed`` (a bug, not Redis trouble)."""

    def __init__(self, server: InMemoryServer, *, names: StreamNames) -> None:
        super().__init__(server, names=names)
        self.armed = False
        self.failures = 0

    async def cancelled(self, request_ids: Any) -> set[str]:
        if self.armed and not self.failures:
            self.failures += 1
            raise RuntimeError("a bug in a coordinator")
        return await super().cancelled(request_ids)


async def test_a_failing_check_does_not_stop_the_keep_fresh_or_cancellation_loops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As for the lease loop: one call of the keep-fresh loop, or of the cancellation watch,
    raising an unexpected error ended that loop for the rest of the worker's life, unsaid until it
    stopped (entries no longer kept fresh, taken over by others; cancellations no longer reaching
    runs). It is logged, and the loop goes on."""
    server, names = InMemoryServer(), StreamNames("test")
    transport = FlakyHelpers(server, names=names)
    coordinator = FlakyCancellations(server, names=names)
    started, finish = asyncio.Event(), asyncio.Event()

    async def long_run(target: Target, request: AgentRequestEvent) -> str:
        started.set()
        await finish.wait()
        return "never"

    request = request_event(names, "long")
    await transport.publish(names.requests, request)
    w = worker(transport, FunctionExecutor(long_run), coordinator=coordinator, cancel_poll=0.01)
    with caplog.at_level(logging.ERROR, logger="dynamic_agents.worker"):
        async with w:
            await asyncio.wait_for(started.wait(), 5)
            coordinator.armed = True  # the run goes on: only the cancellation watch asks now
            await wait_for(lambda: _now(transport.keep_fresh_calls >= 3 and coordinator.failures == 1))
            await coordinator.request_cancel(request.id)
            await wait_for(lambda: _now(bool(w.stats.failed)))
    (reply,) = await replies(transport, names)
    assert reply.status == ResponseStatus.CANCELLED
    assert "keeping 1 entries fresh failed" in caplog.text
    assert "checking cancellations failed" in caplog.text


async def _now(value: bool) -> bool:
    return value


class SlowToCancelEvents(InMemoryTransport):
    """A write to the events stream never ends on its own; cancelled, it ends only once
    ``let_go`` is set, whatever else cancels it meanwhile (a connection being torn down, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.cancel_received = asyncio.Event()
        self.let_go = asyncio.Event()

    async def publish_envelopes(self, stream: str, envelopes: list[bytes], **options: Any) -> list[str]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancel_received.set()
            while not self.let_go.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await self.let_go.wait()
            raise
        raise AssertionError("unreachable")


async def test_a_flush_cancelled_while_its_timed_out_write_ends_is_cancelled() -> None:
    """flush(timeout) cancels the write it gave up on and waits for it to end; the caller's own
    cancellation meanwhile (a shutdown's) ends the flush at once, and is not taken for the
    write's."""
    transport = SlowToCancelEvents()
    sink = EventSink(transport, maxlen=100)
    sink.emit(started(1))
    flushing = asyncio.create_task(sink.flush(timeout=0.01))
    await transport.cancel_received.wait()  # timed out: the write is ending
    flushing.cancel()
    try:
        async with asyncio.timeout(10):  # a hang guard: before, it waited for the write to end
            await asyncio.wait({flushing})  # the write still going (let_go not set)
        assert flushing.cancelled()  # before, it returned as if not cancelled
        assert sink.dropped == 1  # counted though the caller was cancelled
    finally:
        transport.let_go.set()
        await asyncio.wait({flushing})
