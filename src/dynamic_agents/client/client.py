"""``AgentClient``: what an interface needs — publish requests, await or consume their replies.

``request()`` cannot miss a fast reply: the reply stream's position is taken before the request is
published, and one shared reader per reply stream hands replies out by request id, so a thousand
concurrent requests over sixteen reply streams cost sixteen readers, not a thousand. A reader stops
once nobody waits on its stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from dynamic_agents._logging import get_logger
from dynamic_agents._validation import check_seconds, shown, with_article
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames
from dynamic_agents.events._errors import event_error, preview
from dynamic_agents.events.envelope import DATA_FIELD, read_entry_data
from dynamic_agents.exceptions import (
    ConfigurationError,
    DeliveryError,
    EventError,
    EventValidationError,
    FieldError,
    TransportError,
)
from dynamic_agents.observability.tracing import check_tracing
from dynamic_agents.routing import RoutingConfig
from dynamic_agents.transports import CompletedRecord, Delivery, Entry, Subscription, Transport
from dynamic_agents.transports.base import check_transport, parse_entry_id

if TYPE_CHECKING:
    from dynamic_agents.observability import Tracing

__all__ = ["AgentClient"]

logger = get_logger("client")

_READ_COUNT: Final = 500
"""The most replies one read of :meth:`AgentClient.request`'s reader takes."""

HAND_BACK_WITHIN: Final = 5.0
"""Seconds a closing :meth:`AgentClient.responses` tries to hand back the replies it had not yielded."""


@dataclass(slots=True)
class _Reader:
    """One reply stream, read from a known position; replies go to whoever waits for them."""

    stream: str
    position: str
    waiting: dict[str, list[asyncio.Future[AgentResponseEvent]]]  # request id -> its waiters
    task: asyncio.Task[None] | None = None
    unchecked: str | None = None  # where the reads not yet checked for a trim started
    checked_at: float = -math.inf  # loop time of the last check for a trim


class AgentClient:
    """Publishes requests and delivers replies for an interface.

    ``routing`` (the interface YAML) lets :meth:`build_request` fill targets, session ids and reply
    streams the way the design document's ``AgentRouting`` does. With ``tracing``, each publish is
    a producer span whose context travels in the envelope's ``traceparent`` header.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        routing: RoutingConfig | None = None,
        block: float = 1.0,
        tracing: Tracing | None = None,
    ) -> None:
        self.transport = check_transport(transport)  # else a bare AttributeError on .names
        self.names: StreamNames = transport.names
        self._coordinator = transport.coordinator()  # records (request) and cancellations
        if routing is not None and not isinstance(routing, RoutingConfig):  # else a bare AttributeError
            raise ConfigurationError(
                "routing must be a RoutingConfig (RoutingConfig.from_file(path), "
                f"RoutingConfig.from_dict(mapping)), got {shown(routing)}"
            )
        self.routing = routing
        self._event_router = routing.router() if routing is not None else None
        self.block = check_seconds("block", block)
        self.tracing = check_tracing(tracing)
        self._readers: dict[str, _Reader] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"AgentClient({self.transport!r}, readers={len(self._readers)})"

    # -- building and publishing --------------------------------------------------------------------

    def build_request(self, source: str, event: Mapping[str, Any]) -> AgentRequestEvent:
        """An ``AgentRequestEvent`` from a normalised platform event.

        ``event`` holds ``channel_id`` (or ``conversation_id`` / ``chat_id``), ``user_id``,
        ``content`` and optionally ``id`` (the platform's event id — used as the request id, so a
        platform retry is deduplicated), ``user_name``, ``attachments``, ``guild_id`` and other
        metadata. A missing or ``None`` id, or a missing, ``None`` or empty channel, is missing
        (the next channel key is read); ``0`` is one. The
        session id is ``{prefix}:{channel}`` (prefix from the interface's ``session.prefix``, else
        the source) and the reply stream is the channel's. A field of the
        wrong type is an :class:`~dynamic_agents.exceptions.EventValidationError` naming it.

        With ``routing``, the target is chosen as :meth:`EventRouter.route
        <dynamic_agents.routing.EventRouter.route>` chooses it, and, like it, raises
        :class:`~dynamic_agents.exceptions.NoRouteError` when no rule, source default or global
        default applies. Without ``routing`` the request names no target: the worker's router
        picks it.
        """
        if not isinstance(source, str):
            raise ConfigurationError(f"source must be a str (a platform slug), got {shown(source)}")
        if not isinstance(event, Mapping):
            raise ConfigurationError(f"event must be a mapping of its fields, got {type(event).__name__}")
        source = source.strip().lower()  # as the event reads it, for the interface and stream names
        # A missing, None or empty field is no channel (the next key is read); a platform's
        # numeric 0 is one, and an id
        channels = ("channel_id", "conversation_id", "chat_id")
        key = next((key for key in channels if event.get(key) not in (None, "")), None)
        if key is None:
            raise ConfigurationError(
                f"{with_article(source)} event needs channel_id (or conversation_id / chat_id)"
            )
        channel = event[key]
        for name, value in ((key, channel), ("id", event.get("id")), ("user_id", event.get("user_id"))):
            # str() below would make a session and a stream of "{'id': 1}" or "True"
            if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
                problem = FieldError(name, "a platform's id must be a str or an int", preview(value))
                raise EventValidationError(AgentRequestEvent.__name__, (problem,))
        interface = self.routing.interfaces.get(source) if self.routing is not None else None
        prefix = interface.session.prefix if interface is not None and interface.session.prefix else source
        reserved = {
            "id",
            "channel_id",
            "conversation_id",
            "chat_id",
            "user_id",
            "user_name",
            "content",
            "attachments",
        }
        metadata = {key: value for key, value in event.items() if key not in reserved}
        user_id = event.get("user_id")
        fields: dict[str, Any] = {
            "source": source,
            "source_id": str(channel),
            "user_id": "" if user_id is None else str(user_id),  # none given: no user, not "None"
            "user_name": event.get("user_name"),
            "content": event.get("content", ""),
            "attachments": event.get("attachments", []),
            "session_id": f"{prefix}:{channel}",
            "reply_stream": self.names.responses(source, str(channel)),
            "metadata": metadata,
        }
        if event.get("id") is not None:  # an empty one is refused by the event, naming it
            fields["id"] = str(event["id"])
        try:
            request = AgentRequestEvent.model_validate(fields)
        except ValidationError as error:
            raise event_error(AgentRequestEvent, error) from None
        if self._event_router is not None:
            decision = self._event_router.route(request)
            target = {"agent": "agent_id", "team": "team_id", "workflow": "workflow_id"}[
                decision.target.type.value
            ]
            request = request.model_copy(update={target: decision.target.id})
        return request

    async def publish(self, request: AgentRequestEvent, *, headers: Mapping[str, str] | None = None) -> str:
        """Put a request on ``agent:requests``; returns its entry id. ``headers`` given here win over
        the trace context ``tracing`` adds."""
        self._check_open("publish")
        if self.tracing is None:
            return await self.transport.publish(self.names.requests, request, headers=headers)
        with self.tracing.publish(self.names.requests, request) as trace_headers:
            return await self.transport.publish(
                self.names.requests, request, headers={**trace_headers, **(headers or {})}
            )

    async def request(
        self, request: AgentRequestEvent, *, timeout: float = 60.0, headers: Mapping[str, str] | None = None
    ) -> AgentResponseEvent:
        """Publish and wait for the reply (``TimeoutError`` after ``timeout`` seconds; ``math.inf``:
        no limit).

        A request already answered (a platform's retry of an event, whose id is the request id) is
        not published again: its reply is read back from where the completed-request record says it
        is (:class:`DeliveryError` if it is no longer there, its decode error if it does not
        decode). So is one whose reply left the reply stream (trimmed by the worker's
        ``reply_maxlen``) before the client's reader got to it: a :class:`DeliveryError` once the
        reader finds the stream trimmed past where it read (it looks at most once per ``block``
        seconds), not a ``TimeoutError`` at the end.
        :meth:`aclose` ends the wait with a :class:`TransportError`. A reply to it that does not
        decode (a newer major ``schema_version``, say) raises its
        :class:`~dynamic_agents.exceptions.EventError`.
        """
        self._check_open("request")
        timeout = check_seconds("timeout", timeout, forever=True)
        if request.reply_stream is None:
            raise ConfigurationError("request() needs the request's reply_stream")
        # The whole call: a broker slow to answer (retrying a lost connection) counts too.
        async with asyncio.timeout(timeout):
            return await self._request(request, request.reply_stream, headers)

    async def _request(
        self, request: AgentRequestEvent, reply_stream: str, headers: Mapping[str, str] | None
    ) -> AgentResponseEvent:
        reader = await self._reader(reply_stream)
        if self._closed:  # aclose() came while the reader started: this call is not
            # among the waits it ended, so it ends here, before it publishes (the reader stops alone)
            raise TransportError("the client was closed before the reply came")
        future: asyncio.Future[AgentResponseEvent] = asyncio.get_running_loop().create_future()
        # several calls may wait for one request id (a platform retry of one event): each gets the
        # reply, and each removes only its own future
        waiters = reader.waiting.setdefault(request.id, [])
        waiters.append(future)
        try:
            # Waiting already: a reply written from now on reaches the future; one written before
            # left its record, so nothing falls between the two.
            record = await self._coordinator.get_record(request.id)
            if record is not None:
                return await self._earlier_reply(record)
            if future.done():  # aclose() ended the wait meanwhile (or a reply came): publish nothing
                return future.result()
            await self.publish(request, headers=headers)
            return await asyncio.shield(future)
        finally:
            if future.done() and not future.cancelled():
                # aclose() may have set its error on a wait this call then did not await (an
                # earlier reply found, a publish that failed): retrieved, or asyncio reports it.
                future.exception()
            waiters.remove(future)
            if not waiters and reader.waiting.get(request.id) is waiters:
                del reader.waiting[request.id]

    async def _earlier_reply(self, record: CompletedRecord) -> AgentResponseEvent:
        """The reply a completed-request record points at."""
        where = f"request {record.request_id!r} was answered before ({record.status})"
        if record.reply_stream is None or record.reply_entry_id is None:
            raise DeliveryError(f"{where} without a reply entry")
        entry = await self.transport.read_entry(
            record.reply_stream, record.reply_entry_id, AgentResponseEvent
        )
        if entry is None:
            raise DeliveryError(
                f"{where}; its reply {record.reply_entry_id} is no longer on {record.reply_stream!r}"
            )
        return entry.event  # or the error it does not decode with (a newer major version, say)

    async def _reader(self, stream: str) -> _Reader:
        reader = self._readers.get(stream)
        if reader is not None:
            return reader
        async with self._lock:
            reader = self._readers.get(stream)
            if reader is None:
                position = await self.transport.last_entry_id(stream)  # before anything is published
                reader = _Reader(stream, position, {})
                reader.task = asyncio.get_running_loop().create_task(self._read_replies(reader))
                self._readers[stream] = reader
        return reader

    async def _read_replies(self, reader: _Reader) -> None:
        while True:
            if not reader.waiting:
                # Nobody waits on this stream any more (a bot answers in many channels): stop, so
                # idle channels hold no reader (on Redis, a connection in a blocking XREAD). No
                # request() can be between taking this reader and registering its waiter (no await
                # there); a later one starts a fresh reader, at the stream's end before it publishes.
                if self._readers.get(reader.stream) is reader:
                    del self._readers[reader.stream]
                return
            read_after = reader.position
            try:
                entries = await self.transport.read_stream(
                    reader.stream, AgentResponseEvent, after=read_after, count=_READ_COUNT, block=self.block
                )
            except Exception as error:  # a host's own Transport may raise anything: a reader that
                # died would stay registered, and every wait on its stream would run to its timeout
                logger.warning("reading replies from %r failed: %s", reader.stream, error)
                await asyncio.sleep(self.block)
                continue
            unnamed: dict[str, EventError] = {}  # undecodable entries naming no request, by id
            for entry in entries:
                reader.position = entry.entry_id
                if entry.message is None:
                    self._skip_undecodable(reader, entry, unnamed)
                    continue
                for future in reader.waiting.get(entry.message.event.request_id, ()):
                    if not future.done():
                        future.set_result(entry.message.event)
            if unnamed and reader.waiting:
                await self._fail_by_records(reader, unnamed)
            if read_after == "0-0" and 0 < len(entries) < _READ_COUNT:
                # The stream was empty when the reader started, and it holds fewer entries than a
                # read takes: trimmed, it would hold reply_maxlen at least (on Redis, under 500
                # only if reply_maxlen is), so its first entry is where the reads began.
                read_after = entries[0].entry_id
            await self._check_for_trims(reader, read_after, read_any=bool(entries))

    def _skip_undecodable(
        self, reader: _Reader, entry: Entry[AgentResponseEvent], unnamed: dict[str, EventError]
    ) -> None:
        """A reply this release cannot read (a newer major version, say): whoever waits for the
        request it names gets the error, not a TimeoutError at the end. One whose body names none
        that can be read (over the codec's ``max_size``) goes to ``unnamed``."""
        request_id = _named_request_id(entry.fields, self.transport.codec.max_size)
        logger.warning(
            "entry %s of %r does not decode as a reply%s, skipped: %s",
            entry.entry_id,
            reader.stream,
            "" if request_id is None else f" (to request {request_id!r})",
            entry.error,
        )
        if entry.error is None:
            return
        if request_id is None:
            unnamed[entry.entry_id] = entry.error
        for future in reader.waiting.get(request_id or "", ()):
            if not future.done():
                future.set_exception(entry.error)

    async def _fail_by_records(self, reader: _Reader, unnamed: Mapping[str, EventError]) -> None:
        """Fail the waits whose completed-request record names one of the ``unnamed`` entries
        (a reply too large for this client's codec, from a worker whose ``max_size`` is larger)
        with its error: they waited out their timeout. One record read per request waited for,
        only when such an entry comes."""
        try:
            for request_id in list(reader.waiting):  # one at a time: not a connection each at once
                record = await self._coordinator.get_record(request_id)
                if record is None or record.reply_stream != reader.stream:
                    continue
                failure = unnamed.get(record.reply_entry_id or "")
                for future in reader.waiting.get(request_id, ()):
                    if failure is not None and not future.done():
                        future.set_exception(failure)
        except Exception as error:  # as a failed read: those waits run to their timeout
            logger.warning("reading the records of requests waiting on %r failed: %s", reader.stream, error)

    async def _check_for_trims(self, reader: _Reader, read_after: str, *, read_any: bool) -> None:
        """After a read (from ``read_after``), :meth:`_find_trimmed_replies` if calls still wait:
        at most once per ``block`` seconds (a round trip between two reads), so a lost reply is
        found within about that long, not at the end of its call's timeout."""
        if read_any and reader.unchecked is None:
            reader.unchecked = read_after
        now = asyncio.get_running_loop().time()
        if reader.unchecked is None or not reader.waiting or now - reader.checked_at < self.block:
            return
        since, reader.unchecked, reader.checked_at = reader.unchecked, None, now
        try:
            await self._find_trimmed_replies(reader, since)
        except Exception as error:  # as a failed read: checked again after the next one
            reader.unchecked = since
            logger.warning("looking for replies trimmed from %r failed: %s", reader.stream, error)

    async def _find_trimmed_replies(self, reader: _Reader, since: str) -> None:
        """Answer the waits whose reply left the stream before the reader read it (trimmed by the
        worker's ``reply_maxlen`` while the reader was behind): each waited out its timeout, though
        its completed-request record said it was answered. Only when the stream's oldest entry is
        past ``since``, where the reads since the last check started (it was trimmed, or deleted,
        since): the records of the requests still waited for are then read, and each answered one
        gets its reply from where the record points, or the :class:`DeliveryError` saying it is
        gone."""
        oldest = await self.transport.read_stream(reader.stream, AgentResponseEvent, count=1)
        start = parse_entry_id(since) or (0, 0)
        if oldest and (parse_entry_id(oldest[0].entry_id) or (0, 0)) <= start:
            return
        for request_id in list(reader.waiting):  # one at a time: not a connection each at once
            record = await self._coordinator.get_record(request_id)
            if record is None:
                continue
            try:
                outcome: AgentResponseEvent | DeliveryError | EventError = await self._earlier_reply(record)
            except (DeliveryError, EventError) as error:  # gone, or it does not decode
                outcome = error
            for future in reader.waiting.get(request_id, ()):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    # -- consuming replies (the interface process that delivers them) -------------------------------

    def responses(
        self,
        reply_streams: Sequence[str],
        *,
        group: str,
        consumer: str,
        block: float | None = None,
        claim_min_idle: float = 60.0,
    ) -> AsyncGenerator[Delivery[AgentResponseEvent], None]:
        """Replies from many channels' streams through a consumer group: ``ack()`` each once the
        platform has it. One left unacked that long (``claim_min_idle`` seconds: its consumer
        crashed, or the platform refused it) is delivered again, to this consumer or another;
        the replies of one read still waiting their turn are kept fresh each time one is yielded.
        One stream is read with a blocking read (a reply comes as soon as it is written); several
        are polled in turn, pausing ``block`` seconds (the client's, by default) when none had
        anything, so a reply may wait up to that long. Closed in the middle of a read's batch, it
        hands the replies it has not yielded back to the group at once. A wait for the next reply
        that is cancelled (``anext()`` under a timeout) leaves the iteration usable: its read goes
        on, and the next ``anext()`` gets what it read. An entry that does not
        decode as a reply is dead-lettered by the read (with a warning) and not yielded. A read
        the broker refuses (Redis out of memory, say: a :class:`TransportError`) does not end the
        iteration: it is tried again after ``block`` seconds, with a warning for the 1st, 2nd,
        4th, 8th… failure in a row. ``reply_streams`` that is a str, or empty, is a
        :class:`ConfigurationError`."""
        generator = self._responses(
            reply_streams, group=group, consumer=consumer, block=block, claim_min_idle=claim_min_idle
        )
        return _Replies(generator, self._hand_back)

    async def _responses(
        self,
        reply_streams: Sequence[str],
        *,
        group: str,
        consumer: str,
        block: float | None,
        claim_min_idle: float,
    ) -> AsyncGenerator[Delivery[AgentResponseEvent], None]:
        _check_reply_streams(reply_streams)
        self._check_open("responses")
        wait = self.block if block is None else check_seconds("block", block)
        claim_min_idle = check_seconds("claim_min_idle", claim_min_idle)
        # One stream: wait in a blocking read, woken by the reply. Several: a read waits on one
        # stream only, so poll them all and pause ``block`` seconds when none had anything.
        single = len(reply_streams) == 1
        subscriptions = [
            Subscription(
                stream,
                group,
                consumer,
                AgentResponseEvent,
                block=wait if single else 0,
                claim_min_idle=claim_min_idle,
            )
            for stream in reply_streams
        ]
        for subscription in subscriptions:
            await self.transport.ensure_group(subscription.stream, group)
        failures: dict[str, int] = {}  # reads refused in a row, by stream
        while True:
            found = refused = False
            for subscription in subscriptions:
                batch = await self._read_batch(subscription, failures, wait)
                if batch is None:
                    refused = True
                    continue
                found = found or bool(batch)
                # An entry that did not decode is no reply: the read dead-lettered it (and said so).
                batch = [delivery for delivery in batch if not delivery.settled]
                while batch:
                    if self.closed:  # aclose() while the gateway sent the last one: the rest goes
                        await self._hand_back(batch)  # back to the group, none is yielded after it
                        return
                    delivery, batch = batch[0], batch[1:]
                    try:
                        yield delivery
                    except GeneratorExit:  # closed mid-batch: the rest go back to the group now,
                        await self._hand_back(batch)  # not after claim_min_idle
                        raise
                    if batch:  # the caller took its time with that one (a platform's rate limits)
                        try:
                            batch = await self._kept(batch)
                        except asyncio.CancelledError:  # (the iterator's aclose() cancels its
                            await self._hand_back(batch)  # step) the generator ends: as when closed
                            raise
            if self.closed:  # aclose(): the iteration ends
                return
            if not found and (refused or not single):
                await asyncio.sleep(wait)

    async def _read_batch(
        self, subscription: Subscription[AgentResponseEvent], failures: dict[str, int], wait: float
    ) -> list[Delivery[AgentResponseEvent]] | None:
        """A read of :meth:`responses`, or ``None`` when the broker refused it (Redis out of memory,
        say): that passes, and raising would end the gateway's loop for good. ``failures`` counts
        the refusals in a row, by stream: a warning for the 1st, 2nd, 4th, 8th…, the others at debug
        level, so a shortage that lasts does not log a line per read."""
        stream = subscription.stream
        try:
            batch = await self.transport.read(subscription, subscription.batch_size)
        except TransportError as error:
            failures[stream] = count = failures.get(stream, 0) + 1
            said = str(error)  # the Redis transport's own errors name the read already
            if not said.startswith(f"reading {stream!r}"):
                said = f"reading {stream!r} failed: {said}"
            level = logging.WARNING if count & (count - 1) == 0 else logging.DEBUG
            logger.log(level, "%s; reading again in %g s (failure %d in a row)", said, wait, count)
            return None
        if stream in failures:
            count = failures.pop(stream)
            logger.info("reading replies from %r works again after %d failed reads", stream, count)
        return batch

    async def _kept(
        self, deliveries: Sequence[Delivery[AgentResponseEvent]]
    ) -> list[Delivery[AgentResponseEvent]]:
        """The replies of a batch still to be yielded, their idle time reset: it ran from the read,
        and past ``claim_min_idle`` another consumer would take them and send them too. Those one
        took meanwhile are left out: that consumer sends them. One no longer held because it left
        the stream (trimmed, or gone with it) is held by nobody: it is kept, only here to be sent.
        Like :meth:`_hand_back`, for :data:`HAND_BACK_WITHIN` seconds at most: failing that, they
        are yielded as they are."""
        try:
            async with asyncio.timeout(HAND_BACK_WITHIN):
                lost = await self.transport.keep_fresh(deliveries)
                taken = {
                    delivery.entry_id
                    for delivery in lost
                    if await self.transport.read_entry(delivery.stream, delivery.entry_id, AgentResponseEvent)
                    is not None
                }
        except (TransportError, TimeoutError) as error:
            logger.warning(
                "could not keep %d reply entries of %s fresh (%s); another consumer may take them "
                "after claim_min_idle",
                len(deliveries),
                deliveries[0].stream,
                str(error) or f"no answer within {HAND_BACK_WITHIN} s",
            )
            return list(deliveries)
        return [delivery for delivery in deliveries if delivery.entry_id not in taken]

    async def _hand_back(self, deliveries: Sequence[Delivery[AgentResponseEvent]]) -> None:
        """Give replies read but not yielded back to the group, all at once (one round trip on
        Redis) and for :data:`HAND_BACK_WITHIN` seconds at most: closing must neither fail nor wait
        out a broker that is away (the transport's retry deadline); the replies come back after
        ``claim_min_idle`` anyway."""
        if not deliveries:
            return
        try:
            async with asyncio.timeout(HAND_BACK_WITHIN):
                results = await asyncio.gather(
                    *(self.transport.release(delivery) for delivery in deliveries), return_exceptions=True
                )
            failure = next((type(r).__name__ for r in results if isinstance(r, BaseException)), None)
        except TimeoutError:
            failure = f"no answer within {HAND_BACK_WITHIN} s"
        if failure is not None:
            logger.warning(
                "could not hand back %d reply entries of %s (%s); they are redelivered after claim_min_idle",
                len(deliveries),
                deliveries[0].stream,
                failure,
            )

    async def cancel(self, request_id: str) -> None:
        """Cancel a request from any process: the worker running it (or about to) stops it and
        answers ``cancelled``. ``request_id`` is the request's ``id`` as a str (what
        :meth:`build_request` made of the platform's event id), else a :class:`ConfigurationError`."""
        if not isinstance(request_id, str):  # a platform's int message id: the request's is its str
            raise ConfigurationError(
                f"request_id must be a str (the request's id, e.g. request.id), got {request_id!r} "
                f"({type(request_id).__name__})"
            )
        self._check_open("cancel")
        await self._coordinator.request_cancel(request_id)

    async def ack(self, *deliveries: Delivery[AgentResponseEvent]) -> int:
        """Acknowledge replies from :meth:`responses` once the platform has them (one round trip
        per call); returns how many were still pending. One left unacked is delivered again after
        ``claim_min_idle``, to this consumer or another of its group."""
        return await self.transport.ack(*deliveries)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise TransportError(f"{what} failed: the client is closed")

    async def aclose(self) -> None:
        """Close the client: stop the reply readers; calls still waiting in :meth:`request` end
        with a :class:`TransportError`, and so do later calls of :meth:`request`,
        :meth:`publish`, :meth:`cancel` and :meth:`responses`. A :meth:`responses` iteration
        still running ends at its next step, handing back the replies it read and did not yield;
        :meth:`ack` still settles the ones it yielded. The transport is left open."""
        self._closed = True
        readers = list(self._readers.values())
        tasks = [reader.task for reader in readers if reader.task is not None]
        self._readers.clear()
        for reader in readers:
            for waiters in reader.waiting.values():
                for future in waiters:
                    if not future.done():
                        future.set_exception(TransportError("the client was closed before the reply came"))
        for task in tasks:
            task.cancel()
        if tasks:
            # A reader inside a blocking read may take a moment to notice; never hang on it.
            await asyncio.wait(tasks, timeout=2 * self.block + 1)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Replies(AsyncGenerator[Delivery[AgentResponseEvent], None]):
    """What :meth:`AgentClient.responses` returns: its generator, each step (``anext()``) run in a
    task of its own that the caller's wait only shields. A cancelled wait (``anext()`` under a
    timeout, a gateway doing other work in between) cancelled the read inside the generator, which
    ended it (the next ``anext()`` raised StopAsyncIteration) and stranded what the read took until
    ``claim_min_idle``; now the step goes on, and the next ``anext()`` gets what it read."""

    __slots__ = ("_generator", "_hand_back", "_step", "_waiting")

    def __init__(
        self,
        generator: AsyncGenerator[Delivery[AgentResponseEvent], None],
        hand_back: Callable[[Sequence[Delivery[AgentResponseEvent]]], Awaitable[None]],
    ) -> None:
        self._generator = generator
        self._hand_back = hand_back
        self._step: asyncio.Future[Delivery[AgentResponseEvent]] | None = None
        self._waiting = False

    async def __anext__(self) -> Delivery[AgentResponseEvent]:
        return await self.asend(None)

    async def asend(self, value: None) -> Delivery[AgentResponseEvent]:
        if self._waiting:  # as a generator's: two callers would both get the same reply
            raise RuntimeError("anext(): the replies are already being waited for")
        step = self._step
        if step is None:
            step = self._step = asyncio.ensure_future(self._generator.asend(value))
        self._waiting = True
        try:
            return await asyncio.shield(step)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if step.cancelled() and (task is None or not task.cancelling()):
                raise StopAsyncIteration from None  # aclose() from another task: the end
            raise
        finally:
            self._waiting = False
            if step.done():  # else cancelled: the next call waits for the same step
                self._step = None

    async def athrow(
        self,
        typ: type[BaseException] | BaseException,
        val: object = None,
        tb: TracebackType | None = None,
    ) -> Delivery[AgentResponseEvent]:
        await self._drop_step()
        if isinstance(typ, BaseException):
            return await self._generator.athrow(typ)
        return await self._generator.athrow(typ, val, tb)

    async def aclose(self) -> None:
        """End the iteration: a step still running is cancelled (a reply it got, nobody took, is
        handed back to the group), and the generator closed (it hands back the rest of its batch)."""
        await self._drop_step()
        await self._generator.aclose()

    async def _drop_step(self) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        step.cancel()
        await asyncio.wait([step])
        if not step.cancelled() and step.exception() is None:
            await self._hand_back([step.result()])


def _check_reply_streams(reply_streams: Sequence[str]) -> None:
    """:meth:`AgentClient.responses`'s ``reply_streams``: a sequence of stream names, not a str
    (a str is a sequence too: one stream per character) and not empty (the loop would idle
    forever, yielding nothing); else a :class:`ConfigurationError`."""
    if isinstance(reply_streams, str):
        raise ConfigurationError(
            f"reply_streams must be a list of stream names, got the str {reply_streams!r}"
        )
    if not reply_streams:
        raise ConfigurationError(
            f"reply_streams is empty: give at least one stream name, got {reply_streams!r}"
        )


def _named_request_id(fields: Mapping[bytes, bytes], max_size: int) -> str | None:
    """The ``request_id`` string of a reply entry that did not decode, if its body (within
    ``max_size`` bytes, in any envelope the codec reads) is a JSON object naming one."""
    data = fields.get(DATA_FIELD.encode())
    if data is None or len(data) > max_size:
        return None
    try:
        body = json.loads(read_entry_data(data).body)
    except (ValueError, RecursionError):  # not JSON (EnvelopeError is a ValueError too)
        return None
    request_id = body.get("request_id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else None
