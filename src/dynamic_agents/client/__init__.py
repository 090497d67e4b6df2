"""The interface side: publish requests, await or consume replies, split replies for platforms."""

from dynamic_agents.client.client import AgentClient
from dynamic_agents.client.splitting import (
    DEFAULT_LIMIT,
    MIN_LIMIT,
    PLATFORM_LIMITS,
    MessageChunk,
    join_chunks,
    split_message,
    split_message_parts,
)

__all__ = [
    "DEFAULT_LIMIT",
    "MIN_LIMIT",
    "PLATFORM_LIMITS",
    "AgentClient",
    "MessageChunk",
    "join_chunks",
    "split_message",
    "split_message_parts",
]
