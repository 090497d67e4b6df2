"""In-memory transport and coordinator with Redis semantics, for tests and the embedded default.

An :class:`InMemoryServer` plays the Redis server: one key space of streams (with consumer groups,
pending entries, idle times and delivery counts) and strings (leases, cancel flags, records: the
JSON of :meth:`CompletedRecord.to_fields`, as on Redis) with expiry. Time comes from an
injectable clock, so idle times and lease expiry are deterministic under :class:`ManualClock`;
only ``block`` waits use real time. Everything a transport writes in one call happens without an
``await`` in between, which is what makes ``complete`` and ``dead_letter`` atomic here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dynamic_agents._logging import get_logger
from dynamic_agents._validation import check_count, check_seconds
from dynamic_agents.events import EventCodec, StreamNames, WireModel
from dynamic_agents.events.envelope import DATA_FIELD
from dynamic_agents.exceptions import ConfigurationError, LeaseLostError, TransportError
from dynamic_agents.transports.base import (
    Clock,
    CompletedRecord,
    Completion,
    Coordinator,
    Delivery,
    Entry,
    Lease,
    PendingEntry,
    Reply,
    Subscription,
    SystemClock,
    Transport,
    TransportStats,
    check_cancellable,
    check_delivery,
    check_expire,
    check_maxlen,
    check_name,
    check_read_count,
    check_request_ids,
    check_ttl,
    dead_letter_fields,
    dead_letter_record_ttl,
    decode_entry,
    delivered,
    delivery_position,
    encoded_fields,
    lease_token,
    parse_entry_position,
    parse_read_position,
    read_record,
    record_key_of,
    released_idle,
    settle_undecodable,
    stored_record,
    stream_names,
)

__all__ = ["InMemoryCoordinator", "InMemoryServer", "InMemoryTransport", "ManualClock"]

E = TypeVar("E", bound=WireModel)
StreamId = tuple[int, int]
Fields = dict[bytes, bytes]

logger = get_logger("transports")


class ManualClock:
    """A clock that moves only when told: ``clock.advance(30)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ConfigurationError(f"a clock cannot go back ({seconds} seconds)")
        self.now += seconds


def format_id(entry_id: StreamId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivered_at: float
    count: int


@dataclass(slots=True)
class _Group:
    last_delivered: StreamId
    pending: dict[StreamId, _Pending] = field(default_factory=dict)


@dataclass(slots=True)
class _Stream:
    entries: dict[StreamId, Fields] = field(default_factory=dict)
    last_id: StreamId = (0, 0)
    groups: dict[str, _Group] = field(default_factory=dict)


class InMemoryServer:
    """The storage an in-memory transport and its coordinator share; a small Redis in process."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._keys: dict[str, _Stream | str] = {}
        self._expires: dict[str, float] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._subscribers: dict[str, list[asyncio.Queue[bytes]]] = {}

    # -- key space ------------------------------------------------------------------------------

    def _get(self, key: str) -> _Stream | str | None:
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= self.clock.time():
            self.delete(key)
        return self._keys.get(key)

    def _stream(self, key: str, *, create: bool = False) -> _Stream | None:
        value = self._get(key)
        if value is None:
            if not create:
                return None
            value = self._keys[key] = _Stream()
        if not isinstance(value, _Stream):
            raise TransportError(f"WRONGTYPE: key {key!r} holds a {_kind(value)}, not a stream")
        return value

    def _record(self, key: str) -> str | None:
        """A record key's string; a key of another type is an error, as the COMPLETE script's."""
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise TransportError(f"WRONGTYPE: key {key!r} holds a {_kind(value)}, not a record")
        return value

    def _check_stream_type(self, key: str) -> None:
        self._stream(key)

    def delete(self, key: str) -> None:
        self._keys.pop(key, None)
        self._expires.pop(key, None)

    def expire(self, key: str, seconds: float) -> None:
        if self._get(key) is not None:
            self._expires[key] = self.clock.time() + seconds

    def flush(self) -> None:
        """Forget everything (like ``FLUSHALL``): groups are recreated by the next read."""
        self._keys.clear()
        self._expires.clear()

    # -- streams --------------------------------------------------------------------------------

    def xadd(self, key: str, fields: Mapping[bytes, bytes], *, maxlen: int | None = None) -> str:
        stream = self._stream(key, create=True)
        assert stream is not None
        millis = int(self.clock.time() * 1000)
        last = stream.last_id
        new_id = (millis, 0) if millis > last[0] else (last[0], last[1] + 1)
        stream.entries[new_id] = dict(fields)
        stream.last_id = new_id
        if maxlen is not None:
            for old in list(stream.entries)[: max(0, len(stream.entries) - maxlen)]:
                del stream.entries[old]
        self._notify()
        return format_id(new_id)

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_change(self, seconds: float) -> None:
        """Wait until a stream gets an entry or a transport closes, or ``seconds`` (real time) pass."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            # Not wait_for: on Python 3.11 it drops a cancellation that comes with the wake-up.
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    # -- pub/sub --------------------------------------------------------------------------------------

    def subscribe(self, channel: str) -> asyncio.Queue[bytes]:
        """A queue receiving every message published to ``channel`` from now on."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers.setdefault(channel, []).append(queue)
        return queue

    def unsubscribe(self, channel: str, queue: asyncio.Queue[bytes]) -> None:
        queues = self._subscribers.get(channel, [])
        if queue in queues:
            queues.remove(queue)

    def publish(self, channel: str, message: bytes) -> int:
        queues = self._subscribers.get(channel, [])
        for queue in queues:
            queue.put_nowait(message)
        return len(queues)

    def group(self, key: str, name: str) -> _Group:
        stream = self._stream(key)
        group = stream.groups.get(name) if stream is not None else None
        if group is None:
            raise _NoGroupError(f"NOGROUP: no group {name!r} on stream {key!r}")
        return group


class _NoGroupError(TransportError, LookupError):
    pass


def _kind(value: object) -> str:
    return {_Stream: "stream", str: "string"}.get(type(value), type(value).__name__)


class InMemoryTransport(Transport):
    """The in-process transport: same behaviour as :class:`RedisStreamsTransport`, no server.

    Pass a shared :class:`InMemoryServer` to connect several transports (say, an interface and two
    workers) as if they used one Redis; ``clock=ManualClock()`` makes idle times deterministic.
    """

    def __init__(
        self,
        server: InMemoryServer | None = None,
        *,
        clock: Clock | None = None,
        names: StreamNames | None = None,
        codec: EventCodec | None = None,
    ) -> None:
        if server is not None and clock is not None:
            raise ConfigurationError("pass the clock to the InMemoryServer, not to the transport")
        self.server = server or InMemoryServer(clock)
        self.names = stream_names(names)
        self.codec = codec or EventCodec()
        self.stats = TransportStats()
        self._reclaimed_at: dict[tuple[str, str, str], float] = {}
        self._cursors: dict[tuple[str, str, str], StreamId] = {}  # where the next reclaim scan starts
        self._closed = False

    def __repr__(self) -> str:
        return f"InMemoryTransport(prefix={self.names.prefix!r})"

    @property
    def clock(self) -> Clock:
        return self.server.clock

    async def publish_fields(
        self,
        stream: str,
        fields: Mapping[str, bytes] | Mapping[bytes, bytes],
        *,
        maxlen: int | None = None,
        expire: float | None = None,
    ) -> str:
        self._check_open()
        maxlen, expire = check_maxlen(maxlen), check_expire(expire)
        entry_id = self.server.xadd(stream, encoded_fields(fields), maxlen=maxlen)
        if expire is not None:
            self.server.expire(stream, expire)
        self.stats.published += 1
        return entry_id

    async def ensure_group(self, stream: str, group: str, *, start_id: str = "0") -> bool:
        check_name("stream", stream)
        check_name("group", group)
        self._check_open()
        start = None if start_id == "$" else parse_entry_position(start_id)  # before the stream is made
        data = self.server._stream(stream, create=True)
        assert data is not None
        if group in data.groups:
            return False
        start = data.last_id if start is None else start
        data.groups[group] = _Group(last_delivered=start)
        return True

    async def read(
        self, subscription: Subscription[E], count: int, *, skip_sessions: Collection[str] = ()
    ) -> list[Delivery[E]]:
        self._check_open()
        count = check_read_count(count)
        if count <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + subscription.block
        while True:
            deliveries = self._read_now(subscription, count)
            remaining = deadline - loop.time()
            if deliveries or remaining <= 0:
                if not deliveries:  # a read that does not wait still yields, as one over the network
                    await asyncio.sleep(0)
                return await self._settle_undecodable(subscription, deliveries)
            await self.server.wait_for_change(remaining)
            self._check_open()  # closed while it waited (aclose wakes it)

    def _read_now(self, sub: Subscription[E], count: int) -> list[Delivery[E]]:
        try:
            group = self.server.group(sub.stream, sub.group)
        except _NoGroupError:
            logger.warning("group %r missing on %r: recreating it at 0", sub.group, sub.stream)
            stream = self.server._stream(sub.stream, create=True)
            assert stream is not None
            group = stream.groups[sub.group] = _Group(last_delivered=(0, 0))
            self.stats.groups_recreated += 1
        stream = self.server._stream(sub.stream)
        assert stream is not None
        now = self.clock.time()
        deliveries = self._reclaim(sub, stream, group, count, now)
        for entry_id, fields in stream.entries.items():
            if len(deliveries) >= count:
                break
            if entry_id <= group.last_delivered:
                continue
            group.last_delivered = entry_id
            group.pending[entry_id] = _Pending(sub.consumer, now, 1)
            deliveries.append(self._delivery(sub, entry_id, fields, 1))
        self.stats.delivered += len(deliveries)
        return deliveries

    def _reclaim(
        self, sub: Subscription[E], stream: _Stream, group: _Group, count: int, now: float
    ) -> list[Delivery[E]]:
        if sub.claim_min_idle is None:
            return []
        key = (sub.stream, sub.group, sub.consumer)
        if now - self._reclaimed_at.get(key, float("-inf")) < sub.reclaim_every:
            return []
        # As XAUTOCLAIM with a cursor: a scan stopped at ``count`` goes on at the next read; only a
        # scan that reached the end of the pending list rests until the next interval.
        cursor, next_cursor = self._cursors.get(key, (0, 0)), (0, 0)
        reclaimed: list[Delivery[E]] = []
        for entry_id in sorted(group.pending):
            if entry_id < cursor:
                continue
            if len(reclaimed) >= count:
                next_cursor = entry_id
                break
            pending = group.pending[entry_id]
            if now - pending.delivered_at < sub.claim_min_idle:
                continue
            fields = stream.entries.get(entry_id)
            if fields is None:  # trimmed or deleted while pending, as XAUTOCLAIM reports
                del group.pending[entry_id]
                self.stats.reclaimed_deleted += 1
                logger.warning("pending entry %s of %r was deleted", format_id(entry_id), sub.stream)
                continue
            pending.consumer, pending.delivered_at = sub.consumer, now
            pending.count += 1
            reclaimed.append(self._delivery(sub, entry_id, fields, pending.count))
        self._cursors[key] = next_cursor
        if next_cursor == (0, 0):
            self._reclaimed_at[key] = now
        self.stats.reclaimed += len(reclaimed)
        return reclaimed

    def _delivery(self, sub: Subscription[E], entry_id: StreamId, fields: Fields, count: int) -> Delivery[E]:
        entry = decode_entry(self.codec, sub.stream, format_id(entry_id), fields, sub.model)
        return delivered(entry, sub, count)

    async def _settle_undecodable(
        self, sub: Subscription[E], deliveries: list[Delivery[E]]
    ) -> list[Delivery[E]]:
        return await settle_undecodable(self, sub, deliveries)

    async def ack(self, *deliveries: Delivery[Any]) -> int:
        self._check_open()
        for delivery in deliveries:  # all, before any is acked
            check_delivery(delivery)
        acked = 0
        for delivery in deliveries:
            if delivery.settled:
                continue
            acked += self._ack(delivery)
        self.stats.acked += acked
        return acked

    def _ack(self, delivery: Delivery[Any]) -> int:
        try:
            group = self.server.group(delivery.stream, delivery.group)
        except _NoGroupError:
            return 0
        return 1 if group.pending.pop(delivery_position(delivery), None) is not None else 0

    def _held(self, delivery: Delivery[Any]) -> _Pending | None:
        try:
            group = self.server.group(delivery.stream, delivery.group)
        except _NoGroupError:
            return None
        pending = group.pending.get(delivery_position(delivery))
        return pending if pending is not None and pending.consumer == delivery.consumer else None

    def _held_on_stream(self, delivery: Delivery[Any]) -> _Pending | None:
        """:meth:`_held`, as ``XCLAIM`` sees it: an entry deleted from the stream while pending is
        dropped from the pending list, and is not held."""
        pending = self._held(delivery)
        if pending is None:
            return None
        stream, entry_id = self.server._stream(delivery.stream), delivery_position(delivery)
        if stream is None or entry_id not in stream.entries:
            del self.server.group(delivery.stream, delivery.group).pending[entry_id]
            return None
        return pending

    async def release(self, delivery: Delivery[Any], *, delay: float = 0.0) -> bool:
        self._check_open()
        idle = released_idle(delivery, delay)
        pending = self._held_on_stream(delivery)
        if pending is None:
            return False
        # Backdate the delivery so a reclaim scan takes it once ``delay`` has passed.
        pending.delivered_at = self.clock.time() - idle
        self._reclaimed_at.pop((delivery.stream, delivery.group, delivery.consumer), None)
        return True

    async def keep_fresh(self, deliveries: Sequence[Delivery[Any]]) -> list[Delivery[Any]]:
        self._check_open()
        for delivery in deliveries:  # all, before any is kept fresh
            check_delivery(delivery)
        lost: list[Delivery[Any]] = []
        now = self.clock.time()
        for delivery in deliveries:
            pending = self._held_on_stream(delivery)
            if pending is None:
                lost.append(delivery)
            else:
                pending.delivered_at = now
        return lost

    async def uncount(self, delivery: Delivery[Any]) -> bool:
        self._check_open()
        check_delivery(delivery)
        if delivery.settled or delivery.delivery_count < 2:
            return False
        pending = self._held_on_stream(delivery)
        if pending is None or pending.count != delivery.delivery_count:
            return False
        pending.count -= 1
        pending.delivered_at = self.clock.time()
        return True

    async def dead_letter(
        self,
        delivery: Delivery[Any],
        reason: str,
        reply: Reply | None = None,
        *,
        record_ttl: float | None = None,
    ) -> bool:
        self._check_open()
        record_ttl = dead_letter_record_ttl(record_ttl, reply)
        check_delivery(delivery)
        if delivery.settled or self._held(delivery) is None:
            return False
        record_key = record_key_of(self.names, delivery)
        if record_key is not None and self.server._get(record_key) is not None:  # EXISTS: any type
            self._ack(delivery)
            return False
        self.server._check_stream_type(self.names.dead_letters)
        reply_fields = self._check_reply(reply)
        now = self.clock.time()
        recorded = record_key is not None and record_ttl is not None
        response_id = reply.event.id if reply is not None and recorded else None
        # Every check passed: the writes below cannot fail.
        self.server.xadd(
            self.names.dead_letters, dead_letter_fields(delivery, reason, now, response_id=response_id)
        )
        reply_id = self._write_reply(reply, reply_fields)
        if reply is not None and record_key is not None and record_ttl is not None:
            self._store_record(record_key, reply, reply_id, now, record_ttl)
        self._ack(delivery)
        self.stats.dead_lettered += 1
        return True

    async def complete(
        self, delivery: Delivery[Any], reply: Reply, *, record_ttl: float, lease: Lease | None = None
    ) -> Completion:
        self._check_open()
        check_seconds("record_ttl", record_ttl)
        check_delivery(delivery)  # the ack, its only use, is the last write
        record_key = self.names.completed_record(reply.event.request_id)
        lease_key = self.names.session_lease(lease.session_id) if lease is not None else None
        # Every key type first, as the COMPLETE script: a refused complete changes nothing (the
        # request stream is checked here because the ack, its only use, is the last write).
        self.server._check_stream_type(delivery.stream)
        owned = lease is None or self.server._get(lease_key or "") == lease.token
        existing = self.server._record(record_key)
        if existing is not None:  # any string: acked and the lease dropped, even if unreadable
            self._ack(delivery)
            self._drop_lease(lease_key, owned)
            return Completion(read_record(existing), created=False)
        if not owned:
            assert lease is not None
            raise LeaseLostError(lease.session_id)
        reply_fields = self._check_reply(reply)
        # Every check passed: the writes below cannot fail.
        reply_id = self._write_reply(reply, reply_fields)
        record = self._store_record(record_key, reply, reply_id, self.clock.time(), record_ttl)
        self.stats.acked += self._ack(delivery)
        self._drop_lease(lease_key, owned)
        return Completion(record, created=True)

    def _store_record(
        self, key: str, reply: Reply, reply_id: str | None, completed_at: float, ttl: float
    ) -> CompletedRecord:
        record = CompletedRecord(
            request_id=reply.event.request_id,
            response_id=reply.event.id,
            status=str(reply.event.status),
            reply_stream=reply.stream,
            reply_entry_id=reply_id,
            completed_at=completed_at,
        )
        self.server._keys[key] = stored_record(record)
        self.server.expire(key, ttl)
        return record

    def _drop_lease(self, key: str | None, owned: bool) -> None:
        if key is not None and owned:
            self.server.delete(key)

    def _check_reply(self, reply: Reply | None) -> bytes | None:
        if reply is None:
            return None
        if reply.stream is not None:
            self.server._check_stream_type(reply.stream)
        return reply.envelope(self.codec)

    def _write_reply(self, reply: Reply | None, envelope: bytes | None) -> str | None:
        if reply is None or envelope is None:
            return None
        entry_id = None
        if reply.stream is not None:
            entry_id = self.server.xadd(reply.stream, {DATA_FIELD.encode(): envelope}, maxlen=reply.maxlen)
            if reply.expire is not None:
                self.server.expire(reply.stream, reply.expire)
        if reply.channel:
            self.server.publish(reply.channel, envelope)
        return entry_id

    async def read_stream(
        self,
        stream: str,
        model: type[E],
        *,
        after: str = "0-0",
        count: int = 100,
        block: float | None = None,
    ) -> list[Entry[E]]:
        self._check_open()
        position = parse_read_position(after)
        check_count("count", count)
        block = check_seconds("block", block, zero=True, optional=True)
        if position is None:  # "$", as XREAD: the newest id when the call starts
            data = self.server._stream(stream)
            start = data.last_id if data is not None else (0, 0)
        else:
            start = position
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (block or 0.0)
        while True:
            data = self.server._stream(stream)
            found = [] if data is None else [(i, f) for i, f in data.entries.items() if i > start]
            remaining = deadline - loop.time()
            if found or block is None or remaining <= 0:
                return [decode_entry(self.codec, stream, format_id(i), f, model) for i, f in found[:count]]
            await self.server.wait_for_change(remaining)
            self._check_open()  # closed while it waited (aclose wakes it)

    async def delete(self, stream: str, *entry_ids: str) -> int:
        self._check_open()
        ids = [
            parse_entry_position(entry_id) for entry_id in entry_ids
        ]  # all checked before any is deleted, as XDEL
        data = self.server._stream(stream)
        if data is None:
            return 0
        return sum(data.entries.pop(entry_id, None) is not None for entry_id in ids)

    async def move(
        self, source: str, entry_id: str, stream: str, fields: Mapping[str, bytes] | Mapping[bytes, bytes]
    ) -> str | None:
        self._check_open()
        data, key, values = (
            self.server._stream(source),
            parse_entry_position(entry_id),
            encoded_fields(fields),
        )
        self.server._check_stream_type(stream)
        if data is None or key not in data.entries:
            return None
        entry = self.server.xadd(stream, values)
        del data.entries[key]
        self.stats.published += 1
        return entry

    async def last_entry_id(self, stream: str) -> str:
        self._check_open()
        data = self.server._stream(stream)
        return format_id(next(reversed(data.entries))) if data is not None and data.entries else "0-0"

    async def pending(self, stream: str, group: str, *, count: int = 100) -> list[PendingEntry]:
        self._check_open()
        check_count("count", count)
        now = self.clock.time()
        data = self.server.group(stream, group)
        return [
            PendingEntry(format_id(i), p.consumer, max(0.0, now - p.delivered_at), p.count)
            for i, p in sorted(data.pending.items())[:count]
        ]

    async def trim_acknowledged(self, stream: str) -> int:
        self._check_open()
        data = self.server._stream(stream)
        if data is None or not data.groups:
            return 0
        keep_from = min(
            min([*group.pending, (group.last_delivered[0], group.last_delivered[1] + 1)])
            for group in data.groups.values()
        )
        doomed = [entry_id for entry_id in data.entries if entry_id < keep_from]
        for entry_id in doomed:
            del data.entries[entry_id]
        return len(doomed)

    def coordinator(self) -> InMemoryCoordinator:
        coordinator = InMemoryCoordinator(self.server, names=self.names)
        coordinator._transport = self  # closed with it, as a Redis coordinator with its pipeline
        return coordinator

    async def aclose(self) -> None:
        """Fail this transport's reads in flight (TransportError, as on Redis): they are woken, as
        every waiting read of the server is; another transport's reads just wait on."""
        self._closed = True
        self.server._notify()

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("the transport is closed")


class InMemoryCoordinator(Coordinator):
    """Leases and records in an :class:`InMemoryServer`, with the same rules as Redis."""

    def __init__(self, server: InMemoryServer | None = None, *, names: StreamNames | None = None) -> None:
        self.server = server or InMemoryServer()
        self.names = stream_names(names)
        self._transport: InMemoryTransport | None = None  # the transport it came from, if any
        self._closed = False

    def _check_open(self) -> None:
        """A call of a closed coordinator, or of one whose transport was closed, is a
        :class:`TransportError`, as on Redis."""
        if self._closed:
            raise TransportError("the coordinator is closed")
        if self._transport is not None:
            self._transport._check_open()

    async def aclose(self) -> None:
        """Its calls fail from then on, as they do once its transport is closed."""
        self._closed = True

    async def acquire(self, session_id: str, ttl: float, *, holder: str = "") -> Lease | None:
        self._check_open()
        check_ttl(ttl)
        key = self.names.session_lease(session_id)
        if self.server._get(key) is not None:
            return None
        lease = Lease(session_id, lease_token(holder), ttl)
        self.server._keys[key] = lease.token
        self.server.expire(key, ttl)
        return lease

    async def holder(self, session_id: str) -> str | None:
        self._check_open()
        token = self.server._get(self.names.session_lease(session_id))
        return token.partition("/")[2] if isinstance(token, str) else None

    async def request_cancel(self, request_id: str, ttl: float = 3600.0) -> None:
        self._check_open()
        check_ttl(ttl)  # before the write: a refused ttl must leave no flag behind
        key = self.names.cancel_flag(request_id)
        check_cancellable(request_id)
        self.server._keys[key] = "1"
        self.server.expire(key, ttl)

    async def cancelled(self, request_ids: Sequence[str]) -> set[str]:
        self._check_open()
        check_request_ids(request_ids, ordered=False)
        return {rid for rid in request_ids if self.server._get(self.names.cancel_flag(rid)) is not None}

    async def renew(self, lease: Lease, ttl: float | None = None) -> bool:
        self._check_open()
        key = self.names.session_lease(lease.session_id)
        seconds = check_ttl(ttl if ttl is not None else lease.ttl)  # first, as on Redis
        if self.server._get(key) != lease.token:
            return False
        self.server.expire(key, seconds)
        return True

    async def release(self, lease: Lease) -> bool:
        self._check_open()
        key = self.names.session_lease(lease.session_id)
        if self.server._get(key) != lease.token:
            return False
        self.server.delete(key)
        return True

    async def _answered(self, request_ids: Sequence[str]) -> set[str]:
        # As Redis reads them (MGET): any string at a record key is an answer, another type none.
        self._check_open()
        records = (self.server._get(self.names.completed_record(rid)) for rid in request_ids)
        return {rid for rid, record in zip(request_ids, records, strict=True) if isinstance(record, str)}

    async def get_record(self, request_id: str) -> CompletedRecord | None:
        self._check_open()
        stored = self.server._record(self.names.completed_record(request_id))
        return read_record(stored) if stored is not None else None

    async def set_record(self, record: CompletedRecord, ttl: float) -> bool:
        self._check_open()
        check_ttl(ttl)
        key = self.names.completed_record(record.request_id)
        if self.server._get(key) is not None:  # SET NX: a key of any type is not overwritten
            return False
        self.server._keys[key] = stored_record(record)
        self.server.expire(key, ttl)
        return True

    async def delete_record(self, request_id: str, *, response_id: str | None = None) -> bool:
        self._check_open()
        key = self.names.completed_record(request_id)
        if response_id is None:  # DEL: a key of any type
            if self.server._get(key) is None:
                return False
        else:
            stored = self.server._record(key)
            if stored is None or _response_id(stored) != response_id:
                return False
        self.server.delete(key)
        return True


def _response_id(stored: str) -> object:
    """The response a stored record names; ``None`` for one that is not a JSON object (as
    ``DELETE_RECORD`` reads it)."""
    try:
        value = json.loads(stored)
    except ValueError:
        return None
    return value.get("response_id") if isinstance(value, dict) else None
