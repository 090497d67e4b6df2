"""The logging conventions hold on the worker's path: ids on records, secrets masked, quiet at INFO."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, LifecycleEvent, StreamNames, Target
from dynamic_agents.execution import FunctionExecutor
from dynamic_agents.observability import MetricsHooks, OpenTelemetryMetrics, Tracing
from dynamic_agents.secrets import SecretValue
from dynamic_agents.transports import InMemoryTransport
from tests.observability.conftest import attribute_text, hooked_worker
from tests.worker.conftest import request_event

CANARY = "sk-canary-logs-9c41e7"


async def test_records_carry_the_ids_never_a_secret_and_nothing_per_message_reaches_info(
    caplog: pytest.LogCaptureFixture,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
) -> None:
    key = SecretValue(CANARY)  # registered with the redactor, as every resolved secret is
    transport = InMemoryTransport(names=StreamNames("test"))

    def leaky(target: Target, request: AgentRequestEvent) -> str:
        if request.content == "fail":
            raise RuntimeError(f"provider said: invalid key {key.reveal()}")
        return "ok"

    requests = [
        request_event(transport.names, "fine", session="s-ok", metadata={"api_key": CANARY}),
        request_event(transport.names, "fail", session="s-fail"),
        request_event(transport.names, "never", session="s-cancel"),
    ]
    await transport.coordinator().request_cancel(requests[2].id)
    for request in requests:
        await transport.publish(transport.names.requests, request)
    hooks = [Tracing(tracer_provider).hooks(), MetricsHooks(OpenTelemetryMetrics(meter_provider))]
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        await hooked_worker(transport, hooks, FunctionExecutor(leaky), events=True).run_until_idle()

    ours = [r for r in caplog.records if r.name.startswith("dynamic_agents.")]
    per_request = [r for r in ours if r.request_id is not None]  # type: ignore[attr-defined]
    sessions = {request.id: request.session_id for request in requests}
    assert {r.request_id for r in per_request} == set(sessions)  # type: ignore[attr-defined]
    for record in per_request:
        assert record.session_id == sessions[record.request_id]  # type: ignore[attr-defined]
        assert record.levelno < logging.INFO, record.getMessage()
    assert not [r for r in ours if r.levelno >= logging.INFO and r.request_id is None]  # type: ignore[attr-defined]
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert CANARY not in text
    # the same request through the spans and metrics: every span ended, no canary in any of them
    spans = exporter.get_finished_spans()
    assert sum(span.name.endswith("requests process") for span in spans) == len(requests)
    assert CANARY not in attribute_text(spans)
    data = metric_reader.get_metrics_data()
    assert data is not None
    assert CANARY not in data.to_json()
    replies = await transport.read_stream(transport.names.responses("discord", "c1"), AgentResponseEvent)
    statuses = sorted(str(entry.event.status) for entry in replies)
    assert statuses == ["cancelled", "completed", "error"]
    assert all(CANARY not in (entry.event.error_message or "") for entry in replies)
    events = await transport.read_stream(transport.names.events, LifecycleEvent)
    assert any(event.event.type == "run.failed" for event in events)
    assert all(CANARY not in event.event.model_dump_json() for event in events)
