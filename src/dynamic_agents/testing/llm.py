"""An ``LLMRouter`` whose deployments answer with litellm's ``mock_response``: no key, no network.

    router = await mock_llm_router({"gpt-4o": "Hello!", "claude": ["A", "B"]})

Each model group gets one deployment per reply given (so ``["A", "B"]`` load-balances between two);
a reply may also be one of litellm's error strings (``"litellm.RateLimitError"``,
``"litellm.InternalServerError"``, ``"litellm.ContextWindowExceededError"``). Other
``RouterConfig`` fields go in ``**settings`` (``fallbacks=…``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamic_agents.llm import LLMRouter, RouterConfig, build_router
from dynamic_agents.secrets import SecretsManager, StaticSource

__all__ = ["mock_llm_router", "mock_router_config"]


def mock_router_config(replies: Mapping[str, str | Sequence[str]], **settings: Any) -> RouterConfig:
    model_list = []
    for model_name, answer in replies.items():
        for index, reply in enumerate([answer] if isinstance(answer, str) else list(answer)):
            model_list.append(
                {
                    "model_name": model_name,
                    "litellm_params": {
                        "model": "openai/mock",
                        "api_key": "secret:mock:api_key",
                        "mock_response": reply,
                    },
                    "model_info": {"id": f"{model_name}-{index}"},
                }
            )
    return RouterConfig.from_dict({"model_list": model_list, **settings})


async def mock_llm_router(
    replies: Mapping[str, str | Sequence[str]],
    *,
    secrets: SecretsManager | None = None,
    **settings: Any,
) -> LLMRouter:
    """Build an ``LLMRouter`` from :func:`mock_router_config` (close it with ``aclose()``)."""
    manager = secrets or SecretsManager(StaticSource({"mock": {"api_key": "mock-key-not-secret"}}))
    return await build_router(mock_router_config(replies, **settings), manager)
