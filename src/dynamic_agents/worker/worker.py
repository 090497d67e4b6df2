"""``AgentWorker``: consume requests, route, execute, answer — reliably.

For each entry of the request stream (read through a consumer group, never more than free slots):

1. an entry that did not decode was dead-lettered by the transport: counted, nothing else;
2. a redelivered request with a completed-request record was answered before: acked, not run again;
3. past ``max_deliveries``: dead-lettered, with an error reply and a completed-request record
   naming it (a platform's retry of the request is then acked, not run), atomically;
4. routed (no route → an error reply), then claimed — answered before? cancelled? else the
   session's lease, in one round trip (:meth:`Coordinator.claim`), or in the read's own when the
   transport claimed on read (``claim_on_read``) — and run under that lease:
   within this worker a session's requests run in arrival order, across workers never at the
   same time;
5. answered with ``Transport.complete``: reply, record, ack and the lease's release in one atomic
   step, written only while the lease is still held.

Held entries (running or waiting for their session) are kept fresh, and the leases of runs in
flight renewed, by one background loop each, so only entries of dead workers are reclaimed. An
entry this worker loses (reclaimed after a stall) or a lease it loses cancels the run, and nothing
is published for it: another worker answers. A run cut short by a crash runs again
elsewhere; tools receive the request id to deduplicate their own side effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from pydantic import ValidationError

from dynamic_agents._logging import bind_ids, get_logger, log_context
from dynamic_agents._redaction import redact_text
from dynamic_agents._tasks import cancel_and_wait
from dynamic_agents._validation import a_type, check_seconds, invalid_fields, shown
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, ResponseStatus, Target
from dynamic_agents.events.codecs import RESERVED_HEADERS
from dynamic_agents.events.envelope import fits_in_header
from dynamic_agents.exceptions import (
    ConfigurationError,
    DynamicAgentsError,
    EventTooLargeError,
    LeaseLostError,
    NoRouteError,
    RunLostError,
    TransportError,
)
from dynamic_agents.execution import ExecutionResult, Executor
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import (
    Claim,
    ClaimStatus,
    Completion,
    Coordinator,
    Delivery,
    Lease,
    Reply,
    Subscription,
    Transport,
)
from dynamic_agents.transports.base import check_coordinator, check_stream_option, check_transport
from dynamic_agents.worker.hooks import RunContext, WorkerHooks, check_hooks
from dynamic_agents.worker.lifecycle import EventSink, LifecyclePublisher
from dynamic_agents.worker.settings import SessionPolicy, WorkerSettings

__all__ = ["AgentWorker", "RunLostError", "WorkerStats"]

logger = get_logger("worker")

T = TypeVar("T")

_POLICIES: dict[str, SessionPolicy] = {policy.value: policy for policy in SessionPolicy}
_FOUND_BEFORE = (ClaimStatus.ANSWERED, ClaimStatus.CANCELLED)  # claims that take no lease for a run
_UNKNOWN_POLICIES_LOGGED = 32


@dataclass(slots=True)
class WorkerStats:
    received: int = 0
    completed: int = 0
    failed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    undecodable: int = 0
    lost: int = 0
    lease_waits: int = 0
    handed_back: int = 0


@dataclass(slots=True)
class _HeldLease:
    """The lease a run in flight holds, renewed by the worker's lease loop until its reply is
    written."""

    lease: Lease
    renewed_at: float


class AgentWorker:
    """Consumes ``agent:requests`` and answers each request once. See the module documentation.

    ``async with worker:`` starts it in the background and stops it (gracefully) on exit;
    ``await worker.run()`` runs it in the current task until :meth:`stop`;
    ``await worker.run_until_idle()`` returns once nothing is left to do (for tests).
    """

    def __init__(
        self,
        transport: Transport,
        coordinator: Coordinator,
        router: EventRouter,
        executor: Executor,
        *,
        settings: WorkerSettings | None = None,
        hooks: Sequence[WorkerHooks] = (),
        stream: str | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, WorkerSettings):
            raise ConfigurationError(
                "settings must be a WorkerSettings (WorkerSettings(**mapping) from a mapping), "
                f"got {a_type(settings)}"
            )
        stream = check_stream_option(stream, "request")
        # Each of the wrong type failed with a bare AttributeError: the transport here, the others
        # at the first request (logged, the request left pending) or as an error reply. A router
        # is whatever has route(): a host's own router need not be an EventRouter.
        self.transport = check_transport(transport)
        self.coordinator = check_coordinator(coordinator)
        if not callable(getattr(router, "route", None)):
            raise ConfigurationError(
                "router must be an EventRouter (RoutingConfig.router(), EventRouter(default=…)), "
                f"got {shown(router)}"
            )
        if not isinstance(executor, Executor):
            raise ConfigurationError(
                "executor must be an Executor (FunctionExecutor(function), AgnoExecutor(runtime)), "
                f"got {shown(executor)}"
            )
        self.router = router
        self.executor = executor
        self.settings = settings or WorkerSettings()
        self.hooks = check_hooks(hooks)
        self.stream = stream or transport.names.requests
        self.stats = WorkerStats()
        if self.settings.claim_min_idle < self.settings.lease_ttl:
            logger.warning(
                "claim_min_idle (%s s) is shorter than lease_ttl (%s s): a dead worker's requests, "
                "taken over after claim_min_idle, wait for its session leases (up to lease_ttl) in "
                "the taking worker's concurrency slots; lower lease_ttl too for a quicker takeover",
                self.settings.claim_min_idle,
                self.settings.lease_ttl,
            )
        self.events = EventSink(transport, maxlen=self.settings.events_maxlen)
        """Publishes lifecycle events in the background (``settings.events``)."""
        self.subscription = Subscription(
            stream=self.stream,
            group=self.settings.group,
            consumer=self.settings.consumer,
            model=AgentRequestEvent,
            batch_size=self.settings.batch_size,
            block=self.settings.block,
            claim_min_idle=self.settings.claim_min_idle,
            claim_ttl=self.settings.lease_ttl if self.settings.claim_on_read else None,
        )
        self._held: dict[str, Delivery[AgentRequestEvent]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._turns: dict[str, asyncio.Future[None]] = {}  # entry id -> its handler's session turn
        self._lost: set[str] = set()
        self._session_tails: dict[str, asyncio.Future[None]] = {}
        self._waiting: dict[str, list[str]] = {}  # session -> entry ids queued behind another, in order
        self._absorbed: set[str] = set()  # entry ids answered by a merged run
        self._running: dict[str, str] = {}  # session -> request id running in this worker
        self._executions: dict[str, asyncio.Task[None]] = {}  # request id -> the handler running it
        self._merged_into: dict[str, str] = {}  # request id merged into a running turn -> the turn's
        self._cancelling: set[str] = set()
        self._awaiting_turn: dict[str, str] = {}  # request id -> entry id, queued behind its session
        self._withdrawn: set[str] = set()  # entry ids cancelled on request while queued
        self._leases: dict[str, _HeldLease] = {}  # request id -> the lease its run holds
        self._leases_lost: set[str] = set()
        self._counted_lost: set[asyncio.Task[None]] = set()  # handlers counted in stats.lost
        self._unknown_policies: set[str] = set()  # metadata.session_policy values logged as unknown
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._reading_done = asyncio.Event()  # no read loop running: nothing new starts
        self._reading_done.set()
        self._read_timeout: asyncio.Timeout | None = None  # the read in progress's, for stop() to end it
        self._starting = False  # run() creates the group and calls the on_start hooks: stop() may end it
        self._consuming = False  # run() is going (reading, or ending its runs)

    def __repr__(self) -> str:
        return (
            f"AgentWorker({self.stream!r}, consumer={self.settings.consumer!r}, in_flight={len(self._tasks)})"
        )

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> AgentWorker:
        self._check_not_running()
        self._runner = asyncio.get_running_loop().create_task(
            self.run(), name=f"worker {self.settings.consumer}"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def run(self, *, until_idle: bool = False) -> None:
        """Consume until :meth:`stop` (or, with ``until_idle``, until nothing is left to do). A stop
        requested before the loop got to start (``async with`` left at once) is honoured.
        Cancelling the task that awaits it is a stop without grace: the runs in flight are
        cancelled and hand their entries and leases back before it ends (one still going
        ``settings.abandon_after`` later is abandoned, as by :meth:`stop`). A worker runs once at a
        time: ``run()`` (or ``async with``) while it runs, or still stops, is a ``RuntimeError``."""
        if self._runner is not asyncio.current_task():  # (the run async with started is its own)
            self._check_not_running()
        self._consuming = True
        self._reading_done.clear()
        try:
            await self._consume(until_idle)
        finally:
            self._reading_done.set()
            self._stopping = False  # this run honoured the stop: the next one starts afresh
            self._consuming = False

    def _check_not_running(self) -> None:
        """A second read loop would share this one's state: each with its helpers and on_start, the
        end of either saying the other's reading is done."""
        if self._consuming or (self._runner is not None and not self._runner.done()):
            raise RuntimeError(
                "this worker is running already (async with, or run() in another task): stop() it "
                "before running it again"
            )

    async def _consume(self, until_idle: bool) -> None:
        self._starting = True
        try:
            await self.transport.ensure_group(self.stream, self.settings.group)
            if self.hooks:
                try:
                    await self._call_hooks("on_start", self)
                except asyncio.CancelledError:
                    # cancelled in a hook's on_start: those started before it (a sampler running,
                    # say) stop, as they would at the loop's end
                    await self._call_hooks("on_stop", self, every=True)
                    raise
        finally:
            self._starting = False
        loop = asyncio.get_running_loop()
        helpers = [
            loop.create_task(self._keep_fresh_loop(), name="keeping entries fresh"),
            loop.create_task(self._keep_leases_loop(), name="renewing leases"),
            loop.create_task(self._cancel_watch_loop(), name="watching cancellations"),
        ]
        try:
            while not self._stopping:
                read = await self._read_more()
                if read:
                    await _after_handlers_send()
                elif until_idle and not self._tasks and await self._nothing_pending():
                    break
            self._reading_done.set()
            # Runs in flight (stop() drains them) keep their entries fresh, their leases renewed
            # and their cancellation requests watched until they end (or stop() abandons them):
            # nothing starts after this.
            while self._tasks:
                self._slot_freed.clear()  # set by each handler as it ends, and by _abandon
                await self._slot_freed.wait()
        except asyncio.CancelledError:
            # The task running run() was cancelled (the host's own shutdown): a stop without grace.
            # The runs end with it, handing their entries and leases back, while the loops that
            # keep those still go: none is left running unattended.
            self._reading_done.set()  # nothing reads any more: hand-backs need not wait
            await self._cancel_handlers()
            raise
        finally:
            self._reading_done.set()
            try:
                await cancel_and_wait(*helpers)
            finally:  # cancelled while they end (a shutdown's timeout): the hooks still stop
                if self.hooks:
                    await self._call_hooks("on_stop", self, every=True)

    async def run_until_idle(self, timeout: float = 30.0) -> None:
        """Process until the stream has nothing new, nothing is pending and nothing runs."""
        async with asyncio.timeout(timeout):
            await self.run(until_idle=True)
            await self._drain(None)
            await self.events.flush()

    async def stop(self, grace: float | None = 10.0) -> None:
        """Stop reading; let runs in flight finish for ``grace`` seconds, then cancel the rest.
        Cancelled runs, and requests that had not started (queued behind their session's run or
        waiting for its lease), are not acked: their entries go back to the group for another
        worker. Until the runs end their leases are renewed and their entries kept fresh.

        A cancelled run gets ``settings.abandon_after`` seconds more to end; one still running then
        (an executor that ignores its cancellation, or waits for a thread) is abandoned: logged
        with its request id, its lease given up and its entry left pending, no longer kept fresh,
        for another worker to take after ``claim_min_idle``, its session's next request here free to
        go. If it finishes later, its reply is refused (the lease is no longer its own) and nothing
        is written; a new delivery of its entry (this worker started again) is left alone.

        ``grace=None`` waits for the runs however long they take (none is cancelled).

        The start of a worker started by ``async with`` still going ``block`` + 5 seconds into the
        stop (an ``on_start`` hook that does not end) is cancelled: every hook gets ``on_stop``.

        Lifecycle events not yet written get ``grace`` more seconds (at least one; with ``None``, as
        long as they take): with Redis away they are then dropped (``events.dropped``) rather than
        holding up the stop.

        Cancelling the task that awaits ``stop()`` cancels it (the worker goes on stopping in the
        background, without the grace: its runs end on their own).

        ``grace``: seconds >= 0, ``math.inf`` as ``None``; else a :class:`ConfigurationError`,
        before anything stops."""
        grace = check_seconds("grace", grace, zero=True, forever=True, optional=True)
        if grace == math.inf:
            grace = None
        self._stopping = True
        runner, self._runner = self._runner, None
        running, handed_back = runner is not None or not self._reading_done.is_set(), self.stats.handed_back
        try:
            # started by __aenter__ (or run() in the host's own task): its read loop ends at its
            # next turn, so nothing starts after this
            await self._stop_reading(runner)
            await self._drain(grace)
            if runner is not None:
                await self._end_runner(runner)
        except asyncio.CancelledError:
            if runner is not None and not runner.done():
                self._runner = runner  # for a later stop() to finish
            raise
        if runner is not None and runner.done() and not runner.cancelled():
            runner.result()  # its failure (ensure_group, say) is the caller's to see
        if runner is None and self._reading_done.is_set():
            self._stopping = False  # no run() of its own to reset it, and none is reading
        if running:  # (a stop of a stopped worker, leaving `async with` after stop(), says nothing)
            logger.info(
                "worker %s stopped: %d request(s) handed back to the group for another worker",
                self.settings.consumer,
                self.stats.handed_back - handed_back,
            )
        await self.events.flush(timeout=None if grace is None else max(grace, 1.0))

    async def _end_runner(self, runner: asyncio.Task[None]) -> None:
        """Wait for the last steps of the worker started here (its helpers ending, the ``on_stop``
        hooks), without swallowing our own cancellation: an ``on_stop`` hook still going
        ``abandon_after`` seconds later is cancelled (the hooks after it still called), and one
        that ignores that too is left to end on its own another ``abandon_after`` later."""
        for attempt in range(2):
            _, still_running = await asyncio.wait({runner}, timeout=self.settings.abandon_after)
            if not still_running:
                return
            if attempt == 0:
                logger.warning(
                    "worker %s: its on_stop hooks still run %s s after its runs ended "
                    "(abandon_after); cancelling them",
                    self.settings.consumer,
                    self.settings.abandon_after,
                )
                runner.cancel()
        logger.error(
            "worker %s: its on_stop hooks ignored their cancellation; stop() returns without them",
            self.settings.consumer,
        )

    async def _stop_reading(self, runner: asyncio.Task[None] | None) -> None:
        """Let the read loop notice the stop: a read in progress ends within ``block`` (and the
        time its answer takes), unless Redis is away, when it retries until cancelled: then it is
        cancelled. So is the start of a worker started here (``runner``) still going then (an
        ``on_start`` hook that does not end). The loop of a worker started here is waited for; one
        in the host's own task (``run()``), only as long again."""
        for attempt in range(2):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.block + 5):
                    await self._reading_done.wait()
                return
            if attempt == 0 and self._read_timeout is not None:
                self._read_timeout.reschedule(asyncio.get_running_loop().time())
            elif attempt == 0 and runner is not None and self._starting:
                logger.warning(
                    "worker %s was still starting (creating its group, calling the on_start hooks) "
                    "%s s into stop(): its start is cancelled",
                    self.settings.consumer,
                    self.settings.block + 5,
                )
                runner.cancel()
        if runner is not None:
            await self._reading_done.wait()

    async def _drain(self, grace: float | None) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks.values()), timeout=grace)
        if pending:
            await self._cancel_and_wait(pending)

    async def _cancel_handlers(self) -> None:
        while self._tasks:
            await self._cancel_and_wait(set(self._tasks.values()))

    async def _cancel_and_wait(self, tasks: set[asyncio.Task[None]]) -> None:
        """Cancel ``tasks`` and wait ``abandon_after`` seconds for them; abandon those still going."""
        for task in tasks:
            task.cancel()
        _, still_running = await asyncio.wait(tasks, timeout=self.settings.abandon_after)
        if still_running:
            await self._abandon(still_running)

    async def _abandon(self, tasks: set[asyncio.Task[None]]) -> None:
        """Let go of handlers that outlived their cancellation: they no longer count as in flight,
        their entries are no longer kept fresh nor handed back (pending, another worker takes them
        after ``claim_min_idle``), their leases are given up, so a late finish writes nothing
        (``Transport.complete`` refuses a lease no longer held), and their sessions' next requests
        here may go. What this worker keeps by entry and request id is dropped now, not at their
        late end: by then it may be a new delivery's of the same entry (this worker started again)."""
        request_ids = {task: rid for rid, task in self._executions.items()}
        named: list[str] = []
        leases: list[Lease] = []
        for entry_id, task in list(self._tasks.items()):
            if task not in tasks:
                continue
            del self._tasks[entry_id]  # so its handler knows itself abandoned (_owns)
            self._forget_entry(entry_id)
            delivery = self._held.pop(entry_id, None)
            self._end_turn(self._turns.pop(entry_id, None))
            request_id = request_ids.get(task) or (delivery.event.id if delivery else f"entry {entry_id}")
            named.append(request_id)
            held = self._leases.pop(request_id, None)  # no longer renewed
            if held is not None:
                leases.append(held.lease)
            if task in request_ids:
                self._forget_execution(request_id)
            self._count_lost(task)
        self._slot_freed.set()  # the read loop's wait for runs in flight sees them gone
        logger.warning(
            "abandoned %d run(s) still going %s s after their cancellation (abandon_after), request "
            "ids: %s; their entries stay pending for another worker (after claim_min_idle), their "
            "leases are given up",
            len(named),
            self.settings.abandon_after,
            ", ".join(named),
        )
        for lease in leases:
            with contextlib.suppress(DynamicAgentsError):  # else it expires with its ttl, unrenewed
                await self.coordinator.release(lease)

    def _forget_entry(self, entry_id: str) -> None:
        for queue in list(self._waiting.values()):
            if entry_id in queue:
                queue.remove(entry_id)
        self._waiting = {session: queue for session, queue in self._waiting.items() if queue}
        self._absorbed.discard(entry_id)
        self._withdrawn.discard(entry_id)
        self._lost.discard(entry_id)

    def _end_turn(self, turn: asyncio.Future[None] | None) -> None:
        """The session's next request here may go."""
        if turn is None or turn.done():
            return
        turn.set_result(None)
        for session, tail in list(self._session_tails.items()):
            if tail is turn:
                del self._session_tails[session]

    def _forget_execution(self, request_id: str) -> None:
        """An abandoned run's: a cancellation request or an interrupt no longer reaches it."""
        self._executions.pop(request_id, None)
        self._leases.pop(request_id, None)
        self._leases_lost.discard(request_id)
        self._cancelling.discard(request_id)
        self._merged_into = {rid: turn for rid, turn in self._merged_into.items() if turn != request_id}
        self._running = {session: rid for session, rid in self._running.items() if rid != request_id}

    def _count_lost(self, handler: asyncio.Task[None] | None) -> None:
        """Count a request lost once, however many signs of it come: its entry taken over, its
        lease lost, its run abandoned by stop(), its late reply refused. Kept by handler (a
        redelivery here is a new one), only on this path: the handlers counted earlier that have
        ended are dropped now."""
        if handler is not None:
            if handler in self._counted_lost:
                return
            self._counted_lost = {task for task in self._counted_lost if not task.done()}
            self._counted_lost.add(handler)
        self.stats.lost += 1

    def _owns(self, delivery: Delivery[AgentRequestEvent]) -> bool:
        """Whether the current handler still stands for ``delivery`` (it was not abandoned)."""
        return self._tasks.get(delivery.entry_id) is asyncio.current_task()

    async def _nothing_pending(self) -> bool:
        return not await self.transport.pending(self.stream, self.settings.group, count=1)

    # -- consuming ----------------------------------------------------------------------------------

    async def _read_more(self) -> bool:
        free = self.settings.concurrency - len(self._tasks)
        if free <= 0:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.block):
                    await self._slot_freed.wait()
            return True
        free = min(free, self.settings.batch_size)  # entries asked for per read
        try:
            # Under a timeout of its own, which stop() ends if the read does not (Redis away: it
            # retries until cancelled). Sessions with requests in flight here are not claimed on
            # read: those claim in turn.
            async with asyncio.timeout(None) as self._read_timeout:
                deliveries = await self.transport.read(
                    self.subscription, free, skip_sessions=self._session_tails
                )
        except TransportError as error:
            said = str(error)  # the Redis transport's own errors name the read already
            if not said.startswith(f"reading {self.stream!r}"):
                said = f"reading {self.stream!r} failed: {said}"
            logger.warning("%s", said)
            await asyncio.sleep(self.settings.block)
            return False
        except TimeoutError:
            if not self._stopping:
                raise
            return False  # the read stop() ended: nothing was read
        finally:
            self._read_timeout = None
        loop = asyncio.get_running_loop()
        read_at = loop.time()
        handled_here: list[Delivery[AgentRequestEvent]] = []
        for delivery in deliveries:
            self.stats.received += 1
            if delivery.settled:
                self.stats.undecodable += 1
                continue
            if delivery.entry_id in self._tasks:
                # Idle past claim_min_idle while it could not be kept fresh (the broker away, the
                # loop blocked), it came back to this worker's own reclaim scan: its handler here
                # goes on with it (a second one would run it, or dead-letter it, beside the first).
                logger.warning(
                    "entry %s, still being handled here, was reclaimed by this worker (it could not be "
                    "kept fresh for claim_min_idle); its handler goes on with it",
                    delivery.entry_id,
                )
                handled_here.append(delivery)
                continue
            self._held[delivery.entry_id] = delivery
            # Queue behind the session's previous request now, in arrival order (before any await).
            session = delivery.event.session_id
            previous = self._session_tails.get(session)
            turn: asyncio.Future[None] = loop.create_future()
            self._session_tails[session] = turn
            if previous is not None:  # behind another of the session's requests here: queued
                self._waiting.setdefault(session, []).append(delivery.entry_id)
            task = loop.create_task(self._handle(delivery, previous, turn, read_at))
            self._tasks[delivery.entry_id] = task
            self._turns[delivery.entry_id] = turn
        for delivery in handled_here:  # a delivery that handled nothing: not counted (else a taker
            # could find the entry past max_deliveries sooner); left counted if this fails
            with contextlib.suppress(DynamicAgentsError):
                await self.transport.uncount(delivery)
        return bool(deliveries)

    async def _keep_fresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.freshness_interval)
            held = list(self._held.values())
            if not held:
                continue
            try:
                lost = await self.transport.keep_fresh(held)
            except TransportError as error:
                logger.warning("keeping %d entries fresh failed: %s", len(held), error)
                continue
            except Exception:  # a bug, not Redis trouble: logged, and the loop goes on (else no
                # entry would be kept fresh for the rest of the worker's life, all taken over)
                logger.exception("keeping %d entries fresh failed", len(held))
                continue
            for delivery in lost:
                if self._held.get(delivery.entry_id) is not delivery:
                    continue  # answered (acked) while the check ran: not lost
                logger.warning(
                    "entry %s is no longer held (taken over by another consumer, or deleted from the "
                    "stream); cancelling its run",
                    delivery.entry_id,
                )
                self._lost.add(delivery.entry_id)
                task = self._tasks.get(delivery.entry_id)
                self._count_lost(task)
                if task is not None:
                    task.cancel()

    # -- handling one request -----------------------------------------------------------------------

    async def _handle(
        self,
        delivery: Delivery[AgentRequestEvent],
        previous: asyncio.Future[None] | None,
        turn: asyncio.Future[None],
        read_at: float,
    ) -> None:
        event = delivery.event
        failure: BaseException | None = None
        try:
            bind_ids(request_id=event.id, session_id=event.session_id)  # this task is this request's
            await self._process(delivery, event, previous, read_at)
        except (asyncio.CancelledError, RunLostError) as error:
            failure = error
            if self._owns(delivery) and delivery.entry_id not in self._lost:
                # stopping: hand the entry back at once instead of waiting for it to go idle
                await self._hand_back(delivery)
        except TransportError as error:  # Redis gone past the retry deadline: expected, stays pending
            failure = error
            # no traceback: three chained exceptions a request, all the outage long, saying no more
            logger.error(  # noqa: TRY400
                "handling request %s failed (%s); it stays pending for a retry", event.id, error
            )
        except Exception as error:  # our own failure: a bug, with its traceback; stays pending
            failure = error
            logger.exception("handling request %s failed; it stays pending for a retry", event.id)
        finally:
            # This handler's own turn, always: whatever else holds the entry's id by now, the
            # session's requests queued behind this one must not wait for ever.
            self._pass_turn(event.session_id, turn, previous)
            if self._turns.get(delivery.entry_id) is turn:
                del self._turns[delivery.entry_id]
            if self._owns(delivery):  # else abandoned: _abandon did this, and the entry's state
                # here may be a new delivery's by now (this worker started again)
                self._leave_queue(event.session_id, delivery.entry_id)
                self._absorbed.discard(delivery.entry_id)
                self._withdrawn.discard(delivery.entry_id)
                self._held.pop(delivery.entry_id, None)
                del self._tasks[delivery.entry_id]
                self._lost.discard(delivery.entry_id)
            self._slot_freed.set()
            if self.hooks:
                await self._call_hooks("after_handle", delivery, failure, every=True)

    def _pass_turn(
        self, session_id: str, turn: asyncio.Future[None], previous: asyncio.Future[None] | None
    ) -> None:
        """The session's next request here may go: at once, or, for a handler that ended before
        its turn came (its entry lost while it was queued, say), once the request ahead of it is
        done. The queue keeps its arrival order: else the next one would go while the session
        still runs here and, merging, take requests still queued ahead of it, which would then
        find themselves merged into a turn not yet answered and be handed back."""
        if previous is not None and not previous.done() and not turn.done():
            previous.add_done_callback(lambda _: self._pass_turn(session_id, turn, None))
            return
        if not turn.done():  # (an abandoned handler's was ended by _abandon)
            turn.set_result(None)  # the session's next request may go
        if self._session_tails.get(session_id) is turn:
            del self._session_tails[session_id]

    async def _process(
        self,
        delivery: Delivery[AgentRequestEvent],
        event: AgentRequestEvent,
        previous: asyncio.Future[None] | None,
        read_at: float,
    ) -> None:
        if self.hooks or delivery.delivery_count > 1:  # steps before the turn takes the read's claim
            try:
                if self.hooks:
                    await self._call_hooks_before_run("on_received", delivery)
                settled = delivery.delivery_count > 1 and await self._settled_redelivery(delivery, event)
            except BaseException:  # cancelled (stopping): the lease claimed with the read goes back too
                await self._give_back_read_claim(delivery)
                raise
            if settled:
                await self._give_back_read_claim(delivery)
                return
        turn = await self._take_turn(delivery, event, previous, read_at)
        if turn is None:
            return
        batch, target, claim = turn
        if claim.lease is not None:  # leased: the usual case, without _claim's coroutine
            lease = claim.lease
        else:
            claimed = await self._claim(event.session_id, batch, target, claim)
            if claimed is None:
                return
            batch, lease = claimed
        try:
            if len(batch) == 1:
                await self._run(batch, target, lease)
            else:  # a merged turn, run in its first request's task: its records carry the turn's ids
                turn_event = batch[-1].event
                with log_context(request_id=turn_event.id, session_id=turn_event.session_id):
                    await self._run(batch, target, lease)
        except BaseException:  # the reply, which releases the lease, may not be written: release it
            with contextlib.suppress(DynamicAgentsError):
                await self.coordinator.release(lease)
            raise

    async def _take_turn(
        self,
        delivery: Delivery[AgentRequestEvent],
        event: AgentRequestEvent,
        previous: asyncio.Future[None] | None,
        read_at: float,
    ) -> tuple[list[Delivery[AgentRequestEvent]], Target, Claim] | None:
        """Route, apply the session policy, wait for the session's earlier requests here, and claim
        the session: what to run, for which target, and the claim; ``None`` when answered already."""
        read_claim = delivery.claim  # made with the read (Redis), if any: used below, or given back
        try:
            target, unrouted = self._route(event)
            if self.hooks:
                await self._call_hooks_before_run("on_routed", delivery, target)
            if target is None:
                await self._answer(delivery, event, None, _error(unrouted))
                return None
            policy = self._policy(event, target)
            if policy in (SessionPolicy.REJECT, SessionPolicy.INTERRUPT) and self._copy_held_here(delivery):
                # a platform's retry of a request handled here: it waits its turn, to find its
                # original answered, neither rejected in its place nor interrupting it
                policy = SessionPolicy.ENQUEUE
            busy_here = previous is not None and not previous.done()
            ours = read_claim is not None and read_claim.lease is not None  # no one else runs the session
            if policy is SessionPolicy.REJECT and (
                busy_here or (not ours and await self._held_by_another(event))
            ):
                await self._reject(delivery, target, read_claim)
                return None
            if policy is SessionPolicy.INTERRUPT and not ours:
                await self._interrupt(delivery, read_claim)
            if busy_here and read_claim is not None:  # the requests queued before it take the lease first
                await self._give_back(read_claim)
                read_claim = None
            # within this worker: one at a time, in arrival order
            if previous is not None and await self._cancelled_while_queued(delivery, target, previous):
                return None
            if delivery.entry_id in self._absorbed:  # a merged turn took it
                await self._hand_back_unanswered(delivery)
                return None
            if self._stopping:
                raise _not_started()
            self._leave_queue(event.session_id, delivery.entry_id)
            batch = [delivery]
            if policy is SessionPolicy.MERGE:
                batch += self._absorb(delivery)
            claim = await self._session_claim(event, batch, read_claim, read_at)
            read_claim = None
            return batch, target, claim
        finally:
            if read_claim is not None:  # not used: answered without a run, or cancelled
                await self._give_back(read_claim)

    async def _cancelled_while_queued(
        self, delivery: Delivery[AgentRequestEvent], target: Target, previous: asyncio.Future[None]
    ) -> bool:
        """Wait for the session's request ahead of this one here. True if this one was cancelled on
        request meanwhile (the cancellation watch cancels this handler for it): then it is answered
        so at once, and the handler still waits, so the requests behind it keep their order."""
        self._awaiting_turn[delivery.event.id] = delivery.entry_id
        try:
            if delivery.entry_id not in self._withdrawn:  # else superseded before it got here
                await asyncio.shield(previous)
        except asyncio.CancelledError:
            handler = asyncio.current_task()
            assert handler is not None
            if delivery.entry_id not in self._withdrawn or handler.uncancel() > 0:
                raise  # stopping, or the entry was lost
        else:
            if delivery.entry_id not in self._withdrawn:
                return False
        finally:
            if self._awaiting_turn.get(delivery.event.id) == delivery.entry_id:
                del self._awaiting_turn[delivery.event.id]
        await self._answer(delivery, delivery.event, target, _cancelled())
        await asyncio.shield(previous)
        return True

    async def _hand_back_unanswered(self, delivery: Delivery[AgentRequestEvent]) -> None:
        """A request merged into a turn that ended without answering it (its lease lost, or the
        worker stopping while the turn waited for its lease): hand it back at once, instead of
        leaving it to ``claim_min_idle``. Only here: the turn does not hand back its merged
        requests itself (each would go back twice, a round trip each)."""
        if self._held.get(delivery.entry_id) is delivery and delivery.entry_id not in self._lost:
            await self._hand_back(delivery)

    async def _hand_back(self, delivery: Delivery[AgentRequestEvent]) -> None:
        """Give the entry back to the group. While stopping, only once this worker reads no more:
        else its own last read could take the entry again (a delivery counted for nothing)."""
        if self._stopping:
            await self._reading_done.wait()
        with contextlib.suppress(DynamicAgentsError):
            if await self.transport.release(delivery):
                self.stats.handed_back += 1

    async def _session_claim(
        self,
        event: AgentRequestEvent,
        batch: list[Delivery[AgentRequestEvent]],
        read_claim: Claim | None,
        read_at: float,
    ) -> Claim:
        """The claim made with the read, while it stands for ``batch``, else (that one given back)
        :meth:`Coordinator.claim`. A busy session may have come free since the read, and a lease
        is only used well within its ttl: its renewals start with the run."""
        if read_claim is not None:
            lease = read_claim.lease
            fresh = lease is None or asyncio.get_running_loop().time() - read_at < lease.ttl / 3
            if len(batch) == 1 and read_claim.status is not ClaimStatus.BUSY and fresh:
                return read_claim
            await self._give_back(read_claim)
        return await self.coordinator.claim(
            event.session_id, [item.event.id for item in batch], self.settings.lease_ttl
        )

    async def _give_back_read_claim(self, delivery: Delivery[AgentRequestEvent]) -> None:
        if delivery.claim is not None:
            await self._give_back(delivery.claim)

    async def _give_back(self, claim: Claim) -> None:
        if claim.lease is not None:
            with contextlib.suppress(DynamicAgentsError):  # else it expires with its ttl
                await self.coordinator.release(claim.lease)

    async def _settled_redelivery(
        self, delivery: Delivery[AgentRequestEvent], event: AgentRequestEvent
    ) -> bool:
        """Whether a redelivery is done with before a run: answered by a run that crashed before
        its ack (then acked), or delivered too often (then dead-lettered). A first delivery is
        checked by the claim, without a round trip of its own (``max_deliveries`` is at least 1)."""
        if await self.coordinator.get_record(event.id) is not None:
            if delivery.entry_id not in self._absorbed:  # else a merged turn here answers or acks it
                await self._ack_duplicate(delivery)
            return True
        if delivery.delivery_count > self.settings.max_deliveries:
            if self._may_hand_back(delivery) and await self.coordinator.holder(event.session_id) is not None:
                # Its session runs (this very request, maybe, on a worker that could not keep its
                # entry fresh, under a lease that outlived claim_min_idle): a dead letter now would
                # be a second answer beside that run's. Handed back for a later look instead.
                with contextlib.suppress(DynamicAgentsError):
                    if await self.transport.release(delivery, delay=self.settings.claim_min_idle):
                        self.stats.handed_back += 1
                return True
            await self._dead_letter(delivery, event)
            return True
        return False

    def _may_hand_back(self, delivery: Delivery[AgentRequestEvent]) -> bool:
        """Whether a request past ``max_deliveries`` whose session is held may be handed back once
        more: for as long as a run of it could still go on (``request_timeout``, in steps of
        ``claim_min_idle``, and one more), not for ever — a session held for ever (a hung run that
        keeps renewing its lease) would keep it coming back."""
        settings = self.settings
        extra = math.ceil(settings.request_timeout / settings.claim_min_idle) + 1
        return delivery.delivery_count <= settings.max_deliveries + extra

    def _route(self, event: AgentRequestEvent) -> tuple[Target | None, str]:
        """The request's target, or ``None`` and why no rule matched."""
        try:
            return self.router.route(event).target, ""
        except NoRouteError as error:
            return None, str(error)

    async def _claim(
        self, session_id: str, batch: list[Delivery[AgentRequestEvent]], target: Target, claim: Claim
    ) -> tuple[list[Delivery[AgentRequestEvent]], Lease] | None:
        """After a ``claim`` that did not lease: take the session's lease for ``batch``, waiting
        while another run holds it (the entries stay held and fresh meanwhile, so waiting never
        counts as a delivery). Requests answered before are acked and left out, cancelled ones
        answered so and left out. ``None`` when nothing is left to run."""
        waited = False
        while True:
            if claim.status is ClaimStatus.LEASED:
                if claim.lease is None:  # a host's own coordinator: no assert, gone under -O
                    raise TransportError(
                        f"{type(self.coordinator).__name__}.claim() returned Claim(status=LEASED) "
                        "without a lease: a LEASED claim carries its Lease"
                    )
                return batch, claim.lease
            if claim.status in _FOUND_BEFORE:
                batch = await self._leave_out(batch, target, claim)
                if not batch:
                    return None
            else:
                if self._stopping:  # each handler hands back its own entry, the merged ones too
                    raise _not_started()
                if not waited:
                    waited = True
                    self.stats.lease_waits += 1
                await asyncio.sleep(self.settings.lease_poll)
            claim = await self.coordinator.claim(
                session_id, [item.event.id for item in batch], self.settings.lease_ttl
            )

    async def _leave_out(
        self, batch: list[Delivery[AgentRequestEvent]], target: Target, claim: Claim
    ) -> list[Delivery[AgentRequestEvent]]:
        """``batch`` without the requests ``claim`` found answered (acked) or cancelled (answered
        so): only those; the others still run."""
        rest = []
        for item in batch:
            if item.event.id not in claim.request_ids:
                rest.append(item)
            elif claim.status is ClaimStatus.ANSWERED:
                await self._ack_duplicate(item)
            else:
                await self._answer(item, item.event, target, _cancelled())
        return rest

    async def _ack_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None:
        self.stats.duplicates += 1
        logger.debug("request %s was answered before: acking the redelivery", delivery.event.id)
        self._let_go(delivery)
        await self.transport.ack(delivery)
        if self.hooks:
            await self._call_hooks("on_duplicate", delivery)

    def _policy(self, event: AgentRequestEvent, target: Target) -> SessionPolicy:
        requested = event.metadata.get("session_policy")
        if requested is not None:
            policy = _POLICIES.get(requested) if isinstance(requested, str) else None
            if policy is not None:
                return policy
            self._unknown_policy(requested)
        if not self.settings.policies:
            return self.settings.session_policy
        return self.settings.policies.get(f"{target.type.value}:{target.id}", self.settings.session_policy)

    def _unknown_policy(self, requested: object) -> None:
        """A policy no worker knows (a typo, another case): the target's applies, and it is logged
        once per value (a few dozen values at most: the requests' text is not to fill the logs)."""
        shown = repr(requested)[:64]
        if shown in self._unknown_policies or len(self._unknown_policies) >= _UNKNOWN_POLICIES_LOGGED:
            return
        self._unknown_policies.add(shown)
        logger.warning(
            "a request asks for session_policy %s, which is none of %s: the target's policy applies "
            "(logged once per value)",
            shown,
            ", ".join(_POLICIES),
        )

    async def _interrupt(self, delivery: Delivery[AgentRequestEvent], read_claim: Claim | None) -> None:
        """Supersede the session's requests queued here ahead of ``delivery`` and cancel its
        running run: here directly, elsewhere through the coordinator (unless that run is the
        request's own: it is a platform's retry of it). Not for a request answered or cancelled
        before (a platform's retry of one answered already): it runs nothing, so it interrupts
        nothing; looked up only when there is something to interrupt."""
        event = delivery.event
        if read_claim is not None and read_claim.status in _FOUND_BEFORE:
            return
        holder = None
        if event.session_id not in self._running:
            holder = await self.coordinator.holder(event.session_id)
            if holder == event.id:
                holder = None
        queue = self._waiting.get(event.session_id, [])
        queued_ahead = delivery.entry_id in queue and queue[0] != delivery.entry_id
        if event.session_id not in self._running and not holder and not queued_ahead:
            return  # the session is free: nothing to interrupt
        if await self._found_before(event, read_claim) is not None:
            return
        self._supersede_queued(event.session_id, delivery.entry_id)
        running = self._running.get(event.session_id)
        if running is not None:
            self._cancel_run(running)
        elif holder:
            await self.coordinator.request_cancel(holder)

    async def _found_before(self, event: AgentRequestEvent, read_claim: Claim | None) -> ClaimStatus | None:
        """``ANSWERED`` if ``event`` was answered before, ``CANCELLED`` if it has a cancellation
        request, as the read's claim found (else looked up now); ``None`` if neither."""
        if read_claim is not None:
            return read_claim.status if read_claim.status in _FOUND_BEFORE else None
        record, cancelled = await asyncio.gather(
            self.coordinator.get_record(event.id), self.coordinator.cancelled([event.id])
        )
        if record is not None:
            return ClaimStatus.ANSWERED
        return ClaimStatus.CANCELLED if cancelled else None

    async def _reject(
        self, delivery: Delivery[AgentRequestEvent], target: Target, read_claim: Claim | None
    ) -> None:
        """Answer ``rejected`` (busy): not a request answered before (acked, as a duplicate) nor
        one cancelled (answered ``cancelled``, as ``AgentClient.cancel`` says)."""
        found = await self._found_before(delivery.event, read_claim)
        if found is ClaimStatus.ANSWERED:
            await self._ack_duplicate(delivery)
            return
        result = (
            _cancelled()
            if found is ClaimStatus.CANCELLED
            else ExecutionResult(ResponseStatus.REJECTED, error_message=self.settings.busy_message)
        )
        await self._answer(delivery, delivery.event, target, result)

    def _copy_held_here(self, delivery: Delivery[AgentRequestEvent]) -> bool:
        """Whether another entry of the same request (a platform's retry: the same id) is handled
        here, running or queued."""
        request_id = delivery.event.id
        return any(
            held.event.id == request_id and held.entry_id != delivery.entry_id for held in self._held.values()
        )

    async def _held_by_another(self, event: AgentRequestEvent) -> bool:
        """Whether the session's lease is held by a run of another request than ``event`` (a run of
        ``event`` itself elsewhere makes it a platform's retry, which waits to find it answered)."""
        holder = await self.coordinator.holder(event.session_id)
        return holder is not None and holder != event.id

    def _leave_queue(self, session_id: str, entry_id: str) -> None:
        queue = self._waiting.get(session_id)
        if queue is not None and entry_id in queue:
            queue.remove(entry_id)
            if not queue:
                del self._waiting[session_id]

    def _absorb(self, taker: Delivery[AgentRequestEvent]) -> list[Delivery[AgentRequestEvent]]:
        """The session's requests queued here behind ``taker``, taken into one merged turn. Not
        those cancelled while queued (their handlers answer them), nor a copy of a request the turn
        has (a platform's retry, the same id): its handler finds it answered when its turn comes;
        merged, the turn would run it twice and answer it twice, the second answer refused."""
        request_ids = {taker.event.id}
        absorbed = []
        for entry_id in self._waiting.pop(taker.event.session_id, []):
            delivery = self._held.get(entry_id)
            if delivery is None or entry_id in self._withdrawn or delivery.event.id in request_ids:
                continue
            request_ids.add(delivery.event.id)
            absorbed.append(delivery)
        self._absorbed.update(d.entry_id for d in absorbed)
        return absorbed

    def _cancel_run(self, request_id: str) -> None:
        request_id = self._merged_into.get(request_id, request_id)  # merged: the turn it runs in
        handler = self._executions.get(request_id)
        if handler is not None and request_id not in self._cancelling:
            self._cancelling.add(request_id)
            handler.cancel()

    async def _cancel_watch_loop(self) -> None:
        """Cancellation requested from any process reaches the run here."""
        while True:
            await asyncio.sleep(self.settings.cancel_poll)
            if not self._executions and not self._awaiting_turn:
                continue
            try:
                cancelled = await self.coordinator.cancelled(
                    [*self._executions, *self._merged_into, *self._awaiting_turn]
                )
            except DynamicAgentsError as error:
                logger.warning("checking cancellations failed: %s", error)
                continue
            except Exception:  # a bug, not Redis trouble: logged, and the loop goes on
                logger.exception("checking cancellations failed")
                continue
            for request_id in cancelled:
                logger.debug("request %s cancelled", request_id)
                self._cancel_run(request_id)
                self._withdraw(request_id)

    def _supersede_queued(self, session_id: str, entry_id: str) -> None:
        """``interrupt``: the newest message wins. The session's requests queued here ahead of
        ``entry_id`` (behind the run it interrupts, not started) are answered ``cancelled`` at
        once, as if cancelled on request; those merged into a turn are left to it."""
        queue = self._waiting.get(session_id, [])
        if entry_id not in queue:
            return  # first in line here: none ahead of it (behind it come newer ones)
        for queued in queue[: queue.index(entry_id)]:
            if queued in self._withdrawn or queued in self._absorbed:
                continue
            self._withdrawn.add(queued)  # noticed on its way to its turn, if not waiting there yet
            delivery = self._held.get(queued)
            task = self._tasks.get(queued)
            if (
                delivery is not None
                and task is not None
                and self._awaiting_turn.get(delivery.event.id) == queued
            ):
                task.cancel()  # waiting for its turn: woken to answer

    def _withdraw(self, request_id: str) -> None:
        """A request cancelled while it waits behind its session's run here: answered at once
        (its handler is woken for it), not when its turn comes."""
        entry_id = self._awaiting_turn.get(request_id)
        if entry_id is None or entry_id in self._absorbed or entry_id in self._withdrawn:
            return  # not waiting, or merged into a turn (cancelling that is _cancel_run's)
        task = self._tasks.get(entry_id)
        if task is not None:
            self._withdrawn.add(entry_id)
            task.cancel()

    async def _run(self, batch: list[Delivery[AgentRequestEvent]], target: Target, lease: Lease) -> None:
        """Run one turn: one request, or (merge) several asked as one with the last one's reply,
        which releases the lease when it is written."""
        delivery = batch[-1]
        event = _merged(batch)
        context = (
            RunContext(
                event,
                target,
                delivery.delivery_count,
                delivery.entry_id,
                stream=delivery.stream,
                delivery=delivery,
            )
            if self.hooks
            else None
        )
        progress = None  # lifecycle events, and streaming, only when someone listens
        if self.settings.events:
            progress = LifecyclePublisher(
                self.events,
                request_id=event.id,
                session_id=event.session_id,
                target=target,
                delta_interval=self.settings.delta_interval,
            )
        # renewed from here until the reply is written (the hooks before and after the run and the
        # merged requests' answers take their time too), not only while the run goes on
        held = self._leases[event.id] = _HeldLease(lease, time.monotonic())
        try:
            if progress is not None:
                await progress.accepted()
            if self.hooks:
                await self._call_hooks_before_run("before_execute", context)
            if progress is not None:
                await progress.started(delivery.delivery_count)
            try:
                result = await self._execute_under(
                    target, event, progress.delta if progress else None, merged=batch[:-1]
                )
            finally:
                if progress is not None:  # also when cut short: nothing left waiting on a delta timer
                    await progress.flush()
            self._check_not_lost(batch)
            if self.hooks:
                await self._call_hooks("after_execute", context, result)
            if len(batch) > 1:  # the merged requests are answered first: only while the lease is ours
                await self._answer_merged(batch, target, result, lease)
            try:  # written only while the lease is held, and released with the reply
                completion = await self._answer(
                    delivery, delivery.event, target, result, lease=lease, progress=progress
                )
            except LeaseLostError:
                self._lease_lost_during_run(lease)
                raise RunLostError(event.id, event.session_id) from None
        finally:  # released with the reply (or lost): no longer renewed
            if self._leases.get(event.id) is held:  # else abandoned: _abandon did this
                del self._leases[event.id]
                self._leases_lost.discard(event.id)
        if self.hooks:
            await self._call_hooks("after_complete", context, completion)

    async def _answer_merged(
        self, batch: list[Delivery[AgentRequestEvent]], target: Target, result: ExecutionResult, lease: Lease
    ) -> None:
        """Answer the requests merged into a turn (all but its last), with the turn's status and
        error (its content goes with the last), while the lease is still the turn's."""
        last = batch[-1].event
        if not await self._still_ours(lease):
            raise RunLostError(last.id, last.session_id)
        for earlier in batch[:-1]:
            if earlier.entry_id in self._lost:  # taken over or deleted while it ran: not ours
                continue
            merged = ExecutionResult(
                result.status, error_message=result.error_message, metadata={"merged_into": last.id}
            )
            with log_context(request_id=earlier.event.id, session_id=earlier.event.session_id):
                await self._answer(earlier, earlier.event, target, merged)

    def _check_not_lost(self, batch: list[Delivery[AgentRequestEvent]]) -> None:
        """After the run: its entry taken over or deleted while it ran, and the executor swallowed
        the cancellation that said so? Then nothing is published, as for a run that let it through
        (the lease is still ours: the reply would be written beside another worker's answer or
        dead letter)."""
        if batch[0].entry_id in self._lost or batch[-1].entry_id in self._lost:
            raise asyncio.CancelledError("its entry was lost during the run: publishing nothing")

    async def _execute_under(
        self,
        target: Target,
        event: AgentRequestEvent,
        on_delta: Any,
        *,
        merged: Sequence[Delivery[AgentRequestEvent]] = (),
    ) -> ExecutionResult:
        """Execute in this handler's own task (no task of its own): cancelling the handler while it
        awaits the executor is how a cancellation request or a lost lease reaches the run. The
        requests ``merged`` into the turn cancel it too."""
        handler = asyncio.current_task()
        assert handler is not None
        self._executions[event.id] = handler
        for item in merged:
            self._merged_into[item.event.id] = event.id
        self._running[event.session_id] = event.id
        try:
            try:
                # object: an executor outside the type checker's view may return anything
                outcome: object = await self.executor.execute(
                    target, event, timeout=self.settings.request_timeout, on_delta=on_delta
                )
            except Exception as error:  # an unknown target, a broken tool registry…: an error reply
                outcome = _error(f"{type(error).__name__}: {error}")
            if isinstance(outcome, ExecutionResult):
                result = outcome
            else:  # a broken executor: the same on every delivery, so an error reply, not a retry
                result = _error(f"the executor returned {type(outcome).__name__}, not an ExecutionResult")
        except asyncio.CancelledError:
            if self._executions.get(event.id) is not handler:
                raise  # abandoned by stop(): it ends so, publishing nothing
            if event.id in self._leases_lost:
                handler.uncancel()
                raise RunLostError(event.id, event.session_id) from None  # publish nothing
            if event.id not in self._cancelling or handler.uncancel() > 0:
                raise  # stopping, or the entry was lost (not only a cancellation request)
            return _cancelled()  # cancelled on request: answer so
        else:
            if self._executions.get(event.id) is handler and event.id in self._cancelling:
                # the executor swallowed the cancellation: count it done
                handler.uncancel()
            return result
        finally:
            if self._executions.get(event.id) is handler:  # else abandoned: _abandon did this
                self._end_execution(event, merged)

    def _end_execution(self, event: AgentRequestEvent, merged: Sequence[Delivery[AgentRequestEvent]]) -> None:
        for item in merged:
            self._merged_into.pop(item.event.id, None)
        del self._executions[event.id]
        self._cancelling.discard(event.id)
        if self._running.get(event.session_id) == event.id:
            del self._running[event.session_id]

    async def _still_ours(self, lease: Lease) -> bool:
        """Whether a merged turn may answer its merged requests (answered without the lease check
        ``complete`` makes for the last one). A renewal that fails (Redis trouble) counts as ours:
        answering cannot answer twice (``complete`` writes nothing for a request with a record, and
        the last one's reply still needs the lease), and with Redis away those writes fail too and
        the entries stay pending; counting it lost instead would throw a finished run away on a
        blip, to be run again (its tools' side effects too) on redelivery."""
        try:
            still_ours = await self.coordinator.renew(lease)
        except DynamicAgentsError as error:
            logger.warning("renewing the lease after the run failed (%s); answering anyway", error)
            return True
        if not still_ours:
            self._lease_lost_during_run(lease)
        return still_ours

    def _lease_lost_during_run(self, lease: Lease) -> None:
        """Stalled past the lease: someone else may run the request, so nothing is published."""
        logger.warning("lease of session %s lost during the run; publishing nothing", lease.session_id)
        self._count_lost(asyncio.current_task())

    async def _keep_leases_loop(self) -> None:
        """Renew the lease of every run in flight each third of the lease TTL; a run whose lease
        is lost is cancelled (and publishes nothing)."""
        while True:
            await asyncio.sleep(self.settings.lease_ttl / 3)
            if not self._leases:
                continue
            held = list(self._leases.items())
            results = await asyncio.gather(
                *(self._renew(rid, lease) for rid, lease in held), return_exceptions=True
            )
            for (request_id, _), result in zip(held, results, strict=True):
                if isinstance(result, Exception):  # a bug, not Redis trouble: keep renewing the others
                    logger.error("renewing the lease of request %s failed", request_id, exc_info=result)

    async def _renew(self, request_id: str, held: _HeldLease) -> None:
        lease = held.lease
        try:
            renewed = await self.coordinator.renew(lease)
        except DynamicAgentsError as error:  # Redis trouble: the lease stands until its TTL runs out
            logger.warning("renewing the lease of %s failed: %s", lease.session_id, error)
            renewed = time.monotonic() - held.renewed_at < self.settings.lease_ttl
        else:
            if renewed:
                held.renewed_at = time.monotonic()
        if not renewed and self._leases.get(request_id) is held and request_id not in self._leases_lost:
            handler = self._executions.get(request_id)
            if handler is None:  # run already: its reply, refused without the lease, says so
                return
            logger.warning("lease of session %s lost; cancelling its run", lease.session_id)
            self._leases_lost.add(request_id)
            self._count_lost(handler)
            handler.cancel()

    # -- answering ----------------------------------------------------------------------------------

    def _reply(self, delivery: Delivery[AgentRequestEvent], response: AgentResponseEvent) -> Reply:
        """To the request's reply stream; a FastStream RPC caller (``reply_to`` header, no reply
        stream) gets it by Redis ``PUBLISH`` with its own correlation id."""
        event, message = delivery.event, delivery.message
        rpc_channel = message.reply_to if message is not None and event.reply_stream is None else None
        if rpc_channel is None:  # the usual case, positional: a call with keywords builds a dict
            return Reply(response, event.reply_stream, self.settings.reply_maxlen, self.settings.reply_expire)
        correlation_id = message.correlation_id if message is not None else None
        if correlation_id is not None and not fits_in_header(correlation_id):
            # FastStream sends one (its reader could not read it back): the caller waits on its
            # channel, not on the id, so it gets a reply that carries the response's own id
            logger.warning(
                "request %s: its correlation_id %s is not ASCII or over 65535 bytes, which no "
                "envelope header can carry; the reply to %r carries the response id instead",
                event.id,
                shown(correlation_id),
                rpc_channel,
            )
            correlation_id = None
        return Reply(
            response,
            event.reply_stream,
            maxlen=self.settings.reply_maxlen,
            expire=self.settings.reply_expire,
            channel=rpc_channel,
            correlation_id=correlation_id,
        )

    async def _answer(
        self,
        delivery: Delivery[AgentRequestEvent],
        event: AgentRequestEvent,
        target: Target | None,
        result: ExecutionResult,
        *,
        lease: Lease | None = None,
        progress: LifecyclePublisher | None = None,
    ) -> Completion:
        """Write ``result`` as the reply; with ``progress``, the run's end goes to the events
        stream once the reply is written, as written (nothing, if it was not)."""
        try:
            completion = await self._complete(delivery, event, target, result, lease)
        except (EventTooLargeError, ValidationError) as error:  # before anything is written: nothing was
            # The same on every delivery: an error reply now (under the same lease), not a retry.
            problem = invalid_fields(error, "reply") if isinstance(error, ValidationError) else str(error)
            logger.warning("the reply to %s cannot be sent (%s); answering with an error", event.id, problem)
            result = _error(f"the reply could not be sent: {problem}")
            completion = await self._complete(delivery, event, target, result, lease, bare_if_too_large=True)
        if progress is not None and completion.created:
            await progress.finished(result)
        if not completion.created:
            self.stats.duplicates += 1
        elif result.ok:
            self.stats.completed += 1
        else:
            self.stats.failed += 1
        logger.debug("answered %s: %s", event.id, result.status)
        if self.hooks:
            await self._call_hooks("after_respond", delivery, result, completion)
        return completion

    async def _complete(
        self,
        delivery: Delivery[AgentRequestEvent],
        event: AgentRequestEvent,
        target: Target | None,
        result: ExecutionResult,
        lease: Lease | None,
        *,
        bare_if_too_large: bool = False,
    ) -> Completion:
        """Write ``result`` as the reply (with the headers hooks add) and ack the entry; with
        ``bare_if_too_large`` (an error reply), as :meth:`_written_bare_if_too_large` writes it."""
        reply = self._reply(delivery, result.to_response(event, target))
        if bare_if_too_large:
            ttl = self.settings.record_ttl
            complete = partial(self.transport.complete, delivery, record_ttl=ttl, lease=lease)
            return await self._written_bare_if_too_large(delivery, reply, complete)
        if self.hooks:
            reply = await self._reply_with_hook_headers(delivery, reply)
        self._let_go(delivery)
        return await self.transport.complete(
            delivery, reply, record_ttl=self.settings.record_ttl, lease=lease
        )

    async def _written_bare_if_too_large(
        self, delivery: Delivery[AgentRequestEvent], reply: Reply, write: Callable[[Reply], Awaitable[T]]
    ) -> T:
        """``write`` an error reply with the headers hooks add; refused as too large, without them:
        they are why (an error reply is short), and sent with them again at every claim, the
        request would never be answered."""
        bare = reply
        if self.hooks:
            reply = await self._reply_with_hook_headers(delivery, reply)
        self._let_go(delivery)
        try:
            return await write(reply)
        except EventTooLargeError as error:
            if reply is bare:
                raise
            logger.warning(
                "the error reply to %s cannot be sent (%s); sending it without the before_respond "
                "hooks' headers",
                delivery.event.id,
                error,
            )
            return await write(bare)

    def _let_go(self, delivery: Delivery[AgentRequestEvent]) -> None:
        """Stop keeping an entry fresh just before the call that acks it: while that call runs, the
        keep-fresh check would see the entry acked and take it for lost. If the call fails, the
        entry stays pending and is reclaimed after ``claim_min_idle``, as after any failure.
        (Only its own: an abandoned run's late answer finds a new delivery of the entry there.)"""
        if self._held.get(delivery.entry_id) is delivery:
            del self._held[delivery.entry_id]

    async def _reply_with_hook_headers(self, delivery: Delivery[AgentRequestEvent], reply: Reply) -> Reply:
        """The reply with the envelope headers hooks add (trace context, for one)."""
        headers = dict(reply.headers)
        await self._call_hooks("before_respond", delivery, reply.event, headers)
        return replace(reply, headers=_carried(headers, delivery.event.id))

    async def _dead_letter(self, delivery: Delivery[AgentRequestEvent], event: AgentRequestEvent) -> None:
        reason = f"delivered {delivery.delivery_count} times (max_deliveries={self.settings.max_deliveries})"
        response = _error("the request could not be processed; it was set aside for an operator").to_response(
            event
        )
        ttl = self.settings.record_ttl
        dead_letter = partial(self.transport.dead_letter, delivery, reason, record_ttl=ttl)
        reply = self._reply(delivery, response)
        written = await self._written_bare_if_too_large(delivery, reply, dead_letter)
        if written:
            self.stats.dead_lettered += 1
            logger.warning("request %s dead-lettered: %s", event.id, reason)
        if self.hooks:
            await self._call_hooks("on_dead_letter", delivery, written)

    async def _call_hooks_before_run(self, name: str, *args: Any) -> None:
        """The hooks on the way to a run. One that caught the handler's cancellation (``stop()``,
        its lease lost) and went on must not let the request go on to its run: the cancellation
        still pending (``Task.cancelling()``) is raised here, as if the hook had let it through."""
        await self._call_hooks(name, *args)
        handler = asyncio.current_task()
        if handler is not None and handler.cancelling():
            raise asyncio.CancelledError(f"cancelled during the {name} hooks")

    async def _call_hooks(self, name: str, *args: Any, every: bool = False) -> None:
        """Call hook method ``name`` of each hook; a failing one is logged. ``every`` (the calls
        that end a hook's state: ``on_stop``, ``after_handle``): this task cancelled during one
        hook's call still calls the hooks after it, and the cancellation goes on after the last
        (else a span would stay open, an entry in flight, a sampler running, for good)."""
        task = asyncio.current_task()
        cancelled: asyncio.CancelledError | None = None
        for hook in self.hooks:
            method = getattr(hook, name, None)
            if method is None:
                continue
            # Cancellations of this task requested before the call: called while it is being
            # cancelled already (on_stop, after_handle of a cancelled run), only a new one is its
            # cancellation; one of these would skip the later hooks (a sampler left running).
            cancelling = task.cancelling() if task is not None else 0
            try:
                await method(*args)
            except Exception:
                logger.exception("hook %s.%s failed", type(hook).__name__, name)
            except asyncio.CancelledError as error:
                if task is None or task.cancelling() > cancelling:
                    if not every:
                        raise  # this task's cancellation (a stop, a lost entry), which goes on
                    cancelled = error  # delivered once: the later hooks' awaits go on
                    continue
                # the hook's own (it awaited something its owner cancelled): a failing hook, which
                # must not pass for a cancellation (the request handed back on each delivery)
                logger.exception("hook %s.%s failed", type(hook).__name__, name)
        if cancelled is not None:
            raise cancelled


async def _after_handlers_send() -> None:
    """Two event-loop iterations: the handlers of a read start in the first and queue their
    claims, which the auto-pipeline writes in the second. Only then is the next read sent, whose
    command would otherwise put its CPU time on every one of those claims' paths."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _carried(headers: dict[str, str], request_id: str) -> dict[str, str]:
    """``headers``, as ``before_respond`` hooks left them, without those no envelope can carry: one
    the codec refuses failed every write of the reply, and of its dead letter, so the request was
    never answered. A failing hook never fails the run: those are left out, logged (by name only:
    a value may be a credential)."""
    for key, value in list(headers.items()):
        why = _uncarried(key, value)
        if why is None:
            continue
        logger.error(
            "a before_respond hook set reply header %s, which no envelope can carry (%s): the reply "
            "to %s is written without it",
            shown(key),
            why,
            request_id,
        )
        del headers[key]
    return headers


def _uncarried(key: object, value: object) -> str | None:
    """Why an envelope cannot carry header ``key`` with ``value``, or ``None`` if it can."""
    if not isinstance(key, str) or not isinstance(value, str):
        return f"a header's name and value are strings, got {a_type(key)} and {a_type(value)}"
    if key in RESERVED_HEADERS:
        return "the codec sets it"
    if not fits_in_header(key) or not fits_in_header(value):
        return "its name or value is not ASCII or is over 65535 bytes"
    return None


def _error(message: str) -> ExecutionResult:
    return ExecutionResult(ResponseStatus.ERROR, error_message=redact_text(message))


def _not_started() -> asyncio.CancelledError:
    """Stopping: a request that has not started (queued behind its session's run, or waiting for
    its lease) is handed back like a cancelled one, for another worker."""
    return asyncio.CancelledError("the worker is stopping: handed back before it started")


def _cancelled() -> ExecutionResult:
    return ExecutionResult(ResponseStatus.CANCELLED, error_message="cancelled on request")


def _merged(batch: list[Delivery[AgentRequestEvent]]) -> AgentRequestEvent:
    """The request a merged turn runs: the last one, with every message's content and attachments."""
    last = batch[-1].event
    if len(batch) == 1:
        return last
    return last.model_copy(
        update={
            "content": "\n\n".join(d.event.content for d in batch),
            "attachments": [a for d in batch for a in d.event.attachments],
        }
    )
