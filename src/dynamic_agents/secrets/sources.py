"""Where secrets come from: one small interface, several sources, chainable.

A source answers "the values of the secret for this key" (``SecretKey``: provider, user, optional
name), or ``None`` when it really has no such secret; it raises when it cannot answer (Identity down,
token refused). :class:`ChainSource` asks each source in turn.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Self

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import redact_text
from dynamic_agents._validation import LONE_SURROGATE, check_count, check_flag, shown
from dynamic_agents.exceptions import (
    ConfigurationError,
    IdentityError,
    IdentityForbiddenError,
    IdentityNotFoundError,
    SecretsError,
    SecretsUnavailableError,
)
from dynamic_agents.secrets.client import IdentityClient
from dynamic_agents.secrets.references import ENV_SECRETS, check_env_mapping, shown_part
from dynamic_agents.secrets.values import SecretValue

__all__ = [
    "ChainSource",
    "EnvironmentSource",
    "IdentitySource",
    "SecretKey",
    "SecretSource",
    "StaticSource",
]

logger = get_logger("secrets")

_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SecretKey:
    """Which secret: a provider's, for a user (``None``: the system's), optionally by name.

    ``str`` and ``repr`` mask a provider or name that looks like a key (pasted into a reference
    in place of a name): errors and logs quote keys this way."""

    provider: str
    user_id: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        owner = f"user {self.user_id!r}" if self.user_id is not None else "system"
        named = f"/{shown_part(self.name)}" if self.name else ""
        return f"{shown_part(self.provider)}{named} ({owner})"

    def __repr__(self) -> str:
        name = repr(shown_part(self.name)) if self.name is not None else "None"
        return f"SecretKey(provider={shown_part(self.provider)!r}, user_id={self.user_id!r}, name={name})"


class SecretSource(ABC):
    """Answers the values of one secret, ``None`` for "no such secret", or raises."""

    @abstractmethod
    async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None: ...

    async def aclose(self) -> None:  # noqa: B027 - most sources hold nothing
        """Release what the source holds."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class IdentitySource(SecretSource):
    """Secrets from the A8N Identity service.

    Of the active secrets of the provider owned by exactly the key's user (or the system, for no
    user) — and of that name, when the key names one — the most recently updated wins (ties broken by
    id, so the choice is deterministic). Another user's secret is never chosen, whatever the service
    lists.
    """

    def __init__(self, client: IdentityClient, *, page_size: int = 100, owns_client: bool = True) -> None:
        if not isinstance(client, IdentityClient):  # else every lookup: no attribute 'iter_secrets'
            raise ConfigurationError(
                "IdentitySource needs an IdentityClient: IdentitySource(IdentityClient(url, token=…)), "
                f"got {shown(client)}"
            )
        self.client = client
        self.page_size = check_count("page_size", page_size, minimum=1)
        self._owns_client = check_flag("owns_client", owns_client)  # "false" would be true

    def __repr__(self) -> str:
        return f"IdentitySource({self.client!r})"

    async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
        try:
            candidates = [
                item
                async for item in self.client.iter_secrets(
                    provider=key.provider, user_id=key.user_id, page_size=self.page_size
                )
                if item.active
                and item.provider == key.provider
                and item.user_id == key.user_id
                and (key.name is None or item.name == key.name)
            ]
        except IdentityNotFoundError:  # an unknown provider (the client checked the API is at base_url)
            return None
        if not candidates:
            return None
        chosen = max(candidates, key=lambda item: (item.last_change or _EPOCH, item.id))
        if len(candidates) > 1:
            logger.debug(
                "%d active secrets match %s; using %r (most recently updated)",
                len(candidates),
                key,
                chosen.name,
            )
        try:
            secret = await self.client.get_values(chosen.id)
        except IdentityNotFoundError:  # deleted between the list and the read
            return None
        return secret.values

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()


class EnvironmentSource(SecretSource):
    """System secrets from environment variables: the embedded default.

    A provider's fields come from the mapped names (``OPENAI_API_KEY`` → ``openai`` / ``api_key``) and
    from ``{PROVIDER}_{FIELD}`` variables (``MISTRAL_API_KEY`` → ``mistral`` / ``api_key``). Users and
    named secrets have no environment: for those it answers ``None``.
    """

    def __init__(
        self,
        mapping: Mapping[str, tuple[str, str]] = ENV_SECRETS,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.mapping = check_env_mapping(mapping)
        if environ is not None and not isinstance(environ, Mapping):  # else each lookup: no 'items'
            raise ConfigurationError(
                "EnvironmentSource's environ must be a mapping of variable names to values "
                f"(os.environ, a dict) or None (os.environ), got {shown(environ)}"
            )
        self._environ = environ

    def __repr__(self) -> str:
        return "EnvironmentSource()"

    async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
        if key.user_id is not None or key.name is not None:
            return None
        environ = os.environ if self._environ is None else self._environ
        prefix = f"{key.provider.upper()}_"
        variables = {
            variable[len(prefix) :].lower(): variable
            for variable, value in environ.items()
            if variable.startswith(prefix) and value
        }
        for variable, (provider, field) in self.mapping.items():
            if provider == key.provider and environ.get(variable):
                variables[field] = variable
        return {
            field: env_secret(variable, environ[variable]) for field, variable in variables.items()
        } or None


def env_secret(variable: str, value: str) -> SecretValue:
    """The value of an environment variable as a secret, or a :class:`ConfigurationError` naming
    the variable when it is not text (bytes that are not UTF-8, read with surrogateescape)."""
    if (surrogate := LONE_SURROGATE.search(value)) is not None:
        raise ConfigurationError(
            f"environment variable {shown_part(variable)!r} holds bytes that are not UTF-8 (at "
            f"position {surrogate.start()}): set it to the secret as UTF-8 text"
        )
    return SecretValue(value)


class StaticSource(SecretSource):
    """Secrets given in code, for tests: ``StaticSource({"openai": {"api_key": "sk-…"}})``.

    ``users`` holds per-user secrets: ``{"u1": {"openai": {"api_key": "…"}}}``; ``named`` holds
    named ones: ``{("openai", "team-a"): {"api_key": "…"}}``.
    """

    def __init__(
        self,
        system: Mapping[str, Mapping[str, str | SecretValue]] | None = None,
        *,
        users: Mapping[str, Mapping[str, Mapping[str, str | SecretValue]]] | None = None,
        named: Mapping[tuple[str, str], Mapping[str, str | SecretValue]] | None = None,
    ) -> None:
        # Each checked as it is read: a str or a list in place of a mapping failed with a bare
        # AttributeError ("no attribute 'items'"), a value that is no str with a TypeError.
        self._secrets: dict[SecretKey, dict[str, SecretValue]] = {}
        for provider, values in _mapping("system", system, _PROVIDERS, optional=True).items():
            self._set(SecretKey(_name("system", provider)), values, f"system[{provider!r}]")
        for user_id, providers in _mapping(
            "users", users, f"user ids to {_PROVIDERS}", optional=True
        ).items():
            where = f"users[{_name('users', user_id)!r}]"
            for provider, values in _mapping(where, providers, _PROVIDERS).items():
                self._set(SecretKey(_name(where, provider), user_id), values, f"{where}[{provider!r}]")
        for pair, values in _mapping(
            "named", named, f"(provider, name) pairs to {_FIELDS}", optional=True
        ).items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise ConfigurationError(
                    f"StaticSource's named key {shown(pair)} must be a (provider, name) pair of str: "
                    "named={('openai', 'team-a'): {'api_key': '…'}}"
                )
            provider, name = pair
            self._set(SecretKey(provider, name=name), values, f"named[{pair!r}]")

    def __repr__(self) -> str:
        return f"StaticSource({len(self._secrets)} secrets)"

    def set(self, key: SecretKey, values: Mapping[str, str | SecretValue]) -> None:
        """Add or replace (rotate) a secret."""
        if not isinstance(key, SecretKey):
            raise ConfigurationError(
                f"StaticSource.set()'s key must be a SecretKey (SecretKey('openai')), got {shown(key)}"
            )
        self._set(key, values, "values", owner="StaticSource.set()")

    def _set(self, key: SecretKey, values: object, where: str, *, owner: str = "StaticSource") -> None:
        checked: dict[str, SecretValue] = {}
        for field, value in _mapping(where, values, _FIELDS, owner=owner).items():
            if not isinstance(field, str) or not isinstance(value, str | SecretValue):
                what = f"{where}[{field!r}]" if isinstance(field, str) else f"{where}'s field {shown(field)}"
                raise ConfigurationError(
                    f"{owner}'s {what} must be a str or a SecretValue, got {shown(value)}"
                )
            checked[field] = value if isinstance(value, SecretValue) else SecretValue(value)
        self._secrets[key] = checked

    def remove(self, key: SecretKey) -> None:
        self._secrets.pop(key, None)

    async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
        values = self._secrets.get(key)
        return dict(values) if values is not None else None


_FIELDS: Final = "field names to values ({'api_key': 'sk-…'})"
_PROVIDERS: Final = "provider names to {field: value} ({'openai': {'api_key': 'sk-…'}})"


def _mapping(
    where: str, value: object, of: str, *, owner: str = "StaticSource", optional: bool = False
) -> Mapping[Any, object]:
    """``value`` if it is a mapping (``None``, with ``optional``: an empty one), else a
    :class:`ConfigurationError` naming the argument, what it got and what it takes."""
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{owner}'s {where} must be a mapping of {of}, got {shown(value)}")
    return value


def _name(where: str, name: object) -> str:
    if not isinstance(name, str):
        raise ConfigurationError(f"StaticSource's {where} has a key {shown(name)}: it must be a str")
    return name


class ChainSource(SecretSource):
    """Asks each source in order and returns the first answer with values.

    ``None`` comes back only when every source answered "no such secret"; if any could not answer
    and none had the secret, :class:`SecretsUnavailableError` is raised. A source that cannot
    answer is logged (with its error, masked) at WARNING when it starts failing, or fails
    otherwise, at DEBUG when it fails the same way again, and at INFO when it answers again: a
    later source answering in its place (the environment for Identity) hides the outage otherwise.
    """

    def __init__(self, *sources: SecretSource) -> None:
        if not sources:
            raise ConfigurationError("ChainSource needs at least one source")
        given: tuple[object, ...] = sources  # as given, whatever the annotation says
        for index, source in enumerate(given):
            if not isinstance(source, SecretSource):  # else every lookup: no attribute 'fetch'
                wrap = " (wrap it: IdentitySource(client))" if isinstance(source, IdentityClient) else ""
                raise ConfigurationError(
                    f"ChainSource's source {index} must be a SecretSource{wrap}, got {shown(source)}"
                )
        self.sources = sources
        # By source: the kind of error it last failed with, None while it answers
        self._failing: list[str | None] = [None] * len(sources)

    def __repr__(self) -> str:
        return f"ChainSource({', '.join(map(repr, self.sources))})"

    async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
        failures: list[str] = []
        for index, source in enumerate(self.sources):
            try:
                values = await source.fetch(key)
            except IdentityForbiddenError:
                self._answered(index, key)  # a refusal is an answer, not an outage:
                raise  # no fallback around it
            except (IdentityError, SecretsError) as error:
                failures.append(f"{source!r}: {error}")
                self._failed(index, key, error)
                continue
            self._answered(index, key)
            if values is not None:
                return values
        if failures:
            # masked as _failed masks them: an error's text may quote what it was sent
            raise SecretsUnavailableError(
                redact_text(f"no source could answer for {key}: {'; '.join(failures)}")
            )
        return None

    def _failed(self, index: int, key: SecretKey, error: Exception) -> None:
        kind, source = type(error).__name__, self.sources[index]
        said = redact_text(f"{kind}: {error}")  # an error's text may quote what it was sent
        if self._failing[index] != kind:
            self._failing[index] = kind
            after = (
                "; the sources after it are asked while it fails" if source is not self.sources[-1] else ""
            )
            logger.warning("secret source %r failed for %s (%s)%s", source, key, said, after)
        else:
            logger.debug("secret source %r failed again for %s (%s)", source, key, said)

    def _answered(self, index: int, key: SecretKey) -> None:
        if self._failing[index] is not None:
            self._failing[index] = None
            logger.info("secret source %r answers again (asked for %s)", self.sources[index], key)

    async def aclose(self) -> None:
        for source in self.sources:
            await source.aclose()
