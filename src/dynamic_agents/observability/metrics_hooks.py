"""``MetricsHooks``: the ``dynamic_agents.worker.*`` and ``dynamic_agents.llm.*`` metrics recorded
through the worker's hooks (names in :data:`~dynamic_agents.observability.metrics.METRICS`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dynamic_agents._logging import get_logger
from dynamic_agents._tasks import cancel_and_wait
from dynamic_agents._validation import check_count, check_seconds, shown
from dynamic_agents.events import AgentRequestEvent, Target
from dynamic_agents.exceptions import ConfigurationError, DynamicAgentsError
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.observability.metrics import MetricsRecorder, Observation
from dynamic_agents.observability.outcomes import DeliveryKey, Outcome, delivery_key, target_name
from dynamic_agents.transports import Completion, Delivery, InMemoryTransport
from dynamic_agents.worker.hooks import BaseHooks, RunContext

if TYPE_CHECKING:
    from dynamic_agents.worker import AgentWorker

__all__ = ["MetricsHooks"]

logger = get_logger("observability")

_STREAM = "messaging.destination.name"
OTHER_TARGET: Final = "other"
"""The ``target`` label of targets past :attr:`MetricsHooks.max_targets`."""


@dataclass(slots=True)
class _Handling:
    """One entry being handled: when it arrived, where it went, whether its outcome is counted."""

    stream: str
    received: float
    target: str = ""
    routed: bool = True
    counted: bool = False
    execution_started: float | None = None
    in_flight: bool = False  # added to in_flight (a recorder may fail before it is)


class MetricsHooks(BaseHooks):
    """Worker hooks recording the ``dynamic_agents.worker.*`` and ``dynamic_agents.llm.*`` metrics.

    The pending count is sampled every ``sample_every`` seconds while the worker runs (and by
    :meth:`sample`), reading at most ``pending_limit`` entries; once the last worker of a stream
    and group stops, the gauge no longer reports them. Entries that did not decode (dead-lettered
    by the transport, before any hook) are counted from the worker's stats at each sample and
    when it stops.

    A request may name its target (``agent_id``, …), so the ``target`` label is bounded: the
    targets of the workers' routers (rules and defaults, from ``router.targets()`` where it has
    one) always have theirs, and other targets get one until ``max_targets`` labels are in use;
    later ones are counted as ``"other"``.
    """

    def __init__(
        self,
        recorder: MetricsRecorder,
        *,
        sample_every: float = 15.0,
        pending_limit: int = 10_000,
        max_targets: int = 100,
    ) -> None:
        # A recorder of the wrong type failed at every hook call (logged, nothing recorded)
        if not all(callable(getattr(recorder, method, None)) for method in ("add", "record", "observe")):
            raise ConfigurationError(
                "recorder must be a MetricsRecorder (OpenTelemetryMetrics(meter_provider), or an "
                f"object with add, record and observe), got {shown(recorder)}"
            )
        self.recorder = recorder
        self.sample_every = check_seconds("sample_every", sample_every)
        self.pending_limit = check_count("pending_limit", pending_limit)
        self.max_targets = check_count("max_targets", max_targets)
        self._targets: set[str] = set()
        self._handling: dict[DeliveryKey, _Handling] = {}  # by delivery
        # By stream and group. Replaced, never changed in place: the meter's reader iterates it
        # on its own thread (a dict changed under an iteration raises).
        self._pending: dict[tuple[str, str], int] = {}
        self._samplers: dict[int, asyncio.Task[None]] = {}
        self._running: dict[int, tuple[str, str]] = {}  # each started worker's stream and group
        self._undecodable: dict[int, int] = {}  # each started worker's stats.undecodable, counted
        # The clock of each started worker's in-memory transport (a ManualClock, say), whose time
        # its entry ids hold, by the stream, group and consumer of its deliveries
        self._clocks: dict[tuple[str, str, str], Callable[[], float]] = {}
        self._observing = False

    def __repr__(self) -> str:
        return f"MetricsHooks({self.recorder!r}, in_flight={len(self._handling)})"

    # -- pending entries, sampled -----------------------------------------------------------------

    async def on_start(self, worker: AgentWorker) -> None:
        targets = getattr(worker.router, "targets", None)  # a host's own router may have route() alone
        if callable(targets):
            self._targets.update(target_name(target) for target in targets())
        self._running[id(worker)] = (worker.stream, worker.settings.group)
        if isinstance(worker.transport, InMemoryTransport):  # Redis's ids are its server's time
            key = (worker.stream, worker.settings.group, worker.settings.consumer)
            self._clocks[key] = worker.transport.clock.time
        self._undecodable[id(worker)] = worker.stats.undecodable  # an earlier run's were counted then
        self._samplers[id(worker)] = asyncio.get_running_loop().create_task(
            self._sample_loop(worker), name="sampling worker metrics"
        )
        if not self._observing:  # last: a recorder that cannot observe (logged) still gets the rest
            self._observing = True
            self.recorder.observe("dynamic_agents.worker.queue.pending", self._read_pending)

    async def on_stop(self, worker: AgentWorker) -> None:
        sampler = self._samplers.pop(id(worker), None)
        try:
            if sampler is not None:
                await cancel_and_wait(sampler)  # cancelled meanwhile: the worker still goes below
        finally:
            try:
                self._count_undecodable(worker)  # a recorder's failure is the worker's to log
            finally:
                self._undecodable.pop(id(worker), None)
                self._clocks.pop((worker.stream, worker.settings.group, worker.settings.consumer), None)
                # Its last count would be reported for good, however stale: the gauge drops the
                # group once no worker of this hook samples it (another of the group may still run).
                key = self._running.pop(id(worker), None)
                if key is not None and key not in self._running.values():
                    self._pending = {kept: n for kept, n in self._pending.items() if kept != key}
                self._end_abandoned(worker)

    def _end_abandoned(self, worker: AgentWorker) -> None:
        """The entries of a stopped worker still kept: runs it abandoned (still going after their
        cancellation; their entries run again elsewhere), whose handlers' ``after_handle`` comes
        late, if ever (a run stuck in a thread). Counted as interrupted, no longer in flight."""
        consumer = (worker.stream, worker.settings.group, worker.settings.consumer)
        abandoned = [self._handling.pop(key) for key in list(self._handling) if key[:3] == consumer]
        for handling in abandoned:  # out of the hooks first: a recorder's failure leaves none kept
            try:
                self._count_handling(handling, Outcome.INTERRUPTED)
            finally:
                if handling.in_flight:
                    self.recorder.add("dynamic_agents.worker.in_flight", -1, {_STREAM: handling.stream})

    async def sample(self, worker: AgentWorker) -> int:
        """Read the worker's pending count now (what the gauge reports until the next sample).

        The count is kept for the gauge only while a worker of its stream and group runs with
        these hooks: once none does, nothing would sample it again and it would stay for good.
        """
        key = (worker.stream, worker.settings.group)
        pending = await worker.transport.pending(*key, count=self.pending_limit)
        if key in self._running.values():  # checked after the read: it may have stopped meanwhile
            self._pending = {**self._pending, key: len(pending)}
        return len(pending)

    def _count_undecodable(self, worker: AgentWorker) -> None:
        """Entries that did not decode reach no hook (the transport dead-letters them as it reads):
        the worker's count of them since the last look goes to the counter."""
        counted = self._undecodable.get(id(worker))
        if counted is not None and worker.stats.undecodable > counted:
            self.recorder.add(
                "dynamic_agents.worker.undecodable",
                worker.stats.undecodable - counted,
                {_STREAM: worker.stream},
            )
            self._undecodable[id(worker)] = worker.stats.undecodable

    async def _sample_loop(self, worker: AgentWorker) -> None:
        # Each failure logged, and the next sample taken: the loop ending would leave both
        # metrics unsampled for the rest of the run, unsaid (and fail on_stop, which awaits it)
        while True:
            try:
                self._count_undecodable(worker)
            except Exception:  # the recorder's (another library's) own failure
                logger.exception("counting the undecodable entries of %r failed", worker.stream)
            try:
                await self.sample(worker)
            except DynamicAgentsError as error:
                logger.warning("sampling the pending entries of %r failed: %s", worker.stream, error)
            except Exception:
                logger.exception("sampling the pending entries of %r failed", worker.stream)
            await asyncio.sleep(self.sample_every)

    def _read_pending(self) -> list[Observation]:
        return [
            (float(count), {_STREAM: stream, "messaging.consumer.group.name": group})
            for (stream, group), count in self._pending.items()
        ]

    # -- each entry -------------------------------------------------------------------------------

    def _of(self, context: RunContext) -> _Handling | None:
        return self._handling.get(delivery_key(context.delivery)) if context.delivery is not None else None

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
        stream = {_STREAM: delivery.stream}
        self._handling[delivery_key(delivery)] = handling = _Handling(delivery.stream, time.monotonic())
        self.recorder.add("dynamic_agents.worker.requests", 1, stream)
        self.recorder.add("dynamic_agents.worker.in_flight", 1, stream)
        handling.in_flight = True
        if delivery.delivery_count > 1:
            self.recorder.add("dynamic_agents.worker.redeliveries", 1, stream)
        else:
            clock = self._clocks.get((delivery.stream, delivery.group, delivery.consumer), time.time)
            if (lag := _queue_lag(delivery.entry_id, clock())) is not None:
                self.recorder.record("dynamic_agents.worker.queue.lag", lag, stream)

    async def on_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None:
        self._count(delivery, Outcome.DUPLICATE)

    async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
        handling = self._handling.get(delivery_key(delivery))
        if handling is not None:
            handling.target = self._label(target)
            handling.routed = target is not None

    async def before_execute(self, context: RunContext) -> None:
        handling = self._of(context)
        if handling is not None:
            handling.execution_started = time.monotonic()

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        handling = self._of(context)
        target = handling.target if handling is not None else self._label(context.target)
        if handling is not None and handling.execution_started is not None:
            self.recorder.record(
                "dynamic_agents.worker.execution.duration",
                time.monotonic() - handling.execution_started,
                {"status": str(result.status), "target": target},
            )
        if result.tokens is not None:
            for kind, count in (
                ("input", result.tokens.input_tokens),
                ("output", result.tokens.output_tokens),
            ):
                if count:
                    self.recorder.add(
                        "dynamic_agents.llm.tokens", count, {"gen_ai.token.type": kind, "target": target}
                    )
        if result.cost:
            self.recorder.add("dynamic_agents.llm.cost", result.cost, {"target": target})

    async def after_respond(
        self, delivery: Delivery[AgentRequestEvent], result: ExecutionResult, completion: Completion
    ) -> None:
        handling = self._handling.get(delivery_key(delivery))
        routed = handling.routed if handling is not None else True
        self._count(delivery, Outcome.of_answer(result, completion, routed=routed))

    async def on_dead_letter(self, delivery: Delivery[AgentRequestEvent], written: bool) -> None:
        if written:
            self.recorder.add("dynamic_agents.worker.dead_letters", 1, {_STREAM: delivery.stream})
            self._count(delivery, Outcome.DEAD_LETTERED)

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        # Ended without an answer of this worker's and without an error: handed back, the entry
        # taken over by another consumer (before its dead letter, say) or its merged turn lost.
        try:
            self._count(delivery, Outcome.INTERRUPTED if error is None else Outcome.of_error(error))
        finally:  # a recorder's failure (logged by the worker) must not keep the entry for good
            handling = self._handling.pop(delivery_key(delivery), None)
            if handling is not None and handling.in_flight:
                self.recorder.add("dynamic_agents.worker.in_flight", -1, {_STREAM: handling.stream})

    def _label(self, target: Target | None) -> str:
        """The target's ``target`` label: its name, or ``"other"`` once ``max_targets`` are used."""
        name = target_name(target)
        if name in self._targets or not name:
            return name
        if len(self._targets) >= self.max_targets:
            return OTHER_TARGET
        self._targets.add(name)
        return name

    def _count(self, delivery: Delivery[AgentRequestEvent], outcome: Outcome) -> None:
        """Count an entry's outcome once (its duration with it)."""
        self._count_handling(self._handling.get(delivery_key(delivery)), outcome)

    def _count_handling(self, handling: _Handling | None, outcome: Outcome) -> None:
        if handling is None or handling.counted:
            return
        handling.counted = True
        attributes = {"outcome": outcome.value, "target": handling.target}
        self.recorder.add("dynamic_agents.worker.outcomes", 1, attributes)
        self.recorder.record(
            "dynamic_agents.worker.duration", time.monotonic() - handling.received, attributes
        )


def _queue_lag(entry_id: str, now: float) -> float | None:
    """Seconds from the entry's addition, which its id tells (``<milliseconds>-<sequence>``), to
    ``now`` (on the clock the id was made by)."""
    millis, _, _ = entry_id.partition("-")
    if not millis.isdigit():
        return None
    return max(0.0, now - int(millis) / 1000)
