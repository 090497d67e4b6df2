"""The request and response events exchanged over ``agent:requests`` and ``agent:responses:…``."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, SchemaValidator
from pydantic_core import core_schema as cs

from dynamic_agents.events._types import (
    SCHEMA_VERSION,
    SOURCE_PATTERN,
    ChannelId,
    EventId,
    SourceName,
    UtcDatetime,
    check_schema_version,
    utc_now,
)

__all__ = ["AgentRequestEvent", "AgentResponseEvent", "Attachment", "ResponseStatus", "WireModel"]


def new_event_id() -> str:
    """A random (version 4) UUID as text: ``str(uuid.uuid4())``, without building a ``UUID`` (an
    event id is made for every event, several per request)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class WireModel(BaseModel):
    """Base of every event: an ``id``, unknown fields kept, and ``schema_version`` checked.

    A newer *minor* version is read (its extra fields are kept in ``model_extra`` and written back
    out); an unknown *major* version is refused. Minor versions only add optional fields.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: str = SCHEMA_VERSION
    id: EventId = Field(default_factory=new_event_id)

    @field_validator("schema_version", mode="plain")
    @classmethod
    def _check_schema_version(cls, value: object) -> str:
        return check_schema_version(value)


class Attachment(BaseModel):
    """A file that came with a message: by URL (a platform CDN) or inline as base64."""

    model_config = ConfigDict(extra="allow")

    kind: str = "file"
    """``image``, ``audio``, ``video``, ``file``, or a platform's own kind."""
    url: str | None = None
    data_base64: str | None = None
    filename: str | None = None
    content_type: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class AgentRequestEvent(WireModel):
    """A normalised platform message asking an agent, team or workflow for an answer.

    ``session_id`` defaults to ``"{source}:{source_id}"``. ``reply_stream`` may be left out by a
    FastStream RPC peer, which then waits on its ``reply_to`` header instead.
    """

    timestamp: UtcDatetime = Field(default_factory=utc_now)

    source: SourceName
    source_id: ChannelId

    user_id: str
    user_name: str | None = None

    content: str
    attachments: list[Attachment] = Field(default_factory=list)

    agent_id: str | None = None
    team_id: str | None = None
    workflow_id: str | None = None

    # Filled from source and source_id when absent (see _read_seed_shape); the default only makes
    # the argument optional for type checkers, and an empty id is refused after validation.
    session_id: str = Field(default="", max_length=512)
    session_state: dict[str, JsonValue] = Field(default_factory=dict)

    reply_stream: str | None = Field(default=None, min_length=1)

    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _read_seed_shape(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return _normalise_request_fields(data)
        return data

    @model_validator(mode="after")
    def _require_session_id(self) -> AgentRequestEvent:
        if not self.session_id:
            raise ValueError("session_id must not be empty (leave it out to use 'source:source_id')")
        return self


class ResponseStatus(StrEnum):
    """How a request ended. Minor schema versions never add members (older readers would refuse)."""

    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class AgentResponseEvent(WireModel):
    """The answer to one request, published to the request's ``reply_stream``.

    Fields that only exist for a request that ran (``agent_id``, ``agent_name``,
    ``execution_time_ms``) are optional: a request refused before running has none.
    """

    request_id: EventId
    timestamp: UtcDatetime = Field(default_factory=utc_now)

    content: str = ""
    content_type: Literal["text", "structured", "error"] = "text"
    structured_data: dict[str, JsonValue] | None = None

    status: ResponseStatus = ResponseStatus.COMPLETED
    error_message: str | None = None

    session_id: str | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    execution_time_ms: int | None = Field(default=None, ge=0)
    tokens_used: int | None = Field(default=None, ge=0)

    images: list[str] = Field(default_factory=list)
    files: list[dict[str, str]] = Field(default_factory=list)

    metadata: dict[str, JsonValue] = Field(default_factory=dict)


def _without_seed_mapping() -> SchemaValidator | None:
    """A validator of :class:`AgentRequestEvent` for requests in the model's own shape and normal
    form, with as few steps in Python as the model allows.

    It leaves out the ``_read_seed_shape`` step, the identity on an object holding ``source_id``
    and a string ``session_id``, and accepts only values the model's Python steps would leave as
    they are: ``schema_version`` ``"1.0"`` (or none), a ``source`` already stripped and
    lower-cased, a non-empty ``session_id`` (in place of the check after validation), and, in
    ``metadata`` and ``session_state``, any JSON value (what ``JsonValue`` gives for JSON input).
    So wherever it succeeds, the model's own validator gives the same event; where it fails, the
    model's validator runs and says why. It skips building the whole object in Python first,
    which the ``before`` step forces on JSON input, and four calls into Python per request.
    ``None`` if pydantic lays the schema out differently than expected: the model's own validator
    is then used alone.
    """
    try:
        return SchemaValidator(_fast_request_schema(AgentRequestEvent.__pydantic_core_schema__))
    except (KeyError, _LayoutChangedError):
        return None


class _LayoutChangedError(Exception):
    """The model's core schema is not laid out as :func:`_fast_request_schema` expects."""


def _fast_request_schema(schema: Any) -> CoreSchema:
    """The model's core schema (``definitions`` → ``_require_session_id`` → model →
    ``_read_seed_shape`` → fields) without its Python steps, as :func:`_without_seed_mapping` says."""

    def expect(condition: bool) -> None:
        if not condition:
            raise _LayoutChangedError

    def function(step: Any) -> Any:
        return getattr(step["function"]["function"], "__func__", step["function"]["function"])

    expect(schema["type"] == "definitions")
    after = schema["schema"]
    expect(after["type"] == "function-after" and function(after) is AgentRequestEvent._require_session_id)
    model = after["schema"]
    expect(model["type"] == "model" and model["cls"] is AgentRequestEvent)
    before = model["schema"]
    expect(
        before["type"] == "function-before"
        and function(before) is AgentRequestEvent._read_seed_shape.__func__
    )
    fields = dict(before["schema"]["fields"])
    version, session, metadata, state = (
        fields[name]["schema"] for name in ("schema_version", "session_id", "metadata", "session_state")
    )
    expect(version["type"] == "default" and version["schema"]["type"] == "function-plain")
    expect(session["type"] == "default" and session["schema"]["type"] == "str")
    expect(metadata["type"] == "default" and state["type"] == "default")
    any_json = cs.dict_schema(cs.str_schema(), cs.any_schema())
    replaced: dict[str, Any] = {
        "schema_version": {**version, "schema": cs.literal_schema([SCHEMA_VERSION])},
        "source": cs.str_schema(pattern=SOURCE_PATTERN),
        "session_id": {**session["schema"], "min_length": 1},  # required, its own max_length kept
        "metadata": {**metadata, "schema": any_json},
        "session_state": {**state, "schema": any_json},
    }
    for name, field_schema in replaced.items():
        fields[name] = {**fields[name], "schema": field_schema}
    fast: CoreSchema = {**schema, "schema": {**model, "schema": {**before["schema"], "fields": fields}}}
    return fast


_REQUEST_FAST_PATH: SchemaValidator | None = _without_seed_mapping()


def validate_request_json(data: bytes | str) -> AgentRequestEvent:
    """``AgentRequestEvent.model_validate_json(data)``, faster for a request already in the
    model's own shape (see :func:`_without_seed_mapping`); errors are always the model's own."""
    if _REQUEST_FAST_PATH is not None:
        try:
            event: AgentRequestEvent = _REQUEST_FAST_PATH.validate_json(data)
        except ValidationError:
            pass  # the seed's shape, no session_id, or invalid: the full validator says which
        else:
            return event
    return AgentRequestEvent.__pydantic_validator__.validate_json(data)  # type: ignore[no-any-return]


_CHANNEL_KEYS = ("channel_id", "conversation_id", "chat_id")
_LIFTED_FROM_METADATA = ("agent_id", "team_id", "workflow_id", "session_id")


def _normalise_request_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Map the seed's first publish example onto the request model, and fill ``session_id``.

    The seed published ``{"type", "source", "channel_id", "guild_id", "user_id", "content",
    "metadata": {"agent_id", "session_id", "reply_to"}}``. ``channel_id`` (or ``conversation_id``)
    becomes ``source_id``; ``type`` and ``guild_id`` move into ``metadata`` (``event_type`` and
    ``guild_id``, where routing rules look for them); routing and session keys in ``metadata`` are
    lifted to the top level; ``metadata.reply_to`` becomes ``reply_stream``. Nothing is dropped.
    """
    needs_mapping = "source_id" not in data and any(key in data for key in _CHANNEL_KEYS)
    if needs_mapping:
        data = dict(data)
        for key in _CHANNEL_KEYS:
            if key in data:
                data["source_id"] = data.pop(key)
                break
        metadata = data.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return data  # not an object: left as it is for validation to name (not replaced by {})
        metadata = dict(metadata or {})
        # moved only where metadata has no value of its own: else kept at the top level, not lost
        if "type" in data and "event_type" not in metadata:
            metadata["event_type"] = data.pop("type")
        if "guild_id" in data and "guild_id" not in metadata:
            metadata["guild_id"] = data.pop("guild_id")
        for key in _LIFTED_FROM_METADATA:
            if key in metadata and data.get(key) is None:
                data[key] = metadata.pop(key)
        if "reply_to" in metadata and data.get("reply_stream") is None:
            data["reply_stream"] = metadata.pop("reply_to")
        data["metadata"] = metadata
    if data.get("session_id") is None:
        source, source_id = data.get("source"), data.get("source_id")
        if isinstance(source, str) and isinstance(source_id, str):
            data = {**data, "session_id": f"{source.strip().lower()}:{source_id}"}
    return data
