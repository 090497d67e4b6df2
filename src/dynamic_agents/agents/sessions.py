"""agno's async session dbs from a URL: SQLite embedded, PostgreSQL in production.

``session_db("sqlite:///sessions.db")`` → ``AsyncSqliteDb``; ``session_db("postgresql://…")`` →
``AsyncPostgresDb`` (psycopg 3, async). Use the async dbs in async code: agno's sync ones block the
event loop inside ``arun``.

Both keep their connections in a pool between runs (an agno run makes about ten db calls, and a new
SQLite connection is a new thread). The db's ``close()`` closes them, and ``AgentRuntime.aclose()``
calls it: close the runtime when you are done with it.
"""

from __future__ import annotations

from typing import Any

from dynamic_agents._redaction import masked_url
from dynamic_agents.exceptions import ConfigurationError, MissingDependencyError

try:
    from sqlalchemy import URL, make_url
    from sqlalchemy.exc import ArgumentError
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise MissingDependencyError("session_db", "agents") from error

__all__ = ["describe_db", "session_db"]


def session_db(url: str, *, schema: str | None = None) -> Any:
    """An agno async db for sessions and memories at ``url``; ``schema``, PostgreSQL's schema for
    agno's tables (a :class:`ConfigurationError` with a SQLite URL, which has none).

    An in-memory SQLite URL (``sqlite://``, ``sqlite:///:memory:``) is refused: that database lives
    in one connection, which concurrent runs would share; use a file, or agno's ``InMemoryDb`` in
    tests.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            "session db URL is not a URL: use sqlite:///path.db or postgresql://…"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if schema is not None:  # dropped, it left two "separate" runtimes sharing one history
            raise ConfigurationError(
                f"session db schema {schema!r} for a sqlite URL: schemas are PostgreSQL's, a "
                "SQLite db has none; keep sessions apart with another file"
            )
        return _sqlite(url, parsed.set(drivername="sqlite+aiosqlite"))
    if backend in ("postgresql", "postgres"):
        return _postgres(parsed.set(drivername="postgresql+psycopg_async"), schema)
    raise ConfigurationError(
        f"session db URL {parsed.render_as_string(hide_password=True)!r}: "
        "use sqlite:///path.db or postgresql://…"
    )


def _postgres(url: URL, schema: str | None) -> Any:
    from agno.db.postgres import AsyncPostgresDb
    from agno.db.utils import json_serializer
    from sqlalchemy.ext.asyncio import create_async_engine

    # An engine, not db_url: agno keeps db_url as given and puts it in db.to_dict() and so in every
    # Agent.to_dict(), password included. The options are the ones agno uses for a db_url.
    try:
        engine = create_async_engine(
            url, pool_pre_ping=True, pool_recycle=3600, json_serializer=json_serializer
        )
    except ImportError as error:  # the driver, psycopg
        raise MissingDependencyError("session_db with PostgreSQL", "postgres") from error
    return AsyncPostgresDb(db_engine=engine, db_schema=schema)


def _sqlite(given: str, url: URL) -> Any:
    from agno.db.sqlite import AsyncSqliteDb
    from agno.db.utils import json_serializer
    from sqlalchemy.ext.asyncio import create_async_engine

    if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
        raise ConfigurationError(
            f"session db URL {given!r} is an in-memory SQLite db, one connection "
            "that concurrent runs would share: use a file (sqlite:///sessions.db), or agno's "
            "InMemoryDb in tests"
        )
    # SQLAlchemy's default pool for a SQLite file: connections kept between runs, closed by close().
    return AsyncSqliteDb(db_engine=create_async_engine(url, json_serializer=json_serializer))


def describe_db(db: Any) -> str:
    """How messages name a session db: its class and, for a SQLAlchemy-backed one, its URL with
    the password and credential query values masked
    (``AsyncPostgresDb at postgresql+psycopg_async://user:**********@db:5432/agno``)."""
    url = getattr(getattr(db, "db_engine", None), "url", None)
    if not isinstance(url, URL):
        return type(db).__name__
    return f"{type(db).__name__} at {masked_url(url.render_as_string(hide_password=True), register=False)}"
