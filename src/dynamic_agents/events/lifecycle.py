"""Progress and lifecycle events published to ``agent:events`` while a request is handled.

Every event carries the request id, the session id and the target (``None`` only when the request
failed before a target was chosen). ``type`` tells them apart; decode any of them with
``codec.decode_json(data, LifecycleEvent)``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Annotated, Final, Literal

from pydantic import Field, JsonValue, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, PydanticSerializationError

from dynamic_agents.events._types import EVENT_ID_PATTERN, SCHEMA_VERSION, EventId, UtcDatetime, utc_now
from dynamic_agents.events.codecs import _register_validator
from dynamic_agents.events.models import ResponseStatus, WireModel
from dynamic_agents.events.targets import Target, TargetType
from dynamic_agents.exceptions import UnsupportedSchemaVersionError

__all__ = [
    "ContentDelta",
    "LifecycleEvent",
    "LifecycleJson",
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


_EVENT_ID: Final = re.compile(EVENT_ID_PATTERN)
_HEAD: Final = f'{{"schema_version":"{SCHEMA_VERSION}","id":"'.encode()


class LifecycleJson:
    """One request's lifecycle events written as JSON without building their models: the bytes
    ``event.model_dump_json()`` writes for the same fields (a property test holds them equal), for
    a fraction of the work. A worker with events on writes four for every request it answers.

    The fields the request's events share are written once. Each method returns the event's JSON,
    or ``None`` for what it does not write (text UTF-8 cannot carry, a lone surrogate; a number the
    model would refuse): the caller builds that event's model, whose validation or codec raises the
    typed error. ``event_id`` must be a valid id, as
    :func:`~dynamic_agents.events.models.new_event_id` makes them; ``at`` is the event's time in
    nanoseconds since the epoch, as :func:`time.time_ns` gives it."""

    __slots__ = ("_common",)

    def __init__(self, request_id: str, session_id: str, target: Target | None) -> None:
        self._common = _common_json(request_id, session_id, target)

    def accepted(self, *, event_id: str, at: int) -> bytes | None:
        """A :class:`RequestAccepted`."""
        return self._event(event_id, at, b'request.accepted"}')

    def started(self, delivery_count: int, *, event_id: str, at: int) -> bytes | None:
        """A :class:`RunStarted`."""
        if type(delivery_count) is not int or delivery_count < 1:
            return None
        return self._event(event_id, at, b'run.started","delivery_count":%d}' % delivery_count)

    def delta(self, sequence: int, content: str, *, event_id: str, at: int) -> bytes | None:
        """A :class:`ContentDelta`."""
        if type(sequence) is not int or sequence < 0:
            return None
        try:
            text = _json_string(content)
        except UnicodeEncodeError:
            return None
        return self._event(event_id, at, b'run.content_delta","sequence":%d,"content":%s}' % (sequence, text))

    def completed(
        self, execution_time_ms: int | None, tokens_used: int | None, *, event_id: str, at: int
    ) -> bytes | None:
        """A :class:`RunCompleted`."""
        time_json, tokens_json = _count_json(execution_time_ms), _count_json(tokens_used)
        if time_json is None or tokens_json is None:
            return None
        return self._event(
            event_id,
            at,
            b'run.completed","execution_time_ms":%s,"tokens_used":%s}' % (time_json, tokens_json),
        )

    def failed(
        self, status: ResponseStatus, error_message: str | None, *, event_id: str, at: int
    ) -> bytes | None:
        """A :class:`RunFailed`."""
        if type(status) is not ResponseStatus:
            return None
        try:
            message = b"null" if error_message is None else _json_string(error_message)
        except UnicodeEncodeError:
            return None
        return self._event(
            event_id,
            at,
            b'run.failed","status":"%s","error_message":%s}' % (status.value.encode(), message),
        )

    def _event(self, event_id: str, at: int, tail: bytes) -> bytes | None:
        if self._common is None:
            return None
        return b"".join((_HEAD, event_id.encode(), b'","timestamp":"', _utc_stamp(at), self._common, tail))


def _utc_stamp(at: int) -> bytes:
    """``at`` (nanoseconds since the epoch) as the models write a UTC timestamp: to the
    microsecond, ``Z`` for the zone, no fraction when the microsecond is 0. The text of the whole
    second is kept from the previous call (events come many to a second): a third of the work of
    ``datetime.now(UTC).isoformat()``."""
    second, microsecond = divmod(at // 1000, 1_000_000)
    last_second, text = _LAST_SECOND[0]
    if second != last_second:
        text = (_EPOCH + timedelta(seconds=second)).isoformat()[:19].encode()
        _LAST_SECOND[0] = (second, text)  # one assignment: a thread reads a pair, never half
    return b"%s.%06dZ" % (text, microsecond) if microsecond else text + b"Z"


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_SECOND: Final[list[tuple[int, bytes]]] = [(-1, b"")]


def _common_json(request_id: str, session_id: str, target: Target | None) -> bytes | None:
    """The fields after ``timestamp``, up to the value of ``type``; ``None`` for what the model
    would refuse or cannot write."""
    if not _EVENT_ID.fullmatch(request_id):
        return None
    try:
        session = _json_string(session_id)
        target_json = b"null" if target is None else target.__pydantic_serializer__.to_json(target)
    except (UnicodeEncodeError, PydanticSerializationError):
        return None
    return b"".join(
        (
            b'","request_id":',
            _json_string(request_id),  # its pattern allows '"' and '\\', escaped
            b',"session_id":',
            session,
            b',"target":',
            target_json,
            b',"metadata":{},"type":"',
        )
    )


def _json_string(text: str) -> bytes:
    """``text`` as a JSON string, as pydantic writes it (UTF-8, only what JSON needs escaped)."""
    return encode_basestring(text).encode()


def _count_json(value: int | None) -> bytes | None:
    if value is None:
        return b"null"
    if type(value) is not int or value < 0:
        return None
    return b"%d" % value


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
