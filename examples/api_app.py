"""The REST API mounted in a FastAPI app: agents CRUD, execute (JSON and server-sent events), with a
bearer token — offline, with scripted model replies.

Run it as a script and it calls itself in process, through httpx's ASGI transport: it creates an
agent, executes it, streams a reply, replays an idempotent call and exits. Needs the ``api`` and
``agents`` extras: ``pip install "dynamic-agents[api,agents]" && python examples/api_app.py``.

To serve it instead (``pip install uvicorn``)::

    AGENTS_API_TOKEN=change-me uvicorn examples.api_app:app --port 8080
    # or, from Python: uvicorn.run(app, host="127.0.0.1", port=8080)

    curl -H "Authorization: Bearer change-me" -H "Content-Type: application/json" \\
         -d '{"id": "support", "model": "gpt"}' http://127.0.0.1:8080/api/v1/agents
    curl -H "Authorization: Bearer change-me" -H "Content-Type: application/json" \\
         -d '{"input": "Hello", "session_id": "s1"}' http://127.0.0.1:8080/api/v1/agents/support/execute

In a real deployment the models come from the LLM router (``RouterModels(await build_router(config,
secrets))``), the specs from a persistent store, and the transport from Redis.
"""

from __future__ import annotations

import asyncio
import hmac
import os

os.environ.setdefault("AGNO_TELEMETRY", "false")

import httpx
from fastapi import FastAPI

from dynamic_agents.agents import AgentRuntime, InMemorySpecStore, ToolRegistry
from dynamic_agents.api import AgentsHTTPClient, create_api_router
from dynamic_agents.events import Target, TargetType
from dynamic_agents.routing import EventRouter
from dynamic_agents.testing import InMemoryServer, InMemoryTransport, ScriptedModels

API_TOKEN = os.environ.get("AGENTS_API_TOKEN", "demo-token")


def verify_token(token: str) -> bool:
    """The bearer-token verifier: a constant-time comparison with the configured token."""
    return hmac.compare_digest(token.encode(), API_TOKEN.encode())


def create_app() -> FastAPI:
    # Scripted replies stand in for an LLM: each model call takes the next one.
    replies = ["Hello! How can I help you today?", "Sure: here is a streamed answer.", "Anything else?"]
    models = ScriptedModels({"gpt": replies * 100}, chunk_size=8)
    runtime = AgentRuntime(InMemorySpecStore(), ToolRegistry(), models)
    application = FastAPI(title="dynamic-agents API demo")
    application.include_router(
        create_api_router(
            runtime=runtime,
            auth=verify_token,
            transport=InMemoryTransport(InMemoryServer()),  # enables cancel and dead-letter routes
            event_router=EventRouter(default=Target(type=TargetType.AGENT, id="support")),
        )
    )
    return application


app = create_app()


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with AgentsHTTPClient("http://demo", token=API_TOKEN, transport=transport) as client:
        created = await client.create(
            "agents", {"id": "support", "model": "gpt", "instructions": "Be brief."}
        )
        print(f"created {created['kind']} {created['id']!r} (version {created['version']})")

        result = await client.execute(
            "agents", "support", "Hi!", session_id="demo", idempotency_key="order-1"
        )
        print(f"execute -> {result['status']}: {result['content']}")

        deltas = []
        async for event, data in client.stream("agents", "support", "Stream it", session_id="demo"):
            if event == "delta":
                deltas.append(data["content"])
            else:
                print(f"stream  -> {len(deltas)} deltas {deltas!r}, then {event}: {data['content']}")

        replayed = await client.execute(
            "agents", "support", "Hi!", session_id="demo", idempotency_key="order-1"
        )
        print(f"replay  -> same result, not run again: {replayed == result}")
        assert replayed == result

    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as anonymous:
        refused = await anonymous.get("/api/v1/agents")
        print(f"without a token -> {refused.status_code} {refused.json()['detail']}")
        assert refused.status_code == 401


if __name__ == "__main__":
    asyncio.run(main())
