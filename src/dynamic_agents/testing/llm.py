"""An ``LLMRouter`` whose deployments answer with litellm's ``mock_response``: no key, no network.

    router = await mock_llm_router({"gpt-4o": "Hello!", "claude": ["A", "B"]})

Each model group gets one deployment per reply given (so ``["A", "B"]`` load-balances between two);
a reply may also be one of litellm's error strings (``"litellm.RateLimitError"``,
``"litellm.InternalServerError"``, ``"litellm.ContextWindowExceededError"``). Other
``RouterConfig`` fields go in ``**settings`` (``fallbacks=…``). ``delay=`` (seconds) makes every call
wait that long before answering (litellm's ``mock_delay``: awaited by the async calls, a blocking
``time.sleep`` in the sync ``completion``): for tests of what happens while a model is answering,
such as a double text or a cancellation.

An empty reply cannot be mocked this way (litellm sends a request whose ``mock_response`` is empty to
the provider): script one with ``FakeOpenAI([""])`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamic_agents._validation import check_seconds
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.llm import LLMRouter, RouterConfig, build_router
from dynamic_agents.secrets import SecretsManager, StaticSource

__all__ = ["mock_llm_router", "mock_router_config"]


def mock_router_config(
    replies: Mapping[str, str | Sequence[str]], *, delay: float | None = None, **settings: Any
) -> RouterConfig:
    """The config of :func:`mock_llm_router`: one deployment per reply, each answering ``delay``
    seconds late when given."""
    delay = check_seconds("delay", delay, optional=True)
    if "model_list" in settings:  # else it took the place of every mocked deployment, silently
        raise ConfigurationError(
            "model_list is made from replies (one deployment per reply); pass the other RouterConfig "
            "fields in **settings, or build a RouterConfig of your own for other deployments"
        )
    model_list = []
    for model_name, answer in replies.items():
        for index, reply in enumerate(_replies(model_name, answer)):
            params: dict[str, Any] = {
                "model": "openai/mock",
                "api_key": "secret:mock:api_key",
                "mock_response": reply,
            }
            if delay is not None:
                params["mock_delay"] = delay
            info = {"id": f"{model_name}-{index}"}
            model_list.append({"model_name": model_name, "litellm_params": params, "model_info": info})
    return RouterConfig.from_dict({"model_list": model_list, **settings})


async def mock_llm_router(
    replies: Mapping[str, str | Sequence[str]],
    *,
    secrets: SecretsManager | None = None,
    delay: float | None = None,
    **settings: Any,
) -> LLMRouter:
    """Build an ``LLMRouter`` from :func:`mock_router_config` (close it with ``aclose()``)."""
    manager = secrets or SecretsManager(StaticSource({"mock": {"api_key": "mock-key-not-secret"}}))
    return await build_router(mock_router_config(replies, delay=delay, **settings), manager)


def _replies(model_name: str, answer: object) -> list[str]:
    """The group's replies, each one litellm mocks (a falsy ``mock_response`` goes to the provider)."""
    if isinstance(answer, str):
        replies: list[object] = [answer]
    elif isinstance(answer, Sequence) and not isinstance(answer, bytes | bytearray) and answer:
        replies = list(answer)
    else:
        raise ConfigurationError(
            f"replies[{model_name!r}] must be a str or a non-empty list of str, got {answer!r:.60}"
        )
    checked: list[str] = []
    for index, reply in enumerate(replies):
        where = f"replies[{model_name!r}]" + ("" if isinstance(answer, str) else f"[{index}]")
        if not isinstance(reply, str):
            raise ConfigurationError(f"{where} must be a str, got {reply!r:.60}")
        if not reply:
            raise ConfigurationError(
                f"{where} is empty: litellm would send the request to the provider rather than mock "
                'an empty reply; script one with FakeOpenAI([""]) instead'
            )
        checked.append(reply)
    return checked
