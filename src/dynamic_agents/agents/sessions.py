"""agno's async session dbs from a URL: SQLite embedded, PostgreSQL in production.

``session_db("sqlite:///sessions.db")`` → ``AsyncSqliteDb``; ``session_db("postgresql://…")`` →
``AsyncPostgresDb`` (psycopg 3, async). Use the async dbs in async code: agno's sync ones block the
event loop inside ``arun``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from dynamic_agents.exceptions import ConfigurationError

__all__ = ["session_db"]


def session_db(url: str, *, schema: str | None = None) -> Any:
    """An agno async db for sessions and memories at ``url``."""
    scheme = urlsplit(url).scheme
    if scheme.startswith("sqlite"):
        from agno.db.sqlite import AsyncSqliteDb
        from agno.db.utils import json_serializer
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        # NullPool: every connection is closed when its session ends, so none outlives the run
        # that opened it (aiosqlite warns about connections collected unclosed).
        engine = create_async_engine(
            url.replace(scheme, "sqlite+aiosqlite", 1), poolclass=NullPool, json_serializer=json_serializer
        )
        return AsyncSqliteDb(db_engine=engine)
    if scheme.startswith(("postgresql", "postgres")):
        from agno.db.postgres import AsyncPostgresDb

        return AsyncPostgresDb(db_url=url.replace(scheme, "postgresql+psycopg_async", 1), db_schema=schema)
    raise ConfigurationError(f"session db URL {url!r}: use sqlite:///path.db or postgresql://…")
