"""Ending the library's own background tasks without swallowing the caller's cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until they have all ended; raise the first failure (other than
    the cancellation) one ended with.

    ``with suppress(CancelledError): await task`` cannot tell the task's cancellation from the
    caller's: a caller cancelled while it waits (a shutdown's timeout) goes on as if it were not.
    Here the caller's cancellation is raised at once; the tasks, cancelled already, end on their
    own."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    await asyncio.wait(tasks)
    failures = [task.exception() for task in tasks if not task.cancelled()]  # each one retrieved
    for failure in failures:
        if failure is not None:
            raise failure
