"""Claims and completions made together go to Redis as one pipeline, each caller with its own reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames
from dynamic_agents.exceptions import TransportError
from dynamic_agents.transports import (
    Claim,
    ClaimStatus,
    Delivery,
    RedisStreamsTransport,
    Reply,
    Subscription,
)

pytestmark = pytest.mark.redis


class CountingConnection(Connection):
    """Counts socket writes: one per command sent alone, one per pipeline."""

    writes = 0

    async def send_packed_command(self, command: object, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)  # type: ignore[arg-type]


@pytest.fixture
async def transport(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStreamsTransport]:
    pool = ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = Redis(connection_pool=pool)
    yield RedisStreamsTransport(client, names=StreamNames(redis_prefix))
    await client.aclose()
    await pool.aclose()


def request(n: int) -> AgentRequestEvent:
    return AgentRequestEvent(source="discord", source_id=f"c{n}", user_id="u", content=f"message {n}")


async def delivered(transport: RedisStreamsTransport, count: int) -> list[Delivery[AgentRequestEvent]]:
    stream = transport.names.requests
    await transport.ensure_group(stream, "g")
    for n in range(count):
        await transport.publish(stream, request(n))
    return await transport.read(Subscription(stream, "g", "c1", AgentRequestEvent, block=0), count)


async def writes_during(coroutine: Coroutine[Any, Any, None]) -> int:
    before = CountingConnection.writes
    await coroutine
    return CountingConnection.writes - before


async def test_concurrent_claims_and_completions_share_round_trips(transport: RedisStreamsTransport) -> None:
    warm_up, *deliveries = await delivered(transport, 65)
    coordinator = transport.coordinator()
    # One claim and one complete first: the connection exists (its handshake is not counted) and
    # both scripts are loaded.
    claim = await coordinator.claim(warm_up.event.session_id, [warm_up.event.id], ttl=60)
    answer = AgentResponseEvent(request_id=warm_up.event.id)
    await transport.complete(warm_up, Reply(answer, None), record_ttl=60, lease=claim.lease)
    claims = []

    async def claim_all() -> None:
        claims.extend(
            await asyncio.gather(
                *(coordinator.claim(d.event.session_id, [d.event.id], ttl=60) for d in deliveries)
            )
        )

    claim_writes = await writes_during(claim_all())
    assert [c.status for c in claims] == [ClaimStatus.LEASED] * 64
    assert [c.lease.holder for c in claims if c.lease] == [d.event.id for d in deliveries]  # each its own
    reply_stream = transport.names.responses("discord", "all")
    completions = []

    async def complete_all() -> None:
        completions.extend(
            await asyncio.gather(
                *(
                    transport.complete(
                        d,
                        Reply(
                            AgentResponseEvent(request_id=d.event.id, content=d.event.content), reply_stream
                        ),
                        record_ttl=60,
                        lease=c.lease,
                    )
                    for d, c in zip(deliveries, claims, strict=True)
                )
            )
        )

    complete_writes = await writes_during(complete_all())

    assert all(completion.created for completion in completions)
    assert [c.record.request_id for c in completions] == [d.event.id for d in deliveries]
    replies = await transport.read_stream(reply_stream, AgentResponseEvent, count=100)
    assert sorted(r.event.content for r in replies) == sorted(d.event.content for d in deliveries)
    assert await transport.pending(transport.names.requests, "g") == []
    assert [await coordinator.holder(d.event.session_id) for d in deliveries] == [None] * 64  # released
    # 64 calls each: sent one by one they would be 64 writes (on up to 64 connections)
    assert claim_writes <= 2
    assert complete_writes <= 2


async def test_an_error_reaches_only_its_own_call(transport: RedisStreamsTransport) -> None:
    first, broken, last = await delivered(transport, 3)
    reply_stream = transport.names.responses("discord", "ok")
    bad_stream = transport.names.completed_record("squatter")  # a hash, not a stream
    await transport.client.hset(bad_stream, "x", "y")

    def answer(delivery: Delivery[AgentRequestEvent], stream: str) -> Reply:
        return Reply(AgentResponseEvent(request_id=delivery.event.id, content="a"), stream)

    results = await asyncio.gather(
        transport.complete(first, answer(first, reply_stream), record_ttl=60),
        transport.complete(broken, answer(broken, bad_stream), record_ttl=60),
        transport.complete(last, answer(last, reply_stream), record_ttl=60),
        return_exceptions=True,
    )

    assert isinstance(results[1], TransportError)
    assert "WRONGTYPE" in str(results[1])
    assert [r.created for r in (results[0], results[2]) if not isinstance(r, BaseException)] == [True, True]
    (still_pending,) = await transport.pending(transport.names.requests, "g")
    assert still_pending.entry_id == broken.entry_id


async def test_scripts_flushed_from_the_server_are_loaded_again(transport: RedisStreamsTransport) -> None:
    deliveries = await delivered(transport, 8)
    coordinator = transport.coordinator()
    await coordinator.claim("warm-up", ["w"], ttl=60)
    await transport.client.script_flush()

    async def claim_all() -> None:
        claims.extend(
            await asyncio.gather(
                *(coordinator.claim(d.event.session_id, [d.event.id], ttl=60) for d in deliveries)
            )
        )

    claims: list[Claim] = []
    writes = await writes_during(claim_all())

    assert [c.status for c in claims] == [ClaimStatus.LEASED] * 8
    assert writes == 3  # the pipeline, one SCRIPT LOAD, the pipeline again
    await transport.client.script_flush()
    alone = await coordinator.claim("alone", ["a"], ttl=60)  # sent without a pipeline: same recovery
    assert alone.status is ClaimStatus.LEASED
    assert [await coordinator.holder(d.event.session_id) for d in deliveries] == [
        d.event.id for d in deliveries
    ]


async def test_concurrent_publishes_share_a_round_trip_and_keep_their_order(
    transport: RedisStreamsTransport,
) -> None:
    stream = transport.names.events
    await transport.publish(stream, request(-1))  # the connection exists; its handshake is not counted
    events = [request(n) for n in range(50)]
    ids: list[str] = []

    async def publish_all() -> None:
        ids.extend(await asyncio.gather(*(transport.publish(stream, e, maxlen=1000) for e in events)))

    writes = await writes_during(publish_all())

    entries = await transport.read_stream(stream, AgentRequestEvent, count=100)
    assert [e.event.content for e in entries[1:]] == [e.content for e in events]  # in the order asked
    assert [e.entry_id for e in entries[1:]] == ids  # each caller got its own entry id
    assert writes == 1
