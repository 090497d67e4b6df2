"""The worker's behaviour, on the in-memory transport and on real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dynamic_agents.events import (
    AgentRequestEvent,
    AgentResponseEvent,
    LifecycleEvent,
    ResponseStatus,
    Target,
)
from dynamic_agents.exceptions import ConfigurationError, DynamicAgentsError, RunLostError, TransportError
from dynamic_agents.execution import ExecutionResult, FunctionExecutor
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import Claim, ClaimStatus, Completion, Reply, Subscription, Transport
from dynamic_agents.worker import AgentWorker, BaseHooks, RunContext, WorkerSettings
from dynamic_agents.worker import RunLostError as WorkerRunLostError
from tests.worker.conftest import (
    FAST,
    Backend,
    Handled,
    echo_router,
    replies,
    request_event,
    wait_for,
    worker,
)


async def test_a_request_is_answered_once(backend: Backend) -> None:
    transport = await backend.transport()
    request = request_event(backend.names, "hello")
    await transport.publish(backend.names.requests, request)
    await transport.publish(backend.names.requests, request)  # a platform retry: same id
    w = worker(transport)
    await w.run_until_idle()
    (reply,) = await replies(transport, backend.names)
    assert (reply.request_id, reply.content, reply.status) == (
        request.id,
        "echo: hello",
        ResponseStatus.COMPLETED,
    )
    assert reply.agent_id == "echo"
    record = await transport.coordinator().get_record(request.id)
    assert record is not None
    assert record.response_id == reply.id
    assert await transport.pending(backend.names.requests, "dynamic-agents") == []
    assert (w.stats.completed, w.stats.duplicates) == (1, 1)


async def test_no_route_and_failing_runs_get_error_replies(backend: Backend) -> None:
    transport = await backend.transport()

    def explode(target: Target, request: AgentRequestEvent) -> str:
        raise RuntimeError("tool crashed")

    await transport.publish(backend.names.requests, request_event(backend.names, "first"))
    await worker(transport, router=EventRouter()).run_until_idle()
    await transport.publish(backend.names.requests, request_event(backend.names, "second"))
    await worker(transport, FunctionExecutor(explode)).run_until_idle()
    no_route, crashed = await replies(transport, backend.names)
    assert no_route.status == ResponseStatus.ERROR
    assert "no route for discord:c1" in (no_route.error_message or "")
    assert crashed.status == ResponseStatus.ERROR
    assert crashed.error_message == "RuntimeError: tool crashed"
    assert "Traceback" not in (crashed.error_message or "")


async def test_undecodable_entries_are_dead_lettered_and_the_worker_goes_on(backend: Backend) -> None:
    transport = await backend.transport()
    await transport.ensure_group(backend.names.requests, "dynamic-agents")
    for junk in (b"\x89BIN", b"not json", b'{"source": 42}'):
        await transport.publish_fields(backend.names.requests, {"__data__": junk})
    good = request_event(backend.names, "still here")
    await transport.publish(backend.names.requests, good)
    w = worker(transport)
    await w.run_until_idle()
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: still here"]
    dead = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
    assert len(dead) == 3
    assert all(entry.fields[b"dead_letter.reason"].startswith(b"undecodable") for entry in dead)
    assert w.stats.undecodable == 3


async def test_a_worker_survives_an_entry_whose_decoding_raises_and_answers_the_request_next_to_it(
    backend: Backend,
) -> None:
    """A foreign legacy JSON envelope whose data is an escaped lone surrogate (valid JSON, no
    UTF-8 text) used to raise UnicodeEncodeError out of the read, and the worker died with it."""
    transport = await backend.transport()
    await transport.publish(backend.names.requests, request_event(backend.names, "before"))
    await transport.publish_fields(backend.names.requests, {b"__data__": b'{"data": "\\ud800"}'})
    await transport.publish(backend.names.requests, request_event(backend.names, "after"))
    w = worker(transport)
    await w.run_until_idle(timeout=5)
    assert sorted(r.content for r in await replies(transport, backend.names)) == [
        "echo: after",
        "echo: before",
    ]
    (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
    assert dead.fields[b"dead_letter.reason"].startswith(b"undecodable: legacy JSON envelope")
    assert await transport.pending(backend.names.requests, "dynamic-agents") == []
    assert w.stats.undecodable == 1


async def test_past_max_deliveries_the_request_is_dead_lettered_with_an_error_reply(backend: Backend) -> None:
    transport = await backend.transport()
    request = request_event(backend.names, "cursed")
    await transport.ensure_group(backend.names.requests, "dynamic-agents")
    await transport.publish(backend.names.requests, request)
    crashed = Subscription(backend.names.requests, "dynamic-agents", "crashed", AgentRequestEvent, block=0)
    assert len(await transport.read(crashed, 1)) == 1  # a worker that died holding it
    w = worker(transport, max_deliveries=1, record_ttl=3600)
    await w.run_until_idle()
    (reply,) = await replies(transport, backend.names)
    assert reply.status == ResponseStatus.ERROR
    assert "set aside for an operator" in (reply.error_message or "")
    (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
    assert dead.event == request
    assert dead.fields[b"dead_letter.delivery_count"] == b"2"
    assert w.stats.dead_lettered == 1


async def test_a_long_run_is_kept_and_answered_once(backend: Backend) -> None:
    transport, other = await backend.transport(), await backend.transport()
    slow = 3 * 0.6  # three times claim_min_idle
    started = asyncio.Event()

    async def long_run(target: Target, request: AgentRequestEvent) -> str:
        started.set()
        await asyncio.sleep(slow)
        return "finally"

    await transport.publish(backend.names.requests, request_event(backend.names, "take your time"))
    busy = worker(transport, FunctionExecutor(long_run), consumer="busy")
    idle = worker(other, consumer="idle")
    running = asyncio.ensure_future(busy.run_until_idle())
    async with asyncio.timeout(10):  # the busy worker runs it before the idle one starts reading
        await started.wait()
    async with idle:
        await running
        await asyncio.sleep(0.2)
    assert [r.content for r in await replies(transport, backend.names)] == ["finally"]
    assert idle.stats.received == 0


class HeldUp:
    """A run that waits for ``gate`` (``started`` once it runs), then answers "answered"."""

    def __init__(self) -> None:
        self.gate, self.started = asyncio.Event(), asyncio.Event()
        self.executor = FunctionExecutor(self._run)

    async def _run(self, target: Target, request: AgentRequestEvent) -> str:
        self.started.set()
        await self.gate.wait()
        return "answered"


async def cannot_keep_fresh(deliveries: Any) -> list[Any]:
    raise TransportError("keeping entries fresh failed: Redis unreachable")


async def test_an_entry_this_worker_still_handles_is_not_handled_twice_when_it_reclaims_it(
    backend: Backend,
) -> None:
    """Its entries went idle past claim_min_idle while it could not keep them fresh (Redis away,
    its loop blocked), so the worker's own reclaim scan took back an entry it was still running:
    a second handler for it ran beside the first, and past max_deliveries dead-lettered it with
    an error reply while the first went on to answer it too (found by a soak under faults)."""
    transport = await backend.transport()
    run = HeldUp()
    received: list[int] = []

    class Received(BaseHooks):
        async def on_received(self, delivery: Any) -> None:
            received.append(delivery.delivery_count)

    w = worker(transport, run.executor, max_deliveries=1)
    w.hooks.append(Received())
    transport.keep_fresh = cannot_keep_fresh  # type: ignore[method-assign]
    await transport.publish(backend.names.requests, request_event(backend.names, "x"))
    async with w:
        await asyncio.wait_for(run.started.wait(), 5)
        await wait_for(lambda: _async(w.stats.received >= 2))  # its own reclaim scan took it back
        run.gate.set()
        await wait_for(lambda: _async(w.in_flight == 0))
    (reply,) = await replies(transport, backend.names)
    assert (reply.status, reply.content) == (ResponseStatus.COMPLETED, "answered")
    assert received == [1]  # one handler, the first delivery's
    assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
    assert await transport.pending(backend.names.requests, "dynamic-agents") == []
    assert (w.stats.completed, w.stats.dead_lettered) == (1, 0)


async def test_a_run_whose_entry_was_lost_publishes_nothing_though_it_ignored_its_cancellation(
    backend: Backend,
) -> None:
    """Its entry deleted from the stream (or taken over) while it ran: the run is cancelled and
    publishes nothing. An executor that swallowed that cancellation and returned a result had it
    written as the reply, its lease still held (a takeover's dead letter got a second answer)."""
    transport = await backend.transport()
    gate, started, swallowed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def stubborn(target: Target, request: AgentRequestEvent) -> str:
        started.set()
        while not gate.is_set():
            try:
                await gate.wait()
            except asyncio.CancelledError:
                swallowed.set()
        return "stale"

    w = worker(transport, FunctionExecutor(stubborn))
    entry_id = await transport.publish(backend.names.requests, request_event(backend.names, "x"))
    async with w:
        await asyncio.wait_for(started.wait(), 5)
        await transport.delete(backend.names.requests, entry_id)
        await asyncio.wait_for(swallowed.wait(), 5)  # its keep-fresh found it gone and cancelled it
        gate.set()
        await wait_for(lambda: _async(w.in_flight == 0))
    assert await replies(transport, backend.names) == []
    assert (w.stats.lost, w.stats.completed) == (1, 0)


async def test_a_request_past_max_deliveries_is_not_dead_lettered_while_its_session_runs(
    backend: Backend,
) -> None:
    """A worker that could not keep its entry fresh (starved, Redis away) but still held its
    session's lease had the entry taken over past max_deliveries: the taker dead-lettered it with
    an error reply, and the run, its lease still held, answered it too (found by a soak)."""
    transport, other = await backend.transport(), await backend.transport()
    run = HeldUp()

    # concurrency 1: busy with the run, it reads nothing, so its own reclaim scan cannot take the
    # entry back first (which keeps it fresh in its place) and the taker is sure to get it
    running = worker(transport, run.executor, consumer="running", lease_ttl=5, concurrency=1)
    transport.keep_fresh = cannot_keep_fresh  # type: ignore[method-assign]
    taker = worker(other, consumer="taker", max_deliveries=1, lease_ttl=5)
    await transport.publish(backend.names.requests, request_event(backend.names, "x"))
    async with running:
        await asyncio.wait_for(run.started.wait(), 5)
        async with taker:
            await wait_for(lambda: _async(taker.stats.received >= 1))  # taken over: delivered twice
            await wait_for(lambda: _async(taker.in_flight == 0))
            run.gate.set()
            await wait_for(lambda: _async(running.in_flight == 0))
    await taker.run_until_idle()
    (reply,) = await replies(transport, backend.names)
    assert (reply.status, reply.content) == (ResponseStatus.COMPLETED, "answered")
    assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
    assert await transport.pending(backend.names.requests, "dynamic-agents") == []


@pytest.mark.parametrize("holder", ["hung-run", ""], ids=["named", "anonymous"])
async def test_a_request_past_max_deliveries_is_handed_back_only_so_often_while_its_session_is_held(
    backend: Backend, holder: str
) -> None:
    """A session held for ever (a hung run that keeps renewing its lease) kept a request past
    max_deliveries coming back every claim_min_idle for ever: once a run of it would have timed
    out (request_timeout more, in claim_min_idle steps, and one more) it is dead-lettered, with
    its error reply, all the same. A lease taken without a holder (``acquire()``'s default) holds
    the session as well: it was read as free, and the request dead-lettered at once."""
    transport = await backend.transport()
    await transport.ensure_group(backend.names.requests, "dynamic-agents")
    await transport.publish(backend.names.requests, request_event(backend.names, "cursed"))
    crashed = Subscription(backend.names.requests, "dynamic-agents", "crashed", AgentRequestEvent, block=0)
    assert len(await transport.read(crashed, 1)) == 1  # its first delivery, to a consumer that died
    coordinator = transport.coordinator()
    assert await coordinator.acquire("s1", 3600, holder=holder) is not None
    w = worker(
        transport,
        coordinator=coordinator,
        max_deliveries=1,
        claim_min_idle=0.1,
        keep_fresh_every=0.03,
        request_timeout=0.3,
    )
    async with w:
        await wait_for(lambda: _async(w.stats.dead_lettered == 1))
    # deliveries 2 to 5 handed back (max_deliveries 1, + ceil(0.3 / 0.1) + 1), the 6th dead-lettered
    assert w.stats.handed_back == 4
    (reply,) = await replies(transport, backend.names)
    assert reply.status is ResponseStatus.ERROR
    (letter,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
    assert letter.event.content == "cursed"


async def test_an_entry_its_own_reclaim_takes_back_is_not_counted_as_delivered_again(
    backend: Backend,
) -> None:
    """Each time its own reclaim scan took back an entry its handler still ran (it could not keep it
    fresh), the entry was counted as delivered once more, though nothing new handled it: a taker
    (after this worker died) could find it past max_deliveries and set it aside instead of running
    it. The worker takes each such delivery back."""
    transport = await backend.transport()
    run = HeldUp()

    async def counted_once() -> bool:
        (pending,) = await transport.pending(backend.names.requests, "dynamic-agents")
        return (pending.consumer, pending.delivery_count) == (w.settings.consumer, 1)

    w = worker(transport, run.executor)
    transport.keep_fresh = cannot_keep_fresh  # type: ignore[method-assign]
    await transport.publish(backend.names.requests, request_event(backend.names, "x"))
    async with w:
        await asyncio.wait_for(run.started.wait(), 5)
        await wait_for(lambda: _async(w.stats.received >= 3))  # taken back by its own scan twice
        await wait_for(counted_once)  # once each has been taken back (it stayed at 3)
        run.gate.set()
        await wait_for(lambda: _async(w.in_flight == 0))
    (reply,) = await replies(transport, backend.names)
    assert (reply.status, reply.content) == (ResponseStatus.COMPLETED, "answered")


async def test_one_session_runs_in_order_and_never_overlaps(backend: Backend) -> None:
    transport, other = await backend.transport(), await backend.transport()
    spans: list[tuple[str, float, float, str]] = []

    def recording(name: str) -> FunctionExecutor:
        async def run(target: Target, request: AgentRequestEvent) -> str:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            spans.append((request.content, started, time.monotonic(), name))
            return request.content

        return FunctionExecutor(run)

    for n in range(20):
        await transport.publish(
            backend.names.requests, request_event(backend.names, f"{n:02d}", session="one")
        )
    first = worker(transport, recording("a"), consumer="a", concurrency=4)
    second = worker(other, recording("b"), consumer="b", concurrency=4)
    await asyncio.gather(first.run_until_idle(), second.run_until_idle())
    assert len(spans) == 20
    ordered = sorted(spans, key=lambda span: span[1])
    assert all(a[2] <= b[1] for a, b in itertools.pairwise(ordered))  # no overlap
    for name in ("a", "b"):
        mine = [span[0] for span in ordered if span[3] == name]
        assert mine == sorted(mine)  # within a worker: arrival order
    assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []


async def test_different_sessions_run_concurrently(backend: Backend) -> None:
    transport = await backend.transport()
    running = 0
    peak = 0

    async def run(target: Target, request: AgentRequestEvent) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.1)
        running -= 1
        return "ok"

    for n in range(4):
        await transport.publish(backend.names.requests, request_event(backend.names, str(n), session=f"s{n}"))
    await worker(transport, FunctionExecutor(run), concurrency=4).run_until_idle()
    assert peak == 4


async def test_waiting_for_a_lease_does_not_count_as_a_delivery(backend: Backend) -> None:
    transport = await backend.transport()
    coordinator = transport.coordinator()
    held = await coordinator.acquire("busy-session", ttl=30)  # another worker's run
    assert held is not None
    await transport.publish(
        backend.names.requests, request_event(backend.names, "patient", session="busy-session")
    )
    w = worker(transport, max_deliveries=1)
    async with w:
        await wait_for(lambda: _async(w.stats.lease_waits == 1))
        await asyncio.sleep(3 * 0.6)  # several claim_min_idle periods while waiting
        await coordinator.release(held)
        await wait_for(lambda: _async(w.stats.completed == 1))
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: patient"]
    assert w.stats.dead_lettered == 0


async def test_a_run_that_loses_its_lease_publishes_nothing(backend: Backend) -> None:
    transport, other = await backend.transport(), await backend.transport()
    started = asyncio.Event()

    async def slow(target: Target, request: AgentRequestEvent) -> str:
        started.set()
        await asyncio.sleep(5)
        return "from the worker that lost its lease"

    request = request_event(backend.names, "x", session="contested")
    await transport.publish(backend.names.requests, request)
    loser = worker(transport, FunctionExecutor(slow), consumer="loser")
    handled = Handled()
    loser.hooks.append(handled)
    async with loser:
        await asyncio.wait_for(started.wait(), 5)
        await backend.delete_key(backend.names.session_lease("contested"))
        rival = await other.coordinator().acquire("contested", ttl=30)  # someone else takes the session
        assert rival is not None
        await wait_for(lambda: _async(loser.stats.lost == 1))
        await wait_for(lambda: _async(bool(handled.errors)))
        assert await replies(transport, backend.names) == []
        await loser.stop(grace=0)  # (it would otherwise take the entry back and wait for the lease)
        await other.coordinator().release(rival)
    _assert_lost_run(handled.errors[0], request)
    await worker(other, consumer="winner").run_until_idle()
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: x"]


async def test_a_run_whose_lease_changed_hands_between_renewals_publishes_nothing(backend: Backend) -> None:
    """The reply is written only while the lease is held (checked inside ``complete``), so a lease
    lost after the last renewal still stops the reply."""
    transport, other = await backend.transport(), await backend.transport()
    rivals = []

    async def stalls_past_its_lease(target: Target, request: AgentRequestEvent) -> str:
        await backend.delete_key(backend.names.session_lease("contested"))  # as if it had expired
        rival = await other.coordinator().acquire("contested", ttl=30)
        assert rival is not None
        rivals.append(rival)
        return "from the worker that lost its lease"  # before the next renewal could notice

    request = request_event(backend.names, "x", session="contested")
    await transport.publish(backend.names.requests, request)
    loser = worker(transport, FunctionExecutor(stalls_past_its_lease), consumer="loser", lease_ttl=30)
    handled = Handled()
    loser.hooks.append(handled)
    async with loser:
        await wait_for(lambda: _async(loser.stats.lost == 1))
        await loser.stop(grace=0)
    assert await replies(transport, backend.names) == []
    _assert_lost_run(handled.errors[0], request)
    # then redelivered here, waiting for the rival's lease, and handed back by the stop
    assert all(isinstance(error, asyncio.CancelledError) for error in handled.errors[1:])
    assert await other.coordinator().holder("contested") == rivals[0].holder  # the rival's lease stands
    await other.coordinator().release(rivals[0])
    await worker(other, consumer="winner").run_until_idle()
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: x"]


async def test_graceful_stop_finishes_or_returns_runs(backend: Backend) -> None:
    """The quick runs are let go once the stop has begun: they end within its grace and are
    answered; the slow ones never end by themselves, so the grace runs out and they are handed back."""
    transport, other = await backend.transport(), await backend.transport()
    quick_may_end = asyncio.Event()

    async def mixed(target: Target, request: AgentRequestEvent) -> str:
        if request.content.startswith("quick"):
            await quick_may_end.wait()
        else:
            await asyncio.Event().wait()  # until cancelled
        return request.content

    for n in range(10):
        kind = "quick" if n % 2 else "slow"
        await transport.publish(
            backend.names.requests, request_event(backend.names, f"{kind}-{n}", session=f"s{n}")
        )
    w = worker(transport, FunctionExecutor(mixed), concurrency=10)
    async with w:
        await wait_for(lambda: _async(w.stats.received == 10))
        stopping = asyncio.create_task(w.stop(grace=3.0))
        await wait_for(lambda: _async(w._stopping))
        quick_may_end.set()
        await stopping
    # the quick ones finished within the grace; the slow ones were cancelled and handed back
    answered = {r.content for r in await replies(transport, backend.names)}
    assert answered == {f"quick-{n}" for n in range(1, 10, 2)}
    pending = await transport.pending(backend.names.requests, "dynamic-agents")
    assert len(pending) == 5  # not acked, not answered: back to the group
    await worker(other, consumer="rescuer").run_until_idle()
    answered = {r.content for r in await replies(transport, backend.names)}
    assert answered >= {f"echo: slow-{n}" for n in range(0, 10, 2)}
    assert all(r.status == ResponseStatus.COMPLETED for r in await replies(transport, backend.names))


async def test_a_graceful_stop_keeps_the_leases_of_the_runs_it_drains(backend: Backend) -> None:
    """A run drained past lease_ttl keeps its entry and its session (no other worker runs either
    meanwhile) and publishes its answer."""
    transport, other = await backend.transport(), await backend.transport()
    gate, started = asyncio.Event(), asyncio.Event()
    runs: list[str] = []
    running = 0
    most_at_once = 0

    async def run(target: Target, request: AgentRequestEvent) -> str:
        nonlocal running, most_at_once
        runs.append(request.content)
        running += 1
        most_at_once = max(most_at_once, running)
        started.set()
        try:
            if request.content == "first":
                await gate.wait()
        finally:
            running -= 1
        return f"answer to {request.content}"

    stopping_worker = worker(transport, FunctionExecutor(run))
    await stopping_worker.__aenter__()
    await transport.publish(backend.names.requests, request_event(backend.names, "first"))
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(stopping_worker.stop(grace=30))  # a rolling deploy, say
    async with worker(other, FunctionExecutor(run), consumer="successor"):
        await transport.publish(backend.names.requests, request_event(backend.names, "second"))
        await asyncio.sleep(3 * FAST["lease_ttl"])  # past the lease's ttl: only renewals keep it
        gate.set()
        await stopping
        await wait_for(lambda: _has_replies(transport, backend, 2))
    assert [r.content for r in await replies(transport, backend.names)] == [
        "answer to first",
        "answer to second",
    ]
    assert runs == ["first", "second"]
    assert most_at_once == 1


async def test_stop_hands_back_requests_queued_behind_their_session(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A request queued behind its session's run has not started: stop() hands it back instead of
    starting it once the run ends, counts it and says so."""
    transport, other = await backend.transport(), await backend.transport()
    gate, first_started = asyncio.Event(), asyncio.Event()
    started: list[str] = []

    async def run(target: Target, request: AgentRequestEvent) -> str:
        started.append(request.content)
        first_started.set()
        await gate.wait()
        return f"answer to {request.content}"

    w = worker(transport, FunctionExecutor(run))
    await w.__aenter__()
    await transport.publish(backend.names.requests, request_event(backend.names, "first"))
    await asyncio.wait_for(first_started.wait(), 5)
    await transport.publish(backend.names.requests, request_event(backend.names, "second"))
    await wait_for(lambda: _async(w.stats.received == 2))
    with caplog.at_level(logging.INFO, logger="dynamic_agents.worker"):
        stopping = asyncio.create_task(w.stop(grace=30))
        await asyncio.sleep(0)  # stop() has begun: the first run ends only now
        gate.set()
        await stopping
    assert started == ["first"]
    assert w.stats.handed_back == 1
    assert f"worker {w.settings.consumer} stopped: 1 request(s) handed back to the group" in caplog.text
    with caplog.at_level(logging.INFO, logger="dynamic_agents.worker"):
        await w.stop()  # stopped already (as leaving `async with` after a stop): nothing more said
    assert caplog.text.count(" stopped: ") == 1
    assert [r.content for r in await replies(transport, backend.names)] == ["answer to first"]
    await worker(other, consumer="rescuer").run_until_idle()  # handed back, not lost
    assert [r.content for r in await replies(transport, backend.names)] == [
        "answer to first",
        "echo: second",
    ]


async def test_stop_abandons_a_run_that_ignores_its_cancellation(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A run that catches its cancellation and goes on does not hold ``stop()`` up past the grace
    and ``abandon_after``: it is abandoned — named in a warning, its lease given up, its entry left
    pending (not acked, no longer kept fresh) for another worker — and its late finish writes no
    reply: the lease token check refuses it. The lifecycle events are still flushed."""
    transport, other = await backend.transport(), await backend.transport()
    started, cancelled, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def stubborn(target: Target, request: AgentRequestEvent) -> str:
        if request.content != "stubborn":
            return f"echo: {request.content}"
        started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            cancelled.set()
        await _ignoring_cancellation(finish.wait)  # its timeout too (a thread it waits for, say)
        return "a late answer"

    request = request_event(backend.names, "stubborn")
    await transport.publish(backend.names.requests, request)
    handled = Handled()
    w = worker(transport, FunctionExecutor(stubborn), events=True, abandon_after=0.2)
    w.hooks.append(handled)
    await w.__aenter__()
    try:
        await asyncio.wait_for(started.wait(), 5)
        with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
            async with asyncio.timeout(30):  # a hang guard: before, stop() never returned
                await w.stop(grace=0)
        assert cancelled.is_set()
        warning = "abandoned 1 run(s) still going 0.2 s after their cancellation (abandon_after)"
        assert f"{warning}, request ids: {request.id};" in caplog.text
        assert w.in_flight == 0
        assert await other.coordinator().holder("s1") is None  # given up: no longer renewed
        (pending,) = await transport.pending(backend.names.requests, "dynamic-agents")
        assert pending.delivery_count == 1  # not acked, not handed back: reclaimed after claim_min_idle
        events = [e.event for e in await transport.read_stream(backend.names.events, LifecycleEvent)]
        assert [e.type for e in events] == ["request.accepted", "run.started"]  # type: ignore[attr-defined]
    finally:  # nothing left running past the test, whatever happened
        finish.set()  # the abandoned run finishes late: its lease is gone, its reply refused
    await wait_for(lambda: _async(len(handled.errors) == 1))
    assert isinstance(handled.errors[0], RunLostError)
    assert await replies(transport, backend.names) == []
    assert len(await transport.pending(backend.names.requests, "dynamic-agents")) == 1
    await worker(other, consumer="rescuer").run_until_idle()  # after claim_min_idle
    (reply,) = await replies(transport, backend.names)
    assert (reply.request_id, reply.content) == (request.id, "echo: stubborn")


async def test_a_run_abandoned_by_stop_ending_late_leaves_a_new_delivery_of_its_entry_alone(
    backend: Backend,
) -> None:
    """The worker, started again after ``stop()`` abandoned a run, takes the entry back (after
    ``claim_min_idle``) and runs it while the abandoned run still goes. When that run ends, its
    cleanup touches only its own delivery: the new one stays held (kept fresh) with its lease
    renewed and its run registered, and is answered once."""
    transport = await backend.transport()
    first_started, second_started = asyncio.Event(), asyncio.Event()
    finish_first, finish_second = asyncio.Event(), asyncio.Event()
    runs = 0

    async def stubborn_then_slow(target: Target, request: AgentRequestEvent) -> str:
        nonlocal runs
        runs += 1
        if runs > 1:
            second_started.set()
            await finish_second.wait()
            return "the new delivery's answer"
        first_started.set()
        await _ignoring_cancellation(finish_first.wait)
        return "the abandoned run's answer"

    request = request_event(backend.names, "stubborn")
    await transport.publish(backend.names.requests, request)
    handled = Handled()
    w = worker(transport, FunctionExecutor(stubborn_then_slow), abandon_after=0.1)
    w.hooks.append(handled)
    await w.__aenter__()
    try:
        await asyncio.wait_for(first_started.wait(), 5)
        await w.stop(grace=0)  # abandons the run
        await w.__aenter__()  # the same worker again: takes the entry back once it is idle
        await asyncio.wait_for(second_started.wait(), 10)
        (entry_id,) = w._held
        delivery, lease, execution = w._held[entry_id], w._leases[request.id], w._executions[request.id]
        finish_first.set()  # the abandoned run ends now, mid-run of the new delivery
        await wait_for(lambda: _async(len(handled.errors) == 1))
        assert isinstance(handled.errors[0], RunLostError)  # its late reply refused
        assert w._held.get(entry_id) is delivery  # still kept fresh
        assert w._leases.get(request.id) is lease  # still renewed
        assert w._executions.get(request.id) is execution  # still cancellable on request
        assert w.in_flight == 1
        finish_second.set()
        await wait_for(lambda: _async(len(handled.errors) == 2))
        assert handled.errors[1] is None
    finally:
        finish_first.set()
        finish_second.set()
        await w.stop()
    (reply,) = await replies(transport, backend.names)
    assert (reply.request_id, reply.content) == (request.id, "the new delivery's answer")
    assert await transport.pending(backend.names.requests, "dynamic-agents") == []


@pytest.mark.parametrize("merged", [False, True], ids=["single", "merged"])
async def test_a_run_abandoned_by_stop_that_ends_late_is_counted_lost_once(
    backend: Backend, merged: bool
) -> None:
    """``stop()`` abandons a run that ignores its cancellation and counts it lost; its late end
    (its lease given up, so its reply refused) does not count it again. A merged turn (answered
    under the lease it checks first) as well."""
    transport = await backend.transport()
    started, finish = asyncio.Event(), asyncio.Event()

    async def stubborn(target: Target, request: AgentRequestEvent) -> str:
        started.set()
        await _ignoring_cancellation(finish.wait)
        return "a late answer"

    policy = {"session_policy": "merge"} if merged else {}
    w = worker(transport, FunctionExecutor(stubborn), abandon_after=0.1, **policy)
    handled = Handled()
    w.hooks.append(handled)
    for content in ["first", "second"] if merged else ["first"]:
        await transport.publish(backend.names.requests, request_event(backend.names, content))
    await w.__aenter__()  # both read at once (one batch): the second is merged into the first's turn
    try:
        await asyncio.wait_for(started.wait(), 5)
        await w.stop(grace=0)
        assert w.stats.lost == 1
    finally:
        finish.set()
    await wait_for(lambda: _async(any(isinstance(e, RunLostError) for e in handled.errors)))
    assert await replies(transport, backend.names) == []
    assert w.stats.lost == 1


@pytest.mark.parametrize(
    ("error", "traceback"),
    [(TransportError("complete r failed: Redis unreachable (boom)"), False), (RuntimeError("a bug"), True)],
)
async def test_a_request_that_cannot_be_answered_is_logged_once_as_an_error(
    backend: Backend, caplog: pytest.LogCaptureFixture, error: Exception, traceback: bool
) -> None:
    """Redis gone past the retry deadline is an expected failure: one ERROR line saying why, no
    traceback (three chained exceptions per request, in an outage); anything else is a bug and
    keeps its traceback. Either way the entry stays pending for a retry."""
    transport = await backend.transport()

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    handled = Handled()
    w = worker(transport)
    w.hooks.append(handled)
    transport.complete = failing  # type: ignore[method-assign]
    request = request_event(backend.names, "x")
    await transport.publish(backend.names.requests, request)
    with caplog.at_level(logging.ERROR, logger="dynamic_agents.worker"):
        async with w:
            await wait_for(lambda: _async(len(handled.errors) == 1))
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith(f"handling request {request.id} failed")
    if traceback:
        assert record.exc_info is not None
        assert record.exc_info[1] is error
    else:
        assert record.exc_info is None
        assert f"({error})" in record.getMessage()
    assert len(await transport.pending(backend.names.requests, "dynamic-agents")) == 1


class _StubbornHook(BaseHooks):
    """A hook that goes on, through its cancellation, until ``finish`` is set, at ``hook``."""

    def __init__(self, hook: str) -> None:
        self.hook, self.entered, self.finish = hook, asyncio.Event(), asyncio.Event()

    async def _stall(self, name: str) -> None:
        if name == self.hook:
            self.entered.set()
            await _ignoring_cancellation(self.finish.wait)

    async def on_received(self, delivery: Any) -> None:
        await self._stall("on_received")

    async def on_routed(self, delivery: Any, target: Any) -> None:
        await self._stall("on_routed")

    async def before_execute(self, context: RunContext) -> None:
        await self._stall("before_execute")


@pytest.mark.parametrize("hook", ["on_received", "on_routed", "before_execute"])
async def test_a_request_whose_hook_ignored_its_cancellation_is_not_run(backend: Backend, hook: str) -> None:
    """A hook before the run that swallows the cancellation of ``stop()`` does not start the run
    once it returns (after ``stop()`` abandoned its request, or while the worker stops): the
    cancellation goes on, the entry is left for another worker, which answers it once."""
    transport, other = await backend.transport(), await backend.transport()
    ran: list[str] = []

    async def record(target: Target, request: AgentRequestEvent) -> str:
        ran.append(request.content)
        return f"echo: {request.content}"

    stubborn, handled = _StubbornHook(hook), Handled()
    w = worker(transport, FunctionExecutor(record), abandon_after=0.1)
    w.hooks.extend([stubborn, handled])
    await transport.publish(backend.names.requests, request_event(backend.names, "warm-up", session="s0"))
    await w.__aenter__()
    stubborn.finish.set()  # the warm-up goes through (its read loads the claim-on-read script on Redis)
    await wait_for(lambda: _async(len(handled.errors) == 1))
    stubborn.finish.clear()
    stubborn.entered.clear()
    await transport.publish(backend.names.requests, request_event(backend.names, "first"))
    try:
        await asyncio.wait_for(stubborn.entered.wait(), 5)
        await w.stop(grace=0)  # cancels the handler; the hook goes on: abandoned
    finally:
        stubborn.finish.set()
    await wait_for(lambda: _async(len(handled.errors) == 2))
    assert isinstance(handled.errors[1], asyncio.CancelledError)
    assert ran == ["warm-up"]
    assert await other.coordinator().holder("s1") is None  # no lease left behind: claimed on read or not
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: warm-up"]
    await worker(other, FunctionExecutor(record), consumer="rescuer").run_until_idle()
    assert ran == ["warm-up", "first"]
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: warm-up", "echo: first"]


@pytest.mark.parametrize("abandoned", [False, True], ids=["returns", "abandoned"])
async def test_a_run_that_loses_its_lease_and_ignores_its_cancellation_is_counted_lost_once(
    backend: Backend, abandoned: bool
) -> None:
    """The lease loop finds the lease lost (counted) and cancels the run, which goes on: whether
    it returns (its reply refused) or is abandoned by ``stop()`` first, nothing is published and
    the loss is not counted again."""
    transport, other = await backend.transport(), await backend.transport()
    started, finish = asyncio.Event(), asyncio.Event()

    async def stubborn(target: Target, request: AgentRequestEvent) -> str:
        started.set()
        await _ignoring_cancellation(finish.wait)
        return "from the worker that lost its lease"

    request = request_event(backend.names, "x", session="contested")
    await transport.publish(backend.names.requests, request)
    loser = worker(transport, FunctionExecutor(stubborn), consumer="loser", abandon_after=0.1)
    handled = Handled()
    loser.hooks.append(handled)
    async with loser:
        try:
            await asyncio.wait_for(started.wait(), 5)
            await backend.delete_key(backend.names.session_lease("contested"))
            rival = await other.coordinator().acquire("contested", ttl=30)
            assert rival is not None
            await wait_for(lambda: _async(loser.stats.lost == 1))
            if abandoned:
                await loser.stop(grace=0)
                assert loser.stats.lost == 1
        finally:  # nothing left running past the test, whatever happened
            finish.set()
        await wait_for(lambda: _async(bool(handled.errors)))
        assert await replies(transport, backend.names) == []
        assert loser.stats.lost == 1
        await loser.stop(grace=0)
        await other.coordinator().release(rival)
    _assert_lost_run(handled.errors[0], request)


async def test_cancelling_the_task_that_runs_the_worker_hands_its_runs_back(backend: Backend) -> None:
    """The host cancels the task running ``run()`` (its own shutdown): the runs in flight are
    cancelled with it, hand their entries and leases back and end before ``run()`` does; none is
    left running without the loops that keep its entry and lease."""
    transport, other = await backend.transport(), await backend.transport()
    started = asyncio.Event()
    ended: list[str] = []

    async def slow(target: Target, request: AgentRequestEvent) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            ended.append(request.content)
        return "never"

    w = worker(transport, FunctionExecutor(slow), claim_min_idle=60, keep_fresh_every=20)
    running = asyncio.create_task(w.run())
    await transport.publish(backend.names.requests, request_event(backend.names, "x"))
    await asyncio.wait_for(started.wait(), 5)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert running.cancelled()
    assert (w.in_flight, ended) == (0, ["x"])
    assert await other.coordinator().holder("s1") is None  # the lease was given back
    # handed back at once (not after claim_min_idle, a minute here): another worker answers it
    await worker(other, consumer="rescuer", claim_min_idle=60, keep_fresh_every=20).run_until_idle()
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: x"]


async def test_async_with_left_at_once_stops_the_worker(backend: Backend) -> None:
    """stop() before the background run got to start: the run sees it and ends."""
    transport = await backend.transport()
    w = worker(transport)

    async def enter_and_leave() -> None:
        async with w:
            pass  # the host's startup failed right after starting the worker, say

    leaving = asyncio.create_task(enter_and_leave())
    done, _ = await asyncio.wait({leaving}, timeout=10)  # a hang shows as not done, not as slow
    if not done:  # let the loop end, then fail
        w._stopping = True
        await leaving
    assert done
    await transport.publish(backend.names.requests, request_event(backend.names, "again"))
    await w.run_until_idle()  # the stop was used up: the worker runs again
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: again"]


async def test_a_read_asks_for_at_most_batch_size_entries(backend: Backend) -> None:
    """docs/worker.md: ``batch_size`` is the entries asked for per read (at most the free slots);
    the worker asked for all its free slots, ``batch_size`` unused."""
    transport = await backend.transport()
    asked: list[int] = []
    real_read = transport.read

    async def read(subscription: Any, count: int, **options: Any) -> Any:
        asked.append(count)
        return await real_read(subscription, count, **options)

    transport.read = read  # type: ignore[method-assign]
    for n in range(6):
        request = request_event(backend.names, f"m{n}", session=f"s{n}")
        await transport.publish(backend.names.requests, request)
    w = worker(transport, concurrency=8, batch_size=2)
    await w.run_until_idle()
    assert len(await replies(transport, backend.names)) == 6
    assert asked
    assert max(asked) == 2


async def test_a_worker_running_already_refuses_to_run_again(backend: Backend) -> None:
    """``run_until_idle()`` inside ``async with worker:`` (a test's slip), or ``async with`` twice:
    a second read loop on the same state, each with its own helpers and ``on_start``, whose end
    said the other's reading was done (a stop's hand-backs no longer waited for it). Refused with
    a ``RuntimeError``; once stopped, the worker runs again."""
    transport = await backend.transport()
    w = worker(transport)
    async with w:
        with pytest.raises(RuntimeError, match=r"^this worker is running already \(async with"):
            await w.run_until_idle()
        with pytest.raises(RuntimeError, match=r"^this worker is running already"):
            await w.__aenter__()
    await transport.publish(backend.names.requests, request_event(backend.names, "again"))
    await w.run_until_idle()
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: again"]


async def test_stop_cancels_an_on_start_hook_that_does_not_end(backend: Backend) -> None:
    """A hook's ``on_start`` that hangs (a metrics exporter waiting for its collector, say) held
    ``stop()`` for ever: it is cancelled once the stop has waited ``block`` + 5 s for the read loop,
    as a read that does not end is; every hook gets ``on_stop``, and the worker can run again."""
    transport = await backend.transport()
    started, cancelled, stopped = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class Hangs(BaseHooks):
        async def on_start(self, worker: Any) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

        async def on_stop(self, worker: Any) -> None:
            stopped.set()

    w = worker(transport)
    w.hooks.append(Hangs())
    await w.__aenter__()
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(w.stop())
    done, _ = await asyncio.wait({stopping}, timeout=30)  # a hang shows as not done, not as slow
    assert done
    await stopping
    assert cancelled.is_set()
    assert stopped.is_set()
    w.hooks.pop()
    await transport.publish(backend.names.requests, request_event(backend.names, "after"))
    await w.run_until_idle()
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: after"]


async def test_stop_cancels_an_on_stop_hook_that_does_not_end(backend: Backend) -> None:
    """A hook's ``on_stop`` that hangs (a last flush to a collector that is away) held ``stop()``
    for ever, past the bound docs/guides/worker.md gives a stop: it is cancelled after
    ``abandon_after``, and the hooks after it still get their ``on_stop``."""
    transport = await backend.transport()
    cancelled, later_stopped = asyncio.Event(), asyncio.Event()

    class Hangs(BaseHooks):
        async def on_stop(self, worker: Any) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

    class Later(BaseHooks):
        async def on_stop(self, worker: Any) -> None:
            later_stopped.set()

    w = worker(transport, abandon_after=0.2)
    w.hooks += [Hangs(), Later()]
    await w.__aenter__()
    stopping = asyncio.create_task(w.stop())
    done, _ = await asyncio.wait({stopping}, timeout=30)  # a hang shows as not done, not as slow
    assert done
    await stopping
    assert cancelled.is_set()
    assert later_stopped.is_set()


async def test_stop_does_not_swallow_the_cancellation_of_its_caller(backend: Backend) -> None:
    """A caller cancelled while stop() waits (a timeout around shutdown) is cancelled; a later
    stop() finishes the job."""
    transport = await backend.transport()
    started = asyncio.Event()

    class Started(BaseHooks):
        async def on_start(self, worker: Any) -> None:
            started.set()

    w = worker(transport, block=1.0)
    w.hooks.append(Started())
    await w.__aenter__()
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(w.stop())
    await asyncio.sleep(0)  # stop() now waits for the read loop to end (up to `block`)
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled()
    await w.stop()  # finishes what the cancelled one began
    await transport.publish(backend.names.requests, request_event(backend.names, "after"))
    await w.run_until_idle()
    assert [r.content for r in await replies(transport, backend.names)] == ["echo: after"]


async def test_run_cancelled_while_its_helper_loops_end_is_cancelled(backend: Backend) -> None:
    """At its end run() cancels its helper loops (keeping entries fresh, leases renewed,
    cancellations watched) and waits for them: a cancellation of its task meanwhile (a shutdown's
    timeout) ends run() at once, not taken for the helper's, and the hooks still get on_stop."""
    transport = await backend.transport()
    coordinator = transport.coordinator()
    running_the_request, watching, helper_cancelled, let_go, finish = (asyncio.Event() for _ in range(5))
    read_cancellations = coordinator.cancelled

    async def slow_to_cancel_watch(request_ids: Any) -> set[str]:
        if not running_the_request.is_set():  # the claim's own check (in memory), before the run
            return await read_cancellations(request_ids)
        watching.set()  # the cancellation watch, during the run
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            helper_cancelled.set()
            while not let_go.is_set():  # ends only once let go, however often cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    await let_go.wait()
            raise
        raise AssertionError("unreachable")

    coordinator.cancelled = slow_to_cancel_watch  # type: ignore[method-assign]

    async def held(target: Target, request: AgentRequestEvent) -> str:
        running_the_request.set()
        await finish.wait()
        return "done"

    stopped: list[str] = []

    class Stopped(BaseHooks):
        async def on_stop(self, worker: Any) -> None:
            stopped.append("on_stop")

    w = worker(transport, FunctionExecutor(held), coordinator=coordinator, cancel_poll=0.01)
    w.hooks.append(Stopped())
    await transport.publish(backend.names.requests, request_event(backend.names, "x"))
    running = asyncio.create_task(w.run(until_idle=True))
    try:
        await asyncio.wait_for(watching.wait(), 10)  # the cancellation watch is in its call
        finish.set()  # the run ends, nothing is left: run() ends its helpers
        await asyncio.wait_for(helper_cancelled.wait(), 10)
        running.cancel()
        async with asyncio.timeout(10):  # a hang guard: before, it waited for the helper to end
            await asyncio.wait({running})  # the helper still going (let_go not set)
        assert running.cancelled()  # before, run() returned as if not cancelled
        assert stopped == ["on_stop"]
    finally:
        let_go.set()
        await asyncio.wait({running})
    assert [r.content for r in await replies(transport, backend.names)] == ["done"]


async def test_a_coordinator_leasing_without_a_lease_fails_the_handling_saying_so(backend: Backend) -> None:
    """A coordinator of the host's own that answers ``Claim(LEASED)`` without its lease: the check
    was an assert, gone under ``python -O``, and the run went on with no lease."""
    transport = await backend.transport()
    coordinator = transport.coordinator()

    async def leased_without_a_lease(session_id: str, request_ids: Any, ttl: float) -> Claim:
        return Claim(ClaimStatus.LEASED)

    coordinator.claim = leased_without_a_lease  # type: ignore[method-assign]
    ran: list[str] = []

    def run(target: Target, request: AgentRequestEvent) -> str:
        ran.append(request.content)
        return "ran"

    handled = Handled()
    w = worker(transport, FunctionExecutor(run), coordinator=coordinator)
    w.hooks.append(handled)
    await transport.publish(backend.names.requests, request_event(backend.names, "x"))
    async with w:
        await wait_for(lambda: _already(bool(handled.errors)))
    error = handled.errors[0]
    assert isinstance(error, TransportError)
    assert str(error).endswith(
        "claim() returned Claim(status=LEASED) without a lease: a LEASED claim carries its Lease"
    )
    assert ran == []


async def _already(value: bool) -> bool:
    """A condition already known, for :func:`wait_for`."""
    return value


@pytest.mark.parametrize("grace", ["5", -1, math.nan, True])
async def test_stop_refuses_a_grace_that_is_no_duration_and_stops_nothing(
    backend: Backend, grace: Any
) -> None:
    """stop(grace="5") failed with a bare TypeError after it had begun stopping; -1 and NaN were
    taken (no grace at all)."""
    transport = await backend.transport()
    w = worker(transport, block=0.1)
    await w.__aenter__()
    with pytest.raises(
        ConfigurationError, match=r"^grace must be a number of seconds .*>= 0 \(or None\), got "
    ):
        await w.stop(grace=grace)
    await transport.publish(backend.names.requests, request_event(backend.names, "still here"))

    async def answered() -> bool:  # nothing was stopped: it goes on answering
        return [r.content for r in await replies(transport, backend.names)] == ["echo: still here"]

    await wait_for(answered)
    await w.stop(grace=math.inf)  # as None: as long as the runs take
    assert w.in_flight == 0


async def test_a_reply_too_large_to_send_is_answered_with_an_error_once(backend: Backend) -> None:
    """A result the codec refuses (content over its limit) fails the same way on every delivery:
    an error reply at once, not a run per delivery and a dead letter."""
    transport = await backend.transport()
    calls: list[str] = []

    def big(target: Target, request: AgentRequestEvent) -> str:
        calls.append(request.id)
        return "x" * (transport.codec.max_content_length + 1)

    await transport.publish(backend.names.requests, request_event(backend.names, "summarise the repo"))
    w = worker(transport, FunctionExecutor(big), max_deliveries=3)
    async with w:
        await wait_for(lambda: _has_replies(transport, backend, 1))
    (reply,) = await replies(transport, backend.names)
    assert reply.status == ResponseStatus.ERROR
    assert "could not be sent" in (reply.error_message or "")
    assert "content" in (reply.error_message or "")
    assert len(calls) == 1
    assert (w.stats.failed, w.stats.dead_lettered) == (1, 0)
    assert not await transport.pending(backend.names.requests, "dynamic-agents")


class _HeaderHook(BaseHooks):
    async def before_respond(self, delivery: Any, response: Any, headers: dict[str, str]) -> None:
        headers["x-seen-by"] = "hook"


@pytest.mark.parametrize("hooks", [[], [_HeaderHook()]], ids=["no hooks", "with hooks"])
async def test_a_result_whose_reply_cannot_be_built_is_answered_with_an_error_once(
    backend: Backend, hooks: list[BaseHooks]
) -> None:
    """The reply is built (and refused) before the transport is called, with hooks and without:
    metadata that is not JSON is an error reply naming the field, at once, and the entry acked."""
    transport = await backend.transport()
    calls: list[str] = []

    def unwritable(target: Target, request: AgentRequestEvent) -> ExecutionResult:
        calls.append(request.id)
        unjson: Any = object()
        return ExecutionResult(ResponseStatus.COMPLETED, content="done", metadata={"when": unjson})

    await transport.publish(backend.names.requests, request_event(backend.names, "do it"))
    settings = WorkerSettings(**{**FAST, "max_deliveries": 3})
    w = AgentWorker(
        transport,
        transport.coordinator(),
        echo_router(),
        FunctionExecutor(unwritable),
        settings=settings,
        hooks=hooks,
    )
    async with w:
        await wait_for(lambda: _has_replies(transport, backend, 1))
    (reply,) = await replies(transport, backend.names)
    assert reply.status == ResponseStatus.ERROR
    assert "could not be sent" in (reply.error_message or "")
    assert "metadata" in (reply.error_message or "")
    assert len(calls) == 1
    assert (w.stats.failed, w.stats.dead_lettered) == (1, 0)
    assert not await transport.pending(backend.names.requests, "dynamic-agents")


class _BadHeaderHook(BaseHooks):
    """Adds headers no envelope can carry: a value that is not ASCII, one that is no string, and a
    header the codec sets itself."""

    async def before_respond(self, delivery: Any, response: Any, headers: dict[str, Any]) -> None:
        headers["x-user"] = "Zoë"
        headers["x-count"] = 3
        headers["reply_to"] = "elsewhere"


@pytest.mark.parametrize("dead_letter", [False, True], ids=["reply", "dead letter"])
async def test_headers_a_hook_adds_that_no_envelope_can_carry_are_dropped_and_the_reply_written(
    backend: Backend, dead_letter: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing hook never fails the run: a header it adds that the envelope refuses failed every
    write of the reply (and of the dead letter after ``max_deliveries``), so the request was never
    answered. Those headers are left out, logged naming the hook; the others are kept."""
    transport = await backend.transport()
    request = request_event(backend.names, "hi")
    await transport.publish(backend.names.requests, request)
    if dead_letter:  # delivered past max_deliveries before this worker reads it
        group, subscription = (
            "dynamic-agents",
            Subscription(
                backend.names.requests, "dynamic-agents", "gone", AgentRequestEvent, claim_min_idle=0.01
            ),
        )
        await transport.ensure_group(backend.names.requests, group)
        (delivery,) = await transport.read(subscription, 1)
        await transport.release(delivery)
    w = AgentWorker(
        transport,
        transport.coordinator(),
        echo_router(),
        FunctionExecutor(lambda target, request: "done"),
        settings=WorkerSettings(**{**FAST, "max_deliveries": 1}),
        hooks=[_HeaderHook(), _BadHeaderHook()],
    )
    with caplog.at_level(logging.ERROR, logger="dynamic_agents"):
        async with w:
            await wait_for(lambda: _has_replies(transport, backend, 1))
    (entry,) = await transport.read_stream(backend.names.responses("discord", "c1"), AgentResponseEvent)
    assert entry.event.request_id == request.id
    assert entry.event.status == (ResponseStatus.ERROR if dead_letter else ResponseStatus.COMPLETED)
    assert entry.message is not None
    headers = entry.message.headers
    assert headers["x-seen-by"] == "hook"
    assert "x-user" not in headers
    assert "x-count" not in headers
    assert headers.get("reply_to") is None
    assert not await transport.pending(backend.names.requests, "dynamic-agents")
    said = caplog.text
    assert "before_respond hook" in said
    for name in ("'x-user'", "'x-count'", "'reply_to'"):
        assert name in said


class _HugeHeadersHook(BaseHooks):
    """Adds headers each an envelope can carry, together past the codec's 1 MiB."""

    async def before_respond(self, delivery: Any, response: Any, headers: dict[str, Any]) -> None:
        headers.update({f"x-blob-{n}": "b" * 60_000 for n in range(20)})


@pytest.mark.parametrize("dead_letter", [False, True], ids=["reply", "dead letter"])
async def test_hook_headers_too_large_together_still_let_the_request_be_answered(
    backend: Backend, dead_letter: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The size version of the headers no envelope can carry: the reply was too large, so an
    error reply was written instead, with the same headers, too large again: the request came
    back at every claim and was never answered, nor dead-lettered. The error reply goes without
    the hooks' headers."""
    transport = await backend.transport()
    request = request_event(backend.names, "hi")
    await transport.publish(backend.names.requests, request)
    if dead_letter:  # delivered past max_deliveries before this worker reads it
        subscription = Subscription(
            backend.names.requests, "dynamic-agents", "gone", AgentRequestEvent, claim_min_idle=0.01
        )
        await transport.ensure_group(backend.names.requests, "dynamic-agents")
        (delivery,) = await transport.read(subscription, 1)
        await transport.release(delivery)
    w = AgentWorker(
        transport,
        transport.coordinator(),
        echo_router(),
        FunctionExecutor(lambda target, request: "done"),
        settings=WorkerSettings(**{**FAST, "max_deliveries": 1}),
        hooks=[_HugeHeadersHook()],
    )
    with caplog.at_level(logging.WARNING, logger="dynamic_agents"):
        async with w:
            await wait_for(lambda: _has_replies(transport, backend, 1))
    (entry,) = await transport.read_stream(backend.names.responses("discord", "c1"), AgentResponseEvent)
    assert entry.event.request_id == request.id
    assert entry.event.status == ResponseStatus.ERROR
    assert entry.message is not None
    assert not [name for name in entry.message.headers if name.startswith("x-blob-")]
    assert not await transport.pending(backend.names.requests, "dynamic-agents")
    assert "without the before_respond hooks' headers" in caplog.text


class _NotAResult:
    async def execute(self, target: Target, request: AgentRequestEvent, **options: Any) -> object:
        return {"content": "a dict, not an ExecutionResult"}


class _BadField:
    async def execute(self, target: Target, request: AgentRequestEvent, **options: Any) -> object:
        return ExecutionResult(ResponseStatus.COMPLETED, content=42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("executor", "problem"),
    [
        (FunctionExecutor(lambda target, request: {"answer": 42}), "dict"),  # type: ignore[arg-type, return-value]
        (_NotAResult(), "dict"),
        (_BadField(), "content"),
    ],
    ids=["function-returns-a-dict", "executor-returns-a-dict", "result-with-a-bad-field"],
)
async def test_a_result_that_cannot_become_a_reply_is_answered_with_an_error_once(
    backend: Backend, executor: Any, problem: str
) -> None:
    """The same on every delivery: an error reply naming the problem at once, not a run per
    delivery (its side effects repeated) and a dead letter."""
    transport = await backend.transport()
    runs = 0

    class Counted:
        async def execute(self, target: Target, request: AgentRequestEvent, **options: Any) -> Any:
            nonlocal runs
            runs += 1
            return await executor.execute(target, request, **options)

    await transport.publish(backend.names.requests, request_event(backend.names, "hi"))
    w = worker(transport, Counted(), max_deliveries=3)
    async with w:
        await wait_for(lambda: _has_replies(transport, backend, 1))
    (reply,) = await replies(transport, backend.names)
    assert reply.status == ResponseStatus.ERROR
    assert problem in (reply.error_message or "")
    assert runs == 1
    assert (w.stats.failed, w.stats.dead_lettered) == (1, 0)
    assert not await transport.pending(backend.names.requests, "dynamic-agents")


async def _has_replies(transport: Transport, backend: Backend, count: int) -> bool:
    return len(await replies(transport, backend.names)) >= count


async def test_lifecycle_events_and_hooks(backend: Backend) -> None:
    transport = await backend.transport()
    calls: list[str] = []

    class Recording(BaseHooks):
        async def before_execute(self, context: RunContext) -> None:
            calls.append(f"before {context.request.content}")

        async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
            calls.append(f"after {result.status}")
            raise RuntimeError("a broken hook must not break the run")

        async def after_complete(self, context: RunContext, completion: Completion) -> None:
            calls.append(f"complete {completion.created}")

    async def streaming(target: Target, request: AgentRequestEvent) -> ExecutionResult:
        return ExecutionResult(ResponseStatus.COMPLETED, content="done")

    await transport.publish(backend.names.requests, request_event(backend.names, "observe me"))
    w = worker(transport, FunctionExecutor(streaming), events=True)
    w.hooks.append(Recording())
    await w.run_until_idle()
    assert calls == ["before observe me", "after completed", "complete True"]
    events = [e.event for e in await transport.read_stream(backend.names.events, LifecycleEvent)]
    assert [e.type for e in events] == ["request.accepted", "run.started", "run.completed"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("point", ["before_execute", "after_execute"])
async def test_the_lease_is_renewed_from_the_claim_until_the_reply_is_written(
    backend: Backend, point: str
) -> None:
    """A slow hook around the run (an exporter waiting for its collector, say) held the lease
    unrenewed from its claim to the run's start, and from the run's end to its reply: past
    ``lease_ttl`` the lease was gone, another worker free to run the session, and the run thrown
    away (its reply refused), to run again. It is renewed all along: the hook outlives several
    renewals (more than the lease's ttl), and the request runs and is answered once."""
    transport = await backend.transport()
    coordinator = transport.coordinator()
    real_renew = coordinator.renew
    renewals = 0

    async def renew(lease: Any, ttl: float | None = None) -> bool:
        nonlocal renewals
        renewals += 1
        return await real_renew(lease, ttl)

    coordinator.renew = renew  # type: ignore[method-assign]
    runs: list[str] = []

    async def answer(target: Target, request: AgentRequestEvent) -> str:
        runs.append(request.id)
        return "done"

    async def slow(*args: Any) -> None:
        renewed_before = renewals
        # renewals every third of lease_ttl: four of them span more than the lease's ttl
        await wait_for(
            lambda: _lease_outlived(renewals >= renewed_before + 4, coordinator, "slow"), within=10
        )

    hook = BaseHooks()
    setattr(hook, point, slow)
    request = request_event(backend.names, "x", session="slow")
    await transport.publish(backend.names.requests, request)
    w = worker(transport, FunctionExecutor(answer), coordinator=coordinator)
    w.hooks.append(hook)
    async with w:
        await wait_for(lambda: _async(bool(w.stats.completed or w.stats.lost)))
    assert [reply.content for reply in await replies(transport, backend.names)] == ["done"]
    assert runs == [request.id]
    assert w.stats.lost == 0


async def _lease_outlived(renewed: bool, coordinator: Any, session: str) -> bool:
    """Renewed past the lease's ttl, or the lease gone (expired, unrenewed)."""
    return renewed or await coordinator.holder(session) is None


async def test_a_run_that_publishes_nothing_reports_no_end_on_the_events_stream(backend: Backend) -> None:
    """Its lease lost when the reply was to be written: no ``run.completed`` for an answer that was
    never written (another worker runs the request again, with events of its own)."""
    transport, other = await backend.transport(), await backend.transport()

    async def stalls_past_its_lease(target: Target, request: AgentRequestEvent) -> str:
        await backend.delete_key(backend.names.session_lease("contested"))  # as if it had expired
        assert await other.coordinator().acquire("contested", ttl=30) is not None
        return "from the worker that lost its lease"

    await transport.publish(backend.names.requests, request_event(backend.names, "x", session="contested"))
    loser = worker(transport, FunctionExecutor(stalls_past_its_lease), lease_ttl=30, events=True)
    async with loser:
        await wait_for(lambda: _async(loser.stats.lost == 1))
        await loser.stop(grace=0)
    assert await replies(transport, backend.names) == []
    events = [e.event for e in await transport.read_stream(backend.names.events, LifecycleEvent)]
    types = [e.type for e in events if e.type != "run.content_delta"]  # type: ignore[attr-defined]
    assert types == ["request.accepted", "run.started"]


async def test_the_end_on_the_events_stream_is_that_of_the_reply_written(backend: Backend) -> None:
    """A reply too large to send is answered with an error: the events say ``run.failed``, as
    the reply does, not ``run.completed``."""
    transport = await backend.transport()

    def big(target: Target, request: AgentRequestEvent) -> str:
        return "x" * (transport.codec.max_content_length + 1)

    await transport.publish(backend.names.requests, request_event(backend.names, "summarise the repo"))
    await worker(transport, FunctionExecutor(big), events=True).run_until_idle()
    (reply,) = await replies(transport, backend.names)
    assert reply.status == ResponseStatus.ERROR
    events = [e.event for e in await transport.read_stream(backend.names.events, LifecycleEvent)]
    assert [e.type for e in events] == ["request.accepted", "run.started", "run.failed"]  # type: ignore[attr-defined]
    assert events[-1].error_message == reply.error_message  # type: ignore[attr-defined]


async def test_an_exception_quoting_a_connection_url_reaches_neither_reply_nor_events(
    backend: Backend,
) -> None:
    """The reply goes to a chat user and the events to every listener: an executor's exception
    quoting a URL with its password (never registered as a secret) is masked in both."""
    transport = await backend.transport()
    password = "CANARYworker0pw00001"

    def broken(target: Target, request: AgentRequestEvent) -> str:
        raise ConnectionError(f"cannot reach redis://:{password}@10.1.2.3:6380/0")

    await transport.publish(backend.names.requests, request_event(backend.names, "hi"))
    await worker(transport, FunctionExecutor(broken), events=True).run_until_idle()
    (reply,) = await replies(transport, backend.names)
    events = [e.event for e in await transport.read_stream(backend.names.events, LifecycleEvent)]
    assert reply.error_message == "ConnectionError: cannot reach redis://:**********@10.1.2.3:6380/0"
    assert events[-1].error_message == reply.error_message  # type: ignore[attr-defined]


async def test_content_deltas_are_coalesced(backend: Backend) -> None:
    from dynamic_agents.worker.lifecycle import EventSink, LifecyclePublisher

    transport = await backend.transport()
    sink = EventSink(transport, maxlen=100)
    publisher = LifecyclePublisher(sink, request_id="r", session_id="s", target=None, delta_interval=10)
    for piece in ("a", "b", "c"):
        await publisher.delta(piece)
    await publisher.finished(ExecutionResult(ResponseStatus.COMPLETED, content="abc"))
    await sink.flush()
    events = [e.event for e in await transport.read_stream(backend.names.events, LifecycleEvent)]
    deltas = [e.content for e in events if e.type == "run.content_delta"]  # type: ignore[attr-defined]
    assert deltas == ["a", "bc"]  # the first at once, the rest within the interval as one


@pytest.mark.parametrize(
    ("claim_min_idle", "lease_ttl", "warned"), [(10, 30, True), (30, 30, False), (60, 30, False)]
)
async def test_a_takeover_sooner_than_the_lease_is_warned_of(
    backend: Backend, caplog: pytest.LogCaptureFixture, claim_min_idle: float, lease_ttl: float, warned: bool
) -> None:
    """A dead worker's requests taken over before its leases expire wait for them in the taking
    worker's slots: a configuration that works, slower than it says, so a warning, not an error."""
    transport = await backend.transport()
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        worker(transport, claim_min_idle=claim_min_idle, keep_fresh_every=1, lease_ttl=lease_ttl)
    expected = f"claim_min_idle ({claim_min_idle} s) is shorter than lease_ttl ({lease_ttl} s)"
    assert (expected in caplog.text) is warned
    assert ("claim_min_idle" in caplog.text) is warned


def test_record_ttl_must_outlive_redeliveries() -> None:

    with pytest.raises(ConfigurationError, match="record_ttl"):
        WorkerSettings(max_deliveries=5, claim_min_idle=60, request_timeout=120, record_ttl=100)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("keep_fresh_every", 0),
        ("cancel_poll", 0),
        ("abandon_after", 0),
        ("abandon_after", float("nan")),
        ("lease_poll", -1),
        ("delta_interval", -0.1),
        ("events_maxlen", 0),
        ("session_policy", "rejct"),
        # NaN passes "<= 0": a lease, a timeout or a record that never ends
        ("lease_ttl", float("nan")),
        ("request_timeout", float("nan")),
        ("record_ttl", float("nan")),
        ("delta_interval", float("nan")),
        ("keep_fresh_every", float("nan")),
        ("record_ttl", float("inf")),
        # not checked at all: replies trimmed away as written, or expiring before they are read
        ("reply_maxlen", 0),
        ("reply_maxlen", -5),
        ("reply_expire", 0),
        ("reply_expire", -1.0),
        ("block", -1),
        # a read loop, or a wait for a lease, that never waits: on the in-memory transport the
        # event loop never gets back (the worker hangs), on Redis it polls without pause
        ("block", 0),
        ("lease_poll", 0),
        # wrong types: a bare TypeError, or accepted ("false" is a true value)
        ("concurrency", "8"),
        ("concurrency", 2.5),
        ("concurrency", True),
        ("batch_size", None),
        ("events", "false"),
        ("claim_on_read", "no"),
        ("group", ""),
        ("consumer", ""),
        ("busy_message", None),
    ],
)
def test_bad_worker_settings_are_refused_naming_the_field_and_value(name: str, value: object) -> None:

    with pytest.raises(ConfigurationError, match=rf"{name} must .*{re.escape(repr(value))}"):
        WorkerSettings(**{name: value})  # type: ignore[arg-type]


def test_whole_number_settings_take_a_float_that_is_one() -> None:
    """``5.0`` (from a JSON or YAML config, say) is 5, kept as an int."""
    settings = WorkerSettings(max_deliveries=5.0, concurrency=16.0, reply_maxlen=100.0)  # type: ignore[arg-type]
    assert (settings.max_deliveries, settings.concurrency, settings.reply_maxlen) == (5, 16, 100)
    assert all(
        isinstance(v, int) for v in (settings.max_deliveries, settings.concurrency, settings.reply_maxlen)
    )


def test_an_unknown_policy_for_a_target_is_refused_with_what_is_valid() -> None:

    with pytest.raises(ConfigurationError, match=r"policies\['agent:echo'\] .*'interrupt'.*got 'interupt'"):
        WorkerSettings(policies={"agent:echo": "interupt"})  # type: ignore[dict-item]


@pytest.mark.parametrize("key", ["support", "agents:support", "agent:", "", 7])
def test_a_policy_for_a_target_that_can_never_match_is_refused(key: object) -> None:
    """Targets are looked up as ``"agent:support"``: a key of another shape would be silently
    ignored forever."""

    with pytest.raises(ConfigurationError, match=rf"policies key {re.escape(repr(key))} .*'agent:<id>'"):
        WorkerSettings(policies={key: "reject"})  # type: ignore[dict-item]


def test_policies_given_as_text_are_stored_as_session_policies() -> None:
    from dynamic_agents.worker import SessionPolicy

    settings = WorkerSettings(session_policy="merge", policies={"agent:x": "reject"})  # type: ignore[arg-type, dict-item]
    assert settings.session_policy is SessionPolicy.MERGE
    assert settings.policies == {"agent:x": SessionPolicy.REJECT}
    assert settings.policies["agent:x"] is SessionPolicy.REJECT


async def _ignoring_cancellation(wait: Callable[[], Awaitable[object]]) -> None:
    """Await ``wait()`` to its end, whatever cancels this meanwhile: a run that goes on regardless."""
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await wait()
            return


async def _async(value: bool) -> bool:
    return value


def _assert_lost_run(error: BaseException | None, request: AgentRequestEvent) -> None:
    """A run that lost its lease ends with a ``RunLostError`` of the library's tree, naming it."""
    assert isinstance(error, RunLostError)
    assert isinstance(error, TransportError)
    assert isinstance(error, DynamicAgentsError)
    assert RunLostError is WorkerRunLostError  # the old import path names the same class
    assert (error.request_id, error.session_id) == (request.id, "contested")
    assert repr(request.id) in str(error)
    assert "'contested'" in str(error)
    assert "nothing was published" in str(error)


@pytest.mark.redis
async def test_the_claims_of_a_read_are_sent_before_the_next_read(redis_url: str, redis_prefix: str) -> None:
    """The next read's command would otherwise sit on the path of every request just read."""
    from dynamic_agents.events import StreamNames
    from dynamic_agents.transports import RedisStreamsTransport

    names = StreamNames(redis_prefix)
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    sent: list[str] = []
    read, write = transport._read_with, transport._pipeline._write

    async def logged_read(*args: Any) -> object:
        sent.append("read")
        return await read(*args)

    def logged_write(wire: object, calls: list[Any]) -> None:
        if any(command[0] == "SET" for call in calls for command in call.commands()):  # claims: SET NX
            sent.append("claims")
        write(wire, calls)  # type: ignore[arg-type]

    transport._read_with = logged_read  # type: ignore[method-assign]
    transport._pipeline._write = logged_write  # type: ignore[method-assign]
    try:
        for n in range(5):
            await transport.publish(names.requests, request_event(names, f"m{n}"))
        w = worker(transport)
        await w.run_until_idle()
    finally:
        await transport.aclose()
    assert w.stats.completed == 5
    assert sent[:3] == ["read", "claims", "read"]  # the five claims in one write, then a read


async def test_the_reply_carries_the_settings_maxlen_and_expire(backend: Backend) -> None:
    """The worker builds the reply of a request with a reply stream from its settings (and
    positionally: a field out of order would show here)."""
    transport = await backend.transport()
    written: list[Reply] = []
    complete = transport.complete

    async def recording(delivery: Any, reply: Reply, **kwargs: Any) -> Completion:
        written.append(reply)
        return await complete(delivery, reply, **kwargs)

    transport.complete = recording  # type: ignore[method-assign]
    request = request_event(backend.names, "hello")
    await transport.publish(backend.names.requests, request)
    w = worker(transport, reply_maxlen=123, reply_expire=456.0)
    await w.run_until_idle()
    (reply,) = written
    assert (reply.event.request_id, reply.stream) == (request.id, request.reply_stream)
    assert (reply.maxlen, reply.expire) == (123, 456.0)
    assert (dict(reply.headers), reply.channel, reply.correlation_id) == ({}, None, None)


@pytest.mark.parametrize("prefixed", [True, False])
async def test_a_failed_read_is_logged_naming_the_stream_once(
    backend: Backend, caplog: pytest.LogCaptureFixture, prefixed: bool
) -> None:
    """Redis's own read errors (out of memory, say) already say "reading '<stream>' failed", and
    the worker said it again before them; an error that does not name the read is still named."""
    transport = await backend.transport()
    stream = backend.names.requests
    read = transport.read
    failures = [f"reading {stream!r} failed: OOM command not allowed" if prefixed else "the broker said no"]

    async def failing_once(subscription: Subscription[Any], count: int, **options: Any) -> Any:
        if failures:
            raise TransportError(failures.pop())
        return await read(subscription, count, **options)

    transport.read = failing_once  # type: ignore[method-assign]
    await transport.publish(stream, request_event(backend.names, "hello"))
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        async with worker(transport):
            await wait_for(lambda: _has_replies(transport, backend, 1))
    (record,) = [r for r in caplog.records if "failed" in r.getMessage()]
    message = record.getMessage()
    assert message.count(f"reading {stream!r} failed") == 1
    assert message.endswith("OOM command not allowed" if prefixed else "the broker said no")
