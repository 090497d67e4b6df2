"""Interoperability with a real FastStream 0.7 Redis broker, in both directions.

FastStream's own writer and reader are the reference: what it publishes, the codec decodes; what
the codec writes, a FastStream subscriber receives; and the binary envelopes are byte-identical.

FastStream 0.7.8 has no legacy JSON envelope *writer* (``BinaryMessageFormatV1`` is the only
``MessageFormat`` it ships; its parser still *reads* the legacy format), so no test here publishes
a legacy JSON envelope through FastStream.
"""

import asyncio
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import pytest
from faststream._internal.parser import DefaultCodec
from faststream.redis import RedisBroker, RedisStreamMessage, StreamSub
from faststream.redis.parser import BinaryMessageFormatV1
from pydantic import BaseModel
from redis.asyncio import Redis

from dynamic_agents.events.codecs import EventCodec
from dynamic_agents.events.envelope import DATA_FIELD, encode_envelope
from dynamic_agents.events.lifecycle import LifecycleEvent
from dynamic_agents.events.models import AgentRequestEvent, AgentResponseEvent
from dynamic_agents.exceptions import UnsupportedSchemaVersionError

pytestmark = [pytest.mark.redis, pytest.mark.faststream]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DEADLINE = 10.0


def make_request() -> AgentRequestEvent:
    return AgentRequestEvent(
        source="discord",
        source_id="1234567890",
        user_id="user-1",
        session_id="discord:1234567890",
        user_name="Zoë",
        content="héllo — what's the weather? 🌦",
        agent_id="weather",
        metadata={"guild_id": "42", "tags": ["a", "b"]},
    )


class EventJsonCodec(DefaultCodec):
    """Makes FastStream send the codec's JSON body (without orjson it uses spaced json.dumps)."""

    async def encode(self, msg: Any, serializer: Any = None) -> tuple[bytes, str | None]:
        return EventCodec().encode_json(msg), "application/json"


async def stream_entries(redis_url: str, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of ``stream``, read with a client of their own."""
    client = Redis.from_url(redis_url)
    try:
        return cast("list[tuple[bytes, dict[bytes, bytes]]]", await client.xrange(stream))
    finally:
        await client.aclose()


async def test_faststream_publish_is_decoded_by_codec(redis_url: str, redis_prefix: str) -> None:
    stream = f"{redis_prefix}:requests"
    event = make_request()

    async with RedisBroker(redis_url) as broker:
        await broker.publish(
            event.model_dump(mode="json"),
            stream=stream,
            headers={"traceparent": TRACEPARENT},
            correlation_id="corr-1",
        )

    entries = await stream_entries(redis_url, stream)

    assert entries is not None
    assert len(entries) == 1
    fields = entries[0][1]
    assert list(fields) == [DATA_FIELD.encode()]
    decoded = EventCodec().decode_entry(fields, AgentRequestEvent)
    assert decoded.event == event
    assert decoded.correlation_id == "corr-1"
    assert decoded.traceparent == TRACEPARENT
    assert decoded.headers["content-type"] == "application/json"
    assert decoded.reply_to is None


async def test_codec_entry_reaches_faststream_subscriber(redis_url: str, redis_prefix: str) -> None:
    stream = f"{redis_prefix}:requests"
    reply_to = f"{redis_prefix}:reply"
    event = make_request()
    received: asyncio.Future[tuple[dict[str, Any], RedisStreamMessage]] = (
        asyncio.get_running_loop().create_future()
    )

    broker = RedisBroker(redis_url)

    @broker.subscriber(stream=StreamSub(stream, group="agents", consumer="c1", last_id="0"))
    async def handle(body: dict[str, Any], message: RedisStreamMessage) -> None:
        if not received.done():
            received.set_result((body, message))

    client = Redis.from_url(redis_url)
    try:
        fields = EventCodec().encode_entry(event, reply_to=reply_to, headers={"traceparent": TRACEPARENT})
        await client.xadd(stream, fields)  # type: ignore[arg-type]
        async with broker:
            await broker.start()
            body, message = await asyncio.wait_for(received, DEADLINE)
    finally:
        await client.aclose()

    assert body == event.model_dump(mode="json")
    assert AgentRequestEvent.model_validate(body) == event
    assert message.correlation_id == event.id
    assert message.reply_to == reply_to
    assert message.content_type == "application/json"
    assert message.headers["traceparent"] == TRACEPARENT


@pytest.mark.parametrize("reply_to", [None, "agent:replies:abc"])
async def test_envelope_bytes_equal_faststream(reply_to: str | None) -> None:
    # A str body makes FastStream set content-type itself, so its headers come in its full order.
    text = '{"content":"héllo"}'
    body = text.encode()
    headers = {"correlation_id": "corr-1", "content-type": "text/plain"}
    if reply_to:
        headers["reply_to"] = reply_to
    headers["traceparent"] = TRACEPARENT

    theirs = await BinaryMessageFormatV1.encode(
        message=text,
        reply_to=reply_to,
        headers={"traceparent": TRACEPARENT},
        correlation_id="corr-1",
    )
    ours = encode_envelope(body, headers)

    assert ours == theirs
    assert BinaryMessageFormatV1.parse(ours) == (body, headers)


async def test_codec_envelope_equals_faststream_for_json_bytes() -> None:
    codec, event = EventCodec(), make_request()

    theirs = await BinaryMessageFormatV1.encode(
        message=codec.encode_json(event),
        reply_to=None,
        headers={"content-type": "application/json", "traceparent": TRACEPARENT},
        correlation_id=event.id,
    )
    ours = codec.encode_envelope(event, headers={"traceparent": TRACEPARENT})

    assert ours == theirs
    body, headers = BinaryMessageFormatV1.parse(ours)
    assert body == codec.encode_json(event)
    assert headers == {
        "correlation_id": event.id,
        "content-type": "application/json",
        "traceparent": TRACEPARENT,
    }


async def test_codec_envelope_with_reply_to_equals_faststream() -> None:
    # With a bytes body FastStream puts reply_to before a user content-type header, so let it set
    # content-type itself (as it does for a model body) through a codec emitting our JSON.
    codec, event = EventCodec(), make_request()
    reply_to = "agent:replies:abc"

    theirs = await BinaryMessageFormatV1.encode(
        message=event,
        reply_to=reply_to,
        headers={"traceparent": TRACEPARENT},
        correlation_id=event.id,
        codec=EventJsonCodec(),
    )
    ours = codec.encode_envelope(event, reply_to=reply_to, headers={"traceparent": TRACEPARENT})

    assert ours == theirs
    body, headers = BinaryMessageFormatV1.parse(ours)
    assert codec.decode_json(body, AgentRequestEvent) == event
    assert list(headers.items()) == [
        ("correlation_id", event.id),
        ("content-type", "application/json"),
        ("reply_to", reply_to),
        ("traceparent", TRACEPARENT),
    ]


@pytest.mark.parametrize("value", ["Zoë", "héllo — 🌦", "é", "éa"])
async def test_an_envelope_with_non_ascii_headers_from_faststream_is_read(value: str) -> None:
    """FastStream 0.7's writer stores a header string's character count where its byte count
    belongs (its own reader then fails on it). The body offset is right, so the codec reads such an
    envelope by characters instead of dead-lettering what a FastStream peer published."""
    event = make_request()
    headers = {"x-user": value, "traceparent": TRACEPARENT, value: "key"}
    envelope = await BinaryMessageFormatV1.encode(
        message=event.model_dump(mode="json"), reply_to="rpc", headers=headers, correlation_id="c-1"
    )
    decoded = EventCodec().decode_envelope(envelope, AgentRequestEvent)
    assert decoded.event == event
    assert dict(decoded.headers) == {
        "correlation_id": "c-1",
        "content-type": "application/json",
        "reply_to": "rpc",
        **headers,
    }
    entry = EventCodec().decode_entry({DATA_FIELD.encode(): envelope}, AgentRequestEvent)
    assert entry.headers == decoded.headers


class TheirRequest(BaseModel):
    """A FastStream front end's own model of a request (not ours): what it publishes."""

    id: str
    source: str
    source_id: str
    user_id: str
    user_name: str | None
    content: str
    agent_id: str
    session_id: str
    timestamp: datetime
    metadata: dict[str, Any]


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [("model", "application/json"), ("dict", "application/json"), ("str", "text/plain"), ("bytes", None)],
)
async def test_every_payload_faststream_publishes_decodes_to_the_same_event(
    redis_url: str, redis_prefix: str, kind: str, content_type: str | None
) -> None:
    """A pydantic model, a dict, a str or bytes: FastStream encodes each its own way (and sets the
    content type for all but bytes); the codec reads the same event from each, on a stream FastStream
    trims (``maxlen``)."""
    stream = f"{redis_prefix}:requests"
    event = make_request()
    theirs = TheirRequest.model_validate(event.model_dump())
    payload: Any = {
        "model": theirs,
        "dict": theirs.model_dump(mode="json"),
        "str": theirs.model_dump_json(),
        "bytes": theirs.model_dump_json().encode(),
    }[kind]

    async with RedisBroker(redis_url) as broker:
        await broker.publish(payload, stream=stream, maxlen=10, headers={"traceparent": TRACEPARENT})

    entries = await stream_entries(redis_url, stream)

    assert entries is not None
    assert len(entries) == 1
    decoded = EventCodec().decode_entry(entries[0][1], AgentRequestEvent)
    assert decoded.event == event
    assert decoded.traceparent == TRACEPARENT
    assert decoded.headers.get("content-type") == content_type


class TheirResponse(BaseModel):
    """A FastStream front end's own model of a reply: our field names, enum values and timestamp
    format, and none of the fields it does not use (ignored, as pydantic does by default)."""

    request_id: str
    timestamp: datetime
    content: str
    status: Literal["completed", "error", "timeout", "cancelled", "rejected"]
    error_message: str | None
    execution_time_ms: int | None


async def test_a_faststream_subscriber_reads_a_reply_into_its_own_model(
    redis_url: str, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}:responses"
    reply = AgentResponseEvent.model_validate(
        {
            "schema_version": "1.3",  # a newer minor, with a field this release does not know
            "request_id": "req-1",
            "content": "héllo 🌦",
            "status": "timeout",
            "error_message": "took too long",
            "execution_time_ms": 1500,
            "priority": "high",
        }
    )
    received: asyncio.Future[TheirResponse] = asyncio.get_running_loop().create_future()
    broker = RedisBroker(redis_url)

    @broker.subscriber(stream=StreamSub(stream, group="interface", consumer="c1", last_id="0"))
    async def handle(body: TheirResponse) -> None:
        received.set_result(body)

    client = Redis.from_url(redis_url)
    try:
        await client.xadd(stream, EventCodec().encode_entry(reply))  # type: ignore[arg-type]
        async with broker:
            await broker.start()
            body = await asyncio.wait_for(received, DEADLINE)
    finally:
        await client.aclose()

    assert body == TheirResponse(
        request_id="req-1",
        timestamp=reply.timestamp,
        content="héllo 🌦",
        status="timeout",
        error_message="took too long",
        execution_time_ms=1500,
    )
    assert body.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "run.tool_called", "tool": "search"},  # a type only a newer major has
        {"kind": "run.started"},  # no "type" at all: a newer major renamed it
        {"type": "run.started"},
    ],
    ids=["new type", "no type", "known type"],
)
async def test_a_lifecycle_event_of_a_newer_major_is_refused_as_one(
    redis_url: str, redis_prefix: str, event: dict[str, Any]
) -> None:
    """A newer major may add lifecycle types (enumerations change only with a major version): such
    an event is an ``UnsupportedSchemaVersionError``, as a request or a reply of that version is,
    not an unknown ``type`` (the union's tag was checked before the version)."""
    stream = f"{redis_prefix}:events"
    body = {"schema_version": "2.0", "request_id": "req-1", "session_id": "discord:1", **event}
    async with RedisBroker(redis_url) as broker:
        await broker.publish(body, stream=stream)

    entries = await stream_entries(redis_url, stream)

    assert entries is not None
    fields = entries[0][1]
    with pytest.raises(UnsupportedSchemaVersionError, match=r"^schema_version '2\.0' is not supported"):
        EventCodec().decode_entry(fields, LifecycleEvent)


async def test_a_json_body_with_a_utf8_byte_order_mark_is_read_as_faststream_reads_it(
    redis_url: str, redis_prefix: str
) -> None:
    """A publisher that writes UTF-8 with a byte order mark (RFC 8259 lets a parser ignore it):
    FastStream's subscriber reads the body (``json.loads`` of bytes skips the mark), so the codec
    must read the same event, not refuse it as "not valid JSON" and dead-letter it."""
    stream = f"{redis_prefix}:requests"
    event = make_request()
    body = b"\xef\xbb\xbf" + EventCodec().encode_json(event)
    received: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    broker = RedisBroker(redis_url)

    @broker.subscriber(stream=StreamSub(stream, group="agents", consumer="c1", last_id="0"))
    async def handle(message: RedisStreamMessage) -> None:
        if not received.done():
            received.set_result(await message.decode())

    async with broker:
        await broker.publish(body, stream=stream, headers={"content-type": "application/json"})
        await broker.start()
        theirs = await asyncio.wait_for(received, DEADLINE)

    assert theirs == event.model_dump(mode="json")  # FastStream reads it
    (entry,) = await stream_entries(redis_url, stream)
    decoded = EventCodec().decode_entry(entry[1], AgentRequestEvent)
    assert decoded.event == event
    assert EventCodec().decode_json(body, AgentRequestEvent) == event
