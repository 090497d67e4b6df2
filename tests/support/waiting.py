"""Waiting on a condition with a deadline (never a bare sleep standing in for synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL = 0.01


async def wait_until(condition: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(POLL)
