from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from dynamic_agents.events import StreamNames
from dynamic_agents.transports import RedisStreamsTransport, Transport
from tests.transports.contract import (
    Backend,
    CoordinatorContract,
    CoordinatorSignalsContract,
    TransportContract,
    TransportOperationsContract,
)

pytestmark = pytest.mark.redis

MIN_IDLE = 0.3  # real seconds: idle times and expiry are what these tests exercise


@pytest.fixture(params=[None, 2, 3], ids=["default-protocol", "resp2", "resp3"])
async def backend(
    redis_url: str, redis_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Backend]:
    """A client as ``from_url`` makes it, and clients with ``protocol=2`` and ``protocol=3``, whose
    replies redis-py shapes differently (RESP3: maps as dicts)."""
    names = StreamNames(redis_prefix)
    admin = Redis.from_url(redis_url)
    protocol: int | None = request.param

    async def make() -> Transport:
        if protocol is None:
            return RedisStreamsTransport.from_url(redis_url, names=names)
        client = Redis.from_url(redis_url, protocol=protocol)
        return RedisStreamsTransport(client, names=names, owns_client=True)

    async def forget() -> None:
        keys = [key async for key in admin.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await admin.delete(*keys)

    async def write_string(key: str, value: str) -> None:
        await admin.set(key, value)

    backend = Backend(
        names,
        min_idle=MIN_IDLE,
        make_transport=make,
        advance=asyncio.sleep,
        forget_everything=forget,
        write_string=write_string,
    )
    yield backend
    for transport in backend.transports:
        await transport.aclose()
    await admin.aclose()


class TestRedisStreamsTransport(TransportContract, TransportOperationsContract):
    pass


class TestRedisCoordinator(CoordinatorContract, CoordinatorSignalsContract):
    pass
