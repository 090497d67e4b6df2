"""The LLM layer: one LiteLLM Router built from config, with secrets resolved and rotated live.

``RouterConfig`` is light; ``build_router`` / ``LLMRouter`` import litellm (about 1.5 s) and
``agno_model`` imports agno, on first use (extra ``agents``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports
from dynamic_agents.llm.config import ROUTING_STRATEGIES, SECRET_PARAMS, DeploymentConfig, RouterConfig

if TYPE_CHECKING:
    from dynamic_agents.llm.agno import RouterClient, agno_model
    from dynamic_agents.llm.router import LLMRouter, build_router

__all__ = [
    "ROUTING_STRATEGIES",
    "SECRET_PARAMS",
    "DeploymentConfig",
    "LLMRouter",
    "RouterClient",
    "RouterConfig",
    "agno_model",
    "build_router",
]

_LAZY: dict[str, str] = {
    "LLMRouter": "dynamic_agents.llm.router",
    "RouterClient": "dynamic_agents.llm.agno",
    "agno_model": "dynamic_agents.llm.agno",
    "build_router": "dynamic_agents.llm.router",
}

__getattr__ = _lazy_exports(__name__, _LAZY, globals())
