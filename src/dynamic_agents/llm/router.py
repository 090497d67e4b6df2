"""``LLMRouter``: one long-lived LiteLLM Router with secrets resolved, rotated live, per-user keys.

``build_router(config, secrets)`` resolves every secret reference in every deployment (nested ones
included), in ``redis_url`` and in ``router_settings``, and builds the ``litellm.Router`` once.
Afterwards:

* a rotated secret (``SecretsManager.on_change``, or ``refresh()``) swaps the key of the deployments
  that use it with ``upsert_deployment`` — same deployment ids, same Router object — takes them
  out of cooldown, and drops litellm's cached SDK clients of the old key or token, or of the old
  endpoint when it moved alone (a user's own key that changed has its old one's dropped too;
  closing the router drops those of its credentials and of the users' keys its calls carried),
  unless an open router still sends it;
* a deployment whose secret is gone — deleted, disabled, or its access revoked (403) — is
  withdrawn from the Router (its group's other deployments and fallbacks take its calls; a group
  left with none raises :class:`~dynamic_agents.exceptions.LLMUnavailableError` saying why) and
  its key's cached clients dropped, until the secret resolves again; a secrets service that cannot
  answer leaves it with its key;
* the entries litellm adds to its process-wide cost map (``litellm.model_cost``) — one per
  deployment, and one per deployment and user's key a call carried — leave it with the key that
  changed and with the router's ``aclose()``, unless an open router still uses them;
* a call that fails with 401 forces one secret refresh and one retry (of the user's keys when it
  carried the user's own);
* a call for a user who has their own key for the group's provider carries that key per call; it is
  never written into the shared deployment, and its failures never cool the deployment down. Such a
  call walks the group's fallbacks itself, each group called with litellm's fallbacks disabled and
  with that user's key for *its* provider (or the deployment's own): litellm would hand the per-call
  key to every fallback group, whatever provider it is for;
* errors are :class:`~dynamic_agents.exceptions.LLMError`\\ s whose messages have every secret value
  masked — resolved ones, and literal credentials written in the config — raised with no link to
  litellm's exception (whose text may echo a key).
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from cachetools import Cache, LRUCache
from pydantic import ValidationError

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import REDACTOR, masked_url, redact_text
from dynamic_agents._validation import invalid_fields, shown
from dynamic_agents.exceptions import (
    ConfigurationError,
    IdentityForbiddenError,
    LLMAuthenticationError,
    LLMError,
    LLMRateLimitError,
    LLMRequestError,
    LLMTimeoutError,
    LLMUnavailableError,
    MissingDependencyError,
    SecretNotFoundError,
    SecretsError,
)
from dynamic_agents.llm import _litellm
from dynamic_agents.llm.config import DeploymentConfig, RouterConfig, literal_credentials
from dynamic_agents.observability.tracing import check_tracing
from dynamic_agents.secrets import (
    EnvReference,
    SecretChange,
    SecretReference,
    SecretsManager,
    SecretValue,
    parse_reference,
    reveal_all,
)

if TYPE_CHECKING:
    from dynamic_agents.observability import Tracing

__all__ = ["LLMRouter", "build_router"]

logger = get_logger("llm")

_MESSAGE_LIMIT = 2000

_USERS_KEYS_KEPT = 1024
"""How many users' keys (one per user and provider) a router remembers its calls carrying, to drop
litellm's cached clients of one that changed: five times litellm's client cache (200 entries), so a
key forgotten here has almost surely left that cache already (it drops the oldest client first)."""

_CLIENT_SETTINGS = ("api_base", "api_version", "organization")
"""Params besides the credentials that litellm names its cached SDK clients by (a secret reference
may resolve them: an endpoint that moves, say): one that changes leaves the old value's clients."""

_CHANGED = ""
"""Recorded for a user's key the calls carried that changed, until the next lookup of the new one."""


_LAST_WRITES_WAIT = 5.0
"""How long ``aclose()`` waits for litellm's last usage writes to Redis before it closes the
Router's Redis connections (litellm's Redis connection-pool timeout): a Redis that does not
answer does not hold a shutdown longer."""

_GONE = (SecretNotFoundError, IdentityForbiddenError)
"""What the secrets layer raises for a credential that is gone — deleted, disabled ("Disabled
secrets are never used"), or its access revoked (403) — as opposed to one it could not fetch
(an outage: the old value is kept). A deployment whose credential is gone is withdrawn."""

_Slot = tuple[str, str, str]
"""(provider, field, user id): a user's key for a provider."""

_SentWith = Mapping[str, tuple[dict[str, Any], bool]]
"""Each deployment's params and whether it was withdrawn, by id, as a call found them."""


@dataclass(slots=True)
class _UserKey:
    """What a router remembers of a user's key its calls carried: its digest
    (:func:`_litellm.key_digest`, or :data:`_CHANGED`), never the key, and the ids of the cost-map
    entries litellm added for those calls (:func:`_litellm.cost_entry_ids`, worked out while the
    key was at hand)."""

    digest: str
    entries: frozenset[str] = frozenset()


class _UsersKeys(LRUCache[_Slot, _UserKey]):
    """The users' keys a router's calls carried, by slot, the ``_USERS_KEYS_KEPT`` used last. One
    pushed out has its entries handed to ``forget``: else every user past those would leave hers in
    litellm's map until the router closes. Her next call registers them again.

    ``in_use`` counts, per cost-map entry, the records here holding it, kept in step with every
    change: a record stored, replaced, removed (pushed out too), cleared, or given entries (only
    through :meth:`add_entries`). Whether an entry is still in use is then one lookup per router,
    not a walk through its users' records."""

    def __init__(self, maxsize: int, forget: Callable[[frozenset[str]], None]) -> None:
        super().__init__(maxsize)
        self._forget = forget
        self.in_use: Counter[str] = Counter()

    def __setitem__(self, slot: _Slot, user_key: _UserKey) -> None:
        before = Cache.__getitem__(self, slot) if slot in self else None
        super().__setitem__(slot, user_key)
        self.in_use.update(user_key.entries)
        if before is not None:
            self._release(before.entries)

    def __delitem__(self, slot: _Slot) -> None:
        user_key = Cache.__getitem__(self, slot)
        super().__delitem__(slot)
        self._release(user_key.entries)

    def clear(self) -> None:
        super().clear()
        self.in_use.clear()

    def popitem(self) -> tuple[_Slot, _UserKey]:
        slot, user_key = super().popitem()  # through __delitem__: its entries no longer counted
        self._forget(user_key.entries)
        return slot, user_key

    def add_entries(self, user_key: _UserKey, entries: frozenset[str]) -> None:
        """Add ``entries`` to a record held here."""
        added = entries - user_key.entries
        user_key.entries |= added
        self.in_use.update(added)

    def _release(self, entries: frozenset[str]) -> None:
        self.in_use.subtract(entries)
        for entry in entries:
            if self.in_use[entry] <= 0:
                del self.in_use[entry]


def _unordered_values(cache: _UsersKeys) -> Iterator[_UserKey]:
    """An LRU cache's values, their order of use untouched: read through the cache (``values()``)
    each would become the most recently used, in the order they were first stored. A synchronous
    call's end reads another router's from its own thread while the event loop changes them: a
    slot removed between the copy of the slots (atomic) and the read of its record is skipped
    (its key is no longer carried)."""
    for slot in list(cache):
        try:
            yield Cache.__getitem__(cache, slot)
        except KeyError:
            continue


@dataclass(slots=True)
class _Deployment:
    config: DeploymentConfig
    params: dict[str, Any] = field(repr=False)
    providers: frozenset[str]
    position: int
    """Its index in ``model_list``."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    """Held while its params are resolved and written: one update at a time."""
    waiting: int = 0
    """Updates holding or queued for ``lock``."""
    stale: bool = False
    """An update was asked for since the holder of ``lock`` last started resolving."""
    failing: str | None = None
    """The error of its last update, if it failed (logged once)."""
    withdrawn: bool = False
    """Taken out of the litellm Router: its credentials were answered gone (:data:`_GONE`)."""
    id: str = field(init=False)
    """``config.deployment_id``, worked out once: every call reads it, and it hashes the params."""

    def __post_init__(self) -> None:
        self.id = self.config.deployment_id


async def build_router(
    config: RouterConfig,
    secrets: SecretsManager,
    *,
    follow_changes: bool = True,
    tracing: Tracing | None = None,
) -> LLMRouter:
    """Resolve the config's secret references (the deployments', ``redis_url``'s and
    ``router_settings``'; only the deployments' follow rotations) and build the one
    ``litellm.Router``. With ``tracing``, every call is a ``chat {model}`` span (usage and cost as
    attributes). A config
    the Router refuses is a :class:`~dynamic_agents.exceptions.ConfigurationError` (no values), and
    so is a ``model_info.id`` naming a model of litellm's catalog."""
    tracing = check_tracing(tracing)
    for position, item in enumerate(config.model_list):
        _check_not_a_catalog_model(item, position)
    deployments = [
        _Deployment(item, await _resolve(item, position, secrets), _providers(item, secrets), position)
        for position, item in enumerate(config.model_list)
    ]
    # References here (redis_password: secret:redis:password) are resolved once, as redis_url is:
    # litellm builds its Redis clients with them at construction, and reads os.environ/ ones itself
    # (only from the environment, unmasked) and secret: ones not at all.
    settings: dict[str, Any] = reveal_all(
        await secrets.resolve_all(copy.deepcopy(config.router_settings), where="router_settings")
    )
    _register_literal_secrets(settings)  # redis_password…: errors and logs mask it too
    settings.update(
        model_list=[
            {
                "model_name": d.config.model_name,
                "litellm_params": copy.deepcopy(d.params),
                "model_info": {**copy.deepcopy(d.config.model_info), "id": d.id},
            }
            for d in deployments
        ],
        fallbacks=copy.deepcopy(config.fallbacks),
        default_fallbacks=list(config.default_fallbacks) or None,
        context_window_fallbacks=copy.deepcopy(config.context_window_fallbacks),
        routing_strategy=config.routing_strategy,
        num_retries=config.num_retries,
        timeout=config.timeout,
        cooldown_time=config.cooldown_time,
        allowed_fails=config.allowed_fails,
        enable_tag_filtering=config.enable_tag_filtering,
        enable_pre_call_checks=config.enable_pre_call_checks,
    )
    if config.redis_url is not None:
        try:  # else litellm fails deep inside, on its own import
            import redis  # noqa: F401
        except ImportError as error:
            raise MissingDependencyError("the LLM router's redis_url", "redis") from error
        redis_url: str = reveal_all(await secrets.resolve_all(config.redis_url, where="redis_url"))
        masked_url(redis_url)  # registers its password with the redactor
        settings["redis_url"] = redis_url
    # An id litellm's cost map has before this Router registers it (another router's deployment,
    # a register_model() call) is not this router's to remove.
    cost_entries_before = frozenset(d.id for d in deployments if d.id in _litellm.litellm.model_cost)
    refused: ConfigurationError
    running = asyncio.all_tasks()
    try:
        router = _litellm.new_router(**{k: v for k, v in settings.items() if v is not None})
    except Exception as error:  # pydantic's and litellm's texts quote the resolved params, keys included
        refused = ConfigurationError(
            f"the LiteLLM Router refused the config (model groups {sorted(config.model_names)}): "
            f"{_refusal(error)}"
        )
    else:
        started = asyncio.all_tasks() - running
        for task in started:
            task.add_done_callback(_litellm_task_ended)
        return LLMRouter(
            config,
            secrets,
            router,
            deployments,
            follow_changes=follow_changes,
            tracing=tracing,
            cost_entries_before=cost_entries_before,
            started_at_build=started,
        )
    raise refused  # outside the except block: the original is not chained


def _litellm_task_ended(task: asyncio.Task[Any]) -> None:
    """The end of a task litellm's Router started while it was built or discarded, which nobody
    awaits (its Redis cache's health ping, which fails when Redis is down; a strategy's last
    usage writes): a failure is one WARNING line, masked, without the traceback. Left
    unretrieved, asyncio logged "Task exception was never retrieved" with its traceback, an
    ERROR, whenever the task was garbage-collected."""
    if task.cancelled() or (error := task.exception()) is None:
        return
    coroutine = task.get_coro()
    name = getattr(coroutine, "__qualname__", None) or task.get_name()
    logger.warning(
        "a task litellm started for the router (%s) failed: %s: %s",
        name,
        type(error).__name__,
        redact_text(str(error)),
    )


def _check_not_a_catalog_model(deployment: DeploymentConfig, position: int) -> None:
    """litellm merges a deployment's model info and prices into the catalog entry its id names
    (:func:`_litellm.catalog_entry`): every call of the process pricing that model would read
    this deployment's prices, and this deployment would be priced as that model. An id derived
    from the params (none given) is not looked up: it is the group's name and a hash."""
    if deployment.model_info.get("id") is None:
        return
    provider = deployment.litellm_params.get("custom_llm_provider")
    entry = _litellm.catalog_entry(deployment.deployment_id, provider if isinstance(provider, str) else None)
    if entry is not None:
        raise ConfigurationError(
            f"model_list[{position}] ({deployment.describe()}), model_info.id: "
            f"{deployment.deployment_id!r} names the model {entry!r} of litellm's catalog, and litellm "
            "would write this deployment's model info and prices into that catalog entry, which "
            "prices every call of that model in the process; give the deployment an id of its own "
            f"(such as '{deployment.model_name}-main'), or none to have one derived"
        )


def _refusal(error: Exception) -> str:
    """What was wrong, without the values: a validation error's fields and messages only (its
    inputs are whole params dicts, cut short where a key may be half shown); else the redacted text."""
    if isinstance(error, ValidationError):
        return invalid_fields(error, error.title)
    text = REDACTOR.redact(f"{type(error).__name__}: {error}")
    return text if len(text) <= _MESSAGE_LIMIT else f"{text[: _MESSAGE_LIMIT - 3]}..."


async def _resolve(
    deployment: DeploymentConfig,
    position: int,
    secrets: SecretsManager,
    *,
    resolved_before: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The deployment's params with every reference resolved; credentials written in them as
    literals are registered with the redactor (resolved ones already are), so errors and logs mask
    them too. A reference that cannot be resolved raises its :class:`SecretsError` naming the
    deployment and the field (``SecretsManager.resolve_all``'s ``where``). With
    ``resolved_before`` (the params as resolved last), an environment variable no secret is
    mapped to that is unset now keeps the value read then (:func:`_environment_kept`)."""
    where = f"model_list[{position}] ({deployment.describe()}), litellm_params"
    params: Any = deployment.litellm_params
    if resolved_before is not None:
        params = _environment_kept(params, resolved_before, secrets)
    resolved: dict[str, Any] = reveal_all(await secrets.resolve_all(params, where=where))
    _register_literal_secrets(resolved)
    return resolved


def _environment_kept(written: Any, resolved: Any, secrets: SecretsManager) -> Any:
    """``written`` (a deployment's params as configured) with each ``os.environ/`` reference no
    secret is mapped to whose variable is unset now replaced by its value in ``resolved`` (at the
    same place in the params as resolved before). Such a variable is the process's own setting,
    read at build (as litellm reads them): a host that takes it out of its environment once
    started (so that no subprocess inherits the key) has not revoked the key, and the deployment
    is not withdrawn for it. One set anew is read as a rotation."""
    if isinstance(written, str):
        reference = parse_reference(written)
        if (
            isinstance(reference, EnvReference)
            and reference.variable not in secrets.env_mapping
            and not os.environ.get(reference.variable)
            and isinstance(resolved, str)
        ):
            return SecretValue(resolved)
        return written
    if isinstance(written, Mapping) and isinstance(resolved, Mapping):
        return {key: _environment_kept(value, resolved.get(key), secrets) for key, value in written.items()}
    sequences = isinstance(written, list | tuple) and isinstance(resolved, list | tuple)
    if sequences and len(written) == len(resolved):
        items = [_environment_kept(item, resolved[index], secrets) for index, item in enumerate(written)]
        return items if isinstance(written, list) else tuple(items)
    return written


def _register_literal_secrets(data: Any) -> None:
    """Register every credential in the params with the redactor: strings under a credential key
    (:data:`SECRET_PARAMS`) or in a credential header (``Authorization``, ``api-key``…), at any
    depth, and the passwords of URLs (``api_base: https://user:password@…``)."""
    for value in literal_credentials(data):
        REDACTOR.register(value)
    for url in _strings(data):
        if "://" in url:
            masked_url(url)  # registers its password


def _checked_tags(tags: object, where: str) -> list[str] | None:
    """``tags`` as a list, if it is a list (or tuple…) of strings: a string is a sequence of
    strings too, and ``"paid"`` would be sent as the tags ``p``, ``a``, ``i``, ``d``."""
    if tags is None:
        return None
    if isinstance(tags, Sequence) and not isinstance(tags, str | bytes):
        bad = [tag for tag in tags if not isinstance(tag, str)]
        if not bad:
            return list(tags)
        found = f"{shown(bad[0])} among them"
    else:
        found = shown(tags)
    raise ConfigurationError(
        f"{where}, tags: a list of strings is expected, such as ['paid'] (got {found}); "
        "a string would be taken as one tag per character"
    )


def _checked_metadata(metadata: object, where: str) -> dict[str, Any]:
    """A copy of a call's ``metadata`` (litellm writes into it), if it is a mapping or ``None``:
    anything else failed inside litellm, reported as the provider being unavailable, or, with
    ``tags``, as a bare ``TypeError``."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigurationError(f"{where}, metadata: a mapping is expected (got {shown(metadata)})")
    return copy.deepcopy(dict(metadata))


def _register_call_secrets(kwargs: Mapping[str, Any]) -> None:
    """Register the credentials a caller passes per call (``api_key=…``, a credential header in
    ``extra_headers``, an ``api_base`` with a password) with the redactor, as the config's and the
    users' keys are: a provider error may echo them. ``metadata`` is the caller's own data, left
    alone (a value under a credential-like name there would be masked everywhere)."""
    _register_literal_secrets({name: value for name, value in kwargs.items() if name != "metadata"})


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, Mapping):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list | tuple):
        for item in data:
            yield from _strings(item)


def _references(data: Any) -> list[SecretReference | EnvReference]:
    if isinstance(data, str):
        reference = parse_reference(data)
        return [reference] if reference is not None else []
    if isinstance(data, Mapping):
        return [ref for value in data.values() for ref in _references(value)]
    if isinstance(data, list | tuple):
        return [ref for item in data for ref in _references(item)]
    return []


def _secret_keys(deployment: DeploymentConfig, secrets: SecretsManager) -> frozenset[tuple[str, str | None]]:
    """(provider, name) of the system secrets the deployment's params refer to, in ``secret:``
    references or in ``os.environ/`` ones the manager maps to a secret."""
    keys: set[tuple[str, str | None]] = set()
    for reference in _references(deployment.litellm_params):
        if isinstance(reference, SecretReference):
            keys.add((reference.provider, reference.name))
        elif (mapped := secrets.env_mapping.get(reference.variable)) is not None:
            keys.add((mapped[0], None))
    return frozenset(keys)


def _providers(deployment: DeploymentConfig, secrets: SecretsManager) -> frozenset[str]:
    """The secret providers a deployment's params refer to (rotation follows these)."""
    return frozenset(provider for provider, _ in _secret_keys(deployment, secrets))


def _api_key_reference(deployment: DeploymentConfig, secrets: SecretsManager) -> tuple[str, str] | None:
    """(provider, field) the deployment's ``api_key`` refers to, if it is a secret reference."""
    value = deployment.litellm_params.get("api_key")
    reference = parse_reference(value) if isinstance(value, str) else None
    if isinstance(reference, SecretReference) and reference.name is None:
        return reference.provider, reference.field
    if isinstance(reference, EnvReference):
        return secrets.env_mapping.get(reference.variable)
    return None


class _Routers:
    """Routers held weakly, gone through by any thread while others add or discard some: the end
    of a synchronous call (``completion()``, in its caller's thread: agno's ``run``, a stream read
    in a thread) goes through the open routers while the event loop builds or closes one. A
    ``WeakSet`` changed while another thread iterates it raises ``RuntimeError: Set changed size
    during iteration`` (``list(weak_set)`` iterates too): here a change replaces the tuple of
    members, under a lock, and a walk goes through the tuple it started with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: tuple[weakref.ref[LLMRouter], ...] = ()

    def add(self, router: LLMRouter) -> None:
        with self._lock:
            self._members = (*self._others(router), weakref.ref(router))

    def discard(self, router: LLMRouter) -> None:
        with self._lock:
            self._members = self._others(router)

    def _others(self, router: LLMRouter) -> tuple[weakref.ref[LLMRouter], ...]:
        """The members but ``router``, those garbage-collected left out."""
        return tuple(ref for ref in self._members if (member := ref()) is not None and member is not router)

    def __iter__(self) -> Iterator[LLMRouter]:
        for ref in self._members:  # never changed: replaced
            router = ref()
            if router is not None:
                yield router


class LLMRouter:
    """The process's LiteLLM Router and the secrets behind it. Build it with :func:`build_router`.

    ``acompletion`` is duck-compatible with ``litellm.Router.acompletion`` (agno's ``LiteLLM`` model
    can use it as its client) and adds ``user_id`` and ``tags``.
    """

    _open: ClassVar[_Routers] = _Routers()
    """The routers not closed yet: a key one of them sends keeps its cached clients."""
    _built: ClassVar[_Routers] = _Routers()
    """Every router not yet garbage-collected, closed ones too: a call of a closed router may
    still be in flight (and keeps the cost-map entries it counts, :attr:`_calls_in_flight`)."""

    def __init__(
        self,
        config: RouterConfig,
        secrets: SecretsManager,
        router: _litellm.Router,
        deployments: Sequence[_Deployment],
        *,
        follow_changes: bool = True,
        tracing: Tracing | None = None,
        cost_entries_before: frozenset[str] = frozenset(),
        started_at_build: Iterable[asyncio.Task[Any]] = (),
    ) -> None:
        self.config = config
        self.tracing = tracing
        self.secrets = secrets
        self.router = router
        self._deployments = {d.id: d for d in deployments}
        self._order = tuple(self._deployments)
        """The deployment ids in the config's order: litellm's model list keeps it."""
        self._user_keys = self._user_key_references(config, secrets)
        self._users_keys = _UsersKeys(_USERS_KEYS_KEPT, self._forget_cost_entries)
        self._calls_in_flight: Counter[str] = Counter()
        """Cost-map entry ids of the calls in flight: their cost is read at their end, by their
        deployment's entry (every call's: :attr:`_deployment_entries`) or, for a call carrying a
        credential of its own, by the entry litellm adds for it."""
        self._deployment_entries = frozenset(self._deployments)
        """Its deployments' entries, counted in flight for every call: a call may be priced by any
        (litellm's fallbacks pick the group by the error)."""
        self._calls_in_flight_lock = threading.Lock()
        """Held while ``_calls_in_flight`` changes: the synchronous path may run in another thread."""
        self._groups: dict[str, tuple[str, ...]] = {}
        for deployment in deployments:
            self._groups[deployment.config.model_name] = (
                *self._groups.get(deployment.config.model_name, ()),
                deployment.id,
            )
        self._foreign_cost_entries: frozenset[str] = frozenset(
            entry
            for entry in cost_entries_before
            if not any(r._owns_cost_entry(entry) for r in LLMRouter._built)
        )
        """Its deployment ids whose cost-map entries it did not add (nor an open router, nor a
        closed one whose call still uses it): left there."""
        self._unsubscribe = secrets.on_change(self._on_secret_change) if follow_changes else None
        # Its keys are read once, at build: kept fresh, a rotation reaches it (_on_secret_change)
        # with no call of its own reading the manager
        self._releases = (
            [
                secrets.keep_fresh(provider, name=name)
                for provider, name in set().union(*(_secret_keys(d, secrets) for d in config.model_list))
            ]
            if follow_changes
            else []
        )
        self._closed = False
        self._follow_ups: set[asyncio.Task[None]] = set()
        self._started_at_build = tuple(started_at_build)
        """Tasks litellm's Router started while it was built (its Redis health ping, a strategy's
        Redis sync): those still running are stopped by :meth:`aclose`."""
        LLMRouter._open.add(self)
        LLMRouter._built.add(self)

    def __repr__(self) -> str:
        groups = ", ".join(sorted(self.config.model_names))
        return f"LLMRouter({len(self._deployments)} deployments: {groups})"

    @staticmethod
    def _user_key_references(config: RouterConfig, secrets: SecretsManager) -> dict[str, tuple[str, str]]:
        """Per model group, the (provider, field) of its api_key when every deployment shares one."""
        by_group: dict[str, set[tuple[str, str] | None]] = {}
        for deployment in config.model_list:
            by_group.setdefault(deployment.model_name, set()).add(_api_key_reference(deployment, secrets))
        return {
            group: next(iter(refs))  # type: ignore[misc]
            for group, refs in by_group.items()
            if len(refs) == 1 and None not in refs
        }

    @property
    def deployment_ids(self) -> list[str]:
        """Ids of its deployments, as configured (the withdrawn ones too)."""
        return list(self._deployments)

    @property
    def withdrawn_deployment_ids(self) -> list[str]:
        """Ids of the deployments withdrawn from the litellm Router: their credentials were removed,
        disabled or revoked in the secrets service. Each is put back when they resolve again."""
        return [deployment.id for deployment in self._deployments.values() if deployment.withdrawn]

    # -- calls ------------------------------------------------------------------------------------

    async def acompletion(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        user_id: str | None = None,
        tags: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``litellm.Router.acompletion`` through this router: per-user key, tags, one refresh and
        retry on 401, redacted errors. With ``stream=True`` returns an async iterator of chunks.
        After :meth:`aclose` raises :class:`LLMUnavailableError`."""
        _CallEnd.run_left()
        self._check_open(model)
        _register_call_secrets(kwargs)
        tags = _checked_tags(tags, f"acompletion(model={model!r})")
        if self.tracing is None:
            return await self._acompletion(model, messages, user_id, tags, kwargs)
        with self.tracing.llm_call(model) as call:
            response = await self._acompletion(model, messages, user_id, tags, kwargs)
            return call.done(response, stream=bool(kwargs.get("stream")))

    async def _acompletion(
        self,
        model: str,
        messages: list[dict[str, Any]],
        user_id: str | None,
        tags: Sequence[str] | None,
        kwargs: dict[str, Any],
    ) -> Any:
        metadata = _checked_metadata(kwargs.pop("metadata", None), f"acompletion(model={model!r})")
        if tags is not None:
            metadata["tags"] = list(tags)
        user_params = await self._user_key(model, user_id) if user_id is not None else {}
        if user_params and "api_key" in kwargs:
            # Two keys for one call (Python would refuse the duplicate keyword deep inside): which
            # one the caller meant cannot be guessed, and neither may go out in its place.
            raise ConfigurationError(
                f"acompletion(model={model!r}, user_id={user_id!r}): api_key=… was given, but that "
                "user has their own key for this model; pass api_key= or user_id=, not both "
                "(user_id alone sends the user's key)"
            )
        streamed = bool(kwargs.get("stream"))
        for attempt in range(2):
            sent_with = self._sent_with()
            # What the call's end does (its cost-map entries out of flight, clients of keys no
            # longer in use dropped): at once, or, for a stream, once it is read (litellm prices
            # a stream at its end, by the entries).
            ending: list[Callable[[], object]] = []
            response, failure = await self._attempt(
                model,
                messages=messages,
                metadata=metadata,
                user_id=user_id,
                user_params=user_params,
                kwargs=kwargs,
                ending=ending,
                sent_with=sent_with,
            )
            ending.append(partial(self._after_call, model, user_id, user_params, sent_with))
            if failure is None and streamed:
                return _stream_ending_with_call(response, model, ending)
            self._end_call(ending)
            if failure is None:
                return response
            # Outside the except block: the original (whose text may echo a key) is not chained.
            if attempt == 0 and failure.status == 401:
                if user_params and user_id is not None:
                    if await self._refresh_user_after_401(model, user_id):
                        # The lookup drops the refused key's clients if it changed.
                        user_params = await self._user_key(model, user_id)
                        continue  # the user's rotated key: retry once with it
                elif await self._refresh_after_401(model, sent_with):
                    continue  # a rotated key (or a deployment withdrawn): retry once
            raise self._withdrawn_group_failure(model, failure, kwargs)
        raise AssertionError("unreachable")

    async def _attempt(
        self,
        model: str,
        *,
        messages: list[dict[str, Any]],
        metadata: dict[str, Any],
        user_id: str | None,
        user_params: dict[str, str],
        kwargs: dict[str, Any],
        ending: list[Callable[[], object]],
        sent_with: _SentWith,
    ) -> tuple[Any, LLMError | None]:
        """One attempt of a call, started with the deployments as in ``sent_with``: its response,
        or its failure translated (not raised: the caller raises it outside any except block,
        unchained from litellm's, whose text may echo a key); what the end of each call to
        litellm does is added to ``ending``."""
        try:
            if user_params and user_id is not None and not kwargs.get("disable_fallbacks"):
                response = await self._user_call(
                    model,
                    user_params,
                    user_id=user_id,
                    messages=messages,
                    metadata=metadata,
                    kwargs=kwargs,
                    attempted=set(),
                    ending=ending,
                )
                return response, None
            call = {**user_params, **kwargs}
            ending.append(self._begin_call(model, user_id, user_params, call))
            response = await self.router.acompletion(
                model=model, messages=messages, metadata=copy.deepcopy(metadata), **call
            )
        except Exception as error:  # every litellm error is translated
            return None, _translate(error, model)
        except BaseException:  # cancelled: the call ends here
            self._end_call([*ending, partial(self._after_call, model, user_id, user_params, sent_with)])
            raise
        return response, None

    async def _user_call(
        self,
        model: str,
        user_params: dict[str, str],
        *,
        user_id: str,
        messages: list[dict[str, Any]],
        metadata: dict[str, Any],
        kwargs: dict[str, Any],
        attempted: set[str],
        ending: list[Callable[[], object]],
    ) -> Any:
        """A call carrying a user's own key, its fallbacks walked here (depth first, each group once,
        at most the Router's ``max_fallbacks`` groups) with litellm's own fallbacks disabled: litellm
        sends a per-call ``api_key`` to every fallback group, and a user's key must reach only the
        deployments it was resolved for. Each fallback group carries the user's key for *its*
        provider, or none (the deployment's own key). What the call's end does is added to
        ``ending``: a failed attempt's done at once, the answering one's left to the caller."""
        attempted.add(model)
        failure: Exception
        call = {**user_params, **kwargs, "disable_fallbacks": True}
        end = [self._begin_call(model, user_id, user_params, call)]
        try:
            response = await self.router.acompletion(
                model=model,
                messages=messages,
                metadata=copy.deepcopy(metadata),
                **call,
            )
        except BaseException as error:
            self._end_call(end)
            if not isinstance(error, Exception):  # cancelled
                raise
            failure = error
        else:
            ending.extend(end)
            return response
        for group in _litellm.fallback_groups(self.router, model, failure):
            if group in attempted:
                continue
            if len(attempted) > self.router.max_fallbacks:
                break
            logger.info("model %r failed for a user's own key; falling back to %r", model, group)
            try:
                params = await self._user_params(group, user_id)
                return await self._user_call(
                    group,
                    params,
                    user_id=user_id,
                    messages=messages,
                    metadata=metadata,
                    kwargs=kwargs,
                    attempted=attempted,
                    ending=ending,
                )
            except Exception as error:
                failure = error
        raise failure

    async def _refresh_after_401(self, model: str, sent_with: _SentWith) -> bool:
        """Refresh the router's secrets after a 401; whether a credential changed since the call
        was sent with ``sent_with`` (the params then, and whether withdrawn, by deployment id): a
        deployment withdrawn or put back counts (the retry goes to the group's others, or raises
        that they are all withdrawn). A secret that cannot be fetched now is logged, not raised:
        the caller raises the 401.

        A change notice (or another call's refresh) may have swapped the key while the call was in
        flight: this refresh then finds nothing new, and the old key's 401 has put the deployment
        back into cooldown after the swap took it out. Both count as rotated here."""
        logger.warning("model %r: key refused (401); refreshing its secrets", model)
        try:
            await self.refresh()
        except SecretsError as error:
            logger.warning("model %r: refreshing its secrets failed: %s", model, type(error).__name__)
        rotated = [d.id for d in self._deployments.values() if d.params is not sent_with[d.id][0]]
        for deployment_id in rotated:
            await self._clear_cooldown(deployment_id)
        withdrawn = [d.id for d in self._deployments.values() if d.withdrawn != sent_with[d.id][1]]
        return bool(rotated or withdrawn)

    async def _refresh_user_after_401(self, model: str, user_id: str) -> bool:
        """Fetch a user's own keys again after one was refused; whether one changed. Nothing tells
        the manager that a user rotated their key: without this the old one is used until it expires
        from the cache. A key that cannot be fetched now is logged by the manager, not raised."""
        logger.warning("model %r: a user's own key refused (401); refreshing that user's keys", model)
        changed = 0
        try:
            for provider in sorted({provider for provider, _ in self._user_keys.values()}):
                changed += await self.secrets.refresh(provider, user_id=user_id)
        except SecretsError as error:  # the manager closed first (a shutdown): the caller raises the 401
            logger.warning("model %r: refreshing a user's keys failed: %s", model, type(error).__name__)
        return changed > 0

    def completion(
        self, *, model: str, messages: list[dict[str, Any]], user_id: str | None = None, **kwargs: Any
    ) -> Any:
        """The synchronous path (agno's ``run``). No per-user keys, no refresh-and-retry, and
        litellm ignores tags here: prefer :meth:`acompletion`. After :meth:`aclose` raises
        :class:`LLMUnavailableError`. A ``user_id`` for a group that sends users' own keys is a
        :class:`ConfigurationError`: the user's key cannot be read here, and the call would go out
        on the system's.

        The call is in flight for the bookkeeping as on the async path, until it returns: a stream
        until it is read to its end or fails (litellm prices it then), or, closed early or dropped,
        until the next call (this one too), ``refresh()`` or ``aclose()`` of a router
        (:meth:`_CallEnd.hand_over`: a generator dropped part read is closed inside the garbage
        collector, in any thread and possibly in the middle of other bookkeeping)."""
        _CallEnd.run_left(sync_only=True)
        self._check_open(model)
        if user_id is not None and self._user_keys.get(model) is not None:
            raise ConfigurationError(
                f"completion(model={model!r}) for a user: this group sends users' own keys, which "
                "the synchronous path cannot read (it would send the system's); use acompletion "
                "(agno: arun)"
            )
        _register_call_secrets(kwargs)
        kwargs["metadata"] = _checked_metadata(kwargs.get("metadata"), f"completion(model={model!r})")
        ending: list[Callable[[], object]] = [
            self._begin_call(model, None, {}, kwargs),
            partial(self._after_call, model, None, {}, self._sent_with()),
        ]
        failure: LLMError
        handed_over = False
        try:
            response = self.router.completion(model=model, messages=messages, **kwargs)
        except Exception as error:
            failure = _translate(error, model)
        else:
            if not kwargs.get("stream"):
                return response
            # litellm prices a stream at its end: the call is in flight until then. A stream fails
            # while it is read: its errors are translated (and redacted) there.
            handed_over = True
            return _sync_stream_ending_with_call(response, model, ending)
        finally:
            if not handed_over:
                self._end_call(ending)
        raise self._withdrawn_group_failure(model, failure, kwargs)

    def _withdrawn_group_failure(self, model: str, failure: LLMError, kwargs: Mapping[str, Any]) -> LLMError:
        """``failure``, or, for a group whose deployments are all withdrawn (:meth:`_withdraw`),
        an :class:`LLMUnavailableError` saying so: litellm's own says "no healthy deployments",
        a 400, which reads as a bad request. litellm tries the group's fallbacks first: when it
        has some, their failure is named too."""
        group = self._groups.get(model, ())
        if not group or not all(self._deployments[deployment_id].withdrawn for deployment_id in group):
            return failure
        described = ", ".join(self._deployments[deployment_id].config.describe() for deployment_id in group)
        message = (
            f"model {model!r} cannot be called: its deployments ({described}) were withdrawn, their "
            "credentials removed, disabled or revoked in the secrets service; each is put back once "
            "its credentials resolve again"
        )
        try:
            fallbacks = (
                []
                if kwargs.get("disable_fallbacks")
                else _litellm.fallback_groups(self.router, model, failure)
            )
        except Exception as error:
            _bookkeeping_failed("reading the group's fallbacks", error)
            fallbacks = []
        if fallbacks:
            message = f"{message}; its fallbacks {fallbacks} failed too: {failure}"
        return LLMUnavailableError(message, model=model)  # litellm's status (400) is not the cause

    def _check_open(self, model: str) -> None:
        """A closed router's litellm Router is discarded (unhooked from litellm's callbacks): it
        must take no more calls."""
        if self._closed:
            raise LLMUnavailableError(
                f"model {model!r} cannot be called: the LLM router was closed: build a new one", model=model
            )

    async def _user_key(self, model: str, user_id: str) -> dict[str, str]:
        """:meth:`_user_params`, a secrets failure raised as an :class:`LLMError`."""
        failure: LLMError
        try:
            return await self._user_params(model, user_id)
        except SecretsError as error:
            kind: type[LLMError] = (
                LLMAuthenticationError
                if isinstance(error, PermissionError)
                else LLMUnavailableError
                if isinstance(error, ConnectionError)
                else LLMError
            )
            text = REDACTOR.redact(f"{type(error).__name__}: {error}")
            failure = kind(f"model {model!r} failed: the user's key cannot be read: {text}", model=model)
        raise failure

    async def _user_params(self, model: str, user_id: str) -> dict[str, str]:
        """The user's own key for the group's provider as a call parameter, or none; a key that
        differs from the one the user's calls carried before — or whose access was revoked — has
        the old one's clients dropped."""
        reference = self._user_keys.get(model)
        if reference is None:
            return {}
        try:
            key = await self.secrets.get(*reference, user_id)
        except PermissionError:  # revoked: the manager serves the key no more, nor will calls carry it
            self._note_user_key((*reference, user_id), None)
            raise
        value = None if key is None else key.reveal()
        shared = {d.params.get("api_key") for d in self._deployments.values() if d.config.model_name == model}
        if value in shared:  # the system key (user fallback configured): nothing to override
            value = None
        self._note_user_key((*reference, user_id), value)
        return {} if value is None else {"api_key": value}

    def _note_user_key(self, slot: tuple[str, str, str], key: str | None) -> None:
        """Remember the key a user's calls carry for a provider now (``None``: the deployment's);
        one that changed — rotated, say by Identity, with no 401 — has the old one's cached clients
        dropped: else they stay in litellm's cache, key included, for an hour."""
        before = self._users_keys.get(slot)
        digest = None if key is None else _litellm.key_digest(key)
        if before is not None and before.digest == digest:
            return
        if digest is None:
            self._users_keys.pop(slot, None)
        else:
            self._users_keys[slot] = _UserKey(digest)
        if before is not None:
            if before.digest != _CHANGED:
                self._drop_clients([before.digest])
            self._forget_cost_entries(before.entries)

    def _call_end(
        self,
        model: str,
        user_id: str | None,
        user_params: Mapping[str, str],
        call: Mapping[str, Any],
        entries: frozenset[str],
    ) -> None:
        """The end of one call to litellm (:meth:`_call_started`): its entries no longer in
        flight, and the user's key it carried checked (:meth:`_check_user_key_sent`)."""
        self._check_user_key_sent(model, user_id, user_params, self._call_ended(model, call, entries))

    def _sent_with(self) -> _SentWith:
        """Each deployment's params and whether it is withdrawn, as a call starting now finds them."""
        return {d.id: (d.params, d.withdrawn) for d in self._deployments.values()}

    def _after_call(
        self, model: str, user_id: str | None, user_params: Mapping[str, str], sent_with: _SentWith
    ) -> None:
        """Drop the clients a call may have built again for keys no longer in use, and the
        cost-map entries it may have added again: litellm's retries resend the key a call was
        given, and go on through a Router discarded meanwhile (:meth:`aclose`), after the key's
        clients and entries were dropped; and a call that picked a deployment before a rotation
        or a withdrawal (``sent_with``: the deployments as the call started) builds its client
        with the old params after they dropped the old clients."""
        self._check_user_key_sent(model, user_id, user_params, frozenset())
        for deployment in self._deployments.values():
            params, withdrawn = sent_with[deployment.id]
            if withdrawn:  # not sent: withdrawn already
                continue
            if deployment.withdrawn:
                self._drop_clients(_credentials(params))
            elif deployment.params is not params:
                self._drop_replaced_clients(params, deployment.params)
        if self._closed:
            self._drop_clients(self._credentials())
            self._forget_own_cost_entries()

    def _check_user_key_sent(
        self, model: str, user_id: str | None, user_params: Mapping[str, str], entries: frozenset[str]
    ) -> None:
        """After a call that carried a user's key: if the user's calls no longer carry it (it
        changed, or the router closed, while the call was in flight), drop its clients and its
        cost-map ``entries``; else remember those entries with the key. litellm retries a call
        with the key it was given, so a retry after the change notice dropped the key's clients
        builds one again, which nothing else would drop. A key no longer recorded (pushed out by
        other users', or removed) keeps its client, which may well be in use, but its entries
        go: its slot's went already, and nothing would take the call's out later."""
        key = user_params.get("api_key")
        reference = self._user_keys.get(model)
        if key is None or reference is None or user_id is None:
            return
        digest = _litellm.key_digest(key)
        slot = (*reference, user_id)
        recorded = self._users_keys.get(slot)
        if self._closed or (recorded is not None and recorded.digest != digest):
            self._drop_clients([digest])
            self._forget_cost_entries(entries)
        elif recorded is None:  # removed, revoked or pushed out while the call went on
            self._forget_cost_entries(entries)  # (none another call or router still uses)
        else:
            self._users_keys.add_entries(recorded, entries)

    def _begin_call(
        self, model: str, user_id: str | None, user_params: Mapping[str, str], call: Mapping[str, Any]
    ) -> Callable[[], None]:
        """Count a call to litellm in flight (:meth:`_call_started`); what its end does
        (:meth:`_call_end`), for :meth:`_end_call`."""
        return partial(self._call_end, model, user_id, user_params, call, self._call_started(model, call))

    def _call_started(self, model: str, call: Mapping[str, Any]) -> frozenset[str]:
        """The cost-map entries litellm adds for a call carrying a credential of its own (none
        for the others), counted in flight until :meth:`_call_ended` with the deployments'
        entries: none is removed while the call may still read its price (:meth:`aclose` while it
        runs). Bookkeeping: a failure is logged, not the call's."""
        try:
            entries = _litellm.cost_entry_ids(self.router, model, self._groups.get(model, ()), call)
        except Exception as error:
            _bookkeeping_failed("working out a call's cost-map entries", error)
            entries = frozenset()
        with self._calls_in_flight_lock:
            self._calls_in_flight.update(entries | self._deployment_entries)
        return entries

    @staticmethod
    def _end_call(ending: Iterable[Callable[[], object]]) -> None:
        """Run what a call's end does (:meth:`_call_ended`, :meth:`_after_call`…), each step on its
        own: bookkeeping that fails (litellm's internals moved, say) is logged and the rest goes
        on; it never fails the call, which the provider has answered (and billed) by then."""
        for step in ending:
            try:
                step()
            except Exception as error:
                _bookkeeping_failed("the end of a call (litellm's client cache and cost map)", error)

    def _call_ended(self, model: str, call: Mapping[str, Any], entries: frozenset[str]) -> frozenset[str]:
        """The call's entries (:meth:`_call_started`, and those of a retry after a rotation
        rewrote the deployment's params), no longer in flight. A closed router's entries no other
        call uses leave litellm's map in the same step, under the lock :meth:`_owns_cost_entry`
        reads under: a synchronous call ends in its caller's thread, and a router built from the
        same config on the event loop in between found them there owned by nobody, kept them as
        another owner's, and this router's end kept them too (the new router uses them)."""
        with self._calls_in_flight_lock:
            counted = entries | self._deployment_entries
            self._calls_in_flight.subtract(counted)
            for entry in counted:
                if self._calls_in_flight[entry] <= 0:
                    del self._calls_in_flight[entry]
            if self._closed:
                try:
                    self._forget_own_cost_entries()
                except Exception as error:
                    _bookkeeping_failed("removing a closed router's cost-map entries", error)
        if not entries:
            return entries
        return entries | _litellm.cost_entry_ids(self.router, model, self._groups.get(model, ()), call)

    # -- rotation ---------------------------------------------------------------------------------

    async def refresh(self) -> int:
        """Fetch the deployments' secrets again and swap every changed credential now; returns how
        many deployments changed (withdrawn or put back included).

        Only the system's secrets of the providers the deployments use are fetched (never users'
        keys, never other providers'). A secret that is gone (removed, disabled or revoked) has its
        deployment withdrawn (:meth:`_withdraw`); one that cannot be fetched is logged and its
        deployment left as it is; the others are still refreshed. After :meth:`aclose` raises
        :class:`LLMUnavailableError`."""
        _CallEnd.run_left()
        if self._closed:  # its litellm Router is discarded: nothing to swap keys into
            raise LLMUnavailableError("refresh(): the LLM router was closed: build a new one")
        before = {d.id: (d.params, d.withdrawn) for d in self._deployments.values()}
        providers = sorted(set().union(*(d.providers for d in self._deployments.values())))
        for provider in providers:  # change notices update what changed...
            await self.secrets.refresh(provider, user_id=None)
        for deployment in list(self._deployments.values()):
            await self._update_or_log(deployment)  # ...and this catches sources that send none
        # withdrawn or put back counts, its key changed or not
        return sum((d.params, d.withdrawn) != before[d.id] for d in self._deployments.values())

    async def _on_secret_change(self, change: SecretChange) -> None:
        if self._closed:
            return
        if change.key.user_id is not None:
            self._user_key_changed(change)
            return
        for deployment in list(self._deployments.values()):
            if change.key.provider in deployment.providers:
                # The notice may come from a fetch that an update of this deployment is waiting
                # for: waiting for that update here would wait for ever.
                await self._update_or_log(deployment, wait=False)

    def _user_key_changed(self, change: SecretChange) -> None:
        """A user's key the calls carried changed in the manager (its refresh, ahead of expiry or
        after a 401): drop the old key's cached clients now; the user's next call looks the new
        one up. Read no value here: the notice comes from within the manager's fetch, which a
        lookup could wait for. A call that looked the new key up between that fetch and this
        notice loses its client at worst (built again on its next call)."""
        if change.key.name is not None or change.key.user_id is None:
            return  # per-user keys are looked up unnamed
        old = []
        for name in change.fields:
            slot = (change.key.provider, name, change.key.user_id)
            before = self._users_keys.get(slot)
            if before is not None:
                old.append(before.digest)
                self._users_keys[slot] = _UserKey(_CHANGED)  # a call in flight with the old key sees it
                self._forget_cost_entries(before.entries)
        self._drop_clients(digest for digest in old if digest != _CHANGED)

    async def _update_or_log(self, deployment: _Deployment, *, wait: bool = True) -> None:
        """:meth:`_update`; a secret that is gone has withdrawn the deployment (logged there), one
        that cannot be resolved leaves the deployment as it is (withdrawn or not) and is logged (its
        error names the deployment and the field, never a value) once, not again on every refresh
        or change notice while it fails the same way; its recovery is logged too."""
        try:
            await self._update(deployment, wait=wait)
        except SecretsError as error:
            failure = f"{type(error).__name__}: {error}"
            if failure != deployment.failing:
                deployment.failing = failure
                left = "left withdrawn" if deployment.withdrawn else "left as they were"
                logger.warning("refreshing the credentials failed, %s: %s", left, failure)
        else:
            if deployment.failing is not None:
                deployment.failing = None
                logger.info("the credentials of %s resolve again", deployment.config.describe())

    async def _update(self, deployment: _Deployment, *, wait: bool = True) -> bool:
        """Resolve the deployment's params again and write them into the Router if they changed;
        whether this call wrote them.

        Updates of one deployment run one at a time, each resolving after the one before has
        written, so a key resolved earlier is never written over one resolved later. An update asked
        for while another is under way makes that one resolve again before it ends; with ``wait``
        it also waits for its turn, else it returns at once and leaves the work to that one (or,
        should that one be cancelled or fail first, to an update in the background)."""
        deployment.stale = True
        if not wait and deployment.waiting:
            return False
        deployment.waiting += 1
        try:
            async with deployment.lock:
                changed = False
                while deployment.stale:
                    deployment.stale = False
                    changed = await self._write(deployment) or changed
                return changed
        except BaseException:
            # Cancelled or failed with an update still asked for (a change notice left it to this
            # one) and nobody else waiting to do it: done in the background, not lost.
            if deployment.stale and deployment.waiting == 1 and not self._closed:
                task = asyncio.create_task(self._update_or_log(deployment))
                self._follow_ups.add(task)
                task.add_done_callback(self._follow_ups.discard)
            raise
        finally:
            deployment.waiting -= 1

    async def _write(self, deployment: _Deployment) -> bool:
        """Resolve the deployment's params and write them into the Router if they changed, or if
        it was withdrawn (put back); whether it did. A credential that is gone withdraws it
        (:meth:`_withdraw`) before the error is raised."""
        try:
            params = await _resolve(
                deployment.config, deployment.position, self.secrets, resolved_before=deployment.params
            )
        except _GONE as error:
            if not self._closed:
                self._withdraw(deployment, f"{type(error).__name__}: {error}")
            raise
        if (params == deployment.params and not deployment.withdrawn) or self._closed:
            # Closed meanwhile: its litellm Router is discarded, and an upsert there would register
            # the deployment's cost-map entry again, after aclose() removed it.
            return False
        _litellm.upsert(
            self.router,
            deployment.config.model_name,
            params,
            {**deployment.config.model_info, "id": deployment.id},
            order=self._order,
        )
        before, deployment.params = deployment.params, params
        if deployment.withdrawn:
            deployment.withdrawn, deployment.failing = False, None
            logger.info(
                "put %s back into the router: its credentials resolve again", deployment.config.describe()
            )
        else:
            logger.info("rotated the credentials of %s", deployment.config.describe())
        self._drop_replaced_clients(before, params)
        await self._clear_cooldown(deployment.id)
        return True

    def _drop_replaced_clients(self, before: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        """Drop the cached clients of a deployment's params ``before`` that its ``params`` no
        longer send (unless an open router still sends them: :meth:`_drop_clients`)."""
        self._drop_clients(_credentials(before) - _credentials(params))
        # A setting that moved (api_base…) with a credential kept: that credential's clients of the
        # old value, and those its users' keys built through it, are named by a value no call sends.
        kept = (_credentials(before) & _credentials(params)) | self._users_digests()
        for name in _CLIENT_SETTINGS:
            value = before.get(name)
            if isinstance(value, str) and value != params.get(name):
                self._drop_clients(kept, built_with=(name, value))

    def _withdraw(self, deployment: _Deployment, failure: str) -> None:
        """Take a deployment whose credentials are gone out of the litellm Router, so that calls
        and litellm's fallbacks go to the group's other deployments, and drop its credentials'
        cached clients (unless an open router still sends them): logged once, naming the
        deployment and the error (never a value). Its params stay, to compare the next value
        with; its cost-map entry stays until :meth:`aclose` (a call in flight, which finishes as
        it is, may still be priced by it). The manager keeps its secrets fresh: a change notice or
        :meth:`refresh` puts it back once they resolve again (:meth:`_write`). litellm failing to
        take it out is logged, and it is tried again at the next update."""
        if deployment.withdrawn:
            return
        try:
            _litellm.withdraw(self.router, deployment.id)
        except Exception as error:
            _bookkeeping_failed(f"withdrawing {deployment.config.describe()}", error)
            return
        deployment.withdrawn, deployment.failing = True, failure
        logger.warning(
            "withdrew %s from the router: its credentials were removed, disabled or revoked in the "
            "secrets service; calls go to its group's other deployments, and it is put back once "
            "they resolve again: %s",
            deployment.config.describe(),
            failure,
        )
        self._drop_clients(_credentials(deployment.params))

    async def _clear_cooldown(self, deployment_id: str) -> None:
        """Take a deployment out of cooldown. A failure — the shared cooldown store (Redis) down —
        is logged, not raised: the key is swapped all the same, and the cooldown ends by itself."""
        try:
            await _litellm.clear_cooldown(self.router, deployment_id)
        except Exception as error:
            _bookkeeping_failed(f"taking deployment {deployment_id!r} out of cooldown", error)

    def _drop_clients(self, digests: Iterable[str], *, built_with: tuple[str, str] | None = None) -> None:
        """Drop litellm's cached SDK clients of these credentials (by :func:`_litellm.key_digest`:
        a key, an Azure AD token…) unless an open router still sends one, in a deployment's params
        (not a withdrawn one's) or as a user's key (:func:`_litellm.drop_clients`): else each key
        rotated away keeps a client — with the key and its pooled connections — for an hour, up
        to the 200 entries of litellm's cache. With ``built_with`` (a setting of
        :data:`_CLIENT_SETTINGS` and its value), only their clients built with that value, unless
        an open router's deployment with that value still sends the credential (or has users
        whose key it is)."""
        stale = set(digests)
        if not stale:
            return
        for router in LLMRouter._open:
            deployments = [
                deployment
                for deployment in router._deployments.values()
                if not deployment.withdrawn
                and (built_with is None or deployment.params.get(built_with[0]) == built_with[1])
            ]
            for deployment in deployments:
                stale -= _credentials(deployment.params)
            if deployments:  # a user's key goes through its router's deployments
                stale -= router._users_digests()
        if stale:
            dropped = _litellm.drop_clients(stale, built_with=built_with)
            logger.debug("dropped %d cached LLM client(s) no longer in use", dropped)

    def _users_digests(self) -> set[str]:
        """The digests of the users' keys its calls carry (:attr:`_users_keys`)."""
        return {user_key.digest for user_key in _unordered_values(self._users_keys)} - {_CHANGED}

    def _forget_cost_entries(self, ids: Iterable[str], *, derived_from: Iterable[str] = ()) -> None:
        """Take these entries out of litellm's cost map (and those of the per-call credentials sent
        through the deployments ``derived_from``: :func:`_litellm.forget_cost_entries`), but none
        an open router still uses: a deployment of its, a user's key it remembers, a call in flight
        (this router's too). Else each distinct key a call carried, and each router built, leaves
        an entry there for the life of the process."""
        ids, origins = set(ids), set(derived_from)
        if not ids and not origins:
            return
        removed = _litellm.forget_cost_entries(ids, derived_from=origins, in_use=self._cost_entry_in_use)
        if removed:
            logger.debug("removed %d litellm cost-map entr(ies) no longer in use", removed)

    def _owns_cost_entry(self, entry: str) -> bool:
        """Whether a deployment's cost-map entry is this router's (it added it), and it still
        holds it: open, or closed with a call in flight that uses it (:meth:`aclose` left it)."""
        if entry not in self._deployments or entry in self._foreign_cost_entries:
            return False
        with self._calls_in_flight_lock:  # a call that ends removes the entries it leaves at once
            return not self._closed or entry in self._calls_in_flight

    def _cost_entry_in_use(self, entry: str) -> bool:
        """Whether a cost-map entry is in use: one it did not add (:attr:`_foreign_cost_entries`),
        one of a router's calls in flight (a closed router's too), or an open router's deployment
        or user's key (:attr:`_UsersKeys.in_use`)."""
        if entry in self._foreign_cost_entries or entry in self._calls_in_flight:
            return True
        if any(entry in router._calls_in_flight for router in LLMRouter._built):
            return True
        return any(
            entry in router._deployments or entry in router._users_keys.in_use for router in LLMRouter._open
        )

    def _forget_own_cost_entries(self) -> None:
        """Its deployments' entries and those of every per-call credential sent through them."""
        self._forget_cost_entries(
            self._deployments.keys() - self._foreign_cost_entries, derived_from=self._deployments
        )

    def _credentials(self) -> set[str]:
        """The digests of its deployments' credentials (:func:`_credentials`)."""
        return set().union(*(_credentials(deployment.params) for deployment in self._deployments.values()))

    async def cooled_down(self) -> list[str]:
        """Ids of the deployments in cooldown now."""
        return await _litellm.cooled_down(self.router)

    async def aclose(self) -> None:
        """Stop following secret changes, unhook the Router from litellm's globals, drop litellm's
        cached clients of its keys and of the users' own keys its calls carried (unless another
        open router sends them) and remove its deployments' entries from litellm's cost map, with
        those of the per-call keys sent through them (unless another open router uses them); from
        then on every call raises
        :class:`LLMUnavailableError` ("the LLM router was closed")."""
        _CallEnd.run_left()  # streams dropped where their end could not run: theirs first
        if self._closed:
            return
        self._closed = True
        LLMRouter._open.discard(self)
        if self._unsubscribe is not None:
            self._unsubscribe()
        for release in self._releases:
            release()
        for task in list(self._follow_ups):
            task.cancel()
        try:
            await asyncio.gather(*self._follow_ups, return_exceptions=True)
        finally:  # cancelled while waiting (a shutdown's timeout): the next aclose() returns at once
            self._drop_clients(self._credentials() | self._users_digests())  # fallback groups' too
            self._users_keys.clear()
            # out of litellm's replay of live Routers' entries too; its last usage writes started
            last_writes = _litellm.discard(self.router)
            self._forget_own_cost_entries()
            await self._close_redis(last_writes)

    async def _close_redis(self, last_writes: Iterable[asyncio.Task[Any]]) -> None:
        """Close the Redis connections litellm opened for the Router's shared state (a
        ``redis_url``), but the async client's while another open router shares it
        (:func:`_litellm.close_redis`); a failure is logged, not raised.

        First the tasks litellm started at build that still run are cancelled (its health ping,
        a strategy's periodic Redis sync), and those its retirement started (``last_writes``: the
        usage not yet written to Redis) are waited for, up to :data:`_LAST_WRITES_WAIT`: a
        connection in use is left to its command, and went back to the pool open after it."""
        running = [task for task in self._started_at_build if not task.done()]
        self._started_at_build = ()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        writing = set(last_writes)
        for task in writing:
            task.add_done_callback(_litellm_task_ended)
        if writing:
            await asyncio.wait(writing, timeout=_LAST_WRITES_WAIT)
        try:
            await _litellm.close_redis(self.router, shared_with=[router.router for router in LLMRouter._open])
        except Exception as error:
            _bookkeeping_failed("closing litellm's Redis clients", error)

    async def __aenter__(self) -> LLMRouter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _credentials(params: Mapping[str, Any]) -> set[str]:
    """The :func:`_litellm.key_digest` of every credential in resolved params (``api_key``,
    ``azure_ad_token``, ``client_secret``…: :func:`literal_credentials`), as litellm's client
    cache names them."""
    return {_litellm.key_digest(credential) for credential in literal_credentials(params)}


def _bookkeeping_failed(what: str, error: Exception) -> None:
    """One WARNING line for bookkeeping around a call that failed: the message masked, no
    traceback (it could quote a call's arguments, a key among them)."""
    logger.warning("%s failed: %s: %s", what, type(error).__name__, redact_text(str(error)))


class _CallEnd:
    """A streamed call's end (:meth:`LLMRouter._end_call`), run once: when its stream is read,
    closed or dropped part read (the stream's ``finally``), or when the stream is garbage-collected
    unstarted (an async generator never iterated runs no ``finally``; its call would stay counted
    in flight, and its cost-map entries in litellm's map, for ever). The finalizer runs in whatever
    thread collects the stream, possibly in the middle of other bookkeeping, where the end cannot
    run: it hands the end to the stream's event loop (thread-safe), or, that loop closed
    (``asyncio.run`` returned), leaves it in :attr:`left`, which the next call, ``refresh()`` or
    ``aclose()`` of any router runs (:meth:`run_left`). (A loop that closes between the two, the
    end handed over but not yet run, drops it: the call stays in flight.) For a stream
    dropped part read it runs too, before the stream's ``finally`` (CPython clears weak
    references before an async generator's finalizer brings it back to close it): the call then
    ends while litellm's stream is being closed, which prices nothing; whichever runs second does
    nothing."""

    left: ClassVar[deque[_CallEnd]] = deque()
    """Ends of async calls handed over (``deque.append`` is atomic: safe inside the collector), run
    from an event loop: they update the users' keys a router records, which its loop owns."""
    left_sync: ClassVar[deque[_CallEnd]] = deque()
    """Ends of the synchronous ``completion()``'s streams handed over: what they do runs in any
    thread, as ``completion()``'s own end does, so ``completion()`` runs them too (a host that
    makes no async call would otherwise pile them up)."""

    def __init__(self, ending: list[Callable[[], object]], *, sync: bool = False) -> None:
        self._once = [ending]
        """``list.pop`` is atomic: the end runs once, whichever thread runs it first."""
        self._dropped: weakref.finalize[..., Any] | None = None
        self._queue = _CallEnd.left_sync if sync else _CallEnd.left

    def follow(self, stream: object, loop: asyncio.AbstractEventLoop | None) -> None:
        """End the call when ``stream`` is garbage-collected, if nothing did before: on ``loop``
        if it still runs, else at the next call of a router (:attr:`left`)."""
        self._dropped = weakref.finalize(stream, _CallEnd._hand_over, loop, self)
        self._dropped.atexit = False  # at exit the loop is gone: nothing to end

    def __call__(self) -> None:
        if self._dropped is not None:
            self._dropped.detach()
        try:
            ending = self._once.pop()
        except IndexError:  # ended already
            return
        LLMRouter._end_call(ending)

    def hand_over(self) -> None:
        """Leave the end to the next call of a router (:attr:`left`): where it is, it may not run
        (a synchronous stream closed early, maybe by the garbage collector)."""
        if self._dropped is not None:
            self._dropped.detach()
        if self._once:
            self._queue.append(self)

    @staticmethod
    def _hand_over(loop: asyncio.AbstractEventLoop | None, end: _CallEnd) -> None:
        if loop is not None:
            try:  # on the loop of the stream's call, which owns the router's records
                loop.call_soon_threadsafe(end)
            except RuntimeError:  # the loop closed: nothing runs there any more
                pass
            else:
                return
        end._queue.append(end)

    @staticmethod
    def run_left(*, sync_only: bool = False) -> None:
        """Run the ends left (:attr:`left_sync`, and :attr:`left` unless ``sync_only``), from a
        call, ``refresh()`` or ``aclose()``."""
        for queue in (_CallEnd.left_sync,) if sync_only else (_CallEnd.left_sync, _CallEnd.left):
            while True:
                try:
                    end = queue.popleft()
                except IndexError:
                    break
                end()


def _stream_ending_with_call(
    stream: Any, model: str, ending: list[Callable[[], object]]
) -> AsyncIterator[Any]:
    """:func:`_translated_stream`, the call's ``ending`` run once it is read, closed or dropped,
    started or not (:class:`_CallEnd`)."""
    end = _CallEnd(ending)
    translated = _translated_stream(stream, model, on_end=end)
    end.follow(translated, asyncio.get_running_loop())
    return translated


async def _translated_stream(stream: Any, model: str, *, on_end: Callable[[], None]) -> AsyncIterator[Any]:
    """The stream, its errors translated; ``on_end`` once it is read, closed or dropped part read
    (only: see :class:`_CallEnd` for one never iterated)."""
    failure: LLMError | None = None
    try:
        async for chunk in stream:
            yield chunk
    except Exception as error:
        failure = _translate(error, model)
    finally:
        try:
            # A consumer that stops early closes only this wrapper: litellm's stream holds the
            # HTTP response (and its pooled connection) until its own aclose().
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        finally:
            on_end()
    if failure is not None:
        raise failure


def _sync_stream_ending_with_call(
    stream: Any, model: str, ending: list[Callable[[], object]]
) -> Iterator[Any]:
    """:func:`_translated_sync_stream`, the call's ``ending`` run once it is read, or left to the
    next call of a router (:meth:`_CallEnd.hand_over`) once it is closed early or dropped, read in
    part or not at all."""
    end = _CallEnd(ending, sync=True)
    translated = _translated_sync_stream(stream, model, end)
    end.follow(translated, None)
    return translated


def _translated_sync_stream(stream: Any, model: str, end: _CallEnd) -> Iterator[Any]:
    """The stream, its errors translated; ``end`` run where it is read to its end or fails (in
    the reader's ``next()``), else handed over: a generator dropped part read is closed inside the
    garbage collector, in any thread and possibly in the middle of other bookkeeping."""
    failure: LLMError | None = None
    read = False
    try:
        yield from stream
        read = True
    except Exception as error:
        failure = _translate(error, model)
        read = True
    finally:
        try:
            close = getattr(stream, "close", None)  # a consumer that stops early: release the response
            if close is not None:
                close()
        finally:
            if read:
                end()
            else:
                end.hand_over()
    if failure is not None:
        raise failure


def _translate(error: BaseException, model: str) -> LLMError:
    """A library error for a litellm one, its text redacted; raised outside the ``except`` block so
    the original (whose message may echo a key) is not attached as context."""
    status = _litellm.status_of(error)
    text = REDACTOR.redact(f"{type(error).__name__}: {error}")
    if len(text) > _MESSAGE_LIMIT:
        text = f"{text[: _MESSAGE_LIMIT - 3]}..."
    message = f"model {model!r} failed: {text}"
    name = type(error).__name__
    kind: type[LLMError]
    if "ContextWindowExceeded" in name or (
        status is not None and 400 <= status < 500 and status not in {401, 403, 408, 429}
    ):
        kind = LLMRequestError
    elif status in {401, 403} or "Authentication" in name or "PermissionDenied" in name:
        kind = LLMAuthenticationError
    elif status == 429 or "RateLimit" in name:
        kind = LLMRateLimitError
    elif status == 408 or "Timeout" in name:
        kind = LLMTimeoutError
    elif status is None and isinstance(error, ValueError):  # e.g. litellm's tag configuration errors
        kind = LLMRequestError
    elif status is None or status >= 500 or "APIConnection" in name or "ServiceUnavailable" in name:
        kind = LLMUnavailableError
    else:
        kind = LLMError
    return kind(message, status=status, model=model)
