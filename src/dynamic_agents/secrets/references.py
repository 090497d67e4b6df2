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

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from dynamic_agents._redaction import (
    MASK,
    REDACTOR,
    looks_like_a_key,
    masked_url,
    names_a_credential,
    redact_text,
)
from dynamic_agents._validation import shown
from dynamic_agents.exceptions import ConfigurationError, SecretReferenceError

__all__ = [
    "ENV_SECRETS",
    "EnvReference",
    "SecretReference",
    "check_env_mapping",
    "error_with_value",
    "masked_settings",
    "parse_reference",
    "shown_reference",
    "shown_value",
]

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


def check_env_mapping(mapping: object) -> dict[str, tuple[str, str]]:
    """``mapping`` (an ``env_mapping``: variable name to ``(provider, field)``) as a dict of
    pairs (a list from YAML or JSON taken as one), else a :class:`ConfigurationError` naming the
    entry: taken as given, a bad one failed each reference to its variable with a bare error."""
    if not isinstance(mapping, Mapping):
        raise ConfigurationError(
            "env_mapping must be a mapping of variable names to (provider, field) pairs, "
            f"got {shown(mapping)}"
        )
    checked: dict[str, tuple[str, str]] = {}
    for variable, pair in mapping.items():
        if not isinstance(variable, str) or not _VARIABLE_RE.fullmatch(variable):
            raise ConfigurationError(
                f"env_mapping key {shown(variable)} is not a variable name (letters, digits, '_')"
            )
        if (
            isinstance(pair, str)
            or not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(part, str) and part for part in pair)
        ):
            raise ConfigurationError(
                f"env_mapping[{variable!r}] must be a (provider, field) pair, got {shown(pair)}"
            )
        checked[variable] = (pair[0], pair[1])
    return checked


SECRET_PREFIX: Final = "secret:"  # noqa: S105 - a prefix, not a password
ENV_PREFIX: Final = "os.environ/"
_SECRET_RE: Final = re.compile(
    # a name is any text but ':' and '/'; a lone surrogate is no text (bytes that were not UTF-8)
    r"^secret:(?P<provider>[a-z0-9][a-z0-9_.-]*)(?:/(?P<name>[^:/\ud800-\udfff]+))?:(?P<field>[A-Za-z0-9_.-]+)$"
)
_ENV_RE: Final = re.compile(r"^os\.environ/(?P<variable>[A-Za-z_][A-Za-z0-9_]*)$")
_VARIABLE_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_SHOWN_VALUE_LIMIT: Final = 60

_LONG_INT: Final = 10**_SHOWN_VALUE_LIMIT
"""The smallest int shown by its number of digits, not written out (one of 61 digits)."""

_EXACT_DIGITS_BITS: Final = 1_000_000
"""The longest int whose digits are counted exactly (about 300,000 digits: a power of ten that
long takes milliseconds, one of millions of digits a second)."""


def shown_value(value: object, *, name: object = None) -> str | None:
    """A value found in a setting or a spec field, as an error may quote it, or ``None`` when it
    is not shown (a mapping or a list: too long, and it may hold anything). A reference as
    written (:func:`shown_reference`); :data:`MASK` for a string under a credential's ``name``
    (``api_key``, ``token``) or with a word shaped like a key; other strings cut to 60 characters,
    masked as :func:`redact_text` masks text (registered secrets, a URL's credentials); numbers,
    booleans and ``None`` as they are, but an int of more than 60 digits by their number (``an int
    of 5001 digits``: ``str()`` refuses one past 4,300). Never raises."""
    if isinstance(value, str):
        reference = shown_reference(value)
        if reference is not None:
            return repr(reference)
        if value and (names_a_credential(name) or any(map(looks_like_a_key, value.split()))):
            return MASK
        text = repr(value)
        if len(text) > _SHOWN_VALUE_LIMIT:
            text = f"{text[: _SHOWN_VALUE_LIMIT - 4]}...{text[-1]}"
        return redact_text(text)  # registered secrets, a URL's password and credential query values
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _LONG_INT:
        return _long_int(value)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return None


def _long_int(value: int) -> str:
    """``an int of 5001 digits``: a long int without ``str()``, which refuses one past 4,300 digits
    (``sys.get_int_max_str_digits()``) with a ValueError, and takes quadratic time."""
    magnitude = abs(value)
    bits = magnitude.bit_length()
    digits = int(bits * math.log10(2))  # the count or one less; the loops make it exact
    about = "about " if bits > _EXACT_DIGITS_BITS else ""
    if not about:
        while magnitude >= 10**digits:
            digits += 1
        while magnitude < 10 ** (digits - 1):
            digits -= 1
    sign = "a negative" if value < 0 else "an"
    return f"{sign} int of {about}{digits} digits"


def error_with_value(detail: Mapping[str, Any], *, name: object = None) -> str:
    """One of pydantic's errors as a message: its text (without the ``Value error,`` prefix) and
    the value found (:func:`shown_value`, under the field ``name``), unless the value was missing,
    is not shown, or the text quotes it already (a validator's own "got …")."""
    message: str = detail["msg"].removeprefix("Value error, ")
    value = None if detail["type"] == "missing" else shown_value(detail["input"], name=name)
    return message if value is None or value in message else f"{message} (got {value})"


def shown_part(part: str) -> str:
    """``part`` for an error or a log line: as it is, or :data:`MASK` if it looks like a key."""
    return MASK if looks_like_a_key(part) else part


@dataclass(frozen=True, slots=True)
class SecretReference:
    """``secret:provider[/name]:field``. ``str`` and ``repr`` mask a part that looks like a key
    (pasted in place of a name), so errors and logs that quote the reference do not carry it."""

    provider: str
    field: str
    name: str | None = None

    def __str__(self) -> str:
        owner = shown_part(self.provider) + (f"/{shown_part(self.name)}" if self.name else "")
        return f"{SECRET_PREFIX}{owner}:{shown_part(self.field)}"

    def __repr__(self) -> str:
        name = repr(shown_part(self.name)) if self.name is not None else "None"
        return (
            f"SecretReference(provider={shown_part(self.provider)!r}, "
            f"field={shown_part(self.field)!r}, name={name})"
        )


@dataclass(frozen=True, slots=True)
class EnvReference:
    """``os.environ/NAME``. ``str`` and ``repr`` mask a name that looks like a key."""

    variable: str

    def __str__(self) -> str:
        return f"{ENV_PREFIX}{shown_part(self.variable)}"

    def __repr__(self) -> str:
        return f"EnvReference(variable={shown_part(self.variable)!r})"


def parse_reference(text: str) -> SecretReference | EnvReference | None:
    """The reference ``text`` stands for, or ``None`` for a plain value.

    Text that starts like a reference but is malformed raises :class:`SecretReferenceError` (a
    typo must not silently become a plain value sent as an API key): also a prefix in another case
    (``Secret:``, ``OS.ENVIRON/``) or after leading spaces. Anything but a ``str`` is a
    :class:`ConfigurationError`. Results are cached (they are immutable; errors are not cached).
    """
    if not isinstance(text, str):  # else a bare AttributeError, or the cache's "unhashable type"
        raise ConfigurationError(
            f"a secret reference must be a str ('secret:provider:field', 'os.environ/NAME' or a plain "
            f"value), got {shown(text)}"
        )
    return _parse_reference(text)


@lru_cache(maxsize=4096)
def _parse_reference(text: str) -> SecretReference | EnvReference | None:
    if text.startswith(SECRET_PREFIX):
        match = _SECRET_RE.match(text)
        if match is None:
            raise SecretReferenceError(
                f"malformed secret reference {_shown(text, SECRET_PREFIX)}: use 'secret:provider:field' or "
                "'secret:provider/name:field' (provider in lower case, e.g. 'secret:openai:api_key')"
            )
        reference = SecretReference(match["provider"], match["field"], match["name"])
        _register_keys(reference.provider, reference.field, reference.name)
        return reference
    if text.startswith(ENV_PREFIX):
        match = _ENV_RE.match(text)
        if match is None:
            raise SecretReferenceError(
                f"malformed environment reference {_shown(text, ENV_PREFIX)}: use 'os.environ/NAME' "
                "with NAME a variable name (letters, digits, '_')"
            )
        _register_keys(match["variable"])
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


def shown_reference(text: str) -> str | None:
    """``text`` as it may be shown (a config's ``repr``, an API listing) if it is a reference
    (``secret:…``, ``os.environ/…``), else ``None``: as written, but with a part shaped like a key
    masked, and a malformed reference cut down to its prefix (what follows may be a pasted key)."""
    if not text.startswith((SECRET_PREFIX, ENV_PREFIX)):
        return None
    try:
        return str(parse_reference(text))
    except SecretReferenceError:
        return (SECRET_PREFIX if text.startswith(SECRET_PREFIX) else ENV_PREFIX) + MASK


def masked_settings(
    data: Any,
    is_credential: Callable[[object, object], bool],
    *,
    key_shaped: bool = False,
    redact: bool = False,
    secret: bool = False,
    parent: object = None,
) -> Any:
    """A copy of settings as they may be shown (a ``repr``, an API listing): references as written
    (:func:`shown_reference`: they say where a secret comes from, not what it is); strings under a
    key that ``is_credential(key, parent)`` names, at any depth, masked; with ``key_shaped``, a
    string shaped like a key masked wherever it is; the others with a URL's password and credential
    query values masked, and with ``redact`` every registered secret value too."""
    if isinstance(data, str):
        shown = shown_reference(data)
        if shown is not None:
            return shown
        if secret or (key_shaped and not any(c.isspace() for c in data) and looks_like_a_key(data)):
            return MASK  # (a key has no spaces)
        text = masked_url(data) if "://" in data else data
        return REDACTOR.redact(text) if redact else text
    options: dict[str, Any] = {"key_shaped": key_shaped, "redact": redact}
    if isinstance(data, Mapping):
        return {
            key: masked_settings(
                value, is_credential, secret=secret or is_credential(key, parent), parent=key, **options
            )
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return type(data)(
            masked_settings(item, is_credential, secret=secret, parent=parent, **options) for item in data
        )
    return data


def _register_keys(*parts: str | None) -> None:
    """Register the parts that look like keys with the redactor: log records that quote the
    reference anyway (a host's own logging, a library's) are masked by :class:`RedactingFilter`."""
    for part in parts:
        if part is not None and looks_like_a_key(part):
            REDACTOR.register(part)


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
    if any(looks_like_a_key(name) for name in re.split("[:/]", part[len(prefix) :])):
        part = prefix  # a whole reference in shape, with a key where a name goes
    if len(part) == len(text):
        return repr(part)
    return f"{part + '…'!r} ({len(text) - len(part)} more characters, not shown)"
