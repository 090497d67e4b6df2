"""``RedisStreamsTransport`` against a real FastStream 0.7 Redis broker, in both directions."""

import asyncio
from typing import Any

import pytest
from faststream.redis import RedisBroker, RedisStreamMessage, StreamSub

from dynamic_agents.events import AgentRequestEvent, StreamNames
from dynamic_agents.transports import RedisStreamsTransport, Subscription

pytestmark = [pytest.mark.redis, pytest.mark.faststream]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DEADLINE = 10.0
COUNT = 5


def make_requests(count: int = COUNT) -> list[AgentRequestEvent]:
    return [
        AgentRequestEvent(
            source="discord",
            source_id="1234567890",
            user_id="user-1",
            user_name="Zoë",
            session_id="discord:1234567890",
            content=f"message {n}: héllo 🌦",
            agent_id="weather",
            metadata={"n": n},
        )
        for n in range(count)
    ]


def subscription(stream: str) -> Subscription[AgentRequestEvent]:
    return Subscription(stream=stream, group="workers", consumer="w1", model=AgentRequestEvent, block=0.1)


async def test_faststream_subscriber_handles_and_acks_transport_publishes(
    redis_url: str, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}:requests"
    events = make_requests()
    received: list[tuple[dict[str, Any], RedisStreamMessage]] = []
    all_received: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    broker = RedisBroker(redis_url)

    @broker.subscriber(stream=StreamSub(stream, group="agents", consumer="fs-1", last_id="0"))
    async def handle(body: dict[str, Any], message: RedisStreamMessage) -> None:
        received.append((body, message))
        if len(received) == len(events) and not all_received.done():
            all_received.set_result(None)

    async with RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix)) as transport:
        async with broker:
            await broker.start()
            for event in events:
                await transport.publish(stream, event, headers={"traceparent": TRACEPARENT})
            await asyncio.wait_for(all_received, DEADLINE)
        # Closing the broker waits (graceful_timeout) for in-flight handlers, acks included.
        pending = await transport.pending(stream, "agents")

    assert [body for body, _ in received] == [event.model_dump(mode="json") for event in events]
    assert [message.correlation_id for _, message in received] == [event.id for event in events]
    assert all(message.headers["traceparent"] == TRACEPARENT for _, message in received)
    assert pending == []


async def test_transport_reads_faststream_publishes(redis_url: str, redis_prefix: str) -> None:
    stream = f"{redis_prefix}:requests"
    events = make_requests()

    async with RedisBroker(redis_url) as broker:
        for event in events:
            await broker.publish(
                event.model_dump(mode="json"),
                stream=stream,
                headers={"traceparent": TRACEPARENT},
                correlation_id=f"corr-{event.id}",
            )

    async with RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix)) as transport:
        assert await transport.ensure_group(stream, "workers")
        deliveries = await transport.read(subscription(stream), 10)
        acked = await transport.ack(*deliveries)
        pending = await transport.pending(stream, "workers")

    assert [delivery.event for delivery in deliveries] == events  # .event raises if undecoded
    messages = [delivery.message for delivery in deliveries if delivery.message is not None]
    assert [message.correlation_id for message in messages] == [f"corr-{event.id}" for event in events]
    assert [message.traceparent for message in messages] == [TRACEPARENT] * len(events)
    assert acked == len(events)
    assert pending == []


async def test_transport_sees_faststream_reply_to(redis_url: str, redis_prefix: str) -> None:
    stream = f"{redis_prefix}:requests"
    inbox = f"{redis_prefix}:inbox"
    (event,) = make_requests(1)

    async with RedisBroker(redis_url) as broker:
        await broker.publisher(stream=stream).publish(
            event.model_dump(mode="json"), reply_to=inbox, correlation_id=event.id
        )

    async with RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix)) as transport:
        await transport.ensure_group(stream, "workers")
        (delivery,) = await transport.read(subscription(stream), 10)
        await transport.ack(delivery)

    assert delivery.event == event
    assert delivery.message is not None
    assert delivery.message.reply_to == inbox
    assert delivery.message.correlation_id == event.id
