"""Turning events into bytes and back: plain JSON, and FastStream's Redis stream entries.

Every failure is a typed :class:`~dynamic_agents.exceptions.EventError` naming the field and value;
pydantic, ``json`` and ``struct`` errors never escape. Size limits are checked before parsing, so a
10 MiB body costs a length comparison, not a parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json

from dynamic_agents._frozen import slot_init
from dynamic_agents._validation import check_count, with_article
from dynamic_agents.events._errors import event_error, preview
from dynamic_agents.events.envelope import (
    DATA_FIELD,
    Envelope,
    decode_envelope,
    encode_envelope,
    encode_with_correlation_id,
    read_entry_data,
)
from dynamic_agents.events.models import AgentRequestEvent, WireModel, validate_request_json
from dynamic_agents.exceptions import (
    DecodeError,
    EnvelopeError,
    EventTooLargeError,
    EventValidationError,
    FieldError,
)

__all__ = ["DEFAULT_MAX_CONTENT_LENGTH", "DEFAULT_MAX_SIZE", "DecodedMessage", "EventCodec"]

E = TypeVar("E", bound=WireModel)

DEFAULT_MAX_SIZE: Final = 1024 * 1024
DEFAULT_MAX_CONTENT_LENGTH: Final = 256 * 1024
JSON_CONTENT_TYPE: Final = "application/json"
RESERVED_HEADERS: Final = frozenset({"correlation_id", "content-type", "reply_to"})
"""Envelope headers the codec sets itself: ``encode`` refuses them in ``headers``."""
_UTF8_BOM: Final = b"\xef\xbb\xbf"


_JSON_VALIDATORS: dict[type[WireModel], Callable[[bytes | str], Any]] = {
    AgentRequestEvent: validate_request_json
}
"""Models decoded otherwise than by their own validator (see :func:`_register_validator`)."""


def _register_validator(model: type[WireModel], validate_json: Callable[[bytes | str], Any]) -> None:
    """Decode ``model`` with ``validate_json``: a faster path to the same event, or a union of its
    subclasses (``decode_json(data, base)`` then gives the subclass the data names). The lifecycle
    events register their union this way, so the codec does not import them."""
    _JSON_VALIDATORS[model] = validate_json


@slot_init
@dataclass(frozen=True, slots=True)
class DecodedMessage(Generic[E]):
    """An event read off the wire, with the envelope headers that came with it."""

    event: E
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get("correlation_id")

    @property
    def reply_to(self) -> str | None:
        """The channel a FastStream RPC caller waits on (answer with Redis ``PUBLISH``)."""
        return self.headers.get("reply_to") or None

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")


class EventCodec:
    """Encodes and decodes events within size limits.

    ``max_size`` bounds an encoded event (JSON body or whole envelope) in bytes; ``max_content_length``
    bounds the ``content`` text of an event in characters. Both apply in each direction, so what
    this codec writes, it also reads.
    """

    __slots__ = ("max_content_length", "max_size")

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
    ) -> None:
        self.max_size = check_count("max_size", max_size)  # NaN would be no limit at all
        self.max_content_length = check_count("max_content_length", max_content_length)

    def __repr__(self) -> str:
        return f"EventCodec(max_size={self.max_size}, max_content_length={self.max_content_length})"

    # -- plain JSON -----------------------------------------------------------------------------

    def encode_json(self, event: WireModel) -> bytes:
        """The event as UTF-8 JSON (extra fields included); :class:`EventValidationError` names a
        field that cannot be written as JSON."""
        self._check_content(event)
        try:
            body = event.__pydantic_serializer__.to_json(event)  # model_dump_json(), as bytes (no copy)
        except PydanticSerializationError as error:
            raise _unwritable(event, error) from None
        self._check_size("encoded event", len(body))
        return body

    def decode_json(self, data: bytes | str, model: type[E]) -> E:
        """Parse and validate JSON into ``model``; raises an :class:`EventError` subclass.

        A UTF-8 byte order mark before bytes is skipped, as FastStream's reader (``json.loads``)
        skips it and RFC 8259 allows."""
        self._check_size("event body", _byte_length(data))
        if isinstance(data, bytes) and data.startswith(_UTF8_BOM):
            data = data[3:]
        try:
            validate_json = _JSON_VALIDATORS.get(model)
            if validate_json is not None:
                event: WireModel = validate_json(data)
            else:
                event = model.__pydantic_validator__.validate_json(data)  # = model_validate_json()
        except ValidationError as error:
            raise event_error(model, error) from None
        return self._checked(event, model)

    # -- FastStream Redis stream entries ----------------------------------------------------------

    def encode_envelope(
        self,
        event: WireModel,
        *,
        reply_to: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
    ) -> bytes:
        """The event in FastStream's binary envelope (also what Redis ``PUBLISH`` carries).

        Headers are written in FastStream's order: ``correlation_id`` (the event id, unless a reply
        must carry its request's), ``content-type``, ``reply_to`` when given, then ``headers``.
        """
        correlation = correlation_id or event.id
        if not reply_to and not headers:  # the common case: only the headers every event carries
            return self.encode_json_envelope(self.encode_json(event), correlation)
        all_headers = {"correlation_id": correlation, "content-type": JSON_CONTENT_TYPE}
        if reply_to:
            all_headers["reply_to"] = reply_to
        if headers:
            reserved = RESERVED_HEADERS.intersection(headers)
            if reserved:
                raise EnvelopeError(
                    f"header {sorted(reserved)[0]!r} is set by the codec; pass reply_to= for "
                    "reply_to, and the event id is the correlation id"
                )
            all_headers.update(headers)
        envelope = encode_envelope(self.encode_json(event), all_headers)
        self._check_size("encoded envelope", len(envelope))
        return envelope

    def encode_json_envelope(self, body: bytes, correlation_id: str) -> bytes:
        """An event already written as JSON in :meth:`encode_envelope`'s envelope with no
        ``reply_to`` or extra headers; ``correlation_id`` is the event's id. The size limits apply;
        the writer of ``body`` has kept ``content`` within ``max_content_length``."""
        self._check_size("encoded event", len(body))
        envelope = encode_with_correlation_id(body, correlation_id, JSON_CONTENT_TYPE)
        self._check_size("encoded envelope", len(envelope))
        return envelope

    def decode_envelope(self, data: bytes, model: type[E]) -> DecodedMessage[E]:
        """Read a value written by :meth:`encode_envelope` or by a FastStream publisher."""
        self._check_size("envelope", len(data))
        return self._decode_body(decode_envelope(data), model)

    def encode_entry(
        self,
        event: WireModel,
        *,
        reply_to: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, bytes]:
        """The fields of a stream entry FastStream subscribers read: ``{"__data__": envelope}``."""
        envelope = self.encode_envelope(
            event, reply_to=reply_to, headers=headers, correlation_id=correlation_id
        )
        return {DATA_FIELD: envelope}

    def decode_entry(
        self, fields: Mapping[bytes, bytes] | Mapping[str, str], model: type[E]
    ) -> DecodedMessage[E]:
        """Read a stream entry as FastStream does.

        ``__data__`` may hold the binary envelope, the legacy JSON envelope or a bare JSON body;
        an entry without ``__data__`` is read as a flat field map (``XADD s source discord …``).
        """
        data = _field(fields, DATA_FIELD)
        if data is not None:
            self._check_size("stream entry", len(data))
            envelope = read_entry_data(data)
            try:
                return self._decode_body(envelope, model)
            except EventValidationError:
                problem = _misshapen_legacy_envelope(envelope) if not envelope.headers else None
                if problem is not None:  # no event, but an envelope with a wrong type in it
                    raise EnvelopeError(f"legacy JSON envelope: {problem}") from None
                raise
        self._check_size("stream entry", sum(_byte_length(k) + _byte_length(v) for k, v in fields.items()))
        flat: dict[str, str] = {}
        for key, value in fields.items():
            name = _text(key)
            flat[name] = _text(value, field=name)
        try:
            event = model.model_validate(flat)
        except ValidationError as error:
            raise event_error(model, error) from None
        return DecodedMessage(self._checked(event, model))

    # -- internals --------------------------------------------------------------------------------

    def _decode_body(self, envelope: Envelope, model: type[E]) -> DecodedMessage[E]:
        return DecodedMessage(self.decode_json(envelope.body, model), envelope.headers)

    def _checked(self, event: WireModel, model: type[E]) -> E:
        if not isinstance(event, model):
            raise EventValidationError(
                model.__name__,
                (FieldError("type", f"expected {with_article(model.__name__)}", type(event).__name__),),
            )
        self._check_content(event)
        return event

    def _check_content(self, event: WireModel) -> None:
        content = event.__dict__.get("content")  # a declared field (getattr of a missing one is slow)
        if isinstance(content, str) and len(content) > self.max_content_length:
            raise EventTooLargeError("content", len(content), self.max_content_length)

    def _check_size(self, what: str, size: int) -> None:
        if size > self.max_size:
            raise EventTooLargeError(what, size, self.max_size)  # bytes, max_size (all but content)


_JSON_TYPES: Final = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _misshapen_legacy_envelope(envelope: Envelope) -> str | None:
    """What is wrong with a body read as a bare one that is a legacy JSON envelope in all but its
    types (an object of ``data`` and maybe ``headers``; no event has only those), or ``None``."""
    if b'"data"' not in envelope.body:  # cheap: most bodies that fail are no such object
        return None
    try:
        parsed = json.loads(envelope.body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or "data" not in parsed or not set(parsed) <= {"data", "headers"}:
        return None
    if not isinstance(parsed["data"], str):
        return f"'data' must be a string (the event's JSON text), got {_json_type(parsed['data'])}"
    headers = parsed.get("headers", {})
    return None if isinstance(headers, dict) else f"'headers' must be an object, got {_json_type(headers)}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), "a number")


def _field(fields: Mapping[bytes, bytes] | Mapping[str, str], name: str) -> bytes | None:
    found = fields.get(name.encode(), fields.get(name))  # type: ignore[call-overload]
    if found is not None:  # a Redis entry's bytes keys, or str keys
        return found if isinstance(found, bytes) else found.encode()
    for key, value in fields.items():
        if _text(key) == name:
            return value if isinstance(value, bytes) else value.encode()
    return None


def _byte_length(data: bytes | str) -> int:
    """The size in bytes ``max_size`` bounds: a ``str`` as UTF-8 (up to four bytes a character)."""
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def _text(value: bytes | str, *, field: str | None = None) -> str:
    """A stream entry's field name, or the value of the one named ``field``, as text;
    :class:`DecodeError` naming it, with the value masked (a sender's entry may hold anything),
    when it is not UTF-8."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        what = "stream entry field name" if field is None else f"stream entry field {preview(field)} value"
        raise DecodeError(f"{what} {preview(value)} is not UTF-8") from None


def _unwritable(event: WireModel, error: PydanticSerializationError) -> EventValidationError:
    """The field that cannot be written as JSON (an extra field, or a value set after validation,
    which pydantic does not check), named with its value."""
    fields = {**event.__dict__, **(event.model_extra or {})}
    for name, value in fields.items():
        try:
            to_json(value)
        except PydanticSerializationError as cause:
            return EventValidationError(
                type(event).__name__,
                (FieldError(name, f"cannot be written as JSON: {cause}", preview(value)),),
            )
    return EventValidationError(
        type(event).__name__, (FieldError("(body)", f"cannot be written as JSON: {error}"),)
    )
