from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynamic_agents.agents.specs.base import SpecKind
from dynamic_agents.agents.stores import SpecStore, SqlSpecStore
from dynamic_agents.agents.stores.base import SpecModels
from dynamic_agents.agents.stores.sql import TABLE_NAME, async_url
from dynamic_agents.exceptions import ConfigurationError, SpecValidationError
from tests.agents.stores.contract import MODELS, Backend, SqlSpecStoreContract, agent


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "specs.db"


@pytest.fixture
async def backend(database: Path) -> AsyncIterator[Backend]:
    async def make(models: SpecModels) -> SpecStore:
        return SqlSpecStore.from_url(f"sqlite:///{database}", models)

    async def corrupt(kind: SpecKind, spec_id: str) -> str:
        with sqlite3.connect(database) as conn:
            conn.execute(
                f"UPDATE {TABLE_NAME} SET document = ? WHERE kind = ? AND id = ?",
                (json.dumps({"id": spec_id, "version": 1, "surprise": True}), kind.value, spec_id),
            )
        conn.close()
        return TABLE_NAME

    async def rekind(kind: SpecKind, spec_id: str, new_kind: str) -> str:
        with sqlite3.connect(database) as conn:
            conn.execute(
                f"UPDATE {TABLE_NAME} SET kind = ? WHERE kind = ? AND id = ?", (new_kind, kind.value, spec_id)
            )
        conn.close()
        return TABLE_NAME

    backend = Backend(make, corrupt, rekind)
    yield backend
    await backend.aclose()


class TestSqliteSpecStore(SqlSpecStoreContract):
    pass


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///specs.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///specs.db", "sqlite+aiosqlite"),
        ("postgresql://u@h/db?options=-csearch_path%3Ds", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
    ],
)
def test_urls_get_async_drivers(url: str, driver: str) -> None:
    rewritten = async_url(url)
    assert rewritten.drivername == driver
    assert dict(rewritten.query) == dict(async_url(url.replace("postgres://", "postgresql://")).query)


@pytest.mark.parametrize("url", ["not a url", "sqlite+pysqlite:///x.db"])
def test_unusable_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SqlSpecStore.from_url(url)


async def test_a_row_that_is_not_json_is_a_validation_error(database: Path) -> None:
    async with SqlSpecStore.from_url(f"sqlite+aiosqlite:///{database}", MODELS) as store:
        await store.create(agent())
        with sqlite3.connect(database) as conn:
            conn.execute(f"UPDATE {TABLE_NAME} SET document = '{{not json'")
        conn.close()
        with pytest.raises(SpecValidationError, match="not valid JSON"):
            await store.get(SpecKind.AGENT, "helper")


async def test_create_tables_is_idempotent_and_explicit_creation_works(database: Path) -> None:
    async with SqlSpecStore.from_url(f"sqlite:///{database}", MODELS) as store:
        await store.create_tables()
        await store.create_tables()
    async with SqlSpecStore.from_url(f"sqlite:///{database}", MODELS) as store:
        await store.create_tables()
        assert await store.list() == []
