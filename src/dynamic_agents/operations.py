"""Operations on the dead-letter stream, as library calls (a REST router can mount them).

A request lands on the dead-letter stream (``transport.names.dead_letters``) when it does not
decode, or when it was delivered more than ``max_deliveries`` times; each dead letter is the
original entry's fields plus ``dead_letter.*`` fields saying why, from where, by whom and when (an
entry with thousands of fields has them packed into one, ``dead_letter.fields``, which
:attr:`DeadLetter.fields` gives back unpacked).
:class:`DeadLetters` lists them, sums them up, puts them back on their stream and deletes them::

    dead = DeadLetters(transport)
    for letter in await dead.list(limit=20):
        print(letter.id, letter.kind, letter.origin_stream, letter.delivery_count)
    await dead.requeue(letter.id)            # once the fault is fixed
    await dead.purge(before=a_week_ago)

**Requeue** moves the dead letter back: its original fields (without the ``dead_letter.*`` ones)
go to the origin stream as a *new* entry, so the request gets a fresh delivery budget (its delivery
count starts at 1 again), and the dead letter is deleted, in one step (:meth:`Transport.move`: one
script on Redis). Of two requeues of one dead letter, from any number of processes, one publishes
it and the other finds it gone. A transport without an atomic ``move`` publishes and then deletes:
a crash between the two leaves a request both requeued and still dead-lettered — never a lost one —
and requeueing that leftover is harmless for a request answered meanwhile, since the worker acks a
request that has a completed-request record without running it. A request the worker dead-lettered
for too many deliveries got an error reply and a completed-request record naming it (so a platform's
retry of the request is acked, not run and dead-lettered again); requeueing it deletes that record
first — only that one: a record a later answer wrote stays, and the requeued request is acked — so
it runs and gets a second, successful reply. (A crash between the two, or a requeue that finds the
letter gone, leaves the record deleted: a retry of the request then runs again, as it would have
without the record.) Purging a dead letter leaves its record: the request stays answered, its
retries acked, until the record expires (``WorkerSettings.record_ttl``, a week by default).

An undecodable entry requeued unchanged is dead-lettered again by the next worker that reads it;
requeue those only after fixing what could not read them (a codec or schema upgrade).

Reasons are grouped into *kinds* (:func:`reason_kind`) for :meth:`DeadLetters.summary`,
:meth:`DeadLetters.requeue_all` and :meth:`DeadLetters.purge_all`:

* ``undecodable: <decode error>`` → ``"undecodable"``;
* ``delivered N times (max_deliveries=M)`` → ``"max deliveries"``;
* any other reason → its text before the first ``:`` (``"poison: bad tool"`` → ``"poison"``), or the
  whole reason when it has no ``:``; an empty reason → ``"unknown"``.

Their ``reason=`` takes a kind: a whole reason (``"undecodable: Expecting value"``) is a
:class:`~dynamic_agents.exceptions.ConfigurationError` naming its kind, not a filter matching nothing.

Summaries, ``requeue_all``, ``purge(before=…)`` and ``purge_all`` scan the whole stream (in pages),
which is fine for the few thousand entries a dead-letter stream should ever hold. The bulk
operations only touch the entries that existed when they started, so entries dead-lettered
meanwhile — say, undecodable ones requeued by this very call — are left for the next call.
"""

from __future__ import annotations

import asyncio
import builtins
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final

from dynamic_agents._logging import get_logger
from dynamic_agents._validation import check_count, shown
from dynamic_agents.events import AgentRequestEvent
from dynamic_agents.exceptions import (
    ConfigurationError,
    DecodeError,
    DeliveryError,
    EventError,
    RequeueError,
    TransportError,
)
from dynamic_agents.transports import Transport
from dynamic_agents.transports.base import (
    DEAD_LETTER_FIELD_PREFIX,
    DEAD_LETTER_PACKED_FIELD,
    check_stream_option,
    check_transport,
    parse_entry_id,
    unpack_fields,
)

__all__ = [
    "MAX_DELIVERIES",
    "UNDECODABLE",
    "UNKNOWN_REASON",
    "DeadLetter",
    "DeadLetterSummary",
    "DeadLetters",
    "reason_kind",
]

logger = get_logger("operations")

UNDECODABLE: Final = "undecodable"
"""The kind of a dead letter the transport set aside because it did not decode."""
MAX_DELIVERIES: Final = "max deliveries"
"""The kind of a dead letter the worker set aside after too many deliveries."""
UNKNOWN_REASON: Final = "unknown"
"""The kind of a dead letter without a reason."""

_PAGE: Final = 500
_MAX_DELIVERIES_RE: Final = re.compile(r"^delivered \d+ times\b")
_PREFIX: Final = DEAD_LETTER_FIELD_PREFIX.encode()


def reason_kind(reason: str) -> str:
    """The stable kind of a dead-letter reason, without its variable part (see the module docs)."""
    reason = reason.strip()
    if not reason:
        return UNKNOWN_REASON
    if _MAX_DELIVERIES_RE.match(reason):
        return MAX_DELIVERIES
    head, colon, _ = reason.partition(":")
    return (head.strip() or UNKNOWN_REASON) if colon else reason


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream.

    ``id`` is the dead-letter entry's id (what :meth:`DeadLetters.requeue` and
    :meth:`DeadLetters.purge` take); ``origin_stream`` and ``origin_entry_id`` say where the request
    was, ``group`` and ``consumer`` who held it, ``delivery_count`` how often it had been delivered.
    ``fields`` are the original entry's fields (without ``dead_letter.*``); ``request`` is the request
    decoded from them, or ``None`` with ``decode_error`` saying why. ``request_id`` and
    ``response_id`` name the completed-request record the dead-lettering wrote — the request's and
    its error reply's ids, there even when ``request`` does not decode here (``None`` if it wrote
    none): what :meth:`DeadLetters.requeue` deletes. Fields missing from an entry
    someone wrote by hand read as empty strings and ``0``; ``dead_at`` then falls back to the time
    in the entry id.
    """

    id: str
    reason: str
    origin_stream: str
    origin_entry_id: str
    group: str
    consumer: str
    delivery_count: int
    dead_at: datetime
    request: AgentRequestEvent | None
    decode_error: str | None
    fields: Mapping[bytes, bytes] = field(repr=False, compare=False)
    request_id: str | None = None
    response_id: str | None = None

    @property
    def kind(self) -> str:
        """The reason without its variable part: ``"undecodable"``, ``"max deliveries"``, …"""
        return reason_kind(self.reason)


@dataclass(frozen=True, slots=True)
class DeadLetterSummary:
    """Counts over the whole dead-letter stream: by reason kind and by origin stream.

    ``oldest`` and ``newest`` are the earliest and latest ``dead_at`` (``None`` when empty).
    """

    total: int
    by_reason: Mapping[str, int]
    by_stream: Mapping[str, int]
    oldest: datetime | None
    newest: datetime | None


class DeadLetters:
    """List, summarise, requeue and purge the entries of the dead-letter stream.

    ``stream`` defaults to ``transport.names.dead_letters`` (an empty name, or a ``transport`` that
    is no :class:`~dynamic_agents.transports.Transport`, is a
    :class:`~dynamic_agents.exceptions.ConfigurationError`). Unknown (or malformed) entry ids raise
    :class:`~dynamic_agents.exceptions.DeliveryError` (a ``LookupError``), as does requeueing a dead
    letter someone else requeued or purged meanwhile; requeueing one that records no origin stream
    raises :class:`~dynamic_agents.exceptions.RequeueError`. Concurrent requeues of one id (a double click,
    two operators) publish the request once, within a process and across processes alike.
    """

    def __init__(self, transport: Transport, *, stream: str | None = None) -> None:
        self.transport = check_transport(transport)  # else a bare AttributeError on .names
        stream = check_stream_option(stream, "dead-letter")
        self.stream = stream if stream is not None else transport.names.dead_letters
        self._coordinator = transport.coordinator()  # shares the transport's client: nothing to close
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DeadLetters({self.stream!r})"

    # -- reading ----------------------------------------------------------------------------------

    async def list(self, *, limit: int = 100, after: str = "0-0") -> builtins.list[DeadLetter]:
        """Up to ``limit`` dead letters after entry id ``after``, oldest first.

        Page on by passing the last id you got as ``after``.
        """
        limit = check_count("limit", limit)
        if parse_entry_id(after) is None:
            raise ConfigurationError(
                f"after={shown(after)} is not a stream entry id (like '1700000000000-0')"
            )
        entries = await self.transport.read_stream(self.stream, AgentRequestEvent, after=after, count=limit)
        return [self._letter(entry.entry_id, entry.fields) for entry in entries]

    async def get(self, entry_id: str) -> DeadLetter:
        """The dead letter with id ``entry_id``; :class:`DeliveryError` if there is none."""
        try:
            entry = await self.transport.read_entry(self.stream, entry_id, AgentRequestEvent)
        except ConfigurationError:
            raise DeliveryError(
                f"no dead letter {shown(entry_id)}: not a stream entry id (like '1700000000000-0')"
            ) from None
        if entry is None:
            raise DeliveryError(f"no dead letter {entry_id!r} on {self.stream!r}")
        return self._letter(entry.entry_id, entry.fields)

    async def summary(self) -> DeadLetterSummary:
        """Counts by reason kind and origin stream, and the oldest and newest ``dead_at``."""
        by_reason: Counter[str] = Counter()
        by_stream: Counter[str] = Counter()
        oldest: datetime | None = None
        newest: datetime | None = None
        async for letter in self._scan():
            by_reason[letter.kind] += 1
            by_stream[letter.origin_stream] += 1
            oldest = letter.dead_at if oldest is None else min(oldest, letter.dead_at)
            newest = letter.dead_at if newest is None else max(newest, letter.dead_at)
        return DeadLetterSummary(
            total=by_reason.total(),
            by_reason=dict(by_reason.most_common()),
            by_stream=dict(by_stream.most_common()),
            oldest=oldest,
            newest=newest,
        )

    # -- requeueing -------------------------------------------------------------------------------

    async def requeue(self, entry_id: str) -> str:
        """Move the dead letter's original fields to its origin stream as a new entry (a fresh
        delivery budget), deleting the dead letter; returns the new entry's id.

        :class:`DeliveryError` if there is no such dead letter (or no longer: requeued or purged
        meanwhile); :class:`~dynamic_agents.exceptions.RequeueError` if it does not say which stream
        it came from, or has no original fields (a dead letter written by hand, say).
        """
        async with self._lock:
            letter = await self.get(entry_id)
            new_id = await self._requeue(letter)
        if new_id is None:
            raise DeliveryError(
                f"no dead letter {entry_id!r} on {self.stream!r}: requeued or purged meanwhile"
            )
        return new_id

    async def requeue_all(self, *, reason: str | None = None) -> int:
        """Requeue every dead letter there is now (or those of kind ``reason``, as
        :func:`reason_kind` names them); returns how many were requeued. A ``reason`` that is not a
        kind (a whole reason, say) is a :class:`ConfigurationError`. A letter that cannot be
        requeued as it is (no origin stream or fields, an origin key holding something other than a
        stream) is left where it is with a warning; trouble reaching the transport is raised."""
        _check_kind(reason)
        requeued = 0
        async with self._lock:
            async for letter in self._scan(until=await self.transport.last_entry_id(self.stream)):
                if reason is not None and letter.kind != reason:
                    continue
                if not letter.origin_stream or not letter.fields:
                    logger.warning("dead letter %s has no origin stream or fields: not requeued", letter.id)
                    continue
                try:
                    new_id = await self._requeue(letter)
                except TransportError as error:
                    if "WRONGTYPE" not in str(error):  # Redis away…: the rest would fail alike
                        raise
                    # it would fail alike on every run, and stop every later requeue_all here
                    logger.warning("dead letter %s not requeued: %s", letter.id, error)
                    continue
                if new_id is not None:
                    requeued += 1
        return requeued

    async def _requeue(self, letter: DeadLetter) -> str | None:
        """The new entry's id, or ``None`` if someone else requeued or purged the letter first."""
        if not letter.origin_stream:
            raise RequeueError(
                letter.id,
                self.stream,
                f"it does not say which stream it came from (no {DEAD_LETTER_FIELD_PREFIX}stream field)",
            )
        if not letter.fields:
            raise RequeueError(letter.id, self.stream, "it has no original fields to put back")
        if letter.request_id is not None and letter.response_id is not None and self._names_a_record(letter):
            # Before the move, or a worker could read the requeued request and find it answered.
            # Two steps, safe to cut between (a crash, Redis lost): the letter stays, still naming
            # the record, and a requeue tried again deletes nothing more (only that answer's record)
            # and moves it once (the move is conditional and idempotent). The original delivery
            # was acked as it was dead-lettered; a later delivery answered meanwhile (a platform's
            # retry, a run that outlived its entry) runs as the requeue would have, and its record
            # makes the requeued copy an answered duplicate: nothing lost, nothing run twice.
            await self._coordinator.delete_record(letter.request_id, response_id=letter.response_id)
        new_id = await self.transport.move(self.stream, letter.id, letter.origin_stream, letter.fields)
        if new_id is None:
            logger.info("dead letter %s was requeued or purged by someone else meanwhile", letter.id)
        else:
            logger.info("requeued dead letter %s to %r as %s", letter.id, letter.origin_stream, new_id)
        return new_id

    def _names_a_record(self, letter: DeadLetter) -> bool:
        """Whether a record key can hold the letter's ``request_id``: one with a control character
        (a letter written by hand) names no record, as none could be written: nothing to delete."""
        try:
            self.transport.names.completed_record(letter.request_id or "")
        except ConfigurationError:
            logger.warning("dead letter %s names a request id no record can have: none deleted", letter.id)
            return False
        return True

    # -- purging ----------------------------------------------------------------------------------

    async def purge(self, entry_id: str | None = None, *, before: datetime | None = None) -> int:
        """Delete one dead letter (``entry_id``), or every one dead before ``before`` (a timezone-aware
        datetime: anything else, a naive one included, is a ConfigurationError); returns how many
        were deleted. Give exactly one of them: deleting everything is :meth:`purge_all`.
        :class:`DeliveryError` for an unknown ``entry_id``, or one requeued or purged by someone else
        meanwhile (as :meth:`requeue`).
        """
        if (entry_id is None) == (before is None):
            raise ConfigurationError(
                "purge takes an entry_id or before=, not both nor neither (see purge_all)"
            )
        if entry_id is not None:
            async with self._lock:
                letter = await self.get(entry_id)
                if not await self.transport.delete(self.stream, letter.id):
                    raise DeliveryError(
                        f"no dead letter {entry_id!r} on {self.stream!r}: requeued or purged meanwhile"
                    )
                return 1
        assert before is not None
        # A str or a date has no usable .tzinfo (an AttributeError); a naive datetime is refused,
        # not taken as UTC: the local clock it most likely meant would shift the cut by hours.
        if not isinstance(before, datetime) or before.utcoffset() is None:
            raise ConfigurationError(
                "before must be a timezone-aware datetime (datetime.now(UTC) - timedelta(days=7), say; "
                f"a naive one is refused, not taken as UTC), got {before!r}"
            )
        return await self._delete_where(lambda letter: letter.dead_at < before)

    async def purge_all(self, *, reason: str | None = None) -> int:
        """Delete every dead letter there is now (or those of kind ``reason``); returns how many."""
        _check_kind(reason)
        return await self._delete_where(lambda letter: reason is None or letter.kind == reason)

    async def _delete_where(self, doomed: Callable[[DeadLetter], bool]) -> int:
        deleted = 0
        batch: builtins.list[str] = []
        async with self._lock:
            async for letter in self._scan(until=await self.transport.last_entry_id(self.stream)):
                if doomed(letter):
                    batch.append(letter.id)
                if len(batch) >= _PAGE:
                    deleted += await self.transport.delete(self.stream, *batch)
                    batch.clear()
            if batch:
                deleted += await self.transport.delete(self.stream, *batch)
        if deleted:
            logger.info("purged %d dead letters from %r", deleted, self.stream)
        return deleted

    # -- internals --------------------------------------------------------------------------------

    async def _scan(self, *, until: str | None = None) -> AsyncIterator[DeadLetter]:
        """Every dead letter, oldest first, in pages; only up to id ``until`` when given."""
        last = parse_entry_id(until) if until is not None else None
        cursor = "0-0"
        while True:
            entries = await self.transport.read_stream(
                self.stream, AgentRequestEvent, after=cursor, count=_PAGE
            )
            for entry in entries:
                if last is not None and (parse_entry_id(entry.entry_id) or (0, 0)) > last:
                    return
                yield self._letter(entry.entry_id, entry.fields)
            if len(entries) < _PAGE:
                return
            cursor = entries[-1].entry_id

    def _letter(self, entry_id: str, fields: Mapping[bytes, bytes]) -> DeadLetter:
        meta = {
            key[len(_PREFIX) :].decode(errors="replace"): value.decode(errors="replace")
            for key, value in fields.items()
            if key.startswith(_PREFIX) and key != DEAD_LETTER_PACKED_FIELD
        }
        request: AgentRequestEvent | None = None
        decode_error: str | None = None
        own = {k: v for k, v in fields.items() if not k.startswith(_PREFIX)}
        packed = fields.get(DEAD_LETTER_PACKED_FIELD)
        if packed is not None:  # an entry with too many fields to copy one by one: packed in one
            try:
                own = unpack_fields(packed)
            except DecodeError as error:
                decode_error = f"{DEAD_LETTER_PACKED_FIELD.decode()}: {error}"
        original = MappingProxyType(own)
        try:
            if decode_error is None:
                request = self.transport.codec.decode_entry(original, AgentRequestEvent).event
        except EventError as error:
            decode_error = str(error)
        except Exception as error:  # a codec bug: the letter is still listed, with what went wrong
            decode_error = f"decoding the entry raised {type(error).__name__}: {str(error)[:200]}"
        return DeadLetter(
            id=entry_id,
            reason=meta.get("reason", ""),
            origin_stream=meta.get("stream", ""),
            origin_entry_id=meta.get("entry_id", ""),
            group=meta.get("group", ""),
            consumer=meta.get("consumer", ""),
            delivery_count=_int(meta.get("delivery_count", "")),
            dead_at=_dead_at(meta.get("dead_at", ""), entry_id),
            request=request,
            decode_error=decode_error,
            fields=original,
            request_id=meta.get("request_id") or None,
            response_id=meta.get("response_id") or None,
        )


def _check_kind(reason: str | None) -> None:
    """A ``reason=`` filter must be a kind: a whole reason would match nothing, and say 0."""
    if reason is not None and not isinstance(reason, str):
        raise ConfigurationError(
            f"reason={shown(reason)} is not a reason kind: give one as a str, as reason_kind() "
            f"names it, e.g. {UNDECODABLE!r} or {MAX_DELIVERIES!r}"
        )
    if reason is not None and reason_kind(reason) != reason:
        raise ConfigurationError(
            f"reason={reason!r} is not a reason kind: give the kind, as reason_kind() names it "
            f"({reason_kind(reason)!r} for this one), e.g. {UNDECODABLE!r} or {MAX_DELIVERIES!r}"
        )


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _dead_at(text: str, entry_id: str) -> datetime:
    millis = (parse_entry_id(entry_id) or (0, 0))[0]
    for seconds in (text, millis / 1000):
        try:
            return datetime.fromtimestamp(float(seconds), tz=UTC)
        except (ValueError, OverflowError, OSError):
            continue
    return datetime.fromtimestamp(0, tz=UTC)
