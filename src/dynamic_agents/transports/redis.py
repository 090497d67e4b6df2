"""Redis Streams transport and coordinator (redis-py asyncio).

Reads go through a consumer group: entries left idle by dead consumers are reclaimed (XAUTOCLAIM)
in the same reads as new ones (XREADGROUP), held entries are kept fresh with ``XCLAIM … JUSTID``,
and ``complete`` / ``dead_letter`` are Lua scripts, so each is written whole or not at all. The
calls on a worker's hot path (``complete``, ``RedisCoordinator.claim``, ``publish`` without
``expire``, ``publish_many``) made in one event-loop iteration go out in one write
(``_pipelining``): the completions among them as one call of the ``COMPLETE`` batch script,
the claims as one ``SET NX`` each and one ``MGET`` for all (no script: a Lua call costs Redis
several times the commands it runs). Those calls share one connection of the transport's own,
and each blocking read in flight has one (``XREADGROUP`` / ``XREAD``), idle ones reused. A read
with ``Subscription.claim_ttl`` sends the ``CLAIM_READ`` script right behind its ``XREADGROUP``,
on its connection: a small batch's claims cost no round trip of their own. Every
attempt is bounded by ``operation_timeout``; a lost connection, a timeout or a write refused for
want of a master (``READONLY``, ``NOREPLICAS``: a failover; on a new connection) is retried with
capped exponential backoff and jitter; a group lost to ``FLUSHALL`` or a restart without
persistence (``NOGROUP``), or with its stream while a read blocks on it, is recreated at ``0``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, Final, TypeVar

from dynamic_agents._frozen import slot_init
from dynamic_agents._logging import get_logger
from dynamic_agents._validation import check_count, check_seconds, shown
from dynamic_agents.events import EventCodec, StreamNames, WireModel
from dynamic_agents.events.envelope import DATA_FIELD
from dynamic_agents.exceptions import (
    ConfigurationError,
    LeaseLostError,
    MissingDependencyError,
    TransportError,
)
from dynamic_agents.transports import _scripts
from dynamic_agents.transports.base import (
    Claim,
    ClaimStatus,
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
    check_envelopes,
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
    unique_token,
)

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.commands.core import AsyncScript

    from dynamic_agents.transports._pipelining import (  # needs hiredis
        Arg,
        AutoPipeline,
        BatchCommands,
        BatchScript,
        PipelineClosedError,
        refuses_writes,
    )
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise MissingDependencyError("RedisStreamsTransport", "redis") from error

__all__ = ["RedisCoordinator", "RedisStreamsTransport"]

E = TypeVar("E", bound=WireModel)
T = TypeVar("T")

logger = get_logger("transports")

_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_nogroup(error: redis_errors.ResponseError) -> bool:
    """Whether the group is gone: ``NOGROUP``, or a blocking ``XREADGROUP`` ended because its stream
    was deleted meanwhile (an ``EXPIRE``, ``FLUSHALL``: "UNBLOCKED the stream key no longer
    exists")."""
    message = str(error)
    return "NOGROUP" in message or message.startswith("UNBLOCKED the stream key no longer exists")


# redis-py types replies loosely; these check the shapes the transport relies on.


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TransportError(f"unexpected reply from Redis: {type(value).__name__} where bytes were expected")


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | str):
        return int(value)
    raise TransportError(f"unexpected reply from Redis: {type(value).__name__} where an integer was expected")


def _list(value: object) -> list[object]:
    if isinstance(value, list | tuple):
        return list(value)
    raise TransportError(f"unexpected reply from Redis: {type(value).__name__} where a list was expected")


def _pairs(value: object) -> dict[bytes, bytes]:
    """A field map from a mapping (a dict reply, fields to write) or a flat [field, value, …] list
    reply."""
    if isinstance(value, Mapping):
        return {_bytes(k): _bytes(v) for k, v in value.items()}
    flat = _list(value)
    return {_bytes(k): _bytes(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def _entries(value: object) -> list[tuple[str, dict[bytes, bytes]]]:
    """Stream entries ``[(id, fields), …]`` from an XRANGE/XAUTOCLAIM-shaped reply."""
    return [_entry(_list(item)) for item in _list(value)]


def _entry(item: list[object]) -> tuple[str, dict[bytes, bytes]]:
    if len(item) != 2:
        raise TransportError(f"unexpected reply from Redis: a stream entry of {len(item)} parts, not 2")
    return _bytes(item[0]).decode(), _pairs(item[1])


def _stream_entries(value: object) -> list[tuple[str, dict[bytes, bytes]]]:
    """Entries of an XREAD/XREADGROUP reply as the server sends it: ``[[stream, entries], …]``,
    or, on a ``protocol=3`` connection, ``{stream: entries}``; ``None`` when there are none."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        per_stream = list(value.values())
    else:
        per_stream = [_entry_of_stream(_list(item)) for item in _list(value)]
    return [entry for entries in per_stream for entry in _entries(entries)]


def _entry_of_stream(item: list[object]) -> object:
    if len(item) != 2:
        raise TransportError(f"unexpected reply from Redis: a stream's part of {len(item)} items, not 2")
    return item[1]


def _own_client(url: str) -> Redis:
    """A client for ``from_url``: raw bytes, and no per-socket-call timeout unless the URL sets one
    (every operation is bounded by ``operation_timeout`` instead)."""
    return Redis.from_url(url, decode_responses=False, socket_timeout=None)


def _unreachable(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError) and not str(error):  # our own bound on the attempt
        return f"Redis did not answer within {timeout:g}s"
    if refuses_writes(error):
        code = "READONLY " if isinstance(error, redis_errors.ReadOnlyError) else ""  # (parsed off)
        return f"Redis refuses writes ({code}{error})"
    return f"Redis unreachable ({error})"


def _worth_a_retry(error: Exception) -> bool:
    """A lost connection or a timeout (asyncio's TimeoutError is an OSError), or a write refused
    where there is no master (any more) to take it (a failover): not any other Redis error."""
    return not isinstance(error, redis_errors.ResponseError) or refuses_writes(error)


def _check_client(client: object) -> None:
    """A transport's or coordinator's ``client``: a ``redis.asyncio.Redis`` (its internals are
    used: connection settings, scripts, a pipeline of its pool), else a
    :class:`ConfigurationError` (``None`` or a URL failed with a bare AttributeError)."""
    if not isinstance(client, Redis):
        raise ConfigurationError(
            "client must be a redis.asyncio.Redis client (or use from_url(url) for one of its own), "
            f"got {shown(client)}"
        )


def _connection_setting(client: Redis, name: str) -> object:
    kwargs: dict[str, object] = client.get_connection_kwargs()  # type: ignore[no-untyped-call]
    return kwargs.get(name)


@dataclass(frozen=True, slots=True)
class _RetryPolicy:
    backoff: ExponentialWithJitterBackoff
    deadline: float
    timeout: float = 5.0
    """Bound on one attempt (a blocking command gets its block time on top)."""


async def _retrying(
    what: str,
    operation: Callable[[], Awaitable[T]],
    policy: _RetryPolicy,
    stats: TransportStats | None,
    *,
    blocks: float = 0.0,
    failed: Exception | None = None,
    still_open: Callable[[str], None] | None = None,
) -> T:
    """Run ``operation``, each attempt bounded by ``policy.timeout`` (plus ``blocks`` seconds for a
    blocking command), retrying connection errors, timeouts and writes refused by a server that is
    no master or lacks replicas (``READONLY``, ``NOREPLICAS``: a failover) with backoff until
    ``policy.deadline`` runs out; then (and for other Redis errors) raise :class:`TransportError`.

    ``failed``: the error of a first attempt the caller made itself through the ``AutoPipeline``
    (every claim and completion is awaited by its caller first, and handed here only if that
    failed: most never fail, and go without a retry loop's frame in their path). Such an operation
    is bounded by the pipeline already, so its attempts get no timeout of their own here.

    ``still_open(what)`` raises :class:`TransportError` once the caller was closed: called before
    each retry (the caller checks before the first), so a call retrying while Redis is away fails
    at its next attempt when :meth:`aclose` comes, instead of retrying until the deadline."""
    pipelined = failed is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.deadline
    failures, failing_since = 0, 0.0
    while True:
        try:
            if failed is not None:  # handled as any attempt's error
                error, failed = failed, None
                raise error
            if pipelined:
                result = await operation()
            else:
                async with asyncio.timeout(policy.timeout + blocks):
                    result = await operation()
        except TransportError:  # our own (a reply of an unexpected shape…): not worth a retry
            raise
        except PipelineClosedError as error:
            raise TransportError(f"{what} failed: the transport is closed") from error
        except (*_CONNECTION_ERRORS, redis_errors.ResponseError) as error:
            if not _worth_a_retry(error):
                raise TransportError(f"{what} failed: {error}") from error
            failure: Exception = error
        else:
            if failures:
                _answered_again(what, failures, failing_since)
            return result
        failing_since = failing_since or time.monotonic()
        failures += 1
        delay = policy.backoff.compute(failures)
        reason = _unreachable(failure, policy.timeout + blocks)
        if loop.time() + delay > deadline:
            raise TransportError(f"{what} failed: {reason}") from failure
        _failed_attempt(what, reason, delay, failures, stats)
        await asyncio.sleep(delay)
        if still_open is not None:
            still_open(what)


def _failed_attempt(
    what: str, reason: str, delay: float, failures: int, stats: TransportStats | None
) -> None:
    """A failed attempt of a call: a warning for its 1st, 2nd, 4th, 8th… attempt, the others at
    debug level, so an outage says so at once without a line per call per retry for its length;
    counted in ``stats.reconnects``."""
    if stats is not None:
        stats.reconnects += 1
    level = logging.WARNING if failures & (failures - 1) == 0 else logging.DEBUG
    logger.log(level, "%s: %s; retrying in %.2fs (attempt %d)", what, reason, delay, failures)


def _answered_again(what: str, failures: int, failing_since: float) -> None:
    """A call got through after failed attempts (warned of): say the outage is over for it, and
    how long it lasted for this call (from its first failure, ``time.monotonic()``)."""
    plural = "" if failures == 1 else "s"
    seconds = time.monotonic() - failing_since
    logger.info(
        "%s: Redis answered again after %d failed attempt%s (%.1f s)", what, failures, plural, seconds
    )


class RedisStreamsTransport(Transport):
    """The Redis Streams transport.

    ``RedisStreamsTransport.from_url("redis://127.0.0.1:6379/0")`` owns its client and closes it;
    a client passed in is left open. The client must not decode responses.

    Each attempt of an operation gets ``operation_timeout`` seconds (a blocking read its ``block``
    on top): a server that stops answering without closing the connection (a hung host, a network
    partition) counts as unreachable. ``from_url`` therefore leaves redis-py's own per-socket-call
    timeout off (``socket_timeout=None`` unless the URL sets one), which would otherwise cost an
    extra task and timer per command. Reads and the hot-path calls use connections of the
    transport's own (see the module documentation), which :meth:`aclose` closes, also when the
    client is the caller's. ``retry_cap`` bounds the backoff between reconnect attempts
    (seconds); operations other than ``read`` give up after ``retry_deadline`` seconds and raise
    :class:`TransportError`, while ``read`` keeps trying until cancelled (a worker has nothing
    better to do while Redis is away).
    """

    def __init__(
        self,
        client: Redis,
        *,
        names: StreamNames | None = None,
        codec: EventCodec | None = None,
        clock: Clock | None = None,
        retry_base: float = 0.05,
        retry_cap: float = 5.0,
        retry_deadline: float = 30.0,
        operation_timeout: float = 5.0,
        owns_client: bool = False,
    ) -> None:
        _check_client(client)
        if _connection_setting(client, "decode_responses"):
            raise ConfigurationError("the Redis client must have decode_responses=False")
        # NaN passes a ``<= 0`` check; a zero backoff retries in a busy loop while Redis is away.
        operation_timeout = check_seconds("operation_timeout", operation_timeout)
        retry_base = check_seconds("retry_base", retry_base)
        retry_cap = check_seconds("retry_cap", retry_cap)
        retry_deadline = check_seconds("retry_deadline", retry_deadline, zero=True)
        self.client = client
        self.names = stream_names(names)
        self.codec = codec or EventCodec()
        self.clock: Clock = clock or SystemClock()
        self.stats = TransportStats()
        self._backoff = ExponentialWithJitterBackoff(cap=retry_cap, base=retry_base)
        self._retry = _RetryPolicy(self._backoff, retry_deadline, operation_timeout)
        self._owns_client = owns_client
        self._hold = client.register_script(_scripts.HOLD)
        self._uncount = client.register_script(_scripts.UNCOUNT)
        self._publish_many = client.register_script(_scripts.PUBLISH_MANY)
        self._publish_expiring = client.register_script(_scripts.PUBLISH_EXPIRING)
        self._reclaim_script = client.register_script(_scripts.RECLAIM)
        self._completes = BatchScript(client.register_script(_scripts.COMPLETE), _pack_completions)
        self._dead_letter = client.register_script(_scripts.DEAD_LETTER)
        self._move = client.register_script(_scripts.MOVE)
        self._next_id = client.register_script(_scripts.NEXT_ID)
        # How long a call's marker outlives it: past the last retry it may make (see _call_marker).
        self._marker_ms = _ms(self._retry.deadline + self._retry.timeout)
        self._trim = client.register_script(_scripts.TRIM_ACKNOWLEDGED)
        self._claim_read = client.register_script(_scripts.CLAIM_READ)
        self._release_lease = client.register_script(_scripts.RELEASE_LEASE)
        self._pipeline = AutoPipeline(client, timeout=operation_timeout)
        self._readers: list[AutoPipeline] = []  # idle: one connection per blocking read in flight
        self._all_readers: weakref.WeakSet[AutoPipeline] = weakref.WeakSet()
        self._closed = False
        self._cursors: dict[tuple[str, str, str], str] = {}
        self._reclaimed_at: dict[tuple[str, str, str], float] = {}
        self._read_up_to: dict[tuple[str, str, str], str] = {}  # the last entry a '>' read returned

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStreamsTransport:
        """A transport with a client of its own (closed by :meth:`aclose`)."""
        return cls(_own_client(url), owns_client=True, **kwargs)

    def __repr__(self) -> str:
        return f"RedisStreamsTransport(prefix={self.names.prefix!r})"

    # -- retries ----------------------------------------------------------------------------------

    def _call(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        failed: Exception | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Run ``operation`` (each attempt within ``operation_timeout``), retrying connection errors
        and timeouts with backoff for ``retry_deadline``; ``failed``: see :func:`_retrying`. (A
        plain function returning the coroutine: no frame of its own in the await chain of every
        call.)"""
        self._check_open(what)
        return _retrying(what, operation, self._retry, self.stats, failed=failed, still_open=self._check_open)

    def _call_marker(self, stream: str) -> str:
        """A key naming one call of ``dead_letter`` or ``move``, set (for ``_marker_ms``) to the id
        it wrote to ``stream``: a retry whose first attempt ran, its reply lost, reports that id.
        Named after ``stream``, so it shares its Cluster slot with a hash-tagged prefix."""
        return f"{stream}:call:{secrets.token_hex(12)}"

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise TransportError(f"{what} failed: the transport is closed")

    # -- writing ----------------------------------------------------------------------------------

    async def publish_fields(
        self,
        stream: str,
        fields: Mapping[str, bytes] | Mapping[bytes, bytes],
        *,
        maxlen: int | None = None,
        expire: float | None = None,
    ) -> str:
        maxlen, expire = check_maxlen(maxlen), check_expire(expire)
        values = encoded_fields(fields)
        what = f"publish to {stream!r}"
        if expire is None:  # one command: pipelined with the others of this loop iteration
            trim: list[Arg] = ["MAXLEN", "~", maxlen] if maxlen is not None else []
            xadd = partial(self._pipeline.command, "XADD", stream, *trim, "*", *_flatten(values))
            try:
                entry_id = await xadd()
            except Exception as error:
                entry_id = await self._call(what, xadd, failed=error)
        elif 2 * len(values) <= _scripts.UNPACK_MAX:  # XADD and PEXPIRE in one script: both or neither
            args: list[Arg] = [_ms(expire), _optional(maxlen), *_flatten(values)]
            entry_id = await self._call(what, partial(self._publish_expiring, keys=[stream], args=args))
        else:  # too many fields for a script's unpack(): the same, checked under WATCH

            def write(pipe: Pipeline) -> None:
                pipe.xadd(stream, values, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.pexpire(stream, _ms(expire))

            entry_id = await self._call(what, partial(self._watched, what, [stream], None, write))
        self.stats.published += 1
        return _bytes(entry_id).decode()

    async def _watched(
        self,
        what: str,
        streams: list[str],
        present: tuple[str, str] | None,
        write: Callable[[Pipeline], None],
        *,
        prepare: Callable[[Pipeline], Awaitable[None]] | None = None,
    ) -> object:
        """The reply to the first command ``write`` queues, in a MULTI that runs only if every key of
        ``streams`` is a stream or missing and none changed meanwhile (WATCH; checked again when one
        did): what a script does for writes whose arguments are too many for its ``unpack()``. With
        ``present`` (stream, entry id) nothing is written, and ``None`` returned, unless the entry
        exists. ``prepare`` reads what ``write`` needs, under the same WATCH, before the MULTI."""
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(*streams)
                    for key in streams:
                        kind = _bytes(await pipe.type(key)).decode()
                        if kind not in ("none", "stream"):
                            raise TransportError(
                                f"{what} failed: WRONGTYPE key {key} holds a {kind}, not a stream"
                            )
                    if present is not None and not _list(
                        await pipe.xrange(present[0], present[1], present[1])
                    ):
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return None
                    if prepare is not None:
                        await prepare(pipe)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    write(pipe)
                    replies: list[object] = await pipe.execute()
                except redis_errors.WatchError:  # a key was written meanwhile: check again
                    continue
                return replies[0]

    async def publish_envelopes(
        self, stream: str, envelopes: Sequence[bytes], *, maxlen: int | None = None
    ) -> list[str]:
        maxlen = check_maxlen(maxlen)
        check_envelopes(envelopes)  # refused here as in memory (the script wrote an int as text)
        if not envelopes:
            return []
        args: list[Arg] = [_optional(maxlen), DATA_FIELD, *envelopes]
        publish = partial(self._pipeline.script, self._publish_many, [stream], args)  # one call, all entries
        what = f"publish {len(envelopes)} events to {stream!r}"
        try:
            published = await publish()
        except Exception as error:
            published = await self._call(what, publish, failed=error)
        entry_ids = _list(published)
        self.stats.published += len(entry_ids)
        return [_bytes(entry_id).decode() for entry_id in entry_ids]

    # -- consuming --------------------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str, *, start_id: str = "0") -> bool:
        check_name("stream", stream)
        check_name("group", group)
        if start_id != "$":
            parse_entry_position(start_id)  # refused here as in memory, not by the server

        async def create() -> bool:
            try:
                await self.client.xgroup_create(stream, group, id=start_id, mkstream=True)
            except redis_errors.ResponseError as error:
                if "BUSYGROUP" in str(error):
                    return False
                raise
            return True

        created = await self._call(f"create group {group!r} on {stream!r}", create)
        if created:
            logger.info("created group %r on %r at %s", group, stream, start_id)
        return created

    async def read(
        self, subscription: Subscription[E], count: int, *, skip_sessions: Collection[str] = ()
    ) -> list[Delivery[E]]:
        count = check_read_count(count)
        if count <= 0:
            return []
        failures, failing_since = 0, 0.0
        while True:
            self._check_open(f"reading {subscription.stream!r}")  # (closed while it waited to retry)
            bound = self._retry.timeout + max(subscription.block, 0.0)
            try:
                async with asyncio.timeout(bound):
                    deliveries = await self._read_once(subscription, count, skip_sessions)
            except TransportError:  # our own (a reply of an unexpected shape…): not worth a retry
                raise
            except _CONNECTION_ERRORS as error:  # (asyncio's TimeoutError is an OSError)
                failure: Exception = error
            except redis_errors.ResponseError as error:
                if refuses_writes(error):  # no master (any more) there: as a lost connection
                    failure = error
                elif not _is_nogroup(error):
                    raise TransportError(f"reading {subscription.stream!r} failed: {error}") from error
                else:
                    logger.warning(
                        "group %r missing on %r (flushed or restarted?): recreating at 0",
                        subscription.group,
                        subscription.stream,
                    )
                    await self.ensure_group(subscription.stream, subscription.group)
                    self.stats.groups_recreated += 1
                    continue
            else:
                if failures:
                    _answered_again(f"reading {subscription.stream!r}", failures, failing_since)
                self.stats.delivered += len(deliveries)
                return await settle_undecodable(self, subscription, deliveries)
            failing_since = failing_since or time.monotonic()
            failures += 1
            delay = self._backoff.compute(failures)
            reason = _unreachable(failure, bound)
            _failed_attempt(f"reading {subscription.stream!r}", reason, delay, failures, self.stats)
            await asyncio.sleep(delay)

    async def _read_once(
        self, sub: Subscription[E], count: int, skip_sessions: Collection[str]
    ) -> list[Delivery[E]]:
        deliveries = await self._reclaim(sub, count)
        remaining = count - len(deliveries)
        if remaining <= 0:
            return deliveries
        block = 0.0 if deliveries or sub.block <= 0 else sub.block
        args = ("XREADGROUP", "GROUP", sub.group, sub.consumer, "COUNT", remaining)
        key, ttl = (sub.stream, sub.group, sub.consumer), sub.claim_ttl
        up_to = self._read_up_to.get(key) if ttl is not None else None
        if ttl is None or up_to is None:  # no claims, or the first read: which entries are new?
            response, claimed = await self._xread(args, block, sub.stream, ">"), None
        else:
            token_prefix = f"{unique_token()}:"
            claim_args: list[Arg] = [sub.group, sub.consumer, up_to, _CLAIM_ON_READ_MAX, token_prefix]
            claim_args += (_ms(ttl), self.names.prefix, DATA_FIELD, *skip_sessions)
            claiming = (self._claim_read, [sub.stream], claim_args)
            response, claimed = await self._read_with(args, block, sub.stream, ">", claiming)
        entries = _stream_entries(response)
        if entries:
            self._read_up_to[key] = entries[-1][0]
        claims = _read_claims(claimed, self.names.prefix) if claimed is not None else {}
        give_back: list[_ReadClaim] = []
        for entry_id, fields in entries:
            entry = decode_entry(self.codec, sub.stream, entry_id, fields, sub.model)
            read_claim = claims.pop(entry_id, None) if claims else None
            claim = None
            if read_claim is not None and ttl is not None:
                claim = read_claim.outcome(entry, ttl)
                if claim is None or claim.status in _GIVEN_BACK:
                    give_back.append(read_claim)
                else:
                    self.stats.claimed_on_read += 1
            deliveries.append(delivered(entry, sub, 1, claim))
        give_back += claims.values()  # entries of an earlier read whose reply was lost
        if give_back:
            await self._give_back(give_back)
        return deliveries

    async def _give_back(self, claims: list[_ReadClaim]) -> None:
        """Release the leases taken on read that will not be used (a request answered or cancelled
        before, an entry that did not decode, or one the read did not return)."""
        taken = [claim for claim in claims if claim.leased]
        replies = await asyncio.gather(
            *(self._pipeline.script(self._release_lease, [c.lease_key], [c.token]) for c in taken),
            return_exceptions=True,
        )
        for reply in replies:
            if isinstance(reply, BaseException):  # it expires with its ttl anyway
                logger.warning("releasing a lease taken on read failed: %s", reply)

    async def _reclaim(self, sub: Subscription[E], count: int) -> list[Delivery[E]]:
        if sub.claim_min_idle is None:
            return []
        key = (sub.stream, sub.group, sub.consumer)
        now = self.clock.time()
        if now - self._reclaimed_at.get(key, float("-inf")) < sub.reclaim_every:
            return []
        cursor = self._cursors.get(key, "0-0")
        result: object = await self._reclaim_script(
            keys=[sub.stream],
            args=[sub.group, sub.consumer, _ms(sub.claim_min_idle), cursor, count],
        )
        next_cursor, entries, deleted, counts = _list(result)
        self._cursors[key] = _bytes(next_cursor).decode()
        if self._cursors[key] == "0-0":  # scanned the whole pending list: rest until next interval
            self._reclaimed_at[key] = now
        deleted_ids = [_bytes(entry_id).decode() for entry_id in _list(deleted)]
        if deleted_ids:
            self.stats.reclaimed_deleted += len(deleted_ids)
            logger.warning(
                "%d pending entries of %r were deleted before they could be reclaimed: %s",
                len(deleted_ids),
                sub.stream,
                deleted_ids,
            )
        deliveries = []
        for (entry_id, fields), times in zip(_entries(entries), _list(counts), strict=True):
            entry = decode_entry(self.codec, sub.stream, entry_id, fields, sub.model)
            deliveries.append(delivered(entry, sub, _int(times)))
        self.stats.reclaimed += len(deliveries)
        return deliveries

    async def ack(self, *deliveries: Delivery[Any]) -> int:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for delivery in deliveries:
            check_delivery(delivery)  # refused here as in memory, not by the server
            if not delivery.settled:
                groups[delivery.stream, delivery.group].append(delivery.entry_id)
        if not groups:
            return 0

        async def ack_all() -> list[object]:
            pipe: Pipeline = self.client.pipeline(transaction=False)
            for (stream, group), ids in groups.items():
                pipe.xack(stream, group, *ids)
            replies: list[object] = await pipe.execute()
            return replies

        acked = sum(_int(reply) for reply in await self._call("ack", ack_all))
        self.stats.acked += acked
        return acked

    async def _set_idle(self, deliveries: Sequence[Delivery[Any]], idle: float) -> set[str]:
        """Set the idle time of the given deliveries this consumer holds; returns the held ids."""
        by_group: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for delivery in deliveries:
            check_delivery(delivery)  # all, before any is held
            by_group[delivery.stream, delivery.group, delivery.consumer].append(delivery.entry_id)
        held: set[str] = set()
        for (stream, group, consumer), ids in by_group.items():
            hold = partial(self._hold, keys=[stream], args=[group, consumer, int(idle * 1000), *ids])
            try:
                result = await self._call(f"hold entries of {stream!r}", hold)
            except TransportError as error:
                if "NOGROUP" not in str(error):
                    raise
                continue  # the group is gone (flushed): none of these are held any more
            held.update(_bytes(entry_id).decode() for entry_id in _list(result))
        return held

    async def release(self, delivery: Delivery[Any], *, delay: float = 0.0) -> bool:
        idle = released_idle(delivery, delay)
        released = delivery.entry_id in await self._set_idle([delivery], idle)
        if released:
            self._reclaimed_at.pop((delivery.stream, delivery.group, delivery.consumer), None)
        return released

    async def keep_fresh(self, deliveries: Sequence[Delivery[Any]]) -> list[Delivery[Any]]:
        if not deliveries:
            return []
        held = await self._set_idle(deliveries, 0.0)
        return [delivery for delivery in deliveries if delivery.entry_id not in held]

    async def uncount(self, delivery: Delivery[Any]) -> bool:
        check_delivery(delivery)
        if delivery.settled or delivery.delivery_count < 2:
            return False
        args: list[Arg] = [delivery.group, delivery.consumer, delivery.entry_id, delivery.delivery_count]
        uncount = partial(self._uncount, keys=[delivery.stream], args=args)
        try:
            return bool(_int(await self._call(f"uncount {delivery.entry_id}", uncount)))
        except TransportError as error:
            if "NOGROUP" not in str(error):
                raise
            return False  # the group is gone (flushed): the entry is no longer held, as _set_idle

    async def dead_letter(
        self,
        delivery: Delivery[Any],
        reason: str,
        reply: Reply | None = None,
        *,
        record_ttl: float | None = None,
    ) -> bool:
        record_ttl = dead_letter_record_ttl(record_ttl, reply)
        check_delivery(delivery)
        if delivery.settled:
            return False
        record_key = record_key_of(self.names, delivery)
        now = self.clock.time()
        record_head, response_id = "", None
        if reply is not None and record_key is not None and record_ttl is not None:
            event, response_id = reply.event, reply.event.id
            record_head = _record_head(event.request_id, event.id, str(event.status), reply.stream, now)
        dead_fields = dead_letter_fields(delivery, reason, now, response_id=response_id)
        keys = [
            delivery.stream,
            self.names.dead_letters,
            record_key or self.names.dead_letters,
            self._call_marker(self.names.dead_letters),
        ]
        reply_args: list[bytes | str | int] = []
        envelope = reply.envelope(self.codec) if reply is not None else b""
        if reply is not None and reply.stream is not None:
            keys.append(reply.stream)
            reply_args = [DATA_FIELD, envelope]
        args: list[bytes | str | int] = [
            delivery.group,
            delivery.entry_id,
            delivery.consumer,
            len(dead_fields),
            _optional(reply.maxlen if reply else None),
            _optional(_ms(reply.expire) if reply and reply.expire is not None else None),
            "1" if record_key else "0",
            (reply.channel or "") if reply is not None else "",
            envelope if reply is not None and reply.channel else b"",
            self._marker_ms,
            _ms(record_ttl) if response_id is not None and record_ttl is not None else "",
            record_head,
            *_flatten(dead_fields),
            *reply_args,
        ]
        written, _ = _list(
            await self._call(
                f"dead-letter {delivery.entry_id}",
                partial(self._dead_letter, keys=keys, args=args),
            )
        )
        if _int(written):
            self.stats.dead_lettered += 1
            logger.debug("dead-lettered %s of %r: %s", delivery.entry_id, delivery.stream, reason)
        return bool(_int(written))

    async def complete(
        self, delivery: Delivery[Any], reply: Reply, *, record_ttl: float, lease: Lease | None = None
    ) -> Completion:
        check_seconds("record_ttl", record_ttl)
        check_delivery(delivery)  # else the script fails at its ack: its whole batch, after its writes
        event, completed_at = reply.event, self.clock.time()
        record_key = self.names.completed_record(event.request_id)
        lease_key = self.names.session_lease(lease.session_id) if lease is not None else record_key
        status = str(event.status)
        envelope = reply.envelope(self.codec)  # refused (too large…) wherever it goes, as in memory
        call = _Completion(
            (delivery.stream, record_key, lease_key, reply.stream or record_key),
            (
                delivery.group,
                delivery.entry_id,
                _ms(record_ttl),
                _optional(reply.maxlen),
                _optional(_ms(reply.expire) if reply.expire is not None else None),
                lease.token if lease is not None else "",
                reply.channel or "",
                _record_head(event.request_id, event.id, status, reply.stream, completed_at),
                envelope if reply.stream is not None or reply.channel else b"",  # sent where used
                "" if reply.stream is None else "1",
            ),
        )
        retried = False
        try:
            outcome = await self._pipeline.batched(self._completes, call)
        except Exception as error:
            retried = True
            submit = partial(self._pipeline.batched, self._completes, call)
            outcome = await self._call(f"complete {event.request_id}", submit, failed=error)
        created, detail = _list(outcome)
        if _int(created) == -2:
            raise TransportError(f"complete {event.request_id} failed: {_bytes(detail).decode()}")
        if _int(created) < 0:
            assert lease is not None
            raise LeaseLostError(lease.session_id)
        if not _int(created):
            existing = _record(detail)
            if not (retried and existing.response_id == event.id):
                return Completion(existing, created=False)
            # Written by this call's first attempt, whose reply was lost (a connection lost, a
            # timeout once Redis had run it): this call's answer (response ids are unique).
            self.stats.acked += 1
            return Completion(existing, True)
        self.stats.acked += 1
        reply_id = _bytes(detail).decode() or None
        record = CompletedRecord(event.request_id, event.id, status, reply.stream, reply_id, completed_at)
        return Completion(record, True)  # created (positional: no keyword dict per request)

    # -- inspecting -------------------------------------------------------------------------------

    async def read_stream(
        self,
        stream: str,
        model: type[E],
        *,
        after: str = "0-0",
        count: int = 100,
        block: float | None = None,
    ) -> list[Entry[E]]:
        parse_read_position(after)  # refused here as in memory, not by the server
        check_count("count", count)
        block = check_seconds("block", block, zero=True, optional=True)
        if after == "$":  # resolved once: a retry's "$" would be after what came in between
            after = await self.last_entry_id(stream)
        response = await _retrying(
            f"read {stream!r}",
            lambda: self._xread(("XREAD", "COUNT", count), block or 0.0, stream, after),
            self._retry,
            self.stats,
            blocks=block or 0.0,
        )
        return [
            decode_entry(self.codec, stream, entry_id, fields, model)
            for entry_id, fields in _stream_entries(response)
        ]

    async def delete(self, stream: str, *entry_ids: str) -> int:
        for entry_id in entry_ids:
            parse_entry_position(entry_id)
        if not entry_ids:
            return 0
        deleted = await self._call(f"XDEL on {stream!r}", lambda: self.client.xdel(stream, *entry_ids))
        return _int(deleted)

    async def move(
        self, source: str, entry_id: str, stream: str, fields: Mapping[str, bytes] | Mapping[bytes, bytes]
    ) -> str | None:
        # A retry after a connection lost mid-call finds the entry moved by the first attempt,
        # and the call's marker with the id it wrote: never a second copy, nor a None for a move
        # that happened.
        millis, sequence = parse_entry_position(entry_id)
        entry_id = f"{millis}-{sequence}"  # in full: XRANGE reads "ms" as all of that millisecond
        values = encoded_fields(fields)
        what = f"move {entry_id} from {source!r} to {stream!r}"
        marker = self._call_marker(stream)
        moved: object
        if 2 * len(values) <= _scripts.UNPACK_MAX:
            args: list[Arg] = [entry_id, self._marker_ms, *_flatten(values)]
            moved = await self._call(what, partial(self._move, keys=[source, stream, marker], args=args))
        else:  # too many fields for the script's unpack(): the same checks and writes under WATCH
            new_id = ""

            async def prepare(pipe: Pipeline) -> None:  # the id, so the MULTI can set the marker
                nonlocal new_id
                new_id = _bytes(await self._next_id(keys=[stream], client=pipe)).decode()

            def write(pipe: Pipeline) -> None:
                pipe.xadd(stream, values, id=new_id)  # type: ignore[arg-type]
                pipe.xdel(source, entry_id)
                pipe.set(marker, new_id, px=self._marker_ms)

            moved = await self._call(
                what,
                partial(self._watched, what, [source, stream], (source, entry_id), write, prepare=prepare),
            )
            if moved is None:  # the entry is gone: moved by a first attempt whose reply was lost?
                moved = await self._call(what, partial(self.client.get, marker))
        if moved is None:
            return None
        self.stats.published += 1
        return _bytes(moved).decode()

    async def last_entry_id(self, stream: str) -> str:
        newest = await self._call(f"last entry of {stream!r}", lambda: self.client.xrevrange(stream, count=1))
        entries = _entries(newest)
        return entries[0][0] if entries else "0-0"

    async def pending(self, stream: str, group: str, *, count: int = 100) -> list[PendingEntry]:
        check_count("count", count)
        rows = await self._call(
            f"pending of {group!r} on {stream!r}",
            lambda: self.client.xpending_range(stream, group, min="-", max="+", count=count),
        )
        pending = []
        for row in _list(rows):
            if not isinstance(row, dict):
                raise TransportError(f"unexpected XPENDING reply row: {type(row).__name__}")
            pending.append(
                PendingEntry(
                    entry_id=_bytes(row["message_id"]).decode(),
                    consumer=_bytes(row["consumer"]).decode(),
                    idle=_int(row["time_since_delivered"]) / 1000,
                    delivery_count=_int(row["times_delivered"]),
                )
            )
        return pending

    async def trim_acknowledged(self, stream: str) -> int:
        try:
            trimmed = await self._call(f"trim {stream!r}", lambda: self._trim(keys=[stream], args=[]))
        except TransportError as error:
            if "no such key" in str(error):
                return 0
            raise
        return int(trimmed)

    def coordinator(self) -> RedisCoordinator:
        return RedisCoordinator(self.client, names=self.names, retry=self._retry, pipeline=self._pipeline)

    async def _xread(self, head: tuple[Arg, ...], block: float, stream: str, after: str) -> object:
        """``XREAD`` / ``XREADGROUP`` (``head``) of ``stream`` after ``after``, blocking up to
        ``block`` seconds (``0``: not at all), its reply raw. Each read in flight has a connection
        of its own (a blocking read holds its connection), taken from the idle ones or made."""
        reply, _ = await self._read_with(head, block, stream, after, None)
        return reply

    async def _read_with(
        self,
        head: tuple[Arg, ...],
        block: float,
        stream: str,
        after: str,
        then: tuple[AsyncScript, list[str], list[Arg]] | None,
    ) -> tuple[object, object]:
        """:meth:`_xread`, and the script call ``then`` sent right behind it, on its connection:
        Redis runs it as soon as the read is answered. Its reply (``None`` if it failed: logged)."""
        self._check_open(f"reading {stream!r}")
        reader = self._readers.pop() if self._readers else self._new_reader()
        command = (*head, "BLOCK", _ms(block)) if block > 0 else head
        blocks = max(block, 0.0)
        behind = None
        try:
            read = reader.command(*command, "STREAMS", stream, after, blocks=blocks)
            behind = reader.script(*then, blocks=blocks) if then is not None else None
            reply = await read
        except redis_errors.ResponseError:  # (NOGROUP…) an answer: the connection is fine
            if behind is not None:
                behind.cancel()  # its reply (the same error) is read and dropped
            self._idle(reader)
            raise
        except BaseException as error:  # cancelled or failed: the read may still be outstanding on it
            if behind is not None:
                behind.cancel()
            reader.close()
            if self._closed and not isinstance(error, asyncio.CancelledError):  # by aclose()
                raise TransportError(f"reading {stream!r} failed: the transport is closed") from error
            raise
        extra: object = None
        if behind is not None:
            try:
                extra = await behind
            except redis_errors.ResponseError as error:  # the read's entries still count
                logger.warning("the script sent behind a read of %r failed: %s", stream, error)
            except asyncio.CancelledError:
                reader.close()
                raise
            except Exception as error:  # the connection, lost after the read's reply: its entries count
                logger.warning("the script sent behind a read of %r failed: %r", stream, error)
                reader.close()
                return reply, None
        self._idle(reader)
        return reply, extra

    def _idle(self, reader: AutoPipeline) -> None:
        if self._closed:  # closed while it read
            reader.close()
        else:
            self._readers.append(reader)

    def _new_reader(self) -> AutoPipeline:
        reader = AutoPipeline(self.client, timeout=self._retry.timeout)
        self._all_readers.add(reader)
        return reader

    async def aclose(self) -> None:
        self._closed = True
        for reader in list(self._all_readers):
            reader.close()
        self._readers.clear()
        await self._pipeline.aclose()
        if self._owns_client:
            await self.client.aclose()


def _optional(value: int | None) -> str:
    return "" if value is None else str(value)


def _record(stored: object) -> CompletedRecord:
    """A completed-request record as stored: a JSON object of :meth:`CompletedRecord.to_fields`."""
    return read_record(_bytes(stored))


@slot_init
@dataclass(frozen=True, slots=True)
class _Completion:
    """One call of the ``COMPLETE`` batch script (see ``_scripts.COMPLETE``): its 4 keys and 10
    arguments."""

    keys: tuple[str, str, str, str]
    args: tuple[Arg, ...]


def _pack_completions(calls: Sequence[_Completion]) -> tuple[list[str], list[Arg]]:
    keys = [key for call in calls for key in call.keys]
    args: list[Arg] = [DATA_FIELD]
    for call in calls:
        args += call.args
    return keys, args


def _record_head(
    request_id: str, response_id: str, status: str, reply_stream: str | None, completed_at: float
) -> str:
    """The record as stored (the JSON of :meth:`CompletedRecord.to_fields`) up to its reply entry
    id, which the ``COMPLETE`` script adds once it has written the reply."""
    return (
        f'{{"request_id":{_json_string(request_id)},"response_id":{_json_string(response_id)},'
        f'"status":{_json_string(status)},"reply_stream":{_json_string(reply_stream or "")},'
        f'"completed_at":"{completed_at!r}","reply_entry_id":"'
    )


@slot_init
@dataclass(frozen=True, slots=True)
class _Claim:
    """One claim: ``SET NX`` of the lease, then the lease's value and the requests' record and
    cancel flag keys, read back (``checks``)."""

    lease_key: str
    token: str
    ttl_ms: int
    checks: tuple[str, ...]


def _pack_claims(claims: Sequence[_Claim]) -> list[tuple[Arg, ...]]:
    """The claims of one iteration: one ``SET NX`` each, then one ``MGET`` of all their checks.
    Taking the lease before reading the records is what makes this safe without a script: a run
    releases its session's lease only in the step that writes its record, so a claim that gets
    the lease after a run of the same request reads that run's record."""
    commands: list[tuple[Arg, ...]] = [("SET", c.lease_key, c.token, "NX", "PX", c.ttl_ms) for c in claims]
    commands.append(("MGET", *(key for claim in claims for key in claim.checks)))
    return commands


def _unpack_claims(claims: Sequence[_Claim], replies: list[object]) -> list[object]:
    """Per claim: its slice of the ``MGET``, or the error of its ``SET`` (or of the ``MGET``)."""
    *taken, values = replies
    if not isinstance(values, list):
        return [values] * len(claims) if isinstance(values, BaseException) else []
    parts: list[object] = []
    at = 0
    for claim, reply in zip(claims, taken, strict=True):
        parts.append(reply if isinstance(reply, BaseException) else values[at : at + len(claim.checks)])
        at += len(claim.checks)
    return parts


_CLAIM_ON_READ_MAX: Final = 8
"""The most new requests a read claims for (``Subscription.claim_ttl``). A read that delivers
more claims none: their claims go out as plain commands in one write, whose round trip they share,
and which cost Redis less than the claim script's copy of every entry."""

_GIVEN_BACK: Final = frozenset({ClaimStatus.ANSWERED, ClaimStatus.CANCELLED})
"""Claims that found a request answered or cancelled: a lease they took is given back."""


def _claim_outcome(lease: Lease, request_ids: Sequence[str], leased: bool, flags: list[object]) -> Claim:
    """A claim from what it read: whether it holds ``lease``, then the requests' record keys and
    cancel flags (``flags``, in that order)."""
    if flags.count(None) < len(flags):  # a request answered (its record) or cancelled (its flag)
        n = len(request_ids)
        answered = frozenset(
            rid for rid, flag in zip(request_ids, flags[:n], strict=True) if flag is not None
        )
        if answered:
            return Claim(ClaimStatus.ANSWERED, request_ids=answered)
        cancelled = frozenset(
            rid for rid, flag in zip(request_ids, flags[n:], strict=True) if flag is not None
        )
        return Claim(ClaimStatus.CANCELLED, request_ids=cancelled)
    return Claim(ClaimStatus.LEASED, lease) if leased else Claim(ClaimStatus.BUSY)


@slot_init
@dataclass(frozen=True, slots=True)
class _ReadClaim:
    """One lease claim of the ``CLAIM_READ`` script, as Redis saw the entry: raw bytes."""

    session_id: bytes
    request_id: bytes
    token: bytes
    lease_key: bytes
    values: list[object]  # the lease's value, the request's record and its cancel flag

    @property
    def leased(self) -> bool:
        return self.values[0] == self.token

    def outcome(self, entry: Entry[Any], ttl: float) -> Claim | None:
        """The claim of the request ``entry`` decoded to, if the script read the same ids."""
        if entry.message is None:
            return None
        event = entry.message.event
        session_id, request_id = getattr(event, "session_id", None), getattr(event, "id", None)
        if not isinstance(session_id, str) or not isinstance(request_id, str):
            return None
        if session_id.encode() != self.session_id or request_id.encode() != self.request_id:
            return None
        lease = Lease(session_id, self.token.decode(), ttl)
        return _claim_outcome(lease, [request_id], self.leased, self.values[1:])


def _read_claims(reply: object, prefix: str) -> dict[str, _ReadClaim]:
    """The ``CLAIM_READ`` reply by entry id."""
    claimed, reply_values = _list(reply)
    values = _list(reply_values)
    claims: dict[str, _ReadClaim] = {}
    for at, item in enumerate(_list(claimed)):
        entry_id, session_id, request_id, token = (_bytes(part) for part in _list(item))
        lease_key = b"%s:lease:%s" % (prefix.encode(), session_id)
        claims[entry_id.decode()] = _ReadClaim(
            session_id, request_id, token, lease_key, values[3 * at : 3 * at + 3]
        )
    return claims


def _flatten(fields: Mapping[str, bytes] | Mapping[bytes, bytes]) -> list[bytes | str | int]:
    flat: list[bytes | str | int] = []
    for key, value in fields.items():
        flat += (key, value)
    return flat


class RedisCoordinator(Coordinator):
    """Session leases (``SET NX PX`` with an ownership token) and completed-request records.

    Connection errors are retried like the transport's (capped backoff with jitter), then raised
    as :class:`TransportError`.
    """

    def __init__(
        self,
        client: Redis,
        *,
        names: StreamNames | None = None,
        owns_client: bool = False,
        retry: _RetryPolicy | None = None,
        pipeline: AutoPipeline | None = None,
    ) -> None:
        _check_client(client)
        self.client = client
        self.names = stream_names(names)
        self._owns_client = owns_client
        self._retry = retry or _RetryPolicy(ExponentialWithJitterBackoff(cap=5.0, base=0.05), 30.0)
        self._renew = client.register_script(_scripts.RENEW_LEASE)
        self._release = client.register_script(_scripts.RELEASE_LEASE)
        self._delete_record = client.register_script(_scripts.DELETE_RECORD)
        self._claims = BatchCommands(_pack_claims, _unpack_claims)
        self._owns_pipeline = pipeline is None  # else the transport's, closed with it
        self._pipeline = pipeline or AutoPipeline(client, timeout=self._retry.timeout)
        self._giving_back: set[asyncio.Future[object]] = set()  # leases of cancelled claims and acquires
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, names: StreamNames | None = None) -> RedisCoordinator:
        return cls(_own_client(url), names=names, owns_client=True)

    async def acquire(self, session_id: str, ttl: float, *, holder: str = "") -> Lease | None:
        self._check_open("acquire a lease")
        token = lease_token(holder)
        key = self.names.session_lease(session_id)
        lease = Lease(session_id, token, ttl)
        set_nx = partial(self._pipeline.command, "SET", key, token, "NX", "PX", _ms(check_ttl(ttl)))
        try:
            try:
                reply = await set_nx()
            except Exception as error:
                reply = await self._do("acquire a lease", set_nx, failed=error)
                # held — by this call, if its first SET NX ran and only the reply was lost?
                held_by = partial(self._pipeline.command, "GET", key)
                if reply is None and await self._do("read a lease", held_by) == token.encode():
                    reply = b"OK"
        except asyncio.CancelledError:  # its SET NX may have gone out: see _give_back_later
            self._give_back_later(lease)
            raise
        return lease if reply is not None else None  # b"OK", or None when someone holds it

    async def holder(self, session_id: str) -> str | None:
        key = self.names.session_lease(session_id)
        token: object = await self._do("read a lease", lambda: self.client.get(key))
        return _bytes(token).decode().partition("/")[2] if token is not None else None

    async def request_cancel(self, request_id: str, ttl: float = 3600.0) -> None:
        key, ttl_ms = self.names.cancel_flag(request_id), _ms(check_ttl(ttl))
        check_cancellable(request_id)
        await self._do("request a cancellation", lambda: self.client.set(key, b"1", px=ttl_ms))

    async def cancelled(self, request_ids: Sequence[str]) -> set[str]:
        check_request_ids(request_ids, ordered=False)
        if not request_ids:
            return set()
        keys = [self.names.cancel_flag(rid) for rid in request_ids]
        values: object = await self._do("read cancellations", lambda: self.client.mget(keys))
        return {rid for rid, value in zip(request_ids, _list(values), strict=True) if value is not None}

    async def claim(self, session_id: str, request_ids: Sequence[str], ttl: float) -> Claim:
        check_request_ids(request_ids)
        if not request_ids:
            raise ConfigurationError("claim() needs at least one request id")
        self._check_open("claim a session")
        token = lease_token(request_ids[-1])
        lease_key = self.names.session_lease(session_id)
        checks = (
            lease_key,
            *(self.names.completed_record(rid) for rid in request_ids),
            *(self.names.cancel_flag(rid) for rid in request_ids),
        )
        call = _Claim(lease_key, token, _ms(check_ttl(ttl)), checks)
        lease = Lease(session_id, token, ttl)
        try:
            try:
                reply = await self._pipeline.batched(self._claims, call)
            except Exception as error:
                claim = partial(self._pipeline.batched, self._claims, call)
                reply = await self._do("claim a session", claim, failed=error)
        except asyncio.CancelledError:
            self._give_back_later(lease)
            raise
        lease_value, *flags = _list(reply)
        leased = lease_value == token.encode()  # so a retry after a lost reply finds its own lease
        outcome = _claim_outcome(lease, request_ids, leased, flags)
        if leased and outcome.status in _GIVEN_BACK:  # taken before the records were read: give it back
            try:
                await self.release(lease)
            except TransportError as error:  # it expires within ttl anyway
                logger.warning("releasing the lease of %s failed: %s", session_id, error)
        return outcome

    def _give_back_later(self, lease: Lease) -> None:
        """Release the lease a cancelled claim or acquire may have been granted: its ``SET NX`` may
        have gone out, and nobody else would give the lease back before its ttl. The release is
        queued on the same pipelined connection, so Redis runs it after the ``SET NX``;
        token-checked, it never frees a lease someone else holds. (Nothing is added to a call that
        is not cancelled.)"""
        released = self._pipeline.script(
            self._release, [self.names.session_lease(lease.session_id)], [lease.token]
        )
        self._giving_back.add(released)
        released.add_done_callback(partial(self._given_back, lease))

    def _given_back(self, lease: Lease, released: asyncio.Future[object]) -> None:
        self._giving_back.discard(released)
        if released.cancelled():
            return
        if (error := released.exception()) is not None:  # it expires within its ttl anyway
            logger.warning("giving back the lease of %s failed: %s", lease.session_id, error)
        elif released.result():
            logger.info("gave back the lease of %s a cancelled call took", lease.session_id)

    async def renew(self, lease: Lease, ttl: float | None = None) -> bool:
        ttl_ms = _ms(check_ttl(ttl if ttl is not None else lease.ttl))
        key = self.names.session_lease(lease.session_id)
        return bool(
            await self._do("renew a lease", partial(self._renew, keys=[key], args=[lease.token, ttl_ms]))
        )

    async def release(self, lease: Lease) -> bool:
        key = self.names.session_lease(lease.session_id)
        return bool(await self._do("release a lease", partial(self._release, keys=[key], args=[lease.token])))

    async def get_record(self, request_id: str) -> CompletedRecord | None:
        key = self.names.completed_record(request_id)
        stored: object = await self._do("read a record", lambda: self.client.get(key))
        return _record(stored) if stored is not None else None

    async def set_record(self, record: CompletedRecord, ttl: float) -> bool:
        key = self.names.completed_record(record.request_id)
        value, ttl_ms = stored_record(record), _ms(check_ttl(ttl))
        stored = await self._do("store a record", lambda: self.client.set(key, value, nx=True, px=ttl_ms))
        return bool(stored)

    async def delete_record(self, request_id: str, *, response_id: str | None = None) -> bool:
        key = self.names.completed_record(request_id)
        if response_id is None:
            deleted: object = await self._do("delete a record", lambda: self.client.delete(key))
        else:
            args = [response_id]
            deleted = await self._do("delete a record", lambda: self._delete_record(keys=[key], args=args))
        return bool(_int(deleted))

    def _do(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        failed: Exception | None = None,
    ) -> Coroutine[Any, Any, T]:
        self._check_open(what)  # and before each retry
        return _retrying(what, operation, self._retry, None, failed=failed, still_open=self._check_open)

    def _check_open(self, what: str) -> None:
        """A call of a closed coordinator, or of one whose transport was closed, is a
        :class:`TransportError`: not a call through a connection the closed client makes again."""
        if self._closed:
            raise TransportError(f"{what} failed: the coordinator is closed")
        if self._pipeline.closed:
            raise TransportError(f"{what} failed: the transport is closed")

    async def aclose(self) -> None:
        """Wait for the leases of cancelled claims and acquires to be given back, then release what the
        coordinator owns. Its calls fail from then on, as they do once its transport is closed."""
        self._closed = True
        if self._giving_back:
            await asyncio.wait(list(self._giving_back))
        if self._owns_pipeline:
            await self._pipeline.aclose()
        if self._owns_client:
            await self.client.aclose()
