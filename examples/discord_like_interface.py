"""A Discord-like interface: a normalised message routed by the design document's discord.yaml,
answered by a worker, split for Discord's 2,000-character limit and delivered.

Run: ``python examples/discord_like_interface.py`` (core install, no servers).
"""

from __future__ import annotations

import asyncio

from dynamic_agents.client import AgentClient, split_message
from dynamic_agents.events import AgentRequestEvent, Target
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.routing import RoutingConfig
from dynamic_agents.transports import InMemoryTransport
from dynamic_agents.worker import AgentWorker

DISCORD_YAML = """
discord:
  token: "secret:discord:bot_token"
  routing:
    default_agent: "discord-assistant"
    rules:
      - name: "Admin Channel"
        channel_ids: ["123456789"]
        agent_id: "admin-agent"
      - name: "Code Help"
        content_pattern: "^/code"
        agent_id: "code-assistant"
  session:
    prefix: "discord"
    ttl: 3600
"""


async def long_answer(target: Target, request: AgentRequestEvent) -> str:
    paragraph = f"[{target.id}] Here is a thorough explanation of your question. " * 12
    code = "```python\n" + "\n".join(f"print({n})" for n in range(150)) + "\n```"
    return "\n\n".join([paragraph, code, paragraph])


async def deliver(channel_id: str, text: str) -> None:
    """Stands in for the Discord API call."""
    assert len(text) <= 2000
    print(f"  -> #{channel_id}: {len(text)} characters")


async def main() -> None:
    routing = RoutingConfig.from_yaml(DISCORD_YAML)
    transport = InMemoryTransport()
    client = AgentClient(transport, routing=routing)
    worker = AgentWorker(transport, transport.coordinator(), routing.router(), FunctionExecutor(long_answer))

    # The Discord gateway gave us a message; normalise it and publish it.
    message = {
        "id": "1199999999999999",
        "channel_id": "555",
        "guild_id": "42",
        "user_id": "7",
        "content": "/code a loop?",
    }
    request = client.build_request("discord", message)
    print(f"routed to {request.agent_id}, session {request.session_id}")
    await client.publish(request)

    async with worker:
        replies = client.responses(
            [request.reply_stream or ""], group="discord-interface", consumer="gateway-1"
        )
        delivery = await anext(replies)
        chunks = split_message(delivery.event.content, platform="discord")
        print(f"reply of {len(delivery.event.content)} characters in {len(chunks)} messages:")
        for chunk in chunks:
            await deliver(request.source_id, chunk)
        await client.ack(delivery)  # delivered: the reply leaves the interface's pending list
        await replies.aclose()


if __name__ == "__main__":
    asyncio.run(main())
