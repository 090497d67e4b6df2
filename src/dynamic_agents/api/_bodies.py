"""What the API reads and answers: the execute and routing-rules bodies, a run's result as JSON,
the limit on a request body's size, and the text a JSON body may hold."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from dynamic_agents._redaction import redact_text
from dynamic_agents._validation import LONE_SURROGATE, shown
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.execution import ExecutionResult

try:
    from fastapi import HTTPException
    from starlette.types import Message, Receive
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


DEFAULT_MAX_BODY_SIZE: Final = 1024 * 1024
"""The largest request body the API reads by default, in bytes (1 MiB)."""


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Control characters (Unicode's ``Cc``): C0, DEL and C1."""

_MAY_HOLD_A_SURROGATE: Final = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|\x00")
"""A JSON body without any of these holds no surrogate: one escaped (``\\ud800``), its UTF-8-like
bytes (CESU-8, which Python's reader takes), or a body in UTF-16 or UTF-32 (a NUL byte)."""


def _an_id(what: str, value: str) -> str:
    """A session's or user's id: not only spaces (``"   "`` would be a session, or a user, of its
    own: agno keys a user's memories by it), without control characters (they would go into the
    lease's key and the logs). Anything else is taken, as the events take it over the streams: a
    no-break space, an emoji's zero-width joiner."""
    if value.strip() and _CONTROL.search(value) is None:
        return value
    raise ConfigurationError(f"{what} must be a non-empty id without control characters, got {shown(value)}")


def _session_id(value: str) -> str:
    return _an_id("session_id", value)


def _user_id(value: str) -> str:
    return _an_id("user_id", value)


class ExecuteBody(BaseModel):
    # A misspelt key is refused, not ignored: "strem" would answer whole, without a word.
    model_config = ConfigDict(extra="forbid")

    input: str
    session_id: Annotated[str, AfterValidator(_session_id)] = Field(min_length=1, max_length=512)
    user_id: Annotated[str, Field(max_length=512), AfterValidator(_user_id)] | None = None
    session_state: dict[str, JsonValue] = Field(default_factory=dict)
    # strict: JSON's true or false only (lax, the texts "yes", "on", "1" and the numbers 1 and 0 were
    # booleans too: a client's bug streamed, or not, without a word)
    stream: bool = Field(default=False, strict=True)
    # strict: true is no number of seconds (lax, it was one); an int is still one
    timeout: float | None = Field(default=None, gt=0, le=3600, strict=True)


class RulesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[dict[str, JsonValue]]


def result_json(result: ExecutionResult) -> dict[str, Any]:
    """A run's result as the API answers it: ``error_message`` masked as a worker's reply masks it
    (:meth:`ExecutionResult.to_response`: a provider's refusal may echo the key it was given)."""
    data = dataclasses.asdict(result)
    data["status"] = result.status.value
    if result.error_message:
        data["error_message"] = redact_text(result.error_message)
    return data


_Location = tuple[str | int, "_Location"] | None
"""A place in a JSON value, innermost part first: ``("name", (0, ("rules", None)))``."""


def lone_surrogate(body: bytes, value: Any) -> tuple[list[str | int], str] | None:
    """Where the first string or key holding a surrogate is in ``value`` (``body`` as read), and
    that surrogate: JSON may escape half of a pair alone and Python's reader takes it, but it is no
    character, and no UTF-8 text (a store, a reply, a model's request) can hold it. ``None`` when
    there is none. Walked without recursion: a body may nest as deep as the reader allows."""
    if _MAY_HOLD_A_SURROGATE.search(body) is None:
        return None
    pending: list[tuple[_Location, Any]] = [(None, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str) and (found := LONE_SURROGATE.search(item)):
            return _parts(where), found.group()
        if isinstance(item, dict):
            for key in item:
                if found := LONE_SURROGATE.search(key):
                    return _parts((key, where)), found.group()
            pending.extend(((key, where), each) for key, each in reversed(item.items()))
        elif isinstance(item, list):
            pending.extend(((index, where), each) for index, each in reversed(list(enumerate(item))))
    return None


_MAY_HOLD_A_NON_FINITE_NUMBER: Final = re.compile(rb"NaN|Infinity|[0-9.][eE]\+?[0-9]|[0-9]{309}")
"""A JSON body without any of these holds no number a float cannot be: ``NaN``, ``Infinity`` (which
Python's reader takes), a number with a positive exponent (``1e400``, and a long mantissa with a
short one: ``1`` and 250 zeros ``e99``), or a run of 309 digits (infinite without an exponent)."""


def non_finite_number(body: bytes, value: Any) -> tuple[list[str | int], float] | None:
    """Where the first number that is no finite float is in ``value`` (``body`` as read), and that
    number: JSON has no ``NaN`` nor ``Infinity``, and a number too large for a float reads as one.
    ``None`` when there is none. Walked without recursion, as :func:`lone_surrogate` walks."""
    if _MAY_HOLD_A_NON_FINITE_NUMBER.search(body) is None:
        return None
    pending: list[tuple[_Location, Any]] = [(None, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return _parts(where), item
        if isinstance(item, dict):
            pending.extend(((key, where), each) for key, each in reversed(item.items()))
        elif isinstance(item, list):
            pending.extend(((index, where), each) for index, each in reversed(list(enumerate(item))))
    return None


def _parts(where: _Location) -> list[str | int]:
    parts: list[str | int] = []
    while where is not None:
        part, where = where
        parts.append(part)
    return parts[::-1]


def too_large(limit: int, declared: str | None = None) -> str:
    size = f" ({declared} bytes)" if declared is not None else ""
    return f"the request body{size} is larger than the API's limit of {limit} bytes (max_body_size)"


def limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive``, answering 413 once the body has grown past ``limit`` bytes: the rest of it is
    never read (FastAPI passes an ``HTTPException`` raised while it reads the body through)."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, too_large(limit))
        return message

    return limited
