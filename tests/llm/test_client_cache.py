"""litellm's cached SDK clients: one per key, dropped when the key rotates away or the router closes.

litellm keeps an OpenAI/Azure SDK client (with its own connection pool, and the key) per
``api_key`` in ``litellm.in_memory_llm_clients_cache`` for an hour. These tests build clients the
way production does — a new, litellm-owned httpx client per SDK client — only with the fake
OpenAI server as its transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest
from litellm.caching.evicted_client_closer import EvictedClientCloser
from litellm.constants import (
    _DEFAULT_TTL_FOR_HTTPX_CLIENTS,
    EVICTED_LLM_CLIENT_CLOSE_GRACE_SECONDS,
    EVICTED_LLM_CLIENT_CLOSE_MAX_PENDING,
)
from litellm.integrations.custom_logger import CustomLogger
from litellm.llms.openai.common_utils import BaseOpenAILLM

from dynamic_agents.exceptions import (
    IdentityForbiddenError,
    LLMAuthenticationError,
    LLMError,
    SecretsUnavailableError,
)
from dynamic_agents.llm import RouterConfig, build_router
from dynamic_agents.llm._litellm import discard, key_digest
from dynamic_agents.llm.router import _USERS_KEYS_KEPT
from dynamic_agents.secrets import SecretKey, SecretsManager, StaticSource
from dynamic_agents.testing import FakeOpenAI
from dynamic_agents.testing.openai import FakeOpenAIRequest, HTTPErrorStep

MESSAGES = [{"role": "user", "content": "hi"}]
ROTATIONS = 12


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    cache = litellm.in_memory_llm_clients_cache
    saved_closer = cache.evicted_client_closer
    saved_factory = BaseOpenAILLM.__dict__["_get_async_http_client"]
    # As in production (no litellm.aclient_session): each SDK client gets an httpx client of its
    # own, which litellm owns and closes once evicted — here after no grace window, so a test sees it.
    BaseOpenAILLM._get_async_http_client = staticmethod(  # type: ignore[method-assign]
        lambda shared_session=None: httpx.AsyncClient(transport=fake.transport)
    )
    cache.flush_cache()
    cache.evicted_client_closer = EvictedClientCloser(grace_seconds=0)
    try:
        yield fake
    finally:
        BaseOpenAILLM._get_async_http_client = saved_factory  # type: ignore[method-assign]
        cache.evicted_client_closer = saved_closer
        cache.flush_cache()


def deployment(fake: FakeOpenAI, provider: str = "openai", id: str = "gpt-main") -> dict[str, Any]:
    return {
        "model_name": "gpt",
        "litellm_params": {
            "model": "openai/gpt-4o-mini",
            "api_key": f"secret:{provider}:api_key",
            "api_base": fake.api_base,
        },
        "model_info": {"id": id},
    }


def key_config(fake: FakeOpenAI) -> RouterConfig:
    return RouterConfig.from_dict({"model_list": [deployment(fake)], "num_retries": 0})


def version(number: int) -> str:
    return f"canary-rotated-key-{number:04d}"  # not sk-shaped: litellm masks those itself


def cached_clients(key: str) -> list[Any]:
    """litellm's cached SDK clients built for ``key``."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    cache = litellm.in_memory_llm_clients_cache
    return [client for name, client in cache.cache_dict.items() if f"hashed_api_key={digest}," in name]


async def closed(client: Any) -> bool:
    """Whether the client is closed once litellm's closer has run its closes (an async close runs
    as a task of its own)."""
    await asyncio.gather(*litellm.in_memory_llm_clients_cache.evicted_client_closer._close_tasks)
    return bool(client.is_closed())


def keys_in_cache_names() -> str:
    return " ".join(litellm.in_memory_llm_clients_cache.cache_dict)


async def test_rotating_keys_leaves_one_client_not_one_per_old_key(fake: FakeOpenAI) -> None:
    source = StaticSource({"openai": {"api_key": version(0)}})
    router = await build_router(key_config(fake), SecretsManager(source))
    old_clients: list[Any] = []
    try:
        for number in range(1, ROTATIONS + 1):
            await router.acompletion(model="gpt", messages=MESSAGES)
            (client,) = cached_clients(version(number - 1))
            old_clients.append(client)
            source.set(SecretKey("openai"), {"api_key": version(number)})
            assert await router.refresh() == 1
            assert cached_clients(version(number - 1)) == []  # gone at once: no call reaches it again
        response = await router.acompletion(model="gpt", messages=MESSAGES)  # the next lookup closes them
        assert response.choices[0].message.content == "ok"
        assert [request.authorization for request in fake.requests][-2:] == [
            f"Bearer {version(ROTATIONS - 1)}",
            f"Bearer {version(ROTATIONS)}",
        ]
        assert len(cached_clients(version(ROTATIONS))) == 1
        assert all([await closed(client) for client in old_clients])
        assert not any(version(number) in keys_in_cache_names() for number in range(ROTATIONS))
    finally:
        await router.aclose()


async def test_rotation_by_change_notice_drops_the_old_keys_client(fake: FakeOpenAI) -> None:
    source = StaticSource({"openai": {"api_key": version(0)}})
    secrets = SecretsManager(source)
    router = await build_router(key_config(fake), secrets)
    try:
        await router.acompletion(model="gpt", messages=MESSAGES)
        source.set(SecretKey("openai"), {"api_key": version(1)})
        await secrets.refresh()  # the router follows the manager's change notice
        assert cached_clients(version(0)) == []
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert fake.requests[-1].authorization == f"Bearer {version(1)}"
    finally:
        await router.aclose()


async def test_a_key_another_deployment_still_uses_keeps_its_client(fake: FakeOpenAI) -> None:
    source = StaticSource({"openai": {"api_key": version(0)}, "backup": {"api_key": version(0)}})
    config = RouterConfig.from_dict(
        {"model_list": [deployment(fake), deployment(fake, "backup", "gpt-backup")], "num_retries": 0}
    )
    router = await build_router(config, SecretsManager(source))
    try:
        await router.acompletion(model="gpt", messages=MESSAGES)
        source.set(SecretKey("openai"), {"api_key": version(1)})
        assert await router.refresh() == 1
        (client,) = cached_clients(version(0))  # gpt-backup still sends it
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert not client.is_closed()
    finally:
        await router.aclose()


async def test_closing_the_router_drops_its_keys_clients(fake: FakeOpenAI) -> None:
    source = StaticSource({"openai": {"api_key": version(0)}})
    router = await build_router(key_config(fake), SecretsManager(source))
    await router.acompletion(model="gpt", messages=MESSAGES)
    (client,) = cached_clients(version(0))
    await router.aclose()
    assert cached_clients(version(0)) == []
    assert await closed(client)


async def test_closing_one_router_keeps_the_clients_another_open_router_uses(fake: FakeOpenAI) -> None:
    source = StaticSource({"openai": {"api_key": version(0)}})
    replaced = await build_router(key_config(fake), SecretsManager(source))
    replacement = await build_router(key_config(fake), SecretsManager(source))
    try:
        await replacement.acompletion(model="gpt", messages=MESSAGES)
        (client,) = cached_clients(version(0))
        await replaced.aclose()
        assert cached_clients(version(0)) == [client]
    finally:
        await replacement.aclose()
    assert cached_clients(version(0)) == []


async def test_a_users_refused_key_that_rotated_drops_its_client(fake: FakeOpenAI) -> None:
    source = StaticSource(
        {"openai": {"api_key": version(0)}}, users={"alice": {"openai": {"api_key": "canary-alice-old-01"}}}
    )
    router = await build_router(key_config(fake), SecretsManager(source))
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        (client,) = cached_clients("canary-alice-old-01")
        source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
        fake._handler = lambda request: (
            HTTPErrorStep(401, "Incorrect API key") if "alice-old" in (request.authorization or "") else "ok"
        )
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert fake.requests[-1].authorization == "Bearer canary-alice-new-02"
        assert cached_clients("canary-alice-old-01") == []
        assert await closed(client)
    finally:
        await router.aclose()


async def test_many_users_keys_stay_within_litellms_client_cache_bound(fake: FakeOpenAI) -> None:
    users = {f"user-{n}": {"openai": {"api_key": f"canary-user-key-{n:04d}"}} for n in range(230)}
    source = StaticSource({"openai": {"api_key": version(0)}}, users=users)
    router = await build_router(key_config(fake), SecretsManager(source))
    cache = litellm.in_memory_llm_clients_cache
    try:
        for user_id in users:
            await router.acompletion(model="gpt", messages=MESSAGES, user_id=user_id)
        assert len(cache.cache_dict) <= cache.max_size_in_memory == 200
        assert fake.requests[-1].authorization == "Bearer canary-user-key-0229"
    finally:
        await router.aclose()


async def test_dropping_clients_logs_no_key(fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    source = StaticSource({"openai": {"api_key": version(0)}})
    caplog.set_level(logging.DEBUG)
    router = await build_router(key_config(fake), SecretsManager(source))
    await router.acompletion(model="gpt", messages=MESSAGES)
    source.set(SecretKey("openai"), {"api_key": version(1)})
    await router.refresh()
    await router.acompletion(model="gpt", messages=MESSAGES)
    await router.aclose()
    assert "canary-rotated-key" not in caplog.text
    assert "canary-rotated-key" not in repr(router)


def two_group_config(fake: FakeOpenAI) -> RouterConfig:
    """Group ``gpt`` (provider ``openai``) falling back to group ``backup`` (provider ``backup``)."""
    backup = {**deployment(fake, "backup", "backup-main"), "model_name": "backup"}
    return RouterConfig.from_dict(
        {"model_list": [deployment(fake), backup], "fallbacks": {"gpt": ["backup"]}, "num_retries": 0}
    )


def alice_source(openai_key: str = "canary-alice-old-01", **backup: str) -> StaticSource:
    return StaticSource(
        {"openai": {"api_key": version(0)}, "backup": {"api_key": "canary-system-backup-01"}},
        users={"alice": {"openai": {"api_key": openai_key}, **({"backup": backup} if backup else {})}},
    )


async def test_a_users_key_rotated_without_a_401_drops_its_client_on_the_next_lookup(
    fake: FakeOpenAI,
) -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(key_config(fake), secrets, follow_changes=False)
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        (client,) = cached_clients("canary-alice-old-01")
        # Rotated in Identity; the manager's entry expired meanwhile (no change notice).
        source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
        secrets.invalidate("openai", user_id="alice")
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert fake.requests[-1].authorization == "Bearer canary-alice-new-02"
        assert cached_clients("canary-alice-old-01") == []
        assert len(cached_clients("canary-alice-new-02")) == 1
        assert await closed(client)
    finally:
        await router.aclose()


async def test_a_users_key_rotation_notice_drops_its_client_before_any_call(fake: FakeOpenAI) -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(key_config(fake), secrets)
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        (client,) = cached_clients("canary-alice-old-01")
        source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
        assert await secrets.refresh(user_id="alice") == 1  # the manager's refresh: a change notice
        assert cached_clients("canary-alice-old-01") == []
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert fake.requests[-1].authorization == "Bearer canary-alice-new-02"
        assert await closed(client)
    finally:
        await router.aclose()


async def test_a_users_key_removed_drops_its_client(fake: FakeOpenAI) -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(key_config(fake), secrets, follow_changes=False)
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        source.remove(SecretKey("openai", user_id="alice"))
        secrets.invalidate("openai", user_id="alice")
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert fake.requests[-1].authorization == f"Bearer {version(0)}"  # the deployment's own key
        assert cached_clients("canary-alice-old-01") == []
    finally:
        await router.aclose()


async def test_a_users_key_on_a_fallback_group_rotated_drops_its_client(fake: FakeOpenAI) -> None:
    source = alice_source(api_key="canary-alice-backup-01")
    secrets = SecretsManager(source)
    router = await build_router(two_group_config(fake), secrets)
    fake._handler = lambda request: (
        HTTPErrorStep(500, "down") if "alice-old" in (request.authorization or "") else "ok"
    )
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert [request.authorization for request in fake.requests] == [
            "Bearer canary-alice-old-01",
            "Bearer canary-alice-backup-01",  # the fallback group, with alice's key for its provider
        ]
        (client,) = cached_clients("canary-alice-backup-01")
        source.set(SecretKey("backup", user_id="alice"), {"api_key": "canary-alice-backup-02"})
        assert await secrets.refresh("backup", user_id="alice") == 1
        assert cached_clients("canary-alice-backup-01") == []
        assert cached_clients("canary-alice-old-01") != []  # her key for the first group did not change
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert fake.requests[-1].authorization == "Bearer canary-alice-backup-02"
        assert await closed(client)
    finally:
        await router.aclose()


async def test_a_refused_users_key_refreshes_and_drops_her_fallback_groups_rotated_key_too(
    fake: FakeOpenAI,
) -> None:
    source = alice_source(api_key="canary-alice-backup-01")
    router = await build_router(two_group_config(fake), SecretsManager(source), follow_changes=False)
    fake._handler = lambda request: (
        HTTPErrorStep(500, "down") if "alice-old" in (request.authorization or "") else "ok"
    )
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
        source.set(SecretKey("backup", user_id="alice"), {"api_key": "canary-alice-backup-02"})
        fake._handler = lambda request: (
            HTTPErrorStep(401, "Incorrect API key") if "01" in (request.authorization or "") else "ok"
        )
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert fake.requests[-1].authorization == "Bearer canary-alice-new-02"
        assert cached_clients("canary-alice-old-01") == []
        await router.acompletion(model="backup", messages=MESSAGES, user_id="alice")
        assert fake.requests[-1].authorization == "Bearer canary-alice-backup-02"
        assert cached_clients("canary-alice-backup-01") == []
    finally:
        await router.aclose()


async def test_a_users_old_key_another_open_router_still_sends_keeps_its_client(fake: FakeOpenAI) -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    first = await build_router(key_config(fake), secrets, follow_changes=False)
    second = await build_router(key_config(fake), secrets, follow_changes=False)
    try:
        await first.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        await second.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        (client,) = cached_clients("canary-alice-old-01")
        source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
        secrets.invalidate("openai", user_id="alice")
        await first.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert cached_clients("canary-alice-old-01") == [client]  # second's calls still carry it
        await second.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert cached_clients("canary-alice-old-01") == []
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_users_key_rotation_notice_heard_by_two_routers_drops_her_old_client(
    fake: FakeOpenAI,
) -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    first = await build_router(key_config(fake), secrets)
    second = await build_router(key_config(fake), secrets)
    try:
        await first.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        await second.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        (client,) = cached_clients("canary-alice-old-01")
        source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
        assert await secrets.refresh(user_id="alice") == 1  # each router hears it in turn
        assert cached_clients("canary-alice-old-01") == []
        assert await closed(client)
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_users_key_that_cannot_be_read_keeps_her_client(fake: FakeOpenAI) -> None:
    source = alice_source()
    secrets = SecretsManager(source, stale_grace=0)
    router = await build_router(key_config(fake), secrets, follow_changes=False)
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        secrets.invalidate("openai", user_id="alice")

        async def unavailable(key: SecretKey) -> None:
            raise SecretsUnavailableError("the source is away")

        source.fetch = unavailable  # type: ignore[method-assign]
        with pytest.raises(LLMError):
            await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert len(cached_clients("canary-alice-old-01")) == 1  # not known to have changed
    finally:
        await router.aclose()


async def test_a_users_key_whose_access_was_revoked_drops_her_client(fake: FakeOpenAI) -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(key_config(fake), secrets, follow_changes=False)
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        (client,) = cached_clients("canary-alice-old-01")
        secrets.invalidate("openai", user_id="alice")

        async def revoked(key: SecretKey) -> None:
            raise IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)

        source.fetch = revoked  # type: ignore[method-assign]
        with pytest.raises(LLMAuthenticationError):
            await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert cached_clients("canary-alice-old-01") == []  # the manager serves it no more either
        assert await closed(client)
    finally:
        await router.aclose()


async def test_dropping_a_users_clients_shows_no_key(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    source = alice_source(api_key="canary-alice-backup-01")
    secrets = SecretsManager(source)
    caplog.set_level(logging.DEBUG)
    router = await build_router(two_group_config(fake), secrets)
    await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    await router.acompletion(model="backup", messages=MESSAGES, user_id="alice")
    source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
    await secrets.refresh(user_id="alice")
    source.set(SecretKey("backup", user_id="alice"), {"api_key": "canary-alice-backup-02"})
    secrets.invalidate(user_id="alice")
    await router.acompletion(model="backup", messages=MESSAGES, user_id="alice")
    assert "dropped 1 cached LLM client" in caplog.text
    assert "canary-" not in caplog.text
    assert "canary-" not in repr(router)
    await router.aclose()
    assert "canary-" not in caplog.text


async def test_closing_the_router_drops_its_users_keys_clients_fallback_groups_included(
    fake: FakeOpenAI,
) -> None:
    source = alice_source(api_key="canary-alice-backup-01")
    router = await build_router(two_group_config(fake), SecretsManager(source))
    fake._handler = lambda request: (
        HTTPErrorStep(500, "down") if "alice-old" in (request.authorization or "") else "ok"
    )
    await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    clients = cached_clients("canary-alice-old-01") + cached_clients("canary-alice-backup-01")
    assert len(clients) == 2  # her key for the group, and for the fallback group's provider
    await router.aclose()
    assert cached_clients("canary-alice-old-01") == cached_clients("canary-alice-backup-01") == []
    assert not any("canary-" in name for name in keys_in_cache_names().split())
    assert all([await closed(client) for client in clients])


async def test_closing_one_router_keeps_a_users_key_another_open_router_sends(fake: FakeOpenAI) -> None:
    secrets = SecretsManager(alice_source())
    replaced = await build_router(key_config(fake), secrets)
    replacement = await build_router(key_config(fake), secrets)
    try:
        await replaced.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        await replacement.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        (client,) = cached_clients("canary-alice-old-01")
        await replaced.aclose()
        assert cached_clients("canary-alice-old-01") == [client]
    finally:
        await replacement.aclose()
    assert cached_clients("canary-alice-old-01") == []


def test_the_client_cache_numbers_in_the_docs_are_litellms() -> None:
    """docs/llm.md quotes them: a litellm release that changes one fails here, not in production."""
    docs = (Path(__file__).parents[2] / "docs" / "llm.md").read_text()
    section = " ".join(docs.split("### Cached clients and keys")[1].split())  # lines joined
    assert _DEFAULT_TTL_FOR_HTTPX_CLIENTS == 3600
    assert "3600 s" in section
    assert litellm.in_memory_llm_clients_cache.max_size_in_memory == 200
    assert "200 entries" in section
    assert EVICTED_LLM_CLIENT_CLOSE_GRACE_SECONDS == 900
    assert "900 s" in section
    assert EVICTED_LLM_CLIENT_CLOSE_MAX_PENDING == 10_000
    assert "10,000 wait" in section
    assert _USERS_KEYS_KEPT == 1024
    assert "1,024 users" in section


async def test_calls_do_not_extend_a_cached_clients_hour(fake: FakeOpenAI) -> None:
    router = await build_router(key_config(fake), SecretsManager(alice_source()))
    cache = litellm.in_memory_llm_clients_cache
    try:
        await router.acompletion(model="gpt", messages=MESSAGES)
        (name,) = [name for name in cache.ttl_dict if f"hashed_api_key={key_digest(version(0))}," in name]
        expires = cache.ttl_dict[name]
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert len(fake.requests) == 2
        assert cache.ttl_dict[name] == expires
    finally:
        await router.aclose()


async def test_a_router_never_closed_leaves_its_keys_clients(fake: FakeOpenAI) -> None:
    router = await build_router(key_config(fake), SecretsManager(alice_source()), follow_changes=False)
    await router.acompletion(model="gpt", messages=MESSAGES)
    await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    litellm_router = router.router
    del router
    gc.collect()
    try:
        assert len(cached_clients(version(0))) == len(cached_clients("canary-alice-old-01")) == 1
    finally:
        discard(litellm_router)  # what aclose() would have done, so no later test counts its callbacks


async def test_a_rotated_azure_ad_token_drops_its_client_and_so_does_closing(fake: FakeOpenAI) -> None:
    """An Azure AD token (short-lived: it rotates hourly) is no ``api_key``: litellm names its
    client by the token's digest in another field, ``azure_ad_token=<sha256>``."""
    source = StaticSource({"azure": {"token": "canary-ad-token-01"}})
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "gpt",
                    "litellm_params": {
                        "model": "azure/gpt-4o",
                        "azure_ad_token": "secret:azure:token",
                        "api_base": "http://fake-azure.localhost",
                        "api_version": "2024-10-21",
                    },
                }
            ],
            "num_retries": 0,
        }
    )
    router = await build_router(config, SecretsManager(source))

    def token_clients(token: str) -> list[str]:
        return [name for name in keys_in_cache_names().split() if f"={key_digest(token)}," in name]

    try:
        # The fake answers OpenAI's paths only (Azure's gets a 404): the client is cached before.
        with pytest.raises(LLMError):
            await router.acompletion(model="gpt", messages=MESSAGES)
        assert fake.requests[-1].authorization == "Bearer canary-ad-token-01"
        assert len(token_clients("canary-ad-token-01")) == 1
        source.set(SecretKey("azure"), {"token": "canary-ad-token-02"})
        assert await router.refresh() == 1
        assert token_clients("canary-ad-token-01") == []
        with pytest.raises(LLMError):
            await router.acompletion(model="gpt", messages=MESSAGES)
        assert fake.requests[-1].authorization == "Bearer canary-ad-token-02"
        assert len(token_clients("canary-ad-token-02")) == 1
    finally:
        await router.aclose()
    assert token_clients("canary-ad-token-02") == []


async def test_a_users_key_rotated_while_litellm_retries_her_call_leaves_no_client(fake: FakeOpenAI) -> None:
    """litellm retries a call with the key it was given: one rotated during the retry's back-off
    (the notice drops its client) gets a client built again, dropped once the call is over."""
    source = alice_source()
    secrets = SecretsManager(source)
    config = RouterConfig.from_dict({"model_list": [deployment(fake)], "num_retries": 1})
    router = await build_router(config, secrets)
    rotations: list[asyncio.Task[int]] = []

    def rotate_on_the_first_request(request: FakeOpenAIRequest) -> HTTPErrorStep | str:
        if not rotations:
            source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
            rotations.append(asyncio.get_running_loop().create_task(secrets.refresh(user_id="alice")))
            return HTTPErrorStep(500, "down", retry_after=0)
        return "ok"

    fake._handler = rotate_on_the_first_request
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert await rotations[0] == 1
        assert [request.authorization for request in fake.requests] == ["Bearer canary-alice-old-01"] * 2
        assert cached_clients("canary-alice-old-01") == []
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert fake.requests[-1].authorization == "Bearer canary-alice-new-02"
    finally:
        await router.aclose()
    assert cached_clients("canary-alice-old-01") == []


async def test_a_call_whose_router_closed_while_litellm_retried_it_leaves_no_client(fake: FakeOpenAI) -> None:
    """litellm's retry goes out even through a Router discarded meanwhile: it builds the key's
    client again after aclose() dropped it, dropped once the call is over."""
    config = RouterConfig.from_dict({"model_list": [deployment(fake)], "num_retries": 1})
    router = await build_router(config, SecretsManager(alice_source()))
    closing: list[asyncio.Task[None]] = []

    def close_on_the_first_request(request: FakeOpenAIRequest) -> HTTPErrorStep | str:
        if not closing:
            closing.append(asyncio.get_running_loop().create_task(router.aclose()))
            return HTTPErrorStep(500, "down", retry_after=0)
        return "ok"

    fake._handler = close_on_the_first_request
    await router.acompletion(model="gpt", messages=MESSAGES)
    await closing[0]
    assert [request.authorization for request in fake.requests] == [f"Bearer {version(0)}"] * 2
    assert cached_clients(version(0)) == []


async def test_dropping_clients_keeps_the_order_in_which_users_keys_were_last_used(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dynamic_agents.llm.router._USERS_KEYS_KEPT", 2)
    users = {name: {"openai": {"api_key": f"canary-{name}-old-01"}} for name in ("alice", "bob", "carol")}
    source = StaticSource({"openai": {"api_key": version(0)}}, users=users)
    secrets = SecretsManager(source)
    router = await build_router(key_config(fake), secrets, follow_changes=False)
    try:
        for user_id in ("alice", "bob", "alice"):  # bob's key is now the one used least recently
            await router.acompletion(model="gpt", messages=MESSAGES, user_id=user_id)
        source.set(SecretKey("openai"), {"api_key": version(1)})
        assert await router.refresh() == 1  # drops the old system key's clients
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="carol")  # pushes bob's out
        source.set(SecretKey("openai", user_id="alice"), {"api_key": "canary-alice-new-02"})
        secrets.invalidate("openai", user_id="alice")
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert cached_clients("canary-alice-old-01") == []  # still remembered: dropped
    finally:
        await router.aclose()


def endpoint_config() -> RouterConfig:
    params = {
        "model": "openai/gpt-4o-mini",
        "api_key": "secret:openai:api_key",
        "api_base": "secret:openai:endpoint",
    }
    return RouterConfig.from_dict(
        {"model_list": [{"model_name": "gpt", "litellm_params": params, "model_info": {"id": "gpt-main"}}]}
    )


def endpoint_clients(api_base: str) -> list[Any]:
    """litellm's cached SDK clients built for this endpoint (whatever the key)."""
    cache = litellm.in_memory_llm_clients_cache
    return [client for name, client in cache.cache_dict.items() if f",api_base={api_base}," in name]


OLD_ENDPOINT, NEW_ENDPOINT = "http://old-endpoint.localhost/v1", "http://new-endpoint.localhost/v1"


async def test_an_endpoint_rotated_alone_drops_the_old_endpoints_clients(fake: FakeOpenAI) -> None:
    """A secret reference resolving to a new ``api_base``, the key unchanged: litellm names its
    clients by the key *and* the endpoint, so the old endpoint's client stays (an hour) unless
    dropped like a rotated key's; so do those a user's key built through the old endpoint."""
    source = StaticSource(
        {"openai": {"api_key": version(0), "endpoint": OLD_ENDPOINT}},
        users={"alice": {"openai": {"api_key": "canary-alice-old-01"}}},
    )
    router = await build_router(endpoint_config(), SecretsManager(source))
    try:
        await router.acompletion(model="gpt", messages=MESSAGES)
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        old_clients = endpoint_clients(OLD_ENDPOINT)
        assert len(old_clients) == 2
        source.set(SecretKey("openai"), {"api_key": version(0), "endpoint": NEW_ENDPOINT})
        assert await router.refresh() == 1
        assert endpoint_clients(OLD_ENDPOINT) == []
        await router.acompletion(model="gpt", messages=MESSAGES)  # the next lookup closes them
        assert fake.requests[-1].url.startswith(NEW_ENDPOINT)
        assert all([await closed(client) for client in old_clients])
        assert len(cached_clients(version(0))) == 1  # the new endpoint's
    finally:
        await router.aclose()


async def test_an_endpoint_another_open_router_still_uses_keeps_its_clients(fake: FakeOpenAI) -> None:
    old = StaticSource({"openai": {"api_key": version(0), "endpoint": OLD_ENDPOINT}})
    rotating = StaticSource({"openai": {"api_key": version(0), "endpoint": OLD_ENDPOINT}})
    staying = await build_router(endpoint_config(), SecretsManager(old))
    router = await build_router(endpoint_config(), SecretsManager(rotating))
    try:
        await router.acompletion(model="gpt", messages=MESSAGES)
        (client,) = endpoint_clients(OLD_ENDPOINT)
        rotating.set(SecretKey("openai"), {"api_key": version(0), "endpoint": NEW_ENDPOINT})
        assert await router.refresh() == 1
        assert endpoint_clients(OLD_ENDPOINT) == [client]  # the other router still sends it there
    finally:
        await router.aclose()
        await staying.aclose()
    assert endpoint_clients(OLD_ENDPOINT) == []


async def test_a_users_key_revoked_in_a_refresh_drops_her_client_before_any_call(fake: FakeOpenAI) -> None:
    # the manager dropped the refused key without a change notice: her client, key included,
    # stayed in litellm's cache until her next call
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(key_config(fake), secrets)
    try:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        (client,) = cached_clients("canary-alice-old-01")

        async def revoked(key: SecretKey) -> None:
            raise IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)

        source.fetch = revoked  # type: ignore[method-assign]
        assert await secrets.refresh(user_id="alice") == 1  # refused: the value is gone, a notice
        assert cached_clients("canary-alice-old-01") == []
        assert await closed(client)
    finally:
        await router.aclose()


class BeforeTheRequest(CustomLogger):
    """Runs ``step`` once, with the id of the deployment the Router picked, in litellm's pre-call
    check: the deployment's params (key included) in hand, its SDK client not built yet. With
    usage-based routing this check awaits the shared store (Redis): a rotation or a withdrawal
    lands right there."""

    def __init__(self, step: Callable[[str], Awaitable[object]]) -> None:
        super().__init__()
        self.steps = [step]

    async def async_pre_call_check(self, deployment: dict[str, Any], parent_otel_span: Any) -> None:
        if self.steps:
            await self.steps.pop()(deployment["model_info"]["id"])


@contextlib.contextmanager
def before_the_request(step: Callable[[str], Awaitable[object]]) -> Iterator[BeforeTheRequest]:
    hook = BeforeTheRequest(step)
    litellm.callbacks.append(hook)
    try:
        yield hook
    finally:
        litellm.callbacks.remove(hook)


async def test_a_key_rotated_while_a_call_builds_its_client_leaves_no_client_of_it(fake: FakeOpenAI) -> None:
    """The rotation drops the old key's clients; a call that picked the deployment before it
    built one again with that key, which nothing dropped: it stayed for litellm's hour, key and
    connection pool included (the router's close did not drop it either)."""
    source = StaticSource({"openai": {"api_key": version(0)}})
    router = await build_router(key_config(fake), SecretsManager(source))

    async def rotate(picked: str) -> None:
        source.set(SecretKey("openai"), {"api_key": version(1)})
        assert await router.refresh() == 1

    try:
        with before_the_request(rotate) as hook:
            await router.acompletion(model="gpt", messages=MESSAGES)
        assert not hook.steps
        assert fake.requests[-1].authorization == f"Bearer {version(0)}"  # in flight: sent as it was
        assert cached_clients(version(0)) == []
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert fake.requests[-1].authorization == f"Bearer {version(1)}"
        assert len(cached_clients(version(1))) == 1
    finally:
        await router.aclose()
    assert not any(version(number) in keys_in_cache_names() for number in range(2))


async def test_a_deployment_withdrawn_while_a_call_builds_its_client_leaves_no_client_of_its_key(
    fake: FakeOpenAI,
) -> None:
    source = StaticSource({"openai": {"api_key": version(0)}, "backup": {"api_key": version(1)}})
    config = RouterConfig.from_dict(
        {"model_list": [deployment(fake), deployment(fake, "backup", "gpt-backup")], "num_retries": 0}
    )
    router = await build_router(config, SecretsManager(source))
    sent = {"gpt-main": version(0), "gpt-backup": version(1)}
    picked: list[str] = []

    async def withdraw(deployment_id: str) -> None:
        picked.append(deployment_id)
        source.remove(SecretKey("openai" if deployment_id == "gpt-main" else "backup"))
        assert await router.refresh() == 1
        assert router.withdrawn_deployment_ids == [deployment_id]

    try:
        with before_the_request(withdraw):
            await router.acompletion(model="gpt", messages=MESSAGES)
        (gone,) = picked
        assert fake.requests[-1].authorization == f"Bearer {sent[gone]}"  # in flight: sent as it was
        assert cached_clients(sent[gone]) == []
    finally:
        await router.aclose()
    assert not any(key in keys_in_cache_names() for key in sent.values())


async def test_a_key_rotated_while_a_synchronous_call_builds_its_client_leaves_no_client_of_it(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on the synchronous path (agno's ``run``), the call in its caller's thread and the
    rotation on the event loop."""
    monkeypatch.setattr(
        BaseOpenAILLM,
        "_get_sync_http_client",
        staticmethod(lambda shared_session=None: httpx.Client(transport=fake.transport)),
    )
    source = StaticSource({"openai": {"api_key": version(0)}})
    router = await build_router(key_config(fake), SecretsManager(source))
    loop = asyncio.get_running_loop()
    steps = [version(1)]

    async def rotate() -> None:
        source.set(SecretKey("openai"), {"api_key": steps.pop()})
        assert await router.refresh() == 1

    class RotateFromTheCallersThread(CustomLogger):
        def pre_call_check(self, deployment: dict[str, Any]) -> None:
            if steps:
                asyncio.run_coroutine_threadsafe(rotate(), loop).result()

    hook = RotateFromTheCallersThread()
    litellm.callbacks.append(hook)
    try:
        await asyncio.to_thread(router.completion, model="gpt", messages=MESSAGES)
        assert not steps
        assert fake.requests[-1].authorization == f"Bearer {version(0)}"  # in flight: sent as it was
        assert cached_clients(version(0)) == []
    finally:
        litellm.callbacks.remove(hook)
        await router.aclose()
    assert not any(version(number) in keys_in_cache_names() for number in range(2))
