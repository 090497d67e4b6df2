"""pydantic's validation errors as the library's typed event errors, for every part that validates
a wire model (the codecs, and ``AgentClient`` building a request from a platform event)."""

from __future__ import annotations

from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from dynamic_agents.events.models import WireModel
from dynamic_agents.exceptions import (
    DecodeError,
    EventValidationError,
    FieldError,
    UnsupportedSchemaVersionError,
)

__all__ = ["VALUE_PREVIEW", "event_error", "preview"]

VALUE_PREVIEW: Final = 60
"""How many characters of a bad value an error shows."""


def preview(value: Any) -> str:
    """``value``'s repr, masked as error text is (a key-shaped word, a registered secret, a URL's
    password) and cut to :data:`VALUE_PREVIEW` characters: an event error reaches logs, dead-letter
    reasons and the REST API, and the value is a sender's (it may hold anything)."""
    from dynamic_agents._redaction import redact_text  # on the error path only: events import light

    # masked before the cut, so a secret across it is still whole (the first ~240 characters are
    # enough for the 60 shown, and keep the masking of a huge value cheap)
    text = redact_text(repr(value)[: 4 * VALUE_PREVIEW])
    return text if len(text) <= VALUE_PREVIEW else f"{text[: VALUE_PREVIEW - 3]}..."


def event_error(model: type[WireModel], error: ValidationError) -> Exception:
    """Translate pydantic's error into the library's typed errors."""
    details = error.errors(include_url=False)
    for detail in details:
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, UnsupportedSchemaVersionError):
            return UnsupportedSchemaVersionError(cause.version, cause.supported_major)
        if detail["type"] == "json_invalid":
            return DecodeError(f"{model.__name__} body is not valid JSON: {detail['msg']}")
        if not detail["loc"] and detail["type"] == "string_unicode":  # a str with a lone surrogate
            return DecodeError(f"{model.__name__} body is not valid UTF-8 text: {detail['msg']}")
        if not detail["loc"] and detail["type"] in {"model_type", "model_attributes_type"}:
            kind = type(detail["input"]).__name__
            return DecodeError(f"{model.__name__} body must be a JSON object, got {kind}")
    return EventValidationError(model.__name__, tuple(_field_error(d) for d in details))


def _field_error(detail: ErrorDetails) -> FieldError:
    location = ".".join(str(part) for part in detail["loc"]) or "(body)"
    value = None if detail["type"] == "missing" else preview(detail["input"])
    return FieldError(location, detail["msg"], value)
