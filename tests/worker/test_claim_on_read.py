"""The worker with session claims made in the read's round trip (Redis, ``claim_on_read``): used
when they stand, given back when they do not, never holding a session against the worker itself."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from dynamic_agents.events import AgentRequestEvent, ResponseStatus, StreamNames, Target
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import Claim, Delivery, RedisStreamsTransport, Subscription
from dynamic_agents.worker import AgentWorker, BaseHooks, SessionPolicy
from tests.worker.conftest import replies, request_event, wait_for, worker

pytestmark = pytest.mark.redis

LONG_LEASE: dict[str, Any] = {"lease_ttl": 60.0, "claim_min_idle": 60.0, "keep_fresh_every": 1.0}
"""A lease that outlives the test: a lease held by mistake shows as a timeout, not as a delay."""


def count_claims(w: AgentWorker) -> list[Sequence[str]]:
    """The request ids of every ``Coordinator.claim`` the worker makes from now on."""
    calls: list[Sequence[str]] = []
    claim = w.coordinator.claim

    async def counting(session_id: str, request_ids: Sequence[str], ttl: float) -> Claim:
        calls.append(list(request_ids))
        return await claim(session_id, request_ids, ttl)

    w.coordinator.claim = counting  # type: ignore[method-assign]
    return calls


async def warm_up(w: AgentWorker, redis_transport: RedisStreamsTransport) -> None:
    """One request through the running worker: its first read marks where new entries start."""
    names = redis_transport.names
    await redis_transport.publish(names.requests, request_event(names, "warm-up", session="warm-up"))
    await wait_for(lambda: _answered(redis_transport, 1))


async def _async(value: bool) -> bool:
    return value


async def _answered(redis_transport: RedisStreamsTransport, n: int) -> bool:
    return len(await replies(redis_transport, redis_transport.names)) >= n


async def leases(redis_client: Redis, names: StreamNames) -> list[bytes]:
    return [key async for key in redis_client.scan_iter(match=names.session_lease("*"))]


async def test_requests_claimed_on_read_run_without_a_claim_of_their_own(
    redis_transport: RedisStreamsTransport, redis_client: Redis
) -> None:
    names = redis_transport.names
    w = worker(redis_transport, **LONG_LEASE)
    async with w:
        await warm_up(w, redis_transport)
        claims = count_claims(w)
        sent = [request_event(names, f"m{n}", session=f"s{n}") for n in range(5)]
        for request in sent:
            await redis_transport.publish(names.requests, request)
        await wait_for(lambda: _answered(redis_transport, 6))
    answers = (await replies(redis_transport, names))[1:]
    assert sorted(a.request_id for a in answers) == sorted(r.id for r in sent)
    assert {a.status for a in answers} == {ResponseStatus.COMPLETED}
    assert claims == []
    assert redis_transport.stats.claimed_on_read == 5
    assert await leases(redis_client, names) == []  # each released with its reply


async def test_turned_off_the_worker_claims_each_request_itself(
    redis_transport: RedisStreamsTransport,
) -> None:
    names = redis_transport.names
    w = worker(redis_transport, claim_on_read=False, **LONG_LEASE)
    async with w:
        await warm_up(w, redis_transport)
        claims = count_claims(w)
        request = request_event(names, "m")
        await redis_transport.publish(names.requests, request)
        await wait_for(lambda: _answered(redis_transport, 2))
    assert claims == [[request.id]]
    assert redis_transport.stats.claimed_on_read == 0


async def test_a_request_with_no_route_gives_its_lease_back(
    redis_transport: RedisStreamsTransport, redis_client: Redis
) -> None:
    names = redis_transport.names
    w = worker(redis_transport, router=EventRouter(), **LONG_LEASE)
    async with w:
        await warm_up(w, redis_transport)
        await redis_transport.publish(names.requests, request_event(names, "m"))
        await wait_for(lambda: _answered(redis_transport, 2))
        await wait_for(lambda: _no_leases(redis_client, names))  # given back, not left to its 60 s ttl
    answer = (await replies(redis_transport, names))[1]
    assert answer.status is ResponseStatus.ERROR
    assert "no route" in (answer.error_message or "").lower()


async def _no_leases(redis_client: Redis, names: StreamNames) -> bool:
    return await leases(redis_client, names) == []


@pytest.mark.parametrize("policy", [SessionPolicy.REJECT, SessionPolicy.INTERRUPT])
async def test_the_lease_claimed_on_read_is_not_someone_elses_run(
    redis_transport: RedisStreamsTransport, redis_client: Redis, policy: SessionPolicy
) -> None:
    """Reject would find the session held, interrupt would cancel the request itself: the lease
    the read took is the request's own."""
    names = redis_transport.names
    w = worker(redis_transport, session_policy=policy, **LONG_LEASE)
    async with w:
        await warm_up(w, redis_transport)
        request = request_event(names, "m")
        await redis_transport.publish(names.requests, request)
        await wait_for(lambda: _answered(redis_transport, 2))
    answer = (await replies(redis_transport, names))[1]
    assert (answer.request_id, answer.status, answer.content) == (
        request.id,
        ResponseStatus.COMPLETED,
        "echo: m",
    )
    assert await redis_client.exists(names.cancel_flag(request.id)) == 0
    assert redis_transport.stats.claimed_on_read == 1


async def test_a_merged_turn_gives_the_read_lease_back_and_claims_for_all(
    redis_transport: RedisStreamsTransport, redis_client: Redis
) -> None:
    names = redis_transport.names
    w = worker(redis_transport, session_policy=SessionPolicy.MERGE, **LONG_LEASE)
    claims = count_claims(w)
    await redis_transport.ensure_group(names.requests, w.settings.group)
    async with w:
        await warm_up(w, redis_transport)
        first, second = request_event(names, "a"), request_event(names, "b")
        await redis_transport.publish_many(names.requests, [first, second])  # one read: a leased, b busy
        await wait_for(lambda: _answered(redis_transport, 3))
    merged, last = (await replies(redis_transport, names))[1:]
    assert (merged.request_id, merged.metadata["merged_into"]) == (first.id, second.id)
    assert (last.request_id, last.content) == (second.id, "echo: a\n\nb")
    assert claims[-1] == [first.id, second.id]
    assert await leases(redis_client, names) == []


async def test_a_request_behind_another_of_its_session_gives_the_read_lease_to_it(
    redis_transport: RedisStreamsTransport, redis_client: Redis
) -> None:
    """First waits for the session (held elsewhere); it comes free just before second is read,
    whose read takes it (a redis_transport that ignores ``skip_sessions``). Second must not keep it
    while it waits for first: neither would run until the lease expired."""
    names = redis_transport.names
    read = redis_transport.read

    async def read_ignoring_skips(
        sub: Subscription[AgentRequestEvent], count: int, *, skip_sessions: Collection[str] = ()
    ) -> list[Delivery[AgentRequestEvent]]:
        return await read(sub, count)

    redis_transport.read = read_ignoring_skips  # type: ignore[method-assign,assignment]
    w = worker(redis_transport, lease_poll=0.05, **LONG_LEASE)
    second_read = asyncio.Event()
    claim = w.coordinator.claim
    first, second = request_event(names, "first"), request_event(names, "second")

    async def first_polls_after_second_is_read(
        session_id: str, request_ids: Sequence[str], ttl: float
    ) -> Claim:
        if request_ids == [first.id] and w.stats.lease_waits:
            await second_read.wait()
        return await claim(session_id, request_ids, ttl)

    seen: list[Claim | None] = []

    class Seen(BaseHooks):
        async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
            if delivery.event.id == second.id:
                seen.append(delivery.claim)
                second_read.set()

    w.coordinator.claim = first_polls_after_second_is_read  # type: ignore[method-assign]
    w.hooks.append(Seen())
    coordinator = redis_transport.coordinator()
    async with w:
        await warm_up(w, redis_transport)
        elsewhere = await coordinator.acquire("s1", 60, holder="another worker")
        assert elsewhere is not None
        await redis_transport.publish(names.requests, first)
        await wait_for(lambda: _async(w.stats.lease_waits == 1))
        await coordinator.release(elsewhere)
        await redis_transport.publish(names.requests, second)
        await wait_for(lambda: _answered(redis_transport, 3), within=10)
    [second_claim] = seen
    assert second_claim is not None
    assert second_claim.lease is not None  # the case at hand: second's read took the lease
    answers = (await replies(redis_transport, names))[1:]
    assert [a.request_id for a in answers] == [first.id, second.id]  # in arrival order
    assert await leases(redis_client, names) == []


async def test_a_session_with_a_request_in_flight_here_is_not_claimed_on_read(
    redis_transport: RedisStreamsTransport,
) -> None:
    """Its request waits for the one in flight and claims after it: a lease taken on read would
    race that one's own claim on another connection (and, lost, cost it a lease poll)."""
    names = redis_transport.names
    gate, started = asyncio.Event(), asyncio.Event()
    claims: dict[str, Claim | None] = {}

    async def gated(target: Target, request: AgentRequestEvent) -> str:
        if request.content == "first":
            started.set()
            await gate.wait()
        return request.content

    class Seen(BaseHooks):
        async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
            claims[delivery.event.content] = delivery.claim

    w = worker(redis_transport, FunctionExecutor(gated), **LONG_LEASE)
    w.hooks.append(Seen())
    async with w:
        await warm_up(w, redis_transport)
        await redis_transport.publish(names.requests, request_event(names, "first"))
        await asyncio.wait_for(started.wait(), 5)
        await redis_transport.publish(names.requests, request_event(names, "second"))
        await redis_transport.publish(names.requests, request_event(names, "other", session="s2"))
        await wait_for(lambda: _async(len(claims) == 4))
        gate.set()
        await wait_for(lambda: _answered(redis_transport, 4))
    assert claims["second"] is None  # skipped: "first" is in flight here
    assert claims["other"] is not None
    assert [a.content for a in (await replies(redis_transport, names))[1:]] == ["other", "first", "second"]


async def test_a_worker_stopped_before_the_run_gives_the_read_lease_back(
    redis_transport: RedisStreamsTransport, redis_client: Redis
) -> None:
    names = redis_transport.names
    routed = asyncio.Event()

    class Stuck(BaseHooks):
        async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
            if delivery.event.content == "stuck":
                routed.set()
                await asyncio.sleep(3600)

    w = worker(redis_transport, **LONG_LEASE)
    w.hooks.append(Stuck())
    async with w:
        await warm_up(w, redis_transport)
        await redis_transport.publish(names.requests, request_event(names, "stuck"))
        await asyncio.wait_for(routed.wait(), 5)
        assert len(await leases(redis_client, names)) == 1
        await w.stop(grace=0)
    assert await leases(redis_client, names) == []
    assert len(await replies(redis_transport, names)) == 1  # nothing answered for it: another worker will


async def test_a_read_lease_gone_stale_before_the_run_is_claimed_again(
    redis_transport: RedisStreamsTransport, redis_client: Redis
) -> None:
    """Routing hooks took longer than a third of the lease's ttl: its renewals start only with the
    run, so the worker claims afresh rather than run on a lease about to expire."""
    names = redis_transport.names

    class Slow(BaseHooks):
        async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
            if delivery.event.content == "slow":
                await asyncio.sleep(0.4)

    w = worker(redis_transport, lease_ttl=0.9)
    w.hooks.append(Slow())
    async with w:
        await warm_up(w, redis_transport)
        claims = count_claims(w)
        request = request_event(names, "slow")
        await redis_transport.publish(names.requests, request)
        await wait_for(lambda: _answered(redis_transport, 2))
    assert claims == [[request.id]]
    assert (await replies(redis_transport, names))[1].status is ResponseStatus.COMPLETED
    assert await leases(redis_client, names) == []


async def test_a_run_on_a_read_lease_outlives_its_ttl(redis_transport: RedisStreamsTransport) -> None:
    """The lease claimed on read is renewed through a run longer than its ttl, like any other."""
    names = redis_transport.names

    async def slow(target: Target, request: AgentRequestEvent) -> str:
        if request.content == "long":
            await asyncio.sleep(1.5)
        return "done"

    w = worker(redis_transport, FunctionExecutor(slow), lease_ttl=0.6)
    async with w:
        await warm_up(w, redis_transport)
        await redis_transport.publish(names.requests, request_event(names, "long"))
        await wait_for(lambda: _answered(redis_transport, 2))
    assert (await replies(redis_transport, names))[1].status is ResponseStatus.COMPLETED
    assert (w.stats.lost, redis_transport.stats.claimed_on_read) == (0, 1)


async def test_two_workers_claiming_on_read_never_run_a_session_twice_at_once(
    redis_transport: RedisStreamsTransport, redis_url: str
) -> None:
    """Requests trickle in (reads of a few, claimed on read) for three sessions, to two workers:
    each session's runs never overlap, and every request is answered once."""
    names = redis_transport.names
    other = RedisStreamsTransport.from_url(redis_url, names=names)
    spans: dict[str, list[tuple[float, float]]] = {}

    async def recording(target: Target, request: AgentRequestEvent) -> str:
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(0.02)
        spans.setdefault(request.session_id, []).append((started, asyncio.get_running_loop().time()))
        return request.content

    sent = [request_event(names, f"m{n}", session=f"s{n % 3}") for n in range(30)]
    first = worker(redis_transport, FunctionExecutor(recording), consumer="a", concurrency=4, **LONG_LEASE)
    second = worker(other, FunctionExecutor(recording), consumer="b", concurrency=4, **LONG_LEASE)
    try:
        async with first, second:
            for request in sent:
                await redis_transport.publish(names.requests, request)
                await asyncio.sleep(0.005)
            await wait_for(lambda: _answered(redis_transport, len(sent)), within=20)
    finally:
        await other.aclose()
    answers = await replies(redis_transport, names)
    assert sorted(a.request_id for a in answers) == sorted(r.id for r in sent)
    for runs in spans.values():
        ordered = sorted(runs)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered))  # no overlap
    assert redis_transport.stats.claimed_on_read > 0
    assert other.stats.claimed_on_read > 0
