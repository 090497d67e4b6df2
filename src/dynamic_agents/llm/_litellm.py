"""Every use of litellm — public API and the internals it lacks — in one module.

litellm is pinned to 1.106.x (``pyproject.toml``) because of the internals used here:

* clearing one deployment's cooldown: there is no public call (``router.cooldown_cache``);
* discarding a Router: ``Router.discard()`` leaves the routing-strategy selectors registered in
  litellm's global callbacks (``_unregister_router_selectors`` removes them from two of the lists,
  not from the success / failure lists litellm copies them into on the first call), where they keep
  counting usage;
* dropping the SDK clients cached for a credential that rotated away: litellm has no call for it,
  only its client cache (``litellm.in_memory_llm_clients_cache``) and that cache's naming of the
  entries.

Importing this module imports litellm (about 1.5 s). ``LITELLM_LOCAL_MODEL_COST_MAP`` is set to
``True`` first unless the host set it: otherwise litellm fetches its cost map over the network at
import time.
"""

from __future__ import annotations

import hashlib
import os
import re

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterable, Mapping
from typing import Any

try:
    import litellm
    from litellm import Router
    from litellm.router_utils.cooldown_cache import CooldownCache
    from litellm.router_utils.cooldown_handlers import async_get_cooldown_deployments
    from litellm.router_utils.fallback_event_handlers import get_fallback_model_group
    from litellm.types.router import Deployment, LiteLLM_Params, ModelInfo
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the LiteLLM router", "agents") from error

from dynamic_agents._redaction import protect_loggers

LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
protect_loggers(*LITELLM_LOGGERS)  # litellm logs provider errors, which may echo a key

__all__ = [
    "LITELLM_LOGGERS",
    "Router",
    "clear_cooldown",
    "cooled_down",
    "discard",
    "drop_clients",
    "fallback_groups",
    "key_digest",
    "litellm",
    "new_router",
    "status_of",
    "upsert",
]


def new_router(**settings: Any) -> Router:
    return Router(**settings)


def upsert(router: Router, model_name: str, params: Mapping[str, Any], model_info: Mapping[str, Any]) -> None:
    """Replace a deployment's params in place, keeping its id (``model_info["id"]``, so cooldowns
    and usage follow it) and the rest of its model info."""
    router.upsert_deployment(
        Deployment(
            model_name=model_name,
            litellm_params=LiteLLM_Params(**params),
            model_info=ModelInfo(**model_info),
        )
    )


async def clear_cooldown(router: Router, deployment_id: str) -> None:
    """Take one deployment out of cooldown (memory and Redis)."""
    key = CooldownCache.get_cooldown_cache_key(deployment_id)
    await router.cooldown_cache.cooldown_store.async_delete_cache(key)
    router.cooldown_cache.in_memory_cache.delete_cache(key)


async def cooled_down(router: Router) -> list[str]:
    """Ids of the deployments in cooldown now."""
    return list(await async_get_cooldown_deployments(router, None))


_CALLBACK_LISTS = (
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
    "service_callback",
)
"""litellm's global callback lists a Router's selectors can end up in."""


def discard(router: Router) -> None:
    """Unhook a Router from litellm's global callbacks, strategy selectors included."""
    selectors = [getattr(router, attr, None) for attr in router._DEFAULT_SELECTOR_ATTR_BY_STRATEGY.values()]
    selectors += list(getattr(router, "_override_selectors", {}).values())
    for group in getattr(router, "_group_selectors", {}).values():
        selectors += list(group.values())
    selectors = [s for s in selectors if s is not None]
    router._unregister_router_selectors(selectors)
    # litellm copies callbacks into its other lists on the first call; the above cleans only two.
    ids = {id(selector) for selector in selectors}
    for name in _CALLBACK_LISTS:
        callbacks = getattr(litellm, name, None)
        if isinstance(callbacks, list):
            callbacks[:] = [callback for callback in callbacks if id(callback) not in ids]
    router.discard()


def key_digest(credential: str) -> str:
    """How litellm's client cache names a credential: its SHA-256, hex."""
    return hashlib.sha256(credential.encode()).hexdigest()


_DIGEST_IN_NAME = re.compile(r"=([0-9a-f]{64})(?![0-9a-f])")
"""A credential's digest in a client cache entry's name (see :func:`drop_clients`)."""


def drop_clients(digests: Iterable[str]) -> int:
    """Take the SDK clients litellm cached for these credentials (by :func:`key_digest`) out of its
    client cache; how many.

    litellm (``BaseOpenAILLM.set_cached_openai_client``: OpenAI, Azure and the providers that go
    through the OpenAI SDK) caches one SDK client per key and client settings in its process-wide
    ``in_memory_llm_clients_cache`` for ``_DEFAULT_TTL_FOR_HTTPX_CLIENTS`` (3600 s), each with a
    connection pool of its own and the key in plain text, in the client and in the entry's name. An
    expired entry leaves at its next lookup or when the cache is next written to, and a full cache
    (200 entries) drops the one that expires first. Its entries' names hold the credentials' digests
    (``get_openai_client_cache_key``): ``hashed_api_key=<sha256 of the key>,`` first, and for Azure
    ``azure_ad_token=<sha256>,`` and ``client_secret=<sha256>|`` / ``azure_password=<sha256>|``
    (``BaseAzureLLM.get_azure_openai_client``): an entry is matched by ``=<digest>`` anywhere.

    ``delete_cache`` hands a client litellm built to the cache's ``EvictedClientCloser``, which
    closes it once no connection of it is in use and ``EVICTED_LLM_CLIENT_CLOSE_GRACE_SECONDS``
    (900 s) have passed, on a later lookup in the cache from the same event loop; a client the
    caller supplied (``litellm.aclient_session``) is left open. Closing here at once would break a
    call that was handed the client and is not yet on the wire."""
    wanted = set(digests)
    if not wanted:
        return 0
    cache = litellm.in_memory_llm_clients_cache
    names = [
        name
        for name in list(cache.cache_dict)
        if isinstance(name, str) and not wanted.isdisjoint(_DIGEST_IN_NAME.findall(name))
    ]
    for name in names:
        cache.delete_cache(name)
    return len(names)


def fallback_groups(router: Router, model_group: str, error: BaseException) -> list[str]:
    """The model groups litellm's Router would fall back to from ``model_group`` after ``error``
    (its context-window or content-policy fallbacks for those errors when set, else its fallbacks:
    the group's own, else the default ones), for callers that walk the fallbacks themselves."""
    chain: Any = router.fallbacks
    if isinstance(error, litellm.ContextWindowExceededError) and router.context_window_fallbacks:
        chain = router.context_window_fallbacks
    elif isinstance(error, litellm.ContentPolicyViolationError) and router.content_policy_fallbacks:
        chain = router.content_policy_fallbacks
    if not chain:
        return []
    groups, _ = get_fallback_model_group(fallbacks=chain, model_group=model_group)
    return [group for group in groups or [] if isinstance(group, str)]


def status_of(error: BaseException) -> int | None:
    """The HTTP status of a litellm exception (a 401 may come as a BadRequestError: check this)."""
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None
