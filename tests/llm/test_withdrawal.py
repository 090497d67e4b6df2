"""A deployment whose key is gone from Identity (deleted, disabled, access revoked) is withdrawn
from the Router until its key resolves again; an outage leaves it as it was."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dynamic_agents.exceptions import LLMUnavailableError
from dynamic_agents.llm import LLMRouter, RouterConfig, _litellm, build_router
from dynamic_agents.secrets import IdentityClient, IdentitySource, SecretKey, SecretsManager, StaticSource
from dynamic_agents.testing import InMemoryIdentityService
from dynamic_agents.testing.openai import FakeOpenAI, HTTPErrorStep

MESSAGES = [{"role": "user", "content": "hi"}]
PRIMARY = "sk-primary-CANARY-000001"
PRIMARY_V2 = "sk-primary-rotated-000002"
BACKUP = "sk-backup-openai-000003"
OTHER = "sk-other-group-000004"


async def no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
def identity() -> InMemoryIdentityService:
    service = InMemoryIdentityService()
    service.add_secret("primary", "openai", {"api_key": PRIMARY})
    service.add_secret("backup", "openai", {"api_key": BACKUP})
    service.add_secret("other", "openai", {"api_key": OTHER})
    return service


@pytest.fixture
def client(identity: InMemoryIdentityService) -> IdentityClient:
    """The operator's client: PATCHes and DELETEs go through the service's HTTP contract."""
    return IdentityClient(
        "http://127.0.0.1:8000", token="service-token", transport=identity.mock_transport(), sleep=no_sleep
    )


@pytest.fixture
def secrets(identity: InMemoryIdentityService) -> SecretsManager:
    client = IdentityClient(
        "http://127.0.0.1:8000", token="service-token", transport=identity.mock_transport(), sleep=no_sleep
    )
    return SecretsManager(IdentitySource(client))


def deployment(fake: FakeOpenAI, group: str, deployment_id: str, secret: str) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": "openai/gpt-4o-mini",
            "api_key": f"secret:openai/{secret}:api_key",
            "api_base": fake.api_base,
        },
        "model_info": {"id": deployment_id},
    }


def two_deployments(fake: FakeOpenAI) -> RouterConfig:
    """Group ``gpt``: ``gpt-primary`` (secret ``primary``) and ``gpt-backup`` (secret ``backup``)."""
    return RouterConfig.from_dict(
        {
            "model_list": [
                deployment(fake, "gpt", "gpt-primary", "primary"),
                deployment(fake, "gpt", "gpt-backup", "backup"),
            ],
            "num_retries": 0,
        }
    )


def one_deployment(fake: FakeOpenAI, **settings: Any) -> RouterConfig:
    """Group ``gpt``: ``gpt-primary`` alone; group ``other``: ``other-main`` (secret ``other``)."""
    return RouterConfig.from_dict(
        {
            "model_list": [
                deployment(fake, "gpt", "gpt-primary", "primary"),
                deployment(fake, "other", "other-main", "other"),
            ],
            "num_retries": 0,
            **settings,
        }
    )


@pytest.fixture
async def router(secrets: SecretsManager, fake: FakeOpenAI) -> AsyncIterator[LLMRouter]:
    router = await build_router(two_deployments(fake), secrets)
    yield router
    await router.aclose()


def keys(fake: FakeOpenAI) -> list[str | None]:
    return [request.authorization for request in fake.requests]


GoneWay = Callable[[InMemoryIdentityService, IdentityClient, str], Awaitable[None]]


async def disable(identity: InMemoryIdentityService, client: IdentityClient, name: str) -> None:
    await client.update_secret(identity.find_secret(name, "openai"), status="disabled")


async def delete(identity: InMemoryIdentityService, client: IdentityClient, name: str) -> None:
    await client.delete_secret(identity.find_secret(name, "openai"))


async def forbid(identity: InMemoryIdentityService, client: IdentityClient, name: str) -> None:
    secret_id = identity.find_secret(name, "openai")
    identity.fail_next(403, times=None, method="GET", path=f"/api/v1/secrets/{secret_id}/values")


GONE_WAYS = [
    pytest.param(disable, id="disabled"),
    pytest.param(delete, id="deleted"),
    pytest.param(forbid, id="forbidden"),
]


@pytest.mark.parametrize("gone", GONE_WAYS)
async def test_a_deployment_whose_key_is_gone_is_withdrawn_and_the_group_uses_the_others(
    router: LLMRouter,
    identity: InMemoryIdentityService,
    client: IdentityClient,
    fake: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    gone: GoneWay,
) -> None:
    await gone(identity, client, "primary")
    with caplog.at_level(logging.INFO, logger="dynamic_agents"):
        assert await router.refresh() == 1
        assert await router.refresh() == 0  # still withdrawn: nothing changed, not logged again
    assert router.withdrawn_deployment_ids == ["gpt-primary"]
    assert router.deployment_ids == ["gpt-primary", "gpt-backup"]
    assert "gpt-primary" not in router.router.get_model_ids()
    withdrawals = [r for r in caplog.records if "withdrew" in r.getMessage()]
    assert [r.levelno for r in withdrawals] == [logging.WARNING]
    message = withdrawals[0].getMessage()
    assert "deployment 'gpt-primary' of model 'gpt'" in message
    assert "removed, disabled or revoked" in message
    assert PRIMARY not in caplog.text

    fake.requests.clear()
    for _ in range(8):  # simple-shuffle: the primary would have had about half of them
        response = await router.acompletion(model="gpt", messages=MESSAGES)
        assert response._hidden_params["model_id"] == "gpt-backup"
    assert set(keys(fake)) == {f"Bearer {BACKUP}"}


async def test_an_outage_leaves_the_deployment_with_its_key(
    identity: InMemoryIdentityService, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """Identity that cannot answer is no answer: the key is kept (stale if error), not withdrawn,
    even once the manager has nothing usable cached (``stale_grace=0``)."""
    client = IdentityClient(
        "http://127.0.0.1:8000", token="service-token", transport=identity.mock_transport(), sleep=no_sleep
    )
    now = [0.0]
    secrets = SecretsManager(IdentitySource(client), ttl=300, stale_grace=0, clock=lambda: now[0])
    async with await build_router(one_deployment(fake), secrets) as router:
        identity.down = True
        now[0] = 400.0  # past ttl, no grace: nothing usable cached
        with caplog.at_level(logging.INFO, logger="dynamic_agents"):
            assert await router.refresh() == 0
        assert "left as they were: SecretsUnavailableError" in caplog.text
        assert router.withdrawn_deployment_ids == []
        assert sorted(router.router.get_model_ids()) == ["gpt-primary", "other-main"]
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert keys(fake) == [f"Bearer {PRIMARY}"]


async def test_a_change_notice_withdraws_and_a_key_that_resolves_again_is_put_back(
    secrets: SecretsManager,
    identity: InMemoryIdentityService,
    client: IdentityClient,
    fake: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with await build_router(one_deployment(fake), secrets) as router:
        await disable(identity, client, "primary")
        await secrets.refresh()  # the manager notices; the router follows its change notice
        assert router.withdrawn_deployment_ids == ["gpt-primary"]

        secret_id = identity.find_secret("primary", "openai")
        await client.update_secret(secret_id, status="active", values={"api_key": PRIMARY_V2})
        with caplog.at_level(logging.INFO, logger="dynamic_agents"):
            await secrets.refresh()
        assert router.withdrawn_deployment_ids == []
        (restored,) = [r for r in caplog.records if "back into the router" in r.getMessage()]
        assert restored.levelno == logging.INFO
        assert "deployment 'gpt-primary' of model 'gpt'" in restored.getMessage()
        assert PRIMARY_V2 not in caplog.text

        fake.requests.clear()
        response = await router.acompletion(model="gpt", messages=MESSAGES)
        assert response._hidden_params["model_id"] == "gpt-primary"
        assert keys(fake) == [f"Bearer {PRIMARY_V2}"]


async def test_refresh_counts_a_deployment_put_back_with_its_old_key(
    secrets: SecretsManager, identity: InMemoryIdentityService, client: IdentityClient, fake: FakeOpenAI
) -> None:
    """Disabled, then enabled again as it was: the same key, put back all the same."""
    async with await build_router(one_deployment(fake), secrets) as router:
        secret_id = identity.find_secret("primary", "openai")
        await client.update_secret(secret_id, status="disabled")
        assert await router.refresh() == 1
        await client.update_secret(secret_id, status="active")
        assert await router.refresh() == 1
        assert router.withdrawn_deployment_ids == []
        fake.requests.clear()
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert keys(fake) == [f"Bearer {PRIMARY}"]


async def test_a_group_whose_deployments_are_all_withdrawn_raises_a_clear_error(
    secrets: SecretsManager, identity: InMemoryIdentityService, client: IdentityClient, fake: FakeOpenAI
) -> None:
    async with await build_router(one_deployment(fake), secrets) as router:
        await delete(identity, client, "primary")
        await router.refresh()
        fake.requests.clear()
        with pytest.raises(LLMUnavailableError) as raised:
            await router.acompletion(model="gpt", messages=MESSAGES)
        message = str(raised.value)
        assert "model 'gpt'" in message
        assert "deployment 'gpt-primary' of model 'gpt'" in message
        assert "removed, disabled or revoked in the secrets service" in message
        assert PRIMARY not in message
        assert raised.value.model == "gpt"
        with pytest.raises(LLMUnavailableError, match="removed, disabled or revoked"):
            router.completion(model="gpt", messages=MESSAGES)
        assert fake.requests == []
        # the other group is untouched
        response = await router.acompletion(model="other", messages=MESSAGES)
        assert response._hidden_params["model_id"] == "other-main"


async def test_a_withdrawn_group_falls_back_to_its_fallback_groups(
    secrets: SecretsManager, identity: InMemoryIdentityService, client: IdentityClient, fake: FakeOpenAI
) -> None:
    async with await build_router(one_deployment(fake, fallbacks=[{"gpt": ["other"]}]), secrets) as router:
        await disable(identity, client, "primary")
        await router.refresh()
        fake.requests.clear()
        response = await router.acompletion(model="gpt", messages=MESSAGES)
        assert response._hidden_params["model_id"] == "other-main"
        assert keys(fake) == [f"Bearer {OTHER}"]


async def test_the_withdrawn_keys_clients_are_dropped(
    router: LLMRouter, identity: InMemoryIdentityService, client: IdentityClient, fake: FakeOpenAI
) -> None:
    for _ in range(12):  # both deployments' keys get a cached client
        await router.acompletion(model="gpt", messages=MESSAGES)
    primary, backup = _litellm.key_digest(PRIMARY), _litellm.key_digest(BACKUP)
    cached = " ".join(str(name) for name in _litellm.litellm.in_memory_llm_clients_cache.cache_dict)
    assert primary in cached
    assert backup in cached
    await disable(identity, client, "primary")
    await router.refresh()
    cached = " ".join(str(name) for name in _litellm.litellm.in_memory_llm_clients_cache.cache_dict)
    assert primary not in cached
    assert backup in cached


async def test_aclose_after_a_withdrawal_removes_every_cost_map_entry_once(
    secrets: SecretsManager, identity: InMemoryIdentityService, client: IdentityClient, fake: FakeOpenAI
) -> None:
    router = await build_router(two_deployments(fake), secrets)
    assert {"gpt-primary", "gpt-backup"} <= _litellm.litellm.model_cost.keys()
    await disable(identity, client, "primary")
    await router.refresh()
    # a call in flight may still be priced by the withdrawn deployment's entry: it stays until aclose
    assert {"gpt-primary", "gpt-backup"} <= _litellm.litellm.model_cost.keys()
    assert await router.cooled_down() == []
    await router.aclose()
    assert not {"gpt-primary", "gpt-backup"} & _litellm.litellm.model_cost.keys()
    await client.update_secret(identity.find_secret("primary", "openai"), status="active")
    await secrets.refresh()  # a change notice after aclose puts nothing back
    assert not {"gpt-primary", "gpt-backup"} & _litellm.litellm.model_cost.keys()


async def test_a_withdrawn_groups_failing_fallbacks_are_named_in_its_error(
    secrets: SecretsManager, identity: InMemoryIdentityService, client: IdentityClient, fake: FakeOpenAI
) -> None:
    async with await build_router(one_deployment(fake, fallbacks=[{"gpt": ["other"]}]), secrets) as router:
        await disable(identity, client, "primary")
        await router.refresh()
        fake._handler = lambda request: HTTPErrorStep(503, "overloaded")
        with pytest.raises(LLMUnavailableError) as raised:
            await router.acompletion(model="gpt", messages=MESSAGES)
        message = str(raised.value)
        assert "removed, disabled or revoked in the secrets service" in message
        assert "its fallbacks ['other'] failed too" in message
        assert raised.value.status is None  # not litellm's 400 ("no healthy deployments")
        assert keys(fake) == [f"Bearer {OTHER}"]


async def test_a_401_from_a_revoked_key_is_retried_on_the_groups_other_deployment(
    router: LLMRouter, identity: InMemoryIdentityService, fake: FakeOpenAI
) -> None:
    """The provider refuses the primary key and Identity revokes it (nobody told the manager): the
    refresh after the 401 withdraws it, and the one retry goes to the backup."""
    fake._handler = lambda request: (
        HTTPErrorStep(401, "revoked") if request.authorization == f"Bearer {PRIMARY}" else "ok"
    )
    secret_id = identity.find_secret("primary", "openai")
    identity.fail_next(403, times=None, method="GET", path=f"/api/v1/secrets/{secret_id}/values")
    for _ in range(64):  # simple-shuffle: until a call picks the primary (each does with p = 1/2)
        response = await router.acompletion(model="gpt", messages=MESSAGES)
        assert response.choices[0].message.content == "ok"
        if router.withdrawn_deployment_ids:
            break
    assert router.withdrawn_deployment_ids == ["gpt-primary"]
    assert keys(fake).count(f"Bearer {PRIMARY}") == 1
    assert keys(fake)[-1] == f"Bearer {BACKUP}"


async def test_a_withdrawal_litellm_does_not_carry_out_is_logged_and_tried_again(
    secrets: SecretsManager,
    identity: InMemoryIdentityService,
    client: IdentityClient,
    fake: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Router.delete_deployment`` swallows its own failures (it returns None): a deployment it
    left in place still sends the key, and must not be reported withdrawn."""
    async with await build_router(one_deployment(fake), secrets) as router:
        monkeypatch.setattr(router.router, "delete_deployment", lambda id: None)
        await disable(identity, client, "primary")
        with caplog.at_level(logging.INFO, logger="dynamic_agents"):
            await router.refresh()
        assert router.withdrawn_deployment_ids == []
        assert "withdrawing deployment 'gpt-primary' of model 'gpt' failed" in caplog.text
        assert PRIMARY not in caplog.text
        monkeypatch.undo()
        await router.refresh()  # asked again: withdrawn now
        assert router.withdrawn_deployment_ids == ["gpt-primary"]


async def test_a_stream_under_way_when_its_key_is_withdrawn_is_read_to_its_end(
    secrets: SecretsManager, identity: InMemoryIdentityService, client: IdentityClient, fake: FakeOpenAI
) -> None:
    """A call under way finishes as it is, priced by the withdrawn deployment's cost-map entry,
    which stays until ``aclose()``; the next call is refused without sending the key."""
    fake._handler = lambda request: "streamed while withdrawn"
    router = await build_router(one_deployment(fake), secrets)
    stream = await router.acompletion(model="gpt", messages=MESSAGES, stream=True)
    await disable(identity, client, "primary")
    assert await router.refresh() == 1
    assert "gpt-primary" in _litellm.litellm.model_cost
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == "streamed while withdrawn"
    with pytest.raises(LLMUnavailableError):
        await router.acompletion(model="gpt", messages=MESSAGES)
    assert keys(fake) == [f"Bearer {PRIMARY}"]
    await router.aclose()
    assert "gpt-primary" not in _litellm.litellm.model_cost


ENV_KEY = "sk-from-the-environment-000005"


def env_deployment(fake: FakeOpenAI, api_base: str) -> RouterConfig:
    """Group ``gpt``: ``gpt-env``, its key in an environment variable no secret is mapped to."""
    params = {"model": "openai/gpt-4o-mini", "api_key": "os.environ/DA_TEST_LLM_KEY", "api_base": api_base}
    return RouterConfig.from_dict(
        {
            "model_list": [{"model_name": "gpt", "litellm_params": params, "model_info": {"id": "gpt-env"}}],
            "num_retries": 0,
        }
    )


async def test_an_environment_variable_unset_after_the_build_keeps_its_deployment(
    secrets: SecretsManager,
    fake: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unmapped ``os.environ/`` variable is the process's, read at build: a host that takes it
    out of its environment once started (so no subprocess inherits it) has not revoked the key.
    The next refresh withdrew the deployment, its group raising "credentials removed, disabled
    or revoked in the secrets service"."""
    monkeypatch.setenv("DA_TEST_LLM_KEY", ENV_KEY)
    async with await build_router(env_deployment(fake, fake.api_base), secrets) as router:
        monkeypatch.delenv("DA_TEST_LLM_KEY")
        with caplog.at_level(logging.INFO, logger="dynamic_agents"):
            assert await router.refresh() == 0
        assert router.withdrawn_deployment_ids == []
        assert caplog.records == []
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert keys(fake) == [f"Bearer {ENV_KEY}"]


async def test_a_rotation_of_a_deployment_whose_environment_variable_was_unset_lands(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = StaticSource({"endpoint": {"url": "http://old-endpoint.localhost/v1"}})
    monkeypatch.setenv("DA_TEST_LLM_KEY", ENV_KEY)
    config = env_deployment(fake, "secret:endpoint:url")
    async with await build_router(config, SecretsManager(source)) as router:
        monkeypatch.delenv("DA_TEST_LLM_KEY")
        source.set(SecretKey("endpoint"), {"url": "http://new-endpoint.localhost/v1"})
        assert await router.refresh() == 1
        assert router.withdrawn_deployment_ids == []
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert fake.requests[-1].url.startswith("http://new-endpoint.localhost/v1")
        assert keys(fake) == [f"Bearer {ENV_KEY}"]


async def test_an_environment_variable_set_anew_in_the_process_is_read_at_the_refresh(
    secrets: SecretsManager, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DA_TEST_LLM_KEY", ENV_KEY)
    async with await build_router(env_deployment(fake, fake.api_base), secrets) as router:
        monkeypatch.setenv("DA_TEST_LLM_KEY", "sk-from-the-environment-000006")
        assert await router.refresh() == 1
        monkeypatch.delenv("DA_TEST_LLM_KEY")
        assert await router.refresh() == 0  # the value read last is kept
        await router.acompletion(model="gpt", messages=MESSAGES)
        assert keys(fake) == ["Bearer sk-from-the-environment-000006"]
