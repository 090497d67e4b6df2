"""``TeamSpec``: an agno Team as data; members are other specs, by id."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dynamic_agents._validation import NotBoolean
from dynamic_agents.agents.specs.agent import ModelSettings
from dynamic_agents.agents.specs.base import SpecBase, SpecKind

__all__ = ["MemberRef", "TeamSpec"]


class MemberRef(BaseModel):
    """A member: an agent or a team, by id (``"researcher"`` means the agent ``researcher``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal[SpecKind.AGENT, SpecKind.TEAM] = SpecKind.AGENT
    id: str = Field(min_length=1)


class TeamSpec(SpecBase):
    kind: ClassVar[SpecKind] = SpecKind.TEAM

    members: tuple[MemberRef, ...] = Field(min_length=1)
    mode: Literal["coordinate", "route", "broadcast", "tasks"] = "coordinate"
    model: ModelSettings
    instructions: str | tuple[str, ...] | None = None
    expected_output: str | None = None
    # strict, each boolean, as AgentSpec's: "yes", 1 and 0 are no booleans
    markdown: bool = Field(default=False, strict=True)

    add_history_to_context: bool = Field(default=False, strict=True)
    num_history_runs: Annotated[int | None, NotBoolean] = Field(default=None, ge=0, strict=True)
    add_team_history_to_members: bool = Field(default=False, strict=True)
    num_team_history_runs: Annotated[int, NotBoolean] = Field(default=3, ge=0, strict=True)
    share_member_interactions: bool = Field(default=False, strict=True)
    determine_input_for_members: bool = Field(default=True, strict=True)

    @field_validator("model", mode="before", json_schema_input_type=str | ModelSettings)
    @classmethod
    def _model_by_name(cls, value: object) -> object:
        return ModelSettings.coerce(value)

    @field_validator(
        "members",
        mode="before",
        json_schema_input_type=Annotated[tuple[str | MemberRef, ...], Field(min_length=1)],
    )
    @classmethod
    def _members_by_id(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [{"id": item} if isinstance(item, str) else item for item in value]
        return value
