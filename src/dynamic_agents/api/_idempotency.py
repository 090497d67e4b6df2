"""``Idempotency-Key`` on execute calls: a retry gets the first request's result, not a second run."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from cachetools import TTLCache

from dynamic_agents.api._bodies import ExecuteBody, result_json
from dynamic_agents.execution import ExecutionResult

try:
    from fastapi import HTTPException
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


IdempotencyScope = tuple[str, str, str, str]
"""caller, kind, spec id and ``Idempotency-Key``: a key is scoped to its caller (the bearer token,
as a digest) and its target, so two callers that happen to pick one key never share a result."""


DEFAULT_IDEMPOTENCY_MAX_KEYS: Final = 10_000
"""How many stored results are kept by default (the newest): past it, a key is forgotten before
its TTL."""

RETRY_RUNNING: Final = "1"
"""``Retry-After`` (seconds) of the 409 for a retry that arrives while its first request runs."""


class Idempotency:
    """``Idempotency-Key`` of execute calls, per process (the IETF draft's semantics): the first
    request with a key runs and its result is kept ``ttl`` seconds for retries; the same key with
    another body is a 422, and a retry while the first request still runs is a 409 (it would run
    the agent twice). A key is held from the check to the end of its run, with no await between the
    check and the hold."""

    def __init__(self, ttl: float, max_keys: int) -> None:
        self._results: TTLCache[IdempotencyScope, tuple[str, dict[str, Any]]] = TTLCache(
            maxsize=max_keys, ttl=ttl
        )
        self._running: dict[IdempotencyScope, str] = {}

    def begin(self, key: IdempotencyScope, body: ExecuteBody) -> dict[str, Any] | None:
        """The stored result of this request, or ``None`` after holding ``key`` for its run."""
        fingerprint = _fingerprint(body)
        running, stored = self._running.get(key), self._results.get(key)
        first = running if running is not None else stored[0] if stored is not None else None
        if first is not None and first != fingerprint:  # the key's first request was another one
            raise HTTPException(
                422,
                f"Idempotency-Key {key[-1]!r} was used for another request (a different "
                "body); send a new key for a new request",
            )
        if running is not None:
            raise HTTPException(
                409,
                f"a request with Idempotency-Key {key[-1]!r} is still running; retry when it has finished",
                headers={"Retry-After": RETRY_RUNNING},
            )
        if stored is not None:
            return stored[1]
        self._running[key] = fingerprint
        return None

    def end(self, key: IdempotencyScope, result: ExecutionResult | None) -> None:
        """Release ``key``; keep ``result`` for retries when the run completed. A model error or a
        timeout is a result too, but a failed run: kept, it would answer the very retry the key is
        for."""
        fingerprint = self._running.pop(key)
        if result is not None and result.ok:
            self._results[key] = (fingerprint, result_json(result))


def _fingerprint(body: ExecuteBody) -> str:
    """What makes two execute bodies the same request: all but ``stream`` (how the answer is sent),
    whatever the order of their keys, and numbers compared as JSON does (``1`` and ``1.0`` are one
    number: a client that serialises the body again may write either)."""
    canonical = json.dumps(_same_numbers(body.model_dump(mode="json", exclude={"stream"})), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_numbers(value: Any) -> Any:
    """``value`` with every whole float written as an int (``1.0`` → ``1``), at any depth."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _same_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_same_numbers(item) for item in value]
    return value
