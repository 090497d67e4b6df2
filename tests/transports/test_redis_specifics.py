"""Behaviour only the Redis backend has: client settings, deleted entries, client ownership."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from dynamic_agents.events import AgentRequestEvent, StreamNames
from dynamic_agents.exceptions import ConfigurationError, TransportError
from dynamic_agents.transports import RedisStreamsTransport, Subscription

pytestmark = pytest.mark.redis


def subscription(stream: str, consumer: str = "c1", **overrides: object) -> Subscription[AgentRequestEvent]:
    settings: dict[str, object] = {
        "stream": stream,
        "group": "g",
        "consumer": consumer,
        "model": AgentRequestEvent,
        "block": 0.05,
        "claim_min_idle": 0.2,
        "claim_interval": 0.0,
    }
    settings.update(overrides)
    return Subscription(**settings)  # type: ignore[arg-type]


def event(content: str = "hi") -> AgentRequestEvent:
    return AgentRequestEvent(source="slack", source_id="C1", user_id="U1", content=content)


async def test_a_decoding_client_is_refused(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses=False"):
            RedisStreamsTransport(client)
    finally:
        await client.aclose()


async def test_a_blocking_read_outlasts_the_clients_socket_timeout(redis_url: str, redis_prefix: str) -> None:
    """Reads have connections of their own, bounded by ``operation_timeout`` plus the block time,
    not by the client's per-socket-call timeout."""
    client = Redis.from_url(redis_url, socket_timeout=0.2)
    transport = RedisStreamsTransport(client, names=StreamNames(redis_prefix))
    stream = f"{redis_prefix}:s"
    try:
        await transport.ensure_group(stream, "g")
        started = time.monotonic()
        assert await transport.read(subscription(stream, block=0.6, claim_min_idle=None), 1) == []
        waited = time.monotonic() - started
    finally:
        await transport.aclose()
        await client.aclose()
    assert waited >= 0.55  # the server's block ran out: no timeout cut it short
    assert transport.stats.reconnects == 0


async def test_pending_entries_deleted_before_reclaim_are_counted(redis_url: str, redis_prefix: str) -> None:
    stream = f"{redis_prefix}:requests"
    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    try:
        await transport.ensure_group(stream, "g")
        kept_id = await transport.publish(stream, event("kept"))
        deleted_id = await transport.publish(stream, event("deleted"))
        assert len(await transport.read(subscription(stream, "dead"), 2)) == 2
        await transport.client.xdel(stream, deleted_id)
        await asyncio.sleep(0.3)  # let the entries become idle for longer than claim_min_idle
        (reclaimed,) = await transport.read(subscription(stream, "alive"), 5)
        assert reclaimed.entry_id == kept_id
        assert transport.stats.reclaimed_deleted == 1
        assert [p.entry_id for p in await transport.pending(stream, "g")] == [kept_id]
    finally:
        await transport.aclose()


async def test_a_client_passed_in_stays_open(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        async with RedisStreamsTransport(client) as transport:
            assert transport.client is client
        assert await client.ping()
        async with transport.coordinator():
            pass
        assert await client.ping()
    finally:
        await client.aclose()


async def test_repr_names_the_prefix_only(redis_url: str) -> None:
    transport = RedisStreamsTransport.from_url("redis://:canary-password@127.0.0.1:6379/0")
    try:
        assert repr(transport) == "RedisStreamsTransport(prefix='agent')"
        assert "canary" not in repr(transport)
    finally:
        await transport.aclose()


class OddReplies(Redis):
    """A client whose XREVRANGE replies have a shape the transport does not know."""

    async def xrevrange(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        return [("only-an-id",)]


async def test_a_reply_of_an_unknown_shape_is_an_error_not_an_outage(
    redis_url: str, redis_prefix: str
) -> None:
    # A TransportError is a ConnectionError; the retry loops must still not take it for Redis away.
    transport = RedisStreamsTransport(
        OddReplies.from_url(redis_url), names=StreamNames(redis_prefix), owns_client=True
    )
    stream = f"{redis_prefix}:odd"

    async def odd_read(*args: object) -> object:
        return 42

    transport._xread = odd_read  # type: ignore[method-assign]
    try:
        await transport.ensure_group(stream, "g")
        with pytest.raises(TransportError, match="unexpected reply from Redis"):
            await asyncio.wait_for(transport.read(subscription(stream, claim_min_idle=None), 1), 10)
        with pytest.raises(TransportError, match="unexpected reply from Redis"):
            await asyncio.wait_for(transport.last_entry_id(stream), 10)
    finally:
        await transport.aclose()
    assert transport.stats.reconnects == 0
