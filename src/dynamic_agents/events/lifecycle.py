"""Progress and lifecycle events published to ``agent:events`` while a request is handled.

Every event carries the request id, the session id and the target (``None`` only when the request
failed before a target was chosen). ``type`` tells them apart; decode any of them with
``codec.decode_json(data, LifecycleEvent)``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, JsonValue, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from dynamic_agents.events._types import EventId, UtcDatetime, utc_now
from dynamic_agents.events.codecs import _register_validator
from dynamic_agents.events.models import ResponseStatus, WireModel
from dynamic_agents.events.targets import Target, TargetType
from dynamic_agents.exceptions import UnsupportedSchemaVersionError

__all__ = [
    "ContentDelta",
    "LifecycleEvent",
    "RequestAccepted",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "Target",
    "TargetType",
]


class LifecycleEvent(WireModel):
    """Fields common to every lifecycle event."""

    timestamp: UtcDatetime = Field(default_factory=utc_now)
    request_id: EventId
    session_id: str
    target: Target | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class RequestAccepted(LifecycleEvent):
    """A worker took the request and chose its target."""

    type: Literal["request.accepted"] = "request.accepted"


class RunStarted(LifecycleEvent):
    """The target started running (``delivery_count`` > 1 means a redelivery)."""

    type: Literal["run.started"] = "run.started"
    delivery_count: int = Field(default=1, ge=1)


class ContentDelta(LifecycleEvent):
    """A slice of streamed output; ``sequence`` numbers the deltas of one run from 0."""

    type: Literal["run.content_delta"] = "run.content_delta"
    sequence: int = Field(ge=0)
    content: str


class RunCompleted(LifecycleEvent):
    """The run finished and its response was published."""

    type: Literal["run.completed"] = "run.completed"
    execution_time_ms: int | None = Field(default=None, ge=0)
    tokens_used: int | None = Field(default=None, ge=0)


class RunFailed(LifecycleEvent):
    """The run ended without a normal answer (error, timeout, cancellation or refusal)."""

    type: Literal["run.failed"] = "run.failed"
    status: ResponseStatus = ResponseStatus.ERROR
    error_message: str | None = None


AnyLifecycleEvent = Annotated[
    RequestAccepted | RunStarted | ContentDelta | RunCompleted | RunFailed,
    Field(discriminator="type"),
]
LIFECYCLE_ADAPTER: TypeAdapter[AnyLifecycleEvent] = TypeAdapter(AnyLifecycleEvent)


_UNION_TAG_ERRORS: Final = frozenset({"union_tag_invalid", "union_tag_not_found"})


def validate_lifecycle_json(data: bytes | str) -> AnyLifecycleEvent:
    """The lifecycle event ``data`` holds, of the class its ``type`` names.

    The union picks the class by ``type`` before any field is checked: an event of a newer major
    version, whose ``type`` this release does not know (enumerations change only with a major
    version), is refused for its ``schema_version`` rather than for its ``type``."""
    try:
        return LIFECYCLE_ADAPTER.validate_json(data)
    except ValidationError as error:
        if _UNION_TAG_ERRORS.isdisjoint(detail["type"] for detail in error.errors()):
            raise
        try:
            WireModel.model_validate_json(data)  # the fields every event has: schema_version, id
        except ValidationError as version_error:
            if any(_newer_major(detail) for detail in version_error.errors()):
                raise version_error from None
        raise


def _newer_major(detail: ErrorDetails) -> bool:
    return isinstance(detail.get("ctx", {}).get("error"), UnsupportedSchemaVersionError)


_register_validator(LifecycleEvent, validate_lifecycle_json)
