"""A secret that cannot be resolved while the router is built: the error says which deployment and
which field, keeps its type and its cause, and shows no value."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

from dynamic_agents.exceptions import (
    IdentityForbiddenError,
    IdentityUnavailableError,
    SecretNotFoundError,
    SecretReferenceError,
    SecretsError,
    SecretsUnavailableError,
)
from dynamic_agents.llm import RouterConfig, build_router
from dynamic_agents.secrets import SecretKey, SecretsManager, SecretSource, SecretValue, StaticSource
from dynamic_agents.testing.redis_server import free_port
from tests.support.waiting import wait_until

CANARY = "sk-CANARY-build-error-0001"


def config(claude_params: Mapping[str, Any], **settings: Any) -> RouterConfig:
    gpt = {"model": "openai/gpt-4o-mini", "api_key": CANARY, "mock_response": "hi"}
    claude = {"model": "anthropic/claude-3-5-sonnet-latest", "mock_response": "hi", **claude_params}
    return RouterConfig.from_dict(
        {
            "model_list": [
                {"model_name": "gpt", "litellm_params": gpt},
                {"model_name": "claude", "litellm_params": claude, "model_info": {"id": "claude-main"}},
            ],
            **settings,
        }
    )


def chain(error: BaseException | None) -> list[BaseException]:
    found = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def assert_no_value(error: BaseException) -> None:
    for link in chain(error):
        assert CANARY not in str(link)
        assert CANARY not in repr(link)


async def test_a_missing_secret_names_the_deployment_and_the_field() -> None:
    secrets = SecretsManager(StaticSource({}))
    with pytest.raises(SecretNotFoundError) as caught:
        await build_router(config({"api_key": "secret:anthropic:api_key"}), secrets)
    message = str(caught.value)
    assert message.startswith(
        "model_list[1] (deployment 'claude-main' of model 'claude'), litellm_params.api_key: "
    )
    assert "no secret field 'api_key' for anthropic" in message  # what the secrets layer said
    assert caught.value.__cause__ is None
    assert_no_value(caught.value)


async def test_a_missing_secret_in_a_header_names_the_header() -> None:
    secrets = SecretsManager(StaticSource({"anthropic": {"api_key": "sk-ant-fine-000001"}}))
    params = {"api_key": "secret:anthropic:api_key", "extra_headers": {"X-Gateway-Key": "secret:gateway:key"}}
    with pytest.raises(SecretNotFoundError) as caught:
        await build_router(config(params), secrets)
    assert "model_list[1] (deployment 'claude-main' of model 'claude'), " in str(caught.value)
    assert "litellm_params.extra_headers.X-Gateway-Key: " in str(caught.value)
    assert_no_value(caught.value)


async def test_a_malformed_reference_names_the_field_without_the_value_pasted_into_it() -> None:
    secrets = SecretsManager(StaticSource({}))
    with pytest.raises(SecretReferenceError) as caught:
        await build_router(config({"api_key": f"secret:anthropic:api_key={CANARY}"}), secrets)
    assert str(caught.value).startswith("model_list[1] (deployment 'claude-main' of model 'claude'), ")
    assert "litellm_params.api_key: malformed secret reference" in str(caught.value)
    assert_no_value(caught.value)


class DownSource(SecretSource):
    async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
        raise IdentityUnavailableError("GET /secrets failed: connection refused", status=None)


async def test_an_unavailable_secrets_service_names_the_field_and_keeps_the_cause() -> None:
    with pytest.raises(SecretsUnavailableError) as caught:
        await build_router(config({"api_key": "secret:anthropic:api_key"}), SecretsManager(DownSource()))
    assert str(caught.value).startswith(
        "model_list[1] (deployment 'claude-main' of model 'claude'), litellm_params.api_key: secret anthropic"
    )
    assert isinstance(caught.value.__cause__, IdentityUnavailableError)  # as the secrets layer chains it
    assert_no_value(caught.value)


async def test_an_unresolvable_redis_url_names_the_field() -> None:
    secrets = SecretsManager(StaticSource({"anthropic": {"api_key": "sk-ant-fine-000001"}}))
    settings = {"redis_url": "secret:redis:url"}
    with pytest.raises(SecretsError) as caught:
        await build_router(config({"api_key": "secret:anthropic:api_key"}, **settings), secrets)
    assert str(caught.value).startswith("redis_url: ")


@pytest.mark.parametrize("redis_url", ["redis://127.0.0.1:6379/2", "secret:redis:url"])
async def test_a_redis_url_written_out_or_referenced_reaches_litellm(redis_url: str) -> None:
    secrets = SecretsManager(StaticSource({"redis": {"url": "redis://127.0.0.1:6379/3"}}))
    router = await build_router(config({"api_key": "plain"}, redis_url=redis_url), secrets)
    try:
        redis_cache = router.router.cache.redis_cache
        expected = "redis://127.0.0.1:6379/3" if redis_url.startswith("secret:") else redis_url
        assert redis_cache is not None
        assert redis_cache.redis_kwargs["url"] == expected
    finally:
        await router.aclose()


class ForbiddingSource(SecretSource):
    async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
        raise IdentityForbiddenError("GET /secrets: forbidden for this token", status=403)


async def test_a_refused_secret_keeps_its_class_and_status() -> None:
    secrets = SecretsManager(ForbiddingSource())
    with pytest.raises(IdentityForbiddenError) as caught:
        await build_router(config({"api_key": "secret:anthropic:api_key"}), secrets)
    assert caught.value.status == 403
    assert str(caught.value) == (
        "model_list[1] (deployment 'claude-main' of model 'claude'), litellm_params.api_key: "
        "GET /secrets: forbidden for this token"
    )
    assert_no_value(caught.value)


async def test_an_unresolvable_reference_in_router_settings_names_the_field() -> None:
    secrets = SecretsManager(StaticSource({"anthropic": {"api_key": "sk-ant-fine-000001"}}))
    settings = {"router_settings": {"redis_password": "secret:redis:password"}}
    with pytest.raises(SecretNotFoundError) as caught:
        await build_router(config({"api_key": "secret:anthropic:api_key"}, **settings), secrets)
    assert str(caught.value).startswith("router_settings.redis_password: ")
    assert_no_value(caught.value)


@pytest.mark.redis_server
@pytest.mark.parametrize("reference", ["secret:redis:password", "os.environ/DA_TEST_REDIS_PASSWORD"])
async def test_a_redis_password_referenced_in_router_settings_reaches_litellm_masked(
    reference: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """litellm's Router takes ``redis_host`` / ``redis_port`` / ``redis_password`` for its shared
    cooldown and usage state, through ``router_settings``: a reference there is resolved as a
    deployment's are (it was sent as the password, ``secret:…`` literally; ``os.environ/…`` read
    by litellm itself, from the environment only and never masked)."""
    import redis

    from dynamic_agents._redaction import REDACTOR
    from dynamic_agents.testing import RedisServer

    password = f"canary-redis-password-{uuid.uuid4().hex}"
    monkeypatch.setenv("DA_TEST_REDIS_PASSWORD", password)
    system: dict[str, dict[str, Any]] = {"anthropic": {"api_key": "sk-ant-fine-000001"}}
    if reference.startswith("secret:"):  # (a source's values are registered with the redactor)
        system["redis"] = {"password": password}
    secrets = SecretsManager(StaticSource(system))
    with RedisServer(durable=False) as server:
        admin = redis.Redis(port=server.port)
        try:
            admin.config_set("requirepass", password)
        finally:
            admin.close()
        router_settings = {"redis_host": "127.0.0.1", "redis_port": server.port, "redis_password": reference}
        router_config = config({"api_key": "secret:anthropic:api_key"}, router_settings=router_settings)
        router = await build_router(router_config, secrets)
        try:
            redis_cache = router.router.cache.redis_cache
            assert redis_cache is not None
            assert redis_cache.redis_client.ping()  # litellm's own client got in with the password
            texts = [repr(router), repr(router_config), REDACTOR.redact(f"AUTH {password} refused")]
        finally:
            await router.aclose()
    captured = capfd.readouterr()
    for text in (*texts, caplog.text, captured.out, captured.err):
        assert password not in text


async def test_redis_down_at_build_leaves_no_task_unretrieved(caplog: pytest.LogCaptureFixture) -> None:
    """litellm's Redis cache pings Redis from a task of its own that nobody awaits: with Redis down
    at build, asyncio logged "Task exception was never retrieved" and its traceback, an ERROR, once
    the task was garbage-collected. The router is built all the same (litellm's calls go on
    without Redis); the failure is one WARNING line."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    password = f"canary-redis-password-{uuid.uuid4().hex}"
    secrets = SecretsManager(StaticSource({"anthropic": {"api_key": "sk-ant-fine-000001"}}))
    before = asyncio.all_tasks()
    try:
        router_config = config(
            {"api_key": "plain"}, redis_url=f"redis://:{password}@127.0.0.1:{free_port()}/0"
        )
        with caplog.at_level(logging.WARNING, logger="dynamic_agents"):
            router = await build_router(router_config, secrets)
            started = asyncio.all_tasks() - before
            await asyncio.wait(started)  # the health ping failed (litellm's calls go on without Redis)
            await router.aclose()
        del started
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert [context.get("message") for context in unhandled] == []
    (warning,) = [record for record in caplog.records if record.name.startswith("dynamic_agents")]
    assert "ConnectionError" in warning.getMessage()
    assert password not in caplog.text


def litellm_connections(admin: Any) -> list[dict[str, Any]]:
    """The connections to a private Redis server but the test's own (named ``test-admin``)."""
    return [client for client in admin.client_list() if client.get("name") != "test-admin"]


def redis_shared_state(redis_server: Any) -> tuple[Any, SecretsManager, dict[str, Any]]:
    """An admin client of ``redis_server`` (named, so it is told from litellm's connections), the
    secrets, and router settings that keep litellm's shared state (usage) in that server."""
    import redis

    admin = redis.Redis(port=redis_server.port)
    admin.client_setname("test-admin")
    secrets = SecretsManager(StaticSource({"anthropic": {"api_key": "sk-ant-fine-000001"}}))
    settings = {
        "redis_url": f"redis://127.0.0.1:{redis_server.port}/0",
        "routing_strategy": "usage-based-routing-v2",
    }
    return admin, secrets, settings


@pytest.mark.redis_server
async def test_closing_the_router_closes_litellms_redis_connections(redis_server: Any) -> None:
    """litellm's Router builds a Redis cache for ``redis_url`` (cooldowns, usage): a sync client
    of its own, and an async one in litellm's process-wide client cache. ``aclose()`` left both
    connected: a host rebuilding its router (a config reload) added connections each time."""
    admin, secrets, settings = redis_shared_state(redis_server)
    try:
        for _ in range(3):
            router = await build_router(config({"api_key": "plain"}, **settings), secrets)
            await router.acompletion(model="gpt", messages=[{"role": "user", "content": "hi"}])
            assert litellm_connections(admin) != []
            await GLOBAL_LOGGING_WORKER.flush()  # the call's success callbacks (usage, in Redis) ran
            await router.aclose()
            await router.aclose()  # once is enough
            await wait_until(lambda: litellm_connections(admin) == [], what="litellm's connections closed")
    finally:
        admin.close()


@pytest.mark.redis_server
async def test_closing_one_router_keeps_the_redis_client_another_open_router_shares(
    redis_server: Any,
) -> None:
    """Two routers with the same ``redis_url`` share litellm's cached async Redis client: closing
    one leaves the other's Redis state working (its calls in flight keep their connections)."""
    admin, secrets, settings = redis_shared_state(redis_server)
    first = await build_router(config({"api_key": "plain"}, **settings), secrets)
    second = await build_router(config({"api_key": "plain"}, **settings), secrets)
    try:
        await first.aclose()
        store = second.router.cache.redis_cache
        assert store is not None
        await store.async_set_cache("probe", "still-here")
        assert await store.async_get_cache("probe") == "still-here"
        await second.acompletion(model="gpt", messages=[{"role": "user", "content": "hi"}])
    finally:
        await second.aclose()
        await wait_until(lambda: litellm_connections(admin) == [], what="litellm's connections closed")
        admin.close()
