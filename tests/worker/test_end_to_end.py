"""Discord-shaped requests through real Redis, a worker, agno targets on mock deployments, and back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dynamic_agents.agents import (
    AgentRuntime,
    AgentSpec,
    AgnoExecutor,
    InMemorySpecStore,
    RouterModels,
    TeamSpec,
    ToolRegistry,
    WorkflowSpec,
)
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, ResponseStatus, StreamNames
from dynamic_agents.llm import LLMRouter
from dynamic_agents.routing import RoutingConfig
from dynamic_agents.testing import mock_llm_router
from dynamic_agents.transports import RedisStreamsTransport
from dynamic_agents.worker import AgentWorker, WorkerSettings

pytestmark = pytest.mark.redis

ROUTING = """
discord:
  routing:
    default_agent: discord-assistant
    rules:
      - name: Support Guild
        guild_ids: ["987654321"]
        team_id: support-team
      - name: Reports
        content_pattern: "^/report"
        workflow_id: report
      - name: Broken
        content_pattern: "^/broken"
        agent_id: nobody-has-this-agent
"""


@pytest.fixture
async def llm() -> AsyncIterator[LLMRouter]:
    router = await mock_llm_router({"gpt-4o-mini": "Hello from the mock deployment."})
    yield router
    await router.aclose()


async def test_discord_request_to_reply_for_agents_teams_workflows_and_errors(
    redis_url: str, redis_prefix: str, llm: LLMRouter
) -> None:
    names = StreamNames(redis_prefix)
    runtime = AgentRuntime(InMemorySpecStore(), ToolRegistry(), RouterModels(llm))
    await runtime.agents.create(AgentSpec.from_dict({"id": "discord-assistant", "model": "gpt-4o-mini"}))
    await runtime.agents.create(AgentSpec.from_dict({"id": "support-agent", "model": "gpt-4o-mini"}))
    await runtime.teams.create(
        TeamSpec.from_dict(
            {"id": "support-team", "members": ["support-agent"], "model": "gpt-4o-mini", "mode": "coordinate"}
        )
    )
    await runtime.workflows.create(
        WorkflowSpec.from_dict({"id": "report", "steps": [{"type": "agent", "agent": "support-agent"}]})
    )
    interface = RedisStreamsTransport.from_url(redis_url, names=names)
    worker_transport = RedisStreamsTransport.from_url(redis_url, names=names)
    worker = AgentWorker(
        worker_transport,
        worker_transport.coordinator(),
        RoutingConfig.from_yaml(ROUTING).router(),
        AgnoExecutor(runtime),
        settings=WorkerSettings(block=0.05),
    )
    cases = {
        "plain": ({"content": "hello"}, "discord-assistant", ResponseStatus.COMPLETED),
        "team": (
            {"content": "my printer", "metadata": {"guild_id": "987654321"}},
            "support-team",
            ResponseStatus.COMPLETED,
        ),
        "workflow": ({"content": "/report weekly"}, "report", ResponseStatus.COMPLETED),
        "unknown": ({"content": "/broken"}, "nobody-has-this-agent", ResponseStatus.ERROR),
    }
    requests = {}
    try:
        for name, (fields, _, _) in cases.items():
            metadata = {**fields.get("metadata", {}), "reply_to": names.responses("discord", "123456789")}
            request = AgentRequestEvent.model_validate(
                {
                    "type": "discord.message",  # the design document's publish shape
                    "source": "discord",
                    "channel_id": "123456789",
                    "user_id": "111222333",
                    "content": fields["content"],
                    "metadata": metadata,
                }
            )
            requests[name] = request
            await interface.publish(names.requests, request)
        await worker.run_until_idle()
        replies = {
            entry.event.request_id: entry.event
            for entry in await interface.read_stream(
                names.responses("discord", "123456789"), AgentResponseEvent
            )
        }
    finally:
        await interface.aclose()
        await worker_transport.aclose()
        await runtime.aclose()
    assert len(replies) == len(cases)
    for name, (_, target, status) in cases.items():
        reply = replies[requests[name].id]
        assert (reply.agent_id, reply.status) == (target, status), name
        if status == ResponseStatus.COMPLETED:
            assert reply.content == "Hello from the mock deployment.", name
        else:
            assert "nobody-has-this-agent" in (reply.error_message or "")
    assert requests["plain"].session_id == "discord:123456789"
