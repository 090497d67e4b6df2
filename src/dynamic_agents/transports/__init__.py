"""Transports move events through streams with consumer groups; coordinators hold session leases
and completed-request records. In-memory and Redis implementations share one behaviour.

``RedisStreamsTransport`` and ``RedisCoordinator`` load redis-py on first use (extra ``redis``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports
from dynamic_agents.transports.base import (
    Claim,
    ClaimStatus,
    Clock,
    CompletedRecord,
    Completion,
    Coordinator,
    Delivery,
    Entry,
    Lease,
    PendingEntry,
    Reply,
    Subscription,
    SystemClock,
    Transport,
    TransportStats,
)
from dynamic_agents.transports.memory import (
    InMemoryCoordinator,
    InMemoryServer,
    InMemoryTransport,
    ManualClock,
)

if TYPE_CHECKING:
    from dynamic_agents.transports.redis import RedisCoordinator, RedisStreamsTransport

__all__ = [
    "Claim",
    "ClaimStatus",
    "Clock",
    "CompletedRecord",
    "Completion",
    "Coordinator",
    "Delivery",
    "Entry",
    "InMemoryCoordinator",
    "InMemoryServer",
    "InMemoryTransport",
    "Lease",
    "ManualClock",
    "PendingEntry",
    "RedisCoordinator",
    "RedisStreamsTransport",
    "Reply",
    "Subscription",
    "SystemClock",
    "Transport",
    "TransportStats",
]

# public name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    "RedisCoordinator": "dynamic_agents.transports.redis",
    "RedisStreamsTransport": "dynamic_agents.transports.redis",
}


__getattr__ = _lazy_exports(__name__, _LAZY, globals())
