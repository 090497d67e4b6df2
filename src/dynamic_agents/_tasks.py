"""Ending the library's own background tasks without swallowing the caller's cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

from dynamic_agents._logging import get_logger

__all__ = ["cancel_and_wait"]

logger = get_logger("tasks")


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until they have all ended; raise the first failure (other than
    the cancellation) one ended with, and log the others.

    ``with suppress(CancelledError): await task`` cannot tell the task's cancellation from the
    caller's: a caller cancelled while it waits (a shutdown's timeout) goes on as if it were not.
    Here the caller's cancellation is raised at once; the tasks, cancelled already, end on their
    own, and a failure one ends with then is logged (not left for asyncio to report unretrieved)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.add_done_callback(_log_late_failure)
        raise
    failures = [task.exception() for task in tasks if not task.cancelled()]  # each one retrieved
    raised = next((failure for failure in failures if failure is not None), None)
    for failure in failures:
        if failure is not None and failure is not raised:
            logger.error("a task failed while ending (another failure is raised)", exc_info=failure)
    if raised is not None:
        raise raised


def _log_late_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (failure := task.exception()) is not None:
        logger.error(
            "task %r failed while ending, after its caller stopped waiting",
            task.get_name(),
            exc_info=failure,
        )
