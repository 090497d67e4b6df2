"""``cancel_and_wait``: the library's background tasks end, the caller's cancellation is its own."""

from __future__ import annotations

import asyncio

import pytest

from dynamic_agents._tasks import cancel_and_wait


async def test_it_waits_for_every_task_and_raises_a_failure_one_ended_with() -> None:
    let_go, both_started = asyncio.Event(), asyncio.Barrier(3)
    ended: list[str] = []

    async def fails_when_cancelled() -> None:
        try:
            await both_started.wait()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("broken while stopping") from None

    async def slow_to_end() -> None:
        try:
            await both_started.wait()
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(let_go.wait())
            ended.append("slow")

    failing, slow = asyncio.create_task(fails_when_cancelled()), asyncio.create_task(slow_to_end())
    await both_started.wait()
    waiting = asyncio.create_task(cancel_and_wait(failing, slow))
    await asyncio.wait({failing})
    assert not waiting.done()  # the slow one still ends
    let_go.set()
    with pytest.raises(RuntimeError, match="broken while stopping"):
        await waiting
    assert ended == ["slow"]


async def test_a_task_that_ends_of_its_cancellation_is_no_failure() -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    await cancel_and_wait(task)
    assert task.cancelled()
    await cancel_and_wait()  # nothing to end
