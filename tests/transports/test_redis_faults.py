"""Faults on a redis-server the test starts itself (AOF, appendfsync always): kill, restart, flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from dynamic_agents.events import AgentRequestEvent
from dynamic_agents.exceptions import TransportError
from dynamic_agents.testing import RedisServer
from dynamic_agents.transports import CompletedRecord, Delivery, RedisStreamsTransport, Subscription
from tests.support.waiting import wait_until

pytestmark = pytest.mark.redis_server

STREAM = "agent:requests"


def subscription(**overrides: object) -> Subscription[AgentRequestEvent]:
    settings: dict[str, object] = {
        "stream": STREAM,
        "group": "workers",
        "consumer": "w1",
        "model": AgentRequestEvent,
        "batch_size": 10,
        "block": 0.1,
        "claim_min_idle": 0.5,
        "claim_interval": 0.1,
    }
    settings.update(overrides)
    return Subscription(**settings)  # type: ignore[arg-type]


def event(n: int) -> AgentRequestEvent:
    return AgentRequestEvent(source="discord", source_id="1", user_id="u", content=f"message {n}")


async def test_kill_and_restart_mid_consumption_loses_nothing_and_repeats_no_ack(
    redis_server: RedisServer,
) -> None:
    total = 200
    transport = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=60)
    acked: set[str] = set()
    delivered_after_ack: list[str] = []
    contents: set[str] = set()
    try:
        await transport.ensure_group(STREAM, "workers")
        for n in range(total):
            await transport.publish(STREAM, event(n))

        async def consume() -> None:
            while len(acked) < total:
                batch = await transport.read(subscription(), 10)
                delivered_after_ack.extend(d.entry_id for d in batch if d.entry_id in acked)
                for delivery in batch:
                    contents.add(delivery.event.content)
                await asyncio.sleep(0.005)  # the work a real consumer does per batch
                await transport.ack(*batch)
                acked.update(d.entry_id for d in batch)

        consumer = asyncio.create_task(consume())
        await wait_until(lambda: len(acked) >= total // 2, what="half the entries acked")
        redis_server.kill()
        acked_before_the_crash = len(acked)
        await wait_until(lambda: transport.stats.reconnects > 0, what="the consumer to notice")
        redis_server.start()
        await asyncio.wait_for(consumer, 60)
    finally:
        await transport.aclose()

    assert acked_before_the_crash < total
    assert contents == {f"message {n}" for n in range(total)}
    assert delivered_after_ack == []
    check = RedisStreamsTransport.from_url(redis_server.url)
    try:
        assert await check.pending(STREAM, "workers") == []
    finally:
        await check.aclose()


async def test_unacked_entries_survive_a_crash_and_are_reclaimed(redis_server: RedisServer) -> None:
    transport = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=60)
    try:
        await transport.ensure_group(STREAM, "workers")
        for n in range(3):
            await transport.publish(STREAM, event(n))
        held = await transport.read(subscription(consumer="crashed"), 3)
        assert len(held) == 3
        redis_server.kill()
        redis_server.start()
        survivors: list[Delivery[AgentRequestEvent]] = []
        deadline = time.monotonic() + 10
        while len(survivors) < 3 and time.monotonic() < deadline:
            survivors += await transport.read(subscription(consumer="rescuer"), 3)
        assert sorted(d.entry_id for d in survivors) == sorted(d.entry_id for d in held)
        assert all(d.delivery_count == 2 for d in survivors)
    finally:
        await transport.aclose()


async def test_flushall_recreates_the_group_and_carries_on(redis_server: RedisServer) -> None:
    transport = RedisStreamsTransport.from_url(redis_server.url)
    admin = Redis.from_url(redis_server.url)
    try:
        await transport.ensure_group(STREAM, "workers")
        await transport.publish(STREAM, event(0))
        (before,) = await transport.read(subscription(), 5)
        await admin.flushall()
        assert await transport.keep_fresh([before]) == [before]  # nothing is held any more
        after = event(1)
        await transport.publish(STREAM, after)
        (delivery,) = await transport.read(subscription(), 5)
        assert delivery.event == after
        assert transport.stats.groups_recreated == 1
    finally:
        await admin.aclose()
        await transport.aclose()


async def test_read_waits_out_an_outage_without_spinning(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A read waits the outage out, retrying with capped backoff, and says when Redis answers again."""
    transport = RedisStreamsTransport.from_url(redis_server.url)
    try:
        await transport.ensure_group(STREAM, "workers")
        redis_server.kill()
        with caplog.at_level(logging.INFO, logger="dynamic_agents.transports"):
            reading = asyncio.create_task(transport.read(subscription(), 1))
            await wait_until(lambda: transport.stats.reconnects >= 3, what="a few reconnect attempts")
            outage_started = time.monotonic()
            await wait_until(lambda: time.monotonic() - outage_started > 1.0, what="one second of outage")
            attempts = transport.stats.reconnects
            redis_server.start()
            await transport.publish(STREAM, event(7))
            (delivery,) = await asyncio.wait_for(reading, 15)
        assert delivery.event.content == "message 7"
    finally:
        await transport.aclose()
    # Capped exponential backoff: a busy loop would make thousands of attempts in a second.
    assert attempts < 40
    (recovered,) = [r for r in caplog.records if "answered again" in r.getMessage()]
    assert recovered.levelno == logging.INFO
    assert re.fullmatch(
        rf"reading {STREAM!r}: Redis answered again after \d+ failed attempts? \(\d+\.\d s\)",
        recovered.getMessage(),
    )


async def test_other_operations_give_up_with_a_transport_error(redis_server: RedisServer) -> None:
    transport = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=0.5)
    try:
        redis_server.kill()
        with pytest.raises(TransportError, match="Redis unreachable"):
            await transport.publish(STREAM, event(0))
    finally:
        await transport.aclose()


async def test_a_publish_retried_through_an_outage_says_when_redis_answered_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=30, retry_cap=0.2)
    try:
        await transport.ensure_group(STREAM, "workers")
        redis_server.kill()
        with caplog.at_level(logging.DEBUG, logger="dynamic_agents.transports"):
            publishing = asyncio.create_task(transport.publish(STREAM, event(1)))
            await wait_until(lambda: transport.stats.reconnects >= 6, what="retries of the publish")
            redis_server.start()
            await asyncio.wait_for(publishing, 15)
    finally:
        await transport.aclose()
    failures = transport.stats.reconnects  # the publish's failed attempts, the only call made
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert [r.getMessage().rsplit("(attempt ", 1)[1] for r in retries] == [
        f"{n})" for n in range(1, failures + 1)
    ]
    # a warning for the 1st, 2nd, 4th, 8th… attempt, the others at debug level: no line per retry
    warned = [n for n, r in enumerate(retries, 1) if r.levelno == logging.WARNING]
    assert warned == [n for n in range(1, failures + 1) if n & (n - 1) == 0]
    (recovered,) = [r for r in caplog.records if "answered again" in r.getMessage()]
    assert recovered.levelno == logging.INFO
    assert recovered.getMessage().startswith(
        f"publish to {STREAM!r}: Redis answered again after {failures} failed attempts ("
    )


async def test_a_hung_server_is_unreachable_after_the_operation_timeout(redis_server: RedisServer) -> None:
    # SIGSTOP: the connection stays open and nothing answers, so only a timeout ends the wait.
    # from_url turns redis-py's own socket timeout off; the transport's bound must take its place.
    transport = RedisStreamsTransport.from_url(redis_server.url, operation_timeout=0.3, retry_deadline=0.8)
    try:
        await transport.ensure_group(STREAM, "workers")
        redis_server.pause()
        try:
            with pytest.raises(TransportError, match=r"did not answer within 0\.3s"):
                await transport.publish(STREAM, event(1))  # a pipelined command
            with pytest.raises(TransportError, match=r"did not answer within 0\.3s"):
                await transport.coordinator().claim("s", ["r"], ttl=10)  # a batched script
            reading = asyncio.create_task(transport.read(subscription(), 10))  # read never gives up
            await wait_until(lambda: transport.stats.reconnects >= 4, what="reads timing out")
            assert not reading.done()
        finally:
            redis_server.resume()
        await transport.publish(STREAM, event(2))
        delivered = await asyncio.wait_for(reading, 15)
        # A command that timed out may still run once the server wakes: publishing is at least once.
        assert "message 2" in {d.event.content for d in delivered} | {
            d.event.content for d in await transport.read(subscription(), 10)
        }
    finally:
        await transport.aclose()


async def test_idle_loop_makes_one_blocking_read_per_block_timeout(redis_server: RedisServer) -> None:
    transport = RedisStreamsTransport.from_url(redis_server.url)
    admin = Redis.from_url(redis_server.url, decode_responses=True)
    block = 0.1
    try:
        await transport.ensure_group(STREAM, "workers")
        await admin.config_resetstat()
        started = time.monotonic()
        consuming = transport.consume(
            subscription(block=block, claim_min_idle=60, claim_interval=None), lambda: 10
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(consuming), 1.0)
        elapsed = time.monotonic() - started
        await consuming.aclose()
        stats = await admin.info("commandstats")
    finally:
        await admin.aclose()
        await transport.aclose()
    reads = stats["cmdstat_xreadgroup"]["calls"]
    assert 1 <= reads <= elapsed / block + 1
    reclaim_scans = stats.get("cmdstat_xautoclaim", {}).get("calls", 0)
    assert reclaim_scans <= 1  # claim_interval defaults to half of claim_min_idle (30 s)


async def test_a_claim_cancelled_after_it_was_sent_gives_back_the_lease_it_took(
    redis_server: RedisServer,
) -> None:
    """Cancelled while Redis held the reply (CLIENT PAUSE): the SET NX runs once Redis resumes,
    and nobody would hold the lease it takes but its ttl. The claim gives it back; ``aclose``
    waits for that."""
    transport = RedisStreamsTransport.from_url(redis_server.url)
    coordinator = transport.coordinator()
    admin = Redis.from_url(redis_server.url)
    try:
        other = await coordinator.claim("other", ["b"], ttl=60)  # (and the pipeline's connection is made)
        await admin.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        try:
            writes = transport._pipeline.writes
            claiming = asyncio.create_task(coordinator.claim("s", ["a"], ttl=60))
            await wait_until(lambda: transport._pipeline.writes > writes, what="the claim to be sent")
            claiming.cancel()
            with pytest.raises(asyncio.CancelledError):
                await claiming
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        await coordinator.aclose()
        assert await admin.get(transport.names.session_lease("s")) is None
        assert other.lease is not None
        assert await admin.get(transport.names.session_lease("other")) == other.lease.token.encode()
    finally:
        await admin.aclose()
        await transport.aclose()


async def test_an_acquire_cancelled_after_it_was_sent_gives_back_the_lease_it_took(
    redis_server: RedisServer,
) -> None:
    """As for a claim: the SET NX of an acquire cancelled while Redis held its reply runs once
    Redis resumes, and the acquire gives the lease back (token-checked: another holder's lease
    stays)."""
    transport = RedisStreamsTransport.from_url(redis_server.url)
    coordinator = transport.coordinator()
    admin = Redis.from_url(redis_server.url)
    try:
        other = await coordinator.acquire("other", ttl=60)  # (and the pipeline's connection is made)
        assert other is not None
        await admin.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        try:
            acquiring = asyncio.create_task(coordinator.acquire("s", ttl=60, holder="h"))
            await _held_by_the_pause(admin, "set")
            acquiring.cancel()
            with pytest.raises(asyncio.CancelledError):
                await acquiring
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        await coordinator.aclose()
        assert await admin.get(transport.names.session_lease("s")) is None
        assert await admin.get(transport.names.session_lease("other")) == other.token.encode()
    finally:
        await admin.aclose()
        await transport.aclose()


async def _held_by_the_pause(admin: Redis, command: str) -> None:
    """Wait until a client's ``command`` has reached the server and waits there for the pause to end
    (``flags=b``), whichever connection it was sent on."""

    async def held() -> bool:
        return any(c["cmd"] == command and "b" in c["flags"] for c in await admin.client_list())

    await wait_until(held, what=f"a {command} held by the pause")


async def test_an_acquire_cancelled_while_its_reply_was_on_the_way_gives_back_the_lease(
    redis_server: RedisServer,
) -> None:
    """Redis ran the SET NX, and its reply is held on the way back (a proxy): the cancelled acquire
    gives the lease back instead of leaving it held, with nobody to release it, until its ttl."""
    async with _reply_holding_proxy(redis_server.port) as (url, replies):
        transport = RedisStreamsTransport.from_url(url)
        coordinator = transport.coordinator()
        admin = Redis.from_url(redis_server.url)  # straight to the server
        lease_key = transport.names.session_lease("s")
        try:
            assert await coordinator.acquire("other", ttl=60) is not None  # (connections are made)
            replies.clear()
            acquiring = asyncio.create_task(coordinator.acquire("s", ttl=60, holder="h"))
            # Redis ran it; the reply waits in the proxy
            await wait_until(lambda: admin.exists(lease_key), what="the SET NX to run")
            acquiring.cancel()
            with pytest.raises(asyncio.CancelledError):
                await acquiring
            replies.set()
            await coordinator.aclose()
            assert await admin.get(lease_key) is None
        finally:
            replies.set()
            await admin.aclose()
            await transport.aclose()


@contextlib.asynccontextmanager
async def _reply_holding_proxy(port: int) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A TCP proxy to the Redis on ``port``: commands pass at once; replies pass only while the
    event is set. Yields the proxy's URL and the event."""
    replies = asyncio.Event()
    replies.set()
    writers: list[asyncio.StreamWriter] = []
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, gated: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if gated:
                    await replies.wait()
                sink.write(data)
                await sink.drain()
        sink.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        writers.extend((writer, upstream_writer))
        for task in (pipe(reader, upstream_writer, False), pipe(upstream_reader, writer, True)):
            pipes.add(asyncio.create_task(task))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0", replies
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()


async def test_what_frees_memory_or_keeps_runs_alive_works_when_redis_is_out_of_memory(
    redis_server: RedisServer,
) -> None:
    """``maxmemory`` reached with ``noeviction``: Redis refuses the commands that grow its data
    (``OOM command not allowed``), and takes ``XTRIM``, ``DEL``, ``PEXPIRE`` and ``XCLAIM``. The
    scripts made of those were refused whole all the same (a script without ``allow-oom`` is
    refused up front): ``trim_acknowledged``, the remedy docs/guides/scaling.md gives for memory,
    failed just when memory was full, and a worker could neither renew its leases nor keep its
    entries fresh, so its runs were cancelled and run again once the memory was freed."""
    transport = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=1)
    coordinator = transport.coordinator()
    admin = Redis.from_url(redis_server.url)
    try:
        await transport.ensure_group(STREAM, "workers")
        for n in range(3):
            await transport.publish(STREAM, event(n))
        done, held = await transport.read(subscription(), 2)
        await transport.ack(done)
        lease = await coordinator.acquire("s", ttl=60)
        assert lease is not None
        await coordinator.set_record(CompletedRecord("r", "a", "completed", None, None, 0.0), ttl=60)
        await admin.config_set("maxmemory", "1")
        with pytest.raises(TransportError, match="maxmemory"):  # what would grow it is refused
            await transport.publish(STREAM, event(3))

        assert await transport.keep_fresh([held]) == []
        assert await coordinator.renew(lease)
        assert await transport.trim_acknowledged(STREAM) == 1
        assert await coordinator.release(lease)
        assert await coordinator.delete_record("r", response_id="a")
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.aclose()
        await transport.aclose()
