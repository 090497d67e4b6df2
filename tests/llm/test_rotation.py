"""Keys on the real SDK path: rotation, per-user keys, 401 refresh, redacted errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dynamic_agents.exceptions import LLMAuthenticationError, LLMRequestError
from dynamic_agents.llm import LLMRouter, RouterConfig, build_router
from dynamic_agents.secrets import IdentityClient, IdentitySource, SecretsManager
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


@pytest.fixture
async def router(secrets: SecretsManager, fake: FakeOpenAI) -> AsyncIterator[LLMRouter]:
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "gpt",
                    "litellm_params": {
                        "model": "openai/gpt-4o-mini",
                        "api_key": "os.environ/OPENAI_API_KEY",
                        "api_base": fake.api_base,
                    },
                    "model_info": {"id": "gpt-main"},
                }
            ],
            "num_retries": 0,
        }
    )
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


async def test_refresh_swaps_keys_on_demand(
    router: LLMRouter, identity: InMemoryIdentityService, fake: FakeOpenAI
) -> None:
    rotate(identity, V2)
    assert await router.refresh() == 1
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


def test_repr_shows_no_key(router: LLMRouter) -> None:
    assert V1 not in repr(router)
    assert repr(router) == "LLMRouter(1 deployments: gpt)"
