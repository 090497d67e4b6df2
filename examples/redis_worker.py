"""A worker on Redis, with API keys from the A8N Identity service, stopping cleanly on SIGTERM.

This is the shape of a production worker process. To run it self-contained, the Identity service is
the in-memory one from ``dynamic_agents.testing`` and the LLM deployment answers with
``mock_response``; swap in ``SecretsManager.from_identity("https://identity…", token=…)`` and a real
``router.yaml``. After answering one demo request the script sends itself SIGTERM to show the
shutdown. Needs Redis (``REDIS_URL``, default ``redis://127.0.0.1:6379/0``):
``pip install -e ".[agents,redis]" && python examples/redis_worker.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

os.environ.setdefault("AGNO_TELEMETRY", "false")

from dynamic_agents.agents import (
    AgentRuntime,
    AgentSpec,
    AgnoExecutor,
    InMemorySpecStore,
    RouterModels,
    ToolRegistry,
)
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames
from dynamic_agents.llm import RouterConfig, build_router
from dynamic_agents.routing import RoutingConfig
from dynamic_agents.secrets import SecretsManager
from dynamic_agents.testing import InMemoryIdentityService
from dynamic_agents.transports import RedisStreamsTransport
from dynamic_agents.worker import AgentWorker, WorkerSettings

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ROUTER = """
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: secret:openai:api_key          # resolved through the SecretsManager, rotated live
      mock_response: "Hello from a worker on Redis."
"""
ROUTING = """
discord:
  routing:
    default_agent: discord-assistant
"""


async def main() -> None:
    identity = InMemoryIdentityService()  # stands in for A8N Identity
    identity.add_secret("main", "openai", {"api_key": "sk-demo-not-a-real-key"})
    secrets = SecretsManager.from_identity(
        "http://127.0.0.1:8000", "service-token", client_options={"transport": identity.mock_transport()}
    )
    names = StreamNames(f"{{example-{uuid.uuid4().hex[:8]}}}")  # a demo prefix; "agent" in production
    transport = RedisStreamsTransport.from_url(REDIS_URL, names=names)
    async with secrets, await build_router(RouterConfig.from_yaml(ROUTER), secrets) as llm:
        runtime = AgentRuntime(InMemorySpecStore(), ToolRegistry(), RouterModels(llm))
        await runtime.agents.create(AgentSpec.from_dict({"id": "discord-assistant", "model": "gpt-4o-mini"}))
        worker = AgentWorker(
            transport,
            transport.coordinator(),
            RoutingConfig.from_yaml(ROUTING).router(),
            AgnoExecutor(runtime),
            settings=WorkerSettings(block=0.5),
        )

        # Signals belong to the host: turn SIGTERM / SIGINT into a graceful stop.
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)

        async with worker:  # consumes in the background; stops gracefully on exit
            await demo(transport, names)
            os.kill(os.getpid(), signal.SIGTERM)  # what an orchestrator does to stop the process
            await stopping.wait()
        print(f"stopped cleanly: {worker.stats.completed} answered, {worker.in_flight} in flight")
        await runtime.aclose()
    await cleanup(names)
    await transport.aclose()


async def demo(transport: RedisStreamsTransport, names: StreamNames) -> None:
    """Play the interface: publish one request and wait for its reply."""
    reply_stream = names.responses("discord", "42")
    request = AgentRequestEvent(
        source="discord", source_id="42", user_id="u", content="hi", reply_stream=reply_stream
    )
    await transport.publish(names.requests, request)
    while not (replies := await transport.read_stream(reply_stream, AgentResponseEvent, block=1.0)):
        pass
    print(f"reply: {replies[0].event.content}")


async def cleanup(names: StreamNames) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{names.prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
