"""agno agents and teams whose model calls go through the LLMRouter (litellm's real SDK path)."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from agno.agent import Agent
from agno.run.base import RunStatus
from agno.team import Team

from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.llm import LLMRouter, RouterConfig, agno_model, build_router
from dynamic_agents.secrets import SecretsManager, StaticSource
from dynamic_agents.testing import FakeOpenAI, HTTPErrorStep, ToolCall

SYSTEM_KEY = "canary-agno-system-000001"  # not sk-shaped: litellm's own masking would hide an sk- key
ALICE_KEY = "sk-agno-alice-0000001"


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


@pytest.fixture
async def router(fake: FakeOpenAI) -> AsyncIterator[LLMRouter]:
    secrets = SecretsManager(
        StaticSource({"openai": {"api_key": SYSTEM_KEY}}, users={"alice": {"openai": {"api_key": ALICE_KEY}}})
    )
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "gpt",
                    "litellm_params": {
                        "model": "openai/gpt-4o-mini",
                        "api_key": "secret:openai:api_key",
                        "api_base": fake.api_base,
                    },
                }
            ],
            "num_retries": 0,
        }
    )
    router = await build_router(config, secrets)
    yield router
    await router.aclose()


@pytest.fixture
def litellm_calls(router: LLMRouter, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call that reaches the litellm Router, with its keyword arguments."""
    calls: list[dict[str, Any]] = []
    original = router.router.acompletion

    async def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return await original(**kwargs)

    monkeypatch.setattr(router.router, "acompletion", spy)
    return calls


def script(fake: FakeOpenAI, *steps: Any) -> None:
    fake._script.extend(steps)
    fake._scripted = True


async def test_an_agent_with_a_tool_runs_through_the_router(
    router: LLMRouter, fake: FakeOpenAI, litellm_calls: list[dict[str, Any]]
) -> None:
    script(fake, ToolCall("get_weather", {"city": "Paris"}), "It is sunny in Paris.")
    agent = Agent(
        model=agno_model(router, "gpt", temperature=0.2, max_tokens=50),
        tools=[get_weather],
        telemetry=False,
    )
    output = await agent.arun("Weather in Paris?", session_id=f"s-{uuid.uuid4()}")
    assert output.status == RunStatus.completed
    assert output.content == "It is sunny in Paris."
    assert [tool.result for tool in output.tools or []] == ["Sunny in Paris"]
    assert len(fake.requests) == len(litellm_calls) == 2  # every model call went through the Router
    assert fake.requests[0].tool_names == ["get_weather"]
    assert fake.requests[1].messages[-1]["role"] == "tool"
    assert (fake.requests[0].body["temperature"], fake.requests[0].body["max_tokens"]) == (0.2, 50)
    assert all("_skip_mcp_handler" not in call for call in litellm_calls)
    assert "mcp" in sys.modules  # litellm's tool path imported it: the declared dependency works


async def test_a_team_of_two_agents_runs_through_the_router(
    router: LLMRouter, fake: FakeOpenAI, litellm_calls: list[dict[str, Any]]
) -> None:
    script(
        fake,
        ToolCall("delegate_task_to_member", {"member_id": "researcher", "task": "find facts"}),
        "Facts: the sky is blue.",
        "The team says: the sky is blue.",
    )
    researcher = Agent(id="researcher", name="Researcher", model=agno_model(router, "gpt"), telemetry=False)
    writer = Agent(id="writer", name="Writer", model=agno_model(router, "gpt"), telemetry=False)
    team = Team(
        members=[researcher, writer], mode="coordinate", model=agno_model(router, "gpt"), telemetry=False
    )
    output = await team.arun("What colour is the sky?", session_id=f"t-{uuid.uuid4()}")
    assert output.status == RunStatus.completed
    assert output.content == "The team says: the sky is blue."
    assert [r.content for r in output.member_responses] == ["Facts: the sky is blue."]
    assert len(fake.requests) == len(litellm_calls) == 3
    assert all("_skip_mcp_handler" not in call for call in litellm_calls)


async def test_an_agent_for_a_user_uses_their_key(router: LLMRouter, fake: FakeOpenAI) -> None:
    for user in ("alice", "bob"):
        agent = Agent(model=agno_model(router, "gpt", user_id=user), telemetry=False)
        await agent.arun("hi", session_id=f"u-{user}")
    assert [r.authorization for r in fake.requests] == [f"Bearer {ALICE_KEY}", f"Bearer {SYSTEM_KEY}"]


async def test_tags_set_on_an_agent_reach_tag_routing() -> None:
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "gpt",
                    "litellm_params": {
                        "model": "openai/m",
                        "api_key": "k-000000",
                        "mock_response": tag,
                        "tags": [tag],
                    },
                }
                for tag in ("paid", "free")
            ],
            "enable_tag_filtering": True,
        }
    )
    router = await build_router(config, SecretsManager(StaticSource()))
    try:
        for tag in ("paid", "free"):
            agent = Agent(model=agno_model(router, "gpt", tags=[tag]), telemetry=False)
            answers = {(await agent.arun("hi", session_id=f"{tag}-{n}")).content for n in range(8)}
            assert answers == {tag}
    finally:
        await router.aclose()


def test_unknown_model_groups_are_refused(router: LLMRouter) -> None:
    from dynamic_agents.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="not a model group"):
        agno_model(router, "gpt-5")


@pytest.fixture
def everything_at_debug() -> Iterator[None]:
    names = [
        "dynamic_agents",
        "agno",
        "agno-team",
        "agno-workflow",
        "LiteLLM",
        "LiteLLM Router",
        "LiteLLM Proxy",
        "httpx",
    ]
    handler = logging.StreamHandler(sys.stderr)
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    yield
    for logger, level in saved:
        logger.setLevel(level)
        logger.removeHandler(handler)


async def test_a_provider_error_echoing_the_key_leaks_nowhere(
    router: LLMRouter,
    fake: FakeOpenAI,
    everything_at_debug: None,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake._handler = lambda request: HTTPErrorStep(401, f"Incorrect API key provided: {SYSTEM_KEY}")
    agent = Agent(model=agno_model(router, "gpt"), telemetry=False)
    output = await agent.arun("hi", session_id="canary")
    errors: list[BaseException] = []
    try:
        await router.acompletion(model="gpt", messages=[{"role": "user", "content": "hi"}])
    except Exception as error:
        errors.append(error)
    assert output.status == RunStatus.error
    assert len(errors) == 1
    captured = capfd.readouterr()
    texts = [
        captured.out,
        captured.err,
        caplog.text,
        str(output.content),
        repr(output),
        repr(router),
        repr(agent.model),
    ]
    texts += [record.getMessage() for record in caplog.records]
    for error in errors:
        texts += [str(error), repr(error)]
    assert any("Incorrect API key provided" in text for text in texts)  # the error itself is reported
    for text in texts:
        assert SYSTEM_KEY not in text


def test_agno_and_litellm_loggers_mask_secret_values(caplog: pytest.LogCaptureFixture) -> None:
    from dynamic_agents.llm import _litellm
    from dynamic_agents.llm import agno as agno_binding
    from dynamic_agents.secrets import SecretValue

    secret = SecretValue("canary-logged-by-a-library-01")
    for name in (*agno_binding.AGNO_LOGGERS, *_litellm.LITELLM_LOGGERS):
        logger = logging.getLogger(name)
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger.addHandler(handler)
        try:
            logger.error("failed with %s", secret.reveal())
        finally:
            logger.removeHandler(handler)
        assert [r.getMessage() for r in records] == ["failed with **********"], name


async def test_a_users_agent_on_the_synchronous_path_is_refused_not_sent_with_the_system_key(
    router: LLMRouter, fake: FakeOpenAI
) -> None:
    # agno's Agent.run calls completion(), which cannot read a user's key: alice's run went out on
    # the system's key, billed to it, whatever her own
    client = agno_model(router, "gpt", user_id="alice").client
    with pytest.raises(ConfigurationError, match=r"users' own keys.*acompletion \(agno: arun\)"):
        client.completion(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert fake.requests == []


def test_a_user_on_the_synchronous_path_of_a_group_without_users_keys_is_sent() -> None:
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {"model": "openai/m", "api_key": "k-000000", "mock_response": "ok"},
                }
            ]
        }
    )

    async def build() -> LLMRouter:
        return await build_router(config, SecretsManager(StaticSource({})))

    router = asyncio.run(build())
    try:
        client = agno_model(router, "m", user_id="alice").client
        response = client.completion(model="m", messages=[{"role": "user", "content": "hi"}])
        assert response.choices[0].message.content == "ok"
    finally:
        asyncio.run(router.aclose())
