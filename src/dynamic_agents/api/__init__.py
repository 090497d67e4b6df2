"""The REST admin and execute API (extra ``api``): a FastAPI router hosts mount, and its client.

The client needs only the core install (httpx); the router, FastAPI and the agent stack, imported
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports
from dynamic_agents.api.client import AgentsHTTPClient

if TYPE_CHECKING:
    from dynamic_agents.api.router import NO_AUTH, TokenVerifier, create_api_router

__all__ = ["NO_AUTH", "AgentsHTTPClient", "TokenVerifier", "create_api_router"]

_LAZY: dict[str, str] = dict.fromkeys(
    ["NO_AUTH", "TokenVerifier", "create_api_router"], "dynamic_agents.api.router"
)

__getattr__ = _lazy_exports(__name__, _LAZY, globals())
