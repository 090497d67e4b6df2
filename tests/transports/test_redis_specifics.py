"""Behaviour only the Redis backend has: client settings, deleted entries, client ownership."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from dynamic_agents._validation import MAX_SECONDS
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, ResponseStatus, StreamNames
from dynamic_agents.exceptions import ConfigurationError, TransportError
from dynamic_agents.transports import ClaimStatus, CompletedRecord, RedisStreamsTransport, Reply, Subscription
from dynamic_agents.transports.redis import _record_head
from tests.support.waiting import wait_until

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


async def test_read_stream_after_dollar_counts_from_the_call_even_when_it_is_retried(
    redis_url: str, redis_prefix: str
) -> None:
    """``after="$"`` is after the newest entry *when the call starts*: a read retried after its
    connection was lost sent ``"$"`` again, so an entry that came between the two attempts was
    never seen by a caller tailing the stream."""
    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    stream = f"{redis_prefix}:tail"
    await transport.publish(stream, event("old"))
    real_read, attempts = transport._xread, 0

    async def lost_once(*args: Any) -> object:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # Redis is asked, another process publishes, the reply is lost
            await transport.publish(stream, event("meanwhile"))
            raise RedisConnectionError("Connection reset by peer")
        return await real_read(*args)

    transport._xread = lost_once  # type: ignore[method-assign]
    try:
        entries = await asyncio.wait_for(
            transport.read_stream(stream, AgentRequestEvent, after="$", block=0.5), 10
        )
        assert attempts == 2
        assert [entry.event.content for entry in entries] == ["meanwhile"]
    finally:
        await transport.aclose()


async def test_a_claim_whose_reply_was_lost_holds_the_lease_it_took(
    redis_url: str, redis_prefix: str
) -> None:
    """Redis took the lease, the reply never came: the retry must see the lease as its own, not busy."""
    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    coordinator = transport.coordinator()
    batched = transport._pipeline.batched
    attempts = 0

    async def reply_lost(*args: Any) -> object:
        nonlocal attempts
        attempts += 1
        reply = await batched(*args)
        if attempts == 1:
            raise ConnectionError("connection lost before the reply was read")
        return reply

    transport._pipeline.batched = reply_lost  # type: ignore[assignment,method-assign]
    try:
        claim = await coordinator.claim("s", ["a"], ttl=60)
        assert attempts == 2
        assert claim.status is ClaimStatus.LEASED
        assert claim.lease is not None
        assert await coordinator.holder("s") == "a"
        assert await coordinator.renew(claim.lease)  # the token Redis holds is the one returned
    finally:
        await transport.aclose()


async def test_an_acquire_whose_reply_was_lost_holds_the_lease_it_took(
    redis_url: str, redis_prefix: str
) -> None:
    """As for a claim: Redis ran the SET NX, the reply never came, and the retry's SET NX finds the
    lease taken — by this very call. It must return the lease, not ``None`` (busy) with the lease
    left held, by nobody who knows it, until its ttl."""
    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    coordinator = transport.coordinator()
    command = transport._pipeline.command
    attempts = 0

    async def reply_lost(*args: Any, **kwargs: Any) -> object:
        nonlocal attempts
        reply = await command(*args, **kwargs)
        if args[0] == "SET":
            attempts += 1
            if attempts == 1:
                raise ConnectionError("connection lost before the reply was read")
        return reply

    transport._pipeline.command = reply_lost  # type: ignore[assignment,method-assign]
    try:
        lease = await coordinator.acquire("s", ttl=60, holder="a")
        assert attempts == 2
        assert lease is not None
        assert await coordinator.holder("s") == "a"
        assert await coordinator.renew(lease)  # the token Redis holds is the one returned
    finally:
        await transport.aclose()


@given(
    request_id=st.text(),
    response_id=st.text(),
    status=st.sampled_from([str(s) for s in ResponseStatus]),
    reply_stream=st.none() | st.text(min_size=1),
    reply_entry_id=st.none() | st.from_regex(r"\A[0-9]{1,13}-[0-9]{1,5}\Z"),
    completed_at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_a_record_written_by_the_complete_script_is_the_record_as_stored(
    request_id: str,
    response_id: str,
    status: str,
    reply_stream: str | None,
    reply_entry_id: str | None,
    completed_at: float,
) -> None:
    """The script ends the caller's head with the reply entry id: that must parse to the fields a
    record is stored as (:meth:`CompletedRecord.to_fields`), whatever the strings hold."""
    record = CompletedRecord(request_id, response_id, status, reply_stream, reply_entry_id, completed_at)
    head = _record_head(request_id, response_id, status, reply_stream, completed_at)
    stored = head + (reply_entry_id or "") + '"}'
    assert json.loads(stored) == record.to_fields()
    assert CompletedRecord.from_fields(json.loads(stored)) == record


async def test_a_lease_taken_for_an_answered_request_that_cannot_be_given_back_still_answers(
    redis_url: str, redis_prefix: str
) -> None:
    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    coordinator = transport.coordinator()
    await coordinator.set_record(CompletedRecord("a", "r", "completed", None, None, 0.0), ttl=60)

    async def unreachable(lease: object) -> bool:
        raise TransportError("release a lease failed: Redis is unreachable")

    coordinator.release = unreachable  # type: ignore[method-assign,assignment]
    try:
        claim = await coordinator.claim("s", ["a"], ttl=0.5)
        assert (claim.status, claim.request_ids) == (ClaimStatus.ANSWERED, frozenset({"a"}))
        assert await coordinator.holder("s") == "a"  # left to its ttl
        await asyncio.sleep(0.7)
        assert await coordinator.holder("s") is None
    finally:
        await transport.aclose()


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("operation_timeout", float("nan")),
        ("operation_timeout", float("inf")),
        ("retry_base", 0.0),
        ("retry_base", float("nan")),
        ("retry_cap", -1.0),
        ("retry_cap", float("inf")),
        ("retry_deadline", -1.0),
        ("retry_deadline", float("nan")),
    ],
)
def test_retry_settings_that_are_not_valid_numbers_are_refused(
    redis_url: str, setting: str, value: float
) -> None:
    """A zero or NaN backoff made a read retry in a busy loop while Redis was away; a NaN
    operation_timeout bounded nothing."""
    with pytest.raises(ConfigurationError, match=rf"^{setting} must be .*, got {value!r}$"):
        RedisStreamsTransport.from_url(redis_url, **{setting: value})


def reply_lost_once(transport: RedisStreamsTransport, name: str) -> list[int]:
    """Make ``transport.<name>`` run, then fail its first call as a connection lost before the
    reply was read (the server did the work); returns the attempt counter."""
    real = getattr(transport, name)
    attempts = [0]

    async def lost(*args: Any, **kwargs: Any) -> object:
        attempts[0] += 1
        reply = await real(*args, **kwargs)
        if attempts[0] == 1:
            raise ConnectionError("connection lost before the reply was read")
        return reply

    setattr(transport, name, lost)
    return attempts


async def test_a_dead_letter_whose_reply_was_lost_reports_what_its_first_attempt_did(
    redis_transport: RedisStreamsTransport, redis_prefix: str
) -> None:
    """The retry finds the entry no longer held (the first attempt acked it): it must report the
    dead letter written, not "not held"; and write it once."""
    stream = f"{redis_prefix}:requests"
    await redis_transport.ensure_group(stream, "g")
    await redis_transport.publish(stream, event())
    (delivery,) = await redis_transport.read(subscription(stream), 1)
    attempts = reply_lost_once(redis_transport, "_dead_letter")

    assert await redis_transport.dead_letter(delivery, "poison")

    assert attempts == [2]
    dead = await redis_transport.read_stream(redis_transport.names.dead_letters, AgentRequestEvent)
    assert [d.fields[b"dead_letter.reason"] for d in dead] == [b"poison"]
    assert redis_transport.stats.dead_lettered == 1
    assert not await redis_transport.dead_letter(delivery, "again")  # a new call: not held


@pytest.mark.parametrize("size", [1, 4100], ids=["script", "thousands-of-fields"])
async def test_a_move_whose_reply_was_lost_returns_the_entry_its_first_attempt_wrote(
    redis_transport: RedisStreamsTransport, redis_prefix: str, size: int
) -> None:
    source, destination = f"{redis_prefix}:dead", f"{redis_prefix}:back"
    fields = {f"f{n}".encode(): b"x" for n in range(size)}
    entry_id = await redis_transport.publish_fields(source, fields)
    attempts = reply_lost_once(redis_transport, "_move" if size == 1 else "_watched")

    new_id = await redis_transport.move(source, entry_id, destination, fields)

    assert attempts == [2]
    (moved,) = await redis_transport.read_stream(destination, AgentRequestEvent)
    assert (new_id, dict(moved.fields)) == (moved.entry_id, fields)
    assert await redis_transport.read_stream(source, AgentRequestEvent) == []
    assert await redis_transport.move(source, entry_id, destination, fields) is None  # a new call


async def test_dead_letters_and_moves_leave_the_documented_call_markers(
    redis_url: str, redis_prefix: str, redis_client: Redis
) -> None:
    """What docs/transports.md tells operators: each dead letter or move that wrote an entry leaves
    one key ``<stream written to>:call:<24 hex>`` holding that entry's id, expiring after
    ``retry_deadline + operation_timeout``; a call that wrote nothing leaves none."""
    names = StreamNames(redis_prefix)
    transport = RedisStreamsTransport.from_url(
        redis_url, names=names, retry_deadline=2.0, operation_timeout=1.0
    )

    async def markers() -> dict[str, tuple[bytes, int]]:
        found: dict[str, tuple[bytes, int]] = {}
        async for key in redis_client.scan_iter(match=f"{redis_prefix}*:call:*"):
            found[key.decode()] = (await redis_client.get(key), await redis_client.pttl(key))
        return found

    try:
        await transport.ensure_group(names.requests, "g")
        await transport.publish(names.requests, event())
        (delivery,) = await transport.read(subscription(names.requests), 1)
        assert await transport.dead_letter(delivery, "poison")
        assert not await transport.dead_letter(delivery, "again")  # no longer held: no marker
        (dead,) = await transport.read_stream(names.dead_letters, AgentRequestEvent)
        new_id = await transport.move(names.dead_letters, dead.entry_id, names.requests, dead.fields)
        assert new_id is not None
        assert await transport.move(names.dead_letters, dead.entry_id, names.requests, dead.fields) is None

        found = await markers()
        assert {key.rpartition(":call:")[0] for key in found} == {names.dead_letters, names.requests}
        assert all(re.fullmatch(r"[0-9a-f]{24}", key.rpartition(":call:")[2]) for key in found)
        by_stream = {key.rpartition(":call:")[0]: value for key, value in found.items()}
        assert by_stream[names.dead_letters][0] == dead.entry_id.encode()
        assert by_stream[names.requests][0] == new_id.encode()
        assert all(0 < ttl <= 3000 for _, ttl in found.values())
    finally:
        await transport.aclose()


async def test_the_longest_duration_the_settings_take_is_one_redis_takes(
    redis_url: str, redis_prefix: str
) -> None:
    """MAX_SECONDS (2**31 s) in every place a duration reaches Redis in milliseconds: lease and
    record PX, PEXPIRE of a stream, XAUTOCLAIM's min-idle, XREADGROUP's BLOCK (1e30 failed there
    as a TransportError, like an outage)."""
    stream = f"{redis_prefix}:longest"
    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    coordinator = transport.coordinator()
    try:
        await transport.ensure_group(stream, "g")
        await transport.publish(stream, event(), expire=MAX_SECONDS)
        longest = subscription(stream, block=MAX_SECONDS, claim_min_idle=MAX_SECONDS, claim_ttl=MAX_SECONDS)
        (delivery,) = await transport.read(longest, 1)
        assert await transport.client.pttl(stream) > 0
        lease = await coordinator.acquire("s-longest", MAX_SECONDS)
        assert lease is not None
        assert await coordinator.renew(lease, MAX_SECONDS)
        await coordinator.request_cancel("r-longest", MAX_SECONDS)
        reply = Reply(
            AgentResponseEvent(request_id=delivery.event.id), f"{stream}:replies", expire=MAX_SECONDS
        )
        await transport.complete(delivery, reply, record_ttl=MAX_SECONDS, lease=lease)
        assert await transport.client.pttl(f"{stream}:replies") > 0
        assert await transport.pending(stream, "g") == []
    finally:
        await coordinator.aclose()
        await transport.aclose()


async def test_a_completion_whose_reply_was_lost_reports_the_answer_its_first_attempt_wrote(
    redis_transport: RedisStreamsTransport, redis_prefix: str
) -> None:
    """The retry finds the request's record, written by this call's own first attempt (a
    connection lost, or a timeout, once Redis had run the script): it is this call's answer,
    created, not an earlier one (a worker counted its own answer a duplicate, and published no
    run.completed for it); and the reply is written once."""
    stream, reply_stream = f"{redis_prefix}:requests", f"{redis_prefix}:replies"
    await redis_transport.ensure_group(stream, "g")
    await redis_transport.publish(stream, event())
    (delivery,) = await redis_transport.read(subscription(stream), 1)
    lease = await redis_transport.coordinator().acquire("s", ttl=60)
    assert lease is not None
    response = AgentResponseEvent(request_id=delivery.event.id, content="done")
    attempts = reply_lost_once(redis_transport._pipeline, "batched")  # type: ignore[arg-type]

    completion = await redis_transport.complete(
        delivery, Reply(response, reply_stream), record_ttl=60, lease=lease
    )

    assert attempts == [2]
    (written,) = await redis_transport.read_stream(reply_stream, AgentResponseEvent)
    assert completion.created
    record = completion.record
    assert (record.response_id, record.reply_entry_id) == (response.id, written.entry_id)
    assert redis_transport.stats.acked == 1
    assert await redis_transport.pending(stream, "g") == []
    later = AgentResponseEvent(request_id=delivery.event.id, content="again")  # another answer: a duplicate
    again = await redis_transport.complete(delivery, Reply(later, reply_stream), record_ttl=60)
    assert not again.created
    assert again.record.response_id == response.id


async def test_calls_retrying_when_the_transport_closes_fail_at_once() -> None:
    """Redis away (nothing listens on the port): a call retrying when ``aclose()`` came went on
    retrying until its ``retry_deadline`` (here an hour; 30 s by default), where a read fails at
    once. Each fails at its next attempt now, with a TransportError saying the transport is closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    transport = RedisStreamsTransport.from_url(url, retry_deadline=3600.0, retry_cap=0.05)
    calls = [
        asyncio.create_task(transport.last_entry_id("s")),
        asyncio.create_task(transport.ensure_group("s", "g")),
        asyncio.create_task(transport.publish("s", event())),
        asyncio.create_task(transport.read(subscription("s"), 1)),
    ]
    await wait_until(lambda: transport.stats.reconnects >= 2 * len(calls), what="every call retrying")
    await transport.aclose()
    async with asyncio.timeout(10.0):  # bounds a hang: they would retry for an hour
        for call in calls:
            with pytest.raises(TransportError, match="the transport is closed"):
                await call
