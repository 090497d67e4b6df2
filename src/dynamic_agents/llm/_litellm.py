"""Every use of litellm — public API and the internals it lacks — in one module.

litellm is pinned to 1.106.x (``pyproject.toml``) because of the internals used here:

* clearing one deployment's cooldown: there is no public call (``router.cooldown_cache``);
* discarding a Router: ``Router.discard()`` leaves the routing-strategy selectors registered in
  litellm's global callbacks (``_unregister_router_selectors`` removes them from two of the lists,
  not from the success / failure lists litellm copies them into on the first call), where they keep
  counting usage;
* dropping the SDK clients cached for a credential that rotated away: litellm has no call for it,
  only its client cache (``litellm.in_memory_llm_clients_cache``) and that cache's naming of the
  entries;
* taking a deployment's entries out of litellm's process-wide cost map (``litellm.model_cost``),
  its own and those of the per-call credentials sent through it: litellm has no call for it, and
  the ids of the latter are litellm's hash of the call's params (``cost_entry_ids``);
* telling a catalog model's name given as a deployment's id (``catalog_entry``): the catalog as
  litellm loaded it, apart from what was registered since.

Importing this module imports litellm (about 1.5 s). ``LITELLM_LOCAL_MODEL_COST_MAP`` is set to
``True`` first unless the host set it: otherwise litellm fetches its cost map over the network at
import time.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from importlib.resources import files
from typing import Any

try:
    import litellm
    from litellm import Router
    from litellm.router_utils.clientside_credential_handler import (
        clientside_credential_keys,
        get_dynamic_litellm_params,
    )
    from litellm.router_utils.cooldown_cache import CooldownCache
    from litellm.router_utils.cooldown_handlers import async_get_cooldown_deployments
    from litellm.router_utils.fallback_event_handlers import get_fallback_model_group
    from litellm.types.router import Deployment, LiteLLM_Params, ModelInfo
    from litellm.utils import _invalidate_model_cost_lowercase_map, _registered_pricing_fields
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the LiteLLM router", "agents") from error

from dynamic_agents._redaction import protect_loggers

LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
protect_loggers(*LITELLM_LOGGERS)  # litellm logs provider errors, which may echo a key

__all__ = [
    "LITELLM_LOGGERS",
    "Router",
    "catalog_entry",
    "clear_cooldown",
    "close_redis",
    "cooled_down",
    "cost_entry_ids",
    "discard",
    "drop_clients",
    "fallback_groups",
    "forget_cost_entries",
    "key_digest",
    "litellm",
    "new_router",
    "status_of",
    "upsert",
    "withdraw",
]


def new_router(**settings: Any) -> Router:
    return Router(**settings)


def upsert(
    router: Router,
    model_name: str,
    params: Mapping[str, Any],
    model_info: Mapping[str, Any],
    *,
    order: Sequence[str] = (),
) -> None:
    """Replace a deployment's params in place, keeping its id (``model_info["id"]``, so cooldowns
    and usage follow it) and the rest of its model info, or put a withdrawn one back; either way
    in its place among the others, by ``order`` (the deployment ids as configured).

    ``Router.upsert_deployment`` takes the deployment out of ``model_list`` and adds it at the end,
    where strategies that break ties by position (``lar1``: the first deployment of the call's
    type; ``least-busy``: the first of the least busy) would send its calls to the others: the
    list is put back in ``order`` and litellm's indexes by position are built again."""
    router.upsert_deployment(
        Deployment(
            model_name=model_name,
            litellm_params=LiteLLM_Params(**params),
            model_info=ModelInfo(**model_info),
        )
    )
    _keep_order(router, order)


def _keep_order(router: Router, order: Sequence[str]) -> None:
    """Sort the Router's ``model_list`` by ``order`` (ids not in it after, as they were) and build
    its indexes by position again: ``model_id_to_deployment_index_map``, and the model name's and
    team model's (``_build_model_name_index``); then drop the caches of what the groups hold."""
    rank = {deployment_id: position for position, deployment_id in enumerate(order)}

    def position(deployment: Mapping[str, Any]) -> int:
        identifier = _id_of(deployment)
        return rank.get(identifier, len(rank)) if identifier is not None else len(rank)

    ordered = sorted(router.model_list, key=position)
    if ordered == router.model_list:
        return
    router.model_list[:] = ordered
    ids = router.model_id_to_deployment_index_map
    ids.clear()
    for index, deployment in enumerate(router.model_list):
        identifier = _id_of(deployment)
        if identifier is not None:
            ids[identifier] = index
    router._build_model_name_index(router.model_list)
    router._invalidate_model_group_info_cache()
    router._invalidate_access_groups_cache()


def _id_of(deployment: Mapping[str, Any]) -> str | None:
    """A ``model_list`` entry's ``model_info.id``."""
    identifier = (deployment.get("model_info") or {}).get("id")
    return identifier if isinstance(identifier, str) else None


def withdraw(router: Router, deployment_id: str) -> None:
    """Take a deployment out of the Router (``Router.delete_deployment``: out of its model list
    and of its indexes by id and by group, and of its strategies' registrations; a group left with
    none leaves ``model_names``). ``delete_deployment`` swallows its own failures (it returns
    ``None``): one that left the deployment in place raises a ``RuntimeError`` here. Its entry in
    litellm's cost map stays (a call in flight may still be priced by it): the caller removes it
    with its others. :func:`upsert` puts it back, registered as at build."""
    router.delete_deployment(id=deployment_id)
    if router.has_model_id(deployment_id):
        raise RuntimeError(f"litellm's Router.delete_deployment left deployment {deployment_id!r} in place")


async def close_redis(router: Router, *, shared_with: Iterable[Router] = ()) -> None:
    """Close the Redis connections litellm's Router opened for its shared state (``redis_url``, or
    ``redis_host`` / ``redis_port`` in ``router_settings``): those of its ``RedisCache``'s sync
    client, its own; and those of the async client it used, unless a Router in ``shared_with``
    has a Redis cache with the same settings.

    ``RedisCache`` builds a sync client of its own (``redis_client``, pinged at construction) and
    takes its async client from litellm's process-wide ``in_memory_llm_clients_cache``, one per
    connection settings (``_get_async_client_cache_key``), building it (and its pool,
    ``async_redis_conn_pool``) for the first cache with those settings: every Router with the same
    ``redis_url`` shares it. Nothing closes either: ``Router.discard`` leaves them connected.
    Connections in use are left to their command (``inuse_connections=False``): a call still in
    flight finishes; the pools connect again if used again."""
    cache = getattr(getattr(router, "cache", None), "redis_cache", None)
    if cache is None:
        return
    cache.redis_client.close()
    key = cache._get_async_client_cache_key()
    for other in shared_with:
        other_cache = getattr(getattr(other, "cache", None), "redis_cache", None)
        if other_cache is not None and other_cache._get_async_client_cache_key() == key:
            return
    client = getattr(cache, "redis_async_client", None)
    pools = [cache.async_redis_conn_pool, getattr(client, "connection_pool", None)]
    for position, pool in enumerate(pools):
        if pool is not None and all(pool is not before for before in pools[:position]):
            await pool.disconnect(inuse_connections=False)


async def clear_cooldown(router: Router, deployment_id: str) -> None:
    """Take one deployment out of cooldown (memory, then Redis: memory even when Redis fails)."""
    key = CooldownCache.get_cooldown_cache_key(deployment_id)
    router.cooldown_cache.in_memory_cache.delete_cache(key)
    await router.cooldown_cache.cooldown_store.async_delete_cache(key)


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


def discard(router: Router) -> frozenset[asyncio.Task[Any]]:
    """Unhook a Router from litellm's global callbacks, strategy selectors included; the tasks
    litellm started doing so: a strategy retired with usage not yet written to Redis
    (``BaseRoutingStrategy.retire``: ``usage-based-routing-v2``…) writes it from a task of its
    own, which needs the Router's Redis connections until it is done."""
    try:
        running = asyncio.all_tasks()
    except RuntimeError:  # no event loop: litellm starts none either
        running = set()
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
    try:
        return frozenset(asyncio.all_tasks() - running)
    except RuntimeError:
        return frozenset()


def key_digest(credential: str) -> str:
    """How litellm's client cache names a credential: its SHA-256, hex."""
    return hashlib.sha256(credential.encode()).hexdigest()


_DIGEST_IN_NAME = re.compile(r"=([0-9a-f]{64})(?![0-9a-f])")
"""A credential's digest in a client cache entry's name (see :func:`drop_clients`)."""


def drop_clients(digests: Iterable[str], *, built_with: tuple[str, str] | None = None) -> int:
    """Take the SDK clients litellm cached for these credentials (by :func:`key_digest`) out of its
    client cache; how many. With ``built_with`` (a client setting and its value, such as
    ``("api_base", url)``), only those built with that value.

    litellm (``BaseOpenAILLM.set_cached_openai_client``: OpenAI, Azure and the providers that go
    through the OpenAI SDK) caches one SDK client per key and client settings in its process-wide
    ``in_memory_llm_clients_cache`` for ``_DEFAULT_TTL_FOR_HTTPX_CLIENTS`` (3600 s), each with a
    connection pool of its own and the key in plain text, in the client and in the entry's name. An
    expired entry leaves at its next lookup or when the cache is next written to, and a full cache
    (200 entries) drops the one that expires first. Its entries' names hold the credentials' digests
    (``get_openai_client_cache_key``): ``hashed_api_key=<sha256 of the key>,`` first, and for Azure
    ``azure_ad_token=<sha256>,`` and ``client_secret=<sha256>|`` / ``azure_password=<sha256>|``
    (``BaseAzureLLM.get_azure_openai_client``): an entry is matched by ``=<digest>`` anywhere. The
    name also lists the client's settings as ``,name=value,`` (``api_base``, ``organization``, for
    Azure ``api_version``…, in plain text): ``built_with`` is matched that way.

    ``delete_cache`` hands a client litellm built to the cache's ``EvictedClientCloser``, which
    closes it once no connection of it is in use and ``EVICTED_LLM_CLIENT_CLOSE_GRACE_SECONDS``
    (900 s) have passed, on a later lookup in the cache from the same event loop; a client the
    caller supplied (``litellm.aclient_session``) is left open. Closing here at once would break a
    call that was handed the client and is not yet on the wire."""
    wanted = set(digests)
    if not wanted:
        return 0
    setting = "" if built_with is None else f",{built_with[0]}={built_with[1]},"
    cache = litellm.in_memory_llm_clients_cache
    names = [
        name
        for name in list(cache.cache_dict)
        if isinstance(name, str) and setting in name and not wanted.isdisjoint(_DIGEST_IN_NAME.findall(name))
    ]
    for name in names:
        cache.delete_cache(name)
    return len(names)


def cost_entry_ids(
    router: Router, model_group: str, deployment_ids: Iterable[str], call: Mapping[str, Any]
) -> frozenset[str]:
    """The ids of the ``litellm.model_cost`` entries litellm's Router registers for a call to
    ``model_group`` with these keyword arguments through any of these deployments: none unless
    the call carries a credential of its own (``api_key``, ``api_base``, ``base_url``).

    For such a call (``is_clientside_credential``), ``Router._update_kwargs_with_deployment``
    (litellm/router.py ~4246) hands the chosen deployment to ``_handle_clientside_credential``
    (~4135), which builds a per-request Deployment with ``model_info["id"] =
    generate_model_id(model_group, get_dynamic_litellm_params(deployment's litellm_params, call))``
    (~9203: the SHA-256 of the group and the params, key included, in their order) and
    ``original_model_id`` = the deployment's id, and registers its pricing under that id
    (``_register_deployment_pricing`` ~10519 → ``litellm.register_model``). Every distinct key
    adds an entry, which litellm never removes. The ids are worked out here, while the key is at
    hand, from the params the Router holds now (a rotation that rewrites them changes the ids)."""
    credentials = {name: value for name, value in call.items() if name in clientside_credential_keys}
    if not credentials:
        return frozenset()
    ids = set()
    for deployment_id in deployment_ids:
        position = router.model_id_to_deployment_index_map.get(deployment_id)
        if position is None:
            continue
        params = get_dynamic_litellm_params(
            litellm_params=dict(router.model_list[position]["litellm_params"]), request_kwargs=dict(call)
        )
        ids.add(Router.generate_model_id(model_group=model_group, litellm_params=params))
    return frozenset(ids)


_PROVIDER_MODEL_SETS = (
    "open_ai_chat_completion_models",
    "open_ai_text_completion_models",
    "cohere_models",
    "anthropic_models",
    "openrouter_models",
    "vercel_ai_gateway_models",
    "edenai_models",
    "vertex_text_models",
    "vertex_code_text_models",
    "vertex_chat_models",
    "vertex_code_chat_models",
    "ai21_models",
    "nlp_cloud_models",
    "aleph_alpha_models",
    "bedrock_models",
    "novita_models",
)
"""The sets of model names ``litellm.register_model`` adds a registered key to, by its provider."""


def forget_cost_entries(
    ids: Iterable[str], *, derived_from: Collection[str] = (), in_use: Callable[[str], bool] = lambda _: False
) -> int:
    """Take these deployment ids' entries out of ``litellm.model_cost``, with those of the per-call
    credentials sent through the deployments in ``derived_from`` (their ``original_model_id``, see
    :func:`cost_entry_ids`), but none ``in_use``; how many were there. An id litellm no longer
    has (a cost map reloaded since) is skipped.

    ``Router._register_deployment_in_model_cost`` (litellm/router.py ~10534) registers an entry
    per deployment id with ``persist_across_reloads=False`` (not replayed from
    ``_runtime_registered_model_cost``; a discarded Router leaves ``_live_routers``, whose
    deployments a cost-map reload re-registers). ``litellm.register_model`` (litellm/utils.py
    ~3482) writes it into ``litellm.model_cost`` under the id, records its rates in
    ``_registered_pricing_fields()`` under the id, adds the id to its provider's set of model
    names (``open_ai_chat_completion_models``…) and calls ``_invalidate_model_cost_lowercase_map``
    (~5791: the lower-case index and the ``get_model_info`` caches): undone here, the index and
    caches invalidated again. The shared entry of the backend model (``openai/gpt-4o-mini``),
    which every deployment of that model writes into, is litellm's catalog: left alone."""
    cost = litellm.model_cost
    wanted = set(ids)
    if derived_from:
        origins = set(derived_from)
        wanted.update(
            name
            for name, entry in list(cost.items())
            if isinstance(entry, dict) and entry.get("original_model_id") in origins
        )
    fields = _registered_pricing_fields()
    removed = 0
    for name in [name for name in wanted if not in_use(name)]:
        if cost.pop(name, None) is not None:
            removed += 1
        fields.pop(name, None)
        for attribute in _PROVIDER_MODEL_SETS:
            names = getattr(litellm, attribute, None)
            if isinstance(names, set):
                names.discard(name)
    if removed:
        _invalidate_model_cost_lowercase_map()
    return removed


def catalog_entry(deployment_id: str, custom_llm_provider: str | None = None) -> str | None:
    """The entry of litellm's catalog that a deployment with this id would be registered into, if
    any: ``litellm.register_model`` (``Router._register_deployment_in_model_cost``, litellm/utils.py
    ~3535) merges a deployment's model info and prices into the built-in entry its id resolves to
    (``get_model_info``: ``GPT-4o`` and ``openai/gpt-4o`` resolve to ``gpt-4o``), or into the entry
    under that very name, instead of an entry of its own."""
    catalog = _catalog()
    if deployment_id in catalog:
        return deployment_id
    quiet = litellm.suppress_debug_info
    litellm.suppress_debug_info = True  # as a Router sets it: else litellm prints for a name it lacks
    try:
        info = litellm.get_model_info(model=deployment_id, custom_llm_provider=custom_llm_provider)
    except Exception:  # not a model litellm knows
        return None
    finally:
        litellm.suppress_debug_info = quiet
    key = info.get("key")
    return key if isinstance(key, str) and key in catalog else None


def _catalog() -> Collection[str]:
    """The names in litellm's catalog as loaded, not the entries registered since
    (``GetModelCostMap.loaded_model_cost_map()``), else the catalog bundled with litellm."""
    from litellm.litellm_core_utils import get_model_cost_map

    loaded = getattr(getattr(get_model_cost_map, "GetModelCostMap", None), "loaded_model_cost_map", None)
    catalog: Collection[str] = loaded() if loaded is not None else ()
    return catalog or _bundled_catalog()


@functools.cache
def _bundled_catalog() -> frozenset[str]:
    text = files("litellm").joinpath("model_prices_and_context_window_backup.json").read_bytes()
    return frozenset(json.loads(text))


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
