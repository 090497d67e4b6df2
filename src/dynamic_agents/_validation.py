"""Checks of numeric settings, shared by every package: a bad value is a
:class:`~dynamic_agents.exceptions.ConfigurationError` naming the setting, the value and what is
valid. Types are checked first (``"8"`` or ``None`` would fail a comparison with a bare
``TypeError``; a bool is no number here), and NaN is refused (it compares false with everything, so
it would pass a ``value <= 0`` check and make a wait that never ends), and so is a duration over
:data:`MAX_SECONDS` (Redis refuses it in milliseconds). The value is quoted as
:func:`shown` quotes it: a key pasted into the wrong setting is masked, a long text cut."""

from __future__ import annotations

import difflib
import math
import re
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Literal, TypeVar, overload

from pydantic import BeforeValidator

from dynamic_agents.exceptions import ConfigurationError

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "MAX_SECONDS",
    "NotBoolean",
    "a_type",
    "check_base_url",
    "check_callable",
    "check_choice",
    "check_count",
    "check_flag",
    "check_seconds",
    "invalid_fields",
    "not_boolean",
    "shown",
    "unsendable_token",
    "with_article",
]

E = TypeVar("E", bound=StrEnum)

MAX_SECONDS: Final = 2**31
"""The longest finite duration a setting takes, in seconds (about 68 years; ``math.inf`` is no
limit where a setting allows it). Leases, records, stream expiries, XAUTOCLAIM's min-idle and
XREADGROUP's block go to Redis in milliseconds, and Redis refuses one past its 64-bit range (a PX
beyond 2**63 ms minus now): 1e30 failed there, on every call, as a TransportError that looked like
an outage. 2**31 s is 2.1e12 ms, far inside that range (and a sum of two of them too); no lease,
timeout or retention is meant to be longer."""


LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
"""Half of a UTF-16 pair alone (JSON's ``"\\ud800"``, which Python's reader takes): no Unicode
character, and no UTF-8 text (a store's, a reply's) can hold it."""


def shown(value: object) -> str:
    """``value`` as an error about a setting quotes it: a number, a boolean or ``None`` as it is; a
    string cut to 60 characters and masked when it may be a secret (shaped like a key, a
    registered secret, a URL's password); a container or another object by its type only."""
    # on the error path only: the secrets package imports this module
    from dynamic_agents.secrets.references import shown_value

    return shown_value(value) or a_type(value)


def a_type(value: object) -> str:
    """``a dict``, ``an EventRouter``, ``a UUID``: the value by its type, as errors name what they
    got."""
    return with_article(type(value).__name__)


_SAID_WITH_A_CONSONANT: Final = ("eu", "one", "uni", "uri", "url", "us", "uti")
"""Starts of words spelt with a vowel but said with "you" or "wun": a User, a Unicode…, a OneOf."""
_SAID_WITH_A_VOWEL: Final = ("heir", "honest", "honor", "honour", "hour")
"""Starts of words whose h is silent: an Hour."""
_LETTERS_SAID_WITH_A_VOWEL: Final = "AEFHILMNORSX"
"""The letters whose names start with a vowel sound ("aitch", "el", "ess"): an HTTPError, an
LLMRouter, but a UUID, a JSONDecodeError."""


def with_article(noun: str) -> str:
    """``noun`` after "a" or "an", chosen by how it is said: ``an int``, ``a User``, ``an
    HTTPError``, ``a UUID``. A name starting with two capitals is an initialism, said letter by
    letter; otherwise a vowel takes "an", but for the starts in :data:`_SAID_WITH_A_CONSONANT`, and
    a consonant "a", but for a silent h."""
    word = noun.lstrip("_")
    if word[:2].isupper():
        vowel = word[0] in _LETTERS_SAID_WITH_A_VOWEL
    else:
        lowered = word.lower()
        vowel = lowered.startswith(("a", "e", "i", "o", "u"))
        if lowered.startswith(_SAID_WITH_A_CONSONANT if vowel else _SAID_WITH_A_VOWEL):
            vowel = not vowel
    return f"{'an' if vowel else 'a'} {noun}"


HTTP_URL: Final = (
    "an http(s) URL with a host (and a numeric port, if any), without spaces or control characters"
)


def check_base_url(name: str, url: object) -> str:
    """``url`` if it can be an httpx client's ``base_url`` (:data:`HTTP_URL`, without credentials
    or a query string), else a :class:`ConfigurationError` naming ``name`` and the URL with its
    credentials masked. Each failed later: ``None`` with a bare AttributeError, a port that is no
    number or a newline pasted with the URL at the first request; httpx sends a URL's credentials
    as Basic auth in place of the bearer token, and appends each request's path to its query (or
    drops the path)."""
    from urllib.parse import urlsplit

    from dynamic_agents._redaction import masked_url

    if not isinstance(url, str):
        raise ConfigurationError(f"{name} must be {HTTP_URL}, got {shown(url)}")
    shown_url = repr(masked_url(url, register=False))
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        parts, hostname = None, None
    blank = any(character.isspace() or not character.isprintable() for character in url)
    if parts is None or parts.scheme not in {"http", "https"} or not hostname or blank:
        raise ConfigurationError(f"{name} must be {HTTP_URL}, got {shown_url}")
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"{name} {shown_url} holds credentials: httpx would send them as Basic auth in place "
            "of the bearer token (every request refused); give the token as token=…"
        )
    if "?" in url.partition("#")[0]:
        raise ConfigurationError(
            f"{name} {shown_url} has a query string: the API's paths would go into it; give the "
            "service's URL alone (https://service.example.com, or with a path prefix)"
        )
    return url


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``, else a :class:`ConfigurationError` naming ``name``
    (``"false"``, from the environment or YAML text, would be true)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {shown(value)}")
    return value


def check_callable(name: str, value: object, what: str) -> None:
    """A :class:`ConfigurationError` naming ``name`` unless ``value`` is callable (``what`` says
    what it must be): taken as given, a number or a name in a str failed only at its first call,
    with a bare TypeError ("'float' object is not callable"), maybe long after, in an outage."""
    if not callable(value):
        raise ConfigurationError(f"{name} must be {what}, got {shown(value)}")


def unsendable_token(token: str) -> bool:
    """Whether a bearer ``token`` cannot be sent in an ``Authorization`` header: a space, a line
    break or a character that is not printable ASCII. httpx fails to encode a non-ASCII one with
    an error holding the whole header in clear, and h11 refuses a line break with an error that
    quotes it, escaped past the redactor: every traceback of the failure would show the token."""
    return not (token.isascii() and token.isprintable()) or " " in token


@overload
def check_seconds(
    name: str, value: object, *, zero: bool = False, forever: bool = False, optional: Literal[False] = False
) -> float: ...


@overload
def check_seconds(
    name: str, value: object, *, zero: bool = False, forever: bool = False, optional: Literal[True]
) -> float | None: ...


def check_seconds(
    name: str, value: object, *, zero: bool = False, forever: bool = False, optional: bool = False
) -> float | None:
    """``value`` as a float if it is a number of seconds > 0 (>= 0 with ``zero``) and at most
    :data:`MAX_SECONDS`, finite unless ``forever`` (then ``math.inf`` is accepted: a setting where
    "no limit" has a meaning); ``None`` passes with ``optional``."""
    if type(value) is float and 0.0 < value <= MAX_SECONDS:  # the common case, on hot paths
        return value
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        # an int is finite (math.isnan of one past a float's range raises OverflowError)
        or (
            isinstance(value, float)
            and (math.isnan(value) or (math.isinf(value) and not (forever and value > 0)))
        )
        or value < 0
        or (value == 0 and not zero)
    ):
        kind = "a number of seconds (math.inf: no limit)" if forever else "a finite number of seconds"
        bound = ">= 0" if zero else "> 0"
        alternative = " (or None)" if optional else ""
        raise ConfigurationError(f"{name} must be {kind} {bound}{alternative}, got {shown(value)}")
    if MAX_SECONDS < value < math.inf:  # math.inf passed above only where it means no limit
        no_limit = "; math.inf: no limit" if forever else ""
        raise ConfigurationError(
            f"{name} must be at most {MAX_SECONDS} seconds (about 68 years{no_limit}), got {shown(value)}"
        )
    return float(value)


@overload
def check_count(name: str, value: object, *, minimum: int = 1, optional: Literal[False] = False) -> int: ...


@overload
def check_count(name: str, value: object, *, minimum: int = 1, optional: Literal[True]) -> int | None: ...


def check_count(name: str, value: object, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an int (``5.0`` is 5) if it is a whole number >= ``minimum``; ``None`` passes
    with ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        alternative = " (or None)" if optional else ""
        raise ConfigurationError(f"{name} must be a whole number {bound}{alternative}, got {shown(value)}")
    return value


def check_choice(name: str, value: object, choices: type[E]) -> E:
    """``value`` as a member of ``choices`` (its text accepted, as YAML and the environment give it),
    else a :class:`ConfigurationError` naming the setting, the value and the valid ones, and the
    one it is close to, if any."""
    if isinstance(value, choices):
        return value
    if isinstance(value, str):
        try:
            return choices(value)
        except ValueError:
            pass
    valid = ", ".join(repr(choice.value) for choice in choices)
    # a typo or another case ("Reject", " merge", "enqeue"): say which one it surely meant
    close = (
        difflib.get_close_matches(value.strip().lower(), [choice.value for choice in choices], n=1)
        if isinstance(value, str)
        else []
    )
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigurationError(f"{name} must be one of {valid}, got {shown(value)}{hint}")


def not_boolean(value: object) -> object:
    """``value`` unless it is a boolean: a pydantic before-validator for a number field, where
    pydantic would take ``True`` as 1 (YAML reads ``yes``, ``no``, ``on`` and ``off`` as booleans:
    ``max_tokens: yes`` would be a one-token answer). A :class:`ConfigurationError` is a
    ``ValueError``, which pydantic reports at the field's path."""
    if isinstance(value, bool):
        raise ConfigurationError(
            "must be a number, not a boolean (YAML reads yes, no, on and off as booleans)"
        )
    return value


NotBoolean: Final = BeforeValidator(not_boolean)
""":func:`not_boolean` as an annotation: ``Annotated[int, NotBoolean]``."""


def invalid_fields(error: ValidationError, whole: str) -> str:
    """Which fields of ``error``'s input are invalid and why, without their values (a message may
    go where the input may not: it can hold a reply's content, a key); ``whole`` names an error of
    the input as a whole."""
    return "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or whole}: {detail['msg']}"
        for detail in error.errors(include_url=False, include_input=False)
    )
