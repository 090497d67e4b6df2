"""Test doubles and helpers for code built on dynamic-agents.

* ``InMemoryTransport`` behaves like the Redis transport (groups, pending entries, reclaim, dead
  letters), with a :class:`ManualClock` for deterministic idle times.
* ``InMemoryIdentityService`` speaks the A8N Identity HTTP contract (``httpx.MockTransport`` or
  ASGI), with fault switches.
* ``RedisServer`` starts a private ``redis-server`` that a fault test may kill, restart or pause
  (a hung server); to empty it, send ``FLUSHALL`` through a client on its ``url``.
* ``FakeOpenAI`` is a scripted OpenAI-compatible HTTP API for litellm's real SDK path;
  ``ScriptedModel`` a scripted agno model; ``mock_llm_router`` an ``LLMRouter`` answering with
  ``mock_response``. These three load litellm / agno on first use (extra ``agents``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports
from dynamic_agents.testing.identity import InMemoryIdentityService, RecordedRequest
from dynamic_agents.testing.openai import FakeOpenAI, FakeOpenAIRequest, HTTPErrorStep
from dynamic_agents.testing.redis_server import RedisServer, free_port
from dynamic_agents.testing.script import ToolCall
from dynamic_agents.transports.memory import (
    InMemoryCoordinator,
    InMemoryServer,
    InMemoryTransport,
    ManualClock,
)

if TYPE_CHECKING:
    from dynamic_agents.testing.agno import RecordedCall, ScriptedModel, ScriptedModels, ScriptStep
    from dynamic_agents.testing.llm import mock_llm_router, mock_router_config

__all__ = [
    "FakeOpenAI",
    "FakeOpenAIRequest",
    "HTTPErrorStep",
    "InMemoryCoordinator",
    "InMemoryIdentityService",
    "InMemoryServer",
    "InMemoryTransport",
    "ManualClock",
    "RecordedCall",
    "RecordedRequest",
    "RedisServer",
    "ScriptStep",
    "ScriptedModel",
    "ScriptedModels",
    "ToolCall",
    "free_port",
    "mock_llm_router",
    "mock_router_config",
]

_LAZY: dict[str, str] = {
    "RecordedCall": "dynamic_agents.testing.agno",
    "ScriptStep": "dynamic_agents.testing.agno",
    "ScriptedModel": "dynamic_agents.testing.agno",
    "ScriptedModels": "dynamic_agents.testing.agno",
    "mock_llm_router": "dynamic_agents.testing.llm",
    "mock_router_config": "dynamic_agents.testing.llm",
}

__getattr__ = _lazy_exports(__name__, _LAZY, globals())
