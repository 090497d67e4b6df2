"""Agents as data: specs, stores, the tool registry, agno builders, managers and the executor.

Specs, the registry and the stores load without agno; ``AgentRuntime``, the managers, builders and
``AgnoExecutor`` import agno on first use (extra ``agents``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports
from dynamic_agents.agents.registry import RegisteredTool, ToolRegistry
from dynamic_agents.agents.specs import (
    SPEC_MODELS,
    AgentSpec,
    AgentStep,
    ConditionStep,
    FunctionStep,
    LoopStep,
    MemberRef,
    ModelSettings,
    ParallelStep,
    RouterStep,
    SpecBase,
    SpecKind,
    SpecStatus,
    TeamSpec,
    TeamStep,
    ToolRef,
    WorkflowSpec,
)
from dynamic_agents.agents.stores import InMemorySpecStore, SpecStore, YamlDirectorySpecStore

if TYPE_CHECKING:
    from dynamic_agents.agents.build import Builder, ModelProvider, RouterModels
    from dynamic_agents.agents.managers import AgentManager, SpecManager, TeamManager, WorkflowManager
    from dynamic_agents.agents.runtime import AgentRuntime, AgnoExecutor, agno_session_id
    from dynamic_agents.agents.sessions import session_db
    from dynamic_agents.agents.stores import SqlSpecStore

__all__ = [
    "SPEC_MODELS",
    "AgentManager",
    "AgentRuntime",
    "AgentSpec",
    "AgentStep",
    "AgnoExecutor",
    "Builder",
    "ConditionStep",
    "FunctionStep",
    "InMemorySpecStore",
    "LoopStep",
    "MemberRef",
    "ModelProvider",
    "ModelSettings",
    "ParallelStep",
    "RegisteredTool",
    "RouterModels",
    "RouterStep",
    "SpecBase",
    "SpecKind",
    "SpecManager",
    "SpecStatus",
    "SpecStore",
    "SqlSpecStore",
    "TeamManager",
    "TeamSpec",
    "TeamStep",
    "ToolRef",
    "ToolRegistry",
    "WorkflowManager",
    "WorkflowSpec",
    "YamlDirectorySpecStore",
    "agno_session_id",
    "session_db",
]

_LAZY: dict[str, str] = {
    "AgentManager": "dynamic_agents.agents.managers",
    "AgentRuntime": "dynamic_agents.agents.runtime",
    "AgnoExecutor": "dynamic_agents.agents.runtime",
    "Builder": "dynamic_agents.agents.build",
    "ModelProvider": "dynamic_agents.agents.build",
    "RouterModels": "dynamic_agents.agents.build",
    "SpecManager": "dynamic_agents.agents.managers",
    "SqlSpecStore": "dynamic_agents.agents.stores",
    "TeamManager": "dynamic_agents.agents.managers",
    "WorkflowManager": "dynamic_agents.agents.managers",
    "agno_session_id": "dynamic_agents.agents.runtime",
    "session_db": "dynamic_agents.agents.sessions",
}

__getattr__ = _lazy_exports(__name__, _LAZY, globals())
