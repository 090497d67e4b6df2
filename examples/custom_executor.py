"""A worker whose target is a plain async function, not an agno agent.

The worker depends on the ``Executor`` protocol only: this process never imports agno or litellm.
Run: ``python examples/custom_executor.py`` (core install, no servers).
"""

from __future__ import annotations

import asyncio
import sys

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, Target, TargetType
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import InMemoryTransport
from dynamic_agents.worker import AgentWorker


async def shout(target: Target, request: AgentRequestEvent) -> str:
    """Any async function can answer: call a service, query a database, run a model of your own."""
    return f"{request.user_name or request.user_id} said: {request.content.upper()}"


async def main() -> None:
    transport = InMemoryTransport()
    router = EventRouter(default=Target(type=TargetType.AGENT, id="shouter"))
    worker = AgentWorker(transport, transport.coordinator(), router, FunctionExecutor(shout))

    request = AgentRequestEvent(
        source="rest",
        source_id="api",
        user_id="42",
        user_name="Bea",
        content="hello",
        reply_stream=transport.names.responses("rest", "api"),
    )
    await transport.publish(transport.names.requests, request)
    await worker.run_until_idle()
    (reply,) = await transport.read_stream(request.reply_stream or "", AgentResponseEvent)
    print(reply.event.content)
    assert not {"agno", "litellm"} & set(sys.modules), "a plain-function worker never imports agno or litellm"


if __name__ == "__main__":
    asyncio.run(main())
