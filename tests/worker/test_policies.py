"""Session policies and cancellation, with recorded timelines, on memory and on Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from dynamic_agents.client import AgentClient
from dynamic_agents.events import AgentRequestEvent, LifecycleEvent, ResponseStatus, Target
from dynamic_agents.exceptions import RunLostError
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.transports import Lease, Transport
from dynamic_agents.worker import AgentWorker, BaseHooks, SessionPolicy
from tests.worker.conftest import Backend, Handled, replies, request_event, wait_for, worker


class Timeline:
    """What ran when: (event, content, monotonic time)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []
        self.first_started = asyncio.Event()

    def executor(self, slow: set[str]) -> FunctionExecutor:
        async def run(target: Target, request: AgentRequestEvent) -> str:
            self.events.append(("start", request.content, time.monotonic()))
            self.first_started.set()
            try:
                await asyncio.sleep(30 if request.content in slow else 0.01)
            except asyncio.CancelledError:
                self.events.append(("cancelled", request.content, time.monotonic()))
                raise
            self.events.append(("end", request.content, time.monotonic()))
            return f"answer to {request.content}"

        return FunctionExecutor(run)

    def runs(self) -> list[str]:
        return [content for kind, content, _ in self.events if kind == "start"]


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    "settings",
    [
        {"session_policy": SessionPolicy.REJECT},
        # as read from YAML or the environment: text, not SessionPolicy members
        {"session_policy": "reject"},
        {"policies": {"agent:echo": "reject"}},
    ],
    ids=["member", "text", "text-per-target"],
)
async def test_reject_answers_busy_at_once(backend: Backend, settings: dict[str, Any]) -> None:
    transport = await backend.transport()
    timeline = Timeline()
    w = worker(transport, timeline.executor(slow={"first"}), **settings)
    async with w:
        await transport.publish(backend.names.requests, request_event(backend.names, "first"))
        await asyncio.wait_for(timeline.first_started.wait(), 5)
        await transport.publish(backend.names.requests, request_event(backend.names, "second"))
        await wait_for(lambda: _has_replies(transport, backend, 1))
        (busy,) = await replies(transport, backend.names)
        assert busy.status == ResponseStatus.REJECTED
        assert "previous message" in (busy.error_message or "")
        assert timeline.runs() == ["first"]  # the first is still running; the second never ran
        await w.stop(grace=0)


@pytest.mark.parametrize("holder", ["elsewhere", ""], ids=["named", "anonymous"])
async def test_reject_answers_busy_when_the_session_is_held_elsewhere(backend: Backend, holder: str) -> None:
    """Held by another worker's run, or by a lease taken without a holder (``acquire()``'s default,
    which was read as free: the request waited for the lease instead)."""
    transport = await backend.transport()
    coordinator = transport.coordinator()
    assert await coordinator.acquire("s1", 3600, holder=holder) is not None
    timeline = Timeline()
    w = worker(transport, timeline.executor(slow=set()), session_policy=SessionPolicy.REJECT)
    async with w:
        await transport.publish(backend.names.requests, request_event(backend.names, "second"))
        await wait_for(lambda: _has_replies(transport, backend, 1))
        (busy,) = await replies(transport, backend.names)
        assert busy.status == ResponseStatus.REJECTED
        assert timeline.runs() == []


async def test_interrupt_cancels_the_running_run_then_runs_the_new_one(backend: Backend) -> None:
    transport = await backend.transport()
    timeline = Timeline()
    w = worker(transport, timeline.executor(slow={"first"}), session_policy=SessionPolicy.INTERRUPT)
    async with w:
        await transport.publish(backend.names.requests, request_event(backend.names, "first"))
        await asyncio.wait_for(timeline.first_started.wait(), 5)
        sent = time.monotonic()
        await transport.publish(backend.names.requests, request_event(backend.names, "second"))
        await wait_for(lambda: _has_replies(transport, backend, 2))
    cancelled, answered = await replies(transport, backend.names)
    assert cancelled.status == ResponseStatus.CANCELLED
    assert (answered.status, answered.content) == (ResponseStatus.COMPLETED, "answer to second")
    (when_cancelled,) = [t for kind, _, t in timeline.events if kind == "cancelled"]
    assert when_cancelled - sent < 5  # bounded (a poll or two), not the 30 s the first would take
    assert timeline.runs() == ["first", "second"]


class SlowToStop:
    """A run function: 'first' runs until cancelled, then cleans up until ``clean_up_done`` is set;
    every other message is answered at once. ``ran`` lists the messages run, in order."""

    def __init__(self) -> None:
        self.started, self.cleaning_up, self.clean_up_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.ran: list[str] = []

    async def __call__(self, target: Target, request: AgentRequestEvent) -> str:
        self.ran.append(request.content)
        if request.content == "first":
            self.started.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            except asyncio.CancelledError:
                self.cleaning_up.set()
                await self.clean_up_done.wait()
                raise
        return f"answer to {request.content}"


async def test_interrupt_the_newest_message_wins(backend: Backend) -> None:
    """'first' runs, and is slow to end once cancelled (its clean-up); 'second' and 'third' arrive
    meanwhile: 'second' interrupts 'first', 'third' interrupts too — and 'second', still queued
    behind the run it interrupted, is answered ``cancelled`` at once: only the newest runs."""
    transport = await backend.transport()
    run = SlowToStop()

    w = worker(transport, FunctionExecutor(run), session_policy=SessionPolicy.INTERRUPT)
    second, third = request_event(backend.names, "second"), request_event(backend.names, "third")
    async with w:
        await transport.publish(backend.names.requests, request_event(backend.names, "first"))
        await asyncio.wait_for(run.started.wait(), 5)
        await transport.publish(backend.names.requests, second)
        await asyncio.wait_for(run.cleaning_up.wait(), 5)
        await transport.publish(backend.names.requests, third)
        await wait_for(lambda: _has_replies(transport, backend, 1))  # while 'first' still cleans up
        (superseded,) = await replies(transport, backend.names)
        assert (superseded.request_id, superseded.status) == (second.id, ResponseStatus.CANCELLED)
        run.clean_up_done.set()
        await wait_for(lambda: _has_replies(transport, backend, 3))
    _, first, last = await replies(transport, backend.names)
    assert first.status == ResponseStatus.CANCELLED
    assert (last.request_id, last.status, last.content) == (
        third.id,
        ResponseStatus.COMPLETED,
        "answer to third",
    )
    assert run.ran == ["first", "third"]


async def test_interrupt_across_workers_runs_every_message_queued_behind_the_lease(backend: Backend) -> None:
    """The run interrupted holds the lease in another worker: both messages interrupt it (through
    cancellation requests), the first one waits for the lease and runs, then the newest. Across
    workers only the running run is cancelled: a message waiting for another worker's lease has
    not been given a turn here, so nothing is queued ahead of the newest one to supersede."""
    transport, other = await backend.transport(), await backend.transport()
    run = SlowToStop()

    interrupt = {"session_policy": SessionPolicy.INTERRUPT}
    holder = worker(transport, FunctionExecutor(run), consumer="holder", concurrency=1, **interrupt)
    async with holder:  # busy with 'first', it reads nothing more
        await transport.publish(backend.names.requests, request_event(backend.names, "first"))
        await asyncio.wait_for(run.started.wait(), 5)
        for text in ("second", "third"):
            await transport.publish(backend.names.requests, request_event(backend.names, text))
        async with worker(other, FunctionExecutor(run), consumer="newcomer", **interrupt) as newcomer:
            await wait_for(lambda: _async(newcomer.stats.received == 2))
            await asyncio.wait_for(run.cleaning_up.wait(), 5)
            run.clean_up_done.set()
            await wait_for(lambda: _has_replies(transport, backend, 3))
    assert [(r.status, r.content) for r in await replies(transport, backend.names)] == [
        (ResponseStatus.CANCELLED, ""),
        (ResponseStatus.COMPLETED, "answer to second"),
        (ResponseStatus.COMPLETED, "answer to third"),
    ]
    assert run.ran == ["first", "second", "third"]


async def test_merge_answers_queued_messages_as_one_turn(backend: Backend) -> None:
    transport = await backend.transport()
    timeline = Timeline()
    w = worker(transport, timeline.executor(slow=set()), session_policy=SessionPolicy.MERGE)
    gate = asyncio.Event()

    async def slow_first(target: Target, request: AgentRequestEvent) -> str:
        timeline.events.append(("start", request.content, time.monotonic()))
        if request.content == "first":
            timeline.first_started.set()
            await gate.wait()
        return f"answer to {request.content!r}"

    w.executor = FunctionExecutor(slow_first)
    async with w:
        await transport.publish(backend.names.requests, request_event(backend.names, "first"))
        await asyncio.wait_for(timeline.first_started.wait(), 5)
        for text in ("a", "b", "c"):  # three quick messages while the first runs
            await transport.publish(backend.names.requests, request_event(backend.names, text))
        await wait_for(lambda: _async(w.stats.received == 4))
        gate.set()
        await wait_for(lambda: _has_replies(transport, backend, 4))
    assert timeline.runs() == ["first", "a\n\nb\n\nc"]  # one run for the three
    first, merged_a, merged_b, last = await replies(transport, backend.names)
    assert first.content == "answer to 'first'"
    assert last.content == "answer to 'a\\n\\nb\\n\\nc'"
    assert merged_a.metadata["merged_into"] == merged_b.metadata["merged_into"] == last.request_id
    assert merged_a.content == merged_b.content == ""


async def test_a_queued_request_lost_from_the_stream_keeps_its_place_in_the_session_queue(
    backend: Backend,
) -> None:
    """A queued request whose entry was lost (taken over, deleted) ended its handler before its
    turn came and let the requests behind it go at once: the next one took its turn while the
    session still ran here and merged a request queued ahead of it, which, its own turn come,
    found itself merged into a turn not yet answered and was handed back to the group while that
    turn went on to answer it (found by a soak under faults, as a dead letter and an answer)."""
    transport = await backend.transport()
    gate, started = asyncio.Event(), asyncio.Event()
    runs: list[str] = []
    routed: list[str] = []

    async def slow_first(target: Target, request: AgentRequestEvent) -> str:
        runs.append(request.content)
        if request.content == "first":
            started.set()
            await gate.wait()
        return f"answer to {request.content!r}"

    class Routed(BaseHooks):
        async def on_routed(self, delivery: Any, target: Any) -> None:
            routed.append(delivery.event.content)

    w = worker(transport, FunctionExecutor(slow_first), session_policy=SessionPolicy.MERGE)
    w.hooks.append(Routed())
    handled = Handled()
    w.hooks.append(handled)
    requests = backend.names.requests
    async with w:
        await transport.publish(requests, request_event(backend.names, "first"))
        await asyncio.wait_for(started.wait(), 5)
        await transport.publish(requests, request_event(backend.names, "queued"))
        lost_entry = await transport.publish(requests, request_event(backend.names, "lost"))
        await wait_for(lambda: _async(w.stats.received == 3))
        await transport.delete(requests, lost_entry)  # its keep-fresh finds it gone: cancelled
        await wait_for(lambda: _async(len(handled.errors) == 1))
        await transport.publish(requests, request_event(backend.names, "last"))
        await wait_for(lambda: _async("last" in routed))
        gate.set()
        await wait_for(lambda: _has_replies(transport, backend, 3))
    assert runs == ["first", "queued\n\nlast"]  # in arrival order: "queued" went before "last"
    assert [r.content for r in await replies(transport, backend.names)] == [
        "answer to 'first'",
        "",
        "answer to 'queued\\n\\nlast'",
    ]
    assert (w.stats.lost, w.stats.handed_back, w.stats.duplicates) == (1, 0, 0)
    assert await transport.pending(requests, "dynamic-agents") == []


async def test_a_merged_turn_publishes_lifecycle_events_under_its_last_request_only(
    backend: Backend,
) -> None:
    """Lifecycle events describe runs (docs/worker.md, ``events``): a merged turn is one run, its
    events carry the last request's id; the requests merged into it have none of their own, their
    reply (``metadata.merged_into``) is their only record."""
    transport = await backend.transport()
    w = worker(transport, session_policy=SessionPolicy.MERGE, events=True)
    gate, first_started = asyncio.Event(), asyncio.Event()

    async def slow_first(target: Target, request: AgentRequestEvent) -> str:
        if request.content == "first":
            first_started.set()
            await gate.wait()
        return f"answer to {request.content!r}"

    w.executor = FunctionExecutor(slow_first)
    async with w:
        await transport.publish(backend.names.requests, request_event(backend.names, "first"))
        await asyncio.wait_for(first_started.wait(), 5)
        for text in ("a", "b"):
            await transport.publish(backend.names.requests, request_event(backend.names, text))
        await wait_for(lambda: _async(w.stats.received == 3))
        gate.set()
        await wait_for(lambda: _has_replies(transport, backend, 3))
    await w.events.flush()
    first, merged, last = await replies(transport, backend.names)
    assert merged.metadata["merged_into"] == last.request_id
    events = [e.event for e in await transport.read_stream(backend.names.events, LifecycleEvent)]
    kinds = [(e.request_id, e.type) for e in events if e.type != "run.content_delta"]  # type: ignore[attr-defined]
    assert kinds == [
        (run, kind)
        for run in (first.request_id, last.request_id)
        for kind in ("request.accepted", "run.started", "run.completed")
    ]


async def test_a_failed_merged_turn_fails_every_request_merged_into_it(backend: Backend) -> None:
    transport = await backend.transport()
    gate, first_started = asyncio.Event(), asyncio.Event()

    async def run(target: Target, request: AgentRequestEvent) -> str:
        if request.content == "first":
            first_started.set()
            await gate.wait()
            return "answer to first"
        raise RuntimeError("the model provider is down")

    w = worker(transport, FunctionExecutor(run), session_policy=SessionPolicy.MERGE)
    async with w:
        await transport.publish(backend.names.requests, request_event(backend.names, "first"))
        await asyncio.wait_for(first_started.wait(), 5)
        for text in ("a", "b", "c"):
            await transport.publish(backend.names.requests, request_event(backend.names, text))
        await wait_for(lambda: _async(w.stats.received == 4))
        gate.set()
        await wait_for(lambda: _has_replies(transport, backend, 4))
    first, a, b, c = await replies(transport, backend.names)
    assert first.status == ResponseStatus.COMPLETED
    for reply in (a, b, c):
        assert reply.status == ResponseStatus.ERROR
        assert "the model provider is down" in (reply.error_message or "")
    assert a.metadata["merged_into"] == b.metadata["merged_into"] == c.request_id


async def test_cancelling_a_request_merged_into_a_running_turn_cancels_the_turn(backend: Backend) -> None:
    """'a' and 'b' run as one turn, under 'b''s id: cancelling 'a' reaches it."""
    transport = await backend.transport()
    gate, first_started, merged_started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    cancelled: list[str] = []

    async def run(target: Target, request: AgentRequestEvent) -> str:
        if request.content == "first":
            first_started.set()
            await gate.wait()
            return "answer to first"
        merged_started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            cancelled.append(request.content)
            raise
        return "never"

    w = worker(transport, FunctionExecutor(run), session_policy=SessionPolicy.MERGE)
    a = request_event(backend.names, "a")
    async with w:
        await transport.publish(backend.names.requests, request_event(backend.names, "first"))
        await asyncio.wait_for(first_started.wait(), 5)
        await transport.publish(backend.names.requests, a)
        await transport.publish(backend.names.requests, request_event(backend.names, "b"))
        await wait_for(lambda: _async(w.stats.received == 3))
        gate.set()
        await asyncio.wait_for(merged_started.wait(), 5)
        await AgentClient(transport).cancel(a.id)
        await wait_for(lambda: _has_replies(transport, backend, 3))
    _, answer_a, answer_b = await replies(transport, backend.names)
    assert cancelled == ["a\n\nb"]
    assert answer_a.request_id == a.id
    assert (answer_a.status, answer_b.status) == (ResponseStatus.CANCELLED, ResponseStatus.CANCELLED)


class HeldFirst:
    """An executor that records what it runs and holds "first" until ``gate`` is set."""

    def __init__(self) -> None:
        self.gate, self.first_started = asyncio.Event(), asyncio.Event()
        self.ran: list[str] = []

    async def run(self, target: Target, request: AgentRequestEvent) -> str:
        self.ran.append(request.content)
        if request.content == "first":
            self.first_started.set()
            await self.gate.wait()
        return f"answer to {request.content}"

    async def queue_behind_first(
        self, transport: Transport, w: AgentWorker, *queued: AgentRequestEvent
    ) -> None:
        """Publish "first" (of ``queued``'s session), then ``queued`` while it runs, all received."""
        names = w.transport.names
        await transport.publish(names.requests, request_event(names, "first"))
        await asyncio.wait_for(self.first_started.wait(), 5)
        for request in queued:
            await transport.publish(names.requests, request)
        await wait_for(lambda: _async(w.stats.received == 1 + len(queued)))


@pytest.mark.parametrize("policy", [SessionPolicy.ENQUEUE, SessionPolicy.MERGE])
async def test_a_request_cancelled_while_queued_is_answered_at_once(
    backend: Backend, policy: SessionPolicy
) -> None:
    """'second' waits behind a long run of its session: cancelling it answers ``cancelled`` within
    a poll or two, not once the run ahead of it ends; 'third', behind it, still waits its turn."""
    transport = await backend.transport()
    held = HeldFirst()
    w = worker(transport, FunctionExecutor(held.run), session_policy=policy)
    second, third = request_event(backend.names, "second"), request_event(backend.names, "third")
    async with w:
        await held.queue_behind_first(transport, w, second, third)
        await AgentClient(transport).cancel(second.id)
        await wait_for(lambda: _has_replies(transport, backend, 1))  # while 'first' still runs
        (cancelled,) = await replies(transport, backend.names)
        assert (cancelled.request_id, cancelled.status) == (second.id, ResponseStatus.CANCELLED)
        assert held.ran == ["first"]
        held.gate.set()
        await wait_for(lambda: _has_replies(transport, backend, 3))
    assert [r.content for r in await replies(transport, backend.names)][1:] == [
        "answer to first",
        "answer to third",
    ]
    assert held.ran == ["first", "third"]


async def test_cancelling_a_queued_request_does_not_cancel_the_ones_merged_with_it(backend: Backend) -> None:
    """'a' is cancelled while it waits behind 'first'; 'b', queued with it, was not: when their
    turn comes 'a' answers ``cancelled`` and 'b' runs."""
    transport = await backend.transport()
    held = HeldFirst()
    w = worker(transport, FunctionExecutor(held.run), session_policy=SessionPolicy.MERGE)
    a, b = request_event(backend.names, "a"), request_event(backend.names, "b")
    async with w:
        await held.queue_behind_first(transport, w, a, b)
        await AgentClient(transport).cancel(a.id)
        held.gate.set()
        await wait_for(lambda: _has_replies(transport, backend, 3))
    answers = {reply.request_id: reply for reply in await replies(transport, backend.names)}
    assert answers[a.id].status == ResponseStatus.CANCELLED
    assert (answers[b.id].status, answers[b.id].content) == (ResponseStatus.COMPLETED, "answer to b")
    assert held.ran == ["first", "b"]


class LeaseThief:
    """Runs "first" until the three requests queued behind it arrive, then their merged turn,
    during which another consumer (``other``) takes the session's lease, as if it had expired."""

    def __init__(self, backend: Backend, other: Transport) -> None:
        self.backend, self.other = backend, other
        self.gate, self.first_started = asyncio.Event(), asyncio.Event()
        self.rivals: list[Lease] = []

    async def run(self, target: Target, request: AgentRequestEvent) -> str:
        if request.content == "first":
            self.first_started.set()
            await self.gate.wait()
            return "answer to first"
        await self.backend.delete_key(self.backend.names.session_lease("s1"))  # as if it had expired
        rival = await self.other.coordinator().acquire("s1", ttl=30)
        assert rival is not None
        self.rivals.append(rival)
        return "from the worker that lost its lease"  # before a renewal could notice

    async def merge_three_behind_first(self, transport: Transport, w: AgentWorker) -> list[AgentRequestEvent]:
        """Publish "first", then "a", "b", "c" while it runs, and let it end: the three merge."""
        names = self.backend.names
        merged = [request_event(names, text) for text in ("a", "b", "c")]
        await transport.publish(names.requests, request_event(names, "first"))
        await asyncio.wait_for(self.first_started.wait(), 5)
        for request in merged:
            await transport.publish(names.requests, request)
        await wait_for(lambda: _async(w.stats.received == 4))
        self.gate.set()
        return merged


async def test_a_merged_turn_that_loses_its_lease_answers_none_of_its_requests(backend: Backend) -> None:
    """The merged requests are answered only while the turn's lease is held: one lost during the
    run publishes nothing for any of them (another worker answers them all), and the handling ends
    with a ``RunLostError`` naming the turn."""
    transport, other = await backend.transport(), await backend.transport()
    thief = LeaseThief(backend, other)
    handled = Handled()
    w = worker(transport, FunctionExecutor(thief.run), session_policy=SessionPolicy.MERGE, lease_ttl=30)
    w.hooks.append(handled)
    async with w:
        merged = await thief.merge_three_behind_first(transport, w)
        await wait_for(lambda: _async(w.stats.lost >= 1))
        await w.stop(grace=0)
    (first,) = await replies(transport, backend.names)
    assert first.content == "answer to first"  # and nothing for a, b or c
    lost = [error for error in handled.errors if isinstance(error, RunLostError)]
    assert [(error.request_id, error.session_id) for error in lost] == [(merged[-1].id, "s1")]
    await other.coordinator().release(thief.rivals[0])
    await worker(other, consumer="winner").run_until_idle()
    answered = await replies(transport, backend.names)
    assert {reply.request_id for reply in answered[1:]} == {request.id for request in merged}
    assert all(reply.status == ResponseStatus.COMPLETED for reply in answered)


async def test_a_merged_turn_that_loses_its_lease_hands_every_request_back_at_once(backend: Backend) -> None:
    """Not only the request whose handler ran the turn: the ones merged into it go back to the
    group at once too, for another worker, instead of waiting ``claim_min_idle`` (a minute here)."""
    transport, other = await backend.transport(), await backend.transport()
    thief = LeaseThief(backend, other)
    slow_reclaim = {"claim_min_idle": 60, "keep_fresh_every": 20, "lease_ttl": 30}
    w = worker(transport, FunctionExecutor(thief.run), session_policy=SessionPolicy.MERGE, **slow_reclaim)
    async with w:
        merged = await thief.merge_three_behind_first(transport, w)
        await wait_for(lambda: _async(w.stats.lost >= 1 and w.in_flight == 0))
    await other.coordinator().release(thief.rivals[0])
    await worker(other, consumer="winner", **slow_reclaim).run_until_idle(timeout=10)
    answered = await replies(transport, backend.names)
    assert {reply.request_id for reply in answered[1:]} == {request.id for request in merged}


async def test_stopping_hands_a_merged_turn_back_once_per_entry(backend: Backend) -> None:
    """A merged turn waits for its session's lease (another worker holds it) when the worker
    stops: each of its entries goes back to the group once — one ``release`` each, not a second
    by the merged request's own handler — and another worker answers them all."""
    transport, other = await backend.transport(), await backend.transport()
    released: list[str] = []
    release = transport.release

    async def counting_release(delivery: Any, *, delay: float = 0.0) -> bool:
        released.append(delivery.event.content)
        return await release(delivery, delay=delay)

    transport.release = counting_release  # type: ignore[method-assign]
    rival = await other.coordinator().acquire("s1", ttl=30)
    assert rival is not None
    for text in ("a", "b", "c"):  # read together: one turn of the three
        await transport.publish(backend.names.requests, request_event(backend.names, text))
    w = worker(transport, session_policy=SessionPolicy.MERGE, claim_min_idle=60, keep_fresh_every=20)
    async with w:
        await wait_for(lambda: _async(w.stats.lease_waits == 1))
        await w.stop(grace=30)
    assert sorted(released) == ["a", "b", "c"]
    await other.coordinator().release(rival)
    await worker(other, consumer="rescuer", claim_min_idle=60, keep_fresh_every=20).run_until_idle()
    answered = [r.content for r in await replies(transport, backend.names)]
    assert answered == ["echo: a", "echo: b", "echo: c"]  # handed back, none lost


@pytest.mark.parametrize("claim_on_read", [True, False])
async def test_a_request_cancelled_before_it_is_read_never_runs(
    backend: Backend, claim_on_read: bool
) -> None:
    transport = await backend.transport()
    ran: list[str] = []

    async def run(target: Target, request: AgentRequestEvent) -> str:
        ran.append(request.content)
        return "ran"

    request = request_event(backend.names, "too late")
    await AgentClient(transport).cancel(request.id)
    await transport.publish(backend.names.requests, request)
    await worker(transport, FunctionExecutor(run), claim_on_read=claim_on_read).run_until_idle()
    (reply,) = await replies(transport, backend.names)
    assert (reply.request_id, reply.status) == (request.id, ResponseStatus.CANCELLED)
    assert ran == []


async def test_cancel_from_another_process(backend: Backend) -> None:
    transport, elsewhere = await backend.transport(), await backend.transport()
    timeline = Timeline()
    request = request_event(backend.names, "long job")
    async with worker(transport, timeline.executor(slow={"long job"})):
        await transport.publish(backend.names.requests, request)
        await asyncio.wait_for(timeline.first_started.wait(), 5)
        await AgentClient(elsewhere).cancel(request.id)  # another transport, as another process has
        await wait_for(lambda: _has_replies(transport, backend, 1))
        await asyncio.sleep(0.3)  # anything else it might (wrongly) publish would land by now
    (reply,) = await replies(transport, backend.names)
    assert (reply.request_id, reply.status) == (request.id, ResponseStatus.CANCELLED)
    assert [kind for kind, _, _ in timeline.events] == ["start", "cancelled"]


async def _has_replies(transport: object, backend: Backend, count: int) -> bool:
    from dynamic_agents.transports import Transport

    assert isinstance(transport, Transport)
    return len(await replies(transport, backend.names)) >= count


@pytest.mark.redis
async def test_cancel_from_another_os_process(redis_url: str, redis_prefix: str) -> None:
    import sys

    from dynamic_agents.events import StreamNames
    from dynamic_agents.transports import RedisStreamsTransport
    from tests.worker.conftest import replies as read_replies

    names = StreamNames(redis_prefix)
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    timeline = Timeline()
    request = request_event(names, "long job")
    try:
        async with worker(transport, timeline.executor(slow={"long job"})):
            await transport.publish(names.requests, request)
            await asyncio.wait_for(timeline.first_started.wait(), 5)
            code = (
                "import asyncio, sys\n"
                "from dynamic_agents.client import AgentClient\n"
                "from dynamic_agents.events import StreamNames\n"
                "from dynamic_agents.transports import RedisStreamsTransport\n"
                "async def main():\n"
                "    names = StreamNames(sys.argv[2])\n"
                "    transport = RedisStreamsTransport.from_url(sys.argv[1], names=names)\n"
                "    await AgentClient(transport).cancel(sys.argv[3])\n"
                "    await transport.aclose()\n"
                "asyncio.run(main())\n"
            )
            canceller = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, redis_url, redis_prefix, request.id
            )
            assert await asyncio.wait_for(canceller.wait(), 60) == 0
            await wait_for(lambda: _has_any(read_replies(transport, names)))
            await asyncio.sleep(0.3)  # anything else it might (wrongly) publish would land by now
        (reply,) = await read_replies(transport, names)
        assert (reply.request_id, reply.status) == (request.id, ResponseStatus.CANCELLED)
    finally:
        await transport.aclose()


async def _has_any(pending: object) -> bool:
    import inspect

    assert inspect.isawaitable(pending)
    return bool(await pending)


async def test_an_interrupted_agno_run_is_seen_by_the_next_one() -> None:
    from agno.db.in_memory import InMemoryDb

    from dynamic_agents.agents import AgentRuntime, AgentSpec, AgnoExecutor, InMemorySpecStore, ToolRegistry
    from dynamic_agents.events import StreamNames
    from dynamic_agents.testing import ScriptedModels, ToolCall
    from dynamic_agents.transports import InMemoryTransport
    from tests.worker.conftest import replies as read_replies

    started = asyncio.Event()

    async def research(topic: str) -> str:
        """Slow research."""
        started.set()
        await asyncio.sleep(0.5)
        return f"notes on {topic}"

    tools = ToolRegistry()
    tools.add_tool(research)
    models = ScriptedModels(
        {"gpt": [ToolCall("research", {"topic": "tides"}), "Tides are caused by", "Short answer."]}
    )
    runtime = AgentRuntime(InMemorySpecStore(), tools, models, db=InMemoryDb())
    await runtime.agents.create(
        AgentSpec.from_dict(
            {"id": "echo", "model": "gpt", "tools": ["research"], "add_history_to_context": True}
        )
    )
    transport = InMemoryTransport(names=StreamNames("test"))
    names = transport.names
    w = worker(transport, AgnoExecutor(runtime), session_policy=SessionPolicy.INTERRUPT)
    async with w:
        await transport.publish(names.requests, request_event(names, "explain tides in depth"))
        await asyncio.wait_for(started.wait(), 5)
        await transport.publish(names.requests, request_event(names, "actually, keep it short"))
        await wait_for(lambda: _has_any(read_replies(transport, names)), within=10)
        await wait_for(lambda: _async(w.stats.completed == 1), within=10)
    interrupted, answered = await read_replies(transport, names)
    assert interrupted.status == ResponseStatus.CANCELLED
    assert answered.content == "Short answer."
    context = " ".join(
        str(m["content"]) for m in models.models["gpt"].calls[-1].messages if m["role"] == "user"
    )
    assert "explain tides in depth" in context
    assert "Tides are caused by" in context  # the partial reply of the interrupted run


async def test_an_unknown_policy_asked_for_by_a_request_is_logged_once_and_the_targets_applies(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """``metadata.session_policy: "REJECT"`` (a typo, another case) was ignored without a word."""
    transport = await backend.transport()
    for content in ("one", "two"):
        metadata = {"session_policy": "REJECT"}
        await transport.publish(
            backend.names.requests, request_event(backend.names, content, metadata=metadata)
        )
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.worker"):
        await worker(transport).run_until_idle()
    answered = await replies(transport, backend.names)
    assert sorted(reply.content for reply in answered) == ["echo: one", "echo: two"]  # enqueue, the default
    warnings = [r.getMessage() for r in caplog.records if "session_policy" in r.getMessage()]
    assert warnings == [
        "a request asks for session_policy 'REJECT', which is none of enqueue, reject, interrupt, "
        "merge: the target's policy applies (logged once per value)"
    ]


async def test_the_answers_of_a_merged_turn_are_logged_with_their_own_request_ids(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The merged requests are answered from the turn's task: their records carried the turn's
    request id, so an operator searching the logs for one of them found nothing."""
    transport = await backend.transport()
    held = HeldFirst()
    w = worker(transport, FunctionExecutor(held.run), session_policy=SessionPolicy.MERGE)
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents.worker"):
        async with w:
            await held.queue_behind_first(
                transport, w, request_event(backend.names, "a"), request_event(backend.names, "b")
            )
            held.gate.set()
            await wait_for(lambda: _has_replies(transport, backend, 3))
    answered = [r for r in caplog.records if r.getMessage().startswith("answered ")]
    assert len(answered) == 3
    for record in answered:
        assert record.getMessage().split()[1].rstrip(":") == record.request_id  # type: ignore[attr-defined]


class RoutedThen(BaseHooks):
    """Calls ``then`` once a request with ``content`` has been routed (its policy comes next)."""

    def __init__(self, content: str, then: asyncio.Event) -> None:
        self.content, self.then, self.seen = content, then, 0

    async def on_routed(self, delivery: Any, target: Any) -> None:
        if delivery.event.content == self.content:
            self.seen += 1
            if self.seen == 2:  # the copy: the original was routed first
                self.then.set()


@pytest.mark.parametrize("policy", [SessionPolicy.REJECT, SessionPolicy.INTERRUPT])
async def test_a_platform_retry_of_a_request_running_here_is_acked_once_it_is_answered(
    backend: Backend, policy: SessionPolicy
) -> None:
    """A webhook retried while its request runs (the same id, as ``build_request`` makes it): the
    copy was rejected (its busy reply and record taking the place of the answer) or interrupted
    its own original (both answered ``cancelled``). It waits instead, and is acked as answered."""
    transport = await backend.transport()
    held = HeldFirst()
    w = worker(transport, FunctionExecutor(held.run), session_policy=policy)
    w.hooks.append(RoutedThen("first", held.gate))  # the original may end once its copy is routed
    first = request_event(backend.names, "first")
    async with w:
        await transport.publish(backend.names.requests, first)
        await asyncio.wait_for(held.first_started.wait(), 5)
        await transport.publish(backend.names.requests, first)  # the platform's retry
        await wait_for(lambda: _async(w.stats.received == 2 and w.in_flight == 0))
    await answered_once(transport, backend, first, held)
    assert w.stats.duplicates == 1


async def answered_once(
    transport: Transport, backend: Backend, first: AgentRequestEvent, held: HeldFirst
) -> None:
    """``first`` ran once and has one reply, its answer (its platform's retry none of its own)."""
    (answer,) = await replies(transport, backend.names)
    assert (answer.request_id, answer.status, answer.content) == (
        first.id,
        ResponseStatus.COMPLETED,
        "answer to first",
    )
    assert held.ran == ["first"]


@pytest.mark.parametrize("policy", [SessionPolicy.REJECT, SessionPolicy.INTERRUPT])
async def test_a_platform_retry_of_a_request_running_on_another_worker_is_acked_once_it_is_answered(
    backend: Backend, policy: SessionPolicy
) -> None:
    """As above, the copy read by a second worker while the first runs the request under the
    session's lease: it waits for the lease (not rejected, no cancellation requested), then finds
    the request answered."""
    transport, other = await backend.transport(), await backend.transport()
    held = HeldFirst()
    first = request_event(backend.names, "first")
    running = worker(
        transport, FunctionExecutor(held.run), consumer="running", concurrency=1, session_policy=policy
    )
    async with running:  # busy with 'first', it reads nothing more
        await transport.publish(backend.names.requests, first)
        await asyncio.wait_for(held.first_started.wait(), 5)
        await transport.publish(backend.names.requests, first)  # the platform's retry
        async with worker(other, FunctionExecutor(held.run), consumer="copy", session_policy=policy) as copy:
            await wait_for(
                lambda: _async(
                    copy.stats.lease_waits == 1 or copy.stats.failed == 1 or running.stats.failed == 1
                )
            )
            held.gate.set()
            await wait_for(lambda: _async(copy.stats.received == 1 and copy.in_flight == 0))
            await wait_for(lambda: _async(running.in_flight == 0))
    await answered_once(transport, backend, first, held)
    assert copy.stats.duplicates == 1


async def test_a_merged_turn_takes_a_platform_retry_of_one_of_its_requests_once(backend: Backend) -> None:
    """'a', 'b' and a copy of 'a' (the platform's retry, the same id) queue behind 'first'. The
    copy was merged too: the turn ran 'a' twice, and the copy, last, had its reply (the turn's
    answer) refused as a second answer to 'a' — the content answered nobody. It is left out of the
    turn, and acked as answered."""
    transport = await backend.transport()
    held = HeldFirst()
    w = worker(transport, FunctionExecutor(held.run), session_policy=SessionPolicy.MERGE)
    a, b = request_event(backend.names, "a"), request_event(backend.names, "b")
    async with w:
        await held.queue_behind_first(transport, w, a, b, a)
        held.gate.set()
        await wait_for(lambda: _async(w.in_flight == 0))
    assert held.ran == ["first", "a\n\nb"]
    _, answer_a, answer_b = await replies(transport, backend.names)
    assert (answer_a.request_id, answer_a.content, answer_a.metadata["merged_into"]) == (a.id, "", b.id)
    assert (answer_b.request_id, answer_b.content) == (b.id, "answer to a\n\nb")
    assert w.stats.duplicates == 1


async def test_redelivered_requests_merged_into_a_turn_are_not_counted_duplicates(backend: Backend) -> None:
    """A worker stopped without grace hands back a run and the two requests queued behind it;
    another worker reads all three again and merges them into one turn. The merged requests'
    handlers, checking for an earlier answer (a redelivery's first step), found the turn's and
    acked them as duplicates: counted in ``duplicates`` (and ``on_duplicate`` called) beside
    ``completed``, though each was answered once, by that turn."""
    transport, other = await backend.transport(), await backend.transport()
    held = HeldFirst()
    stopped = worker(
        transport, FunctionExecutor(held.run), consumer="stopped", session_policy=SessionPolicy.MERGE
    )
    runner = asyncio.create_task(stopped.run())
    await held.queue_behind_first(
        transport, stopped, request_event(backend.names, "a"), request_event(backend.names, "b")
    )
    runner.cancel()  # a stop without grace: all three handed back
    with pytest.raises(asyncio.CancelledError):
        await runner
    held.gate.set()
    duplicates = Duplicates()
    taker = worker(other, FunctionExecutor(held.run), consumer="taker", session_policy=SessionPolicy.MERGE)
    taker.hooks.append(duplicates)
    await taker.run_until_idle()
    assert [r.content for r in await replies(transport, backend.names)] == [
        "",
        "",
        "answer to first\n\na\n\nb",
    ]
    assert (taker.stats.completed, taker.stats.duplicates, duplicates.seen) == (3, 0, [])


class Duplicates(BaseHooks):
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def on_duplicate(self, delivery: Any) -> None:
        self.seen.append(delivery.event.content)


@pytest.mark.parametrize("where", ["here", "on another worker"])
async def test_a_platform_retry_of_an_answered_request_interrupts_nothing(
    backend: Backend, where: str
) -> None:
    """A webhook retried after its request was answered (the same id), while the session's next
    request runs: with ``interrupt`` the copy cancelled that run (answered ``cancelled``, its work
    lost) though it ran nothing itself, only to be acked as answered. It interrupts nothing."""
    transport = await backend.transport()
    second_started, let_second_end, second_cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def run(target: Target, request: AgentRequestEvent) -> str:
        if request.content == "second":
            second_started.set()
            try:
                await let_second_end.wait()
            except asyncio.CancelledError:
                second_cancelled.set()
                raise
        return f"answer to {request.content}"

    first, second = request_event(backend.names, "first"), request_event(backend.names, "second")
    policy = {"session_policy": SessionPolicy.INTERRUPT}
    concurrency = 2 if where == "here" else 1  # on another worker: the first reads no more
    running = worker(transport, FunctionExecutor(run), consumer="running", concurrency=concurrency, **policy)
    reader = running
    if where == "on another worker":
        other = await backend.transport()
        reader = worker(other, FunctionExecutor(run), consumer="copy", cancel_poll=0.01, **policy)
    async with running:
        await transport.publish(backend.names.requests, first)
        await wait_for(lambda: _async(running.stats.completed == 1))
        await transport.publish(backend.names.requests, second)
        await asyncio.wait_for(second_started.wait(), 5)
        await transport.publish(backend.names.requests, first)  # the platform's retry, answered
        if reader is running:  # the copy waits its turn behind 'second' (or interrupted it)
            await wait_for(lambda: _async(first.id in running._awaiting_turn or second_cancelled.is_set()))
            let_second_end.set()
            await wait_for(lambda: _async(running.stats.duplicates == 1))
        else:
            async with reader:  # answered already: acked at once, or once the lease is free
                await wait_for(lambda: _async(reader.stats.duplicates + reader.stats.lease_waits > 0))
                assert not await transport.coordinator().cancelled([second.id])  # no cancellation asked
                let_second_end.set()
                await wait_for(lambda: _async(reader.stats.duplicates == 1))
        await wait_for(
            lambda: _async(running.in_flight == 0 and running.stats.completed + running.stats.failed == 2)
        )
    answers = {reply.request_id: reply for reply in await replies(transport, backend.names)}
    assert len(await replies(transport, backend.names)) == 2
    assert (answers[second.id].status, answers[second.id].content) == (
        ResponseStatus.COMPLETED,
        "answer to second",
    )
    assert answers[first.id].content == "answer to first"


@pytest.mark.parametrize("where", ["here", "elsewhere"])
async def test_reject_answers_a_request_cancelled_before_it_ran_as_cancelled(
    backend: Backend, where: str
) -> None:
    """``AgentClient.cancel`` says the request is answered ``cancelled``; with ``reject`` and its
    session busy (a run here, or a lease held elsewhere) it was answered ``rejected`` instead, its
    record saying so."""
    transport = await backend.transport()
    coordinator = transport.coordinator()
    timeline = Timeline()
    w = worker(transport, timeline.executor(slow={"first"}), session_policy=SessionPolicy.REJECT)
    second = request_event(backend.names, "second")
    await coordinator.request_cancel(second.id)
    async with w:
        if where == "here":
            await transport.publish(backend.names.requests, request_event(backend.names, "first"))
            await asyncio.wait_for(timeline.first_started.wait(), 5)
        else:
            assert await coordinator.acquire("s1", 3600, holder="elsewhere") is not None
        await transport.publish(backend.names.requests, second)
        await wait_for(lambda: _has_replies(transport, backend, 1))
        (answer,) = await replies(transport, backend.names)
        assert (answer.request_id, answer.status) == (second.id, ResponseStatus.CANCELLED)
        record = await coordinator.get_record(second.id)
        assert record is not None
        assert record.status == ResponseStatus.CANCELLED
        await w.stop(grace=0)
    assert "second" not in timeline.runs()
