from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dynamic_agents.events import AgentRequestEvent, StreamNames
from dynamic_agents.transports import InMemoryServer, InMemoryTransport, ManualClock, Subscription, Transport
from tests.transports.contract import (
    Backend,
    CoordinatorContract,
    CoordinatorSignalsContract,
    TransportContract,
    TransportOperationsContract,
    request,
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


class TestInMemoryWaits:
    """The in-memory transport's own waits (a blocking ``read`` or ``read_stream``)."""

    @pytest.mark.parametrize("call", ["read", "read_stream"])
    async def test_a_read_cancelled_as_an_entry_arrives_is_cancelled(self, call: str) -> None:
        """A waiting read cancelled in the same event-loop iteration as an entry woke it was not
        cancelled on Python 3.11 (``asyncio.wait_for`` returned the wake-up and dropped the
        cancellation): the read went on and returned the entry, and whoever cancelled it (a
        worker stopping) waited for a task that kept running."""
        server = InMemoryServer(ManualClock())
        transport = InMemoryTransport(server, names=StreamNames("test"))
        stream = "test:requests"
        await transport.ensure_group(stream, "workers")
        subscription = Subscription(stream, "workers", "c1", AgentRequestEvent, block=3600.0)
        reading = asyncio.create_task(
            transport.read(subscription, 1)
            if call == "read"
            else transport.read_stream(stream, AgentRequestEvent, after="$", block=3600.0)
        )
        for _ in range(5):  # it waits
            await asyncio.sleep(0)
        await transport.publish(stream, request("at the same moment"))  # wakes it (no await inside)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
