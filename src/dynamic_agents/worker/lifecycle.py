"""Lifecycle and progress events on ``agent:events``, with content deltas coalesced.

Events are published in the background by an :class:`EventSink`, in the order they were emitted,
so they never hold up a request's reply; they are best effort (a failure is logged, never raised).
"""

from __future__ import annotations

import asyncio
import time

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import redact_text
from dynamic_agents._tasks import cancel_and_wait
from dynamic_agents.events import (
    ContentDelta,
    LifecycleEvent,
    RequestAccepted,
    ResponseStatus,
    RunCompleted,
    RunFailed,
    RunStarted,
    Target,
)
from dynamic_agents.events.lifecycle import LifecycleJson
from dynamic_agents.events.models import new_event_id
from dynamic_agents.exceptions import DynamicAgentsError
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.transports import Transport

__all__ = ["EventSink", "LifecyclePublisher"]

logger = get_logger("worker")


class EventSink:
    """Publishes events to the events stream in the background, in the order emitted.

    An event is encoded when emitted (one that cannot be, too large say, is logged, dropped alone
    and counted in :attr:`dropped`), and waits as bytes: a worker with many requests in flight
    keeps no objects alive for the garbage collector to go through until they are written.
    Whatever was emitted while the previous batch was being written goes out as the next batch, with
    :meth:`Transport.publish_envelopes` (on Redis: one script call); a batch is written before the
    next starts, so order holds. At most ``max_pending`` events wait (Redis away for long): beyond
    that new events are dropped and counted in :attr:`dropped` (logged once an overflow), as is a
    batch the transport could not write (Redis away past its retry deadline, or out of memory).
    :meth:`flush` waits until everything emitted is written.
    """

    def __init__(self, transport: Transport, *, maxlen: int, max_pending: int = 10_000) -> None:
        self.transport = transport
        self.maxlen = maxlen
        self.max_pending = max_pending
        self.dropped = 0
        self._queue: list[bytes] = []  # envelopes
        self._writing = 0  # events in the batch being written
        self._overflowing = False  # new events dropped since the queue was last taken to be written
        self._task: asyncio.Task[None] | None = None

    def emit(self, event: LifecycleEvent) -> None:
        if self._full():
            return
        try:
            envelope = self.transport.codec.encode_envelope(event)
        except DynamicAgentsError as error:
            self._drop(type(event).__name__, event.request_id, error)
            return
        self._enqueue(envelope)

    def emit_json(self, body: bytes, *, event_id: str, kind: type[LifecycleEvent], request_id: str) -> None:
        """:meth:`emit` of an event already written as JSON (by
        :class:`~dynamic_agents.events.lifecycle.LifecycleJson`): a ``kind`` of request
        ``request_id`` whose id is ``event_id``."""
        if self._full():
            return
        try:
            envelope = self.transport.codec.encode_json_envelope(body, event_id)
        except DynamicAgentsError as error:
            self._drop(kind.__name__, request_id, error)
            return
        self._enqueue(envelope)

    def _full(self) -> bool:
        if len(self._queue) < self.max_pending:
            return False
        if not self._overflowing:  # once an overflow: not once per event, nor once for good
            self._overflowing = True
            logger.warning("%d lifecycle events wait to be published; dropping new ones", len(self._queue))
        self.dropped += 1
        return True

    def _drop(self, kind: str, request_id: str, error: DynamicAgentsError) -> None:
        logger.warning("dropping a %s of request %s: %s", kind, request_id, error)
        self.dropped += 1

    def _enqueue(self, envelope: bytes) -> None:
        self._queue.append(envelope)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._publish_all(), name="lifecycle events")

    async def _publish_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            self._writing, self._overflowing = len(batch), False
            try:
                await self.transport.publish_envelopes(self.transport.names.events, batch, maxlen=self.maxlen)
            except DynamicAgentsError as error:
                self.dropped += len(batch)
                logger.warning("could not publish %d lifecycle events: %s", len(batch), error)
            except Exception:
                self.dropped += len(batch)
                logger.exception("publishing %d lifecycle events failed", len(batch))
            finally:
                self._writing = 0

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event emitted so far is published (or failed). With ``timeout``, at most
        that long (a stopping worker, Redis away: each batch would wait out the transport's retries):
        what is still unwritten then is dropped, counted in :attr:`dropped` and logged."""
        try:
            async with asyncio.timeout(timeout):
                while self._task is not None and not self._task.done():
                    await asyncio.shield(self._task)
        except TimeoutError:
            task, self._task = self._task, None
            unwritten = len(self._queue) + self._writing
            self._queue, self._overflowing = [], False
            self.dropped += unwritten
            logger.warning("lifecycle events not published within %.1f s: %d dropped", timeout, unwritten)
            if task is not None:
                await cancel_and_wait(task)


class LifecyclePublisher:
    """Emits one request's lifecycle events to the worker's :class:`EventSink` (the worker makes
    one only when ``settings.events`` is on: events are built only when someone listens).

    Events are written as JSON by :class:`LifecycleJson`; one it declines (a lone surrogate in the
    output, say) is built as its model, whose validation or encoding refuses it as before."""

    def __init__(
        self,
        sink: EventSink,
        *,
        request_id: str,
        session_id: str,
        target: Target | None,
        delta_interval: float,
    ) -> None:
        self.sink = sink
        self.request_id = request_id
        self.session_id = session_id
        self.target = target
        self.delta_interval = delta_interval
        self._json = LifecycleJson(request_id, session_id, target)
        self._buffer: list[str] = []
        self._sequence = 0
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None  # publishes the buffer when its interval ends

    async def accepted(self) -> None:
        event_id = new_event_id()
        self._emit(RequestAccepted, event_id, self._json.accepted(event_id=event_id, at=time.time_ns()), {})

    async def started(self, delivery_count: int) -> None:
        event_id = new_event_id()
        body = self._json.started(delivery_count, event_id=event_id, at=time.time_ns())
        self._emit(RunStarted, event_id, body, {"delivery_count": delivery_count})

    async def delta(self, content: str) -> None:
        """Buffer a slice of output; publish at most every ``delta_interval`` seconds, and what was
        buffered when the interval ends (not only when the next slice comes: a model can pause
        for a long tool call)."""
        if not content:
            return
        self._buffer.append(content)
        since = time.monotonic() - self._last_flush
        if since >= self.delta_interval:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.delta_interval - since, self._publish_buffer
            )

    async def flush(self) -> None:
        self._publish_buffer()

    def _publish_buffer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        content, self._buffer = "".join(self._buffer), []
        self._last_flush = time.monotonic()
        sequence, event_id = self._sequence, new_event_id()
        self._sequence += 1
        body = None  # content over the codec's limit: the model's encoding refuses it, named
        if len(content) <= self.sink.transport.codec.max_content_length:
            body = self._json.delta(sequence, content, event_id=event_id, at=time.time_ns())
        self._emit(ContentDelta, event_id, body, {"sequence": sequence, "content": content})

    async def finished(self, result: ExecutionResult) -> None:
        await self.flush()
        event_id, now = new_event_id(), time.time_ns()
        if result.status == ResponseStatus.COMPLETED:
            tokens = result.tokens.total_tokens if result.tokens is not None else None
            body = self._json.completed(result.duration_ms, tokens, event_id=event_id, at=now)
            self._emit(
                RunCompleted, event_id, body, {"execution_time_ms": result.duration_ms, "tokens_used": tokens}
            )
        else:
            message = redact_text(result.error_message) if result.error_message else None
            body = self._json.failed(result.status, message, event_id=event_id, at=now)
            self._emit(RunFailed, event_id, body, {"status": result.status, "error_message": message})

    def _emit(
        self, kind: type[LifecycleEvent], event_id: str, body: bytes | None, fields: dict[str, object]
    ) -> None:
        if body is not None:
            self.sink.emit_json(body, event_id=event_id, kind=kind, request_id=self.request_id)
            return
        common = {"request_id": self.request_id, "session_id": self.session_id, "target": self.target}
        self.sink.emit(kind.model_validate({**common, "id": event_id, **fields}))
