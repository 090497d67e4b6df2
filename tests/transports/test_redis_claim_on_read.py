"""Session claims made in the round trip of the read that delivers a request (``claim_ttl``)."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from dynamic_agents.events import AgentRequestEvent, StreamNames
from dynamic_agents.events.envelope import DATA_FIELD, encode_envelope
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.testing import RedisServer
from dynamic_agents.transports import (
    ClaimStatus,
    CompletedRecord,
    InMemoryTransport,
    RedisStreamsTransport,
    Subscription,
)
from dynamic_agents.transports.redis import _CLAIM_ON_READ_MAX

pytestmark = pytest.mark.redis

TTL = 60.0


def subscription(stream: str, **overrides: object) -> Subscription[AgentRequestEvent]:
    settings: dict[str, object] = {
        "stream": stream,
        "group": "g",
        "consumer": "c1",
        "model": AgentRequestEvent,
        "block": 0.05,
        "claim_min_idle": None,
        "claim_ttl": TTL,
    }
    settings.update(overrides)
    return Subscription(**settings)  # type: ignore[arg-type]


def event(session: str, content: str = "hi") -> AgentRequestEvent:
    return AgentRequestEvent(
        source="slack", source_id="C1", user_id="U1", session_id=session, content=content
    )


async def ready(redis_transport: RedisStreamsTransport, stream: str) -> Subscription[AgentRequestEvent]:
    """A subscription past its first read, which only marks where new entries start."""
    sub = subscription(stream)
    await redis_transport.ensure_group(stream, "g")
    await redis_transport.publish(stream, event("warm-up"))
    [first] = await redis_transport.read(sub, 10)
    assert first.claim is None  # the first read does not know which entries are new
    await redis_transport.ack(first)
    return sub


async def leases(redis_client: Redis, names: StreamNames) -> list[bytes]:
    return [key async for key in redis_client.scan_iter(match=names.session_lease("*"))]


async def test_a_read_claims_the_sessions_of_the_requests_it_delivers(
    redis_transport: RedisStreamsTransport, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}:requests"
    coordinator = redis_transport.coordinator()
    sub = await ready(redis_transport, stream)
    first, other, second = event("s1"), event("s2"), event("s1")
    for request in (first, other, second):
        await redis_transport.publish(stream, request)

    deliveries = await redis_transport.read(sub, 10)

    claims = [delivery.claim for delivery in deliveries]
    assert [c.status if c else None for c in claims] == [
        ClaimStatus.LEASED,
        ClaimStatus.LEASED,
        ClaimStatus.BUSY,
    ]
    for delivery, request in zip(deliveries[:2], (first, other), strict=True):
        claim = delivery.claim
        assert claim is not None
        assert claim.lease is not None
        assert (claim.lease.session_id, claim.lease.ttl) == (request.session_id, TTL)
        assert await coordinator.holder(request.session_id) == request.id  # as Coordinator.claim names it
        assert await coordinator.renew(claim.lease)  # the token Redis holds is the one returned
    assert redis_transport.stats.claimed_on_read == 3
    # the lease is a lease like any other: a claim by someone else finds the session busy
    assert (await coordinator.claim("s1", ["x"], TTL)).status is ClaimStatus.BUSY


async def test_the_claim_travels_with_a_blocking_read(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    """Sent behind the blocking ``XREADGROUP`` on its connection, the claim costs no write of its own."""
    stream = f"{redis_prefix}:requests"
    await ready(redis_transport, stream)
    [reader] = redis_transport._all_readers
    writes = reader.writes

    reading = asyncio.create_task(redis_transport.read(subscription(stream, block=2.0), 10))
    await asyncio.sleep(0.1)
    await redis_transport.publish(stream, event("s1"))
    [delivery] = await reading

    assert delivery.claim is not None
    assert delivery.claim.status is ClaimStatus.LEASED
    assert reader.writes == writes + 1
    assert await redis_client.exists(StreamNames(redis_prefix).session_lease("s1")) == 1


async def test_requests_answered_or_cancelled_before_give_their_lease_back(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    stream, names = f"{redis_prefix}:requests", StreamNames(redis_prefix)
    coordinator = redis_transport.coordinator()
    sub = await ready(redis_transport, stream)
    answered, cancelled = event("s1"), event("s2")
    await coordinator.set_record(CompletedRecord(answered.id, "r", "completed", None, None, 0.0), ttl=60)
    await coordinator.request_cancel(cancelled.id)
    await redis_transport.publish(stream, answered)
    await redis_transport.publish(stream, cancelled)

    first, second = await redis_transport.read(sub, 10)

    assert first.claim is not None
    assert second.claim is not None
    assert (first.claim.status, first.claim.request_ids) == (ClaimStatus.ANSWERED, frozenset({answered.id}))
    assert (second.claim.status, second.claim.request_ids) == (
        ClaimStatus.CANCELLED,
        frozenset({cancelled.id}),
    )
    assert await redis_client.exists(names.session_lease("s1"), names.session_lease("s2")) == 0


async def test_an_entry_that_does_not_decode_leaves_no_lease(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    """The script reads session and request ids from the JSON; the model refuses the rest: the
    entry is dead-lettered and the lease the script took given back."""
    stream, names = f"{redis_prefix}:requests", StreamNames(redis_prefix)
    sub = await ready(redis_transport, stream)
    body = json.dumps({"id": "r1", "session_id": "s1", "content": 42}).encode()
    await redis_client.xadd(stream, {DATA_FIELD: encode_envelope(body, {})})

    [delivery] = await redis_transport.read(sub, 10)

    assert delivery.settled
    assert delivery.claim is None
    assert await redis_client.exists(names.session_lease("s1")) == 0
    assert await redis_client.xlen(names.dead_letters) == 1


async def test_entries_the_read_did_not_return_give_their_lease_back(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    """An earlier read whose reply was lost left entries pending on this consumer, unseen: the
    next read's claim takes their leases too, and gives them back."""
    stream, names = f"{redis_prefix}:requests", StreamNames(redis_prefix)
    sub = await ready(redis_transport, stream)
    lost = event("lost")
    await redis_transport.publish(stream, lost)
    await redis_client.xreadgroup("g", "c1", {stream: ">"}, count=10)  # delivered; the reply "lost"
    await redis_transport.publish(stream, event("s1"))

    [delivery] = await redis_transport.read(sub, 10)

    assert delivery.event.session_id == "s1"
    assert delivery.claim is not None
    assert delivery.claim.status is ClaimStatus.LEASED
    assert await redis_client.exists(names.session_lease("lost")) == 0
    assert await redis_client.exists(names.session_lease("s1")) == 1


async def test_entries_of_other_consumers_between_its_own_are_not_claimed(redis_server: RedisServer) -> None:
    """On a private server, whose ``SET`` count is this test's alone."""
    names = StreamNames("{t}")
    transport = RedisStreamsTransport.from_url(redis_server.url, names=names)
    client = Redis.from_url(redis_server.url)
    try:
        stream = names.requests
        sub = await ready(transport, stream)
        for session in ("lost", "theirs", "ours"):
            await transport.publish(stream, event(session))
        await client.xreadgroup("g", "c1", {stream: ">"}, count=1)  # "lost": this consumer's, unseen
        await client.xreadgroup("g", "c2", {stream: ">"}, count=1)  # "theirs": another consumer's
        sets_before = await set_calls(client)

        [delivery] = await transport.read(sub, 10)

        assert delivery.event.session_id == "ours"
        assert await leases(client, names) == [names.session_lease("ours").encode()]
        # "lost" (given back) and "ours" were claimed; "theirs" never was, not even for a moment
        assert await set_calls(client) - sets_before == 2
    finally:
        await transport.aclose()
        await client.aclose()


async def set_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_set", {}).get("calls", 0))


async def test_requests_the_script_cannot_read_are_left_unclaimed(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    """FastStream's JSON envelope and the seed's publish shape (no session id) are claimed by
    the caller the usual way."""
    stream, names = f"{redis_prefix}:requests", StreamNames(redis_prefix)
    sub = await ready(redis_transport, stream)
    request = event("s1")
    legacy = json.dumps({"data": request.model_dump_json(), "headers": {}})
    await redis_client.xadd(stream, {DATA_FIELD: legacy})
    seed = {"id": "r2", "source": "slack", "source_id": "C1", "user_id": "U1", "content": "hi"}
    await redis_client.xadd(stream, {DATA_FIELD: encode_envelope(json.dumps(seed).encode(), {})})

    deliveries = await redis_transport.read(sub, 10)

    assert [d.event.id for d in deliveries] == [request.id, "r2"]
    assert [d.claim for d in deliveries] == [None, None]
    assert await leases(redis_client, names) == []


async def test_a_session_id_in_any_script_is_claimed_under_the_key_python_names(
    redis_transport: RedisStreamsTransport, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}:requests"
    coordinator = redis_transport.coordinator()
    sub = await ready(redis_transport, stream)
    session = "sessão ☃ 会话"
    await redis_transport.publish(stream, event(session))

    [delivery] = await redis_transport.read(sub, 10)

    assert delivery.claim is not None
    assert delivery.claim.lease is not None
    assert delivery.claim.lease.session_id == session
    assert await coordinator.holder(session) == delivery.event.id
    assert await coordinator.release(delivery.claim.lease)


async def test_ids_the_script_would_have_to_unescape_are_left_unclaimed(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    """The script finds ids by pattern: a JSON escape in one is left to the caller."""
    stream, names = f"{redis_prefix}:requests", StreamNames(redis_prefix)
    sub = await ready(redis_transport, stream)
    sessions = ['say "hi"', "back\\slash", "tab\there"]
    for session in sessions:
        await redis_transport.publish(stream, event(session))

    deliveries = await redis_transport.read(sub, 10)

    assert [d.event.session_id for d in deliveries] == sessions
    assert [d.claim for d in deliveries] == [None, None, None]
    assert await leases(redis_client, names) == []


async def test_a_nested_id_found_first_is_given_back(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    """Another publisher may put members in any order: the ids the script found are checked
    against the decoded request, and a lease taken for the wrong ones given back."""
    stream, names = f"{redis_prefix}:requests", StreamNames(redis_prefix)
    sub = await ready(redis_transport, stream)
    request = event("s1")
    members = request.model_dump(mode="json", exclude={"metadata"})
    body = {"metadata": {"id": "nested", "session_id": "nested"}, **members}  # nested ones first
    await redis_client.xadd(stream, {DATA_FIELD: encode_envelope(json.dumps(body).encode(), {})})

    [delivery] = await redis_transport.read(sub, 10)

    assert (delivery.event.id, delivery.event.session_id) == (request.id, "s1")
    assert delivery.event.metadata == {"id": "nested", "session_id": "nested"}
    assert delivery.claim is None
    assert await leases(redis_client, names) == []


async def test_sessions_the_caller_skips_are_not_claimed(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    stream, names = f"{redis_prefix}:requests", StreamNames(redis_prefix)
    sub = await ready(redis_transport, stream)
    await redis_transport.publish(stream, event("busy here"))
    await redis_transport.publish(stream, event("s2"))

    skipped, claimed = await redis_transport.read(sub, 10, skip_sessions={"busy here", "s3"})

    assert skipped.claim is None
    assert claimed.claim is not None
    assert claimed.claim.status is ClaimStatus.LEASED
    assert await leases(redis_client, names) == [names.session_lease("s2").encode()]


@pytest.mark.parametrize("n", [_CLAIM_ON_READ_MAX, _CLAIM_ON_READ_MAX + 1])
async def test_a_read_of_many_new_requests_leaves_them_to_plain_claims(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis, n: int
) -> None:
    """Claims of a big batch cost Redis less as plain commands in one write, and share its round trip."""
    stream, names = f"{redis_prefix}:requests", StreamNames(redis_prefix)
    sub = await ready(redis_transport, stream)
    await redis_transport.publish_many(stream, [event(f"s{k}") for k in range(n)])

    deliveries = await redis_transport.read(sub, 100)

    claimed = n <= _CLAIM_ON_READ_MAX
    assert [d.claim is not None for d in deliveries] == [claimed] * n
    assert len(await leases(redis_client, names)) == (n if claimed else 0)


async def test_a_server_that_forgot_the_script_still_claims(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    """After a restart or ``SCRIPT FLUSH`` the script is loaded again and its call sent again,
    behind the read it followed."""
    stream = f"{redis_prefix}:requests"
    sub = await ready(redis_transport, stream)
    await redis_client.script_flush()
    await redis_transport.publish(stream, event("s1"))

    [delivery] = await redis_transport.read(sub, 10)

    assert delivery.claim is not None
    assert delivery.claim.status is ClaimStatus.LEASED


async def test_a_group_lost_between_reads_is_recreated_and_read_again(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    """``NOGROUP`` answers the read and the script behind it: the group is recreated and the
    entries read; the script's error is dropped with the read's."""
    stream = f"{redis_prefix}:requests"
    sub = await ready(redis_transport, stream)
    await redis_transport.publish(stream, event("s1"))
    await redis_client.xgroup_destroy(stream, "g")

    deliveries = await redis_transport.read(sub, 10)

    assert [d.event.session_id for d in deliveries] == ["warm-up", "s1"]  # recreated at 0
    assert redis_transport.stats.groups_recreated == 1


async def test_without_claim_ttl_a_read_claims_nothing(
    redis_transport: RedisStreamsTransport, redis_prefix: str, redis_client: Redis
) -> None:
    stream = f"{redis_prefix}:requests"
    sub = subscription(stream, claim_ttl=None)
    await redis_transport.ensure_group(stream, "g")
    for _ in range(2):
        await redis_transport.publish(stream, event("s1"))
        [delivery] = await redis_transport.read(sub, 10)
        assert delivery.claim is None
        await redis_transport.ack(delivery)
    assert await redis_client.exists(StreamNames(redis_prefix).session_lease("s1")) == 0


async def test_the_in_memory_transport_leaves_claims_to_the_caller() -> None:
    transport = InMemoryTransport()
    sub = subscription("requests")
    await transport.ensure_group("requests", "g")
    for _ in range(2):
        await transport.publish("requests", event("s1"))
        [delivery] = await transport.read(sub, 10)
        assert delivery.claim is None


def test_claim_ttl_must_be_positive() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^claim_ttl must be a finite number of seconds > 0 \(or None\), got 0$"
    ):
        subscription("s", claim_ttl=0)
