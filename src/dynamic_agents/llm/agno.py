"""agno models whose calls go through an :class:`~dynamic_agents.llm.LLMRouter`.

``agno_model(router, "gpt-4o", temperature=0.2, tags=["paid"], user_id="u1")`` gives an agno
``LiteLLM`` model for the router's model group: per-agent temperature and ``max_tokens``, tags sent
as request metadata (where litellm's tag routing reads them — agno's own ``metadata=`` field goes to
``extra_body`` and is ignored by tag routing), and the user's own key when they have one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynamic_agents.llm.router import LLMRouter, _checked_tags

try:
    from agno.models.litellm import LiteLLM
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("agno models", "agents") from error

from dynamic_agents._logging import AGNO_LOGGERS
from dynamic_agents._redaction import protect_loggers

protect_loggers(*AGNO_LOGGERS)  # "Error in Agent run: <provider error>" may echo a key; they do not propagate

__all__ = ["AGNO_LOGGERS", "RouterClient", "agno_model"]


class RouterClient:
    """What agno's ``LiteLLM`` calls: ``acompletion`` / ``completion`` through the router, with the
    user and tags of one agent bound in."""

    def __init__(
        self, router: LLMRouter, *, user_id: str | None = None, tags: Sequence[str] | None = None
    ) -> None:
        self.router = router
        self.user_id = user_id
        self.tags = _checked_tags(tags, "RouterClient()")

    def __repr__(self) -> str:
        return f"RouterClient({self.router!r}, user_id={self.user_id!r}, tags={self.tags!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> RouterClient:
        return self  # agno deep-copies models per run; the router is shared by design

    async def acompletion(self, **kwargs: Any) -> Any:
        return await self.router.acompletion(user_id=self.user_id, tags=self.tags, **kwargs)

    def completion(self, **kwargs: Any) -> Any:
        return self.router.completion(user_id=self.user_id, **kwargs)


def agno_model(
    router: LLMRouter,
    model: str,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    tags: Sequence[str] | None = None,
    user_id: str | None = None,
    request_params: dict[str, Any] | None = None,
) -> Any:
    """An agno ``LiteLLM`` model for the router's model group ``model``."""
    if model not in router.config.model_names:
        from dynamic_agents.exceptions import ConfigurationError

        raise ConfigurationError(
            f"model {model!r} is not a model group of this router; known: {sorted(router.config.model_names)}"
        )
    tags = _checked_tags(tags, f"agno_model(model={model!r})")
    options: dict[str, Any] = {}
    if temperature is not None:
        options["temperature"] = temperature
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    return LiteLLM(
        id=model,
        client=RouterClient(router, user_id=user_id, tags=tags),
        request_params=dict(request_params or {}),
        **options,
    )
