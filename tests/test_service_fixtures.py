"""The service fixtures themselves: isolation, cleanup, and the private server helper."""

from __future__ import annotations

import pytest

from tests.support.redis_server import RedisServer


@pytest.mark.redis
async def test_redis_prefix_keys_are_removed_after_the_test(redis_url: str) -> None:
    from redis.asyncio import Redis

    from tests.conftest import redis_prefix

    generator = redis_prefix.__wrapped__(redis_url)  # type: ignore[attr-defined]
    prefix = await generator.__anext__()
    client = Redis.from_url(redis_url)
    try:
        await client.set(f"{prefix}:a", "1")
        await client.xadd(f"{prefix}:stream", {"k": "v"})
        await client.set("unrelated-key-of-someone-else", "kept")
        with pytest.raises(StopAsyncIteration):
            await generator.__anext__()
        assert await client.exists(f"{prefix}:a", f"{prefix}:stream") == 0
        assert await client.get("unrelated-key-of-someone-else") == b"kept"
    finally:
        await client.delete("unrelated-key-of-someone-else")
        await client.aclose()


@pytest.mark.postgres
def test_postgres_url_is_a_private_schema(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        assert schema[0].startswith("test_")
        conn.execute("CREATE TABLE probe (id int)")
        row = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'probe'"
        ).fetchone()
        assert row == (schema[0],)


@pytest.mark.redis_server
def test_private_redis_server_survives_a_kill_with_its_data(redis_server: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    redis_server.kill()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.get("k") == b"v"
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        client.close()
