"""What runs a request: an agent, a team or a workflow, by id."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Target", "TargetType"]


class TargetType(StrEnum):
    AGENT = "agent"
    TEAM = "team"
    WORKFLOW = "workflow"


class Target(BaseModel):
    """What runs a request: an agent, a team or a workflow, by id. Unknown fields (a newer
    producer's) are kept, as in every event; ``type`` and ``id`` alone make its hash."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: TargetType
    id: str = Field(min_length=1)
