from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dynamic_agents.events import StreamNames
from dynamic_agents.transports import InMemoryServer, InMemoryTransport, ManualClock, Transport
from tests.transports.contract import (
    Backend,
    CoordinatorContract,
    CoordinatorSignalsContract,
    TransportContract,
    TransportOperationsContract,
)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    clock = ManualClock()
    server = InMemoryServer(clock)
    names = StreamNames("test")

    async def make() -> Transport:
        return InMemoryTransport(server, names=names)

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    async def forget() -> None:
        server.flush()

    async def write_string(key: str, value: str) -> None:
        server._keys[key] = value

    backend = Backend(
        names,
        min_idle=30.0,
        make_transport=make,
        advance=advance,
        forget_everything=forget,
        write_string=write_string,
    )
    yield backend
    for transport in backend.transports:
        await transport.aclose()


class TestInMemoryTransport(TransportContract, TransportOperationsContract):
    pass


class TestInMemoryCoordinator(CoordinatorContract, CoordinatorSignalsContract):
    pass
