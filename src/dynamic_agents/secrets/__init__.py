"""Secrets: the A8N Identity client, sources, references, and the caching ``SecretsManager``.

Secret values are :class:`SecretValue` objects, masked everywhere but :meth:`SecretValue.reveal`.
"""

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
