"""dynamic-agents: LLM agents behind chat platforms and event streams.

The top-level package is light: it imports no broker client, agno or litellm. Public names of every
part are importable from here and loaded on first use::

    from dynamic_agents import AgentRequestEvent, EventCodec
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
}

__all__ = [
    "AgentRequestEvent",
    "AgentResponseEvent",
    "Attachment",
    "DecodedMessage",
    "DynamicAgentsError",
    "EventCodec",
    "LifecycleEvent",
    "ResponseStatus",
    "StreamNames",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dynamic_agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
