from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from dynamic_agents.agents.specs.base import SpecKind
from dynamic_agents.agents.stores import SpecStore, SqlSpecStore
from dynamic_agents.agents.stores.base import SpecModels
from dynamic_agents.agents.stores.sql import TABLE_NAME
from tests.agents.stores.contract import MODELS, Backend, SqlSpecStoreContract, agent

pytestmark = pytest.mark.postgres


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[Backend]:
    async def make(models: SpecModels) -> SpecStore:
        return SqlSpecStore.from_url(postgres_url, models)

    async def corrupt(kind: SpecKind, spec_id: str) -> str:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute(
                f"UPDATE {TABLE_NAME} SET document = %s WHERE kind = %s AND id = %s",
                (json.dumps({"id": spec_id, "version": 1, "surprise": True}), kind.value, spec_id),
            )
        return TABLE_NAME

    async def rekind(kind: SpecKind, spec_id: str, new_kind: str) -> str:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute(
                f"UPDATE {TABLE_NAME} SET kind = %s WHERE kind = %s AND id = %s",
                (new_kind, kind.value, spec_id),
            )
        return TABLE_NAME

    backend = Backend(make, corrupt, rekind)
    yield backend
    await backend.aclose()


class TestPostgresSpecStore(SqlSpecStoreContract):
    pass


async def test_the_table_lands_in_the_search_path_schema(postgres_url: str) -> None:
    schema = parse_qs(urlsplit(postgres_url).query)["options"][0].removeprefix("-csearch_path=")
    async with SqlSpecStore.from_url(postgres_url, MODELS) as store:
        await store.create(agent())
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cursor = await conn.execute(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = %s AND table_schema IN (%s, 'public')",
            (TABLE_NAME, schema),
        )
        assert [row[0] for row in await cursor.fetchall()] == [schema]


async def test_connections_the_server_closed_are_replaced_without_failing_a_call(postgres_url: str) -> None:
    """A server restart, a failover or an idle timeout closes the pooled connections: each one's
    next call failed with SQLAlchemy's OperationalError ("terminating connection due to
    administrator command") before the pool replaced it."""
    name = f"specs-{uuid.uuid4().hex[:12]}"
    async with SqlSpecStore.from_url(f"{postgres_url}&application_name={name}", MODELS) as store:
        await store.create(agent())
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (name,),
            )
            assert [row[0] for row in await cursor.fetchall()] == [True]  # the pooled connection
        assert await store.get(SpecKind.AGENT, "helper") == agent()
        assert (await store.update(agent(llm="v2"), expected_version=1)).version == 2
