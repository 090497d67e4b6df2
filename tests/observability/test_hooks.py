"""The worker's hook points: their order, what a hook may add to a reply, and no cost without hooks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames, Target
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.execution import ExecutionResult, FunctionExecutor
from dynamic_agents.observability import MetricsHooks, OpenTelemetryMetrics, Tracing
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import Completion, Delivery, InMemoryServer, InMemoryTransport, ManualClock
from dynamic_agents.worker import AgentWorker, BaseHooks, RunContext
from tests.observability.conftest import hooked_worker
from tests.observability.test_metrics import outcomes, points
from tests.support.waiting import wait_until
from tests.worker.conftest import request_event


class Recorder(BaseHooks):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_start(self, worker: AgentWorker) -> None:
        self.calls.append("on_start")

    async def on_stop(self, worker: AgentWorker) -> None:
        self.calls.append("on_stop")

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
        self.calls.append("on_received")

    async def on_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None:
        self.calls.append("on_duplicate")

    async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
        self.calls.append(f"on_routed {target.id if target else None}")

    async def before_execute(self, context: RunContext) -> None:
        self.calls.append("before_execute")

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        self.calls.append("after_execute")

    async def before_respond(
        self, delivery: Delivery[AgentRequestEvent], response: AgentResponseEvent, headers: dict[str, str]
    ) -> None:
        headers["x-seen-by"] = "recorder"
        self.calls.append(f"before_respond {response.status}")

    async def after_respond(
        self, delivery: Delivery[AgentRequestEvent], result: ExecutionResult, completion: Completion
    ) -> None:
        self.calls.append(f"after_respond created={completion.created}")

    async def after_complete(self, context: RunContext, completion: Completion) -> None:
        self.calls.append("after_complete")

    async def on_dead_letter(self, delivery: Delivery[AgentRequestEvent], written: bool) -> None:
        self.calls.append(f"on_dead_letter {written}")

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        self.calls.append(f"after_handle {type(error).__name__ if error else None}")


async def test_hooks_are_called_in_order_and_may_add_reply_headers() -> None:
    transport = InMemoryTransport(names=StreamNames("test"))
    recorder = Recorder()
    await transport.publish(transport.names.requests, request_event(transport.names))
    await hooked_worker(transport, [recorder]).run_until_idle()
    assert recorder.calls == [
        "on_start",
        "on_received",
        "on_routed echo",
        "before_execute",
        "after_execute",
        "before_respond completed",
        "after_respond created=True",
        "after_complete",
        "after_handle None",
        "on_stop",
    ]
    (entry,) = await transport.read_stream(transport.names.responses("discord", "c1"), AgentResponseEvent)
    assert entry.message is not None
    assert entry.message.headers["x-seen-by"] == "recorder"


async def test_no_route_is_routed_to_none_and_answered() -> None:
    transport = InMemoryTransport(names=StreamNames("test"))
    recorder = Recorder()
    await transport.publish(transport.names.requests, request_event(transport.names))
    await hooked_worker(transport, [recorder], router=EventRouter()).run_until_idle()
    assert recorder.calls[1:-1] == [
        "on_received",
        "on_routed None",
        "before_respond error",
        "after_respond created=True",
        "after_handle None",
    ]


async def test_a_worker_without_hooks_never_calls_into_them(monkeypatch: pytest.MonkeyPatch) -> None:
    async def forbidden(self: AgentWorker, name: str, *args: Any) -> None:
        raise AssertionError(f"hook {name} called on a worker without hooks")

    monkeypatch.setattr(AgentWorker, "_call_hooks", forbidden)
    transport = InMemoryTransport(names=StreamNames("test"))
    await transport.publish(transport.names.requests, request_event(transport.names))
    await transport.publish(transport.names.requests, request_event(transport.names, "again"))
    await hooked_worker(transport, []).run_until_idle()
    await transport.publish(transport.names.requests, request_event(transport.names, "lost"))
    worker = hooked_worker(transport, [], router=EventRouter())  # no route: the error path too
    await worker.run_until_idle()
    replies = await transport.read_stream(transport.names.responses("discord", "c1"), AgentResponseEvent)
    assert sorted(str(entry.event.status) for entry in replies) == ["completed", "completed", "error"]


async def test_shared_hooks_keep_apart_entries_of_two_streams_with_the_same_id(
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """Entry ids are per stream: two streams written in the same millisecond both have
    ``<ms>-0``. Hooks shared by the workers of both (as MetricsHooks allows) must not mix them up."""
    server = InMemoryServer(ManualClock())  # both entries get the same id
    transport = InMemoryTransport(server, names=StreamNames("test"))
    urgent = f"{transport.names.requests}:urgent"
    hooks = [MetricsHooks(OpenTelemetryMetrics(meter_provider)), Tracing(tracer_provider).hooks()]
    running: list[str] = []
    both_running = asyncio.Event()

    async def together(target: Target, request: AgentRequestEvent) -> str:
        running.append(request.id)
        if len(running) == 2:
            both_running.set()
        await both_running.wait()
        return "done"

    first = await transport.publish(transport.names.requests, request_event(transport.names, session="a"))
    second = await transport.publish(urgent, request_event(transport.names, session="b"))
    assert first == second
    main = hooked_worker(transport, hooks, FunctionExecutor(together))
    workers = [
        main,
        AgentWorker(
            transport,
            transport.coordinator(),
            main.router,
            FunctionExecutor(together),
            settings=main.settings,
            hooks=hooks,
            stream=urgent,
        ),
    ]
    async with asyncio.timeout(10):
        await asyncio.gather(*(w.run_until_idle() for w in workers))

    assert outcomes(metric_reader) == {"completed": 2}
    assert [p.value for p in points(metric_reader, "dynamic_agents.worker.in_flight").values()] == [0, 0]
    names = sorted(span.name for span in exporter.get_finished_spans())
    reply = "reply publish"
    process = [f"{transport.names.requests} process", f"{urgent} process"]
    assert names == sorted(["route", "route", "invoke_agent", "invoke_agent", reply, reply, *process])


async def test_shared_hooks_keep_apart_two_deliveries_of_one_entry_to_two_groups(
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """Two groups read the same stream: each gets its own delivery of the same entry id, both
    handled at once by workers sharing their hooks. Each delivery keeps its own spans and counts."""
    transport = InMemoryTransport(names=StreamNames("test"))
    hooks = [MetricsHooks(OpenTelemetryMetrics(meter_provider)), Tracing(tracer_provider).hooks()]
    gate = asyncio.Event()

    async def held(target: Target, request: AgentRequestEvent) -> str:
        await gate.wait()
        return "done"

    archive = hooked_worker(transport, hooks, FunctionExecutor(held), group="archive")
    answer = hooked_worker(transport, hooks, FunctionExecutor(held), group="answer")
    await transport.publish(transport.names.requests, request_event(transport.names))
    async with archive, answer:
        # both deliveries are being handled (one runs, the other waits for the session)
        await wait_until(lambda: archive.stats.received == answer.stats.received == 1, what="both reads")
        gate.set()
        await wait_until(
            lambda: sum(s.name.endswith(" process") for s in exporter.get_finished_spans()) == 2,
            what="both process spans",
        )

    process = [s for s in exporter.get_finished_spans() if s.name.endswith(" process")]
    assert sorted((s.attributes or {})["messaging.consumer.group.name"] for s in process) == [
        "answer",
        "archive",
    ]
    assert (process[0].attributes or {})["messaging.message.id"] == (process[1].attributes or {})[
        "messaging.message.id"
    ]
    assert sum(outcomes(metric_reader).values()) == 2
    assert [p.value for p in points(metric_reader, "dynamic_agents.worker.in_flight").values()] == [0]


def test_a_worker_refuses_hooks_that_have_no_hook_method(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> None:
    """``hooks=[tracing]`` (``.hooks()`` forgotten) or a recorder in place of its MetricsHooks
    was taken, and the worker, finding none of the hook methods on it, recorded nothing, unsaid.
    A single hooks object (no list) failed with a bare TypeError."""
    transport = InMemoryTransport(names=StreamNames("test"))
    tracing, recorder = Tracing(tracer_provider), OpenTelemetryMetrics(meter_provider)
    for hooks, named in (
        ([tracing], r"hooks\[0\] must be worker hooks .*, got a Tracing"),
        ([tracing.hooks(), recorder], r"hooks\[1\] must be worker hooks .*, got an OpenTelemetryMetrics"),
        ([MetricsHooks], r"hooks\[0\] must be worker hooks .*, got the class MetricsHooks"),
        (tracing.hooks(), r"hooks must be a list of worker hooks .*, got a TracingHooks"),
    ):
        with pytest.raises(ConfigurationError, match=named):
            hooked_worker(transport, hooks)  # type: ignore[arg-type]


def test_a_worker_refuses_one_hook_given_twice(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> None:
    """The same hooks object twice (a shared list extended twice, say) was called twice at each
    point: every request counted twice, and a second span started over the first, which stayed
    open for good. Two hooks of one kind, each its own object, stay allowed."""
    transport = InMemoryTransport(names=StreamNames("test"))
    tracing, metrics = Tracing(tracer_provider).hooks(), MetricsHooks(OpenTelemetryMetrics(meter_provider))
    for hooks, named in (
        ([metrics, tracing, metrics], r"hooks\[2\] is hooks\[0\] again \(a MetricsHooks\)"),
        ([tracing, tracing], r"hooks\[1\] is hooks\[0\] again \(a TracingHooks\)"),
    ):
        with pytest.raises(ConfigurationError, match=named):
            hooked_worker(transport, hooks)
    both = [MetricsHooks(OpenTelemetryMetrics(meter_provider)), metrics]
    assert hooked_worker(transport, both).hooks == both


class AwaitsACancelledFuture(BaseHooks):
    """A hook awaiting something its owner cancelled (an exporter's flush, say): a CancelledError
    that is the hook's failure, not a cancellation of the worker's handler."""

    def __init__(self, *points: str) -> None:
        self.points = set(points)

    async def _fail_at(self, point: str) -> None:
        if point in self.points:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
        await self._fail_at("on_received")

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        await self._fail_at("after_handle")

    async def on_stop(self, worker: AgentWorker) -> None:
        await self._fail_at("on_stop")


@pytest.mark.parametrize("point", ["on_received", "after_handle"])
async def test_a_hook_raising_a_cancellation_of_its_own_is_a_failing_hook(
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
    point: str,
) -> None:
    """It was taken for the handler's cancellation: at ``on_received`` the request was handed
    back, again on each delivery, until dead-lettered; at ``after_handle`` the hooks after it
    were skipped (the in-flight count never went down)."""
    transport = InMemoryTransport(names=StreamNames("test"))
    await transport.publish(transport.names.requests, request_event(transport.names))
    hooks = [AwaitsACancelledFuture(point), MetricsHooks(OpenTelemetryMetrics(meter_provider))]
    worker = hooked_worker(transport, hooks, max_deliveries=2)
    with caplog.at_level(logging.ERROR, logger="dynamic_agents"):
        async with asyncio.timeout(10):
            await worker.run_until_idle()
    (reply,) = await transport.read_stream(transport.names.responses("discord", "c1"), AgentResponseEvent)
    assert reply.event.status == "completed"
    assert outcomes(metric_reader) == {"completed": 1}
    assert [p.value for p in points(metric_reader, "dynamic_agents.worker.in_flight").values()] == [0]
    assert f"hook AwaitsACancelledFuture.{point} failed" in caplog.text


class StartsWhenLetGo(BaseHooks):
    """A hook whose on_start waits until let go (one that connects somewhere, say)."""

    def __init__(self) -> None:
        self.starting, self.go, self.started = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def on_start(self, worker: AgentWorker) -> None:
        self.starting.set()
        await self.go.wait()
        self.started.set()


@pytest.mark.parametrize("cancelled", ["while its hooks start", "while it runs"])
async def test_a_hook_raising_a_cancellation_of_its_own_at_on_stop_does_not_skip_the_others(
    caplog: pytest.LogCaptureFixture, cancelled: str
) -> None:
    """The task running the worker cancelled, the worker calls on_stop on every hook: a hook's
    own CancelledError there was taken for that cancellation (the task was being cancelled) and
    the hooks after it were never stopped (a sampler left running for good). It is a failing
    hook, logged; the task's cancellation still ends run() once every hook was stopped."""
    transport = InMemoryTransport(names=StreamNames("test"))
    starting, recorder = StartsWhenLetGo(), Recorder()
    if cancelled == "while it runs":
        starting.go.set()
    worker = hooked_worker(transport, [AwaitsACancelledFuture("on_stop"), recorder, starting])
    with caplog.at_level(logging.ERROR, logger="dynamic_agents"):
        running = asyncio.ensure_future(worker.run())
        await (starting.started if cancelled == "while it runs" else starting.starting).wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert recorder.calls == ["on_start", "on_stop"]
    assert "hook AwaitsACancelledFuture.on_stop failed" in caplog.text


async def test_a_hook_raising_a_cancellation_of_its_own_after_a_cancelled_run_does_not_skip_the_others(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    """The same at ``after_handle`` of a run the worker's stop cancelled: the hooks after it were
    skipped, so MetricsHooks never counted the entry's outcome nor took it out of in_flight."""
    transport = InMemoryTransport(names=StreamNames("test"))
    await transport.publish(transport.names.requests, request_event(transport.names))
    running = asyncio.Event()

    async def forever(target: Target, request: AgentRequestEvent) -> str:
        running.set()
        await asyncio.Event().wait()
        return "never"

    hooks = [AwaitsACancelledFuture("after_handle"), MetricsHooks(OpenTelemetryMetrics(meter_provider))]
    worker = hooked_worker(transport, hooks, FunctionExecutor(forever))
    with caplog.at_level(logging.ERROR, logger="dynamic_agents"):
        async with worker:
            await running.wait()
            await worker.stop(grace=0)
    assert worker.stats.handed_back == 1
    assert outcomes(metric_reader) == {"interrupted": 1}
    assert [p.value for p in points(metric_reader, "dynamic_agents.worker.in_flight").values()] == [0]
    assert "hook AwaitsACancelledFuture.after_handle failed" in caplog.text


class SlowToEnd(BaseHooks):
    """A hook whose ``after_handle`` (or ``on_stop``) awaits something slow (a flush, say)."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.ending = asyncio.Event()
        self.task: asyncio.Task[Any] | None = None

    async def _slowly(self, point: str) -> None:
        if point == self.point:
            self.task = asyncio.current_task()
            self.ending.set()
            await asyncio.Event().wait()

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        await self._slowly("after_handle")

    async def on_stop(self, worker: AgentWorker) -> None:
        await self._slowly("on_stop")


async def test_a_handler_cancelled_in_a_slow_after_handle_hook_still_ends_the_hooks_after_it(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
) -> None:
    """A handler cancelled while a hook before them awaits in ``after_handle`` (``asyncio.run``
    ending cancels it so, the worker stopped): the hooks after it were skipped, so the
    ``process`` span of a request answered was never ended (never exported) and the entry stayed
    in ``in_flight``. The handler still ends cancelled."""
    transport = InMemoryTransport(names=StreamNames("test"))
    await transport.publish(transport.names.requests, request_event(transport.names))
    slow = SlowToEnd("after_handle")
    hooks = [slow, Tracing(tracer_provider).hooks(), MetricsHooks(OpenTelemetryMetrics(meter_provider))]
    async with hooked_worker(transport, hooks):
        await slow.ending.wait()
    assert slow.task is not None
    slow.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow.task
    process = [span for span in exporter.get_finished_spans() if span.name.endswith(" process")]
    assert [(span.attributes or {})["dynamic_agents.outcome"] for span in process] == ["completed"]
    assert outcomes(metric_reader) == {"completed": 1}
    assert [p.value for p in points(metric_reader, "dynamic_agents.worker.in_flight").values()] == [0]


async def test_a_worker_cancelled_again_in_a_slow_on_stop_hook_still_stops_the_hooks_after_it() -> None:
    """The task running the worker cancelled, and cancelled again (a shutdown's timeout) while a
    hook awaits in ``on_stop``: the hooks after it were never stopped (a sampler left running)."""
    transport = InMemoryTransport(names=StreamNames("test"))
    slow, recorder = SlowToEnd("on_stop"), Recorder()
    worker = hooked_worker(transport, [slow, recorder])
    running = asyncio.ensure_future(worker.run())
    await wait_until(lambda: recorder.calls == ["on_start"], what="the start")
    running.cancel()
    await slow.ending.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert recorder.calls == ["on_start", "on_stop"]
