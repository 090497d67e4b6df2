"""The transport and coordinator interfaces, and the values they exchange.

A :class:`Transport` moves events through streams with consumer groups (at-least-once delivery);
a :class:`Coordinator` gives workers session leases and completed-request records. Both have an
in-memory and a Redis implementation with the same semantics, checked by one contract test suite.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Generic, Protocol, Self, TypeGuard, TypeVar

from dynamic_agents._frozen import slot_init
from dynamic_agents._logging import get_logger
from dynamic_agents._validation import MAX_SECONDS, check_count, check_seconds, shown
from dynamic_agents.events import AgentResponseEvent, DecodedMessage, EventCodec, StreamNames, WireModel
from dynamic_agents.events._types import EVENT_ID_PATTERN
from dynamic_agents.events.envelope import DATA_FIELD
from dynamic_agents.exceptions import (
    ConfigurationError,
    DecodeError,
    DeliveryError,
    EventError,
    TransportError,
)
from dynamic_agents.transports._scripts import UNPACK_MAX

__all__ = [
    "Claim",
    "ClaimStatus",
    "Clock",
    "CompletedRecord",
    "Completion",
    "Coordinator",
    "Delivery",
    "Entry",
    "Lease",
    "PendingEntry",
    "Reply",
    "Subscription",
    "SystemClock",
    "Transport",
    "TransportStats",
]

E = TypeVar("E", bound=WireModel)

logger = get_logger("transports")

_MAX_ID_PART: Final = 2**64 - 1
_ENTRY_ID_RE: Final = re.compile(r"([0-9]+)-([0-9]+)")
_READ_POSITION_RE: Final = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_PLAIN_ENTRY_ID_RE: Final = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")  # within _MAX_ID_PART: nothing to compare
_REQUEST_ID_RE: Final = re.compile(EVENT_ID_PATTERN)


def parse_entry_id(entry_id: str) -> tuple[int, int] | None:
    """``(milliseconds, sequence)`` of a full stream entry id (``"1700000000000-0"``), or ``None``
    if it is not one (nor a str: ``None``, the bytes redis-py gives)."""
    match = _ENTRY_ID_RE.fullmatch(entry_id) if isinstance(entry_id, str) else None
    if match is None:
        return None
    millis, sequence = int(match[1]), int(match[2])
    if millis > _MAX_ID_PART or sequence > _MAX_ID_PART:
        return None
    return millis, sequence


def parse_read_position(after: str) -> tuple[int, int] | None:
    """Where ``read_stream(after=…)`` starts, as ``XREAD`` reads it: ``(milliseconds, sequence)``
    of an entry id, ``"ms"`` being ``"ms-0"``; ``None`` for ``"$"`` (the newest entry when the
    read starts). :class:`ConfigurationError` for anything else, on every transport alike."""
    if after == "$":
        return None
    match = _READ_POSITION_RE.fullmatch(after) if isinstance(after, str) else None
    millis, sequence = (int(match[1]), int(match[2] or 0)) if match is not None else (-1, -1)
    if not (0 <= millis <= _MAX_ID_PART and 0 <= sequence <= _MAX_ID_PART):
        raise ConfigurationError(
            f"{shown(after)} is not a stream entry id (like '1700000000000-0', '1700000000000' or '$')"
        )
    return millis, sequence


def parse_entry_position(entry_id: str) -> tuple[int, int]:
    """``(milliseconds, sequence)`` of an id as ``XDEL``, ``XRANGE`` and ``XGROUP CREATE`` take
    it (``"ms"`` being ``"ms-0"``); :class:`ConfigurationError` for anything else (``"$"``
    included), on every transport alike."""
    position = parse_read_position(entry_id) if entry_id != "$" else None
    if position is None:
        raise ConfigurationError(f"{shown(entry_id)} is not a stream entry id (like '1700000000000-0')")
    return position


DEAD_LETTER_FIELD_PREFIX: Final = "dead_letter."
"""Fields a dead-letter entry adds to the original entry's fields (``dead_letter.reason``, …)."""

DEAD_LETTER_PACKED_FIELD: Final = b"dead_letter.fields"
"""The field that carries the original fields of an entry with too many to copy one by one
(:data:`DEAD_LETTER_MAX_FIELDS`), or with one named like the metadata (``dead_letter.…``), packed
by :func:`pack_fields`."""

_DEAD_LETTER_PREFIX: Final = DEAD_LETTER_FIELD_PREFIX.encode()

DEAD_LETTER_MAX_FIELDS: Final = UNPACK_MAX // 2
"""The most fields a dead letter has with the original fields copied one by one (3,500: a Redis
script passes at most ``UNPACK_MAX`` values, names and values, to one command); beyond, they are
packed into :data:`DEAD_LETTER_PACKED_FIELD`."""

_LENGTH: Final = struct.Struct(">I")


def encoded_fields(fields: object) -> dict[bytes, bytes]:
    """Fields to write as an entry: a non-empty mapping of ``str`` / ``bytes`` names to ``str`` /
    ``bytes`` values (text as UTF-8); else :class:`ConfigurationError` naming the first bad field
    and what it is (its value is not shown: it may be anything)."""
    if not isinstance(fields, Mapping) or not fields:
        raise ConfigurationError(
            f"an entry needs a non-empty mapping of fields, got {type(fields).__name__}"
            + (" (empty)" if isinstance(fields, Mapping) else "")
        )
    encoded: dict[bytes, bytes] = {}
    for name, value in fields.items():
        if not isinstance(name, str | bytes) or not isinstance(value, str | bytes):
            raise ConfigurationError(
                f"field {name!r} of an entry must be str or bytes, named by str or bytes; its value "
                f"is {type(value).__name__}"
            )
        encoded[name.encode() if isinstance(name, str) else name] = (
            value.encode() if isinstance(value, str) else value
        )
    return encoded


def check_events(events: object) -> None:
    """``publish_many``'s events: a sequence of events (:class:`WireModel`), else a
    :class:`ConfigurationError` naming the first bad one, before anything is written (one event
    given alone was iterated as its fields: a bare AttributeError)."""
    if not isinstance(events, Sequence) or isinstance(events, str | bytes):
        raise ConfigurationError(f"events must be a list of events, got {shown(events)}")
    for index, event in enumerate(events):
        if not isinstance(event, WireModel):
            raise ConfigurationError(f"events[{index}] must be an event (a WireModel), got {shown(event)}")


def check_envelopes(envelopes: object) -> None:
    """``publish_envelopes``' envelopes: a sequence (not one ``bytes`` or ``str`` envelope) of
    ``bytes`` or ``str`` (as :func:`encoded_fields` takes a value); else a
    :class:`ConfigurationError` naming the first bad one, before anything is written (Redis wrote
    an int as its text, each byte of a lone envelope as an entry, and failed on ``None`` with a
    bare TypeError)."""
    if isinstance(envelopes, str | bytes | bytearray | memoryview) or not isinstance(envelopes, Sequence):
        raise ConfigurationError(
            f"envelopes must be a list of encoded events, got {type(envelopes).__name__}"
        )
    for index, envelope in enumerate(envelopes):
        if not isinstance(envelope, bytes | str):
            raise ConfigurationError(
                f"envelopes[{index}] must be bytes (an encoded event) or str, got {type(envelope).__name__}"
            )


FULL_CAPACITY_WAIT: Final = 0.01
"""The shortest wait of :meth:`Transport.consume` between checks of a full capacity (seconds)."""


def check_maxlen(maxlen: object) -> int | None:
    """A ``maxlen`` (trim a stream to about that many entries) as an int, or ``None``; else
    :class:`ConfigurationError` (a negative one would empty an in-memory stream)."""
    if maxlen is None or (type(maxlen) is int and maxlen >= 0):  # at once: every publish and reply
        return maxlen
    return check_count("maxlen", maxlen, minimum=0, optional=True)


def check_name(what: str, name: object) -> str:
    """A stream's, group's or consumer's ``name``: a non-empty str, not only spaces, without
    control characters; else a :class:`ConfigurationError` (Redis would make a group named ``""``
    or ``"5"``, or refuse ``None`` with an error of its client's)."""
    if _is_name(name):
        return name
    raise ConfigurationError(f"{what} must be a non-empty name without control characters, got {shown(name)}")


def _is_name(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and bool(name.strip()) and name.isprintable()


def check_stream_option(stream: object, default: str) -> str | None:
    """A ``stream=`` option naming another stream than the transport's ``default`` one (``None``):
    an empty name, one of spaces or with control characters (as :func:`check_name`), or anything
    but a str, is a :class:`ConfigurationError` (``""`` once meant the default stream, so whoever
    aimed at another one would have acted on that one)."""
    if stream is None or _is_name(stream):
        return stream
    raise ConfigurationError(
        f"stream must be a non-empty stream name without control characters (or None: the "
        f"transport's {default} stream), got {shown(stream)}"
    )


def stream_names(names: object) -> StreamNames:
    """A transport's or coordinator's ``names``: ``None`` is the default :class:`StreamNames`;
    anything but a ``StreamNames`` (a prefix given in its place, ``"myapp"``) is a
    :class:`ConfigurationError`: taken, it failed at the first use with a bare AttributeError."""
    if names is None:
        return StreamNames()
    if isinstance(names, StreamNames):
        return names
    raise ConfigurationError(
        f"names must be a StreamNames (StreamNames('myapp') for the prefix 'myapp'), got {shown(names)}"
    )


def check_read_count(count: object) -> int:
    """``read()``'s ``count`` as an int (``2.0`` is 2); one <= 0 reads nothing (a caller's free
    capacity may be none). Anything but a whole number is a :class:`ConfigurationError`: Redis
    would refuse it as a failure of its own, and the in-memory transport read entries for it."""
    if type(count) is int:
        return count
    return check_count("count", count, minimum=0)


def check_ttl(ttl: object) -> float:
    """A lease's, record's or cancellation flag's ``ttl``: a finite number of seconds > 0, else
    :class:`ConfigurationError` (checked before anything is written, on every coordinator)."""
    return check_seconds("ttl", ttl)


def check_expire(expire: object) -> float | None:
    """An ``expire`` (seconds an idle stream lives) as a float, or ``None``; else
    :class:`ConfigurationError`."""
    if expire is None or (type(expire) is float and 0.0 < expire <= MAX_SECONDS):  # at once, as maxlen
        return expire
    return check_seconds("expire", expire, optional=True)


class Clock(Protocol):
    """Wall-clock seconds; the in-memory backend takes a manual one for deterministic tests."""

    def time(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()


@slot_init
@dataclass(frozen=True, slots=True)
class Entry(Generic[E]):
    """One stream entry: its id, its raw fields, and the decoded message or why it did not decode."""

    stream: str
    entry_id: str
    fields: Mapping[bytes, bytes]
    message: DecodedMessage[E] | None = None
    error: EventError | None = None

    @property
    def event(self) -> E:
        """The decoded event; raises the decode error for an entry that did not decode."""
        if self.message is None:
            if self.error is None:  # made by hand (both default to None); no assert: gone under -O
                raise EventError(
                    f"entry {self.entry_id!r} of {self.stream!r} holds neither a decoded message nor "
                    "the error it did not decode with (Transport.read and decode_entry give one)"
                )
            raise self.error
        return self.message.event


@dataclass(frozen=True, slots=True)
class Subscription(Generic[E]):
    """How a consumer reads a stream through a group.

    ``block`` is the longest a read waits for new entries (seconds). Entries pending on another
    consumer for longer than ``claim_min_idle`` are reclaimed by the same reads (``None`` turns that
    off); the reclaim scan runs at most every ``claim_interval`` (default: half of
    ``claim_min_idle``). Undecodable entries are dead-lettered by the transport when
    ``dead_letter_undecodable`` is true, and still returned (``settled``) so the caller can count them;
    one whose dead-lettering fails is logged and left out, pending until a later reclaim.

    With ``claim_ttl`` set, a transport that can claims each new request's session lease (for
    that many seconds) in the read's own round trip, and returns it as :attr:`Delivery.claim`; the
    Redis transport does so for requests in FastStream's binary envelope whose JSON body has a
    ``session_id``, in reads of at most 8 new requests (a bigger batch shares the round trip of
    its claims anyway, and plain commands cost Redis less); the in-memory one never. Entries it
    does not claim have ``claim`` ``None``.
    """

    stream: str
    group: str
    consumer: str
    model: type[E]
    batch_size: int = 16
    block: float = 5.0
    claim_min_idle: float | None = 60.0
    claim_interval: float | None = None
    dead_letter_undecodable: bool = True
    claim_ttl: float | None = None

    def __post_init__(self) -> None:
        # NaN passes a ``< 0`` check and then never ends a wait (in memory) or fails a read with a
        # bare ValueError (on Redis), so these go through the shared checks.
        check_count("batch_size", self.batch_size)
        check_seconds("claim_ttl", self.claim_ttl, optional=True)
        check_seconds("block", self.block, zero=True)
        check_seconds("claim_min_idle", self.claim_min_idle, optional=True)
        check_seconds("claim_interval", self.claim_interval, zero=True, optional=True)
        for name in ("stream", "group", "consumer"):
            check_name(name, getattr(self, name))

    @property
    def reclaim_every(self) -> float:
        if self.claim_interval is not None:
            return self.claim_interval
        return (self.claim_min_idle or 0.0) / 2


@slot_init
@dataclass(frozen=True, slots=True)
class Delivery(Entry[E]):
    """An entry delivered to one consumer of a group; it stays pending until acked or dead-lettered.

    ``settled`` is true for an undecodable entry the transport has already dead-lettered: acking or
    dead-lettering it again does nothing.

    ``claim`` is the request's session claim made in the read's own round trip, when the
    subscription asked for it (``claim_ttl``) and the transport can (Redis): what
    :meth:`Coordinator.claim` of ``(event.session_id, [event.id], claim_ttl)`` returned at that
    moment. A lease it holds is the caller's to use or release.
    """

    subscription: Subscription[E] | None = None
    delivery_count: int = 1
    settled: bool = False
    claim: Claim | None = None

    @property
    def sub(self) -> Subscription[E]:
        if self.subscription is None:  # made by hand (it defaults to None); no assert: gone under -O
            raise DeliveryError(
                f"delivery {self.entry_id!r} of {self.stream!r} has no subscription: a Delivery "
                "read by Transport.read has its Subscription (give one when making it by hand)"
            )
        return self.subscription

    @property
    def group(self) -> str:
        return self.sub.group

    @property
    def consumer(self) -> str:
        return self.sub.consumer


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry delivered to a consumer and not yet acked (Redis ``XPENDING``)."""

    entry_id: str
    consumer: str
    idle: float
    delivery_count: int


@slot_init
@dataclass(frozen=True, slots=True)
class Reply:
    """A response to write with :meth:`Transport.complete` or :meth:`Transport.dead_letter`.

    ``stream`` ``None`` writes no stream entry (the record is still kept). ``channel`` also (or
    instead) sends it with Redis ``PUBLISH`` — how a FastStream RPC caller (``broker.request()``)
    waits for it — carrying ``correlation_id`` (the request's, for such callers). ``maxlen`` trims
    the reply stream approximately, and ``expire`` (seconds) lets an idle reply stream expire.
    """

    event: AgentResponseEvent
    stream: str | None
    maxlen: int | None = None
    expire: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    channel: str | None = None
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "maxlen", check_maxlen(self.maxlen))
        check_expire(self.expire)

    def envelope(self, codec: EventCodec) -> bytes:
        return codec.encode_envelope(self.event, headers=self.headers, correlation_id=self.correlation_id)


@slot_init
@dataclass(frozen=True, slots=True)
class CompletedRecord:
    """Proof that a request was answered: what answered it and where the reply entry is."""

    request_id: str
    response_id: str
    status: str
    reply_stream: str | None
    reply_entry_id: str | None
    completed_at: float

    def to_fields(self) -> dict[str, str]:
        return {
            "request_id": self.request_id,
            "response_id": self.response_id,
            "status": self.status,
            "reply_stream": self.reply_stream or "",
            "reply_entry_id": self.reply_entry_id or "",
            "completed_at": repr(self.completed_at),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes] | Mapping[str, str]) -> CompletedRecord:
        text = {_text(key): _text(value) for key, value in fields.items()}
        return cls(
            request_id=text["request_id"],
            response_id=text["response_id"],
            status=text["status"],
            reply_stream=text.get("reply_stream") or None,
            reply_entry_id=text.get("reply_entry_id") or None,
            completed_at=float(text.get("completed_at") or 0),
        )


@slot_init
@dataclass(frozen=True, slots=True)
class Completion:
    """What :meth:`Transport.complete` did: ``created`` is false when the request was already
    answered (nothing was written again; ``record`` is the earlier answer)."""

    record: CompletedRecord
    created: bool


@slot_init
@dataclass(frozen=True, slots=True)
class Lease:
    """A session lease held by ``token``'s owner until renewed, released or expired. The token
    ends with ``/{holder}`` (the request running under it) so others can ask who holds it."""

    session_id: str
    token: str
    ttl: float

    @property
    def holder(self) -> str:
        return self.token.partition("/")[2]


class ClaimStatus(StrEnum):
    """What :meth:`Coordinator.claim` found."""

    LEASED = "leased"
    """The lease is taken: run."""
    BUSY = "busy"
    """Someone else holds the session's lease: try again later."""
    ANSWERED = "answered"
    """Some of the requests were answered before: nothing was taken."""
    CANCELLED = "cancelled"
    """Some of the requests have a cancellation request: nothing was taken."""


@slot_init
@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of :meth:`Coordinator.claim`: ``lease`` when ``LEASED``; ``request_ids`` the
    requests found answered (``ANSWERED``) or cancelled (``CANCELLED``)."""

    status: ClaimStatus
    lease: Lease | None = None
    request_ids: frozenset[str] = frozenset()


class _TokenSource:
    """Unique lease tokens without a system call each: a random prefix per process, drawn again
    in a forked child (which would otherwise repeat its parent's tokens), and a counter."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.prefix = secrets.token_hex(12)
        self.counter = itertools.count()


_TOKENS: Final = _TokenSource()
if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_TOKENS.renew)


def unique_token() -> str:
    """Hex no other call returns, in any process (without ``/`` or ``:``)."""
    return f"{_TOKENS.prefix}{next(_TOKENS.counter):x}"


def lease_token(holder: str) -> str:
    """A token no other claim has, in any process, followed by ``/holder``."""
    return f"{unique_token()}/{holder}"


@dataclass(slots=True)
class TransportStats:
    """Counters a transport keeps (read them for metrics; they only grow)."""

    published: int = 0
    delivered: int = 0
    reclaimed: int = 0
    reclaimed_deleted: int = 0
    claimed_on_read: int = 0
    """Requests whose session claim came with their read (:attr:`Subscription.claim_ttl`)."""
    acked: int = 0
    dead_lettered: int = 0
    undecodable: int = 0
    groups_recreated: int = 0
    reconnects: int = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _AsyncResource(ABC):
    """``async with`` support around :meth:`aclose`."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Transport(_AsyncResource):
    """Streams with consumer groups: publish, read, ack, release, keep fresh, dead-letter, complete.

    Delivery is at least once. ``complete`` and ``dead_letter`` are atomic: every part is written
    or none is. Use as ``async with transport:`` or call :meth:`aclose`.
    """

    names: StreamNames
    codec: EventCodec
    stats: TransportStats

    # -- writing ----------------------------------------------------------------------------------

    async def publish(
        self,
        stream: str,
        event: WireModel,
        *,
        headers: Mapping[str, str] | None = None,
        reply_to: str | None = None,
        maxlen: int | None = None,
        expire: float | None = None,
    ) -> str:
        """Append ``event`` to ``stream``; returns the entry id.

        ``maxlen`` trims approximately and ``expire`` (seconds) makes an idle stream expire: use them
        on reply and event streams only — trimming a request stream by count deletes unread entries.
        """
        if not isinstance(event, WireModel):  # else a bare AttributeError of the codec's
            raise ConfigurationError(f"event must be an event (a WireModel), got {shown(event)}")
        fields = self.codec.encode_entry(event, reply_to=reply_to, headers=headers)
        return await self.publish_fields(stream, fields, maxlen=maxlen, expire=expire)

    async def publish_many(
        self, stream: str, events: Sequence[WireModel], *, maxlen: int | None = None
    ) -> list[str]:
        """Append ``events`` to ``stream`` in order; returns their entry ids. On Redis one script
        call writes them all or none; elsewhere (this default) some may be written before an error."""
        check_events(events)  # all, before any is encoded
        envelopes = [self.codec.encode_envelope(event) for event in events]
        return await self.publish_envelopes(stream, envelopes, maxlen=maxlen)

    async def publish_envelopes(
        self, stream: str, envelopes: Sequence[bytes], *, maxlen: int | None = None
    ) -> list[str]:
        """:meth:`publish_many` of events already encoded (``codec.encode_envelope``): one entry
        ``{"__data__": envelope}`` each, in order."""
        maxlen = check_maxlen(maxlen)  # refused even with nothing to publish, as on Redis
        check_envelopes(envelopes)  # all, before any is written
        return [
            await self.publish_fields(stream, {DATA_FIELD: envelope}, maxlen=maxlen) for envelope in envelopes
        ]

    @abstractmethod
    async def publish_fields(
        self,
        stream: str,
        fields: Mapping[str, bytes] | Mapping[bytes, bytes],
        *,
        maxlen: int | None = None,
        expire: float | None = None,
    ) -> str:
        """Append raw fields (already encoded, or copied from another entry); returns the entry id.
        ``fields`` must be a non-empty mapping of ``str`` / ``bytes`` to ``str`` / ``bytes``
        (:func:`encoded_fields`), else :class:`ConfigurationError` and nothing is written."""

    # -- consuming --------------------------------------------------------------------------------

    @abstractmethod
    async def ensure_group(self, stream: str, group: str, *, start_id: str = "0") -> bool:
        """Create ``group`` on ``stream`` (and the stream) unless it exists; true if created.

        The default start ``0`` means entries written before the group existed are delivered too.
        """

    @abstractmethod
    async def read(
        self, subscription: Subscription[E], count: int, *, skip_sessions: Collection[str] = ()
    ) -> list[Delivery[E]]:
        """Up to ``count`` deliveries: reclaimed ones first, then new ones, waiting at most
        ``subscription.block`` seconds when there are none. Never returns more than ``count``
        (none for a ``count`` <= 0; one that is no whole number is a :class:`ConfigurationError`).

        With ``subscription.claim_ttl``, the sessions in ``skip_sessions`` are not claimed on
        read: the caller's own requests in flight for them come first, and claim in turn."""

    async def consume(
        self, subscription: Subscription[E], capacity: Callable[[], int]
    ) -> AsyncIterator[Delivery[E]]:
        """Yield deliveries forever, reading only as many as ``capacity()`` says are free.

        With no free capacity it waits ``subscription.block`` seconds (at least
        :data:`FULL_CAPACITY_WAIT`: with ``block=0`` it would hold the CPU) before asking again.
        """
        while True:
            free = min(capacity(), subscription.batch_size)
            if free <= 0:
                await asyncio.sleep(max(subscription.block, FULL_CAPACITY_WAIT))
                continue
            for delivery in await self.read(subscription, free):
                yield delivery

    @abstractmethod
    async def ack(self, *deliveries: Delivery[Any]) -> int:
        """Acknowledge deliveries (one round trip per call); returns how many were still pending."""

    @abstractmethod
    async def release(self, delivery: Delivery[Any], *, delay: float = 0.0) -> bool:
        """Give a delivery back for another attempt after ``delay`` seconds, at most the
        subscription's ``claim_min_idle`` (the next reclaim takes it, counting a new delivery).
        False if this consumer no longer held it."""

    @abstractmethod
    async def keep_fresh(self, deliveries: Sequence[Delivery[Any]]) -> list[Delivery[Any]]:
        """Reset the idle time of deliveries this consumer still holds, so they are not reclaimed,
        without counting a new delivery. Returns the deliveries it no longer holds (lost)."""

    async def uncount(self, delivery: Delivery[Any]) -> bool:
        """Take back the count of ``delivery``, a delivery to this consumer that handled nothing:
        its own reclaim scan took back an entry it was still handling (it could not keep the entry
        fresh in time). Only while this consumer holds the entry and nothing claimed it since (its
        count is still ``delivery.delivery_count``): the count goes back by one and the idle time to
        0; true if so. Otherwise a later taker would find the entry delivered once more than it
        was, and past ``max_deliveries`` sooner. This default, for other transports, changes
        nothing and returns false."""
        return False

    @abstractmethod
    async def dead_letter(
        self,
        delivery: Delivery[Any],
        reason: str,
        reply: Reply | None = None,
        *,
        record_ttl: float | None = None,
    ) -> bool:
        """Atomically: copy the entry to the dead-letter stream with ``reason``, delivery count and
        consumer, write ``reply`` if given, and ack. Does nothing and returns false if this consumer
        no longer holds the entry, or the request was already answered (then it only acks).

        With ``record_ttl`` (it needs a ``reply``), a decoded request's completed-request record is
        written in the same step, naming the reply and kept ``record_ttl`` seconds: a later delivery
        of the request (a platform's retry of it, a run that lost its entry) is then acked as
        answered instead of running and being answered again. The dead letter names the record in
        ``dead_letter.request_id`` and ``dead_letter.response_id``, and requeueing it deletes that record
        (:meth:`Coordinator.delete_record`), so the requeued request runs.
        """

    @abstractmethod
    async def complete(
        self, delivery: Delivery[Any], reply: Reply, *, record_ttl: float, lease: Lease | None = None
    ) -> Completion:
        """Atomically: write ``reply``, the completed-request record (kept ``record_ttl`` seconds)
        and the ack. If the request already has a record, only ack and return the earlier record.

        With ``lease`` (from this transport's :meth:`coordinator`), the reply is written only while
        that lease is still held, and the lease is released in the same step: a run that outlived
        its lease raises :class:`~dynamic_agents.exceptions.LeaseLostError` and writes nothing
        (another worker may be running the request). An answered request is acked either way.
        """

    # -- inspecting -------------------------------------------------------------------------------

    @abstractmethod
    async def read_stream(
        self,
        stream: str,
        model: type[E],
        *,
        after: str = "0-0",
        count: int = 100,
        block: float | None = None,
    ) -> list[Entry[E]]:
        """At most ``count`` (> 0) entries after id ``after`` without a group (replies, dead
        letters); waits up to ``block`` seconds for one when there are none (``None``: do not
        wait). As Redis ``XREAD`` reads them, ``after="$"`` is after the stream's newest entry when
        the call starts, and ``"1700000000000"`` is ``"1700000000000-0"``; anything else that is
        not an entry id (Redis 7.4's ``"+"`` included) is a :class:`ConfigurationError`."""

    async def read_entry(self, stream: str, entry_id: str, model: type[E]) -> Entry[E] | None:
        """The entry ``entry_id`` of ``stream`` (read without a group), or ``None`` when the stream
        has no such entry; ``entry_id`` is a full entry id (``"1700000000000-0"``), else
        :class:`ConfigurationError`."""
        parsed = parse_entry_id(entry_id)
        if parsed is None or parsed == (0, 0):
            raise ConfigurationError(f"{shown(entry_id)} is not a stream entry id (like '1700000000000-0')")
        millis, sequence = parsed
        before = f"{millis}-{sequence - 1}" if sequence else f"{millis - 1}-{_MAX_ID_PART}"
        entries = await self.read_stream(stream, model, after=before, count=1)
        return entries[0] if entries and parse_entry_id(entries[0].entry_id) == parsed else None

    @abstractmethod
    async def delete(self, stream: str, *entry_ids: str) -> int:
        """Delete entries (``XDEL``); returns how many existed. For operations on dead letters —
        never on a request stream's pending entries."""

    async def move(
        self, source: str, entry_id: str, stream: str, fields: Mapping[str, bytes] | Mapping[bytes, bytes]
    ) -> str | None:
        """Append ``fields`` to ``stream`` as a new entry and delete entry ``entry_id`` from
        ``source``, as one step; returns the new entry's id, or ``None`` when ``source`` no longer
        has the entry (then nothing is written). Requeueing a dead letter is a move: of two
        concurrent moves of one entry, one writes it and the other gets ``None``.

        The Redis and in-memory transports do it atomically, and a Redis call retried after its
        reply was lost returns the entry its first attempt wrote. This default, for other transports,
        publishes and then deletes: a crash in between leaves the entry in both streams, and
        concurrent moves of one entry can each publish it (each then returns an id).
        """
        entry = await self.publish_fields(stream, fields)
        await self.delete(source, entry_id)
        return entry

    @abstractmethod
    async def last_entry_id(self, stream: str) -> str:
        """The id of the stream's newest entry (``"0-0"`` for an empty or missing stream): read
        after it to see only what comes next."""

    @abstractmethod
    async def pending(self, stream: str, group: str, *, count: int = 100) -> list[PendingEntry]:
        """Entries delivered in ``group`` and not yet acked, oldest first."""

    @abstractmethod
    async def trim_acknowledged(self, stream: str) -> int:
        """Delete entries every group has read and acked (``XTRIM MINID``); returns how many.

        Entries pending or not yet delivered in any group are kept. A stream without groups is left
        alone.
        """

    @abstractmethod
    def coordinator(self) -> Coordinator:
        """A coordinator sharing this transport's storage (records written by ``complete`` show)."""

    # -- lifecycle --------------------------------------------------------------------------------

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections; un-acked deliveries stay pending for other consumers."""


class Coordinator(_AsyncResource):
    """Session leases (one run per session anywhere) and completed-request records."""

    @abstractmethod
    async def acquire(self, session_id: str, ttl: float, *, holder: str = "") -> Lease | None:
        """Take the session's lease for ``ttl`` seconds, or ``None`` if someone else holds it.
        ``holder`` (a request id) is recorded with it: see :meth:`holder`."""

    @abstractmethod
    async def holder(self, session_id: str) -> str | None:
        """What holds the session's lease now (the ``holder`` given to ``acquire``), if anyone."""

    @abstractmethod
    async def request_cancel(self, request_id: str, ttl: float = 3600.0) -> None:
        """Ask whichever worker runs (or will run) ``request_id`` to cancel it; an id no request
        can have (not 1 to 256 printable ASCII characters without spaces) is a
        :class:`ConfigurationError`, not a flag that would never stop anything."""

    @abstractmethod
    async def cancelled(self, request_ids: Sequence[str]) -> set[str]:
        """Which of ``request_ids`` have a cancellation request."""

    async def claim(self, session_id: str, request_ids: Sequence[str], ttl: float) -> Claim:
        """Everything a worker checks before a run: were any of ``request_ids`` answered before
        (``ANSWERED``), is any cancelled (``CANCELLED``), else take the session's lease for
        ``ttl`` seconds with the last request as holder (``LEASED``, or ``BUSY``). Only
        ``LEASED`` leaves the lease taken.

        The default makes three calls; backends override it with one round trip.
        """
        check_request_ids(request_ids)
        if not request_ids:
            raise ConfigurationError("claim() needs at least one request id")
        check_ttl(ttl)  # whatever the claim finds, as on Redis
        answered = await self._answered(request_ids)
        if answered:
            return Claim(ClaimStatus.ANSWERED, request_ids=frozenset(answered))
        cancelled = await self.cancelled(request_ids)
        if cancelled:
            return Claim(ClaimStatus.CANCELLED, request_ids=frozenset(cancelled))
        lease = await self.acquire(session_id, ttl, holder=request_ids[-1])
        return Claim(ClaimStatus.LEASED, lease) if lease is not None else Claim(ClaimStatus.BUSY)

    async def _answered(self, request_ids: Sequence[str]) -> set[str]:
        """Those of ``request_ids`` with a completed-request record (for :meth:`claim`)."""
        return {rid for rid in request_ids if await self.get_record(rid) is not None}

    @abstractmethod
    async def renew(self, lease: Lease, ttl: float | None = None) -> bool:
        """Extend a lease this owner still holds; false if it expired or passed to someone else."""

    @abstractmethod
    async def release(self, lease: Lease) -> bool:
        """Give the lease up; false (and nothing changed) if this owner no longer holds it."""

    @abstractmethod
    async def get_record(self, request_id: str) -> CompletedRecord | None:
        """The completed-request record of ``request_id``, if it was answered (and not expired)."""

    @abstractmethod
    async def set_record(self, record: CompletedRecord, ttl: float) -> bool:
        """Store a record unless one exists for the request; true if stored."""

    @abstractmethod
    async def delete_record(self, request_id: str, *, response_id: str | None = None) -> bool:
        """Delete the completed-request record of ``request_id`` — only if it names
        ``response_id`` as the request's answer, when given (as one step); true if deleted."""

    async def aclose(self) -> None:
        """Release what the coordinator owns (nothing, when it shares a transport's client)."""


def check_request_ids(request_ids: object, *, ordered: bool = True) -> None:
    """``claim``'s ``request_ids``, a sequence of str (``cancelled``'s: any collection, ``ordered``
    false), else a :class:`ConfigurationError` naming what it got (one id given alone, a str, was
    read as its characters: a claim with the last one as the lease's holder)."""
    if type(request_ids) is list:  # every claim of the worker's: the common case checked cheaply
        for request_id in request_ids:
            if type(request_id) is not str:
                break
        else:
            return
    kind = Sequence if ordered else Collection
    if isinstance(request_ids, str | bytes) or not isinstance(request_ids, kind):
        raise ConfigurationError(f"request_ids must be a list of request ids (str), got {shown(request_ids)}")
    for index, request_id in enumerate(request_ids):
        if not isinstance(request_id, str):
            raise ConfigurationError(
                f"request_ids must be a list of request ids (str), got {shown(request_id)} at {index}"
            )


def check_cancellable(request_id: str) -> None:
    """A cancellation's ``request_id`` must be an id a request can have: a flag under another (one
    copied with a trailing space, say) would never stop anything, yet look requested."""
    if not _REQUEST_ID_RE.fullmatch(request_id):
        raise ConfigurationError(
            f"request_id {shown(request_id)} is no request's id: a request's id is 1 to 256 "
            "printable ASCII characters, without spaces"
        )


def check_transport(transport: object) -> Transport:
    """A ``transport`` argument (of a client, a worker, the dead-letter operations): a
    :class:`Transport`, else a :class:`ConfigurationError` naming it (``None`` or a URL failed
    with a bare AttributeError on ``.names``)."""
    if isinstance(transport, Transport):
        return transport
    raise ConfigurationError(
        "transport must be a Transport (RedisStreamsTransport.from_url(…), InMemoryTransport()), "
        f"got {shown(transport)}"
    )


def check_coordinator(coordinator: object) -> Coordinator:
    """A ``coordinator`` argument (of a worker): a :class:`Coordinator`, else a
    :class:`ConfigurationError` naming it (``None`` failed with a bare AttributeError at the first
    request, logged, and the request stayed pending)."""
    if isinstance(coordinator, Coordinator):
        return coordinator
    raise ConfigurationError(
        f"coordinator must be a Coordinator (transport.coordinator()), got {shown(coordinator)}"
    )


def delivered(
    entry: Entry[E], subscription: Subscription[E], count: int, claim: Claim | None = None
) -> Delivery[E]:
    """The delivery of ``entry`` to ``subscription``'s consumer, delivered ``count`` times."""
    # Positional, in the order of Delivery's fields: a call with keywords builds a dict of them,
    # and this runs for every entry read.
    return Delivery(
        entry.stream,
        entry.entry_id,
        entry.fields,
        entry.message,
        entry.error,
        subscription,
        count,  # delivery_count
        False,  # settled
        claim,
    )


def delivery_position(delivery: Delivery[Any]) -> tuple[int, int]:
    """``(milliseconds, sequence)`` of a delivery's entry id (as :func:`parse_entry_position`
    reads it). A delivery made by hand whose ``entry_id`` is none is a :class:`ConfigurationError`
    naming it, which every call taking a delivery raises before it writes anything, on every
    transport: on Redis such a completion failed every completion batched with it, once their
    replies and records were written and before their acks."""
    try:
        return parse_entry_position(delivery.entry_id)
    except ConfigurationError:
        raise ConfigurationError(
            f"entry_id {shown(delivery.entry_id)} of the delivery is not a stream entry id (like "
            "'1700000000000-0'): a delivery read by Transport.read has its entry's"
        ) from None


def check_delivery(delivery: Delivery[Any]) -> None:
    """:func:`delivery_position`'s check alone, cheaper for the ids Redis gives (on the worker's
    path: one per completion)."""
    entry_id = delivery.entry_id
    if type(entry_id) is not str or _PLAIN_ENTRY_ID_RE.fullmatch(entry_id) is None:
        delivery_position(delivery)  # accepts the rest of what an entry id may be, or says why not


def released_idle(delivery: Delivery[Any], delay: float) -> float:
    """The idle time to give a released delivery so reclaim takes it after ``delay`` seconds."""
    min_idle = delivery.sub.claim_min_idle
    if min_idle is None:
        raise ConfigurationError(
            "release() needs a subscription with claim_min_idle: without reclaim nobody would "
            "take the released entry"
        )
    delay = check_seconds("delay", delay, zero=True)
    if delay > min_idle:  # reclaim takes it once idle claim_min_idle, whatever was asked for
        raise ConfigurationError(
            f"delay must be at most the subscription's claim_min_idle ({min_idle}s), got {delay}: "
            "reclaim takes a released entry once it has been idle that long"
        )
    return min_idle - delay


def decode_entry(
    codec: EventCodec, stream: str, entry_id: str, fields: Mapping[bytes, bytes], model: type[E]
) -> Entry[E]:
    """The entry with its decoded message, or with the error that says why it does not decode.

    Never raises: the codec raises :class:`EventError` for anything it refuses, and any other
    exception (a codec bug, or input it did not foresee) is turned into a :class:`DecodeError`
    naming its type, so one bad entry is dead-lettered instead of failing the read of its batch.
    """
    try:
        return Entry(stream, entry_id, fields, codec.decode_entry(fields, model))  # the message
    except EventError as error:
        return Entry(stream, entry_id, fields, error=error)
    except Exception as error:
        logger.exception(
            "decoding entry %s of %r raised %s (a codec bug?)", entry_id, stream, type(error).__name__
        )
        failure = DecodeError(f"decoding the entry raised {type(error).__name__}: {str(error)[:200]}")
        failure.__cause__ = error
        return Entry(stream, entry_id, fields, error=failure)


def record_key_of(names: StreamNames, delivery: Delivery[Any]) -> str | None:
    if delivery.message is None:
        return None
    return names.completed_record(delivery.message.event.id)


def dead_letter_record_ttl(record_ttl: float | None, reply: Reply | None) -> float | None:
    """``dead_letter``'s ``record_ttl``, checked: seconds, and only with a reply (the record names it)."""
    if record_ttl is None:
        return None
    if reply is None:
        raise ConfigurationError(
            "dead_letter(record_ttl=...) needs a reply: the completed-request record names it"
        )
    return check_seconds("record_ttl", record_ttl)


def stored_record(record: CompletedRecord) -> str:
    """A completed-request record as a record key holds it (a string on every backend): the JSON
    object of :meth:`CompletedRecord.to_fields`."""
    return json.dumps(record.to_fields())


def read_record(stored: bytes | str) -> CompletedRecord:
    """The record a record key's string holds (see :func:`stored_record`)."""
    try:
        return CompletedRecord.from_fields(json.loads(stored))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise TransportError(f"a completed-request record is not readable: {error}") from error


def pack_fields(fields: Mapping[bytes, bytes]) -> bytes:
    """Fields as one value: each name, then its value, as a 4-byte big-endian length and the bytes."""
    parts: list[bytes] = []
    for key, value in fields.items():
        parts += (_LENGTH.pack(len(key)), key, _LENGTH.pack(len(value)), value)
    return b"".join(parts)


def unpack_fields(packed: bytes) -> dict[bytes, bytes]:
    """The fields :func:`pack_fields` packed; :class:`DecodeError` if ``packed`` is not such a value."""
    fields: dict[bytes, bytes] = {}
    offset, end = 0, len(packed)
    while offset < end:
        pair: list[bytes] = []
        for _ in range(2):
            if offset + _LENGTH.size > end:
                raise DecodeError(f"packed fields truncated at byte {offset} of {end}")
            (length,) = _LENGTH.unpack_from(packed, offset)
            offset += _LENGTH.size
            if offset + length > end:
                raise DecodeError(f"packed fields corrupt: {length} bytes at byte {offset} run past {end}")
            pair.append(packed[offset : offset + length])
            offset += length
        fields[pair[0]] = pair[1]
    return fields


def dead_letter_fields(
    delivery: Delivery[Any], reason: str, now: float, *, response_id: str | None = None
) -> Mapping[bytes, bytes]:
    """The original fields plus ``dead_letter.*`` fields saying where, when, who and why (and, with
    ``response_id``, ``request_id`` and ``response_id``: the completed-request record the
    dead-lettering wrote, named whether or not a reader can decode the entry).

    An entry with too many fields (:data:`DEAD_LETTER_MAX_FIELDS`) has them packed into one,
    :data:`DEAD_LETTER_PACKED_FIELD` (:func:`unpack_fields` reads it back), so it can still be
    dead-lettered whole; ``DeadLetters`` unpacks them. So has an entry with a field whose name
    starts with :data:`DEAD_LETTER_FIELD_PREFIX`: copied as it is, the metadata would overwrite it,
    or a reader take it for metadata and drop it on requeue.
    """
    extra = {
        "reason": reason,
        "stream": delivery.stream,
        "group": delivery.group,
        "consumer": delivery.consumer,
        "entry_id": delivery.entry_id,
        "delivery_count": str(delivery.delivery_count),
        "dead_at": repr(now),
    }
    if response_id is not None and delivery.message is not None:
        extra["request_id"] = delivery.message.event.id
        extra["response_id"] = response_id
    fields = dict(delivery.fields)
    if len(fields) + len(extra) > DEAD_LETTER_MAX_FIELDS or any(
        name.startswith(_DEAD_LETTER_PREFIX) for name in fields
    ):
        fields = {DEAD_LETTER_PACKED_FIELD: pack_fields(fields)}
    fields.update({f"{DEAD_LETTER_FIELD_PREFIX}{k}".encode(): v.encode() for k, v in extra.items()})
    return fields


async def settle_undecodable(
    transport: Transport, sub: Subscription[E], deliveries: list[Delivery[E]]
) -> list[Delivery[E]]:
    """Dead-letter the deliveries that did not decode (when the subscription says so).

    One that cannot be dead-lettered (the call fails) is logged and left out of the result: it
    stays pending on this consumer, so a later reclaim delivers it and tries again, and the other
    deliveries of the read are returned as usual. One bad entry never fails a whole read.
    """
    if not sub.dead_letter_undecodable:
        return deliveries
    settled: list[Delivery[E]] = []
    for delivery in deliveries:
        if delivery.error is None:
            settled.append(delivery)
            continue
        transport.stats.undecodable += 1
        logger.warning(
            "entry %s of %r does not decode, dead-lettering it: %s",
            delivery.entry_id,
            delivery.stream,
            delivery.error,
        )
        try:
            await transport.dead_letter(delivery, f"undecodable: {delivery.error}")
        except Exception as error:
            logger.error(  # noqa: TRY400 - a traceback only for what is not the broker's refusal
                "dead-lettering undecodable entry %s of %r failed, leaving it pending (a reclaim "
                "tries again): %s",
                delivery.entry_id,
                delivery.stream,
                error,
                exc_info=not isinstance(error, TransportError),
            )
            continue
        settled.append(_settled(delivery))
    return settled


def _settled(delivery: Delivery[E]) -> Delivery[E]:
    return replace(delivery, settled=True)
