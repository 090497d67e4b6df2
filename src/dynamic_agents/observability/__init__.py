"""Observability: OpenTelemetry tracing, metrics through any library, and their worker hooks.

Nothing here imports OpenTelemetry until used; without ``opentelemetry-api`` (extra ``otel``)
:class:`Tracing` is a no-op and :class:`OpenTelemetryMetrics` raises an install hint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from dynamic_agents.observability.metrics import (
        METRICS,
        InstrumentKind,
        MetricSpec,
        MetricsRecorder,
        OpenTelemetryMetrics,
        observe_secrets,
    )
    from dynamic_agents.observability.metrics_hooks import MetricsHooks
    from dynamic_agents.observability.outcomes import Outcome, target_name
    from dynamic_agents.observability.tracing import LLMCall, Tracing
    from dynamic_agents.observability.tracing_hooks import TracingHooks

__all__ = [
    "METRICS",
    "InstrumentKind",
    "LLMCall",
    "MetricSpec",
    "MetricsHooks",
    "MetricsRecorder",
    "OpenTelemetryMetrics",
    "Outcome",
    "Tracing",
    "TracingHooks",
    "observe_secrets",
    "target_name",
]

_LAZY: dict[str, str] = {
    "METRICS": "dynamic_agents.observability.metrics",
    "InstrumentKind": "dynamic_agents.observability.metrics",
    "LLMCall": "dynamic_agents.observability.tracing",
    "MetricSpec": "dynamic_agents.observability.metrics",
    "MetricsHooks": "dynamic_agents.observability.metrics_hooks",
    "MetricsRecorder": "dynamic_agents.observability.metrics",
    "OpenTelemetryMetrics": "dynamic_agents.observability.metrics",
    "Outcome": "dynamic_agents.observability.outcomes",
    "Tracing": "dynamic_agents.observability.tracing",
    "TracingHooks": "dynamic_agents.observability.tracing_hooks",
    "observe_secrets": "dynamic_agents.observability.metrics",
    "target_name": "dynamic_agents.observability.outcomes",
}

__getattr__ = _lazy_exports(__name__, _LAZY, globals())
