"""Shared fixtures: real services, isolated per test, and the hypothesis profiles."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, settings

from dynamic_agents import _yaml
from dynamic_agents.events import StreamNames
from dynamic_agents.testing import RedisServer
from tests.support import services

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from dynamic_agents.transports import RedisStreamsTransport

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AGNO_TELEMETRY", "false")

# "ci" is fixed (derandomised); "dev" explores more. Neither has a deadline or a "too slow" check:
# shared machines are noisy, and a loaded one makes any example slow.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=_yaml.LOADERS, ids=lambda loader: loader.__name__)
def yaml_loader(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], _yaml.YamlLoader]:
    """Every YAML reader of the library on one loader: a test using this runs on each loader
    PyYAML has here (libyaml's and the pure one), so that a difference between them fails it."""
    loader: Callable[[str], _yaml.YamlLoader] = request.param
    monkeypatch.setattr(_yaml, "_loader", loader)
    return loader


@pytest.fixture(scope="session")
def _redis_available() -> str:
    url = services.redis_url()
    if not services.reachable(url, 6379):
        services.unavailable("Redis", url, "start redis-server on 127.0.0.1:6379 or set REDIS_URL")
    return url


@pytest.fixture
async def redis_url(_redis_available: str) -> str:
    """The Redis server's URL. Use it with :func:`redis_prefix`: tests share the server."""
    return _redis_available


@pytest.fixture
async def redis_prefix(_redis_available: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards.

    The shared server is never flushed: tests keep their keys under this prefix (it is a Redis
    Cluster hash tag, so multi-key operations work the same way they would in production).
    """
    from redis.asyncio import Redis

    prefix = f"{{test-{uuid.uuid4().hex[:12]}}}"
    yield prefix
    client = Redis.from_url(_redis_available)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_transport(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStreamsTransport]:
    """A Redis transport on this test's prefix."""
    from dynamic_agents.transports import RedisStreamsTransport

    transport = RedisStreamsTransport.from_url(redis_url, names=StreamNames(redis_prefix))
    yield transport
    await transport.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A plain redis-py client (raw bytes), to look at or arrange what the library wrote."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def _postgres_available() -> str:
    url = services.postgres_url()
    if not services.reachable(url, 5432):
        services.unavailable(
            "PostgreSQL",
            url,
            "start PostgreSQL on 127.0.0.1:5432 (database 'test') or set POSTGRES_URL",
        )
    return url


@pytest.fixture
def postgres_url(_postgres_available: str) -> Iterator[str]:
    """A URL whose ``search_path`` is a fresh schema of this test's own, dropped afterwards."""
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_postgres_available, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    parts = urlsplit(_postgres_available)
    query = "&".join(filter(None, [parts.query, urlencode({"options": f"-csearch_path={schema}"})]))
    try:
        yield urlunsplit(parts._replace(query=query))
    finally:
        with psycopg.connect(_postgres_available, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server (AOF, fsync always) this test may kill, restart or flush."""
    if shutil.which("redis-server") is None:
        services.unavailable("redis-server", "PATH", "install it (apt-get install redis-server)")
    with RedisServer() as server:
        yield server
