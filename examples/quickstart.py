"""Quickstart: the whole flow with no servers — interface → stream → worker → agent → reply.

In-memory transport and coordinator, a mock LLM deployment (litellm's ``mock_response``), agno with
SQLite sessions in a temporary directory. Run:
``pip install -e ".[agents]" && python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

os.environ.setdefault("AGNO_TELEMETRY", "false")

from dynamic_agents.agents import (
    AgentRuntime,
    AgentSpec,
    AgnoExecutor,
    InMemorySpecStore,
    RouterModels,
    ToolRegistry,
    session_db,
)
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent
from dynamic_agents.routing import RoutingConfig
from dynamic_agents.testing import mock_llm_router
from dynamic_agents.transports import InMemoryTransport
from dynamic_agents.worker import AgentWorker

ROUTING = """
discord:
  routing:
    default_agent: discord-assistant
"""


async def main(workdir: Path) -> None:
    transport = InMemoryTransport()  # RedisStreamsTransport.from_url(...) in production
    llm = await mock_llm_router(
        {"gpt-4o-mini": "Hello from your agent! A consumer group shares a stream's entries."}
    )
    runtime = AgentRuntime(
        InMemorySpecStore(),
        ToolRegistry(),
        RouterModels(llm),
        db=session_db(f"sqlite:///{workdir / 'sessions.db'}"),
    )
    await runtime.agents.create(
        AgentSpec.from_dict(
            {"id": "discord-assistant", "model": "gpt-4o-mini", "add_history_to_context": True}
        )
    )
    worker = AgentWorker(
        transport, transport.coordinator(), RoutingConfig.from_yaml(ROUTING).router(), AgnoExecutor(runtime)
    )

    # The interface side: a normalised Discord message goes to agent:requests.
    names = transport.names
    request = AgentRequestEvent(
        source="discord",
        source_id="123456789",
        user_id="111222333",
        user_name="ana",
        content="What is a consumer group?",
        reply_stream=names.responses("discord", "123456789"),
    )
    await transport.publish(names.requests, request)

    await worker.run_until_idle()

    (reply,) = await transport.read_stream(request.reply_stream or "", AgentResponseEvent)
    answer = reply.event
    print(f"{answer.agent_name} ({answer.status}, {answer.execution_time_ms} ms): {answer.content}")
    await llm.aclose()
    await runtime.aclose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(main(Path(directory)))
