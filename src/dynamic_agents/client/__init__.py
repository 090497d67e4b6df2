"""The interface side: publish requests, await or consume replies, split replies for platforms."""

from dynamic_agents.client.client import AgentClient

__all__ = ["AgentClient"]
