"""Load balancing, fallbacks, tags and rate limits, on deployments answering with mock_response."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from dynamic_agents.exceptions import (
    ConfigurationError,
    LLMRateLimitError,
    LLMRequestError,
    LLMUnavailableError,
)
from dynamic_agents.llm import RouterConfig, build_router
from dynamic_agents.llm.config import DeploymentConfig
from dynamic_agents.secrets import SecretKey, SecretsManager, StaticSource
from tests.llm.conftest import MakeRouter

MESSAGES = [{"role": "user", "content": "hi"}]


def mock(name: str, reply: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {
            "model": "openai/gpt-4o-mini",
            "api_key": "secret:openai:api_key",
            "mock_response": reply,
            **params,
        },
        "model_info": {"id": reply},
    }


def served_by(response: Any) -> str:
    return str(response.choices[0].message.content)


async def test_two_deployments_share_the_load(make_router: MakeRouter) -> None:
    router = await make_router({"model_list": [mock("gpt", "A"), mock("gpt", "B")]})
    counts = Counter(
        [served_by(await router.acompletion(model="gpt", messages=MESSAGES)) for _ in range(200)]
    )
    assert set(counts) == {"A", "B"}
    assert min(counts.values()) >= 40  # >= 20 % each


async def test_fallback_to_another_model_group(make_router: MakeRouter) -> None:
    router = await make_router(
        {
            "model_list": [mock("primary", "litellm.InternalServerError"), mock("backup", "from backup")],
            "fallbacks": {"primary": ["backup"]},
            "num_retries": 0,
        }
    )
    assert served_by(await router.acompletion(model="primary", messages=MESSAGES)) == "from backup"


async def test_context_window_fallback(make_router: MakeRouter) -> None:
    router = await make_router(
        {
            "model_list": [
                mock("small", "litellm.ContextWindowExceededError"),
                mock("large", "long context ok"),
            ],
            "context_window_fallbacks": {"small": ["large"]},
            "num_retries": 0,
        }
    )
    assert served_by(await router.acompletion(model="small", messages=MESSAGES)) == "long context ok"
    without = await make_router(
        {"model_list": [mock("small", "litellm.ContextWindowExceededError")], "num_retries": 0}
    )
    with pytest.raises(LLMRequestError, match="ContextWindowExceeded"):
        await without.acompletion(model="small", messages=MESSAGES)


async def test_tag_routing(make_router: MakeRouter) -> None:
    router = await make_router(
        {
            "model_list": [
                mock("gpt", "paid", tags=["paid"]),
                mock("gpt", "free", tags=["free"]),
                mock("gpt", "default", tags=["default"]),
            ],
            "enable_tag_filtering": True,
        }
    )
    for tags, expected in (
        (["paid"], "paid"),
        (["free"], "free"),
        (None, "default"),
        (["unknown"], "default"),
    ):
        served = {
            served_by(await router.acompletion(model="gpt", messages=MESSAGES, tags=tags)) for _ in range(15)
        }
        assert served == {expected}, tags


async def test_a_rate_limited_deployment_is_skipped(make_router: MakeRouter) -> None:
    router = await make_router(
        {
            "model_list": [mock("gpt", "limited", rpm=1, weight=1000), mock("gpt", "spare", weight=1)],
            "enable_pre_call_checks": True,
        }
    )
    served = [served_by(await router.acompletion(model="gpt", messages=MESSAGES)) for _ in range(5)]
    assert served[0] == "limited"
    assert served[1:] == ["spare"] * 4


async def test_errors_are_typed(make_router: MakeRouter) -> None:
    router = await make_router(
        {
            "model_list": [
                mock("busy", "litellm.RateLimitError"),
                mock("down", "litellm.InternalServerError"),
            ],
            "num_retries": 0,
        }
    )
    with pytest.raises(LLMRateLimitError) as caught:
        await router.acompletion(model="busy", messages=MESSAGES)
    assert caught.value.model == "busy"
    with pytest.raises(LLMUnavailableError):
        await router.acompletion(model="down", messages=MESSAGES)


@pytest.mark.parametrize("strategy", ["least-busy", "latency-based-routing", "usage-based-routing-v2"])
async def test_aclose_unhooks_the_strategy_selector_after_a_call(strategy: str) -> None:
    import litellm

    secrets = SecretsManager(StaticSource({"openai": {"api_key": "sk-selector-leak-0001"}}))
    params = {"model": "openai/gpt-4o-mini", "api_key": "secret:openai:api_key", "mock_response": "ok"}
    config = RouterConfig.from_dict(
        {"model_list": [{"model_name": "gpt", "litellm_params": params}], "routing_strategy": strategy}
    )
    router = await build_router(config, secrets)
    selectors = [
        getattr(router.router, attr, None)
        for attr in router.router._DEFAULT_SELECTOR_ATTR_BY_STRATEGY.values()
    ]
    selector_ids = {id(s) for s in selectors if s is not None}
    assert selector_ids
    await router.acompletion(model="gpt", messages=MESSAGES)  # one call: litellm spreads the callbacks
    await router.aclose()
    lists = (
        "callbacks",
        "success_callback",
        "failure_callback",
        "_async_success_callback",
        "_async_failure_callback",
        "input_callback",
        "service_callback",
    )
    left = {
        name: [type(c).__name__ for c in getattr(litellm, name) if id(c) in selector_ids] for name in lists
    }
    assert not any(left.values()), left


@pytest.mark.parametrize(
    ("params", "settings"),
    [
        ({"max_retries": "many"}, {}),  # litellm's own params model refuses it
        ({"model": "no-such-provider/model"}, {}),  # litellm finds no provider
        ({}, {"no_such_router_keyword": 1}),  # Router() refuses the keyword
    ],
)
async def test_a_config_the_litellm_router_refuses_is_a_configuration_error_without_the_key(
    params: dict[str, Any], settings: dict[str, Any]
) -> None:
    """Not litellm's or pydantic's exception, whose text quoted the deployment's resolved params."""
    from dynamic_agents.exceptions import ConfigurationError

    key = "sk-CANARY-build-0001"
    litellm_params = {"model": "openai/gpt-4o-mini", **params, "api_key": "secret:openai:api_key"}
    config = RouterConfig.from_dict(
        {"model_list": [{"model_name": "gpt", "litellm_params": litellm_params}], "router_settings": settings}
    )
    with pytest.raises(ConfigurationError) as caught:
        await build_router(config, SecretsManager(StaticSource({"openai": {"api_key": key}})))
    assert "gpt" in str(caught.value)
    assert key[:12] not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


async def test_a_stream_closed_early_closes_litellms_stream(
    make_router: MakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """litellm's stream holds the HTTP response until its aclose(): a consumer that stops early
    (a cancelled run, a break) must release it through the router's wrapper."""

    class Stream:
        closed = False

        def __aiter__(self) -> Stream:
            return self

        async def __anext__(self) -> str:
            return "chunk"

        async def aclose(self) -> None:
            self.closed = True

    litellm_stream = Stream()
    router = await make_router({"model_list": [mock("gpt", "A")]})

    async def acompletion(**kwargs: Any) -> Stream:
        return litellm_stream

    monkeypatch.setattr(router.router, "acompletion", acompletion)
    stream = await router.acompletion(model="gpt", messages=MESSAGES, stream=True)
    assert await anext(stream) == "chunk"
    await stream.aclose()
    assert litellm_stream.closed


async def test_a_sync_stream_failing_midway_raises_a_redacted_llm_error(
    make_router: MakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synchronous path (agno's run(stream=True)) translates and redacts like the async one."""
    from dynamic_agents._redaction import REDACTOR
    from dynamic_agents.exceptions import LLMError

    router = await make_router({"model_list": [mock("gpt", "A")]})
    (key,) = {d["litellm_params"]["api_key"] for d in router.router.model_list}
    assert key in REDACTOR

    def chunks() -> Any:
        yield "chunk"
        raise RuntimeError(f"connection reset while streaming for key {key}")

    monkeypatch.setattr(router.router, "completion", lambda **kwargs: chunks())
    stream = router.completion(model="gpt", messages=MESSAGES, stream=True)
    with pytest.raises(LLMError) as caught:
        for _ in stream:
            pass
    assert key not in str(caught.value)
    assert caught.value.__context__ is None


async def test_a_call_does_not_work_out_the_deployment_ids_again(
    make_router: MakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment's generated id hashes its params (credentials masked first): worked out once
    when the router is built, not for every deployment on every call."""
    unnamed = {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o-mini", "mock_response": "hi"}}
    router = await make_router({"model_list": [unnamed, mock("gpt", "B")]})
    worked_out = []
    real = DeploymentConfig.deployment_id

    def counted(config: DeploymentConfig) -> str:
        worked_out.append(config.model_name)
        return real.fget(config)  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(DeploymentConfig, "deployment_id", property(counted))
    for _ in range(3):
        await router.acompletion(model="gpt", messages=MESSAGES)
    assert worked_out == []


@pytest.mark.parametrize("disable_fallbacks", [False, True])
async def test_api_key_and_a_user_with_their_own_key_is_a_configuration_error(
    make_router: MakeRouter, disable_fallbacks: bool
) -> None:
    router = await make_router({"model_list": [mock("gpt", "A")]})
    explicit = "sk-explicit-caller-key-0001"
    with pytest.raises(ConfigurationError) as caught:
        await router.acompletion(
            model="gpt",
            messages=MESSAGES,
            user_id="alice",  # has her own openai key
            api_key=explicit,
            disable_fallbacks=disable_fallbacks,
        )
    message = str(caught.value)
    assert "api_key=" in message
    assert "user_id='alice'" in message
    assert "model='gpt'" in message
    assert explicit not in message
    assert "sk-alice-openai-01" not in message
    # A user without a key of their own: the caller's key is sent, as before.
    response = await router.acompletion(model="gpt", messages=MESSAGES, user_id="bob", api_key=explicit)
    assert served_by(response) == "A"


async def test_a_closed_router_refuses_calls(make_router: MakeRouter) -> None:
    router = await make_router({"model_list": [mock("gpt", "A")]})
    await router.aclose()
    with pytest.raises(LLMUnavailableError, match="the LLM router was closed") as caught:
        await router.acompletion(model="gpt", messages=MESSAGES)
    assert caught.value.model == "gpt"
    with pytest.raises(LLMUnavailableError, match="the LLM router was closed"):
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    with pytest.raises(LLMUnavailableError, match="the LLM router was closed"):
        router.completion(model="gpt", messages=MESSAGES)
    with pytest.raises(LLMUnavailableError, match="the LLM router was closed"):
        await router.refresh()  # it would swap keys into the discarded litellm Router


@pytest.mark.parametrize("tags", ["paid", ["paid", 1], b"paid"])
async def test_tags_that_are_no_list_of_strings_are_refused(make_router: MakeRouter, tags: Any) -> None:
    """A string is a sequence of strings: ``tags="paid"`` was sent as the tags p, a, i, d (and
    routed, or refused by litellm, by those)."""
    from dynamic_agents.llm import agno_model

    router = await make_router(
        {"model_list": [mock("gpt", "paid", tags=["paid"]), mock("gpt", "default", tags=["default"])]}
    )
    with pytest.raises(ConfigurationError, match=r"tags: .*list of strings") as caught:
        await router.acompletion(model="gpt", messages=MESSAGES, tags=tags)
    assert str(caught.value).startswith("acompletion(model='gpt'), tags: ")
    with pytest.raises(ConfigurationError, match=r"^agno_model\(model='gpt'\), tags: .*list of strings"):
        agno_model(router, "gpt", tags=tags)


@pytest.mark.parametrize("metadata", ["team-a", ["team-a"], 5])
async def test_metadata_that_is_no_mapping_is_refused(make_router: MakeRouter, metadata: Any) -> None:
    """It failed inside litellm, as an ``LLMUnavailableError`` (which a caller retries), and with
    tags as a bare ``TypeError``."""
    router = await make_router({"model_list": [mock("gpt", "A")]})
    expected = r"^acompletion\(model='gpt'\), metadata: a mapping is expected"
    with pytest.raises(ConfigurationError, match=expected):
        await router.acompletion(model="gpt", messages=MESSAGES, metadata=metadata)
    with pytest.raises(ConfigurationError, match=expected):
        await router.acompletion(model="gpt", messages=MESSAGES, metadata=metadata, tags=["paid"])
    with pytest.raises(ConfigurationError, match=r"^completion\(model='gpt'\), metadata: a mapping"):
        router.completion(model="gpt", messages=MESSAGES, metadata=metadata)
    response = await router.acompletion(model="gpt", messages=MESSAGES, metadata={"team": "a"})
    assert served_by(response) == "A"


async def test_the_callers_metadata_is_left_as_it_was(make_router: MakeRouter) -> None:
    """The router adds the tags to a call's metadata, and litellm writes its own keys into it:
    both go into a copy, not into the caller's mapping (which a host may reuse for every call)."""
    router = await make_router({"model_list": [mock("gpt", "A", tags=["paid"])]})
    metadata = {"team": "a", "nested": {"x": 1}}
    await router.acompletion(model="gpt", messages=MESSAGES, metadata=metadata, tags=["paid"])
    assert metadata == {"team": "a", "nested": {"x": 1}}
    router.completion(model="gpt", messages=MESSAGES, metadata=metadata)
    assert metadata == {"team": "a", "nested": {"x": 1}}


def keyed(reply: str, provider: str) -> dict[str, Any]:
    """A deployment of group ``gpt`` answering ``reply``, its key from ``provider``'s secret."""
    deployment = mock("gpt", reply, api_key=f"secret:{provider}:api_key")
    deployment["model_info"]["type"] = "local"
    return deployment


def litellm_order(router: Any) -> list[str]:
    return [deployment["model_info"]["id"] for deployment in router.router.model_list]


async def test_a_rotation_or_a_put_back_keeps_the_deployments_order() -> None:
    """litellm's ``upsert_deployment`` takes a deployment out and adds it at the end of its model
    list, where some strategies break ties: ``lar1`` sends a call to the first deployment of its
    type, ``least-busy`` to the first of the least busy. A key rotation of the first deployment
    sent every call of ``lar1`` to the second."""
    source = StaticSource({name: {"api_key": f"sk-{name}-0001"} for name in ("a", "b", "c")})
    config = RouterConfig.from_dict(
        {"model_list": [keyed("A", "a"), keyed("B", "b"), keyed("C", "c")], "routing_strategy": "lar1"}
    )
    router = await build_router(config, SecretsManager(source))
    try:

        async def served() -> set[str]:
            return {served_by(await router.acompletion(model="gpt", messages=MESSAGES)) for _ in range(4)}

        assert await served() == {"A"}
        source.set(SecretKey("a"), {"api_key": "sk-a-0002"})
        assert await router.refresh() == 1
        assert await served() == {"A"}
        assert litellm_order(router) == ["A", "B", "C"]

        source.remove(SecretKey("b"))
        assert await router.refresh() == 1
        assert litellm_order(router) == ["A", "C"]
        source.set(SecretKey("b"), {"api_key": "sk-b-0002"})
        assert await router.refresh() == 1
        assert litellm_order(router) == ["A", "B", "C"]  # put back in its place
        lookup = router.router.model_id_to_deployment_index_map
        assert {name: lookup[name] for name in "ABC"} == {"A": 0, "B": 1, "C": 2}
        assert router.router.model_name_to_deployment_indices == {"gpt": [0, 1, 2]}
        source.remove(SecretKey("a"))
        assert await router.refresh() == 1
        assert await served() == {"B"}
        assert router.router.get_deployment(model_id="C") is not None
    finally:
        await router.aclose()
