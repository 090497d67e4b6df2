"""``AgentSpec``: an agno Agent as data."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator

from dynamic_agents.agents.specs.base import SpecBase, SpecKind

__all__ = ["AgentSpec", "ModelSettings", "ToolRef"]


class ModelSettings(BaseModel):
    """Which router model group answers, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="A model group of the LLM router (model_list.model_name)")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    tags: tuple[str, ...] = Field(default=(), description="Sent as request metadata for tag routing")

    @classmethod
    def coerce(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value


class ToolRef(BaseModel):
    """A registered tool by name; ``parameters`` go to a registered toolkit factory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)


class AgentSpec(SpecBase):
    """An agent: model, instructions, tools, output schema, and agno 3's history and memory switches."""

    kind: ClassVar[SpecKind] = SpecKind.AGENT

    model: ModelSettings
    instructions: str | tuple[str, ...] | None = None
    expected_output: str | None = None
    markdown: bool = False
    tools: tuple[ToolRef, ...] = ()
    output_schema: str | None = Field(default=None, description="A schema registered in the ToolRegistry")

    add_history_to_context: bool = False
    num_history_runs: int | None = Field(default=None, ge=0)
    num_history_messages: int | None = Field(default=None, ge=0)
    enable_session_summaries: bool = False
    add_session_summary_to_context: bool | None = None
    enable_agentic_memory: bool = False
    update_memory_on_run: bool = False
    add_memories_to_context: bool | None = None

    @field_validator("model", mode="before", json_schema_input_type=str | ModelSettings)
    @classmethod
    def _model_by_name(cls, value: object) -> object:
        return ModelSettings.coerce(value)

    @field_validator("num_history_messages")
    @classmethod
    def _one_history_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        runs = info.data.get("num_history_runs")
        if value is not None and runs is not None:  # agno would keep the runs and drop this
            raise ValueError(
                f"num_history_messages ({value}) and num_history_runs ({runs}) cannot both be set: "
                "set one of them"
            )
        return value

    @field_validator("tools", mode="before", json_schema_input_type=tuple[str | ToolRef, ...])
    @classmethod
    def _tools_by_name(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value
