"""Helpers for the REST API tests: an app on an in-memory stack (store, scripted models, transport,
event router), the token, and dead letters made the way workers make them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from dynamic_agents.agents import AgentRuntime, InMemorySpecStore, ToolRegistry
from dynamic_agents.api import create_api_router
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, ResponseStatus, Target, TargetType
from dynamic_agents.routing import EventRouter, RoutingRule
from dynamic_agents.testing import InMemoryTransport, ScriptedModels
from dynamic_agents.transports import Reply, Subscription, Transport

TOKEN = "test-token"
BASE = "http://api.test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def verify(token: str) -> bool:
    return token == TOKEN


def make_app(runtime: AgentRuntime, **options: Any) -> FastAPI:
    options.setdefault("auth", verify)
    app = FastAPI()
    app.include_router(create_api_router(runtime=runtime, **options))
    return app


def make_runtime(models: Any = None) -> AgentRuntime:
    return AgentRuntime(InMemorySpecStore(), ToolRegistry(), models or ScriptedModels({"gpt": []}))


def event_router() -> EventRouter:
    return EventRouter(
        [RoutingRule.model_validate({"name": "support", "source": "discord", "agent_id": "bot"})],
        default=Target(type=TargetType.AGENT, id="fallback"),
    )


def request_event(content: str = "hi") -> AgentRequestEvent:
    return AgentRequestEvent(source="discord", source_id="c1", user_id="u1", content=content)


async def dead_letter(
    transport: Transport, reason: str = "poison: tool exploded", *, answered_with: str | None = None
) -> str:
    """A request on the request stream, read by a consumer and dead-lettered; ``answered_with``: an
    error reply with that content and its completed-request record too, the way workers do."""
    stream = transport.names.requests
    await transport.ensure_group(stream, "workers")
    event = request_event("cursed")
    await transport.publish(stream, event)
    (delivery,) = await transport.read(Subscription(stream, "workers", "w1", AgentRequestEvent, block=0), 1)
    if answered_with is None:
        assert await transport.dead_letter(delivery, reason)
    else:
        error = AgentResponseEvent(id=answered_with, request_id=event.id, status=ResponseStatus.ERROR)
        assert await transport.dead_letter(delivery, reason, Reply(error, None), record_ttl=60)
    return await transport.last_entry_id(transport.names.dead_letters)


@dataclass
class Stack:
    """An app with every optional dependency, and a client that sends the valid token."""

    app: FastAPI
    runtime: AgentRuntime
    models: ScriptedModels
    transport: InMemoryTransport
    routing: EventRouter
    client: httpx.AsyncClient


StackFactory = Callable[..., Awaitable[Stack]]


def client_for(app: FastAPI, headers: Mapping[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)
