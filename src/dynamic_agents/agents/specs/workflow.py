"""``WorkflowSpec``: an agno Workflow as data; steps run agents, teams or registered functions."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from dynamic_agents._validation import NotBoolean
from dynamic_agents.agents.specs.base import SpecBase, SpecKind

__all__ = [
    "AgentStep",
    "ConditionStep",
    "FunctionStep",
    "LoopStep",
    "ParallelStep",
    "RouterStep",
    "StepSpec",
    "TeamStep",
    "WorkflowSpec",
]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None


class AgentStep(_Step):
    type: Literal["agent"] = "agent"
    agent: str = Field(min_length=1, description="An agent spec id")


class TeamStep(_Step):
    type: Literal["team"] = "team"
    team: str = Field(min_length=1, description="A team spec id")


class FunctionStep(_Step):
    type: Literal["function"] = "function"
    function: str = Field(min_length=1, description="A step function registered in the ToolRegistry")


class ParallelStep(_Step):
    type: Literal["parallel"] = "parallel"
    steps: tuple[StepSpec, ...] = Field(min_length=1)


class ConditionStep(_Step):
    type: Literal["condition"] = "condition"
    evaluator: str = Field(min_length=1, description="A registered function (StepInput) -> bool")
    steps: tuple[StepSpec, ...] = Field(min_length=1)


class LoopStep(_Step):
    type: Literal["loop"] = "loop"
    steps: tuple[StepSpec, ...] = Field(min_length=1)
    max_iterations: Annotated[int, NotBoolean] = Field(default=3, ge=1, le=100, strict=True)
    end_condition: str | None = Field(default=None, description="A registered function (outputs) -> bool")


class RouterStep(_Step):
    type: Literal["router"] = "router"
    selector: str = Field(min_length=1, description="A registered function (StepInput) -> step name(s)")
    choices: tuple[StepSpec, ...] = Field(min_length=1)


StepSpec = Annotated[
    AgentStep | TeamStep | FunctionStep | ParallelStep | ConditionStep | LoopStep | RouterStep,
    Field(discriminator="type"),
]

for _model in (ParallelStep, ConditionStep, LoopStep, RouterStep):
    _model.model_rebuild()


class WorkflowSpec(SpecBase):
    kind: ClassVar[SpecKind] = SpecKind.WORKFLOW
    step_types: ClassVar[tuple[str, ...]] = tuple(
        step.model_fields["type"].default for step in get_args(get_args(StepSpec)[0])
    )

    steps: tuple[StepSpec, ...] = Field(min_length=1)
