from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames, Target, TargetType
from dynamic_agents.execution import ExecutionResult, Executor, FunctionExecutor
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import Coordinator, Delivery, InMemoryServer, InMemoryTransport, Transport
from dynamic_agents.worker import AgentWorker, BaseHooks, WorkerSettings
from tests.support import services

FAST = {
    "block": 0.05,
    "claim_min_idle": 0.6,
    "keep_fresh_every": 0.15,
    "lease_ttl": 0.6,
    "lease_poll": 0.02,
    "record_ttl": 3600,
    "request_timeout": 10,
}


@dataclass
class Backend:
    names: StreamNames
    make_transport: Callable[[], Awaitable[Transport]]
    delete_key: Callable[[str], Awaitable[None]]
    transports: list[Transport] = field(default_factory=list)

    async def transport(self) -> Transport:
        transport = await self.make_transport()
        self.transports.append(transport)
        return transport


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        server = InMemoryServer()
        names = StreamNames("test")

        async def make_memory() -> Transport:
            return InMemoryTransport(server, names=names)

        async def delete_memory(key: str) -> None:
            server._keys.pop(key, None)

        backend = Backend(names, make_memory, delete_memory)
    else:
        from redis.asyncio import Redis

        from dynamic_agents.transports import RedisStreamsTransport

        redis_url = services.redis_url()
        if not services.reachable(redis_url, 6379):
            services.unavailable("Redis", redis_url, "start redis-server on 127.0.0.1:6379 or set REDIS_URL")
        prefix = f"{{test-{uuid.uuid4().hex[:12]}}}"
        names = StreamNames(prefix)
        admin = Redis.from_url(redis_url)

        async def make_redis() -> Transport:
            return RedisStreamsTransport.from_url(redis_url, names=names)

        async def delete_redis(key: str) -> None:
            await admin.delete(key)

        backend = Backend(names, make_redis, delete_redis)
    yield backend
    for transport in backend.transports:
        await transport.aclose()
    if request.param == "redis":
        keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await admin.delete(*keys)
        await admin.aclose()


def request_event(
    names: StreamNames, content: str = "hi", *, session: str = "s1", **fields: Any
) -> AgentRequestEvent:
    return AgentRequestEvent(
        source="discord",
        source_id="c1",
        user_id="u1",
        content=content,
        session_id=session,
        reply_stream=names.responses("discord", "c1"),
        **fields,
    )


def echo_router() -> EventRouter:
    return EventRouter(default=Target(type=TargetType.AGENT, id="echo"))


def echo(target: Target, request: AgentRequestEvent) -> str:
    return f"echo: {request.content}"


def worker(
    transport: Transport,
    executor: Executor | None = None,
    *,
    coordinator: Coordinator | None = None,
    router: EventRouter | None = None,
    **settings: Any,
) -> AgentWorker:
    return AgentWorker(
        transport,
        coordinator or transport.coordinator(),
        router or echo_router(),
        executor or FunctionExecutor(echo),
        settings=WorkerSettings(**{**FAST, **settings}),
    )


async def replies(transport: Transport, names: StreamNames) -> list[AgentResponseEvent]:
    return [
        entry.event
        for entry in await transport.read_stream(
            names.responses("discord", "c1"), AgentResponseEvent, count=10_000
        )
    ]


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 - polling a condition, with a deadline
            await asyncio.sleep(0.01)


def result(content: str) -> ExecutionResult:
    from dynamic_agents.events import ResponseStatus

    return ExecutionResult(ResponseStatus.COMPLETED, content=content)


class Handled(BaseHooks):
    """Records the error each handling ended with (``after_handle``)."""

    def __init__(self) -> None:
        self.errors: list[BaseException | None] = []

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        self.errors.append(error)
