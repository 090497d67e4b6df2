"""Lifecycle and progress events on ``agent:events``, with content deltas coalesced."""

from __future__ import annotations

import time

from dynamic_agents._logging import get_logger
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
from dynamic_agents.exceptions import DynamicAgentsError
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.transports import Transport

__all__ = ["LifecyclePublisher"]

logger = get_logger("worker")


class LifecyclePublisher:
    """Publishes one request's lifecycle events (when enabled); failures are logged, never raised:
    progress events must not fail a run."""

    def __init__(
        self,
        transport: Transport,
        *,
        enabled: bool,
        request_id: str,
        session_id: str,
        target: Target | None,
        maxlen: int,
        delta_interval: float,
    ) -> None:
        self.transport = transport
        self.enabled = enabled
        self.request_id = request_id
        self.session_id = session_id
        self.target = target
        self.maxlen = maxlen
        self.delta_interval = delta_interval
        self._buffer: list[str] = []
        self._sequence = 0
        self._last_flush = 0.0

    async def _publish(self, event: LifecycleEvent) -> None:
        if not self.enabled:
            return
        try:
            await self.transport.publish(self.transport.names.events, event, maxlen=self.maxlen)
        except DynamicAgentsError as error:
            logger.warning("could not publish %s: %s", type(event).__name__, error)

    def _common(self) -> dict[str, object]:
        return {"request_id": self.request_id, "session_id": self.session_id, "target": self.target}

    async def accepted(self) -> None:
        if self.enabled:  # (events are built only when someone listens: they cost ~15 µs each)
            await self._publish(RequestAccepted.model_validate(self._common()))

    async def started(self, delivery_count: int) -> None:
        if self.enabled:
            await self._publish(
                RunStarted.model_validate({**self._common(), "delivery_count": delivery_count})
            )

    async def delta(self, content: str) -> None:
        """Buffer a slice of output; publish at most every ``delta_interval`` seconds."""
        if not self.enabled or not content:
            return
        self._buffer.append(content)
        now = time.monotonic()
        if now - self._last_flush >= self.delta_interval:
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        content, self._buffer = "".join(self._buffer), []
        self._last_flush = time.monotonic()
        event = ContentDelta.model_validate(
            {**self._common(), "sequence": self._sequence, "content": content}
        )
        self._sequence += 1
        await self._publish(event)

    async def finished(self, result: ExecutionResult) -> None:
        if not self.enabled:
            return
        await self.flush()
        if result.status == ResponseStatus.COMPLETED:
            tokens = result.tokens.total_tokens if result.tokens is not None else None
            event: LifecycleEvent = RunCompleted.model_validate(
                {**self._common(), "execution_time_ms": result.duration_ms, "tokens_used": tokens}
            )
        else:
            event = RunFailed.model_validate(
                {**self._common(), "status": result.status, "error_message": result.error_message}
            )
        await self._publish(event)
