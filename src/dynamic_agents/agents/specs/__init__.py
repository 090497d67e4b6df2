"""Declarative specs: agents, teams and workflows as data (dict, YAML or JSON)."""

from collections.abc import Mapping
from typing import Final

from dynamic_agents.agents.specs.agent import AgentSpec, ModelSettings, ToolRef
from dynamic_agents.agents.specs.base import SpecBase, SpecKind, SpecStatus
from dynamic_agents.agents.specs.team import MemberRef, TeamSpec
from dynamic_agents.agents.specs.workflow import (
    AgentStep,
    ConditionStep,
    FunctionStep,
    LoopStep,
    ParallelStep,
    RouterStep,
    StepSpec,
    TeamStep,
    WorkflowSpec,
)

SPEC_MODELS: Final[Mapping[SpecKind, type[SpecBase]]] = {
    SpecKind.AGENT: AgentSpec,
    SpecKind.TEAM: TeamSpec,
    SpecKind.WORKFLOW: WorkflowSpec,
}
"""The model class of each kind, used by stores to read documents back."""

__all__ = [
    "SPEC_MODELS",
    "AgentSpec",
    "AgentStep",
    "ConditionStep",
    "FunctionStep",
    "LoopStep",
    "MemberRef",
    "ModelSettings",
    "ParallelStep",
    "RouterStep",
    "SpecBase",
    "SpecKind",
    "SpecStatus",
    "StepSpec",
    "TeamSpec",
    "TeamStep",
    "ToolRef",
    "WorkflowSpec",
]
