"""Claims and completions made together go to Redis as one pipeline, each caller with its own reply."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, ResponseError

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames
from dynamic_agents.exceptions import LeaseLostError, TransportError
from dynamic_agents.testing import RedisServer
from dynamic_agents.transports import (
    ClaimStatus,
    Completion,
    Delivery,
    Lease,
    RedisStreamsTransport,
    Reply,
    Subscription,
)
from dynamic_agents.transports._pipelining import Arg, AutoPipeline, BatchCommands, BatchScript

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
    transport = RedisStreamsTransport(client, names=StreamNames(redis_prefix))
    yield transport
    await transport.aclose()
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


async def writes_during(transport: RedisStreamsTransport, coroutine: Coroutine[Any, Any, None]) -> int:
    """Socket writes: the client's connections' and the auto-pipeline's own connection's."""
    pipeline = transport._pipeline
    before = CountingConnection.writes + pipeline.writes
    await coroutine
    return CountingConnection.writes + pipeline.writes - before


async def test_concurrent_claims_and_completions_share_round_trips(transport: RedisStreamsTransport) -> None:
    warm_up, *deliveries = await delivered(transport, 65)
    coordinator = transport.coordinator()
    # One claim and one complete first: the connection exists (its handshake is not counted) and
    # the script is loaded.
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

    claim_writes = await writes_during(transport, claim_all())
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

    complete_writes = await writes_during(transport, complete_all())

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
    warm_up, *deliveries, alone = await delivered(transport, 10)
    reply_stream = transport.names.responses("discord", "reloaded")

    def complete(delivery: Delivery[AgentRequestEvent]) -> Coroutine[Any, Any, Completion]:
        answer = AgentResponseEvent(request_id=delivery.event.id, content=delivery.event.content)
        return transport.complete(delivery, Reply(answer, reply_stream), record_ttl=60)

    await complete(warm_up)
    await transport.client.script_flush()

    async def complete_all() -> None:
        completions.extend(await asyncio.gather(*(complete(d) for d in deliveries)))

    completions: list[Completion] = []
    writes = await writes_during(transport, complete_all())

    assert [c.created for c in completions] == [True] * 8
    assert writes == 2  # the pipeline, then one SCRIPT LOAD and the calls again in one write
    await transport.client.script_flush()
    assert (await complete(alone)).created  # sent without a pipeline: same recovery
    replies = await transport.read_stream(reply_stream, AgentResponseEvent, count=100)
    assert [r.event.content for r in replies] == [d.event.content for d in (warm_up, *deliveries, alone)]
    assert await transport.pending(transport.names.requests, "g") == []


async def test_concurrent_publishes_share_a_round_trip_and_keep_their_order(
    transport: RedisStreamsTransport,
) -> None:
    stream = transport.names.events
    await transport.publish(stream, request(-1))  # the connection exists; its handshake is not counted
    events = [request(n) for n in range(50)]
    ids: list[str] = []

    async def publish_all() -> None:
        ids.extend(await asyncio.gather(*(transport.publish(stream, e, maxlen=1000) for e in events)))

    writes = await writes_during(transport, publish_all())

    entries = await transport.read_stream(stream, AgentRequestEvent, count=100)
    assert [e.event.content for e in entries[1:]] == [e.content for e in events]  # in the order asked
    assert [e.entry_id for e in entries[1:]] == ids  # each caller got its own entry id
    assert writes == 1


async def test_the_same_request_completed_twice_in_one_batch_is_answered_once(
    transport: RedisStreamsTransport,
) -> None:
    stream = transport.names.requests
    await transport.ensure_group(stream, "g")
    event = request(1)
    await transport.publish(stream, event)
    await transport.publish(stream, event)  # a platform retry, delivered together with the original
    first, retry = await transport.read(Subscription(stream, "g", "c1", AgentRequestEvent, block=0), 2)
    reply_stream = transport.names.responses("discord", "twice")

    one, two = await asyncio.gather(  # one iteration: one call of the batch script
        transport.complete(
            first, Reply(AgentResponseEvent(request_id=event.id, content="1"), reply_stream), record_ttl=60
        ),
        transport.complete(
            retry, Reply(AgentResponseEvent(request_id=event.id, content="2"), reply_stream), record_ttl=60
        ),
    )

    assert (one.created, two.created) == (True, False)
    assert two.record == one.record
    assert [r.event.content for r in await transport.read_stream(reply_stream, AgentResponseEvent)] == ["1"]
    assert await transport.pending(stream, "g") == []


async def test_claims_of_one_session_in_one_batch_lease_it_once(transport: RedisStreamsTransport) -> None:
    coordinator = transport.coordinator()
    claims = await asyncio.gather(
        coordinator.claim("same-session", ["a"], ttl=60), coordinator.claim("same-session", ["b"], ttl=60)
    )
    assert [c.status for c in claims] == [ClaimStatus.LEASED, ClaimStatus.BUSY]
    assert await coordinator.holder("same-session") == "a"


async def test_a_lost_lease_fails_only_its_own_completion_in_a_batch(
    transport: RedisStreamsTransport,
) -> None:
    kept, lost = await delivered(transport, 2)
    coordinator = transport.coordinator()
    kept_lease = (await coordinator.claim(kept.event.session_id, [kept.event.id], ttl=60)).lease
    lost_lease = (await coordinator.claim(lost.event.session_id, [lost.event.id], ttl=60)).lease
    assert kept_lease is not None
    assert lost_lease is not None
    await transport.client.set(transport.names.session_lease(lost.event.session_id), b"someone-else")
    reply_stream = transport.names.responses("discord", "leases")

    def complete(delivery: Delivery[AgentRequestEvent], lease: Lease) -> Coroutine[Any, Any, Completion]:
        answer = AgentResponseEvent(request_id=delivery.event.id, content=delivery.event.content)
        return transport.complete(delivery, Reply(answer, reply_stream), record_ttl=60, lease=lease)

    results = await asyncio.gather(
        complete(kept, kept_lease), complete(lost, lost_lease), return_exceptions=True
    )

    assert isinstance(results[0], Completion)
    assert results[0].created
    assert isinstance(results[1], LeaseLostError)
    assert [r.event.content for r in await transport.read_stream(reply_stream, AgentResponseEvent)] == [
        kept.event.content
    ]
    assert await coordinator.holder(kept.event.session_id) is None  # released with its reply
    assert await transport.client.get(transport.names.session_lease(lost.event.session_id)) == b"someone-else"
    (still_pending,) = await transport.pending(transport.names.requests, "g")
    assert still_pending.entry_id == lost.entry_id


async def test_an_unreadable_record_is_a_transport_error(transport: RedisStreamsTransport) -> None:
    await transport.client.set(transport.names.completed_record("garbled"), b"not json")
    with pytest.raises(TransportError, match="completed-request record is not readable"):
        await transport.coordinator().get_record("garbled")


# -- AutoPipeline itself --------------------------------------------------------------------------

ECHO_ALL = "local out = {} for i = 1, #ARGV do out[i] = ARGV[i] end return out"


async def test_batched_calls_become_one_script_call_and_each_gets_its_own_reply(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    packed: list[list[str]] = []

    def pack(items: Sequence[str]) -> tuple[list[str], list[Arg]]:
        packed.append(list(items))
        return [], list(items)

    kind = BatchScript(client.register_script(ECHO_ALL), pack)
    auto = AutoPipeline(client)
    try:
        dropped = auto.batched(kind, "dropped")
        futures = [auto.batched(kind, f"item-{n}") for n in range(5)]
        dropped.cancel()  # its caller gave up before the batch was sent: it is left out
        replies = await asyncio.gather(*futures)
    finally:
        await auto.aclose()
        await client.aclose()

    assert replies == [f"item-{n}".encode() for n in range(5)]
    assert packed == [[f"item-{n}" for n in range(5)]]


async def test_a_batch_reply_of_the_wrong_length_fails_every_call(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    kind = BatchScript(client.register_script("return {1}"), lambda items: ([], list(items)))
    auto = AutoPipeline(client)
    try:
        results = await asyncio.gather(
            auto.batched(kind, "a"), auto.batched(kind, "b"), return_exceptions=True
        )
    finally:
        await auto.aclose()
        await client.aclose()
    assert all(isinstance(r, RuntimeError) and "answered" in str(r) for r in results)


async def test_a_script_error_reaches_every_call_of_its_batch_and_nothing_else(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    kind = BatchScript(
        client.register_script("return redis.error_reply('BROKEN on purpose')"),
        lambda items: ([], list(items)),
    )
    auto = AutoPipeline(client)
    try:
        results = await asyncio.gather(
            auto.batched(kind, "a"), auto.batched(kind, "b"), auto.command("PING"), return_exceptions=True
        )
    finally:
        await auto.aclose()
        await client.aclose()
    assert [str(r) for r in results[:2]] == ["BROKEN on purpose"] * 2
    assert results[2] in (b"PONG", "PONG")


async def test_commands_are_packed_as_the_protocol_spells_them(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    key = f"autopipeline:{uuid.uuid4()}"
    try:
        await auto.command("SET", key, "ünïcode")
        await auto.command("APPEND", key, b"\x00\xff")
        await auto.command("APPEND", key, 42)
        assert await client.get(key) == "ünïcode".encode() + b"\x00\xff42"
    finally:
        await auto.aclose()
        await client.delete(key)
        await client.aclose()


async def test_a_command_that_cannot_be_packed_fails_alone(redis_url: str) -> None:
    """Packing used to raise inside the flush: every call queued with it waited forever."""
    client = Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    key = f"autopipeline:{uuid.uuid4()}"
    try:
        async with asyncio.timeout(10):  # a guard against the hang, not a measure
            results = await asyncio.gather(
                auto.command("SET", key, "kept"),
                auto.command("SET", key, None),  # type: ignore[arg-type]
                auto.batched(INCR_AND_GET, key),
                auto.batched(UNPACKABLE, key),
                auto.command("GET", key),
                return_exceptions=True,
            )
        assert results[0] == b"OK"
        assert isinstance(results[1], TypeError)
        assert isinstance(results[2], ResponseError)  # INCR of "kept": an error reply, its own
        assert isinstance(results[3], ValueError)
        assert results[4] == b"kept"
    finally:
        await auto.aclose()
        await client.delete(key)
        await client.aclose()


def _unpackable(keys: Sequence[str]) -> list[tuple[Arg, ...]]:
    raise ValueError(f"cannot pack {list(keys)}")


def _pack_incr_and_get(keys: Sequence[str]) -> list[tuple[Arg, ...]]:
    return [*(("INCR", key) for key in keys), ("MGET", *keys)]


def _unpack_incr_and_get(keys: Sequence[str], replies: list[object]) -> list[object]:
    *increments, values = replies
    assert isinstance(values, list)
    return [i if isinstance(i, BaseException) else (i, v) for i, v in zip(increments, values, strict=True)]


INCR_AND_GET = BatchCommands(_pack_incr_and_get, _unpack_incr_and_get)
UNPACKABLE = BatchCommands(_unpackable, _unpack_incr_and_get)


async def test_batched_commands_go_out_together_and_each_call_gets_its_part(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    keys = [f"autopipeline:{uuid.uuid4()}" for _ in range(3)]
    await client.set(keys[1], "not a number")
    try:
        results = await asyncio.gather(
            *(auto.batched(INCR_AND_GET, key) for key in keys), auto.command("PING"), return_exceptions=True
        )
        assert auto.writes == 1
    finally:
        await auto.aclose()
        await client.delete(*keys)
        await client.aclose()
    assert results[0] == (1, b"1")
    assert isinstance(results[1], ResponseError)  # its own command's error, and only its
    assert "not an integer" in str(results[1])
    assert results[2] == (1, b"1")
    assert results[3] == b"PONG"


ECHO_EACH = BatchCommands(
    lambda values: [*(("ECHO", value) for value in values), ("PING",)],
    lambda values, replies: replies[:-1],  # one ECHO reply per call; the PING closes the batch
)


async def test_a_batch_whose_replies_span_socket_reads_reaches_every_call(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    values = [bytes([65 + n % 26]) * (100_000 + n) for n in range(20)]  # ~2 MB: many socket reads
    try:
        replies = await asyncio.gather(*(auto.batched(ECHO_EACH, value) for value in values))
        assert await auto.command("PING") == b"PONG"  # nothing left over on the connection
    finally:
        await auto.aclose()
        await client.aclose()
    assert replies == values


async def test_a_call_given_up_on_before_the_flush_is_left_out_of_its_batch(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    kept, dropped = f"autopipeline:{uuid.uuid4()}", f"autopipeline:{uuid.uuid4()}"
    try:
        waiting = auto.batched(INCR_AND_GET, dropped)
        result = auto.batched(INCR_AND_GET, kept)
        waiting.cancel()
        assert await result == (1, b"1")
        assert await client.exists(dropped) == 0
    finally:
        await auto.aclose()
        await client.delete(kept, dropped)
        await client.aclose()


@pytest.mark.redis_server
async def test_a_burst_costs_the_server_at_most_five_calls_per_request(redis_server: RedisServer) -> None:
    """Claim and complete under a lease, 64 at once: what ``INFO commandstats`` counts per request,
    the calls scripts make inside Redis included (the benchmarks' "server calls")."""
    transport = RedisStreamsTransport.from_url(redis_server.url)
    admin = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        warm_up, *deliveries = await delivered(transport, 65)
        coordinator = transport.coordinator()
        lease = (await coordinator.claim(warm_up.event.session_id, [warm_up.event.id], ttl=60)).lease
        answer = AgentResponseEvent(request_id=warm_up.event.id)
        await transport.complete(warm_up, Reply(answer, None), record_ttl=60, lease=lease)  # scripts loaded
        await admin.config_resetstat()
        claims = await asyncio.gather(
            *(coordinator.claim(d.event.session_id, [d.event.id], ttl=60) for d in deliveries)
        )
        reply_streams = [transport.names.responses("discord", f"s{n % 16}") for n in range(64)]
        await asyncio.gather(
            *(
                transport.complete(
                    d, Reply(AgentResponseEvent(request_id=d.event.id), stream), record_ttl=60, lease=c.lease
                )
                for d, c, stream in zip(deliveries, claims, reply_streams, strict=True)
            )
        )
        stats = await admin.info("commandstats")
    finally:
        await admin.aclose()
        await transport.aclose()
    calls = {
        name.removeprefix("cmdstat_"): v["calls"]
        for name, v in stats.items()
        if name != "cmdstat_config|resetstat"
    }
    assert calls["evalsha"] == 1  # one complete script call for the 64
    assert calls["mget"] == 2  # the 64 claims read back with one, the script reads with one
    assert calls["set"] == 64 + 64  # each claim's lease (SET NX), each completion's record
    assert sum(calls.values()) / 64 <= 5, calls


# -- AutoPipeline's own connection ------------------------------------------------------------------


async def connection_id(auto: AutoPipeline) -> int:
    reply = await auto.command("CLIENT", "ID")
    assert isinstance(reply, int)
    return reply


async def test_replies_split_across_reads_reach_their_callers_in_order(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    values = [bytes([65 + n % 26]) * (100_000 + n) for n in range(20)]  # ~2 MB: many socket reads
    try:
        replies = await asyncio.gather(*(auto.command("ECHO", value) for value in values))
    finally:
        await auto.aclose()
        await client.aclose()
    assert replies == values


async def test_the_connection_keeps_the_clients_settings(redis_url: str) -> None:
    """The handshake is redis-py's own: database, protocol and client name as the client has them."""
    url = urlsplit(redis_url)._replace(path="/3").geturl()  # a database other than the default
    client = Redis.from_url(url, protocol=3, client_name="pipeline-handshake")
    auto = AutoPipeline(client)
    try:
        info = await auto.command("CLIENT", "INFO")
    finally:
        await auto.aclose()
        await client.aclose()
    assert isinstance(info, bytes)
    fields = dict(part.split(b"=", 1) for part in info.split() if b"=" in part)
    assert (fields[b"name"], fields[b"db"], fields[b"resp"]) == (b"pipeline-handshake", b"3", b"3")


async def kill_it(client: Redis, auto: AutoPipeline, connection: int) -> None:
    assert await client.client_kill_filter(_id=str(connection)) == 1


async def garble_it(client: Redis, auto: AutoPipeline, connection: int) -> None:
    assert auto._wire is not None
    auto._wire.data_received(b"?not the redis protocol\r\n")  # as if the server had sent it


@pytest.mark.parametrize(
    ("break_it", "error"),
    [(kill_it, "Redis closed the connection"), (garble_it, "unreadable reply from Redis")],
    ids=["killed", "unreadable reply"],
)
async def test_a_broken_connection_fails_the_calls_on_it_and_the_next_call_reconnects(
    redis_url: str, break_it: Callable[[Redis, AutoPipeline, int], Awaitable[None]], error: str
) -> None:
    client = Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    key = f"autopipeline:{uuid.uuid4()}"
    try:
        first = await connection_id(auto)
        waiting = auto.command("BLPOP", key, 10)  # answered only when the list gets an item
        await asyncio.sleep(0.05)
        await break_it(client, auto, first)

        with pytest.raises(ConnectionError, match=error):
            await asyncio.wait_for(waiting, 2)
        second = await connection_id(auto)
    finally:
        await auto.aclose()
        await client.aclose()
    assert second != first


async def test_calls_unanswered_within_the_timeout_fail_and_the_connection_is_replaced(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url)
    auto = AutoPipeline(client, timeout=0.2)
    key = f"autopipeline:{uuid.uuid4()}"
    try:
        first = await connection_id(auto)
        blocked = auto.command("BLPOP", key, 5)  # the server holds the reply (and the one behind it)
        behind = auto.command("PING")
        results = await asyncio.wait_for(asyncio.gather(blocked, behind, return_exceptions=True), 2)
        second = await connection_id(auto)
        clients = await client.client_list()
    finally:
        await auto.aclose()
        await client.aclose()
    assert [type(r) for r in results] == [TimeoutError, TimeoutError]
    assert all(str(r) == "" for r in results)  # no message: "did not answer in time"
    assert second != first
    assert str(first) not in {c["id"] for c in clients}  # the stalled connection was closed


async def test_closing_the_transport_closes_the_pipelines_connections(
    redis_url: str, redis_prefix: str
) -> None:
    """Even with a client of the caller's, which stays open."""
    client = Redis.from_url(redis_url, client_name="transport-owned")
    transport = RedisStreamsTransport(client, names=StreamNames(redis_prefix))
    stream = transport.names.requests
    await transport.ensure_group(stream, "g")
    await transport.publish(stream, request(0), maxlen=10)  # the pipeline's connection
    await transport.read(Subscription(stream, "g", "c1", AgentRequestEvent, block=0), 1)  # a reader's
    names_before = [c["name"] for c in await client.client_list()]
    await transport.aclose()
    open_after: list[int] = []

    async def owned() -> int:
        open_after.append([c["name"] for c in await client.client_list()].count("transport-owned"))
        return open_after[-1]

    # the server drops a closed connection from its list when it has read the close: a moment later
    for _ in range(500):  # 5 s at most
        if await owned() == 1:
            break
        await asyncio.sleep(0.01)
    await client.aclose()
    assert names_before.count("transport-owned") == 3
    assert open_after[-1] == 1  # the client's own, still open


async def test_blocking_reads_in_flight_together_do_not_wait_for_each_other(
    transport: RedisStreamsTransport,
) -> None:
    quiet, busy = transport.names.requests, transport.names.events
    for stream in (quiet, busy):
        await transport.ensure_group(stream, "g")

    def blocking(stream: str) -> Subscription[AgentRequestEvent]:
        return Subscription(stream, "g", "c1", AgentRequestEvent, block=30.0, claim_min_idle=None)

    waiting = asyncio.create_task(transport.read(blocking(quiet), 1))
    answered = asyncio.create_task(transport.read(blocking(busy), 1))
    await asyncio.sleep(0.05)  # both are blocked in Redis now
    await transport.publish(busy, request(7))

    (delivery,) = await asyncio.wait_for(answered, 10)  # behind the other read, it would wait 30 s

    assert delivery.event.content == "message 7"
    assert not waiting.done()  # still blocked on a connection of its own
    waiting.cancel()


async def test_a_cancelled_read_leaves_nothing_behind_to_take_entries(
    transport: RedisStreamsTransport,
) -> None:
    stream = transport.names.requests
    await transport.ensure_group(stream, "g")
    subscription = Subscription(stream, "g", "c1", AgentRequestEvent, block=2.0, claim_min_idle=None)
    cancelled = asyncio.create_task(transport.read(subscription, 1))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await transport.publish(
        stream, request(1)
    )  # were the cancelled XREADGROUP still blocked, it would get it

    (delivery,) = await transport.read(subscription, 1)

    assert delivery.event.content == "message 1"


async def test_a_closed_transport_refuses_calls_at_once(redis_url: str, redis_prefix: str) -> None:
    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    stream = transport.names.requests
    await transport.ensure_group(stream, "g")
    await transport.publish(stream, request(0))
    await transport.aclose()

    with pytest.raises(TransportError, match="the transport is closed"):  # not retried for 30 s
        await asyncio.wait_for(transport.publish(stream, request(1)), 2)
    with pytest.raises(TransportError, match="the transport is closed"):
        await asyncio.wait_for(transport.coordinator().claim("s", ["r"], ttl=10), 2)
    with pytest.raises(TransportError, match="the transport is closed"):
        await asyncio.wait_for(transport.read(Subscription(stream, "g", "c1", AgentRequestEvent), 1), 2)


async def test_closing_the_transport_ends_a_read_in_flight(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    stream = transport.names.requests
    await transport.ensure_group(stream, "g")
    reading = asyncio.create_task(
        transport.read(Subscription(stream, "g", "c1", AgentRequestEvent, block=5.0), 1)
    )
    await asyncio.sleep(0.05)  # blocked in Redis
    await transport.aclose()

    with pytest.raises(TransportError, match="the transport is closed"):
        await asyncio.wait_for(reading, 2)  # at once, not after the block or a retry deadline
    assert not [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]  # not an outage


async def test_out_of_band_pushes_are_not_taken_for_replies(redis_url: str) -> None:
    """RESP3 lets the server push messages between replies (here: client-side caching
    invalidations); the calls after them still get their own replies."""
    client = Redis.from_url(redis_url, protocol=3)
    admin = Redis.from_url(redis_url)
    auto = AutoPipeline(client)
    key = f"autopipeline:{uuid.uuid4()}"
    try:
        assert await auto.command("CLIENT", "TRACKING", "ON") == b"OK"
        connection = await connection_id(auto)
        await admin.set(key, "first")
        assert await auto.command("GET", key) == b"first"  # now tracked: a change is pushed to us
        await admin.set(key, "changed")
        await asyncio.sleep(0.05)  # the invalidation push has arrived
        replies = await asyncio.gather(*(auto.command("ECHO", f"reply {n}") for n in range(3)))
        await admin.set(key, "again")  # a push between two replies of one batch's worth
        after = await asyncio.gather(auto.command("ECHO", "last"), auto.command("GET", key))
        still = await connection_id(auto)
    finally:
        await auto.aclose()
        await client.aclose()
        await admin.delete(key)
        await admin.aclose()
    assert replies == [f"reply {n}".encode() for n in range(3)]
    assert after == [b"last", b"again"]
    assert still == connection  # the pushes did not break the connection either
