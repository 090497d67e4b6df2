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


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    names = StreamNames(redis_prefix)
    admin = Redis.from_url(redis_url)

    async def make() -> Transport:
        return RedisStreamsTransport.from_url(redis_url, names=names)

    async def forget() -> None:
        keys = [key async for key in admin.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await admin.delete(*keys)

    backend = Backend(
        names, min_idle=MIN_IDLE, make_transport=make, advance=asyncio.sleep, forget_everything=forget
    )
    yield backend
    for transport in backend.transports:
        await transport.aclose()
    await admin.aclose()


class TestRedisStreamsTransport(TransportContract, TransportOperationsContract):
    pass


class TestRedisCoordinator(CoordinatorContract, CoordinatorSignalsContract):
    pass
