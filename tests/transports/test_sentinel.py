"""The Redis backend behind Redis Sentinel, through a real failover (private redis-servers).

A master, one replica and one Sentinel (quorum 1) on free loopback ports; the transport is given
``Sentinel([...]).master_for("mymaster")``, as a team running Redis HA would. ``SENTINEL FAILOVER``
promotes the replica; :meth:`Ha.fail_over` waits until Sentinel names the new master *and* the
old one reports itself a replica: Sentinel demotes it with ``REPLICAOF`` and closes its clients'
connections, which is what sends them back to Sentinel for the new address. Replication is
asynchronous, so what must survive the failover is replicated first (``WAIT``).
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError

from dynamic_agents.client import AgentClient
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames, Target
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.testing import RedisServer, free_port
from dynamic_agents.transports import Delivery, RedisStreamsTransport, Reply, Subscription
from tests.support import services
from tests.support.waiting import wait_until
from tests.worker.conftest import request_event, worker

pytestmark = pytest.mark.redis_server

SERVICE = "mymaster"
GROUP = "workers"
WITHIN = 10.0  # bound on each wait for Sentinel or the worker (a failover takes a second or two)


@dataclass
class Ha:
    """The servers, and a client of the master Sentinel names (``master_for``)."""

    master: RedisServer
    replica: RedisServer
    sentinel: RedisServer
    sentinels: Sentinel
    client: Redis

    def direct(self, server: RedisServer) -> Redis:
        """A client of one server by its address (to look at where writes went)."""
        return Redis(port=server.port, single_connection_client=True)

    async def master_port(self) -> int:
        _, port = await self.sentinels.discover_master(SERVICE)
        return int(port)

    async def replicated(self) -> None:
        """Everything written to the master so far is on the replica too: ``WAIT`` counts the
        writes of its own connection, and replication is one stream, in order."""
        master = self.direct(self.master)
        try:
            await master.set("replicated", "1")
            assert await master.execute_command("WAIT", 1, 1000) == 1
        finally:
            await master.aclose()

    async def role(self, server: RedisServer) -> bytes:
        direct = self.direct(server)
        try:
            role: list[bytes] = await direct.execute_command("ROLE")
        finally:
            await direct.aclose()
        return role[0]

    async def sentinel_command(self, *args: str | int) -> object:
        sentinel = self.direct(self.sentinel)
        try:
            return await sentinel.execute_command("SENTINEL", *args)
        finally:
            await sentinel.aclose()

    async def fail_over(self, *, demote: bool = True) -> None:
        """Replicate, then ``SENTINEL FAILOVER``; returns once Sentinel names the replica and the
        old master is a replica (demoted, its clients disconnected). ``master`` and ``replica``
        swap. ``demote=False`` returns as soon as Sentinel names the new master, the old one still
        a master, as it stays for 8 to 10 s by default (here: until :meth:`demote`)."""
        await self.replicated()
        old, new = self.master, self.replica
        if not demote:  # the old master waits 4 publish periods before Sentinel demotes it
            await self.sentinel_command("DEBUG", "publish-period", 60_000)
        assert await self.sentinel_command("FAILOVER", SERVICE)
        self.master, self.replica = new, old

        async def named() -> bool:
            return await self.master_port() == new.port

        await wait_until(named, WITHIN, f"Sentinel to name port {new.port} the master")
        if demote:
            await self.demote()
        else:
            assert await self.role(old) == b"master"

    async def demote(self) -> None:
        """Let Sentinel demote the old master (``replica`` now), and wait until it has."""
        await self.sentinel_command("DEBUG", "publish-period", 100)

        async def demoted() -> bool:
            try:
                return await self.role(self.replica) == b"slave"
            except RedisConnectionError:  # the demotion drops the server's clients: ours too
                return False

        await wait_until(demoted, WITHIN, f"Sentinel to demote port {self.replica.port}")

    async def config_set(self, name: str, value: str | int) -> None:
        """A setting on both data servers (what a master needs, a promoted replica needs too)."""
        for server in (self.master, self.replica):
            direct = self.direct(server)
            try:
                await direct.config_set(name, value)
            finally:
                await direct.aclose()


async def close_sentinel(sentinels: Sentinel) -> None:
    """Close a Sentinel's connections (``Sentinel.aclose()`` is redis-py 6's; the floor is 5.3)."""
    for connection in sentinels.sentinels:
        await connection.aclose()


@pytest.fixture
async def ha() -> AsyncIterator[Ha]:
    if shutil.which("redis-server") is None:
        services.unavailable("redis-server", "PATH", "install it (apt-get install redis-server)")
    with (
        RedisServer(durable=False) as master,
        RedisServer(durable=False, replica_of=master) as replica,
        RedisServer.sentinel(master, service=SERVICE) as sentinel,
    ):
        sentinels = Sentinel([("127.0.0.1", sentinel.port)])
        client = sentinels.master_for(SERVICE)
        setup = Ha(master, replica, sentinel, sentinels, client)

        async def replica_in_sync() -> bool:  # what SENTINEL FAILOVER needs to pick it
            replicas = await sentinels.sentinels[0].sentinel_slaves(SERVICE)
            return any(r["port"] == replica.port and r["master-link-status"] == "ok" for r in replicas)

        try:
            await wait_until(replica_in_sync, WITHIN, "Sentinel to see the replica in sync")
            yield setup
        finally:
            await client.aclose()
            await close_sentinel(sentinels)


def request(n: int, names: StreamNames | None = None) -> AgentRequestEvent:
    return request_event(names or StreamNames(), f"message {n}", session=f"s{n}")


def subscription(block: float = 0.05) -> Subscription[AgentRequestEvent]:
    return Subscription(
        stream=StreamNames().requests,
        group=GROUP,
        consumer="c1",
        model=AgentRequestEvent,
        block=block,
        claim_min_idle=30.0,
    )


def answer(delivery: Delivery[AgentRequestEvent]) -> Reply:
    event = delivery.event
    response = AgentResponseEvent(request_id=event.id, session_id=event.session_id, content="answer")
    return Reply(response, event.reply_stream)


async def read_all(transport: RedisStreamsTransport, count: int) -> list[Delivery[AgentRequestEvent]]:
    deliveries: list[Delivery[AgentRequestEvent]] = []

    async def got_all() -> bool:
        deliveries.extend(await transport.read(subscription(), count - len(deliveries)))
        return len(deliveries) >= count

    await wait_until(got_all, WITHIN, f"{count} deliveries")
    return deliveries


@pytest.fixture
def names() -> StreamNames:
    return StreamNames()  # private servers: the default names


async def test_the_transport_and_coordinator_work_through_a_sentinel_client(
    ha: Ha, names: StreamNames
) -> None:
    transport = RedisStreamsTransport(ha.client)
    coordinator = transport.coordinator()
    master = ha.direct(ha.master)
    try:
        await transport.ensure_group(names.requests, GROUP)
        events = [request(n) for n in range(2)]
        for event in events:
            await transport.publish(names.requests, event)
        first, second = await read_all(transport, 2)
        assert [first.event, second.event] == events

        lease = await coordinator.acquire("s0", ttl=30)
        assert lease is not None
        assert await coordinator.holder("s0") == ""
        assert await coordinator.renew(lease)
        completion = await transport.complete(first, answer(first), record_ttl=60, lease=lease)
        assert completion.created
        assert await transport.ack(second) == 1
        claim = await coordinator.claim("s1", [second.event.id], ttl=30)
        assert claim.lease is not None
        assert await coordinator.release(claim.lease)

        assert await transport.pending(names.requests, GROUP) == []
        assert await coordinator.get_record(events[0].id) == completion.record
        # the writes are on the master Sentinel names, by its own address
        assert await master.xlen(names.requests) == 2
        assert await master.xlen(events[0].reply_stream or "") == 1
    finally:
        await master.aclose()
        await coordinator.aclose()
        await transport.aclose()


async def test_the_same_transport_and_coordinator_carry_on_after_a_failover(
    ha: Ha, names: StreamNames
) -> None:
    transport = RedisStreamsTransport(ha.client)
    coordinator = transport.coordinator()
    try:
        await transport.ensure_group(names.requests, GROUP)
        before = [request(n) for n in range(2)]
        for event in before:
            await transport.publish(names.requests, event)
        held = await read_all(transport, 2)
        lease = await coordinator.acquire("s0", ttl=30)
        assert lease is not None

        reader = asyncio.create_task(transport.read(subscription(block=WITHIN), 1))  # blocked across it
        await ha.fail_over()

        after = request(2)
        await transport.publish(names.requests, after)
        (delivery,) = await asyncio.wait_for(reader, WITHIN)
        assert delivery.event == after
        assert await coordinator.renew(lease)
        completion = await transport.complete(held[0], answer(held[0]), record_ttl=60, lease=lease)
        assert completion.created
        assert await transport.ack(held[1], delivery) == 2
        assert await transport.pending(names.requests, GROUP) == []

        new_master = ha.direct(ha.master)
        try:  # written on the promoted replica
            assert await new_master.xlen(names.requests) == 3
            assert await new_master.get(names.completed_record(before[0].id)) is not None
            assert await new_master.get(names.session_lease("s0")) is None  # released by complete
        finally:
            await new_master.aclose()
    finally:
        await coordinator.aclose()
        await transport.aclose()


async def test_a_worker_answers_every_request_once_across_a_failover(ha: Ha, names: StreamNames) -> None:
    publisher = RedisStreamsTransport(ha.client)
    consumer_side = RedisStreamsTransport(ha.client)
    gate = asyncio.Event()
    runs: list[str] = []

    async def held_until_the_gate_opens(target: Target, request: AgentRequestEvent) -> str:
        runs.append(request.id)
        await gate.wait()
        return f"echo: {request.content}"

    in_flight = 3
    w = worker(
        consumer_side,
        FunctionExecutor(held_until_the_gate_opens),
        concurrency=in_flight + 1,  # a free slot: the worker reads (blocks) across the failover
        lease_ttl=10.0,  # outlives the failover: renewals sent to the old master in between are lost
        claim_min_idle=10.0,
    )
    group = w.settings.group
    before = [request(n, names) for n in range(in_flight)]
    after = [request(n, names) for n in range(5, 10)]
    ids = [event.id for event in before + after]
    reply_stream = before[0].reply_stream or ""

    async def answered() -> list[AgentResponseEvent]:
        entries = await publisher.read_stream(reply_stream, AgentResponseEvent, count=1000)
        return [entry.event for entry in entries]

    async def all_answered() -> bool:
        done = {reply.request_id for reply in await answered()} >= set(ids)
        return done and not await publisher.pending(names.requests, group)

    client = AgentClient(publisher, block=0.05)
    waiting: list[asyncio.Task[AgentResponseEvent]] = []
    try:
        async with w:
            # an interface waits for these replies across the failover (its reads reconnect too)
            waiting += [asyncio.create_task(client.request(event, timeout=3 * WITHIN)) for event in before]
            await wait_until(lambda: len(runs) == in_flight, WITHIN, "runs in flight")
            await ha.fail_over()  # with runs in flight, their leases and pending entries replicated
            for event in after:
                await publisher.publish(names.requests, event)
            gate.set()
            await wait_until(all_answered, WITHIN, "every request answered after the failover")
            replies = await asyncio.wait_for(asyncio.gather(*waiting), WITHIN)

        assert [reply.request_id for reply in replies] == [event.id for event in before]
        counts = Counter(reply.request_id for reply in await answered())
        assert counts == Counter(ids)  # each answered once, none lost
        assert Counter(runs) == Counter(ids)  # and run once: the failover lost nothing done before it
        assert await publisher.pending(names.requests, group) == []
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await w.stop(grace=0)
        await client.aclose()
        await publisher.aclose()
        await consumer_side.aclose()


async def test_a_script_is_loaded_again_on_the_server_that_runs_it(ha: Ha, names: StreamNames) -> None:
    """A server that never ran a script (a new master: Redis does not replicate its script cache)
    answers ``NOSCRIPT``, and the transport loads the script and calls it again. It must load it
    where the call goes: its own connection may reach another server than the client's pool does,
    as after a failover, before Sentinel demotes the old master."""
    transport = RedisStreamsTransport(ha.client)
    other = RedisStreamsTransport(ha.client)  # sharing the client's pool
    try:
        await transport.ensure_group(names.requests, GROUP)
        await transport.publish(names.requests, request(0))  # its own connection, to the old master
        (held,) = await read_all(transport, 1)
        await ha.fail_over(demote=False)  # that connection stays open: the old master is one still
        await other.publish(names.requests, request(1))  # a new connection: the pool moves to the new
        completion = await transport.complete(held, answer(held), record_ttl=60)  # on the old master
        assert completion.created
    finally:
        await other.aclose()
        await transport.aclose()


async def test_a_master_demoted_without_closing_connections_sends_the_transport_to_the_new_one(
    ha: Ha, names: StreamNames
) -> None:
    """Sentinel closes the demoted master's connections; ``REPLICAOF`` alone (an operator, or the
    ``FAILOVER`` command) does not, and a write on one gets ``READONLY``. redis-py's Sentinel
    connections then reconnect, asking Sentinel again; so must the transport's own."""
    transport = RedisStreamsTransport(ha.client)
    coordinator = transport.coordinator()
    try:
        await transport.ensure_group(names.requests, GROUP)
        await transport.publish(names.requests, request(0))
        (held,) = await read_all(transport, 1)  # connections made: its own, and a reader's
        lease = await coordinator.acquire("s0", ttl=30)
        assert lease is not None
        await ha.fail_over(demote=False)
        old = ha.direct(ha.replica)
        try:
            await old.execute_command("REPLICAOF", "127.0.0.1", ha.master.port)
        finally:
            await old.aclose()

        after = request(1)
        await transport.publish(names.requests, after)
        (delivery,) = await read_all(transport, 1)
        assert delivery.event == after
        completion = await transport.complete(held, answer(held), record_ttl=60, lease=lease)
        assert completion.created
        assert await transport.ack(delivery) == 1
        assert await transport.pending(names.requests, GROUP) == []
        assert transport.stats.reconnects > 0
    finally:
        await coordinator.aclose()
        await transport.aclose()


async def test_writes_a_deposed_master_refuses_wait_for_the_new_one(ha: Ha, names: StreamNames) -> None:
    """With ``min-replicas-to-write 1`` a master left without its replica refuses writes
    (``NOREPLICAS``) rather than accept what its demotion will erase; the transport waits them out
    (within ``retry_deadline``) and they land on the new master once it has a replica again."""
    await ha.config_set("min-replicas-to-write", 1)
    transport = RedisStreamsTransport(ha.client, retry_cap=0.5)
    coordinator = transport.coordinator()
    waiting: list[asyncio.Task[Any]] = []
    try:
        await transport.ensure_group(names.requests, GROUP)
        await transport.publish(names.requests, request(0))
        (held,) = await read_all(transport, 1)
        lease = await coordinator.acquire("s0", ttl=30)
        assert lease is not None
        await ha.fail_over(demote=False)  # the old master answers, refusing writes; so does the new

        after = request(1)
        reading = asyncio.create_task(read_all(transport, 1))
        publishing = asyncio.create_task(transport.publish(names.requests, after))
        completing = asyncio.create_task(transport.complete(held, answer(held), record_ttl=60, lease=lease))
        waiting += [reading, publishing, completing]
        await wait_until(lambda: transport.stats.reconnects >= 3, WITHIN, "writes refused and retried")
        assert [task for task in waiting if task.done()] == []
        await ha.demote()  # the new master has a replica: writes go through

        entry_id = await asyncio.wait_for(publishing, WITHIN)
        assert (await asyncio.wait_for(completing, WITHIN)).created
        (delivery,) = await asyncio.wait_for(reading, WITHIN)
        assert (delivery.event, delivery.entry_id) == (after, entry_id)
        assert await transport.ack(delivery) == 1
        assert await transport.pending(names.requests, GROUP) == []
        new_master = ha.direct(ha.master)
        try:
            assert await new_master.xlen(names.requests) == 2  # nothing lost, nothing twice
        finally:
            await new_master.aclose()
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await coordinator.aclose()
        await transport.aclose()


async def test_after_the_master_crashes_the_transport_carries_on_with_the_promoted_replica(
    ha: Ha, names: StreamNames
) -> None:
    """No ``SENTINEL FAILOVER`` this time: the master dies, Sentinel sees it down for
    ``down-after-milliseconds`` and promotes the replica. Meanwhile Sentinel names no master
    (``MasterNotFoundError``, a connection error to redis-py): the calls wait it out."""
    transport = RedisStreamsTransport(ha.client, retry_cap=0.5)
    try:
        await transport.ensure_group(names.requests, GROUP)
        await transport.publish(names.requests, request(0))
        (held,) = await read_all(transport, 1)
        await ha.replicated()
        old, new = ha.master, ha.replica
        await asyncio.to_thread(old.kill)

        after = request(1)
        entry_id = await asyncio.wait_for(transport.publish(names.requests, after), WITHIN)  # promoted
        assert await ha.master_port() == new.port
        (delivery,) = await read_all(transport, 1)
        assert (delivery.event, delivery.entry_id) == (after, entry_id)
        assert (await transport.complete(held, answer(held), record_ttl=60)).created
        assert await transport.ack(delivery) == 1
        assert await transport.pending(names.requests, GROUP) == []
        assert transport.stats.reconnects > 0
    finally:
        await transport.aclose()


async def test_a_sentinel_client_that_decodes_responses_is_refused() -> None:
    """The check reads the client's connection settings, which a Sentinel pool has too."""
    sentinels = Sentinel([("127.0.0.1", free_port())])  # never connected to
    client = sentinels.master_for(SERVICE, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses=False"):
            RedisStreamsTransport(client)
    finally:
        await client.aclose()
        await close_sentinel(sentinels)
