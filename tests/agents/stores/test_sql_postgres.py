from __future__ import annotations

import asyncio
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
from dynamic_agents.exceptions import SpecStoreUnavailableError
from tests.agents.stores.contract import MODELS, Backend, SqlSpecStoreContract, agent
from tests.support.waiting import wait_until

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


async def test_a_connection_lost_mid_call_is_a_typed_error_and_the_next_call_works(postgres_url: str) -> None:
    """It was SQLAlchemy's OperationalError, whose message carries the SQL and its parameters (the
    spec's document): a worker put it in the reply to the user."""
    name = f"specs-{uuid.uuid4().hex[:12]}"
    async with SqlSpecStore.from_url(f"{postgres_url}&application_name={name}", MODELS) as store:
        await store.create(agent(llm="SECRET-PROMPT-CANARY"))
        async with await psycopg.AsyncConnection.connect(postgres_url) as holder:
            # the row stays locked until `holder` rolls back: the update waits in the server
            await holder.execute(f"SELECT * FROM {TABLE_NAME} FOR UPDATE")
            update = asyncio.create_task(store.update(agent(llm="CANARY-2"), expected_version=1))
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
            )
            async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
                pids: list[int] = []

                async def update_waits() -> bool:
                    pids[:] = [row[0] for row in await (await admin.execute(waiting, (name,))).fetchall()]
                    return bool(pids)

                await wait_until(update_waits, what="the update to wait for the row's lock")
                await admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            with pytest.raises(SpecStoreUnavailableError) as caught:
                await update
            await holder.rollback()
        message = str(caught.value)
        assert isinstance(caught.value, ConnectionError)
        assert "terminating connection" in message
        assert "CANARY" not in message
        assert "UPDATE" not in message
        assert "SqlSpecStore" in message
        assert await store.get(SpecKind.AGENT, "helper") == agent(llm="SECRET-PROMPT-CANARY")


async def test_an_unreachable_server_is_a_typed_error_without_the_password() -> None:
    url = "postgresql://postgres:pw-CANARY@127.0.0.1:1/test?password=pw-CANARY-2"
    async with SqlSpecStore.from_url(url, MODELS) as store:
        for call in (
            lambda: store.get(SpecKind.AGENT, "helper"),
            store.list,
            lambda: store.create(agent()),
            lambda: store.update(agent(), expected_version=1),
            lambda: store.delete(SpecKind.AGENT, "helper"),
        ):
            with pytest.raises(SpecStoreUnavailableError, match=r"127\.0\.0\.1") as caught:
                await call()
            assert "CANARY" not in str(caught.value)
