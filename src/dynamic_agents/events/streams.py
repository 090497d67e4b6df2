"""Names of the streams and keys the library uses; nothing else formats them.

With the default prefix ``agent``::

    agent:requests                          requests from every interface
    agent:responses:{source}:{source_id}    replies, one stream per platform channel
    agent:events                            lifecycle and progress events
    agent:requests:dead                     entries that could not be handled
    agent:completed:{request_id}            completed-request records (idempotency)
    agent:lease:{session_id}                session leases (one run per session)
    agent:cancel:{request_id}               cancellation requests

On Redis Cluster, the atomic operations (reply + record + ack in one MULTI) need every key in one
hash slot: use a hash-tagged prefix such as ``{agents}``, giving ``{agents}:requests`` and so on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from dynamic_agents._validation import shown
from dynamic_agents.exceptions import ConfigurationError

__all__ = ["DEFAULT_PREFIX", "StreamNames"]

DEFAULT_PREFIX: Final = "agent"
_PREFIX_RE: Final = re.compile(r"(\{[^{}\s]+\}|[^{}\s:]+)([^{}\s]*[^{}\s:])?")
_PART_RE: Final = re.compile(r"^[^\x00-\x1f\x7f]+$")


def _checked_part(name: str, value: str) -> str:
    if value and value.isprintable():  # the common case, cheaper than the regex (same verdict)
        return value
    if not _PART_RE.fullmatch(value):
        raise ConfigurationError(  # the value masked: a key pasted in the wrong place, say
            f"{name} {shown(value)} cannot be part of a stream name: it must be non-empty "
            "and without control characters"
        )
    return value


@dataclass(frozen=True, slots=True)
class StreamNames:
    """Builds every stream and key name from one prefix (``agent`` by default).

    >>> StreamNames().responses("discord", "123")
    'agent:responses:discord:123'
    >>> StreamNames("{agents}").requests
    '{agents}:requests'
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):  # not "^…$": "$" also matches before a final "\n"
            raise ConfigurationError(
                f"stream prefix {self.prefix!r} is invalid: use a name without spaces, braces "
                "or a trailing ':' (e.g. 'agent'), or one Redis Cluster hash tag (e.g. '{agents}')"
            )

    @property
    def requests(self) -> str:
        return f"{self.prefix}:requests"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:requests:dead"

    def responses(self, source: str, source_id: str) -> str:
        """The reply stream of one platform channel; the source in lower case, as events read it
        (``"Discord"`` is ``"discord"``), the channel id as given."""
        return (
            f"{self.prefix}:responses:{_checked_part('source', source.strip().lower())}:"
            f"{_checked_part('source_id', source_id)}"
        )

    def completed_record(self, request_id: str) -> str:
        return f"{self.prefix}:completed:{_checked_part('request_id', request_id)}"

    def session_lease(self, session_id: str) -> str:
        return f"{self.prefix}:lease:{session_id}"

    def cancel_flag(self, request_id: str) -> str:
        return f"{self.prefix}:cancel:{_checked_part('request_id', request_id)}"
