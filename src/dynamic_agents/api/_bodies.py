"""What the API reads and answers: the execute and routing-rules bodies, a run's result as JSON,
and the limit on a request body's size."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from dynamic_agents.execution import ExecutionResult
from dynamic_agents.transports.base import check_name

try:
    from fastapi import HTTPException
    from starlette.types import Message, Receive
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


DEFAULT_MAX_BODY_SIZE: Final = 1024 * 1024
"""The largest request body the API reads by default, in bytes (1 MiB)."""


def _session_id(value: str) -> str:
    # "   " would be a session of its own, and a control character goes into the lease's key and
    # the logs: refused as the transports refuse such a stream or group name
    return check_name("session_id", value)


def _user_id(value: str) -> str:
    # as a session id: "   " would be a user of its own (agno keys a user's memories by it), and a
    # control character goes into the logs
    return check_name("user_id", value)


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
    data = dataclasses.asdict(result)
    data["status"] = result.status.value
    return data


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
