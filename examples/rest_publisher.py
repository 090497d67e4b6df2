"""A REST-style caller: publish a request and await its reply (with a worker in the same process).

In production the worker runs elsewhere and the transport is Redis; ``AgentClient.request`` is the
same. Run: ``python examples/rest_publisher.py`` (core install, no servers).
"""

from __future__ import annotations

import asyncio

from dynamic_agents.client import AgentClient
from dynamic_agents.events import AgentRequestEvent, Target, TargetType
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import InMemoryTransport
from dynamic_agents.worker import AgentWorker


async def answer(target: Target, request: AgentRequestEvent) -> str:
    return f"{target.id} received {request.content!r}"


async def main() -> None:
    transport = InMemoryTransport()  # RedisStreamsTransport.from_url(url) in production
    worker = AgentWorker(
        transport,
        transport.coordinator(),
        EventRouter(default=Target(type=TargetType.AGENT, id="api-assistant")),
        FunctionExecutor(answer),
    )
    async with worker, AgentClient(transport) as client:
        request = AgentRequestEvent(
            source="rest",
            source_id="orders-service",
            user_id="svc-orders",
            content="summarise order 1234",
            reply_stream=transport.names.responses("rest", "orders-service"),
        )
        reply = await client.request(request, timeout=10)
        print(f"{reply.status}: {reply.content}")


if __name__ == "__main__":
    asyncio.run(main())
