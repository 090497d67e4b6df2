"""Fixtures: an API app on an in-memory stack, with a client that sends the valid token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest

from dynamic_agents.events import StreamNames
from dynamic_agents.testing import InMemoryServer, InMemoryTransport, ScriptedModels
from tests.api.support import AUTH, BASE, Stack, StackFactory, event_router, make_app, make_runtime


@pytest.fixture
async def make_stack() -> AsyncIterator[StackFactory]:
    clients: list[httpx.AsyncClient] = []

    async def build(
        scripts: Mapping[str, list[Any]] | None = None,
        *,
        chunk_size: int | None = 4,
        headers: Mapping[str, str] = AUTH,
        **options: Any,
    ) -> Stack:
        models = ScriptedModels(scripts or {"gpt": []}, chunk_size=chunk_size)
        runtime = make_runtime(models)
        transport = InMemoryTransport(InMemoryServer(), names=StreamNames("api"))
        routing = event_router()
        options = {"transport": transport, "event_router": routing, **options}
        app = make_app(runtime, **options)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)
        clients.append(client)
        return Stack(app, runtime, models, transport, routing, client)

    yield build
    for client in clients:
        await client.aclose()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack({"gpt": ["first reply", "second reply"]})
