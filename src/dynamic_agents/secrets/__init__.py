"""Secrets: the A8N Identity client, sources, references, and the caching ``SecretsManager``.

Secret values are :class:`SecretValue` objects, masked everywhere but :meth:`SecretValue.reveal`.

Public names are loaded on first use (PEP 562): ``parse_reference`` and ``SecretValue`` come
without the HTTP client, for a spec or a config that only checks its references.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from dynamic_agents.secrets.client import (
        IdentityClient,
        ProviderInfo,
        SecretMetadata,
        SecretPage,
        SecretValues,
        TokenProvider,
    )
    from dynamic_agents.secrets.manager import SecretChange, SecretsManager, SecretsStats, reveal_all
    from dynamic_agents.secrets.references import ENV_SECRETS, EnvReference, SecretReference, parse_reference
    from dynamic_agents.secrets.sources import (
        ChainSource,
        EnvironmentSource,
        IdentitySource,
        SecretKey,
        SecretSource,
        StaticSource,
    )
    from dynamic_agents.secrets.values import MASK, RedactingFilter, Redactor, SecretValue, protect_loggers

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "IdentityClient": "dynamic_agents.secrets.client",
    "ProviderInfo": "dynamic_agents.secrets.client",
    "SecretMetadata": "dynamic_agents.secrets.client",
    "SecretPage": "dynamic_agents.secrets.client",
    "SecretValues": "dynamic_agents.secrets.client",
    "TokenProvider": "dynamic_agents.secrets.client",
    "SecretChange": "dynamic_agents.secrets.manager",
    "SecretsManager": "dynamic_agents.secrets.manager",
    "SecretsStats": "dynamic_agents.secrets.manager",
    "reveal_all": "dynamic_agents.secrets.manager",
    "ENV_SECRETS": "dynamic_agents.secrets.references",
    "EnvReference": "dynamic_agents.secrets.references",
    "SecretReference": "dynamic_agents.secrets.references",
    "parse_reference": "dynamic_agents.secrets.references",
    "ChainSource": "dynamic_agents.secrets.sources",
    "EnvironmentSource": "dynamic_agents.secrets.sources",
    "IdentitySource": "dynamic_agents.secrets.sources",
    "SecretKey": "dynamic_agents.secrets.sources",
    "SecretSource": "dynamic_agents.secrets.sources",
    "StaticSource": "dynamic_agents.secrets.sources",
    "MASK": "dynamic_agents.secrets.values",
    "RedactingFilter": "dynamic_agents.secrets.values",
    "Redactor": "dynamic_agents.secrets.values",
    "SecretValue": "dynamic_agents.secrets.values",
    "protect_loggers": "dynamic_agents.secrets.values",
}

__all__ = [
    "ENV_SECRETS",
    "MASK",
    "ChainSource",
    "EnvReference",
    "EnvironmentSource",
    "IdentityClient",
    "IdentitySource",
    "ProviderInfo",
    "RedactingFilter",
    "Redactor",
    "SecretChange",
    "SecretKey",
    "SecretMetadata",
    "SecretPage",
    "SecretReference",
    "SecretSource",
    "SecretValue",
    "SecretValues",
    "SecretsManager",
    "SecretsStats",
    "StaticSource",
    "TokenProvider",
    "parse_reference",
    "protect_loggers",
    "reveal_all",
]

__getattr__ = _lazy_exports(__name__, _LAZY, globals())
