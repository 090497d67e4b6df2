"""dynamic-agents: LLM agents behind chat platforms and event streams.

The top-level package is light: it imports no broker client, agno or litellm. Public names of every
part are importable from here and loaded on first use::

    from dynamic_agents import AgentRequestEvent, EventCodec
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports
from dynamic_agents._version import __version__

if TYPE_CHECKING:
    from dynamic_agents.events import (
        AgentRequestEvent,
        AgentResponseEvent,
        Attachment,
        DecodedMessage,
        EventCodec,
        LifecycleEvent,
        ResponseStatus,
        StreamNames,
    )
    from dynamic_agents.exceptions import DynamicAgentsError
    from dynamic_agents.transports import (
        Coordinator,
        Delivery,
        InMemoryTransport,
        RedisStreamsTransport,
        Reply,
        Subscription,
        Transport,
    )

# public name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    "AgentRequestEvent": "dynamic_agents.events",
    "AgentResponseEvent": "dynamic_agents.events",
    "Attachment": "dynamic_agents.events",
    "DecodedMessage": "dynamic_agents.events",
    "DynamicAgentsError": "dynamic_agents.exceptions",
    "EventCodec": "dynamic_agents.events",
    "LifecycleEvent": "dynamic_agents.events",
    "ResponseStatus": "dynamic_agents.events",
    "StreamNames": "dynamic_agents.events",
    "Coordinator": "dynamic_agents.transports",
    "Delivery": "dynamic_agents.transports",
    "InMemoryTransport": "dynamic_agents.transports",
    "RedisStreamsTransport": "dynamic_agents.transports",
    "Reply": "dynamic_agents.transports",
    "Subscription": "dynamic_agents.transports",
    "Transport": "dynamic_agents.transports",
}

__all__ = [
    "AgentRequestEvent",
    "AgentResponseEvent",
    "Attachment",
    "Coordinator",
    "DecodedMessage",
    "Delivery",
    "DynamicAgentsError",
    "EventCodec",
    "InMemoryTransport",
    "LifecycleEvent",
    "RedisStreamsTransport",
    "Reply",
    "ResponseStatus",
    "StreamNames",
    "Subscription",
    "Transport",
    "__version__",
]


__getattr__ = _lazy_exports(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
