"""Field types shared by the wire models."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator, StringConstraints

from dynamic_agents.exceptions import UnsupportedSchemaVersionError

__all__ = [
    "KNOWN_SOURCES",
    "SCHEMA_MAJOR",
    "SCHEMA_VERSION",
    "ChannelId",
    "EventId",
    "SourceName",
    "UtcDatetime",
    "check_schema_version",
    "source_name",
    "utc_now",
]

SCHEMA_MAJOR: Final = 1
SCHEMA_MINOR: Final = 0
SCHEMA_VERSION: Final = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"
_VERSION_RE: Final = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})")  # fullmatch: "$" passes "1.0\n"
_ANY_VERSION_RE: Final = re.compile(r"([0-9]{1,4})(?:\.[0-9]{1,4})*")  # "2", "2.0.0": the major readable
_MAX_MAJOR: Final = 10_000

#: Platforms the project knows by name. ``source`` is an open set: any lower-case slug is accepted,
#: so a new platform (``matrix``, ``teams``…) needs no release of this library.
KNOWN_SOURCES: Final = frozenset({"discord", "slack", "whatsapp", "telegram", "rest", "webhook", "internal"})


def utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    # The seed's publishers use ``datetime.utcnow()``: a naive timestamp on the wire means UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def check_schema_version(value: object) -> str:
    """Accept ``major.minor`` with this release's major; a newer minor is read as is.

    Another major is refused as :class:`UnsupportedSchemaVersionError` also where the version has
    another shape that still names its major (``"2"``, ``2``, ``2.0``, ``"2.0.0"``): the event is
    a newer (or older) producer's, not a malformed one. A malformed version of this major is a
    ``ValueError``, as is one whose major cannot be read."""
    if value == SCHEMA_VERSION:  # nearly every event: no parsing
        return SCHEMA_VERSION
    major = _major(value)
    if major is not None and major != SCHEMA_MAJOR:
        raise UnsupportedSchemaVersionError(str(value), SCHEMA_MAJOR)
    if not isinstance(value, str):
        raise ValueError(f"schema_version must be a string like {SCHEMA_VERSION!r}")  # noqa: TRY004 (pydantic reports ValueError only)
    if _VERSION_RE.fullmatch(value) is None:
        raise ValueError(f"schema_version must look like 'major.minor' (e.g. {SCHEMA_VERSION!r})")
    return value


def _major(value: object) -> int | None:
    """The major version ``value`` names: the first of its dot-separated ASCII numbers (up to
    4 digits each), or a JSON number's whole part; ``None`` when it names none."""
    if isinstance(value, str):
        match = _ANY_VERSION_RE.fullmatch(value)
        return None if match is None else int(match.group(1))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value < _MAX_MAJOR:  # also NaN (no comparison holds), and inf
        return None
    return int(value)


def _normalise_source(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A timezone-aware UTC timestamp; a naive one is read as UTC, an aware one converted."""

EVENT_ID_PATTERN: Final = r"^[\x21-\x7e]{1,256}$"
"""What an event's id (a request's, a response's) is: see :data:`EventId`."""

EventId = Annotated[str, StringConstraints(pattern=EVENT_ID_PATTERN)]
"""Printable ASCII without spaces, 1-256 characters: ids travel in envelope headers and key names."""

SOURCE_PATTERN: Final = r"^[a-z][a-z0-9_.-]{0,63}$"
"""What a platform slug looks like once normalised (stripped, lower-cased)."""

_SOURCE_RE: Final = re.compile(SOURCE_PATTERN)


def source_name(value: str, *, what: str = "source") -> str:
    """``value`` as events read a source (stripped, in lower case), or :class:`ValueError` saying
    why no event could have it (``what`` names the value: ``interface 'x'`` reads better there)."""
    source = value.strip().lower()
    if not _SOURCE_RE.match(source):
        from dynamic_agents._validation import shown  # on the error path only

        raise ValueError(  # a key pasted in its place is masked
            f"{what} {shown(value)} is not a platform name, so no event can have it as its source: a "
            "letter, then letters, digits, '_', '.' or '-' (at most 64), read in lower case"
        )
    return source


SourceName = Annotated[str, BeforeValidator(_normalise_source), StringConstraints(pattern=SOURCE_PATTERN)]
"""A platform slug, lower-cased: ``discord``, ``slack``, ``whatsapp``, or any new one."""

CHANNEL_ID_PATTERN: Final = r"[^\x00-\x1f\x7f]{1,256}"
"""What a channel id may be: 1-256 characters, no control characters (routing refuses a rule's id
that is none, as no event can have it)."""

ChannelId = Annotated[str, StringConstraints(pattern=f"^{CHANNEL_ID_PATTERN}$")]
"""A platform's channel / conversation id: 1-256 characters, no control characters."""
