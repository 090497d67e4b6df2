"""Test doubles and helpers for code built on dynamic-agents.

``InMemoryTransport`` behaves like the Redis transport (groups, pending entries, reclaim, dead
letters) with a :class:`ManualClock` for deterministic idle times; ``InMemoryIdentityService``
speaks the A8N Identity HTTP contract (``httpx.MockTransport`` or ASGI) with fault switches;
``RedisServer`` starts a private ``redis-server`` that a fault test may kill, restart or flush.
"""

from dynamic_agents.testing.identity import InMemoryIdentityService, RecordedRequest
from dynamic_agents.testing.redis_server import RedisServer, free_port
from dynamic_agents.transports.memory import (
    InMemoryCoordinator,
    InMemoryServer,
    InMemoryTransport,
    ManualClock,
)

__all__ = [
    "InMemoryCoordinator",
    "InMemoryIdentityService",
    "InMemoryServer",
    "InMemoryTransport",
    "ManualClock",
    "RecordedRequest",
    "RedisServer",
    "free_port",
]
