"""``SecretsManager``: cached, single-flight, stale-if-error access to secrets, and references.

A cache entry holds the values of one secret — per (provider, user, name) — with three deadlines:
*fresh* (``ttl``; ``negative_ttl`` for "no such secret"), then *stale but servable* while the
sources fail (``stale_grace`` more), then gone. Concurrent misses of one key share one fetch. Keys
used since they were fetched are refreshed ahead of expiry by a background task that lives as long
as the manager (``async with manager:``), and ``on_change`` listeners hear when values change.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import inspect
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Self, TypeAlias

from cachetools import TTLCache

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import REDACTOR, redact_text
from dynamic_agents._validation import a_type, check_callable, check_count, check_flag, check_seconds, shown
from dynamic_agents.exceptions import (
    ConfigurationError,
    IdentityError,
    IdentityForbiddenError,
    IdentityRateLimitedError,
    SecretNotFoundError,
    SecretsError,
    SecretsUnavailableError,
)
from dynamic_agents.secrets.client import IdentityClient, TokenProvider
from dynamic_agents.secrets.references import (
    ENV_SECRETS,
    EnvReference,
    SecretReference,
    check_env_mapping,
    parse_reference,
    shown_part,
)
from dynamic_agents.secrets.sources import (
    ChainSource,
    EnvironmentSource,
    IdentitySource,
    SecretKey,
    SecretSource,
    StaticSource,
    env_secret,
)
from dynamic_agents.secrets.values import SecretValue

__all__ = ["SecretChange", "SecretsManager", "SecretsStats", "reveal_all"]

logger = get_logger("secrets")

_CacheKey: TypeAlias = tuple[str, str | None, str | None]  # provider, user_id, name
_SLOW = "a fetch slower than stale_wait"  # what an entry is served for (_Entry.failing)
ChangeListener: TypeAlias = Callable[["SecretChange"], Awaitable[None] | None]


class _Every(Enum):
    USER = "every user"


@dataclass(frozen=True, slots=True)
class SecretChange:
    """A cached secret's values changed (rotation, new or removed fields, deletion, or access
    revoked: a ``403`` drops the value, a change of every field it had).

    ``fields`` names what changed; values are never part of a change notice.
    """

    key: SecretKey
    fields: frozenset[str]


@dataclass(slots=True)
class SecretsStats:
    hits: int = 0
    misses: int = 0
    fetches: int = 0
    stale_served: int = 0
    refreshes: int = 0
    errors: int = 0


@dataclass(slots=True)
class _Kept:
    """A key :meth:`SecretsManager.keep_fresh` keeps: how many holders, and its entry last seen
    (the cache forgets it past its stale grace; a rotation is still told against this)."""

    holders: int
    last: _Entry | None
    failures: int = 0
    """Refreshes failed in a row (an error, or "no such secret"): each waits twice as long as the
    one before, from ``error_retry`` up to ``ttl``; the first is a WARNING, the same again DEBUG."""
    failing: str | None = None  # what the last one failed with
    retry_at: float = float("-inf")  # no refresh before


@dataclass(slots=True)
class _Entry:
    values: Mapping[str, SecretValue] | None
    fetched_at: float
    fresh_until: float
    stale_until: float
    last_used: float
    retry_at: float = float("-inf")
    """After a failed fetch: when the source may be asked again (``error_retry``, or a server's
    ``Retry-After``); the refresh ahead of expiry waits for it too."""
    failing: str | None = None
    """What the fetches of the key fail with (or ``_SLOW``) while this value is served in their
    place: the first failure is a WARNING, the same again DEBUG, a fetch that succeeds again INFO."""


class SecretsManager:
    """Secrets by provider and field, cached, for the system or for one user.

    * ``get`` returns a masked :class:`SecretValue`, or ``None`` only when the sources answered that
      there is no such secret (or field); when they cannot answer and nothing usable is cached it
      raises :class:`SecretsUnavailableError`. ``require`` raises :class:`SecretNotFoundError` instead
      of returning ``None``.
    * A user's lookup never falls back to another user's secret, and to the system's only with
      ``user_fallback_to_system=True``.
    * ``ttl``: how long a value is fresh; ``negative_ttl``: how long "no such secret" is believed;
      ``stale_grace``: how long past freshness a value is still served while the sources fail;
      ``refresh_ahead``: how long before expiry keys in use are refreshed, checked every
      ``refresh_interval`` (default: half of ``refresh_ahead``, at least 0.5 s); ``error_retry``:
      while serving stale, how long to wait before asking the failing source again. All are
      seconds, ``ttl`` and ``refresh_interval`` > 0, the others >= 0 (``negative_ttl=0``: "no such
      secret" is not cached), finite but for ``ttl``, ``negative_ttl`` and ``stale_grace``, which
      may be ``math.inf`` (forever); a bad one is a :class:`ConfigurationError`.
    """

    def __init__(
        self,
        source: SecretSource,
        *,
        ttl: float = 300.0,
        negative_ttl: float = 30.0,
        stale_grace: float = 600.0,
        refresh_ahead: float = 30.0,
        error_retry: float = 5.0,
        stale_wait: float = 1.0,
        refresh_interval: float | None = None,
        max_size: int = 1024,
        user_fallback_to_system: bool = False,
        env_mapping: Mapping[str, tuple[str, str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # 0 has a meaning where accepted: "no such secret" not cached, no stale grace, no refresh
        # ahead of expiry, no pause before asking a failing source again; so has math.inf where
        # accepted: fresh forever (never fetched again), served forever while the sources fail.
        if not isinstance(source, SecretSource):  # else the first lookup fails: no fetch()
            raise ConfigurationError(
                "source must be a SecretSource (EnvironmentSource, IdentitySource, StaticSource, "
                f"ChainSource or a subclass of your own), got {a_type(source)}"
            )
        ttl = check_seconds("ttl", ttl, forever=True)
        negative_ttl = check_seconds("negative_ttl", negative_ttl, zero=True, forever=True)
        stale_grace = check_seconds("stale_grace", stale_grace, zero=True, forever=True)
        refresh_ahead = check_seconds("refresh_ahead", refresh_ahead, zero=True)
        error_retry = check_seconds("error_retry", error_retry, zero=True)
        stale_wait = check_seconds("stale_wait", stale_wait, zero=True, forever=True)
        refresh_interval = check_seconds("refresh_interval", refresh_interval, optional=True)
        max_size = check_count("max_size", max_size, minimum=1)
        check_flag("user_fallback_to_system", user_fallback_to_system)
        check_callable("clock", clock, "a callable returning seconds (time.monotonic)")
        self.source = source
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_wait = stale_wait
        self.stale_grace = stale_grace
        self.refresh_ahead = min(refresh_ahead, ttl / 2)
        self.error_retry = error_retry
        self.refresh_interval = (
            refresh_interval if refresh_interval is not None else max(self.refresh_ahead / 2, 0.5)
        )
        self.user_fallback_to_system = user_fallback_to_system
        self.env_mapping = {**ENV_SECRETS, **check_env_mapping(env_mapping or {})}
        self.stats = SecretsStats()
        self._clock = clock
        self._cache: TTLCache[_CacheKey, _Entry] = TTLCache(
            maxsize=max_size, ttl=max(ttl, negative_ttl) + stale_grace, timer=clock
        )
        self._inflight: dict[_CacheKey, asyncio.Task[_Entry]] = {}
        self._orphaned: set[asyncio.Task[_Entry]] = set()  # fetches started before an invalidate()
        # With nothing cached to serve: until when a rate-limited source asked not to be asked
        # again for the key (its Retry-After), and what it said
        self._held: dict[_CacheKey, tuple[float, Exception]] = {}
        self._fetch_began: dict[asyncio.Task[_Entry], float] = {}  # by fetch in flight: when (clock)
        self._listeners: list[ChangeListener] = []
        self._kept: dict[_CacheKey, _Kept] = {}  # keys holders of their values keep fresh
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_env(cls, *, env_mapping: Mapping[str, tuple[str, str]] | None = None, **settings: Any) -> Self:
        """Secrets from environment variables only: the embedded default."""
        mapping = check_env_mapping(env_mapping or {})
        _check_settings("from_env", settings)
        return cls(EnvironmentSource({**ENV_SECRETS, **mapping}), env_mapping=mapping, **settings)

    @classmethod
    def from_identity(
        cls,
        url: str,
        token: TokenProvider,
        *,
        env_fallback: bool = False,
        client_options: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> Self:
        """Secrets from A8N Identity (``client_options`` go to :class:`IdentityClient`).

        With ``env_fallback=True`` the environment answers when Identity cannot.
        """
        check_flag("env_fallback", env_fallback)
        options = _client_options(client_options)
        _check_settings("from_identity", settings)
        # The manager's settings are checked first, by building it: the client opens an HTTP
        # client, which a bad setting raised afterwards would leave open with nobody to close it.
        manager = cls(StaticSource({}), **settings)
        source: SecretSource = IdentitySource(IdentityClient(url, token=token, **options))
        if env_fallback:
            source = ChainSource(source, EnvironmentSource(manager.env_mapping))
        manager.source = source
        return manager

    def __repr__(self) -> str:
        return f"SecretsManager({self.source!r}, cached={len(self._cache)})"

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start refreshing keys in use ahead of their expiry (``async with`` does this)."""
        if self._closed:
            raise SecretsUnavailableError("the secrets manager was closed: create a new one")
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_loop(self.refresh_interval), name="dynamic-agents-secrets-refresh"
            )

    async def aclose(self) -> None:
        """Stop refreshing, end the fetches under way and close the source; from then on every
        read raises :class:`SecretsUnavailableError`."""
        self._closed = True
        # Called from a change listener, it runs inside a fetch (where listeners are called):
        # that one is left to end, after this, as it would — cancelled and waited for, it waited
        # for itself, and so did whatever was waiting for it.
        current = asyncio.current_task()
        if self._refresher is not None:
            if self._refresher is not current:
                self._refresher.cancel()
                await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        tasks = [task for task in (*self._inflight.values(), *self._orphaned) if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.source.aclose()

    # -- reading ----------------------------------------------------------------------------------

    async def get(
        self, provider: str, field: str, user_id: str | None = None, *, name: str | None = None
    ) -> SecretValue | None:
        """The field of the provider's secret (the user's, or the system's), or ``None``."""
        key = (provider, user_id, name)
        if self._closed:
            raise _closed_error(key)
        try:
            entry: _Entry | None = self._cache[key]  # 3x faster than TTLCache.get on the hit path
        except KeyError:
            entry = None
        except TypeError:  # unhashable: a list for a user id
            _check_lookup("get", provider, field, user_id, name)
            raise
        now = self._clock()
        if entry is not None and now < entry.fresh_until:
            self.stats.hits += 1
            entry.last_used = now
        else:
            # Checked before a fetch (a key cached passed it), not on the hit path: a user id of
            # 12345 matched no secret of the user "12345", and fell back to the system's.
            _check_lookup("get", provider, field, user_id, name)
            entry = await self._load_or_stale(key, entry, now)
            if entry.fetched_at < now:  # served from before this read (stale while the sources
                entry.last_used = now  # fail): a use, so it is refreshed ahead of expiry too
        try:
            value = entry.values.get(field) if entry.values is not None else None
        except TypeError:  # unhashable: a list for a field, on a cache hit
            _check_lookup("get", provider, field, user_id, name)
            raise
        if value is None:  # a field of None or "" named no field of a secret cached
            _check_lookup("get", provider, field, user_id, name)
        if value is None and user_id is not None and self.user_fallback_to_system:
            return await self.get(provider, field, None, name=name)
        return value

    async def require(
        self, provider: str, field: str, user_id: str | None = None, *, name: str | None = None
    ) -> SecretValue:
        """Like :meth:`get`, but raises :class:`SecretNotFoundError` for a missing secret or field."""
        value = await self.get(provider, field, user_id, name=name)
        if value is None:
            raise SecretNotFoundError(
                f"no secret field {shown_part(field)!r} for {SecretKey(provider, user_id, name)}: "
                "create it in Identity, or check the provider and field names"
            )
        return value

    async def resolve(self, reference: str, *, user_id: str | None = None) -> SecretValue:
        """The value a reference stands for (see :mod:`dynamic_agents.secrets.references`).

        A plain value comes back wrapped as it is. A missing secret raises
        :class:`SecretNotFoundError`; sources that cannot answer, :class:`SecretsUnavailableError`.
        """
        parsed = parse_reference(reference)
        if parsed is None:
            return SecretValue(reference)
        if isinstance(parsed, SecretReference):
            return await self.require(parsed.provider, parsed.field, user_id, name=parsed.name)
        return await self._resolve_env(parsed, user_id)

    async def _resolve_env(self, reference: EnvReference, user_id: str | None) -> SecretValue:
        mapped = self.env_mapping.get(reference.variable)
        if mapped is not None:
            try:
                return await self.require(*mapped, user_id)
            except SecretNotFoundError as error:
                # the variable may well be set: say why it was not read, and which reference failed
                provider, field = map(shown_part, mapped)
                raise SecretNotFoundError(
                    f"{reference} stands for {provider} / {field} in the secret sources (env_mapping), "
                    f"not the environment: {error}"
                ) from None
        value = os.environ.get(reference.variable)
        if not value:
            raise SecretNotFoundError(
                f"environment variable {shown_part(reference.variable)!r} is not set, and no secret "
                "is mapped to it (add it to env_mapping to read it from the secret sources)"
            )
        return env_secret(reference.variable, value)

    async def resolve_all(self, data: Any, *, user_id: str | None = None, where: str | None = None) -> Any:
        """A copy of nested dicts / lists / tuples with every reference string resolved.

        Plain strings and other values are left as they are; resolved values are
        :class:`SecretValue` (``reveal()`` them where they are handed to a client). With ``where``
        (``"interfaces.discord.settings"``; ``""`` for paths from the top), a reference that cannot
        be resolved (or is malformed) raises its :class:`SecretsError` — same class, attributes
        and cause — with the path of the field before its message:
        ``interfaces.discord.settings.token: no secret field …``.
        """
        if isinstance(data, str):
            return await self._resolve_text(data, user_id, where)
        if isinstance(data, Mapping):
            return {
                key: await self.resolve_all(value, user_id=user_id, where=_inside(where, f".{key}"))
                for key, value in data.items()
            }
        if isinstance(data, list | tuple):
            items = [
                await self.resolve_all(item, user_id=user_id, where=_inside(where, f"[{index}]"))
                for index, item in enumerate(data)
            ]
            return items if isinstance(data, list) else tuple(items)
        return data

    async def _resolve_text(self, text: str, user_id: str | None, where: str | None) -> Any:
        """The value ``text`` stands for if it is a reference, else ``text`` itself; a failure
        located at ``where`` (see :meth:`resolve_all`)."""
        failure: SecretsError
        try:
            return await self.resolve(text, user_id=user_id) if parse_reference(text) is not None else text
        except SecretsError as error:
            if where is None:
                raise
            failure = copy.copy(error)  # the same class and attributes (an IdentityError's status)
            failure.args = (REDACTOR.redact(f"{where}: {error}"),)
            # The cause the secrets layer gave (a source's error for an unavailable secret), as
            # before; the located error stands in for the original, which is not chained on.
            failure.__cause__ = error.__cause__
            failure.__suppress_context__ = error.__suppress_context__
        raise failure  # outside the except block: the original is not attached as context

    # -- cache control ----------------------------------------------------------------------------

    def invalidate(self, provider: str | None = None, *, user_id: str | _Every | None = _Every.USER) -> int:
        """Forget cached secrets: all, or one provider's; of every user, or of one (``None``: the
        system's). Returns how many entries were dropped.

        A fetch of a matching key already under way does not write what it gets into the cache, and
        a ``get`` from now on does not wait for it: it fetches again."""

        def matches(key: _CacheKey) -> bool:
            return (provider is None or key[0] == provider) and (user_id is _Every.USER or key[1] == user_id)

        for key in [key for key in self._inflight if matches(key)]:
            self._orphaned.add(self._inflight.pop(key))
        doomed = [key for key in list(self._cache.keys()) if matches(key)]
        for key in doomed:
            self._cache.pop(key, None)
        for key in [key for key in self._held if matches(key)]:
            del self._held[key]  # a Retry-After it was told: asked again now
        return len(doomed)

    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener`` (sync or async) when a cached secret's values change; returns a
        function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def keep_fresh(self, provider: str, *, name: str | None = None) -> Callable[[], None]:
        """Keep the system's secret of ``provider`` (``name``: a named one) fresh though nothing
        reads it, until the function returned is called: counted in use, it is refreshed ahead of
        expiry like a key in use (:meth:`refresh_due`, which :meth:`start` runs), and fetched again
        once the sources answer after an outage that outlasted its stale grace. A holder of its
        resolved value (the LLM router's deployments, which read their keys once) thus learns of a
        rotation through :meth:`on_change`. Each call is one holder; the function releases it (a
        second call does nothing)."""
        if not isinstance(provider, str) or not provider.strip():
            raise ConfigurationError(f"keep_fresh() takes a provider name, got {shown(provider)}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigurationError(f"keep_fresh()'s name is a secret's name or None, got {shown(name)}")
        key: _CacheKey = (provider, None, name)
        kept = self._kept.get(key)
        if kept is None:
            kept = self._kept[key] = _Kept(0, self._cache.get(key))
        kept.holders += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                kept.holders -= 1
                if not kept.holders:
                    del self._kept[key]

        return release

    async def warm_up(self, providers: Iterable[str], *, user_id: str | None = None) -> None:
        """Load the providers' secrets now (at start-up), so the first requests hit the cache.

        Only what the cache lacks is fetched: a key cached and still fresh (within ``ttl``, or
        ``negative_ttl`` for "no such secret") is left as it is; use :meth:`refresh` to fetch again
        regardless. Missing secrets are fine; sources that cannot answer raise.
        """
        if isinstance(providers, str):  # else read letter by letter: providers "o", "p", "e"…
            raise ConfigurationError(
                "warm_up() takes provider names, a list of them: "
                f"warm_up([{shown_part(providers)!r}]), not one str"
            )
        keys: list[_CacheKey] = []
        for provider in providers:  # all checked before any is fetched
            _check_lookup("warm_up", provider, "-", user_id, None)
            keys.append((provider, user_id, None))
        await asyncio.gather(*(self._load(key, self._cache.get(key)) for key in keys))

    async def refresh(
        self, provider: str | None = None, *, user_id: str | _Every | None = _Every.USER
    ) -> int:
        """Fetch the cached secrets again now: all, or one provider's; of every user, or of one
        (``None``: the system's). Returns how many changed.

        A secret that cannot be fetched is logged (without its value) and kept as cached — served
        stale within ``stale_grace``; dropped if access to it was revoked — and the others are still
        refreshed. After :meth:`aclose` raises :class:`SecretsUnavailableError`."""
        if self._closed:  # each key's fetch failed, logged, and it returned 0 as if nothing changed
            raise SecretsUnavailableError("cannot refresh: the secrets manager was closed")
        keys = [
            key
            for key in list(self._cache.keys())
            if (provider is None or key[0] == provider) and (user_id is _Every.USER or key[1] == user_id)
        ]
        changed = 0
        for key in keys:
            if self._closed_meanwhile():  # by a change listener, while an earlier key was refreshed
                break
            before = self._cache.get(key)
            begun = self._inflight.pop(key, None)
            if begun is not None:
                # Begun before this refresh, it may have read what a rotation has since replaced
                # (the 401 that made the caller refresh): it answers its own callers, and a new
                # fetch, not it, is cached.
                self._orphaned.add(begun)
            try:
                after = await self._load(key, before, force=True)
            except SecretsError as error:
                logger.warning("refreshing %s failed: %s", SecretKey(*key), type(error).__name__)
                if isinstance(error, IdentityForbiddenError) and before is not None and before.values:
                    changed += 1  # a refusal dropped the value, and the listeners were told
                continue
            changed += before is None or before.values != after.values
        return changed

    async def refresh_due(self) -> int:
        """Refresh the keys used since they were fetched (or kept fresh: :meth:`keep_fresh`) and
        about to expire; returns how many were refreshed (failures are kept stale and logged). A
        key whose last fetch failed waits ``error_retry``, or the server's ``Retry-After``, like a
        ``get``; a kept one failing in a row (refused, deleted, or past its stale grace) waits
        twice as long each time, up to ``ttl``. After :meth:`aclose` raises
        :class:`SecretsUnavailableError`."""
        if self._closed:
            raise SecretsUnavailableError("cannot refresh: the secrets manager was closed")
        now = self._clock()
        keys = [key for key, entry in list(self._cache.items()) if self._due(key, entry, now)]
        # and the kept ones the cache forgot (an outage past their stale grace): fetched again
        keys += [key for key in list(self._kept) if self._cache.get(key) is None]
        refreshed = 0
        for key in keys:
            # A change listener may have run a pass of its own (or closed the manager) while an
            # earlier key was refreshed: what it did is not done again.
            if self._closed_meanwhile():
                break
            entry = self._cache.get(key)
            if not self._due(key, entry, self._clock()):
                continue
            refreshed += 1
            kept = self._kept.get(key)
            try:
                # a kept key the cache forgot: compared with the value last seen (a change told)
                after = await self._load(key, entry or (kept.last if kept else None), force=True)
            except Exception as error:
                self._refresh_failed(key, entry, kept, error)
            else:
                if (held := self._kept.get(key)) is not None:
                    held.last = after
                    if after.values is None:  # deleted, or a 403 before: asked less and less often
                        self._kept_failed(key, held, "no such secret")
        self.stats.refreshes += refreshed
        return refreshed

    def _refresh_failed(
        self, key: _CacheKey, entry: _Entry | None, kept: _Kept | None, error: Exception
    ) -> None:
        bug = not isinstance(error, SecretsError)
        if bug and entry is not None:
            # A bug in a source: the keys after this one are still refreshed, and it is not asked
            # again (nor logged) at every pass, as after an outage.
            entry.retry_at = self._clock() + self.error_retry
        if kept is not None:
            failure = f"{type(error).__name__} (a bug?)" if bug else type(error).__name__
            self._kept_failed(key, kept, failure, exc_info=error if bug else None)
        elif bug:
            logger.error("refreshing %s failed", SecretKey(*key), exc_info=error)
        else:
            logger.warning("refreshing %s failed: %s", SecretKey(*key), type(error).__name__)

    def _kept_failed(
        self, key: _CacheKey, kept: _Kept, failure: str, *, exc_info: Exception | None = None
    ) -> None:
        """A kept key's refresh failed: not asked again before ``error_retry`` doubled at each
        failure in a row, up to ``ttl`` (or a ``Retry-After``, if longer): a revoked, deleted or
        unreachable key was asked, and warned of, at every pass. Said at WARNING when it starts
        failing, or fails otherwise; the same failure again is DEBUG, until it is fetched again."""
        now = self._clock()
        kept.failures += 1
        until = now + min(self.error_retry * 2 ** min(kept.failures - 1, 64), self.ttl)
        if (held := self._held.get(key)) is not None:
            until = max(until, held[0])
        kept.retry_at = until
        if failure != kept.failing:
            kept.failing = failure
            logger.warning(
                "keeping %s fresh failed: %s; asked again in %.0fs, then less and less often while it fails",
                SecretKey(*key),
                failure,
                until - now,
                exc_info=exc_info,
            )
        else:
            logger.debug(
                "keeping %s fresh failed again (%d times): %s; asked again in %.0fs",
                SecretKey(*key),
                kept.failures,
                failure,
                until - now,
                exc_info=exc_info,
            )

    def _closed_meanwhile(self) -> bool:
        """Whether :meth:`aclose` was called (a method: mypy takes ``self._closed`` for still
        false after the check at a method's start, whatever ran since)."""
        return self._closed

    def _due(self, key: _CacheKey, entry: _Entry | None, now: float) -> bool:
        """Whether ``key`` is due for the refresh ahead of expiry: a value used since it was
        fetched (or kept fresh: :meth:`keep_fresh`), within ``refresh_ahead`` of expiry (or past
        it, within ``stale_grace``), and not waiting for ``error_retry`` or a ``Retry-After``
        after a failed fetch; a kept key the cache forgot, always."""
        if (kept := self._kept.get(key)) is not None:
            if now < kept.retry_at:  # failing: see _kept_failed
                return False
            return entry is None or (entry.fresh_until - self.refresh_ahead <= now and now >= entry.retry_at)
        return (
            entry is not None
            and entry.values is not None
            and entry.last_used > entry.fetched_at
            and entry.fresh_until - self.refresh_ahead <= now < entry.stale_until
            and now >= entry.retry_at
        )

    async def _refresh_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh_due()
            except Exception:  # the loop must outlive any one failure
                logger.exception("refreshing secrets failed")

    # -- loading ----------------------------------------------------------------------------------

    async def _load(self, key: _CacheKey, previous: _Entry | None, *, force: bool = False) -> _Entry:
        """The entry for ``key``: cached if fresh (unless forced), else fetched once for all callers."""
        if not force and previous is not None and self._clock() < previous.fresh_until:
            return previous
        if self._closed:
            raise _closed_error(key)
        task = self._inflight.get(key)
        if task is None and not force and (held := self._held.get(key)) is not None:
            until, error = held
            if self._clock() < until:
                raise SecretsUnavailableError(
                    redact_text(
                        f"secret {SecretKey(*key)} cannot be fetched and nothing usable is cached: the "
                        f"source asked not to be asked again for {until - self._clock():.0f}s ({error})"
                    )
                )
            del self._held[key]
        return await self._outcome(key, task or self._start_fetch(key, previous))

    def _start_fetch(self, key: _CacheKey, previous: _Entry | None) -> asyncio.Task[_Entry]:
        """The fetch of ``key`` every caller shares until it ends."""
        self.stats.misses += 1
        task = asyncio.get_running_loop().create_task(self._fetch(key, previous))
        self._inflight[key] = task
        self._fetch_began[task] = self._clock()
        task.add_done_callback(lambda done: self._forget_fetch(key, done))
        return task

    async def _load_or_stale(self, key: _CacheKey, entry: _Entry | None, now: float) -> _Entry:
        """:meth:`_load`, but a value past ``ttl`` still within ``stale_grace`` is served if the fetch
        takes longer than ``stale_wait`` (it goes on, and what it gets is cached)."""
        if entry is None or entry.values is None or now >= entry.stale_until or self.stale_wait == math.inf:
            return await self._load(key, entry)
        if self._closed:
            raise _closed_error(key)
        task = self._inflight.get(key) or self._start_fetch(key, entry)
        # stale_wait from the fetch's start: a get joining a fetch that has taken longer is served
        # at once, not after waiting stale_wait again
        waited = now - self._fetch_began.get(task, now)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, self.stale_wait - waited))
        if done:
            return await self._outcome(key, task)
        self.stats.stale_served += 1
        # every get served while a fetch hangs (about 40 s against a hung Identity) was a WARNING
        log = logger.debug if entry.failing == _SLOW else logger.warning
        entry.failing = _SLOW
        log(
            "secret %s: the fetch takes longer than stale_wait (%gs); serving the cached value, "
            "%.0fs of grace left",
            SecretKey(*key),
            self.stale_wait,
            entry.stale_until - now,
        )
        return entry

    async def _outcome(self, key: _CacheKey, task: asyncio.Task[_Entry]) -> _Entry:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # aclose() cancelled the fetch, not this caller: a CancelledError would tell the
                # caller (and its task group) that it was cancelled itself.
                raise _closed_error(key) from None
            raise

    def _forget_fetch(self, key: _CacheKey, task: asyncio.Task[_Entry]) -> None:
        if not task.cancelled():
            task.exception()  # seen: its callers may all have been served stale meanwhile
        self._orphaned.discard(task)
        self._fetch_began.pop(task, None)
        if self._inflight.get(key) is task:  # not a newer fetch started after an invalidate()
            del self._inflight[key]

    def _orphan(self) -> bool:
        """Whether the running fetch was started before an ``invalidate()`` of its key (so what it
        gets must not be cached)."""
        task = asyncio.current_task()
        return task is not None and task in self._orphaned

    async def _fetch(self, key: _CacheKey, previous: _Entry | None) -> _Entry:
        secret_key = SecretKey(*key)
        self.stats.fetches += 1
        try:
            values = await self.source.fetch(secret_key)
        except IdentityForbiddenError:
            if not self._orphan():
                # Access was revoked: serve nothing from before, and tell the listeners (the LLM
                # router) that the value they hold is gone, as after a deletion. What is left is a
                # "no such secret" already expired: the next read asks again (a 403 again, not a
                # None), and one the service allows again is heard of as a change.
                old = self._cache.get(key) or previous
                now = self._clock()
                self._cache[key] = _Entry(None, now, now, now, now)
                if (kept := self._kept.get(key)) is not None:
                    # as last seen: asked again after the cache forgot it (a kept key failing is
                    # asked less and less often), a 403 is no drop to tell of again
                    kept.last = self._cache[key]
                if self._inflight.get(key) is asyncio.current_task():
                    # A listener reading the key (the router resolving its deployment again) asks
                    # the service again, and is refused: it must not wait for this fetch, which
                    # waits for the listener. Those already waiting for it are refused with it.
                    del self._inflight[key]
                if old is not None and old.values:
                    await self._notify(SecretChange(secret_key, _changed_fields(old.values, None)))
            raise
        except (IdentityError, SecretsError) as error:
            self.stats.errors += 1
            # An invalidated fetch may serve what it was given, never touch a newer entry.
            cached = None if self._orphan() else self._cache.get(key)
            return self._stale_or_raise(key, cached or previous, error)
        self._held.pop(key, None)
        if values is not None and (kept := self._kept.get(key)) is not None and kept.failures:
            logger.info(
                "keeping %s fresh: fetched again after %d failed refreshes", secret_key, kept.failures
            )
            kept.failures, kept.failing, kept.retry_at = 0, None, float("-inf")
        now = self._clock()
        ttl = self.ttl if values is not None else self.negative_ttl
        entry = _Entry(values, now, now + ttl, now + ttl + self.stale_grace, now)
        if self._orphan():  # invalidated meanwhile: the caller gets it, the cache does not
            return entry
        old = self._cache.get(key) or previous
        self._cache[key] = entry
        if old is not None and old.failing is not None:
            logger.info("secret %s fetched again after %s", secret_key, old.failing)
        if old is not None and old.values != values:
            await self._notify(SecretChange(secret_key, _changed_fields(old.values, values)))
        return entry

    def _stale_or_raise(self, key: _CacheKey, entry: _Entry | None, error: Exception) -> _Entry:
        now = self._clock()
        # Only values are served stale: "no such secret" is believed for negative_ttl, no longer.
        if entry is not None and entry.values is not None and now < entry.stale_until:
            # A server that said when to come back (Retry-After) is not asked again before then.
            retry_after = error.retry_after if isinstance(error, IdentityRateLimitedError) else None
            wait = max(self.error_retry, retry_after or 0.0)
            if now >= entry.fresh_until:
                self.stats.stale_served += 1
            # A refresh ahead of expiry that failed leaves the value fresh as long as it was: gets
            # fetching in their callers' path before then is what the refresh ahead spares them.
            entry.fresh_until = max(entry.fresh_until, min(entry.stale_until, now + wait))
            entry.retry_at = now + wait
            kind = type(error).__name__
            if kind != entry.failing:
                entry.failing = kind
                logger.warning(
                    "secret %s could not be fetched (%s); serving the cached value, %.0fs of grace "
                    "left; asked again in %gs (failing so again: at DEBUG)",
                    SecretKey(*key),
                    kind,
                    entry.stale_until - now,
                    wait,
                )
            else:
                logger.debug(
                    "secret %s could not be fetched again (%s); serving the cached value, %.0fs of "
                    "grace left",
                    SecretKey(*key),
                    kind,
                    entry.stale_until - now,
                )
            return entry
        if isinstance(error, IdentityRateLimitedError) and error.retry_after and not self._orphan():
            self._hold(key, now + error.retry_after, error)
        raise SecretsUnavailableError(  # a source's error text may quote what it was sent
            redact_text(f"secret {SecretKey(*key)} cannot be fetched and nothing usable is cached: {error}")
        ) from error

    def _hold(self, key: _CacheKey, until: float, error: Exception) -> None:
        """No fetch of ``key`` before ``until`` (a get raises at once); as many keys as the cache
        holds at most, those whose time is up dropped first, then the oldest."""
        if key not in self._held and len(self._held) >= self._cache.maxsize:
            now = self._clock()
            for expired in [k for k, (when, _) in self._held.items() if when <= now]:
                del self._held[expired]
            while len(self._held) >= self._cache.maxsize:
                del self._held[next(iter(self._held))]
        self._held[key] = (until, error)

    async def _notify(self, change: SecretChange) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(change)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("a secret change listener failed for %s", change.key)


def _check_settings(where: str, settings: Mapping[str, object]) -> None:
    """A :class:`ConfigurationError` naming the first of ``settings`` that
    :class:`SecretsManager` does not take, and those it takes (each was a bare TypeError)."""
    taken = _keyword_only(SecretsManager)
    for name in settings:
        if name in taken:
            continue
        if where == "from_identity" and name in _keyword_only(IdentityClient):
            hint = f": an IdentityClient option goes in client_options={{{shown(name)}: …}}"
        else:
            close = difflib.get_close_matches(name, taken, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(
            f"{where}() has the setting {shown(name)}, which SecretsManager does not take{hint}: "
            f"it takes {', '.join(map(repr, taken))}"
        )


def _keyword_only(cls: type) -> list[str]:
    return [
        name
        for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def _client_options(options: object) -> Mapping[str, Any]:
    """``from_identity``'s ``client_options`` if :class:`IdentityClient` takes each of them, else a
    :class:`ConfigurationError` naming the option (each was a bare TypeError)."""
    if options is None:
        return {}
    taken = [name for name in _keyword_only(IdentityClient) if name != "token"]
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"client_options must be a mapping of IdentityClient's keyword arguments ({', '.join(taken)}), "
            f"got {shown(options)}"
        )
    for name in options:
        if name in {"base_url", "token"}:
            raise ConfigurationError(
                f"client_options cannot hold {name!r}: give it as from_identity()'s "
                f"{'url' if name == 'base_url' else 'token'}"
            )
        if name not in taken:
            raise ConfigurationError(
                f"client_options has {shown(name)}, which IdentityClient does not take: it takes "
                f"{', '.join(map(repr, taken))}"
            )
    return options


def _check_lookup(where: str, provider: object, field: object, user_id: object, name: object) -> None:
    """A :class:`ConfigurationError` naming the first part of a lookup that names no secret: each
    is a non-empty str, ``user_id`` and ``name`` may be ``None`` (the system's, the provider's)."""
    parts = (
        ("provider", provider, "a provider name (a non-empty str)"),
        ("field", field, "a field name (a non-empty str)"),
        ("user_id", user_id, "a user's id (a non-empty str) or None (the system's)"),
        ("name", name, "a secret's name (a non-empty str) or None (the provider's)"),
    )
    for part, value, valid in parts:
        if (isinstance(value, str) and value) or (value is None and part in {"user_id", "name"}):
            continue
        got = shown(value)
        if not isinstance(value, str) and value is not None and got != a_type(value):
            got += f" ({a_type(value)})"
        raise ConfigurationError(f"SecretsManager.{where}()'s {part} must be {valid}, got {got}")


def _closed_error(key: _CacheKey) -> SecretsUnavailableError:
    return SecretsUnavailableError(
        f"secret {SecretKey(*key)} cannot be fetched: the secrets manager was closed"
    )


def _inside(where: str | None, step: str) -> str | None:
    """The path one step further in (``where=""`` starts at the top: ``token``, not ``.token``)."""
    if where is None:
        return None
    return where + step if where else step.removeprefix(".")


def _changed_fields(
    before: Mapping[str, SecretValue] | None, after: Mapping[str, SecretValue] | None
) -> frozenset[str]:
    old, new = before or {}, after or {}
    return frozenset(field for field in old.keys() | new.keys() if old.get(field) != new.get(field))


def reveal_all(data: Any) -> Any:
    """A copy of nested dicts / lists / tuples with every :class:`SecretValue` revealed: for the
    moment resolved settings are handed to a client that needs plain values."""
    if isinstance(data, SecretValue):
        return data.reveal()
    if isinstance(data, Mapping):
        return {key: reveal_all(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        items = [reveal_all(item) for item in data]
        return items if isinstance(data, list) else tuple(items)
    return data
