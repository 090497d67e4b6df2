from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from dynamic_agents.llm import LLMRouter, RouterConfig, build_router
from dynamic_agents.secrets import SecretsManager, StaticSource
from dynamic_agents.testing import FakeOpenAI

MakeRouter = Callable[..., Awaitable[LLMRouter]]


@pytest.fixture
def secrets() -> SecretsManager:
    return SecretsManager(
        StaticSource(
            {"openai": {"api_key": "sk-system-openai-01"}, "anthropic": {"api_key": "sk-ant-system-0001"}},
            users={"alice": {"openai": {"api_key": "sk-alice-openai-01"}}},
        )
    )


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """The OpenAI API answered in process; litellm's HTTP clients go through it for the test."""
    fake = FakeOpenAI()
    with fake.installed():
        yield fake


@pytest.fixture
async def make_router(secrets: SecretsManager) -> AsyncIterator[MakeRouter]:
    routers: list[LLMRouter] = []

    async def make(config: dict[str, Any], manager: SecretsManager | None = None) -> LLMRouter:
        router = await build_router(RouterConfig.from_dict(config), manager or secrets)
        routers.append(router)
        return router

    yield make
    for router in routers:
        await router.aclose()
