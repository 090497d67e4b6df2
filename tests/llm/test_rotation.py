"""Keys on the real SDK path: rotation, per-user keys, 401 refresh, redacted errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import redis.exceptions

from dynamic_agents._redaction import REDACTOR
from dynamic_agents.exceptions import (
    IdentityForbiddenError,
    LLMAuthenticationError,
    LLMRequestError,
    LLMUnavailableError,
    SecretsUnavailableError,
)
from dynamic_agents.llm import LLMRouter, RouterConfig, build_router
from dynamic_agents.secrets import (
    IdentityClient,
    IdentitySource,
    SecretKey,
    SecretsManager,
    SecretSource,
    SecretValue,
    StaticSource,
)
from dynamic_agents.testing import InMemoryIdentityService
from dynamic_agents.testing.openai import FakeOpenAI, FakeOpenAIRequest, HTTPErrorStep

MESSAGES = [{"role": "user", "content": "hi"}]
V1, V2 = "sk-rotation-v1-000001", "sk-rotation-v2-000002"
ALICE = "sk-alice-own-key-0001"


async def no_sleep(seconds: float) -> None:
    return None


SHARED = "shared-openai-key"


@pytest.fixture
def identity() -> InMemoryIdentityService:
    service = InMemoryIdentityService()
    service.add_secret(SHARED, "openai", {"api_key": V1})
    service.add_secret("alice", "openai", {"api_key": ALICE}, user_id="alice")
    return service


def rotate(identity: InMemoryIdentityService, value: str) -> None:
    """Rotate the shared key in Identity (nobody tells the manager)."""
    identity.set_values(identity.find_secret(SHARED, "openai"), {"api_key": value})


@pytest.fixture
def secrets(identity: InMemoryIdentityService) -> SecretsManager:
    client = IdentityClient(
        "http://127.0.0.1:8000", token="service-token", transport=identity.mock_transport(), sleep=no_sleep
    )
    return SecretsManager(IdentitySource(client))


def gpt_config(
    fake: FakeOpenAI, api_key: str = "secret:openai:api_key", *, model_info: dict[str, Any] | None = None
) -> RouterConfig:
    """One deployment, group ``gpt``, on the fake OpenAI server."""
    deployment: dict[str, Any] = {
        "model_name": "gpt",
        "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": api_key, "api_base": fake.api_base},
    }
    if model_info is not None:
        deployment["model_info"] = model_info
    return RouterConfig.from_dict({"model_list": [deployment], "num_retries": 0})


@pytest.fixture
async def router(secrets: SecretsManager, fake: FakeOpenAI) -> AsyncIterator[LLMRouter]:
    config = gpt_config(fake, "os.environ/OPENAI_API_KEY", model_info={"id": "gpt-main"})
    router = await build_router(config, secrets)
    yield router
    await router.aclose()


def keys(fake: FakeOpenAI) -> list[str | None]:
    return [request.authorization for request in fake.requests]


async def test_a_rotated_key_is_used_by_the_next_call(
    router: LLMRouter, identity: InMemoryIdentityService, secrets: SecretsManager, fake: FakeOpenAI
) -> None:
    litellm_router = router.router
    await router.acompletion(model="gpt", messages=MESSAGES)
    rotate(identity, V2)
    await secrets.refresh()  # the manager notices; the router follows its change notice
    await router.acompletion(model="gpt", messages=MESSAGES)
    assert keys(fake) == [f"Bearer {V1}", f"Bearer {V2}"]
    assert router.router is litellm_router
    assert router.deployment_ids == ["gpt-main"]
    assert not any("os.environ" in (key or "") for key in keys(fake))


@pytest.mark.parametrize("api_key", ["secret:openai:api_key", "os.environ/OPENAI_API_KEY"])
async def test_a_key_rotated_in_identity_reaches_the_router_through_the_refresh_ahead(
    identity: InMemoryIdentityService, fake: FakeOpenAI, api_key: str
) -> None:
    """The router reads its keys once, at build: nothing read them again, so the manager never
    counted them in use, never refreshed them ahead of expiry, and the router sent the old key
    until something called refresh() or the provider refused it."""
    now = [0.0]
    client = IdentityClient(
        "http://127.0.0.1:8000", token="service-token", transport=identity.mock_transport(), sleep=no_sleep
    )
    secrets = SecretsManager(IdentitySource(client), ttl=300, refresh_ahead=30, clock=lambda: now[0])
    router = await build_router(gpt_config(fake, api_key), secrets)
    await router.acompletion(model="gpt", messages=MESSAGES)
    rotate(identity, V2)
    now[0] = 280.0  # within refresh_ahead of expiry
    assert await secrets.refresh_due() == 1
    await router.acompletion(model="gpt", messages=MESSAGES)
    assert keys(fake) == [f"Bearer {V1}", f"Bearer {V2}"]
    await router.aclose()  # and the key is no longer kept fresh for it
    rotate(identity, V1)
    now[0] = 560.0
    assert await secrets.refresh_due() == 0


async def test_refresh_swaps_keys_on_demand(
    router: LLMRouter, identity: InMemoryIdentityService, fake: FakeOpenAI
) -> None:
    rotate(identity, V2)
    assert await router.refresh() == 1
    await router.acompletion(model="gpt", messages=MESSAGES)
    assert keys(fake) == [f"Bearer {V2}"]


async def test_a_refresh_that_finds_a_key_deleted_withdraws_its_deployment_naming_it_and_the_field(
    router: LLMRouter, identity: InMemoryIdentityService, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    secret_id = identity.find_secret(SHARED, "openai")
    identity.remove_secret(secret_id)
    with caplog.at_level(logging.INFO, logger="dynamic_agents"):
        assert await router.refresh() == 1
        assert await router.refresh() == 0  # failing the same way: not logged again
    (record,) = [r for r in caplog.records if "withdrew" in r.getMessage()]
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "SecretNotFoundError" in message
    assert "model_list[0] (deployment 'gpt-main' of model 'gpt'), litellm_params.api_key" in message
    assert V1 not in caplog.text
    with pytest.raises(LLMUnavailableError, match="removed, disabled or revoked"):
        await router.acompletion(model="gpt", messages=MESSAGES)  # withdrawn: the old key is not sent
    assert keys(fake) == []

    identity.add_secret(SHARED, "openai", {"api_key": V2})
    with caplog.at_level(logging.INFO, logger="dynamic_agents"):
        assert await router.refresh() == 1
    assert "put deployment 'gpt-main' of model 'gpt' back into the router" in caplog.text
    assert V2 not in caplog.text
    await router.acompletion(model="gpt", messages=MESSAGES)
    assert keys(fake) == [f"Bearer {V2}"]


async def test_users_with_their_own_key_use_it_per_call(router: LLMRouter, fake: FakeOpenAI) -> None:
    await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    await router.acompletion(model="gpt", messages=MESSAGES, user_id="bob")
    await router.acompletion(model="gpt", messages=MESSAGES)
    assert keys(fake) == [f"Bearer {ALICE}", f"Bearer {V1}", f"Bearer {V1}"]


async def test_a_failing_user_key_never_cools_the_shared_deployment(
    router: LLMRouter, fake: FakeOpenAI
) -> None:
    def refuse_alice(request: FakeOpenAIRequest) -> str | HTTPErrorStep:
        if request.authorization == f"Bearer {ALICE}":
            return HTTPErrorStep(401, "Incorrect API key provided")
        return "fine"

    fake._handler = refuse_alice
    for _ in range(3):
        with pytest.raises(LLMAuthenticationError):
            await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    assert await router.cooled_down() == []
    response = await router.acompletion(model="gpt", messages=MESSAGES, user_id="bob")
    assert response.choices[0].message.content == "fine"
    assert keys(fake)[-1] == f"Bearer {V1}"
    assert f"Bearer {ALICE}" in keys(fake)


async def test_a_refused_shared_key_forces_one_refresh_and_one_retry(
    router: LLMRouter, identity: InMemoryIdentityService, fake: FakeOpenAI
) -> None:
    await router.acompletion(model="gpt", messages=MESSAGES)  # cache v1
    rotate(identity, V2)

    def only_v2(request: FakeOpenAIRequest) -> str | HTTPErrorStep:
        return (
            "with v2"
            if request.authorization == f"Bearer {V2}"
            else HTTPErrorStep(401, "Incorrect API key provided")
        )

    fake._handler = only_v2
    response = await router.acompletion(model="gpt", messages=MESSAGES)
    assert response.choices[0].message.content == "with v2"
    assert keys(fake)[1:] == [f"Bearer {V1}", f"Bearer {V2}"]
    assert await router.cooled_down() == []


async def test_provider_errors_that_echo_the_key_are_redacted(router: LLMRouter, fake: FakeOpenAI) -> None:
    fake._handler = lambda request: HTTPErrorStep(400, f"bad request for key {V1}")
    with pytest.raises(LLMRequestError) as caught:
        await router.acompletion(model="gpt", messages=MESSAGES)
    error = caught.value
    assert V1 not in str(error)
    assert "**********" in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None
    assert error.status == 400


@pytest.mark.parametrize("path", ["async", "sync"])
async def test_a_key_passed_per_call_echoed_by_the_provider_is_redacted(
    router: LLMRouter,
    fake: FakeOpenAI,
    path: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``acompletion(api_key=…)`` / ``completion(api_key=…)``: the caller's key is a secret too;
    a provider error quoting it (the sent header, here) must not carry it into the ``LLMError``
    or any log."""
    caplog.set_level(logging.DEBUG)
    per_call = "canary-per-call-echoed-0001"  # not sk-shaped: litellm masks those itself
    fake._handler = lambda request: HTTPErrorStep(400, f"bad request for {request.authorization}")

    async def call() -> Any:
        if path == "async":
            return await router.acompletion(model="gpt", messages=MESSAGES, api_key=per_call)
        return router.completion(model="gpt", messages=MESSAGES, api_key=per_call)

    with pytest.raises(LLMRequestError) as caught:
        await call()
    assert fake.requests[-1].authorization == f"Bearer {per_call}"
    assert "bad request for Bearer" in str(caught.value)  # the provider's error itself is reported
    captured = capfd.readouterr()
    for text in (str(caught.value), repr(caught.value), caplog.text, captured.out, captured.err):
        assert per_call not in text


def test_repr_shows_no_key(router: LLMRouter) -> None:
    assert V1 not in repr(router)
    assert repr(router) == "LLMRouter(1 deployments: gpt)"


async def test_rotation_keeps_the_deployment_model_info(fake: FakeOpenAI) -> None:
    source = StaticSource({"openai": {"api_key": "sk-rot-model-info-v1"}})
    config = gpt_config(fake, model_info={"id": "gpt-main", "base_model": "gpt-4o-mini", "team": "core"})

    def info(router: LLMRouter) -> dict[str, Any]:
        (deployment,) = router.router.get_model_list() or []
        return dict(deployment["model_info"])

    async with await build_router(config, SecretsManager(source)) as router:
        assert info(router)["base_model"] == "gpt-4o-mini"
        source.set(SecretKey("openai"), {"api_key": "sk-rot-model-info-v2"})
        assert await router.refresh() == 1
        after = info(router)
        assert after["id"] == "gpt-main"
        assert after["base_model"] == "gpt-4o-mini"
        assert after["team"] == "core"


async def test_a_401_refresh_fetches_only_the_routers_keys_and_survives_a_revoked_user(
    fake: FakeOpenAI,
) -> None:
    """A 401 refreshes the system's keys of the deployments' providers, not every cached key: a
    user whose access was revoked meanwhile neither aborts the refresh nor is asked for."""
    v1, v2 = "sk-shared-rot-v1-0001", "sk-shared-rot-v2-0002"
    static = StaticSource(
        {"openai": {"api_key": v1}, "unrelated": {"api_key": "sk-unrelated-0001"}},
        users={"bob": {"openai": {"api_key": "sk-bob-own-0001"}}},
    )

    class Revocable(SecretSource):
        def __init__(self) -> None:
            self.revoked: set[str | None] = set()
            self.fetched: list[SecretKey] = []

        async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
            self.fetched.append(key)
            if key.user_id in self.revoked:
                raise IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)
            return await static.fetch(key)

    source = Revocable()
    secrets = SecretsManager(source)
    config = gpt_config(fake, model_info={"id": "gpt-main"})
    async with await build_router(config, secrets) as router:
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="bob")  # bob's key is cached
        await secrets.get("unrelated", "api_key")
        source.revoked.add("bob")  # bob's access to his secret is revoked (403 from now on)
        static.set(SecretKey("openai"), {"api_key": v2})  # the shared key is rotated in Identity
        source.fetched.clear()
        fake._handler = lambda r: "with v2" if r.authorization == f"Bearer {v2}" else HTTPErrorStep(401, "no")
        response = await router.acompletion(model="gpt", messages=MESSAGES)  # 401 -> refresh -> retry
        assert response.choices[0].message.content == "with v2"
        assert source.fetched == [SecretKey("openai")]


async def test_a_401_with_the_routers_key_revoked_is_still_an_llm_error(fake: FakeOpenAI) -> None:
    """The refresh after the 401 is refused (403): the deployment is withdrawn, and the one retry
    finds its group with no deployment left, which the error says (not a SecretsError)."""

    class Refusing(SecretSource):
        refuse = False

        async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
            if self.refuse:
                raise IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)
            return {"api_key": SecretValue("sk-revoked-system-0001")}

    source = Refusing()
    config = gpt_config(fake)
    async with await build_router(config, SecretsManager(source)) as router:
        source.refuse = True
        fake._handler = lambda request: HTTPErrorStep(401, "bad key")
        with pytest.raises(LLMUnavailableError, match="removed, disabled or revoked"):
            await router.acompletion(model="gpt", messages=MESSAGES)
        assert len(fake.requests) == 1  # the revoked key was not sent again


async def test_a_users_key_never_reaches_a_fallback_group_of_another_provider(fake: FakeOpenAI) -> None:
    alice_openai, alice_other = "sk-alice-openai-CANARY-0001", "sk-alice-anthropic-CANARY-0001"
    secrets = SecretsManager(
        StaticSource(
            {
                "openai": {"api_key": "sk-system-openai-0001"},
                "groq": {"api_key": "gsk-system-groq-0001"},
                "anthropic": {"api_key": "sk-system-anthropic-0001"},
            },
            users={"alice": {"openai": {"api_key": alice_openai}, "anthropic": {"api_key": alice_other}}},
        )
    )

    def handler(request: FakeOpenAIRequest) -> str | HTTPErrorStep:
        if request.body.get("model") in {"gpt-4o-mini", "llama-3"}:
            return HTTPErrorStep(500, "down")
        return "from the second fallback"

    fake._handler = handler

    def deployment(group: str, model: str, provider: str) -> dict[str, Any]:
        params = {"model": model, "api_key": f"secret:{provider}:api_key", "api_base": fake.api_base}
        return {"model_name": group, "litellm_params": params}

    config = RouterConfig.from_dict(
        {
            "model_list": [
                deployment("gpt", "openai/gpt-4o-mini", "openai"),
                deployment("llama", "openai/llama-3", "groq"),  # an OpenAI-compatible provider
                deployment("claude", "openai/claude-compatible", "anthropic"),
            ],
            "fallbacks": {"gpt": ["llama", "claude"]},
            "num_retries": 0,
        }
    )
    async with await build_router(config, secrets) as router:
        response = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert response.choices[0].message.content == "from the second fallback"
        sent = [(r.body.get("model"), r.authorization) for r in fake.requests]
        assert sent == [
            ("gpt-4o-mini", f"Bearer {alice_openai}"),
            ("llama-3", "Bearer gsk-system-groq-0001"),  # alice has no key of her own for groq
            ("claude-compatible", f"Bearer {alice_other}"),  # her own key for that provider
        ]


async def test_a_literal_api_key_in_the_config_is_redacted_from_errors(fake: FakeOpenAI) -> None:
    literal = "sk-literal-config-CANARY-42"
    fake._handler = lambda request: HTTPErrorStep(401, f"Incorrect API key provided: {literal}")
    params = {"model": "openai/gpt-4o-mini", "api_key": literal, "api_base": fake.api_base}
    config = RouterConfig.from_dict(
        {"model_list": [{"model_name": "gpt", "litellm_params": params}], "num_retries": 0}
    )
    async with await build_router(config, SecretsManager(StaticSource({}))) as router:
        with pytest.raises(LLMAuthenticationError) as caught:
            await router.acompletion(model="gpt", messages=MESSAGES)
    assert literal not in str(caught.value)
    assert literal in REDACTOR


async def test_a_401_for_a_key_rotated_while_the_call_was_in_flight_retries_with_the_new_key(
    router: LLMRouter, identity: InMemoryIdentityService, secrets: SecretsManager, fake: FakeOpenAI
) -> None:
    """The router already follows the rotation when the old key's 401 comes back: the refresh
    then finds nothing new, yet the call was made with a key the router no longer holds."""
    import asyncio

    import httpx
    import litellm

    arrived, rotated = asyncio.Event(), asyncio.Event()
    sent: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("authorization"))
        if request.headers.get("authorization") == f"Bearer {V2}":
            return fake._handle(request)
        arrived.set()
        await rotated.wait()  # the key rotates while this request is in flight
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    litellm.in_memory_llm_clients_cache.flush_cache()
    litellm.aclient_session = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    call = asyncio.create_task(router.acompletion(model="gpt", messages=MESSAGES))
    await asyncio.wait_for(arrived.wait(), 5)
    rotate(identity, V2)
    await secrets.refresh()  # the router follows the change notice
    rotated.set()
    response = await asyncio.wait_for(call, 5)
    assert response.choices[0].message.content == "ok"
    assert sent == [f"Bearer {V1}", f"Bearer {V2}"]


async def test_a_refused_user_key_forces_one_refresh_of_that_users_keys_and_one_retry(
    router: LLMRouter, identity: InMemoryIdentityService, fake: FakeOpenAI
) -> None:
    """A user who rotated their own key in Identity (nothing pushes that) is not refused until the
    cached old key expires: the 401 refreshes their keys once, and the call is retried once."""
    alice_v2 = "sk-alice-own-key-0002"
    await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")  # her key is cached
    identity.set_values(identity.find_secret("alice", "openai", user_id="alice"), {"api_key": alice_v2})
    fake._handler = lambda r: "hers" if r.authorization == f"Bearer {alice_v2}" else HTTPErrorStep(401, "no")
    response = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    assert response.choices[0].message.content == "hers"
    assert keys(fake) == [f"Bearer {ALICE}", f"Bearer {ALICE}", f"Bearer {alice_v2}"]
    assert await router.cooled_down() == []


async def test_literal_credentials_in_extra_headers_are_redacted_from_errors_and_logs(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A provider error echoing the credential headers the config wrote as literals (a gateway's
    ``api-key``, an ``Authorization: Bearer …``) comes out masked; other headers are left alone."""
    import httpx
    import litellm

    api_key_header, bearer = "hdr-CANARY-api-key-0001", "sk-CANARY-bearer-0002"
    sent: list[httpx.Headers] = []

    async def echo(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers)
        echoed = ", ".join(f"{name}={request.headers.get(name)}" for name in ("api-key", "x-team"))
        return httpx.Response(400, json={"error": {"message": f"bad headers: {echoed} ({bearer})"}})

    litellm.in_memory_llm_clients_cache.flush_cache()
    litellm.aclient_session = httpx.AsyncClient(transport=httpx.MockTransport(echo))
    params = {
        "model": "openai/gpt-4o-mini",
        "api_key": "secret:openai:api_key",
        "api_base": fake.api_base,
        "extra_headers": {
            "api-key": api_key_header,
            "Authorization": f"Bearer {bearer}",
            "X-Team": "team-blue",
        },
    }
    config = RouterConfig.from_dict(
        {"model_list": [{"model_name": "gpt", "litellm_params": params}], "num_retries": 0}
    )
    secrets = SecretsManager(StaticSource({"openai": {"api_key": V1}}))
    caplog.set_level("DEBUG")
    async with await build_router(config, secrets) as router:
        with pytest.raises(LLMRequestError) as caught:
            await router.acompletion(model="gpt", messages=MESSAGES)
    assert sent[0].get("api-key") == api_key_header  # the header did go out, and came back
    assert "x-team=team-blue" in str(caught.value)  # not a credential: shown
    captured = capfd.readouterr()
    for text in (
        str(caught.value),
        repr(caught.value),
        caplog.text,
        captured.out,
        captured.err,
        repr(config),
    ):
        assert api_key_header not in text
        assert bearer not in text


UNREACHABLE_REDIS = "redis://127.0.0.1:1"  # refused at once: the shared cooldown store is down


async def test_a_rotation_while_the_cooldown_store_is_down_still_swaps_the_key(
    identity: InMemoryIdentityService,
    secrets: SecretsManager,
    fake: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Taking the deployment out of cooldown is a Redis call when the config shares cooldowns
    there: Redis down made it raise after the key was written into litellm's Router, so the router
    kept the old params (the old key's clients never dropped), ``refresh()`` raised a bare
    ``redis`` error, and a 401's refresh-and-retry raised it from ``acompletion``."""
    data = gpt_config(fake, model_info={"id": "gpt-main"}).model_dump()
    running = asyncio.all_tasks()
    router = await build_router(RouterConfig.from_dict({**data, "redis_url": UNREACHABLE_REDIS}), secrets)
    try:
        # litellm pings the store from a task nobody awaits. Its ConnectionError, never retrieved, was
        # logged with its traceback by the task's finaliser whenever the GC got to it: once, while
        # pytest parsed this file to report a failure of the test, and formatting that traceback parsed
        # source too, which Python 3.11.7's ast module does not survive (SystemError, "AST constructor
        # recursion depth mismatch"): an INTERNALERROR in place of the failure. Awaited here instead.
        pings = await asyncio.gather(*(asyncio.all_tasks() - running), return_exceptions=True)
        assert redis.exceptions.ConnectionError in {type(ping) for ping in pings}
        await router.acompletion(model="gpt", messages=MESSAGES)
        rotate(identity, V2)

        def only_v2(request: FakeOpenAIRequest) -> str | HTTPErrorStep:
            ok = request.authorization == f"Bearer {V2}"
            return "with v2" if ok else HTTPErrorStep(401, "Incorrect API key provided")

        fake._handler = only_v2
        with caplog.at_level(logging.WARNING, logger="dynamic_agents"):
            response = await router.acompletion(model="gpt", messages=MESSAGES)  # 401, refresh, retry
        assert response.choices[0].message.content == "with v2"
        assert router._deployments["gpt-main"].params["api_key"] == V2
        assert "taking deployment 'gpt-main' out of cooldown failed: ConnectionError" in caplog.text
        rotate(identity, "sk-rotation-v3-000003")
        assert await router.refresh() == 1
    finally:
        await router.aclose()


async def test_a_users_401_after_the_secrets_manager_closed_is_still_an_llm_error(fake: FakeOpenAI) -> None:
    # the manager closed while the call ran (a shutdown closing it first): its refresh() raises,
    # which came out of acompletion as the manager's SecretsUnavailableError
    secrets = SecretsManager(
        StaticSource(
            {"openai": {"api_key": "sk-system-key-00001"}}, users={"alice": {"openai": {"api_key": ALICE}}}
        )
    )

    async def closed_meanwhile(*args: Any, **kwargs: Any) -> int:  # as refresh() after aclose()
        raise SecretsUnavailableError("cannot refresh: the secrets manager was closed")

    async with await build_router(gpt_config(fake), secrets) as router:
        fake._handler = lambda request: HTTPErrorStep(401, "bad key")
        secrets.refresh = closed_meanwhile  # type: ignore[method-assign]
        with pytest.raises(LLMAuthenticationError):
            await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
