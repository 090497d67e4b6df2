"""A spec store in one SQL table, through SQLAlchemy's asyncio engine: SQLite or PostgreSQL.

``SqlSpecStore.from_url("sqlite+aiosqlite:///specs.db")`` is the embedded default;
``postgresql+psycopg://…`` (psycopg 3) suits several processes sharing specs. Plain
``sqlite:///…``, ``postgresql://…`` and ``postgres://…`` are rewritten to those async drivers, and
query parameters reach the driver unchanged (``?options=-csearch_path%3Dmy_schema`` puts the table
in ``my_schema``).

The table ``dynamic_agents_specs`` has one row per ``(kind, id)``: the version, status and tags as
columns for filtering, the spec's JSON document, and when it was last written. It is created on
first use (or by :meth:`SqlSpecStore.create_tables`). An update is one
``UPDATE … WHERE kind = … AND id = … AND version = <expected>``: the database decides which of two
racing writers wins, in one process or many. Tags are stored as a JSON list in a text column; a
tag filter narrows rows with ``LIKE`` in SQL and is checked exactly in Python.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from dynamic_agents._redaction import redact_text
from dynamic_agents._validation import check_count
from dynamic_agents.agents.specs.base import SpecBase, SpecKind, SpecStatus
from dynamic_agents.agents.stores.base import SpecModels, SpecStore, invalid, matches, order_key, stored_copy
from dynamic_agents.exceptions import (
    ConfigurationError,
    MissingDependencyError,
    SpecConflictError,
    SpecNotFoundError,
    SpecStoreUnavailableError,
)

try:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise MissingDependencyError("SqlSpecStore", "agents") from error

__all__ = ["SqlSpecStore"]

TABLE_NAME = "dynamic_agents_specs"
ID_LENGTH = 128

metadata = sa.MetaData()
specs_table = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
}
"""URL schemes without a driver, and the async driver used for them."""

EXTRAS = {"sqlite": "agents", "postgresql": "postgres"}


def async_url(url: str | URL) -> URL:
    """``url`` with an async driver: ``sqlite://`` and ``postgresql://`` get aiosqlite and psycopg."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:  # its message repeats the URL, password included
        raise ConfigurationError(
            "not a database URL: expected sqlite:///path.db or postgresql://user@host/database"
        ) from None
    driver = ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


class SqlSpecStore(SpecStore):
    """Specs in the ``dynamic_agents_specs`` table of ``engine``'s database.

    ``owns_engine`` makes :meth:`aclose` dispose of the engine (``from_url`` sets it).
    """

    def __init__(
        self, engine: AsyncEngine, models: SpecModels | None = None, *, owns_engine: bool = False
    ) -> None:
        super().__init__(models)
        self.engine = engine
        self._owns_engine = owns_engine
        self._table_ready = False
        self._table_lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls, url: str | URL, models: SpecModels | None = None, **engine_options: Any
    ) -> SqlSpecStore:
        """A store owning a new engine for ``url``; ``engine_options`` go to ``create_async_engine``.

        A server's pooled connections are checked before each use (``pool_pre_ping``, unless
        given): one the server closed (a restart, a failover, an idle timeout) is replaced, where
        the call that drew it failed."""
        parsed = async_url(url)
        if parsed.get_backend_name() != "sqlite":  # a file's connections are not closed under it
            engine_options.setdefault("pool_pre_ping", True)
        try:
            engine = create_async_engine(parsed, **engine_options)
        except ImportError as error:
            extra = EXTRAS.get(parsed.get_backend_name())
            feature = f"SqlSpecStore with {parsed.drivername}"
            if extra is None:
                raise MissingDependencyError(
                    feature, install=f"pip install the {error.name} driver"
                ) from error
            raise MissingDependencyError(feature, extra) from error
        except (sa.exc.ArgumentError, sa.exc.InvalidRequestError, sa.exc.NoSuchModuleError) as error:
            shown = parsed.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"cannot use {shown} for SqlSpecStore (use an async driver): {error}"
            ) from None
        return cls(engine, models, owns_engine=True)

    async def create_tables(self) -> None:
        """Create the table unless it exists (every operation also does this once, on first use)."""
        async with self._table_lock:
            if self._table_ready:
                return
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(metadata.create_all)
            except sa.exc.DBAPIError:
                # Another process may have created it between the check and the CREATE TABLE.
                async with self.engine.connect() as conn:
                    if not await conn.run_sync(lambda sync: sa.inspect(sync).has_table(TABLE_NAME)):
                        raise
            self._table_ready = True

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, kind: SpecKind, spec_id: str) -> SpecBase | None:
        kind = SpecKind.of(kind)
        if not _storable(spec_id):
            return None
        async with self._connect() as conn:
            result = await conn.execute(sa.select(specs_table.c.document).where(*_key(kind, spec_id)))
            text = result.scalar_one_or_none()
        return None if text is None else self._load(kind, spec_id, text)

    async def list(
        self, kind: SpecKind | None = None, *, tag: str | None = None, status: SpecStatus | None = None
    ) -> builtins.list[SpecBase]:
        query = sa.select(specs_table.c.kind, specs_table.c.id, specs_table.c.document)
        if kind is not None:
            query = query.where(specs_table.c.kind == SpecKind.of(kind).value)
        if status is not None:
            status = SpecStatus.of(status)
            query = query.where(specs_table.c.status == status.value)
        if tag is not None:  # narrows only: the exact test is `matches` below
            query = query.where(specs_table.c.tags.contains(json.dumps(tag), autoescape=True))
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        specs = [self._load(row.kind, row.id, row.document) for row in rows]
        return sorted((spec for spec in specs if matches(spec, tag, status)), key=order_key)

    async def version(self, kind: SpecKind, spec_id: str) -> int | None:
        if not _storable(spec_id):
            return None
        async with self._connect() as conn:
            return await _version(conn, SpecKind.of(kind), spec_id)

    # -- writing ----------------------------------------------------------------------------------

    async def create(self, spec: SpecBase) -> SpecBase:
        stored = stored_copy(spec, 1)
        try:
            async with self._connect(write=True) as conn:
                await conn.execute(
                    sa.insert(specs_table).values(kind=spec.kind.value, id=spec.id, **_row(stored))
                )
        except sa.exc.IntegrityError:
            current = await self.version(spec.kind, spec.id)
            raise SpecConflictError(f"{spec.ref} already exists", current=current) from None
        return stored

    async def update(self, spec: SpecBase, *, expected_version: int) -> SpecBase:
        expected_version = check_count("expected_version", expected_version)
        stored = stored_copy(spec, expected_version + 1)
        key = _key(spec.kind, spec.id)
        # The UPDATE comes first: on SQLite, reading before writing in one transaction can fail
        # with "database is locked" when two writers race; the WHERE clause alone decides.
        async with self._connect(write=True) as conn:
            statement = sa.update(specs_table).where(*key, specs_table.c.version == expected_version)
            result = await conn.execute(statement.values(**_row(stored)))
            current = None if result.rowcount == 1 else await _version(conn, spec.kind, spec.id)
        if result.rowcount == 1:
            return stored
        if current is None:
            raise SpecNotFoundError(f"no {spec.ref} to update")
        raise SpecConflictError(
            f"{spec.ref} is at version {current}, not {expected_version}", current=current
        )

    async def delete(self, kind: SpecKind, spec_id: str, *, expected_version: int | None = None) -> bool:
        expected_version = check_count("expected_version", expected_version, optional=True)
        kind = SpecKind.of(kind)
        if not _storable(spec_id):
            return False
        statement = sa.delete(specs_table).where(*_key(kind, spec_id))
        if expected_version is not None:
            statement = statement.where(specs_table.c.version == expected_version)
        async with self._connect(write=True) as conn:
            result = await conn.execute(statement)
            current = None if result.rowcount == 1 else await _version(conn, kind, spec_id)
        if result.rowcount == 1:
            return True
        if current is None:
            return False
        raise SpecConflictError(
            f"{kind.value} {spec_id!r} is at version {current}, not {expected_version}", current=current
        )

    # -- lifecycle --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Dispose of the engine if this store created it (``from_url``)."""
        if self._owns_engine:
            await self.engine.dispose()

    # -- helpers ----------------------------------------------------------------------------------

    async def _ensure_table(self) -> None:
        if not self._table_ready:
            await self.create_tables()

    @asynccontextmanager
    async def _connect(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection once the table exists; in a transaction committed on exit if ``write``.
        The database unreachable, or the connection lost, is a :class:`SpecStoreUnavailableError`
        (SQLAlchemy's message repeats the SQL and its parameters: the spec's whole document)."""
        try:
            await self._ensure_table()
            if write:
                async with self.engine.begin() as conn:
                    yield conn
            else:
                async with self.engine.connect() as conn:
                    yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else "no reason given"
            where = self.engine.url.render_as_string(hide_password=True)
            message = redact_text(f"SqlSpecStore ({where}) is unavailable: {reason}")  # ?password=…
            raise SpecStoreUnavailableError(message) from error

    def _load(self, kind: str, spec_id: str, text: str) -> SpecBase:
        """The spec in a row; ``kind`` as the row has it (any writer may have put any text there)."""
        kind = str(kind)  # a SpecKind (a StrEnum) as its value
        where = f"{TABLE_NAME} row ({kind!r}, {spec_id!r})"
        try:
            spec_kind = SpecKind.of(kind)
        except ValueError:
            valid = ", ".join(member.value for member in SpecKind)
            raise invalid(where, f"kind {kind!r} is not a spec kind (valid: {valid})") from None
        try:
            document = json.loads(text)
        except ValueError as error:
            raise invalid(where, f"the document is not valid JSON: {error}") from None
        return self.rebuild(spec_kind, spec_id, document, where=where)


def _storable(spec_id: str) -> bool:
    """Whether a row can have ``spec_id``: PostgreSQL refuses a NUL in text (a ``DataError`` where
    the other backends find no spec), and the column holds 128 characters."""
    return len(spec_id) <= ID_LENGTH and "\x00" not in spec_id


def _key(kind: SpecKind, spec_id: str) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    return (specs_table.c.kind == SpecKind.of(kind).value, specs_table.c.id == spec_id)


def _row(spec: SpecBase) -> dict[str, Any]:
    return {
        "version": spec.version,
        "status": spec.status.value,
        "tags": json.dumps(list(spec.tags)),
        "document": json.dumps(spec.to_document()),
        "updated_at": datetime.now(UTC),
    }


async def _version(conn: AsyncConnection, kind: SpecKind, spec_id: str) -> int | None:
    result = await conn.execute(sa.select(specs_table.c.version).where(*_key(kind, spec_id)))
    version: int | None = result.scalar_one_or_none()
    return version
