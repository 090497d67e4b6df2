"""Metrics: what a worker, its secrets and its LLM calls count, through any metrics library.

:class:`~dynamic_agents.observability.MetricsHooks` turns the worker's hooks into measurements
and hands them to a :class:`MetricsRecorder` by name; :data:`METRICS` documents every name,
instrument, unit and attribute. :class:`OpenTelemetryMetrics` is the recorder for an
OpenTelemetry ``MeterProvider`` (extra ``otel``); another library needs only the three methods of
the protocol.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Protocol

from dynamic_agents._logging import get_logger
from dynamic_agents._validation import shown, with_article
from dynamic_agents._version import __version__
from dynamic_agents.exceptions import ConfigurationError, MissingDependencyError
from dynamic_agents.secrets import SecretsManager, SecretsStats

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, MeterProvider, UpDownCounter

__all__ = [
    "METRICS",
    "InstrumentKind",
    "MetricSpec",
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
        "dynamic_agents.worker.undecodable",
        InstrumentKind.COUNTER,
        "{entry}",
        "Entries that did not decode, dead-lettered unanswered (counted at each sample and stop).",
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
        """Register ``read`` as a callback of an observable instrument (called at collection). A
        name may be observed more than once (two ``MetricsHooks`` on one recorder, say): each
        ``read``'s observations are reported, once for a ``read`` observed again (an equal bound
        method). ``MetricsHooks`` passes a bound method of its own: held weakly, the hooks can be
        collected once dropped."""


def observe_secrets(recorder: MetricsRecorder, manager: SecretsManager) -> None:
    """Report ``manager``'s cache statistics as the ``dynamic_agents.secrets.cache.*`` counters,
    for as long as the manager lives (its reads are bound methods, held weakly). A manager
    observed again (shared by two workers, each set up so) is counted once."""
    reads = _SECRETS_READS.get(manager)
    if reads is None:  # one per manager: observed again, its reads are the same methods
        reads = _SECRETS_READS[manager] = _SecretsReads(manager.stats)  # alive with the manager
    recorder.observe("dynamic_agents.secrets.cache.hits", reads.hits)
    recorder.observe("dynamic_agents.secrets.cache.misses", reads.misses)
    recorder.observe("dynamic_agents.secrets.cache.stale_served", reads.stale_served)


class _SecretsReads:
    """A secrets manager's statistics as observations (its ``stats``, not the manager itself)."""

    __slots__ = ("__weakref__", "stats")

    def __init__(self, stats: SecretsStats) -> None:
        self.stats = stats

    def hits(self) -> list[Observation]:
        return [(float(self.stats.hits), {})]

    def misses(self) -> list[Observation]:
        return [(float(self.stats.misses), {})]

    def stale_served(self) -> list[Observation]:
        return [(float(self.stats.stale_served), {})]


_SECRETS_READS: weakref.WeakKeyDictionary[SecretsManager, _SecretsReads] = weakref.WeakKeyDictionary()


class OpenTelemetryMetrics:
    """A :class:`MetricsRecorder` on an OpenTelemetry meter (``meter_provider``, else the global
    one). Instruments are created from :data:`METRICS` on first use. The reads an observable
    metric's recorders were given are called at each collection; one that raises is logged (once
    until it reads again) and the others' observations are still reported. A read that is a bound
    method (``MetricsHooks``' own) is held weakly: once its object is dropped it is read no more
    (the provider, and so its callbacks, may live as long as the process)."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as error:
            raise MissingDependencyError("OpenTelemetryMetrics", "otel") from error
        if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
            raise ConfigurationError(  # it failed with a bare AttributeError (get_meter)
                "meter_provider must be a MeterProvider (opentelemetry.sdk.metrics.MeterProvider(…)) "
                f"or None (the global one), got {shown(meter_provider)}"
            )
        self._meter = metrics.get_meter("dynamic_agents", __version__, meter_provider=meter_provider)
        self._counters: dict[str, Counter | UpDownCounter] = {}
        self._histograms: dict[str, Histogram] = {}
        # The callbacks of the provider's observable instruments, shared by all its recorders. The
        # global provider's are shared whatever object stands for it: a recorder made before the
        # host set it holds a proxy, whose instruments land on the provider set later.
        if meter_provider is None or meter_provider is metrics.get_meter_provider():
            self._observed = _OBSERVED_GLOBALLY
        else:
            self._observed = _OBSERVED.setdefault(meter_provider, {})

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
        reads = self._observed.get(name)
        if reads is not None:
            # Another instrument of the name would be the SDK's first one again, which keeps only
            # its own callbacks: this read joins that one's, unless it is one of them already (the
            # SDK adds up a collection's observations of one attribute set: it would count twice)
            if not any(each.read() == read for each in reads):
                reads.append(_Read(read))
            return
        reads = [_Read(read)]  # kept (for later observes to join) once its instrument exists
        from opentelemetry.metrics import CallbackOptions
        from opentelemetry.metrics import Observation as OTelObservation

        def callback(options: CallbackOptions) -> list[OTelObservation]:
            # The SDK drops everything a callback returns if it raises: each read's failure is
            # its own, so one broken read does not take the other recorders' observations along
            observations: list[OTelObservation] = []
            for each in reads.copy():  # observe() may add to it meanwhile, in the loop's thread
                read = each.read()
                if read is None:  # its object is gone
                    with contextlib.suppress(ValueError):  # (another collection's, at once)
                        reads.remove(each)
                    continue
                try:
                    observations += [OTelObservation(value, attributes) for value, attributes in read()]
                except Exception:
                    if not each.failing:  # every collection (each 60 s, say) until it mends
                        each.failing = True
                        logger.exception(
                            "reading %s failed (%r); logged again only after it has read again", name, read
                        )
                else:
                    each.failing = False
            return observations

        create = (
            self._meter.create_observable_counter
            if spec.kind is InstrumentKind.OBSERVABLE_COUNTER
            else self._meter.create_observable_gauge
        )
        create(name, [callback], unit=spec.unit, description=spec.description)
        self._observed[name] = reads


class _Read:
    """One read of an observable instrument, and whether its last call failed (logged once).

    A bound method (``MetricsHooks``' own) is held weakly: the provider's callback lives as long
    as the provider (the global one: the process) and would keep its object alive for good, a
    process building and dropping workers (tests, reloads) keeping every one's hooks.
    """

    __slots__ = ("failing", "read")

    def __init__(self, read: Callable[[], Iterable[Observation]]) -> None:
        self.failing = False
        self.read: Callable[[], Callable[[], Iterable[Observation]] | None]
        if inspect.ismethod(read):
            with contextlib.suppress(TypeError):  # an object that takes no weak reference: held
                self.read = weakref.WeakMethod(read)
                return
        self.read = lambda: read


Reads = list[_Read]
_OBSERVED: weakref.WeakKeyDictionary[MeterProvider, dict[str, Reads]] = weakref.WeakKeyDictionary()
"""By meter provider: each observed instrument's reads (the meter, and so its instruments, is
the provider's one ``dynamic_agents`` meter, whichever recorder asks)."""
_OBSERVED_GLOBALLY: dict[str, Reads] = {}
"""The same for the global meter provider (``meter_provider=None``), set or not yet."""


def _spec(name: str, *kinds: InstrumentKind) -> MetricSpec:
    spec = METRICS.get(name)
    if spec is None:
        raise ConfigurationError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    if spec.kind not in kinds:
        kind, wanted = with_article(spec.kind.value), with_article(" or ".join(kinds))
        raise ConfigurationError(f"metric {name!r} is {kind}, not {wanted}")
    return spec
