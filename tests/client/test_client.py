"""AgentClient against a worker, on real Redis (and, where no worker is needed, in memory)."""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import json
import logging
import math
import typing
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from dynamic_agents.client import AgentClient
from dynamic_agents.client import client as client_module
from dynamic_agents.events import (
    AgentRequestEvent,
    AgentResponseEvent,
    EventCodec,
    ResponseStatus,
    StreamNames,
    Target,
    TargetType,
)
from dynamic_agents.exceptions import (
    ConfigurationError,
    DeliveryError,
    EventTooLargeError,
    EventValidationError,
    NoRouteError,
    TransportError,
    UnsupportedSchemaVersionError,
)
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.routing import EventRouter, RoutingConfig
from dynamic_agents.testing import RedisServer
from dynamic_agents.transports import (
    CompletedRecord,
    Delivery,
    InMemoryTransport,
    ManualClock,
    RedisStreamsTransport,
    Reply,
    Subscription,
    Transport,
)
from dynamic_agents.worker import AgentWorker, WorkerSettings
from tests.support.waiting import wait_until


@pytest.fixture
async def names(redis_prefix: str) -> StreamNames:
    return StreamNames(redis_prefix)


@pytest.fixture
async def running_worker(redis_url: str, names: StreamNames) -> AsyncIterator[AgentWorker]:
    transport = RedisStreamsTransport.from_url(redis_url, names=names)

    async def answer(target: Target, request: AgentRequestEvent) -> str:
        await asyncio.sleep(0.001)
        return f"re: {request.content}"

    worker = AgentWorker(
        transport,
        transport.coordinator(),
        EventRouter(default=Target(type=TargetType.AGENT, id="echo")),
        FunctionExecutor(answer),
        settings=WorkerSettings(concurrency=64, batch_size=64, block=0.05),
    )
    async with worker:
        yield worker
    await transport.aclose()


@pytest.mark.redis
async def three_replies(transport: Transport) -> str:
    """A channel's reply stream holding the replies to ``r0``, ``r1``, ``r2``; its name."""
    stream = transport.names.responses("discord", "555")
    for n in range(3):
        await transport.publish(stream, AgentResponseEvent(request_id=f"r{n}", content=f"answer {n}"))
    return stream


async def test_a_thousand_concurrent_requests_over_sixteen_reply_streams(
    redis_url: str, names: StreamNames, running_worker: AgentWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    readers_started: list[str] = []  # a reader starts at the stream's last entry id
    last_entry_id = transport.last_entry_id

    async def starting_a_reader(stream: str) -> str:
        readers_started.append(stream)
        return await last_entry_id(stream)

    monkeypatch.setattr(transport, "last_entry_id", starting_a_reader)
    # Every call waits before any is published: no stream's waiters can all be answered (and its
    # reader stop, rightly) while others are still to come, however the machine schedules them.
    publish, all_waiting, held = transport.publish, asyncio.Event(), 0

    async def once_all_wait(stream: str, event: Any, **options: Any) -> str:
        nonlocal held
        held += 1
        if held == 1000:
            all_waiting.set()
        await all_waiting.wait()
        return await publish(stream, event, **options)

    monkeypatch.setattr(transport, "publish", once_all_wait)
    async with AgentClient(transport, block=0.05) as client:

        async def ask(n: int) -> AgentResponseEvent:
            channel = f"c{n % 16}"
            request = AgentRequestEvent(
                source="rest",
                source_id=channel,
                user_id="u",
                content=f"question {n}",
                session_id=f"s{n}",
                reply_stream=names.responses("rest", channel),
            )
            reply = await client.request(request, timeout=60)
            assert reply.request_id == request.id
            return reply

        replies = await asyncio.gather(*(ask(n) for n in range(1000)))
        assert sorted(r.content for r in replies) == sorted(f"re: question {n}" for n in range(1000))
        assert len(readers_started) == len(set(readers_started)) == 16
    await transport.aclose()


@pytest.mark.redis
async def test_a_reply_written_the_moment_the_request_lands_is_not_missed(
    redis_url: str, names: StreamNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    publish = transport.publish

    async def publish_and_answer_at_once(stream: str, event: Any, **options: Any) -> str:
        entry_id = await publish(stream, event, **options)
        if isinstance(event, AgentRequestEvent) and event.reply_stream:
            await publish(event.reply_stream, AgentResponseEvent(request_id=event.id, content="instant"))
        return entry_id

    monkeypatch.setattr(transport, "publish", publish_and_answer_at_once)
    async with AgentClient(transport, block=0.05) as client:
        request = AgentRequestEvent(
            source="rest",
            source_id="fast",
            user_id="u",
            content="x",
            reply_stream=names.responses("rest", "fast"),
        )
        reply = await client.request(request, timeout=5)
        assert reply.content == "instant"
    await transport.aclose()


@pytest.mark.redis
async def test_build_request_from_a_platform_event(redis_url: str, names: StreamNames) -> None:
    routing = RoutingConfig.from_yaml(
        """
discord:
  routing:
    default_agent: discord-assistant
    rules:
      - name: Support Guild
        guild_ids: ["987654321"]
        team_id: support-team
  session:
    prefix: dc
"""
    )
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    client = AgentClient(transport, routing=routing)
    platform_event: dict[str, Any] = {
        "id": "1234567890123",
        "channel_id": "555",
        "guild_id": "987654321",
        "user_id": "42",
        "user_name": "ana",
        "content": "help",
    }
    request = client.build_request("discord", platform_event)
    assert (request.id, request.session_id, request.team_id) == ("1234567890123", "dc:555", "support-team")
    assert request.reply_stream == names.responses("discord", "555")
    assert request.metadata == {"guild_id": "987654321"}
    await transport.aclose()


async def test_build_request_reads_the_source_as_the_event_does() -> None:
    """The event lower-cases its source ("Discord" is "discord"): the interface's session prefix,
    the session id and the reply stream follow the same name."""
    routing = RoutingConfig.from_yaml(
        "discord:\n  routing:\n    default_agent: a\n  session:\n    prefix: dc\n"
    )
    transport = InMemoryTransport(names=StreamNames("client"))
    client = AgentClient(transport, routing=routing)
    request = client.build_request("Discord", {"channel_id": "555", "user_id": "42", "content": "hi"})
    assert (request.source, request.session_id) == ("discord", "dc:555")
    assert request.reply_stream == transport.names.responses("discord", "555")
    await transport.aclose()


async def test_build_request_with_routing_and_no_route_raises_as_the_router_does() -> None:
    """With ``routing``, ``build_request`` routes as ``EventRouter.route`` does: no rule, source
    default or global default is a ``NoRouteError`` (a ``LookupError``) naming the source and
    channel, not a request the worker would answer with an error. Without ``routing`` the target
    is left to the worker's router."""
    routing = RoutingConfig.from_yaml("discord:\n  routing:\n    default_agent: a\n")
    transport = InMemoryTransport(names=StreamNames("client"))
    with pytest.raises(NoRouteError, match="no route for slack:C1") as caught:
        AgentClient(transport, routing=routing).build_request("slack", {"channel_id": "C1", "content": "hi"})
    assert isinstance(caught.value, LookupError)
    unrouted = AgentClient(transport).build_request("slack", {"channel_id": "C1", "content": "hi"})
    assert (unrouted.agent_id, unrouted.team_id, unrouted.workflow_id) == (None, None, None)
    await transport.aclose()


@pytest.mark.parametrize("user", [{}, {"user_id": None}])
async def test_build_request_without_a_user_has_an_empty_user_id(user: dict[str, Any]) -> None:
    transport = InMemoryTransport(names=StreamNames("client"))
    client = AgentClient(transport)
    request = client.build_request("webhook", {"channel_id": "555", "content": "hi", **user})
    assert request.user_id == ""
    assert request.metadata == {}
    await transport.aclose()


@pytest.mark.parametrize("channel_key", ["channel_id", "conversation_id", "chat_id"])
def test_build_request_keeps_an_event_id_and_channel_of_0(channel_key: str) -> None:
    """A falsy id or channel (a platform's numeric 0) was taken for a missing one: the id was
    replaced by a random one (a platform retry no longer deduplicated), the channel refused with
    "needs channel_id". Only a missing or None field is missing."""
    client = AgentClient(InMemoryTransport(names=StreamNames("client")))
    request = client.build_request("webhook", {"id": 0, channel_key: 0, "content": "hi"})
    assert (request.id, request.source_id, request.session_id) == ("0", "0", "webhook:0")
    assert request.reply_stream == client.names.responses("webhook", "0")
    fallback = client.build_request("webhook", {"id": None, "channel_id": None, "chat_id": 0})
    assert fallback.source_id == "0"
    empty_first = client.build_request("webhook", {"channel_id": "", "chat_id": 123})
    assert empty_first.source_id == "123"  # an empty channel is no channel: the next key is read
    assert fallback.id != "None"  # None: no platform id, a fresh one


@pytest.mark.parametrize("event", [{}, {"channel_id": None}, {"channel_id": ""}])
def test_build_request_without_a_channel_is_a_configuration_error(event: dict[str, Any]) -> None:
    client = AgentClient(InMemoryTransport(names=StreamNames("client")))
    with pytest.raises(ConfigurationError, match=r"a webhook event needs channel_id"):
        client.build_request("webhook", {"content": "hi", **event})


@pytest.mark.parametrize(("source", "start"), [("api", "an api event"), ("Email", "an email event")])
def test_a_source_said_with_a_vowel_is_an_x_event(source: str, start: str) -> None:
    """It read "a api event needs channel_id"."""
    client = AgentClient(InMemoryTransport(names=StreamNames("client")))
    with pytest.raises(ConfigurationError) as caught:
        client.build_request(source, {"content": "hi"})
    assert str(caught.value) == f"{start} needs channel_id (or conversation_id / chat_id)"


@pytest.mark.parametrize(
    ("source", "event", "message"),
    [
        (None, {"channel_id": "1"}, r"^source must be a str \(a platform slug\), got None"),
        (b"discord", {"channel_id": "1"}, r"^source must be a str \(a platform slug\), got a bytes"),
        ("discord", [("channel_id", "1")], r"^event must be a mapping of its fields, got list"),
    ],
)
def test_build_request_of_a_source_that_is_no_str_or_an_event_that_is_no_mapping_is_refused(
    source: object, event: object, message: str
) -> None:
    """docs/client.md: a ConfigurationError naming the argument, not a bare AttributeError."""
    client = AgentClient(InMemoryTransport(names=StreamNames("client")))
    with pytest.raises(ConfigurationError, match=message):
        client.build_request(source, event)  # type: ignore[arg-type]


def test_build_request_with_an_empty_event_id_is_a_typed_error_naming_it() -> None:
    """An empty id is not a missing one: refused, not replaced by a random id (which would leave a
    platform's retry undeduplicated)."""
    client = AgentClient(InMemoryTransport(names=StreamNames("client")))
    with pytest.raises(EventValidationError, match=r"\bid\b"):
        client.build_request("webhook", {"id": "", "channel_id": "c1"})


@pytest.mark.redis
async def test_responses_are_consumed_with_ack(redis_url: str, names: StreamNames) -> None:
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    client = AgentClient(transport, block=0.05)
    streams = [names.responses("discord", f"ch{n}") for n in range(3)]
    for n, stream in enumerate(streams):
        await transport.publish(stream, AgentResponseEvent(request_id=f"r{n}", content=f"answer {n}"))
    seen = []
    async for delivery in client.responses(streams, group="discord-interface", consumer="i1"):
        seen.append(delivery.event.content)
        await client.ack(delivery)
        if len(seen) == 3:
            break
    assert sorted(seen) == ["answer 0", "answer 1", "answer 2"]
    for stream in streams:
        assert await transport.pending(stream, "discord-interface") == []
    await transport.aclose()


@pytest.mark.redis
async def test_a_response_left_unacked_comes_back_after_claim_min_idle(
    redis_url: str, names: StreamNames
) -> None:
    """An interface that crashed (or whose platform refused a message) before acking: another
    consumer gets the reply once it has been idle ``claim_min_idle`` seconds."""
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    client = AgentClient(transport, block=0.05)
    stream = names.responses("discord", "ch0")
    await transport.publish(stream, AgentResponseEvent(request_id="r0", content="answer"))
    crashed = client.responses([stream], group="discord-interface", consumer="crashed", claim_min_idle=0.3)
    first = await anext(crashed)  # never acked
    await crashed.aclose()
    rescuer = client.responses([stream], group="discord-interface", consumer="rescuer", claim_min_idle=0.3)
    again = await asyncio.wait_for(anext(rescuer), 10)
    assert (again.event.request_id, again.entry_id) == ("r0", first.entry_id)
    assert again.delivery_count == 2
    await client.ack(again)
    await rescuer.aclose()
    assert await transport.pending(stream, "discord-interface") == []
    with pytest.raises(ConfigurationError, match=r"^claim_min_idle must be .* > 0, got 0$"):
        await anext(client.responses([stream], group="g", consumer="c", claim_min_idle=0))
    await transport.aclose()


@pytest.mark.redis
@pytest.mark.faststream
async def test_a_faststream_rpc_request_gets_its_reply(
    redis_url: str, names: StreamNames, running_worker: AgentWorker
) -> None:
    from faststream.redis import RedisBroker

    request = AgentRequestEvent(source="rest", source_id="rpc", user_id="u", content="ping over rpc")
    async with RedisBroker(redis_url) as broker:
        response = await broker.request(request.model_dump(mode="json"), stream=names.requests, timeout=10)
    body = AgentResponseEvent.model_validate_json(response.body)
    assert (body.request_id, body.content) == (request.id, "re: ping over rpc")


@pytest.mark.redis
@pytest.mark.faststream
@pytest.mark.parametrize("correlation_id", ["é-1", "c" * 70_000], ids=["not ASCII", "over 65535 bytes"])
async def test_a_faststream_rpc_request_whose_correlation_id_no_header_can_carry_gets_its_reply(
    redis_url: str, names: StreamNames, running_worker: AgentWorker, correlation_id: str
) -> None:
    """FastStream sends a non-ASCII correlation id (a legacy JSON envelope, any length), and the
    worker reads the request; no envelope header can carry it back (FastStream's reader cannot read
    a non-ASCII header, nor its writer write one over 65535 bytes). The reply carries its own id
    instead: the caller waits on its channel, not on the id. It was a reply the worker could not
    write: the request stayed pending, to be run again, and the caller timed out."""
    from faststream.redis import RedisBroker, RedisChannelMessage

    request = AgentRequestEvent(source="rest", source_id="rpc", user_id="u", content="ping over rpc")
    if not correlation_id.isascii():
        async with RedisBroker(redis_url) as broker:
            sent = request.model_dump(mode="json")
            response = await broker.request(
                sent, stream=names.requests, timeout=10, correlation_id=correlation_id
            )
    else:  # too long for FastStream's writer: a legacy JSON envelope carries it
        channel = f"{names.prefix}:rpc-reply"
        replied: asyncio.Future[RedisChannelMessage] = asyncio.get_running_loop().create_future()
        broker = RedisBroker(redis_url)

        @broker.subscriber(channel)
        async def caller(message: RedisChannelMessage) -> None:
            replied.set_result(message)

        headers = {"correlation_id": correlation_id, "reply_to": channel}
        legacy = json.dumps({"data": request.model_dump_json(), "headers": headers})
        async with broker:
            await broker.start()
            redis = Redis.from_url(redis_url)
            try:
                await redis.xadd(names.requests, {"__data__": legacy})
            finally:
                await redis.aclose()
            response = await asyncio.wait_for(replied, 10)
    body = AgentResponseEvent.model_validate_json(response.body)
    assert (body.request_id, body.content) == (request.id, "re: ping over rpc")
    assert response.correlation_id == body.id

    async def settled() -> bool:  # acked, not left pending to be run again
        return await running_worker.transport.pending(names.requests, running_worker.settings.group) == []

    await wait_until(settled, 10, "the request acked")


@pytest.mark.redis
@pytest.mark.faststream
async def test_a_reply_of_a_newer_major_schema_fails_the_request_waiting_for_it(
    redis_url: str, names: StreamNames
) -> None:
    """A FastStream worker of a newer major version answers: ``request()`` raises the
    ``UnsupportedSchemaVersionError`` saying so, instead of a ``TimeoutError`` once its whole
    timeout has run out (the reply was skipped with a warning, and the caller never saw why)."""
    from faststream.redis import RedisBroker, StreamSub

    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    request = _platform_request(names, "evt-major")
    broker = RedisBroker(redis_url)

    @broker.subscriber(stream=StreamSub(names.requests, group="newer-workers", consumer="w", last_id="0"))
    @broker.publisher(stream=names.responses("slack", "c1"))
    async def newer_worker(body: dict[str, Any]) -> dict[str, Any]:
        return {"schema_version": "2.0", "request_id": body["id"], "content": "from the future"}

    try:
        async with AgentClient(transport, block=0.05) as client, broker:
            await broker.start()
            with pytest.raises(UnsupportedSchemaVersionError, match=r"^schema_version '2\.0' is not"):
                await client.request(request, timeout=10)
    finally:
        await transport.aclose()


def _platform_request(names: StreamNames, request_id: str) -> AgentRequestEvent:
    return AgentRequestEvent(
        id=request_id,
        source="slack",
        source_id="c1",
        user_id="u1",
        content="hi",
        reply_stream=names.responses("slack", "c1"),
    )


async def test_a_waiter_that_times_out_leaves_another_waiter_of_the_same_request() -> None:
    """Two request() calls for one request id (a platform's retry of one event): the first timing
    out does not take the second's place."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    async with AgentClient(transport, block=0.05) as client:
        impatient = asyncio.create_task(client.request(_platform_request(names, "evt-1"), timeout=0.05))
        await asyncio.sleep(0)  # registered first
        patient = asyncio.create_task(client.request(_platform_request(names, "evt-1"), timeout=5))
        with pytest.raises(TimeoutError):
            await impatient
        reply = AgentResponseEvent(request_id="evt-1", content="ok")
        await transport.publish(names.responses("slack", "c1"), reply)
        assert (await patient).content == "ok"
    await transport.aclose()


async def test_every_waiter_of_one_request_gets_the_reply() -> None:
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    async with AgentClient(transport, block=0.05) as client:
        waiters = [
            asyncio.create_task(client.request(_platform_request(names, "evt-2"), timeout=30))
            for _ in range(3)
        ]
        await wait_published(transport, names.requests, 3)
        reply = AgentResponseEvent(request_id="evt-2", content="ok")
        await transport.publish(names.responses("slack", "c1"), reply)
        assert [(await waiter).content for waiter in waiters] == ["ok", "ok", "ok"]
        reader = client._readers[names.responses("slack", "c1")]
        assert reader.waiting == {}  # each took only its own future away
    await transport.aclose()


async def test_a_reply_stream_nobody_waits_on_any_more_is_not_read_forever() -> None:
    """A bot answers in many channels over a day: each channel's reader stops once its requests
    are answered (on Redis each one holds a connection in a blocking XREAD), and a later request
    there starts a fresh one and still gets its reply."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    async with AgentClient(transport, block=0.05) as client:
        for round_ in range(2):
            for channel in ("c1", "c2", "c3"):
                request = _platform_request(names, f"evt-{channel}-{round_}").model_copy(
                    update={"source_id": channel, "reply_stream": names.responses("slack", channel)}
                )
                asking = asyncio.create_task(client.request(request, timeout=10))
                await wait_published(transport, names.requests, 3 * round_ + int(channel[1]))
                await transport.publish(request.reply_stream or "", AgentResponseEvent(request_id=request.id))
                assert (await asking).request_id == request.id
            async with asyncio.timeout(5):
                while client._readers:  # noqa: ASYNC110 (the readers stop on their own)
                    await asyncio.sleep(0.01)
    await transport.aclose()


async def wait_published(transport: InMemoryTransport, stream: str, count: int) -> None:
    """Until ``count`` requests are on ``stream``: their waiters are registered by then."""
    async with asyncio.timeout(10):
        while len(await transport.read_stream(stream, AgentRequestEvent, count=count)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.mark.redis
async def test_a_retry_of_an_answered_request_gets_the_same_reply_without_a_second_run(
    redis_url: str, names: StreamNames, running_worker: AgentWorker
) -> None:
    """A platform retries an event (same id) after its reply was written: request() reads the reply
    back from where the completed-request record points, and publishes nothing."""
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    async with AgentClient(transport, block=0.05) as client:
        first = await client.request(_platform_request(names, "evt-retried"), timeout=30)
        assert first.content == "re: hi"
        async with AgentClient(transport, block=0.05) as retrying:  # another process, say
            again = await retrying.request(_platform_request(names, "evt-retried"), timeout=30)
        assert again == first
        assert len(await transport.read_stream(names.requests, AgentRequestEvent)) == 1
        assert running_worker.stats.completed == 1
    await transport.aclose()


async def test_a_retry_of_a_dead_lettered_request_gets_its_error_reply_without_a_run() -> None:
    """The worker set the request aside (delivered too often: it crashed workers) with an error
    reply and a record naming it: the platform's retry reads that reply back, publishes nothing."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    ran: list[str] = []

    async def answer(target: Target, request: AgentRequestEvent) -> str:
        ran.append(request.id)
        return "re: hi"

    poison = _platform_request(names, "evt-poison")
    await transport.ensure_group(names.requests, "dynamic-agents")
    await transport.publish(names.requests, poison)
    crashed = Subscription(names.requests, "dynamic-agents", "crashed", AgentRequestEvent, block=0)
    assert len(await transport.read(crashed, 1)) == 1  # a worker that died running it
    worker = AgentWorker(
        transport,
        transport.coordinator(),
        EventRouter(default=Target(type=TargetType.AGENT, id="echo")),
        FunctionExecutor(answer),
        settings=WorkerSettings(max_deliveries=1, claim_min_idle=0.01, block=0.01),
    )
    await asyncio.sleep(0.02)
    await worker.run_until_idle()
    assert worker.stats.dead_lettered == 1
    async with AgentClient(transport, block=0.05) as client:
        reply = await client.request(poison, timeout=5)
    assert (reply.request_id, reply.status) == ("evt-poison", ResponseStatus.ERROR)
    assert len(await transport.read_stream(names.requests, AgentRequestEvent)) == 1
    assert ran == []
    await transport.aclose()


async def test_a_retry_whose_earlier_reply_is_gone_is_a_delivery_error() -> None:
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    stream = names.responses("slack", "c1")
    record = CompletedRecord("evt-old", "resp-1", "completed", stream, "1700000000000-0", 1_700_000_000.0)
    assert await transport.coordinator().set_record(record, ttl=60)
    async with AgentClient(transport, block=0.05) as client:
        with pytest.raises(DeliveryError, match="no longer on"):
            await client.request(_platform_request(names, "evt-old"), timeout=5)
    assert await transport.read_stream(names.requests, AgentRequestEvent) == []
    await transport.aclose()


async def test_closing_the_client_ends_the_waits_of_request() -> None:
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    client = AgentClient(transport, block=0.05)
    waiting = asyncio.create_task(client.request(_platform_request(names, "evt-3"), timeout=30))
    await wait_published(transport, names.requests, 1)
    await client.aclose()
    with pytest.raises(TransportError, match="closed"):
        await asyncio.wait_for(waiting, 5)
    await transport.aclose()


@pytest.mark.parametrize("block", [0, -1, math.nan, math.inf, "1", None, True])
async def test_a_bad_block_is_a_configuration_error(block: object) -> None:
    """A ``block`` of 0 made the in-memory reader spin without ever yielding (the event loop hung);
    a string crashed the reader, and every later request() on its stream waited to its timeout."""
    transport = InMemoryTransport(names=StreamNames("client"))
    with pytest.raises(ConfigurationError, match=r"block must be .*seconds > 0, got"):
        AgentClient(transport, block=block)  # type: ignore[arg-type]
    await transport.aclose()


@pytest.mark.parametrize("timeout", [0, -1, math.nan, "5", None, False])
async def test_a_bad_timeout_is_a_configuration_error_before_anything_is_published(timeout: object) -> None:
    """A NaN timeout waited forever, a negative one timed out at once, a string raised a TypeError:
    each after the request had been published."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    async with AgentClient(transport, block=0.05) as client:
        with pytest.raises(ConfigurationError, match=r"timeout must be .*seconds.* > 0, got"):
            await asyncio.wait_for(client.request(_platform_request(names, "evt-t"), timeout=timeout), 5)  # type: ignore[arg-type]
    assert await transport.read_stream(names.requests, AgentRequestEvent) == []
    await transport.aclose()


@pytest.mark.parametrize("request_id", [None, 123, b"evt-1"])
async def test_cancel_with_a_request_id_not_a_str_is_a_configuration_error(request_id: object) -> None:
    """None raised a bare TypeError, a platform's int message id an AttributeError ('int' object
    has no attribute 'isprintable'), from deep in the stream names."""
    transport = InMemoryTransport(names=StreamNames("client"))
    async with AgentClient(transport) as client:
        pattern = r"^request_id must be a str \(the request's id"
        with pytest.raises(ConfigurationError, match=pattern) as caught:
            await client.cancel(request_id)  # type: ignore[arg-type]
        assert repr(request_id) in str(caught.value)
        assert await transport.coordinator().cancelled([str(request_id)]) == set()
    await transport.aclose()


@pytest.mark.parametrize("request_id", ["", "evt\n1", "evt\x001"])
async def test_cancel_of_an_empty_id_or_one_with_control_characters_is_a_configuration_error(
    request_id: str,
) -> None:
    """docs/client.md: no request has such an id (it could not be part of a key name)."""
    async with AgentClient(InMemoryTransport(names=StreamNames("client"))) as client:
        with pytest.raises(ConfigurationError, match=r"^request_id .* cannot be part of a stream name"):
            await client.cancel(request_id)


@pytest.mark.parametrize(
    ("source", "event", "error", "message"),
    [
        ("slack", {"channel_id": "c1", "content": None}, EventValidationError, "content"),
        ("slack", {"channel_id": "c1", "attachments": "x"}, EventValidationError, "attachments"),
        ("slack", {"channel_id": "c1", "user_name": 5}, EventValidationError, "user_name"),
        ("Slack Bot", {"channel_id": "c1"}, EventValidationError, "source"),
        (None, {"channel_id": "c1"}, ConfigurationError, "source must be a str"),
        ("slack", ["channel_id", "c1"], ConfigurationError, "event must be a mapping"),
    ],
)
def test_build_request_from_a_bad_event_is_a_typed_error(
    source: Any, event: Any, error: type[Exception], message: str
) -> None:
    """pydantic's ValidationError and an AttributeError came out as they were."""
    client = AgentClient(InMemoryTransport(names=StreamNames("client")))
    with pytest.raises(error, match=message):
        client.build_request(source, event)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("channel_id", {"id": 1}),
        ("channel_id", True),
        ("conversation_id", ["c1"]),
        ("id", True),
        ("id", {"ts": "1"}),
        ("user_id", {"id": "u1"}),
        ("user_id", False),
        ("user_id", ["sk-CANARY123456789abcdef"]),
    ],
)
def test_build_request_refuses_an_id_that_is_no_str_or_int(field: str, value: Any) -> None:
    """A platform's id is text or a number: a dict, a list or a boolean was written into the
    request as its repr ("{'id': 1}", "True"), a session and a reply stream of its own."""
    client = AgentClient(InMemoryTransport(names=StreamNames("client")))
    channel = {} if field == "conversation_id" else {"channel_id": "c1"}  # the channel key read
    event = {**channel, "user_id": "u1", "content": "hi", field: value}
    with pytest.raises(EventValidationError, match=rf"^invalid AgentRequestEvent: {field}: ") as caught:
        client.build_request("slack", event)
    assert "CANARY" not in str(caught.value)


def held_record_checks(
    client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold ``client``'s check for an earlier answer: ``checking`` is set once a call is in it,
    and it goes on when ``release`` is set."""
    checking, release = asyncio.Event(), asyncio.Event()
    get_record = client._coordinator.get_record

    async def slow_get_record(request_id: str) -> CompletedRecord | None:
        checking.set()
        await release.wait()
        return await get_record(request_id)

    monkeypatch.setattr(client._coordinator, "get_record", slow_get_record)
    return checking, release


async def test_a_request_whose_wait_aclose_ended_is_not_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """aclose() while request() is still checking for an earlier answer: the call ends with the
    TransportError, and the request is not published afterwards (a run whose reply nobody reads)."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    client = AgentClient(transport, block=0.05)
    checking, release = held_record_checks(client, monkeypatch)
    asking = asyncio.create_task(client.request(_platform_request(names, "evt-closed"), timeout=30))
    await asyncio.wait_for(checking.wait(), 5)
    await client.aclose()
    release.set()
    with pytest.raises(TransportError, match="closed"):
        await asyncio.wait_for(asking, 5)
    assert await transport.read_stream(names.requests, AgentRequestEvent) == []
    await transport.aclose()


@pytest.mark.parametrize(
    ("reply_streams", "block", "message"),
    [
        ("client:responses:slack:c1", None, "reply_streams must be a list of stream names"),
        ([], None, r"reply_streams is empty: give at least one stream name"),
        ((), None, r"reply_streams is empty: give at least one stream name"),
        (["client:responses:slack:c1"], 0, "block must be"),
        (["client:responses:slack:c1"], "1", "block must be"),
    ],
)
async def test_responses_with_bad_arguments_is_a_configuration_error(
    reply_streams: Any, block: Any, message: str
) -> None:
    """One stream name given as a str was read as one stream per character (groups made on "c",
    "l", ...); block=0 polled without pause, a string raised a TypeError; no stream at all idled
    forever, yielding nothing."""
    transport = InMemoryTransport(names=StreamNames("client"))
    async with AgentClient(transport, block=0.05) as client:
        replies = client.responses(reply_streams, group="g", consumer="c", block=block)
        with pytest.raises(ConfigurationError, match=message):
            await asyncio.wait_for(anext(replies), 2)
    assert await transport.read_stream("c", AgentResponseEvent) == []
    await transport.aclose()


async def test_responses_from_one_stream_waits_on_the_stream_not_on_a_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """responses() read its streams without waiting and then slept ``block`` seconds (1 s by
    default) when none had anything: a reply written during that sleep reached a chat gateway up
    to ``block`` late. With one stream it now waits in a blocking read, woken by the reply."""
    transport = InMemoryTransport(names=StreamNames("client"))
    stream = transport.names.responses("discord", "555")
    read = transport.read
    reads: list[asyncio.Event] = [asyncio.Event() for _ in range(2)]

    async def counting_read(*args: Any, **kwargs: Any) -> Any:
        next((event for event in reads if not event.is_set()), asyncio.Event()).set()
        return await read(*args, **kwargs)

    monkeypatch.setattr(transport, "read", counting_read)
    async with AgentClient(transport, block=3600) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        await transport.publish(stream, AgentResponseEvent(request_id="r1", content="first"))
        assert (await asyncio.wait_for(anext(replies), 10)).event.request_id == "r1"
        waiting = asyncio.create_task(anext(replies))
        await asyncio.wait_for(reads[1].wait(), 10)  # the read after the first reply has begun
        await transport.publish(stream, AgentResponseEvent(request_id="r2", content="second"))
        assert (await asyncio.wait_for(waiting, 10)).event.request_id == "r2"
        await replies.aclose()
    await transport.aclose()


async def test_responses_closed_mid_batch_hands_back_the_replies_it_never_yielded() -> None:
    """responses() reads a batch (up to 16 replies) and yields them one at a time: closed after the
    first (a gateway shutting down), the others stayed pending on its consumer, never seen by
    anyone, until ``claim_min_idle`` (60 s) passed. They are now handed back at once."""
    transport = InMemoryTransport(names=StreamNames("client"))
    stream = await three_replies(transport)
    async with AgentClient(transport, block=0.05) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        first = await asyncio.wait_for(anext(replies), 10)
        await client.ack(first)
        await replies.aclose()  # the gateway stops; a new one takes over
        replies = client.responses([stream], group="gateway", consumer="g2")
        later = [await asyncio.wait_for(anext(replies), 10) for _ in range(2)]
        assert [delivery.event.request_id for delivery in later] == ["r1", "r2"]
        await client.ack(*later)
        await replies.aclose()
    assert await transport.pending(stream, "gateway") == []
    await transport.aclose()


async def test_closing_responses_while_the_broker_does_not_answer_is_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Handing the unyielded replies back must not hold a closing gateway (nor asyncio.run's
    shutdown) for the transport's retry deadline (30 s on Redis) when the broker is away: it gives
    up after HAND_BACK_WITHIN, says so, and the replies come back after claim_min_idle instead."""
    transport = InMemoryTransport(names=StreamNames("client"))
    stream = await three_replies(transport)
    released: list[str] = []

    async def hung(delivery: Any, **kwargs: Any) -> bool:
        released.append(delivery.entry_id)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(client_module, "HAND_BACK_WITHIN", 0.05)
    async with AgentClient(transport, block=0.05) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        await asyncio.wait_for(anext(replies), 10)
        monkeypatch.setattr(transport, "release", hung)
        with caplog.at_level(logging.WARNING, logger="dynamic_agents.client"):
            async with asyncio.timeout(30):  # expiring here would end the test with a TimeoutError
                await replies.aclose()
    assert len(released) == 2  # both asked for at once, not one after the other
    assert "could not hand back 2 reply entries of" in caplog.text
    assert len(await transport.pending(stream, "gateway")) == 3  # left to claim_min_idle
    await transport.aclose()


@pytest.mark.parametrize("stuck", ["last_entry_id", "publish"])
async def test_the_timeout_bounds_the_whole_call_not_only_the_wait(
    stuck: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that does not answer (on Redis, retrying a lost connection for ``retry_deadline``,
    30 s by default) held request() past its timeout: the timeout counted only the wait for the
    reply, after publishing."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names

    async def hung(*args: Any, **kwargs: Any) -> str:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(transport, stuck, hung)
    async with AgentClient(transport, block=0.05) as client:
        async with asyncio.timeout(30):  # expiring here would end the test with a TimeoutError
            with pytest.raises(TimeoutError):
                await client.request(_platform_request(names, "evt-hung"), timeout=0.05)
        assert all(not reader.waiting for reader in client._readers.values())
    await transport.aclose()


async def test_a_reply_reader_survives_an_error_that_is_not_the_librarys(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Transport of the host's own that lets an OSError out of read_stream killed the reader for
    good: it stayed registered, so this and every later request() on its stream waited to its
    timeout."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    read_stream = transport.read_stream
    failures = [ConnectionResetError("connection reset by peer")]

    async def flaky_read_stream(stream: str, *args: Any, **kwargs: Any) -> Any:
        if failures and stream == names.responses("slack", "c1"):
            raise failures.pop()
        return await read_stream(stream, *args, **kwargs)

    monkeypatch.setattr(transport, "read_stream", flaky_read_stream)
    async with AgentClient(transport, block=0.05) as client:
        asking = asyncio.create_task(client.request(_platform_request(names, "evt-flaky"), timeout=30))
        await wait_published(transport, names.requests, 1)
        await transport.publish(names.responses("slack", "c1"), AgentResponseEvent(request_id="evt-flaky"))
        assert (await asyncio.wait_for(asking, 10)).request_id == "evt-flaky"
    assert "connection reset by peer" in caplog.text
    await transport.aclose()


async def test_an_earlier_reply_found_after_aclose_leaves_no_unretrieved_future_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aclose() while request() checks for an earlier answer, which it then finds: the call returns
    that reply, and the TransportError aclose() set on its wait is retrieved, not reported by
    asyncio as "Future exception was never retrieved"."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    stream = names.responses("slack", "c1")
    entry_id = await transport.publish(stream, AgentResponseEvent(request_id="evt-done", content="earlier"))
    record = CompletedRecord("evt-done", "resp-1", "completed", stream, entry_id, 1_700_000_000.0)
    assert await transport.coordinator().set_record(record, ttl=60)
    client = AgentClient(transport, block=0.05)
    checking, release = held_record_checks(client, monkeypatch)
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(str(context.get("message"))))
    try:
        asking = asyncio.create_task(client.request(_platform_request(names, "evt-done"), timeout=30))
        await asyncio.wait_for(checking.wait(), 5)
        await client.aclose()
        release.set()
        assert (await asyncio.wait_for(asking, 5)).content == "earlier"
        del asking
        gc.collect()  # the future is gone with the call's frame; collected, in case a cycle holds it
    finally:
        loop.set_exception_handler(handler)
    assert reported == []
    await transport.aclose()


@pytest.mark.parametrize("transport", [None, "redis://127.0.0.1:6379/0", StreamNames("client")])
def test_a_client_of_something_that_is_no_transport_is_a_configuration_error(transport: Any) -> None:
    # it failed with a bare AttributeError ('NoneType' object has no attribute 'names')
    with pytest.raises(ConfigurationError, match=r"^transport must be a Transport .*, got "):
        AgentClient(transport)


@pytest.mark.parametrize("routing", ["discord.yaml", {"interfaces": {}}, EventRouter()])
def test_a_client_of_routing_that_is_no_routing_config_is_a_configuration_error(routing: Any) -> None:
    """A path or a mapping given in place of the RoutingConfig failed with a bare AttributeError
    ('str' object has no attribute 'router'): refused naming ``routing``, the value and the way."""
    with pytest.raises(ConfigurationError, match=r"^routing must be a RoutingConfig \(") as refused:
        AgentClient(InMemoryTransport(), routing=routing)
    assert "RoutingConfig.from_file" in str(refused.value)


async def test_a_request_still_starting_its_reader_when_aclose_comes_is_ended_and_not_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aclose() while request() is still taking its reply stream's position (the reader's start,
    one round trip): the call was not registered yet, so aclose() did not end it; it went on to
    publish after the close and waited for the reply to its timeout (forever with ``math.inf``)."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    client = AgentClient(transport, block=0.05)
    starting, release = asyncio.Event(), asyncio.Event()
    last_entry_id = transport.last_entry_id

    async def slow_last_entry_id(stream: str) -> str:
        starting.set()
        await release.wait()
        return await last_entry_id(stream)

    monkeypatch.setattr(transport, "last_entry_id", slow_last_entry_id)
    asking = asyncio.create_task(client.request(_platform_request(names, "evt-starting"), timeout=math.inf))
    await asyncio.wait_for(starting.wait(), 5)
    await client.aclose()
    release.set()
    with pytest.raises(TransportError, match="closed"):
        await asyncio.wait_for(asking, 5)
    assert await transport.read_stream(names.requests, AgentRequestEvent) == []
    async with asyncio.timeout(5):  # the reader it started stops: nobody waits on it
        while client._readers:  # noqa: ASYNC110 (the reader stops on its own)
            await asyncio.sleep(0.01)
    await transport.aclose()


async def test_responses_skips_an_entry_that_is_no_reply(caplog: pytest.LogCaptureFixture) -> None:
    """An entry of a reply stream that does not decode (another producer's, a newer worker's) is
    dead-lettered by the read; responses() still yielded it, and the gateway's
    ``delivery.event.content`` raised the decode error out of its loop. It yields replies only."""
    transport = InMemoryTransport(names=StreamNames("client"))
    stream = transport.names.responses("discord", "555")
    await transport.publish_fields(stream, {"__data__": b"not json"})
    await transport.publish(stream, AgentResponseEvent(request_id="r1", content="answer"))
    async with AgentClient(transport, block=0.05) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        delivery = await asyncio.wait_for(anext(replies), 10)
        assert delivery.event.content == "answer"
        await client.ack(delivery)
        await replies.aclose()
    assert await transport.pending(stream, "gateway") == []
    dead = await transport.read_stream(transport.names.dead_letters, AgentResponseEvent)
    assert len(dead) == 1  # set aside, with the read's warning
    assert "does not decode, dead-lettering it" in caplog.text
    await transport.aclose()


def test_responses_is_typed_as_the_async_generator_whose_aclose_the_docs_call() -> None:
    """docs/client.md and the Discord example close the replies with ``aclose()``; typed as an
    ``AsyncIterator``, which has none, a gateway doing so failed ``mypy --strict``."""
    returns = typing.get_type_hints(AgentClient.responses)["return"]
    assert returns == collections.abc.AsyncGenerator[Delivery[AgentResponseEvent], None]


@pytest.mark.redis_server
async def test_responses_carries_on_when_its_stream_expires_during_a_blocking_read(
    redis_server: RedisServer,
) -> None:
    """A channel quiet for ``reply_expire``: its reply stream expires, and the gateway's group
    with it, while responses() waits on it in a blocking read. Redis ends that read with
    "UNBLOCKED the stream key no longer exists", which came out of responses() as a TransportError
    and ended the gateway's loop; the group is recreated, as for a read that finds it gone."""
    transport = RedisStreamsTransport.from_url(redis_server.url)
    admin = Redis.from_url(redis_server.url)
    stream = transport.names.responses("discord", "555")
    await transport.publish(stream, AgentResponseEvent(request_id="r0", content="first"))
    async with AgentClient(transport, block=30) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        await client.ack(await asyncio.wait_for(anext(replies), 10))
        waiting = asyncio.create_task(anext(replies))

        async def blocked() -> bool:
            connections = await admin.client_list()
            return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in connections)

        await wait_until(blocked, what="responses() in its blocking read")
        await admin.pexpire(stream, 1)  # the reply stream's EXPIRE comes due
        await wait_until(lambda: waiting.done() or transport.stats.groups_recreated > 0, what="the expiry")
        await transport.publish(stream, AgentResponseEvent(request_id="r1", content="second"))
        later = await asyncio.wait_for(waiting, 10)
        assert later.event.request_id == "r1"
        await client.ack(later)
        await replies.aclose()
    await transport.aclose()
    await admin.aclose()


async def test_replies_waiting_their_turn_in_a_batch_are_not_reclaimed_by_another_gateway() -> None:
    """responses() reads up to 16 replies at once and yields them one at a time, and their idle
    time ran from the read: a gateway slow to deliver (a platform's rate limits) left the later
    ones idle past claim_min_idle before it reached them, so another gateway of the group reclaimed
    them and both sent them, twice to the user. The rest of a batch is kept fresh meanwhile."""
    clock = ManualClock()
    transport = InMemoryTransport(names=StreamNames("client"), clock=clock)
    stream = await three_replies(transport)
    other = Subscription(stream, "gateway", "other", AgentResponseEvent, block=0, claim_min_idle=60)
    async with AgentClient(transport, block=0.05) as client:
        slow = client.responses([stream], group="gateway", consumer="slow", claim_min_idle=60)
        delivered = []
        for _ in range(3):
            delivery = await asyncio.wait_for(anext(slow), 10)
            assert await transport.read(other, 16) == []  # nothing of the batch is idle
            clock.advance(61)  # sending it to the platform took that long
            delivered.append(delivery.event.request_id)
            await client.ack(delivery)
        await slow.aclose()
    assert delivered == ["r0", "r1", "r2"]
    assert await transport.pending(stream, "gateway") == []
    await transport.aclose()


async def test_a_reply_another_gateway_took_while_it_waited_in_a_batch_is_not_yielded_again() -> None:
    """Kept fresh too late (the gateway was slower still): what another gateway took meanwhile is
    that gateway's to send, not yielded here as well."""
    transport = InMemoryTransport(names=StreamNames("client"), clock=(clock := ManualClock()))
    stream = await three_replies(transport)
    other = Subscription(stream, "gateway", "other", AgentResponseEvent, block=0, claim_min_idle=60)
    async with AgentClient(transport, block=0.05) as client:
        slow = client.responses([stream], group="gateway", consumer="slow", claim_min_idle=60)
        await client.ack(await asyncio.wait_for(anext(slow), 10))
        clock.advance(61)  # too slow: the loop of another gateway ran meanwhile and took the rest
        taken = await transport.read(other, 16)
        assert [delivery.event.request_id for delivery in taken] == ["r1", "r2"]
        await client.ack(*taken)
        await transport.publish(stream, AgentResponseEvent(request_id="r3", content="answer 3"))
        later = await asyncio.wait_for(anext(slow), 10)
        assert later.event.request_id == "r3"  # not r1 and r2 again: they are the other's now
        await client.ack(later)
        await slow.aclose()
    await transport.aclose()


async def test_replies_of_a_batch_that_cannot_be_kept_fresh_are_yielded_all_the_same(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker away while the rest of a batch is kept fresh: the replies in hand are yielded
    anyway (with a warning), as before, rather than failing the gateway's loop."""
    transport = InMemoryTransport(names=StreamNames("client"))
    stream = transport.names.responses("discord", "555")
    for n in range(2):
        await transport.publish(stream, AgentResponseEvent(request_id=f"r{n}", content=f"answer {n}"))

    async def away(deliveries: Any) -> Any:
        raise TransportError("connection refused")

    async with AgentClient(transport, block=0.05) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        first = await asyncio.wait_for(anext(replies), 10)
        monkeypatch.setattr(transport, "keep_fresh", away)
        with caplog.at_level(logging.WARNING, logger="dynamic_agents.client"):
            second = await asyncio.wait_for(anext(replies), 10)
        assert [first.event.request_id, second.event.request_id] == ["r0", "r1"]
        assert "could not keep 1 reply entries of" in caplog.text
        await client.ack(first, second)
        await replies.aclose()
    await transport.aclose()


async def test_replies_of_a_batch_are_handed_back_when_closed_while_kept_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The iteration closed while the rest of its batch is kept fresh (after a wait for the next
    reply was cancelled, a gateway shutting down): that step is cancelled and the rest goes back to
    the group at once, not stranded on this consumer until claim_min_idle."""
    transport = InMemoryTransport(names=StreamNames("client"))
    stream = await three_replies(transport)
    keeping = asyncio.Event()

    async def hung(deliveries: Any) -> Any:
        keeping.set()
        await asyncio.Event().wait()

    async with AgentClient(transport, block=0.05) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        await client.ack(await asyncio.wait_for(anext(replies), 10))
        monkeypatch.setattr(transport, "keep_fresh", hung)
        waiting = asyncio.create_task(anext(replies))
        await asyncio.wait_for(keeping.wait(), 10)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(replies.aclose(), 10)
        monkeypatch.undo()  # the broker answers again
        other = client.responses([stream], group="gateway", consumer="g2")
        later = [await asyncio.wait_for(anext(other), 10) for _ in range(2)]
        assert [delivery.event.request_id for delivery in later] == ["r1", "r2"]
        await client.ack(*later)
        await other.aclose()
    await transport.aclose()


async def test_a_reply_trimmed_from_its_stream_while_it_waited_in_a_batch_is_yielded_all_the_same() -> None:
    """No longer held is not always taken by another gateway: an entry trimmed from the stream (a
    gateway far behind, ``reply_maxlen``), or gone with the stream, is held by nobody, and the reply
    read before is only in hand here: it is yielded, not dropped."""
    transport = InMemoryTransport(names=StreamNames("client"))
    stream = await three_replies(transport)
    async with AgentClient(transport, block=0.05) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        first = await asyncio.wait_for(anext(replies), 10)
        entries = await transport.read_stream(stream, AgentResponseEvent)
        assert await transport.delete(stream, *(entry.entry_id for entry in entries)) == 3
        later = [await asyncio.wait_for(anext(replies), 10) for _ in range(2)]
        assert [delivery.event.request_id for delivery in [first, *later]] == ["r0", "r1", "r2"]
        await replies.aclose()
    await transport.aclose()


async def test_a_reply_that_does_not_decode_is_reported_not_dropped_in_silence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """request()'s reader skipped an entry of the reply stream that did not decode without a word:
    a worker whose reply this client cannot read left the caller with a bare TimeoutError."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    async with AgentClient(transport, block=0.05) as client:
        asking = asyncio.create_task(client.request(_platform_request(names, "evt-garbled"), timeout=30))
        await wait_published(transport, names.requests, 1)
        with caplog.at_level(logging.WARNING, logger="dynamic_agents.client"):
            garbled = await transport.publish_fields(names.responses("slack", "c1"), {"__data__": b"{"})
            await wait_until(lambda: garbled in caplog.text, what="the warning")
        assert "does not decode" in caplog.text
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
    await transport.aclose()


@pytest.mark.redis_server
async def test_responses_goes_on_when_redis_is_out_of_memory(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``maxmemory`` reached (``noeviction``): Redis refuses the read's reclaim of idle replies
    (``OOM command not allowed``), which came out of responses() as a TransportError and ended the
    gateway's loop for good. A shortage passes (an operator trims, a worker acks): the read is
    tried again after ``block``, with a warning that is not repeated for every attempt."""
    transport = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=1)
    admin = Redis.from_url(redis_server.url)
    stream = transport.names.responses("discord", "555")
    await transport.publish(stream, AgentResponseEvent(request_id="r0", content="before"))
    read, refused = transport.read, 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal refused
        try:
            return await read(*args, **kwargs)
        except TransportError:
            refused += 1
            raise

    monkeypatch.setattr(transport, "read", counted)
    try:
        async with AgentClient(transport, block=0.01) as client:
            # idle replies reclaimed in every read (every claim_min_idle / 2)
            replies = client.responses([stream], group="gateway", consumer="g1", claim_min_idle=0.02)
            await client.ack(await asyncio.wait_for(anext(replies), 10))
            await admin.config_set("maxmemory", "1")
            with caplog.at_level(logging.WARNING, logger="dynamic_agents.client"):
                waiting = asyncio.create_task(anext(replies))

                def refused_often() -> bool:
                    if waiting.done():  # the loop ended
                        raise AssertionError(waiting.exception())
                    return refused >= 20

                await wait_until(refused_often, what="the read refused many times")
            await admin.config_set("maxmemory", "0")
            await transport.publish(stream, AgentResponseEvent(request_id="r1", content="after"))
            delivery = await asyncio.wait_for(waiting, 10)
            assert delivery.event.content == "after"
            await client.ack(delivery)
            await replies.aclose()
        warnings = [r for r in caplog.records if "maxmemory" in r.getMessage()]
        assert 1 <= len(warnings) <= 6, warnings  # the 1st, 2nd, 4th, 8th… refusal in a row
        assert all(r.levelno == logging.WARNING for r in warnings)
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.aclose()
        await transport.aclose()


@pytest.mark.redis
async def test_a_reply_trimmed_before_the_reader_read_it_fails_the_request_at_once(
    redis_url: str, names: StreamNames, redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker answered, but its reply left the reply stream (``reply_maxlen``) before the
    client's reader got to it (a reader far behind, a busy channel): request() waited out its
    whole timeout, though the completed-request record said the request was answered. It fails
    at once with a DeliveryError saying so."""
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    request = _platform_request(names, "evt-trimmed")
    stream = request.reply_stream or ""
    read_stream, behind = transport.read_stream, asyncio.Event()

    async def far_behind(*args: Any, **kwargs: Any) -> Any:
        await behind.wait()  # the reader gets no turn until the reply is gone
        return await read_stream(*args, **kwargs)

    await transport.publish(stream, AgentResponseEvent(request_id="evt-earlier", content="earlier"))
    monkeypatch.setattr(transport, "read_stream", far_behind)
    async with AgentClient(transport, block=0.05) as client:
        asking = asyncio.create_task(client.request(request, timeout=math.inf))
        await transport.ensure_group(names.requests, "workers")
        worker = Subscription(names.requests, "workers", "w1", AgentRequestEvent, block=10)
        (delivery,) = await transport.read(worker, 1)
        reply = Reply(AgentResponseEvent(request_id=request.id, content="lost"), stream, maxlen=1)
        await transport.complete(delivery, reply, record_ttl=60)
        await transport.publish(stream, AgentResponseEvent(request_id="evt-other", content="later"))
        await redis_client.xtrim(stream, maxlen=1, approximate=False)  # the reply is gone
        behind.set()
        with pytest.raises(DeliveryError, match=r"evt-trimmed.* no longer on"):
            await asyncio.wait_for(asking, 10)
    await transport.aclose()


async def test_a_closed_client_refuses_to_be_used_and_its_iterations_end() -> None:
    """After aclose(), request() started a fresh reply reader as if nothing had happened (and a
    call made after the close published and waited, where one made during it was refused). A
    closed client is closed: each call raises a TransportError saying so, publishing nothing; a
    responses() iteration still running ends at its next step, handing back the replies it had
    not yielded; ack() still settles those it had."""
    transport = InMemoryTransport(names=StreamNames("client"))
    names = transport.names
    stream = await three_replies(transport)
    client = AgentClient(transport, block=0.05)
    running = client.responses([stream], group="gateway", consumer="g1")
    first = await asyncio.wait_for(anext(running), 10)
    await client.aclose()
    request = _platform_request(names, "evt-after-close")
    calls: list[collections.abc.Awaitable[object]] = [
        client.request(request, timeout=5),
        client.publish(request),
        client.cancel(request.id),
        anext(client.responses([stream], group="gateway", consumer="g2")),
    ]
    for call in calls:
        with pytest.raises(TransportError, match=r"the client is closed"):
            await asyncio.wait_for(call, 5)
    assert await transport.read_stream(names.requests, AgentRequestEvent) == []
    assert client._readers == {}
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(running), 5)
    assert await client.ack(first) == 1
    async with AgentClient(transport, block=0.05) as other:
        replies = other.responses([stream], group="gateway", consumer="g2")
        later = [await asyncio.wait_for(anext(replies), 10) for _ in range(2)]
        assert [delivery.event.request_id for delivery in later] == ["r1", "r2"]
        await other.ack(*later)
        await replies.aclose()
    await transport.aclose()


@pytest.mark.redis
async def test_responses_survives_a_timeout_of_anext_and_loses_no_reply_it_was_reading(
    redis_url: str, names: StreamNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that waits for the next reply with a timeout, to do other work in between
    (``asyncio.wait_for(anext(replies), 5)``): the timeout cancelled the read inside the
    generator, which ended it, so the gateway's next ``anext()`` raised StopAsyncIteration (an
    ``async for`` just stopped), and replies that read had taken stayed pending on its consumer
    until ``claim_min_idle``. The read goes on; the next ``anext()`` gets what it read."""
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    stream = names.responses("discord", "555")
    read, answer = transport.read, asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        batch = await read(*args, **kwargs)
        if batch:
            await answer.wait()  # its reply is in hand when the caller's wait runs out
        return batch

    monkeypatch.setattr(transport, "read", slow)
    async with AgentClient(transport, block=1) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        with pytest.raises(TimeoutError):  # nothing came: the blocking read is cancelled
            await asyncio.wait_for(anext(replies), 0.05)
        await transport.publish(stream, AgentResponseEvent(request_id="r0", content="answer 0"))
        with pytest.raises(TimeoutError):  # the read has the reply, the caller gives up first
            await asyncio.wait_for(anext(replies), 0.05)
        answer.set()
        first = await asyncio.wait_for(anext(replies), 10)
        assert first.event.request_id == "r0"
        await client.ack(first)
        await transport.publish(stream, AgentResponseEvent(request_id="r1", content="answer 1"))
        second = await asyncio.wait_for(anext(replies), 10)
        assert second.event.request_id == "r1"
        await client.ack(second)
        answer.clear()
        await transport.publish(stream, AgentResponseEvent(request_id="r2", content="answer 2"))
        with pytest.raises(TimeoutError):  # read, not taken: closing hands it back to the group
            await asyncio.wait_for(anext(replies), 0.05)
        answer.set()
        step = replies._step  # type: ignore[attr-defined]  # the read going on without a caller
        await wait_until(step.done, what="the read to end")
        await replies.aclose()
        other = client.responses([stream], group="gateway", consumer="g2", claim_min_idle=60)
        third = await asyncio.wait_for(anext(other), 10)
        assert third.event.request_id == "r2"
        await client.ack(third)
        await other.aclose()
    assert await transport.pending(stream, "gateway") == []
    await transport.aclose()


@pytest.mark.redis
async def test_a_reply_too_large_for_the_clients_codec_fails_its_request_not_times_out(
    redis_url: str, names: StreamNames
) -> None:
    """A worker whose codec allows larger events than the client's (``max_size``) answers with a
    reply the client cannot read: the reader could not say whose it was (it does not parse a body
    over ``max_size``), so it skipped it with a warning and the call waited out its timeout. The
    completed-request record names the entry: the call raises the EventTooLargeError."""
    client_transport = RedisStreamsTransport.from_url(redis_url, names=names, codec=EventCodec(max_size=4096))
    worker_transport = RedisStreamsTransport.from_url(redis_url, names=names)
    request = _platform_request(names, "evt-huge")
    async with AgentClient(client_transport, block=0.05) as client:
        asking = asyncio.create_task(client.request(request, timeout=math.inf))
        await worker_transport.ensure_group(names.requests, "workers")
        worker = Subscription(names.requests, "workers", "w1", AgentRequestEvent, block=10)
        (delivery,) = await worker_transport.read(worker, 1)
        huge = AgentResponseEvent(request_id=request.id, content="x" * 10_000)
        await worker_transport.complete(delivery, Reply(huge, request.reply_stream), record_ttl=60)
        with pytest.raises(EventTooLargeError, match="4096"):
            await asyncio.wait_for(asking, 10)
    await client_transport.aclose()
    await worker_transport.aclose()


@pytest.mark.redis
async def test_a_retry_whose_earlier_reply_does_not_decode_raises_why_not_that_it_is_gone(
    redis_url: str, names: StreamNames
) -> None:
    """A platform's retry of a request answered by a newer worker (a reply of a newer major
    ``schema_version``): request() read the reply back from where the record points and, unable
    to decode it, said it was "no longer on" the stream, which it was. It raises the decode error,
    as the first call did."""
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    stream = names.responses("slack", "c1")
    body = {"schema_version": "2.0", "request_id": "evt-newer", "content": "from the future"}
    entry_id = await transport.publish_fields(stream, {"__data__": json.dumps(body).encode()})
    record = CompletedRecord("evt-newer", "resp-2", "completed", stream, entry_id, 1_700_000_000.0)
    assert await transport.coordinator().set_record(record, ttl=60)
    async with AgentClient(transport, block=0.05) as client:
        with pytest.raises(UnsupportedSchemaVersionError, match=r"^schema_version '2\.0' is not"):
            await client.request(_platform_request(names, "evt-newer"), timeout=10)
    assert await transport.read_stream(names.requests, AgentRequestEvent) == []
    await transport.aclose()


async def test_responses_closed_while_another_task_waits_ends_that_wait_as_the_iteration_ends() -> None:
    """aclose() of the replies while another task waits for the next one (a gateway's shutdown
    path): that wait ends with StopAsyncIteration, as the end of the iteration, not with a
    CancelledError its task never asked for."""
    transport = InMemoryTransport(names=StreamNames("client"))
    stream = transport.names.responses("discord", "555")
    async with AgentClient(transport, block=0.05) as client:
        replies = client.responses([stream], group="gateway", consumer="g1")
        waiting = asyncio.create_task(anext(replies))
        await wait_until(lambda: replies._step is not None, what="the read")  # type: ignore[attr-defined]
        await asyncio.wait_for(replies.aclose(), 10)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 10)
        assert not waiting.cancelled()
    await transport.aclose()
