"""Secret references: how configuration names a secret without containing it.

=================================  ====================================================
``os.environ/OPENAI_API_KEY``      a mapped name reads ``openai`` / ``api_key`` from the
                                   secret sources; an unmapped name reads the environment
``secret:openai:api_key``          field ``api_key`` of the provider's secret
``secret:openai/team-a:api_key``   the secret named ``team-a`` (a provider with several)
anything else                      a plain value, used as written
=================================  ====================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from dynamic_agents.exceptions import SecretReferenceError

__all__ = ["ENV_SECRETS", "EnvReference", "SecretReference", "parse_reference"]

ENV_SECRETS: Final[Mapping[str, tuple[str, str]]] = {
    "OPENAI_API_KEY": ("openai", "api_key"),
    "OPENAI_ORG_ID": ("openai", "org_id"),
    "ANTHROPIC_API_KEY": ("anthropic", "api_key"),
    "AZURE_API_KEY": ("azure_openai", "api_key"),
    "AZURE_API_BASE": ("azure_openai", "endpoint"),
    "AZURE_API_VERSION": ("azure_openai", "api_version"),
    "GROQ_API_KEY": ("groq", "api_key"),
    "GOOGLE_API_KEY": ("google", "api_key"),
    "GEMINI_API_KEY": ("google", "api_key"),
    "DISCORD_BOT_TOKEN": ("discord", "bot_token"),
    "DISCORD_APPLICATION_ID": ("discord", "application_id"),
    "SLACK_BOT_TOKEN": ("slack", "bot_token"),
    "SLACK_APP_TOKEN": ("slack", "app_token"),
}
"""Environment names that stand for a provider's field (the design document's table). Extend it
per manager with ``SecretsManager(..., env_mapping={...})``."""

SECRET_PREFIX: Final = "secret:"  # noqa: S105 - a prefix, not a password
ENV_PREFIX: Final = "os.environ/"
_SECRET_RE: Final = re.compile(
    r"^secret:(?P<provider>[a-z0-9][a-z0-9_.-]*)(?:/(?P<name>[^:/]+))?:(?P<field>[A-Za-z0-9_.-]+)$"
)
_ENV_RE: Final = re.compile(r"^os\.environ/(?P<variable>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True, slots=True)
class SecretReference:
    """``secret:provider[/name]:field``."""

    provider: str
    field: str
    name: str | None = None

    def __str__(self) -> str:
        owner = f"{self.provider}/{self.name}" if self.name else self.provider
        return f"{SECRET_PREFIX}{owner}:{self.field}"


@dataclass(frozen=True, slots=True)
class EnvReference:
    """``os.environ/NAME``."""

    variable: str

    def __str__(self) -> str:
        return f"{ENV_PREFIX}{self.variable}"


@lru_cache(maxsize=4096)
def parse_reference(text: str) -> SecretReference | EnvReference | None:
    """The reference ``text`` stands for, or ``None`` for a plain value.

    Text that starts like a reference but is malformed raises :class:`SecretReferenceError` (a
    typo must not silently become a plain value sent as an API key): also a prefix in another case
    (``Secret:``, ``OS.ENVIRON/``) or after leading spaces. Results are cached (they are
    immutable; errors are not cached).
    """
    if text.startswith(SECRET_PREFIX):
        match = _SECRET_RE.match(text)
        if match is None:
            raise SecretReferenceError(
                f"malformed secret reference {_shown(text, SECRET_PREFIX)}: use 'secret:provider:field' or "
                "'secret:provider/name:field' (provider in lower case, e.g. 'secret:openai:api_key')"
            )
        return SecretReference(match["provider"], match["field"], match["name"])
    if text.startswith(ENV_PREFIX):
        match = _ENV_RE.match(text)
        if match is None:
            raise SecretReferenceError(
                f"malformed environment reference {_shown(text, ENV_PREFIX)}: use 'os.environ/NAME' "
                "with NAME a variable name (letters, digits, '_')"
            )
        return EnvReference(match["variable"])
    stripped = text.lstrip()
    for prefix in (SECRET_PREFIX, ENV_PREFIX):  # a typo of a reference, not a value to send as a key
        if stripped[: len(prefix)].lower() == prefix:
            spaces = " after leading spaces" if len(stripped) < len(text) else ""
            raise SecretReferenceError(
                f"malformed reference: it starts with {stripped[: len(prefix)]!r}{spaces}; a reference "
                f"starts with {prefix!r} exactly, in lower case, at the very start"
            )
    return None


_SHOWN: Final = {  # a whole reference at the start, no more: "secret:provider[/name]:field"
    SECRET_PREFIX: re.compile(
        r"secret:[a-z0-9][a-z0-9_.-]{0,39}(?:/[A-Za-z0-9_.-]{1,64})?:[A-Za-z0-9_.-]{1,64}"
    ),
    ENV_PREFIX: re.compile(r"os\.environ/[A-Za-z_][A-Za-z0-9_]{0,68}"),
}


def _shown(text: str, prefix: str) -> str:
    """The reference at the start of ``text``, if a whole one is there, else only the prefix. What
    follows (after a stray ``=``, space or ``:``), or text in place of a reference's parts, is often
    a value pasted with or instead of its name — a secret — so it is counted, never shown."""
    match = _SHOWN[prefix].match(text)
    part = match.group() if match is not None else prefix
    if len(part) == len(text):
        return repr(part)
    return f"{part + '…'!r} ({len(text) - len(part)} more characters, not shown)"
