"""An agno Agent with a tool, and a Team of two agents, running through the LLMRouter — offline.

The model calls take litellm's real OpenAI SDK path; ``FakeOpenAI`` plays the provider over an
in-memory HTTP transport, so no key and no network are needed. Needs only the ``agents`` extra:
``pip install "dynamic-agents[agents]" && python examples/llm_agents.py``.
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("AGNO_TELEMETRY", "false")

from agno.agent import Agent
from agno.team import Team

from dynamic_agents.llm import RouterConfig, agno_model, build_router
from dynamic_agents.secrets import SecretsManager, StaticSource
from dynamic_agents.testing import FakeOpenAI, ToolCall


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


async def main() -> None:
    fake = FakeOpenAI(
        [
            # the agent: a tool call, then the answer
            ToolCall("get_weather", {"city": "Lisbon"}),
            "It is sunny in Lisbon.",
            # the team: the leader delegates, the member answers, the leader concludes
            ToolCall("delegate_task_to_member", {"member_id": "researcher", "task": "Find the weather"}),
            "The researcher found: sunny.",
            "Team answer: it is sunny.",
        ]
    )
    secrets = SecretsManager(StaticSource({"openai": {"api_key": "sk-example-not-a-real-key"}}))
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "gpt-4o-mini",
                    "litellm_params": {
                        "model": "openai/gpt-4o-mini",
                        "api_key": "secret:openai:api_key",  # resolved by the SecretsManager
                        "api_base": fake.api_base,
                    },
                }
            ]
        }
    )
    with fake.installed():
        async with secrets, await build_router(config, secrets) as router:
            agent = Agent(
                model=agno_model(router, "gpt-4o-mini", temperature=0.2), tools=[get_weather], telemetry=False
            )
            answer = await agent.arun("What is the weather in Lisbon?", session_id="example-agent")
            print(f"agent: {answer.content}")

            researcher = Agent(id="researcher", model=agno_model(router, "gpt-4o-mini"), telemetry=False)
            writer = Agent(id="writer", model=agno_model(router, "gpt-4o-mini"), telemetry=False)
            team = Team(
                members=[researcher, writer],
                mode="coordinate",
                model=agno_model(router, "gpt-4o-mini"),
                telemetry=False,
            )
            result = await team.arun("How is the weather?", session_id="example-team")
            print(f"team: {result.content}")
    assert answer.content == "It is sunny in Lisbon."
    assert result.content == "Team answer: it is sunny."
    print(f"{len(fake.requests)} model calls, every one through the LLMRouter")


if __name__ == "__main__":
    asyncio.run(main())
