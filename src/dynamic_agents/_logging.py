"""Logging conventions shared by every part of the library.

* One logger per part, named ``dynamic_agents.<part>`` (``dynamic_agents.events``,
  ``dynamic_agents.transports``, …), obtained with :func:`get_logger`.
* While a request is handled, :func:`log_context` (or, in a task of its own, :func:`bind_ids`)
  binds its request id and session id; every record of a part's logger then carries them as
  ``record.request_id`` and ``record.session_id`` (``None`` outside a request), so a formatter can
  print ``%(request_id)s`` without guarding.
* Per-message events log at DEBUG; INFO and above are for state changes of the process (a group
  created, a reconnect), so a busy worker stays quiet by default.
* The library never configures handlers: ``dynamic_agents`` gets a ``NullHandler`` only.
* Secret values never reach a record: log references (``secret:openai:api_key``), never values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from dynamic_agents._redaction import RedactingFilter

__all__ = ["AGNO_LOGGERS", "bind_ids", "get_logger", "log_context"]

AGNO_LOGGERS = ("agno", "agno-team", "agno-workflow")
"""agno's loggers: they do not propagate, so a root handler's redacting filter misses them."""

ROOT_LOGGER = "dynamic_agents"

_request_id: ContextVar[str | None] = ContextVar("dynamic_agents_request_id", default=None)
_session_id: ContextVar[str | None] = ContextVar("dynamic_agents_session_id", default=None)


class _ContextFilter(logging.Filter):
    """Copies the bound request and session ids onto each record (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        if not hasattr(record, "session_id"):
            record.session_id = _session_id.get()
        return True


_CONTEXT_FILTER = _ContextFilter()
logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())


def get_logger(part: str) -> logging.Logger:
    """The logger of one part, ``dynamic_agents.<part>``: ids on its records, secrets masked."""
    logger = logging.getLogger(f"{ROOT_LOGGER}.{part}")
    if _CONTEXT_FILTER not in logger.filters:
        logger.addFilter(_CONTEXT_FILTER)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger


@contextmanager
def log_context(*, request_id: str | None, session_id: str | None) -> Iterator[None]:
    """Bind a request's ids to every record logged inside the block (and the tasks it starts)."""
    request_token = _request_id.set(request_id)
    session_token = _session_id.set(session_id)
    try:
        yield
    finally:
        _session_id.reset(session_token)
        _request_id.reset(request_token)


def bind_ids(*, request_id: str | None, session_id: str | None) -> None:
    """Bind a request's ids for the rest of the current task, whose context is its own copy (a
    task per request): cheaper than :func:`log_context` where nothing follows in the same task."""
    _request_id.set(request_id)
    _session_id.set(session_id)
