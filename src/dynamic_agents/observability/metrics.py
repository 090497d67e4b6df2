"""Metrics: what a worker, its secrets and its LLM calls count, through any metrics library.

:class:`MetricsHooks` turns the worker's hooks into measurements and hands them to a
:class:`MetricsRecorder` by name; :data:`METRICS` documents every name, instrument, unit and
attribute. :class:`OpenTelemetryMetrics` is the recorder for an OpenTelemetry ``MeterProvider``
(extra ``otel``); another library needs only the three methods of the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Protocol

from dynamic_agents._logging import get_logger
from dynamic_agents._version import __version__
from dynamic_agents.events import AgentRequestEvent, Target
from dynamic_agents.exceptions import ConfigurationError, DynamicAgentsError, MissingDependencyError
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.observability.outcomes import Outcome, target_name
from dynamic_agents.secrets import SecretsManager
from dynamic_agents.transports import Completion, Delivery
from dynamic_agents.worker.hooks import BaseHooks, RunContext

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, MeterProvider, UpDownCounter

    from dynamic_agents.worker import AgentWorker

__all__ = [
    "METRICS",
    "InstrumentKind",
    "MetricSpec",
    "MetricsHooks",
    "MetricsRecorder",
    "OpenTelemetryMetrics",
    "observe_secrets",
]

logger = get_logger("observability")

Attributes = Mapping[str, str]
Observation = tuple[float, Attributes]
"""A value read by an observable instrument, with its attributes."""


class InstrumentKind(StrEnum):
    COUNTER = "counter"
    UP_DOWN_COUNTER = "up_down_counter"
    HISTOGRAM = "histogram"
    OBSERVABLE_COUNTER = "observable_counter"
    OBSERVABLE_GAUGE = "observable_gauge"


SECONDS_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its instrument, unit (UCUM), meaning and the attributes it carries."""

    name: str
    kind: InstrumentKind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = field(default=None)


_STREAM = "messaging.destination.name"
_SPECS = (
    MetricSpec(
        "dynamic_agents.worker.requests",
        InstrumentKind.COUNTER,
        "{request}",
        "Request entries received (redeliveries included).",
        (_STREAM,),
    ),
    MetricSpec(
        "dynamic_agents.worker.outcomes",
        InstrumentKind.COUNTER,
        "{request}",
        "Entries handled, by how the handling ended (see Outcome).",
        ("outcome", "target"),
    ),
    MetricSpec(
        "dynamic_agents.worker.duration",
        InstrumentKind.HISTOGRAM,
        "s",
        "From an entry's receipt to its answer (or its end), by outcome.",
        ("outcome", "target"),
        SECONDS_BUCKETS,
    ),
    MetricSpec(
        "dynamic_agents.worker.execution.duration",
        InstrumentKind.HISTOGRAM,
        "s",
        "Time spent running the agent, team or workflow, by result status.",
        ("status", "target"),
        SECONDS_BUCKETS,
    ),
    MetricSpec(
        "dynamic_agents.worker.in_flight",
        InstrumentKind.UP_DOWN_COUNTER,
        "{request}",
        "Entries being handled now (waiting for their session included).",
        (_STREAM,),
    ),
    MetricSpec(
        "dynamic_agents.worker.queue.lag",
        InstrumentKind.HISTOGRAM,
        "s",
        "Time an entry waited in the stream before its first delivery (from its entry id).",
        (_STREAM,),
        SECONDS_BUCKETS,
    ),
    MetricSpec(
        "dynamic_agents.worker.queue.pending",
        InstrumentKind.OBSERVABLE_GAUGE,
        "{entry}",
        "Entries delivered in the worker's group and not yet acked (sampled; capped).",
        (_STREAM, "messaging.consumer.group.name"),
    ),
    MetricSpec(
        "dynamic_agents.worker.redeliveries",
        InstrumentKind.COUNTER,
        "{delivery}",
        "Entries received again (delivery count above one).",
        (_STREAM,),
    ),
    MetricSpec(
        "dynamic_agents.worker.dead_letters",
        InstrumentKind.COUNTER,
        "{entry}",
        "Entries set aside on the dead-letter stream after max_deliveries.",
        (_STREAM,),
    ),
    MetricSpec(
        "dynamic_agents.llm.tokens",
        InstrumentKind.COUNTER,
        "{token}",
        "Tokens the runs used, by type (input / output).",
        ("gen_ai.token.type", "target"),
    ),
    MetricSpec(
        "dynamic_agents.llm.cost",
        InstrumentKind.COUNTER,
        "USD",
        "What the runs' LLM calls cost, as litellm prices them.",
        ("target",),
    ),
    MetricSpec(
        "dynamic_agents.secrets.cache.hits",
        InstrumentKind.OBSERVABLE_COUNTER,
        "{lookup}",
        "Secret lookups answered from the cache.",
    ),
    MetricSpec(
        "dynamic_agents.secrets.cache.misses",
        InstrumentKind.OBSERVABLE_COUNTER,
        "{lookup}",
        "Secret lookups that had to fetch.",
    ),
    MetricSpec(
        "dynamic_agents.secrets.cache.stale_served",
        InstrumentKind.OBSERVABLE_COUNTER,
        "{lookup}",
        "Lookups answered with a stale value because the sources failed.",
    ),
)

METRICS: Final[Mapping[str, MetricSpec]] = {spec.name: spec for spec in _SPECS}
"""Every metric the library records, by name."""


class MetricsRecorder(Protocol):
    """Where measurements go. ``name`` is a key of :data:`METRICS`, whose spec says the instrument."""

    def add(self, name: str, value: float, attributes: Attributes) -> None:
        """Add to a counter or up-down counter."""

    def record(self, name: str, value: float, attributes: Attributes) -> None:
        """Record a histogram value."""

    def observe(self, name: str, read: Callable[[], Iterable[Observation]]) -> None:
        """Register ``read`` as the callback of an observable instrument (called at collection)."""


@dataclass(slots=True)
class _Handling:
    """One entry being handled: when it arrived, where it went, whether its outcome is counted."""

    stream: str
    received: float
    target: str = ""
    routed: bool = True
    counted: bool = False
    execution_started: float | None = None


class MetricsHooks(BaseHooks):
    """Worker hooks recording the ``dynamic_agents.worker.*`` and ``dynamic_agents.llm.*`` metrics.

    The pending count is sampled every ``sample_every`` seconds while the worker runs (and by
    :meth:`sample`), reading at most ``pending_limit`` entries.
    """

    def __init__(
        self, recorder: MetricsRecorder, *, sample_every: float = 15.0, pending_limit: int = 10_000
    ) -> None:
        if sample_every <= 0 or pending_limit <= 0:
            raise ConfigurationError(
                f"sample_every and pending_limit must be > 0, got {sample_every!r} and {pending_limit!r}"
            )
        self.recorder = recorder
        self.sample_every = sample_every
        self.pending_limit = pending_limit
        self._handling: dict[str, _Handling] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._samplers: dict[int, asyncio.Task[None]] = {}
        self._observing = False

    def __repr__(self) -> str:
        return f"MetricsHooks({self.recorder!r}, in_flight={len(self._handling)})"

    # -- pending entries, sampled -----------------------------------------------------------------

    async def on_start(self, worker: AgentWorker) -> None:
        if not self._observing:
            self._observing = True
            self.recorder.observe("dynamic_agents.worker.queue.pending", self._read_pending)
        self._samplers[id(worker)] = asyncio.get_running_loop().create_task(self._sample_loop(worker))

    async def on_stop(self, worker: AgentWorker) -> None:
        sampler = self._samplers.pop(id(worker), None)
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def sample(self, worker: AgentWorker) -> int:
        """Read the worker's pending count now (what the gauge reports until the next sample)."""
        pending = await worker.transport.pending(
            worker.stream, worker.settings.group, count=self.pending_limit
        )
        self._pending[(worker.stream, worker.settings.group)] = len(pending)
        return len(pending)

    async def _sample_loop(self, worker: AgentWorker) -> None:
        while True:
            try:
                await self.sample(worker)
            except DynamicAgentsError as error:
                logger.warning("sampling the pending entries of %r failed: %s", worker.stream, error)
            await asyncio.sleep(self.sample_every)

    def _read_pending(self) -> list[Observation]:
        return [
            (float(count), {_STREAM: stream, "messaging.consumer.group.name": group})
            for (stream, group), count in self._pending.items()
        ]

    # -- each entry -------------------------------------------------------------------------------

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
        stream = {_STREAM: delivery.stream}
        self._handling[delivery.entry_id] = _Handling(delivery.stream, time.monotonic())
        self.recorder.add("dynamic_agents.worker.requests", 1, stream)
        self.recorder.add("dynamic_agents.worker.in_flight", 1, stream)
        if delivery.delivery_count > 1:
            self.recorder.add("dynamic_agents.worker.redeliveries", 1, stream)
        elif (lag := _queue_lag(delivery.entry_id)) is not None:
            self.recorder.record("dynamic_agents.worker.queue.lag", lag, stream)

    async def on_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None:
        self._count(delivery.entry_id, Outcome.DUPLICATE)

    async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
        handling = self._handling.get(delivery.entry_id)
        if handling is not None:
            handling.target = target_name(target)
            handling.routed = target is not None

    async def before_execute(self, context: RunContext) -> None:
        handling = self._handling.get(context.entry_id)
        if handling is not None:
            handling.execution_started = time.monotonic()

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        target = target_name(context.target)
        handling = self._handling.get(context.entry_id)
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
        handling = self._handling.get(delivery.entry_id)
        routed = handling.routed if handling is not None else True
        self._count(delivery.entry_id, Outcome.of_answer(result, completion, routed=routed))

    async def on_dead_letter(self, delivery: Delivery[AgentRequestEvent], written: bool) -> None:
        if written:
            self.recorder.add("dynamic_agents.worker.dead_letters", 1, {_STREAM: delivery.stream})
            self._count(delivery.entry_id, Outcome.DEAD_LETTERED)

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        if error is not None:
            self._count(delivery.entry_id, Outcome.of_error(error))
        handling = self._handling.pop(delivery.entry_id, None)
        if handling is not None:
            self.recorder.add("dynamic_agents.worker.in_flight", -1, {_STREAM: handling.stream})

    def _count(self, entry_id: str, outcome: Outcome) -> None:
        """Count an entry's outcome once (its duration with it)."""
        handling = self._handling.get(entry_id)
        if handling is None or handling.counted:
            return
        handling.counted = True
        attributes = {"outcome": outcome.value, "target": handling.target}
        self.recorder.add("dynamic_agents.worker.outcomes", 1, attributes)
        self.recorder.record(
            "dynamic_agents.worker.duration", time.monotonic() - handling.received, attributes
        )


def observe_secrets(recorder: MetricsRecorder, manager: SecretsManager) -> None:
    """Report ``manager``'s cache statistics as the ``dynamic_agents.secrets.cache.*`` counters."""
    stats = manager.stats
    for name, read in (
        ("dynamic_agents.secrets.cache.hits", lambda: stats.hits),
        ("dynamic_agents.secrets.cache.misses", lambda: stats.misses),
        ("dynamic_agents.secrets.cache.stale_served", lambda: stats.stale_served),
    ):
        recorder.observe(name, _reader(read))


def _reader(read: Callable[[], int]) -> Callable[[], list[Observation]]:
    return lambda: [(float(read()), {})]


def _queue_lag(entry_id: str) -> float | None:
    """Seconds since the entry was added, from its id (``<milliseconds>-<sequence>``)."""
    millis, _, _ = entry_id.partition("-")
    if not millis.isdigit():
        return None
    return max(0.0, time.time() - int(millis) / 1000)


class OpenTelemetryMetrics:
    """A :class:`MetricsRecorder` on an OpenTelemetry meter (``meter_provider``, else the global
    one). Instruments are created from :data:`METRICS` on first use."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as error:
            raise MissingDependencyError("OpenTelemetryMetrics", "otel") from error
        self._meter = metrics.get_meter("dynamic_agents", __version__, meter_provider=meter_provider)
        self._counters: dict[str, Counter | UpDownCounter] = {}
        self._histograms: dict[str, Histogram] = {}
        self._observed: set[str] = set()

    def __repr__(self) -> str:
        return f"OpenTelemetryMetrics({len(self._counters) + len(self._histograms)} instruments)"

    def add(self, name: str, value: float, attributes: Attributes) -> None:
        counter = self._counters.get(name)
        if counter is None:
            spec = _spec(name, InstrumentKind.COUNTER, InstrumentKind.UP_DOWN_COUNTER)
            create = (
                self._meter.create_counter
                if spec.kind is InstrumentKind.COUNTER
                else self._meter.create_up_down_counter
            )
            counter = self._counters[name] = create(name, unit=spec.unit, description=spec.description)
        counter.add(value, attributes)

    def record(self, name: str, value: float, attributes: Attributes) -> None:
        histogram = self._histograms.get(name)
        if histogram is None:
            spec = _spec(name, InstrumentKind.HISTOGRAM)
            histogram = self._histograms[name] = self._meter.create_histogram(
                name,
                unit=spec.unit,
                description=spec.description,
                explicit_bucket_boundaries_advisory=list(spec.buckets) if spec.buckets else None,
            )
        histogram.record(value, attributes)

    def observe(self, name: str, read: Callable[[], Iterable[Observation]]) -> None:
        spec = _spec(name, InstrumentKind.OBSERVABLE_COUNTER, InstrumentKind.OBSERVABLE_GAUGE)
        if name in self._observed:
            raise ConfigurationError(f"metric {name!r} is observed already (one callback per recorder)")
        from opentelemetry.metrics import CallbackOptions
        from opentelemetry.metrics import Observation as OTelObservation

        def callback(options: CallbackOptions) -> list[OTelObservation]:
            return [OTelObservation(value, attributes) for value, attributes in read()]

        create = (
            self._meter.create_observable_counter
            if spec.kind is InstrumentKind.OBSERVABLE_COUNTER
            else self._meter.create_observable_gauge
        )
        create(name, [callback], unit=spec.unit, description=spec.description)
        self._observed.add(name)


def _spec(name: str, *kinds: InstrumentKind) -> MetricSpec:
    spec = METRICS.get(name)
    if spec is None:
        raise ConfigurationError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    if spec.kind not in kinds:
        raise ConfigurationError(f"metric {name!r} is a {spec.kind.value}, not a {' or '.join(kinds)}")
    return spec
