"""One metrics test per outcome, read back through the OpenTelemetry SDK's in-memory reader."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import subprocess
import sys
import textwrap
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import TracerProvider

from dynamic_agents.events import AgentRequestEvent, ResponseStatus, StreamNames, Target, TargetType
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.execution import ExecutionResult, FunctionExecutor, TokenUsage
from dynamic_agents.observability import METRICS, MetricsHooks, OpenTelemetryMetrics, observe_secrets
from dynamic_agents.routing import EventRouter, RouteDecision
from dynamic_agents.secrets import SecretsManager, StaticSource
from dynamic_agents.transports import InMemoryTransport, ManualClock, Subscription
from dynamic_agents.worker import AgentWorker, BaseHooks
from tests.observability.conftest import Stubborn, hooked_worker, taken_before_dead_lettering
from tests.support.waiting import wait_until
from tests.worker.conftest import FAST, request_event


def metrics(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    if data is None:  # nothing recorded yet
        return {}
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def points(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """A metric's data points by their (sorted) attributes."""
    metric = metrics(reader)[name]
    return {tuple(sorted((point.attributes or {}).items())): point for point in metric.data.data_points}


def outcomes(reader: InMemoryMetricReader) -> dict[str, int]:
    return {
        dict(attributes)["outcome"]: point.value
        for attributes, point in points(reader, "dynamic_agents.worker.outcomes").items()
    }


@pytest.fixture
def transport() -> InMemoryTransport:
    return InMemoryTransport(names=StreamNames("test"))


@pytest.fixture
def hooks(meter_provider: MeterProvider) -> MetricsHooks:
    return MetricsHooks(OpenTelemetryMetrics(meter_provider))


def run_with(
    transport: InMemoryTransport, hooks: MetricsHooks, handler: Any = None, **kw: Any
) -> AgentWorker:
    executor = FunctionExecutor(handler) if handler is not None else None
    return hooked_worker(transport, [hooks], executor, **kw)


def assert_in_flight_is_zero(reader: InMemoryMetricReader) -> None:
    assert [p.value for p in points(reader, "dynamic_agents.worker.in_flight").values()] == [0]


async def test_completed_counts_the_request_its_duration_lag_tokens_and_cost(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    def answer(target: Target, request: AgentRequestEvent) -> ExecutionResult:
        return ExecutionResult(
            ResponseStatus.COMPLETED, content="ok", tokens=TokenUsage(12, 5, 17), cost=0.25
        )

    await transport.publish(transport.names.requests, request_event(transport.names))
    await run_with(transport, hooks, answer).run_until_idle()

    assert outcomes(metric_reader) == {"completed": 1}
    stream = (("messaging.destination.name", transport.names.requests),)
    assert points(metric_reader, "dynamic_agents.worker.requests")[stream].value == 1
    assert points(metric_reader, "dynamic_agents.worker.queue.lag")[stream].count == 1
    (duration,) = points(metric_reader, "dynamic_agents.worker.duration").items()
    assert dict(duration[0]) == {"outcome": "completed", "target": "agent:echo"}
    assert duration[1].count == 1
    (execution,) = points(metric_reader, "dynamic_agents.worker.execution.duration").items()
    assert dict(execution[0]) == {"status": "completed", "target": "agent:echo"}
    tokens = {
        dict(a)["gen_ai.token.type"]: p.value
        for a, p in points(metric_reader, "dynamic_agents.llm.tokens").items()
    }
    assert tokens == {"input": 12, "output": 5}
    (cost,) = points(metric_reader, "dynamic_agents.llm.cost").values()
    assert cost.value == 0.25
    assert_in_flight_is_zero(metric_reader)
    for name, metric in metrics(metric_reader).items():
        assert metric.unit == METRICS[name].unit


async def test_error(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    def fail(target: Target, request: AgentRequestEvent) -> str:
        raise RuntimeError("broken")

    await transport.publish(transport.names.requests, request_event(transport.names))
    await run_with(transport, hooks, fail).run_until_idle()
    assert outcomes(metric_reader) == {"error": 1}
    assert_in_flight_is_zero(metric_reader)


async def test_no_route(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    await transport.publish(transport.names.requests, request_event(transport.names))
    await run_with(transport, hooks, router=EventRouter()).run_until_idle()
    assert outcomes(metric_reader) == {"no_route": 1}
    (duration,) = points(metric_reader, "dynamic_agents.worker.duration")
    assert dict(duration) == {"outcome": "no_route", "target": ""}


async def test_cancelled(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    request = request_event(transport.names)
    await transport.coordinator().request_cancel(request.id)
    await transport.publish(transport.names.requests, request)
    await run_with(transport, hooks).run_until_idle()
    assert outcomes(metric_reader) == {"cancelled": 1}


async def test_duplicate(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    request = request_event(transport.names)
    await transport.publish(transport.names.requests, request)
    await transport.publish(transport.names.requests, request)  # a platform retry, same request id
    await run_with(transport, hooks).run_until_idle()
    assert outcomes(metric_reader) == {"completed": 1, "duplicate": 1}
    assert_in_flight_is_zero(metric_reader)


async def test_rejected(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    release = asyncio.Event()

    async def slow(target: Target, request: AgentRequestEvent) -> str:
        await release.wait()
        return "done"

    await transport.publish(transport.names.requests, request_event(transport.names, "first"))
    await transport.publish(
        transport.names.requests,
        request_event(transport.names, "second", metadata={"session_policy": "reject"}),
    )
    async with run_with(transport, hooks, slow):
        try:
            await wait_until(
                lambda: outcomes_or_empty(metric_reader) == {"rejected": 1}, what="the rejection"
            )
        finally:
            release.set()
        await wait_until(lambda: outcomes_or_empty(metric_reader).get("completed") == 1, what="the first")
    assert outcomes(metric_reader) == {"rejected": 1, "completed": 1}


def outcomes_or_empty(reader: InMemoryMetricReader) -> dict[str, int]:
    return outcomes(reader) if "dynamic_agents.worker.outcomes" in metrics(reader) else {}


async def test_dead_lettered_and_redelivered(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    await transport.ensure_group(transport.names.requests, "dynamic-agents")
    await transport.publish(transport.names.requests, request_event(transport.names))
    crashed = Subscription(transport.names.requests, "dynamic-agents", "crashed", AgentRequestEvent, block=0)
    assert len(await transport.read(crashed, 1)) == 1  # a worker that died holding it
    await run_with(transport, hooks, max_deliveries=1, **FAST).run_until_idle()  # reclaims it
    assert outcomes(metric_reader) == {"dead_lettered": 1}
    stream = (("messaging.destination.name", transport.names.requests),)
    assert points(metric_reader, "dynamic_agents.worker.dead_letters")[stream].value == 1
    assert points(metric_reader, "dynamic_agents.worker.redeliveries")[stream].value == 1


async def test_entries_that_do_not_decode_are_counted_though_no_hook_sees_them(
    transport: InMemoryTransport, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """An entry that does not decode is dead-lettered by the transport, before any hook: the
    worker's count of them is added to the counter while it runs (each sample) and when it stops."""
    hooks = MetricsHooks(OpenTelemetryMetrics(meter_provider), sample_every=0.01)
    await transport.ensure_group(transport.names.requests, "dynamic-agents")
    await transport.publish_fields(transport.names.requests, {"__data__": b"not json"})
    await transport.publish(transport.names.requests, request_event(transport.names))
    worker = run_with(transport, hooks)
    stream = (("messaging.destination.name", transport.names.requests),)

    def undecodable() -> int | None:
        found = (
            points(metric_reader, "dynamic_agents.worker.undecodable")
            if "dynamic_agents.worker.undecodable" in metrics(metric_reader)
            else {}
        )
        return found[stream].value if stream in found else None

    async with worker:
        await wait_until(lambda: undecodable() == 1, what="the undecodable entry, while the worker runs")
        await transport.publish_fields(transport.names.requests, {"__data__": b'{"source": 42}'})
        await wait_until(lambda: worker.stats.undecodable == 2, what="the second one read")
    assert undecodable() == 2  # counted by the stop, sampled or not
    assert outcomes(metric_reader) == {"completed": 1}  # the good one, alone
    await run_with(transport, hooks).run_until_idle()  # another run: nothing counted twice
    assert undecodable() == 2


async def test_targets_named_by_requests_are_capped_as_labels(
    transport: InMemoryTransport, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """An ``agent_id`` in a request is the requester's to choose: each new one must not be a new
    series for good. The router's own targets keep their label; past ``max_targets`` others count
    as ``other``."""
    hooks = MetricsHooks(OpenTelemetryMetrics(meter_provider), max_targets=3)
    for n in range(6):
        await transport.publish(
            transport.names.requests,
            request_event(transport.names, session=f"s{n}", agent_id=f"made-up-{n}"),
        )
    await transport.publish(transport.names.requests, request_event(transport.names, session="routed"))
    await run_with(transport, hooks).run_until_idle()

    counts = {
        dict(a)["target"]: p.value for a, p in points(metric_reader, "dynamic_agents.worker.outcomes").items()
    }
    assert counts.pop("agent:echo") == 1  # the router's default: always its own label
    assert counts.pop("other") == 4
    assert sorted(counts.values()) == [1, 1]  # two of the made-up ones, whichever came first
    assert all(label.startswith("agent:made-up-") for label in counts)
    executions = {
        dict(a)["target"] for a in points(metric_reader, "dynamic_agents.worker.execution.duration")
    }
    assert executions == {"agent:echo", "other", *counts}


def test_max_targets_must_be_positive(meter_provider: MeterProvider) -> None:
    with pytest.raises(ConfigurationError, match="max_targets"):
        MetricsHooks(OpenTelemetryMetrics(meter_provider), max_targets=0)


async def test_pending_is_sampled_into_a_gauge(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    worker = run_with(transport, hooks)
    await transport.ensure_group(transport.names.requests, worker.settings.group)
    for _ in range(3):
        await transport.publish(transport.names.requests, request_event(transport.names))
    crashed = Subscription(
        transport.names.requests, worker.settings.group, "crashed", AgentRequestEvent, block=0
    )
    assert len(await transport.read(crashed, 2)) == 2
    await hooks.on_start(worker)  # what the worker does when it starts: register and sample
    try:
        assert await hooks.sample(worker) == 2
        (gauge,) = points(metric_reader, "dynamic_agents.worker.queue.pending").items()
    finally:
        await hooks.on_stop(worker)
    assert dict(gauge[0]) == {
        "messaging.destination.name": transport.names.requests,
        "messaging.consumer.group.name": worker.settings.group,
    }
    assert gauge[1].value == 2


async def test_a_pending_count_being_read_is_never_changed_in_place(
    transport: InMemoryTransport, hooks: MetricsHooks
) -> None:
    """The meter's reader reads the counts on its own thread (the SDK's periodic export) while
    samples and stops change them on the event loop: a dict changed in place under its iteration
    raised (the collection lost, logged). Each change makes a new one; the one in hand stays."""
    worker = run_with(transport, hooks)
    await transport.ensure_group(transport.names.requests, worker.settings.group)
    await hooks.on_start(worker)
    try:
        await hooks.sample(worker)
        in_hand = hooks._pending
        seen = dict(in_hand)
        await transport.publish(transport.names.requests, request_event(transport.names))
        crashed = Subscription(
            transport.names.requests, worker.settings.group, "crashed", AgentRequestEvent, block=0
        )
        await transport.read(crashed, 1)
        assert await hooks.sample(worker) == 1
        assert in_hand == seen  # the reader's dict, untouched
        assert [count for count, _ in hooks._read_pending()] == [1.0]
        in_hand = hooks._pending
    finally:
        await hooks.on_stop(worker)
    assert in_hand == {(transport.names.requests, worker.settings.group): 1}
    assert hooks._read_pending() == []


def pending_gauge(reader: InMemoryMetricReader) -> dict[str, float]:
    """The pending gauge's values by group (empty when nothing is reported)."""
    metric = metrics(reader).get("dynamic_agents.worker.queue.pending")
    if metric is None:
        return {}
    return {
        str((p.attributes or {})["messaging.consumer.group.name"]): p.value for p in metric.data.data_points
    }


async def test_the_pending_gauge_stops_reporting_a_group_once_its_last_worker_stopped(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    """A stopped worker samples no more: its last count, reported for good, would be stale.
    Two workers of one group report one count, kept until both have stopped."""
    first, second = run_with(transport, hooks), run_with(transport, hooks)
    other = run_with(transport, hooks, group="other")
    await transport.publish(transport.names.requests, request_event(transport.names))
    for worker in (first, second, other):
        await transport.ensure_group(transport.names.requests, worker.settings.group)
        await hooks.on_start(worker)
        await hooks.sample(worker)
    assert pending_gauge(metric_reader) == {first.settings.group: 0, "other": 0}

    await hooks.on_stop(first)  # the group still has a running worker
    assert pending_gauge(metric_reader) == {first.settings.group: 0, "other": 0}
    await hooks.on_stop(second)
    assert pending_gauge(metric_reader) == {"other": 0}
    await hooks.on_stop(other)
    assert pending_gauge(metric_reader) == {}


async def test_sampling_a_stopped_worker_leaves_no_count_in_the_gauge(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    """``sample()`` by hand after the worker stopped (or before it started) reads the count but
    keeps none: nothing would sample it again, so the gauge would report it for good."""
    worker = run_with(transport, hooks)
    await transport.ensure_group(transport.names.requests, worker.settings.group)
    await transport.publish(transport.names.requests, request_event(transport.names))
    assert await hooks.sample(worker) == 0  # never started
    assert pending_gauge(metric_reader) == {}
    await hooks.on_start(worker)
    await hooks.on_stop(worker)
    assert await hooks.sample(worker) == 0
    assert pending_gauge(metric_reader) == {}


async def test_a_sample_still_reading_when_the_worker_stops_is_not_kept(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    worker = run_with(transport, hooks)
    await transport.ensure_group(transport.names.requests, worker.settings.group)
    reading, release = asyncio.Event(), asyncio.Event()
    read_pending = transport.pending

    async def slow_pending(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        await release.wait()
        return await read_pending(*args, **kwargs)

    transport.pending = slow_pending  # type: ignore[method-assign]
    await hooks.on_start(worker)
    sampling = asyncio.ensure_future(hooks.sample(worker))
    await reading.wait()
    await hooks.on_stop(worker)
    release.set()
    assert await sampling == 0
    assert pending_gauge(metric_reader) == {}


async def test_on_stop_cancelled_while_its_sampler_ends_is_cancelled(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    """on_stop cancels the sampler and waits for it to end; the caller's own cancellation
    meanwhile (a shutdown's) ends on_stop at once, and is not taken for the sampler's."""
    worker = run_with(transport, hooks)
    await transport.ensure_group(transport.names.requests, worker.settings.group)
    await transport.publish(transport.names.requests, request_event(transport.names))
    crashed = Subscription(
        transport.names.requests, worker.settings.group, "crashed", AgentRequestEvent, block=0
    )
    assert len(await transport.read(crashed, 1)) == 1  # one entry pending
    reading, cancelled, let_go = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_to_cancel_pending(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            while not let_go.is_set():  # ends only once let go, however often cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    await let_go.wait()
            raise

    transport.pending = slow_to_cancel_pending  # type: ignore[method-assign]
    await hooks.on_start(worker)
    await reading.wait()  # the sampler is reading
    stopping = asyncio.create_task(hooks.on_stop(worker))
    await cancelled.wait()  # the sampler is ending
    stopping.cancel()
    try:
        async with asyncio.timeout(10):  # a hang guard: before, it waited for the sampler to end
            await asyncio.wait({stopping})  # the sampler still going (let_go not set)
        assert stopping.cancelled()  # before, on_stop returned as if not cancelled
    finally:
        let_go.set()
        await asyncio.wait({stopping})
    del transport.pending  # the real one again
    assert await hooks.sample(worker) == 1
    assert pending_gauge(metric_reader) == {}  # the worker counts as stopped all the same


async def test_secrets_cache_statistics_are_observable_counters(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    manager = SecretsManager(StaticSource({"openai": {"api_key": "sk-canary-metrics-0001"}}))
    observe_secrets(OpenTelemetryMetrics(meter_provider), manager)
    await manager.get("openai", "api_key")  # a miss, then a fetch
    await manager.get("openai", "api_key")  # a hit
    values = {
        name: next(iter(points(metric_reader, name).values())).value
        for name in (
            "dynamic_agents.secrets.cache.hits",
            "dynamic_agents.secrets.cache.misses",
            "dynamic_agents.secrets.cache.stale_served",
        )
    }
    assert values == {
        "dynamic_agents.secrets.cache.hits": manager.stats.hits,
        "dynamic_agents.secrets.cache.misses": manager.stats.misses,
        "dynamic_agents.secrets.cache.stale_served": 0,
    }
    assert (manager.stats.hits, manager.stats.misses) == (1, 1)
    data = metric_reader.get_metrics_data()
    assert "sk-canary-metrics-0001" not in (data.to_json() if data is not None else "")


async def test_a_secrets_manager_observed_again_is_counted_once(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Two workers of one process sharing a manager, each set up with ``observe_secrets``: each
    observation added its own read, and every count was reported once per read (here three
    times)."""
    manager = SecretsManager(StaticSource({"openai": {"api_key": "sk-canary-metrics-0004"}}))
    recorder = OpenTelemetryMetrics(meter_provider)
    observe_secrets(recorder, manager)
    observe_secrets(recorder, manager)
    observe_secrets(OpenTelemetryMetrics(meter_provider), manager)  # another recorder, same instrument
    await manager.get("openai", "api_key")  # a miss
    await manager.get("openai", "api_key")  # a hit
    (hits,) = points(metric_reader, "dynamic_agents.secrets.cache.hits").values()
    (misses,) = points(metric_reader, "dynamic_agents.secrets.cache.misses").values()
    assert (hits.value, misses.value) == (1, 1)


def test_unknown_or_mistyped_metric_names_are_configuration_errors(meter_provider: MeterProvider) -> None:
    recorder = OpenTelemetryMetrics(meter_provider)
    with pytest.raises(ConfigurationError, match="unknown metric 'nope'"):
        recorder.add("nope", 1, {})
    with pytest.raises(ConfigurationError, match="is a histogram"):
        recorder.add("dynamic_agents.worker.duration", 1, {})
    with pytest.raises(ConfigurationError, match=r"is an observable_gauge, not a histogram$"):
        recorder.record("dynamic_agents.worker.queue.pending", 1, {})
    with pytest.raises(ConfigurationError, match=r"is a counter, not an observable_counter or obs"):
        recorder.observe("dynamic_agents.worker.requests", list)


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    guide = (Path(__file__).parents[2] / "docs" / "guides" / "observability.md").read_text()
    for name, spec in METRICS.items():
        assert f"`{name}`" in guide, name
        for attribute in spec.attributes:
            assert f"`{attribute}`" in guide, (name, attribute)


async def test_an_entry_taken_over_before_its_dead_letter_counts_as_interrupted(
    hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    transport = await taken_before_dead_lettering()  # a worker that died holding the entry
    await run_with(transport, hooks, max_deliveries=1, **FAST).run_until_idle()  # reclaims it
    assert outcomes_or_empty(metric_reader) == {"interrupted": 1}
    assert "dynamic_agents.worker.dead_letters" not in metrics(metric_reader)
    assert_in_flight_is_zero(metric_reader)


class Refusing:
    """A recorder (of another metrics library, say) whose ``add`` of one metric fails, as one
    sending to an unreachable collector does."""

    def __init__(self, recorder: OpenTelemetryMetrics, refused: str) -> None:
        self.recorder = recorder
        self.refused = refused

    def add(self, name: str, value: float, attributes: Any) -> None:
        if name == self.refused:
            raise ConnectionError(f"{name} could not be sent")
        self.recorder.add(name, value, attributes)

    def record(self, name: str, value: float, attributes: Any) -> None:
        self.recorder.record(name, value, attributes)

    def observe(self, name: str, read: Any) -> None:
        self.recorder.observe(name, read)


@pytest.mark.parametrize("refused", ["dynamic_agents.worker.outcomes", "dynamic_agents.worker.requests"])
async def test_a_recorder_failing_leaves_no_entry_in_flight(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, refused: str
) -> None:
    """An outcome counted as the handling ends (``interrupted``, ``failed``: the broker away, its
    metrics' collector too, say) whose ``add`` failed kept the entry in the hooks for good, and in
    ``in_flight``; a failed ``requests`` count left ``in_flight`` at -1 once the entry ended."""
    hooks = MetricsHooks(Refusing(OpenTelemetryMetrics(meter_provider), refused))
    transport = await taken_before_dead_lettering()  # interrupted: counted as the handling ends
    await run_with(transport, hooks, max_deliveries=1, **FAST).run_until_idle()
    if refused == "dynamic_agents.worker.requests":  # on_received failed before adding it
        assert "dynamic_agents.worker.in_flight" not in metrics(metric_reader)
    else:
        assert_in_flight_is_zero(metric_reader)
    assert repr(hooks).endswith("in_flight=0)")


async def test_two_metrics_hooks_on_one_recorder_both_report_their_pending_entries(
    transport: InMemoryTransport, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Two workers in one process, each with its own MetricsHooks on one recorder: the second's
    start failed (the gauge was "observed already"), so its worker was never sampled."""
    recorder = OpenTelemetryMetrics(meter_provider)
    async with started_apart(transport, [MetricsHooks(recorder), MetricsHooks(recorder)]):
        assert pending_gauge(metric_reader) == {"first": 1, "second": 1}


async def test_two_recorders_on_one_meter_provider_both_report_their_pending_entries(
    transport: InMemoryTransport, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """The same with a recorder each: the SDK keeps the first instrument of a name, and dropped
    the second's callback without a word."""
    hooks = [MetricsHooks(OpenTelemetryMetrics(meter_provider)) for _ in range(2)]
    async with started_apart(transport, hooks):
        assert pending_gauge(metric_reader) == {"first": 1, "second": 1}


def test_an_observable_whose_instrument_could_not_be_created_is_created_by_the_next_observe(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK refusing to create the instrument (raising) left its reads list in place: every
    later observe() of the name joined that list, which no callback read, and reported nothing."""
    from dynamic_agents import __version__

    recorder = OpenTelemetryMetrics(meter_provider)
    meter = meter_provider.get_meter("dynamic_agents", __version__)  # the recorder's own (cached)
    create = meter.create_observable_gauge

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the SDK refused the instrument")

    monkeypatch.setattr(meter, "create_observable_gauge", refused)
    with pytest.raises(RuntimeError, match="refused"):
        recorder.observe("dynamic_agents.worker.queue.pending", lambda: [(1.0, {"group": "first"})])
    monkeypatch.setattr(meter, "create_observable_gauge", create)
    recorder.observe("dynamic_agents.worker.queue.pending", lambda: [(2.0, {"group": "second"})])
    assert [
        (dict(attributes), point.value)
        for attributes, point in points(metric_reader, "dynamic_agents.worker.queue.pending").items()
    ] == [({"group": "second"}, 2.0)]


@contextlib.asynccontextmanager
async def started_apart(transport: InMemoryTransport, hooks: list[MetricsHooks]) -> AsyncIterator[None]:
    """Start (as a worker does) a worker of group ``first`` with the first hooks and one of
    ``second`` with the second, each group holding one pending entry, and sample both."""
    await transport.publish(transport.names.requests, request_event(transport.names))
    started: list[tuple[MetricsHooks, AgentWorker]] = []
    try:
        for group, its_hooks in zip(("first", "second"), hooks, strict=True):
            worker = run_with(transport, its_hooks, group=group)
            await transport.ensure_group(transport.names.requests, group)
            held = Subscription(transport.names.requests, group, "crashed", AgentRequestEvent, block=0)
            assert len(await transport.read(held, 1)) == 1
            await its_hooks.on_start(worker)
            started.append((its_hooks, worker))
            await its_hooks.sample(worker)
        yield
    finally:
        for its_hooks, worker in started:
            await its_hooks.on_stop(worker)


def test_one_failing_read_of_an_observable_metric_leaves_the_others_reported(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    """The reads of recorders sharing a meter provider are one callback to the SDK: one read
    failing lost the whole collection's observations of the metric, every other recorder's too.
    Each failing read is logged once while it fails (not at every collection), and reported again
    once it reads again."""
    broken = True

    def failing() -> list[tuple[float, dict[str, str]]]:
        if broken:
            raise RuntimeError("the read broke")
        return [(2.0, {"messaging.consumer.group.name": "mended"})]

    first, second = OpenTelemetryMetrics(meter_provider), OpenTelemetryMetrics(meter_provider)
    first.observe("dynamic_agents.worker.queue.pending", failing)
    second.observe(
        "dynamic_agents.worker.queue.pending", lambda: [(1.0, {"messaging.consumer.group.name": "fine"})]
    )
    with caplog.at_level(logging.WARNING, logger="dynamic_agents"):
        for _ in range(3):
            assert pending_gauge(metric_reader) == {"fine": 1}
    failures = [r for r in caplog.records if r.name.startswith("dynamic_agents")]
    assert len(failures) == 1, caplog.text
    assert "dynamic_agents.worker.queue.pending" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert "the read broke" in str(failures[0].exc_info[1])
    broken = False
    assert pending_gauge(metric_reader) == {"fine": 1, "mended": 2}


async def test_metrics_hooks_dropped_are_collected_though_their_meter_provider_lives(
    transport: InMemoryTransport, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """The provider's combined callback held each MetricsHooks' read, and with it the hooks, for
    as long as the provider lived (the global one: the process): each worker a process built and
    dropped (tests, reloads) left its hooks behind."""
    recorder = OpenTelemetryMetrics(meter_provider)
    kept = MetricsHooks(recorder)
    dropped = MetricsHooks(recorder)
    async with started_apart(transport, [kept, dropped]):
        assert pending_gauge(metric_reader) == {"first": 1, "second": 1}
    await run_with(transport, dropped).run_until_idle()  # through a whole worker's run too
    gone = weakref.ref(dropped)
    del dropped
    # (the traceback of its cancelled sampler, which holds them, is let go a loop turn later)
    await wait_until(lambda: gc.collect() >= 0 and gone() is None, what="the dropped hooks collected")
    assert pending_gauge(metric_reader) == {}  # still collects, the kept hooks' read included


class Reporting:
    def __init__(self, group: str) -> None:
        self.group = group

    def read(self) -> list[tuple[float, dict[str, str]]]:
        return [(1.0, {"messaging.consumer.group.name": self.group})]


def test_a_read_that_is_a_bound_method_stops_being_observed_once_its_object_is_dropped(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Such a read (MetricsHooks' own) is held weakly: once its object is gone its observations
    stop, while the other reads (a plain function, another object's method) go on."""
    recorder = OpenTelemetryMetrics(meter_provider)
    kept, dropped = Reporting("kept"), Reporting("dropped")
    recorder.observe("dynamic_agents.worker.queue.pending", kept.read)
    recorder.observe("dynamic_agents.worker.queue.pending", dropped.read)
    recorder.observe(
        "dynamic_agents.worker.queue.pending", lambda: [(1.0, {"messaging.consumer.group.name": "plain"})]
    )
    assert pending_gauge(metric_reader) == {"kept": 1, "dropped": 1, "plain": 1}
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None
    assert pending_gauge(metric_reader) == {"kept": 1, "plain": 1}


class RefusingUndecodable:
    """A recorder (of another metrics library, say) that refuses one metric."""

    def __init__(self, recorder: OpenTelemetryMetrics) -> None:
        self.recorder = recorder
        self.refused = 0

    def add(self, name: str, value: float, attributes: Any) -> None:
        if name == "dynamic_agents.worker.undecodable":
            self.refused += 1
            raise ValueError("the recorder refused it")
        self.recorder.add(name, value, attributes)

    def record(self, name: str, value: float, attributes: Any) -> None:
        self.recorder.record(name, value, attributes)

    def observe(self, name: str, read: Any) -> None:
        self.recorder.observe(name, read)


async def test_a_recorder_failing_in_the_sampler_is_logged_and_sampling_goes_on(
    transport: InMemoryTransport,
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sampler ended at the first failure of the recorder, unlogged; the worker's stop then
    failed in on_stop before dropping its group, so the gauge reported that group for good."""
    recorder = RefusingUndecodable(OpenTelemetryMetrics(meter_provider))
    hooks = MetricsHooks(recorder, sample_every=0.01)
    await transport.ensure_group(transport.names.requests, "dynamic-agents")
    await transport.publish_fields(transport.names.requests, {"__data__": b"not json"})
    worker = run_with(transport, hooks)
    with caplog.at_level(logging.WARNING, logger="dynamic_agents"):
        async with worker:
            await wait_until(lambda: recorder.refused >= 2, what="a sample after a failed one")
            await wait_until(lambda: pending_gauge(metric_reader) == {"dynamic-agents": 0}, what="a sample")
    assert pending_gauge(metric_reader) == {}
    assert "the recorder refused it" in caplog.text


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"recorder": "the meter provider"}, "recorder must be a MetricsRecorder .* got a MeterProvider"),
        ({"recorder": None}, "recorder must be a MetricsRecorder .* got None"),
        ({"sample_every": "15"}, "sample_every must be a finite number of seconds > 0, got '15'"),
        ({"sample_every": float("nan")}, "sample_every .* got nan"),
        ({"pending_limit": 2.5}, "pending_limit must be a whole number > 0, got 2.5"),
        ({"max_targets": True}, "max_targets must be a whole number > 0, got True"),
    ],
)
def test_metrics_hooks_refuse_bad_arguments_naming_them(
    meter_provider: MeterProvider, arguments: dict[str, Any], named: str
) -> None:
    """Each was taken: a recorder of the wrong type failed at every hook call (logged, no metric
    recorded), the others with a bare TypeError, or not at all (NaN, 2.5, True)."""
    arguments = {"recorder": OpenTelemetryMetrics(meter_provider), **arguments}
    recorder = arguments.pop("recorder")
    if recorder == "the meter provider":  # passed for the recorder made of it
        recorder = meter_provider
    with pytest.raises(ConfigurationError, match=named):
        MetricsHooks(recorder, **arguments)


def test_open_telemetry_metrics_refuses_what_is_no_meter_provider(tracer_provider: TracerProvider) -> None:
    """Each failed with a bare AttributeError (get_meter)."""
    for provider in ("http://collector:4317", tracer_provider):
        with pytest.raises(ConfigurationError, match="meter_provider must be a MeterProvider"):
            OpenTelemetryMetrics(provider)  # type: ignore[arg-type]


class HostRouter:
    """A host's own router: the worker needs only ``route()`` (no ``targets()``)."""

    def route(self, event: AgentRequestEvent) -> RouteDecision:
        return RouteDecision(Target(type=TargetType.AGENT, id="echo"), None, "the host's choice")


async def test_metrics_hooks_start_with_a_router_that_has_only_route(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    """The worker takes a router with route() alone; MetricsHooks' start asked it for targets()
    and failed (logged) before it registered the gauge and counted anything undecodable."""
    await transport.ensure_group(transport.names.requests, "dynamic-agents")
    await transport.publish_fields(transport.names.requests, {"__data__": b"not json"})
    await transport.publish(transport.names.requests, request_event(transport.names))
    await run_with(transport, hooks, router=HostRouter()).run_until_idle()
    assert outcomes(metric_reader) == {"completed": 1}
    stream = (("messaging.destination.name", transport.names.requests),)
    assert points(metric_reader, "dynamic_agents.worker.undecodable")[stream].value == 1


class WithoutObservables(RefusingUndecodable):
    """A recorder for a library without callback instruments: observe() is not supported."""

    def add(self, name: str, value: float, attributes: Any) -> None:
        self.recorder.add(name, value, attributes)

    def observe(self, name: str, read: Any) -> None:
        raise NotImplementedError("WithoutObservables has no observable instruments")


async def test_a_recorder_that_cannot_observe_still_gets_the_other_worker_metrics(
    transport: InMemoryTransport, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Its failure at observe() (logged) ended MetricsHooks' start before the worker's own
    setup: the undecodable counter, which needs no observable, was never counted."""
    hooks = MetricsHooks(WithoutObservables(OpenTelemetryMetrics(meter_provider)))
    await transport.ensure_group(transport.names.requests, "dynamic-agents")
    await transport.publish_fields(transport.names.requests, {"__data__": b"not json"})
    await run_with(transport, hooks).run_until_idle()
    stream = (("messaging.destination.name", transport.names.requests),)
    assert points(metric_reader, "dynamic_agents.worker.undecodable")[stream].value == 1


async def test_a_worker_cancelled_while_its_hooks_start_stops_those_that_started(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    """Cancelled in a later hook's on_start (one that connects somewhere, say), the worker never
    called on_stop: MetricsHooks' sampler went on sampling the stopped worker for good, and the
    gauge reported its group for good."""
    starting, forever = asyncio.Event(), asyncio.Event()

    class Connecting(BaseHooks):
        async def on_start(self, worker: AgentWorker) -> None:
            starting.set()
            await forever.wait()

    worker = hooked_worker(transport, [hooks, Connecting()])
    running = asyncio.ensure_future(worker.run())
    await starting.wait()
    await wait_until(lambda: pending_gauge(metric_reader) == {"dynamic-agents": 0}, what="a sample")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert pending_gauge(metric_reader) == {}


GLOBAL_PROVIDER_SCRIPT = textwrap.dedent(
    """
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from dynamic_agents.observability import OpenTelemetryMetrics

    before = OpenTelemetryMetrics()  # made before the host set up its telemetry
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    after = OpenTelemetryMetrics()
    before.observe("dynamic_agents.worker.queue.pending", lambda: [(1, {"group": "first"})])
    after.observe("dynamic_agents.worker.queue.pending", lambda: [(1, {"group": "second"})])
    data = reader.get_metrics_data()
    print(sorted(
        point.attributes["group"]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ))
    """
)


def test_two_recorders_on_the_global_provider_both_report_whenever_it_was_set() -> None:
    """Both recorders use the global provider, one made before it was set (a proxy then): they
    were told apart by the provider object, each made its own instrument of the name, and the SDK
    dropped the second's callback without a word. Run apart: the global provider is set once."""
    completed = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "['first', 'second']"


async def test_a_dropped_secrets_managers_statistics_are_no_longer_read(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """observe_secrets' reads held the manager's statistics for as long as the provider lived (the
    global one: the process): a dropped manager's counters went on being read and reported."""
    recorder = OpenTelemetryMetrics(meter_provider)
    kept = SecretsManager(StaticSource({"openai": {"api_key": "sk-canary-metrics-0002"}}))
    dropped = SecretsManager(StaticSource({"openai": {"api_key": "sk-canary-metrics-0003"}}))
    observe_secrets(recorder, kept)
    observe_secrets(recorder, dropped)
    read: list[Any] = []
    stats_type = type(dropped.stats)
    original = stats_type.__dict__["hits"]

    class Counted:  # the descriptor of SecretsStats.hits, counting who reads it
        def __get__(self, stats: Any, owner: Any = None) -> Any:
            if stats is not None:
                read.append(stats)
            return original.__get__(stats, owner)

        def __set__(self, stats: Any, value: Any) -> None:
            original.__set__(stats, value)

    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None
    monkeypatch.setattr(stats_type, "hits", Counted())
    metric_reader.get_metrics_data()
    monkeypatch.undo()
    assert [id(stats) for stats in read] == [id(kept.stats)]  # the kept manager's, not the dropped one's


async def test_a_run_abandoned_at_a_stop_is_no_longer_in_flight_once_the_worker_stopped(
    transport: InMemoryTransport, hooks: MetricsHooks, metric_reader: InMemoryMetricReader, stubborn: Stubborn
) -> None:
    """A run still going ``abandon_after`` after its cancellation is let go of by the worker: its
    entry stays pending for another worker. It stayed in ``in_flight`` (and in the hooks) for as
    long as it went on: for good, for a run stuck in a thread."""
    worker = await stubborn.abandoned_by(transport, hooks)
    assert worker.stats.lost == 1  # abandoned
    assert_in_flight_is_zero(metric_reader)
    assert outcomes(metric_reader) == {"interrupted": 1}
    assert repr(hooks).endswith("in_flight=0)")
    await stubborn.release()  # its late end counts nothing again
    assert_in_flight_is_zero(metric_reader)
    assert outcomes(metric_reader) == {"interrupted": 1}


async def test_queue_lag_is_read_on_the_transports_clock(
    hooks: MetricsHooks, metric_reader: InMemoryMetricReader
) -> None:
    """An entry's id holds the time of the transport's clock when it was added: a transport on a
    ``ManualClock`` (2023, by default) had its lag measured against the system's clock, years."""
    clock = ManualClock()
    transport = InMemoryTransport(names=StreamNames("test"), clock=clock)
    await transport.publish(transport.names.requests, request_event(transport.names))
    clock.advance(2.5)  # waited in the stream
    await run_with(transport, hooks).run_until_idle()
    stream = (("messaging.destination.name", transport.names.requests),)
    lag = points(metric_reader, "dynamic_agents.worker.queue.lag")[stream]
    assert (lag.count, lag.sum) == (1, 2.5)
