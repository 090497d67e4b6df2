"""Execute as server-sent events: the run behind a stream, its events, and a stored result replayed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import redact_text
from dynamic_agents.agents.managers import SpecManager
from dynamic_agents.api._bodies import result_json
from dynamic_agents.api._idempotency import Idempotency, IdempotencyScope
from dynamic_agents.exceptions import SpecNotFoundError, SpecValidationError
from dynamic_agents.execution import ExecutionResult

try:
    from fastapi.responses import StreamingResponse
    from starlette.types import Receive, Scope, Send
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


logger = get_logger("api")


async def replayed(payload: dict[str, Any]) -> AsyncIterator[bytes]:
    yield _sse("result", payload)


def _sse(event: str, payload: dict[str, Any]) -> bytes:
    """One server-sent event: ``delta``, ``result`` or ``error``, its data as JSON."""
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode()


async def streamed_run(
    managed: SpecManager[Any],
    spec_id: str,
    text: str,
    options: dict[str, Any],
    deltas: asyncio.Queue[str | None],
) -> ExecutionResult:
    """The run behind a stream: its deltas into ``deltas``, then ``None``."""
    try:
        return await managed.execute(spec_id, text, on_delta=deltas.put, **options)
    finally:
        deltas.put_nowait(None)


def end_streamed(idempotency: Idempotency, key: IdempotencyScope, run: asyncio.Task[ExecutionResult]) -> None:
    """Release a streamed run's key, keeping its result when it gave one."""
    failed = run.cancelled() or run.exception() is not None
    idempotency.end(key, None if failed else run.result())


class RunStream(StreamingResponse):
    """A streamed run's server-sent events. The run started with the request, so it is stopped when
    the response ends before it does, however it ends: the client gone before the first byte
    (Starlette then never reads the stream), mid-stream, or the server's send failing. A failure
    the stream did not get to report is logged."""

    def __init__(
        self, run: asyncio.Task[ExecutionResult], deltas: asyncio.Queue[str | None], *, target: str
    ) -> None:
        self.run, self.target = run, target
        # Whether the stream got to the run's outcome: then the client (or the server) has it.
        self.reported = False
        super().__init__(self._events(deltas), media_type="text/event-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.reported:
                self.run.cancel()
                self.run.add_done_callback(self._log_failure)

    def _log_failure(self, run: asyncio.Task[ExecutionResult]) -> None:
        # Looked at by the key's release too, which hushes asyncio's "never retrieved": said here.
        error = None if run.cancelled() else run.exception()
        if error is not None and not isinstance(error, SpecValidationError | SpecNotFoundError):
            logger.error(
                "the streamed run of %s failed after its client had gone", self.target, exc_info=error
            )

    async def _events(self, deltas: asyncio.Queue[str | None]) -> AsyncIterator[bytes]:
        """``delta`` events while the run streams, then one ``result`` event."""
        try:
            while (delta := await deltas.get()) is not None:
                yield _sse("delta", {"content": delta})
            self.reported = True  # the run is done (``None`` is its last act): its outcome is ours
            result = await self.run
        except asyncio.CancelledError:  # cut mid-stream: stopped at once, before the response unwinds
            self.run.cancel()
            raise
        except (SpecValidationError, SpecNotFoundError) as error:  # changed or deleted after the check
            # masked as the answer without a stream masks it (an id shaped like a key, say)
            detail = {"detail": redact_text(str(error)), "path": getattr(error, "path", "")}
            yield _sse("error", detail)
            return
        except Exception as error:  # what a 500 is without a stream: its type said, its text logged
            logger.exception("the streamed run of %s failed", self.target)
            yield _sse("error", {"detail": f"the run failed ({type(error).__name__})", "status": 500})
            return
        yield _sse("result", result_json(result))
