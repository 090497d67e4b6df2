"""SecretsManager over IdentityClient over the in-memory service: the acceptance scenarios."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from itertools import count

import httpx
import pytest
import uvicorn

from dynamic_agents._logging import get_logger
from dynamic_agents.exceptions import IdentityForbiddenError, SecretsUnavailableError
from dynamic_agents.secrets import (
    IdentityClient,
    IdentitySource,
    SecretChange,
    SecretKey,
    SecretsManager,
)
from dynamic_agents.testing import InMemoryIdentityService, free_port
from tests.support.waiting import wait_until

URL = "http://127.0.0.1:8000"
LIST = "/api/v1/secrets"
VALUES = "/api/v1/secrets/{id}/values"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


async def no_sleep(seconds: float) -> None:
    return None


def stepping_clock() -> Callable[[], datetime]:
    ticks = count()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return lambda: start + timedelta(seconds=next(ticks))


def manager_for(
    service: InMemoryIdentityService,
    *,
    clock: Clock | None = None,
    token: str = "service-token",
    transport: httpx.AsyncBaseTransport | None = None,
    **settings: float,
) -> SecretsManager:
    client = IdentityClient(
        URL, token=token, transport=transport or service.mock_transport(), retries=1, sleep=no_sleep
    )
    return SecretsManager(IdentitySource(client), clock=clock or Clock(), **settings)  # type: ignore[arg-type]


async def test_a_thousand_cold_gets_make_one_list_and_one_values_request() -> None:
    service = InMemoryIdentityService()
    service.add_secret("main", "openai", {"api_key": "sk-cold-0000001"})
    service.delay = 0.05  # every get arrives while the first fetch is in flight
    async with manager_for(service) as manager:
        values = await asyncio.gather(*(manager.get("openai", "api_key") for _ in range(1000)))
    assert {value.reveal() for value in values if value is not None} == {"sk-cold-0000001"}
    assert service.count("GET", LIST) == 1
    assert service.count("GET", VALUES) == 1


async def test_two_minutes_of_500s_after_a_warm_cache() -> None:
    service = InMemoryIdentityService()
    service.add_secret("main", "openai", {"api_key": "sk-outage-000001"})
    clock = Clock()
    async with manager_for(service, clock=clock, ttl=60, stale_grace=90, error_retry=5) as manager:
        assert await manager.get("openai", "api_key") is not None
        service.fail_next(500, times=None)
        outage_started = clock.now
        while clock.now - outage_started < 120:  # two minutes, in 10 s steps: all served
            clock.now += 10
            value = await manager.get("openai", "api_key")
            assert value is not None
            assert value.reveal() == "sk-outage-000001"
        assert manager.stats.stale_served > 0  # fresh for 60 s, then stale within the 90 s grace
        clock.now = outage_started + 151  # the grace is over
        with pytest.raises(SecretsUnavailableError, match="nothing usable is cached"):
            await manager.get("openai", "api_key")
        service.clear_faults()
        value = await manager.get("openai", "api_key")
        assert value is not None
        assert value.reveal() == "sk-outage-000001"


async def test_the_most_recently_updated_active_secret_wins() -> None:
    service = InMemoryIdentityService(clock=stepping_clock())
    older = service.add_secret("older", "openai", {"api_key": "sk-older-000001"})
    service.add_secret("newer", "openai", {"api_key": "sk-newer-000001"})
    disabled = service.add_secret("newest-but-off", "openai", {"api_key": "sk-disabled-0001"})
    service.set_status(disabled, "disabled")
    async with manager_for(service) as manager:
        value = await manager.get("openai", "api_key")
        assert value is not None
        assert value.reveal() == "sk-newer-000001"
        service.set_values(older, {"api_key": "sk-older-rotated"})  # now the most recent
        await manager.refresh()
        value = await manager.get("openai", "api_key")
        assert value is not None
        assert value.reveal() == "sk-older-rotated"


async def test_a_user_never_receives_another_users_secret() -> None:
    service = InMemoryIdentityService()
    service.add_secret("a", "openai", {"api_key": "sk-user-a-00001"}, user_id="a")
    service.add_secret("b", "openai", {"api_key": "sk-user-b-00001"}, user_id="b")
    service.add_secret("sys", "openai", {"api_key": "sk-system-00001"})

    # A careless service that ignores the user_id filter and lists everything.
    async def careless(request: httpx.Request) -> httpx.Response:
        if request.url.path == LIST:
            params = dict(request.url.params)
            params.pop("user_id", None)
            request = httpx.Request(
                request.method, request.url.copy_with(params=params), headers=request.headers
            )
        return await service.handle(request)

    async with manager_for(service, transport=httpx.MockTransport(careless)) as manager:
        for user, expected in (("a", "sk-user-a-00001"), ("b", "sk-user-b-00001"), (None, "sk-system-00001")):
            value = await manager.get("openai", "api_key", user)
            assert value is not None
            assert value.reveal() == expected
        assert await manager.get("openai", "api_key", "c") is None
        # the cache too: entries are per user
        value = await manager.get("openai", "api_key", "a")
        assert value is not None
        assert value.reveal() == "sk-user-a-00001"


async def test_the_client_works_over_a_real_socket() -> None:
    service = InMemoryIdentityService()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(service, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, what="uvicorn to start")
        async with IdentityClient(f"http://127.0.0.1:{port}", token="service-token") as client:
            created = await client.create_secret("net", "groq", {"api_key": "gsk-socket-0001"})
            values = await client.get_values(created.id)
            assert values.values["api_key"].reveal() == "gsk-socket-0001"
            assert [s.id async for s in client.iter_secrets(provider="groq")] == [created.id]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


@pytest.fixture
async def debug_logging() -> AsyncIterator[logging.Handler]:
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("dynamic_agents", "httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
        logger.removeHandler(handler)


async def test_canary_never_leaks(
    debug_logging: logging.Handler, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    rotated = f"canary-rotated-{uuid.uuid4().hex}"
    token_canary = f"canary-token-{uuid.uuid4().hex}"
    service = InMemoryIdentityService(tokens={token_canary: None, "alice-token": "alice"})
    secret_id = service.add_secret("main", "openai", {"api_key": canary})
    service.add_secret("bob", "openai", {"api_key": f"{canary}-bob"}, user_id="bob")
    clock = Clock()
    shown: list[object] = []
    errors: list[BaseException] = []

    caplog.set_level(logging.DEBUG)
    client = IdentityClient(
        URL, token=lambda: token_canary, transport=service.mock_transport(), sleep=no_sleep
    )
    manager = SecretsManager(IdentitySource(client), clock=clock, ttl=60, stale_grace=60)
    changes: list[SecretChange] = []
    manager.on_change(changes.append)
    async with manager:
        # fetched and used
        value = await manager.get("openai", "api_key")
        assert value is not None
        assert value.reveal() == canary
        config = await manager.resolve_all({"api_key": "secret:openai:api_key", "model": "gpt-4o"})
        get_logger("llm").info("using %s with key %s", config["model"], value.reveal())
        shown += [
            value,
            config,
            manager,
            manager.source,
            client,
            manager.stats,
            await client.get_values(secret_id),
        ]
        shown += [await client.get_secret(secret_id), (await client.list_secrets()).items]

        # retried through 503s, then a 401 with a token refresh
        service.fail_next(503, times=1)
        service.fail_next(401, times=1)
        await manager.refresh()

        # rotated
        service.set_values(secret_id, {"api_key": rotated})
        await manager.refresh()
        shown += [changes, await manager.get("openai", "api_key")]

        # refused: 403 for another user's secret, 401 with nothing left to refresh to
        async with IdentityClient(URL, token="alice-token", transport=service.mock_transport()) as alice:
            shown.append(alice)
            try:
                await alice.get_values(secret_id)
            except IdentityForbiddenError as error:
                errors.append(error)
        service.revoke_token(token_canary)
        clock.now += 61
        # stale serving while Identity refuses and then is down
        stale = await manager.get("openai", "api_key")
        assert stale is not None
        assert stale.reveal() == rotated
        service.down = True
        clock.now += 61
        try:
            await manager.get("openai", "api_key")
        except SecretsUnavailableError as error:
            errors.append(error)
    assert changes == [SecretChange(SecretKey("openai"), frozenset({"api_key"}))]
    assert len(errors) == 2

    captured = capfd.readouterr()
    texts = [captured.out, captured.err, caplog.text]
    texts += [record.getMessage() for record in caplog.records]
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            texts += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    texts += [repr(item) for item in shown] + [str(item) for item in shown]
    texts.append(json.dumps([t for t in texts if isinstance(t, str)]))
    assert "using gpt-4o with key **********" in caplog.text
    for text in texts:
        for secret in (canary, rotated, token_canary):
            assert secret not in text
