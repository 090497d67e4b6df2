"""Helpers for the REST API tests: an app on an in-memory stack (store, scripted models, transport,
event router), the token, and dead letters made the way workers make them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from dynamic_agents.agents import AgentRuntime, InMemorySpecStore, ToolRegistry
from dynamic_agents.api import create_api_router
from dynamic_agents.events import AgentRequestEvent, Target, TargetType
from dynamic_agents.routing import EventRouter, RoutingRule
from dynamic_agents.testing import InMemoryTransport, ScriptedModels
from dynamic_agents.transports import Subscription, Transport

# The router bugs these tests found (the KNOWN_BUG xfails in test_api.py and test_api_secrets.py):
# while they stand, the tests work around them (in_route_order here, _hits_a_known_bug in the
# schemathesis test) and pin each with a strict xfail. Set this to True once the router is patched:
# the workarounds stop, and the xfail tests must then pass.
ROUTER_PATCHED = True
KNOWN_BUG = pytest.mark.xfail(not ROUTER_PATCHED, strict=True)

TOKEN = "test-token"
BASE = "http://api.test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def verify(token: str) -> bool:
    return token == TOKEN


def in_route_order(api: APIRouter) -> APIRouter:
    """WORKAROUND for the route-order bug (``test_fixed_paths_are_served_by_their_own_routes``):
    the ``/{kind_name}`` routes are declared first, so they shadow ``/health``, ``/dead-letters``,
    ``/routing/rules`` and ``/llm/deployments``. Moving them last lets the tests reach every handler."""
    if not ROUTER_PATCHED:
        api.routes.sort(key=lambda route: "{kind_name}" in getattr(route, "path", ""))
    return api


def make_app(runtime: AgentRuntime, **options: Any) -> FastAPI:
    options.setdefault("auth", verify)
    app = FastAPI()
    app.include_router(in_route_order(create_api_router(runtime=runtime, **options)))
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


async def dead_letter(transport: Transport, reason: str = "poison: tool exploded") -> str:
    """A request on the request stream, read by a consumer and dead-lettered the way workers do."""
    stream = transport.names.requests
    await transport.ensure_group(stream, "workers")
    await transport.publish(stream, request_event("cursed"))
    (delivery,) = await transport.read(Subscription(stream, "workers", "w1", AgentRequestEvent, block=0), 1)
    assert await transport.dead_letter(delivery, reason)
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
