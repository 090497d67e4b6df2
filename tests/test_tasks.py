"""``cancel_and_wait``: the library's background tasks end, the caller's cancellation is its own."""

from __future__ import annotations

import asyncio
import gc

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


async def test_a_failure_after_the_caller_stopped_waiting_is_logged_not_left_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cancelled while it waits, the caller goes at once; a task that then fails while ending was
    left with its exception unretrieved (asyncio's "Task exception was never retrieved", at
    garbage collection, without saying whose)."""
    let_go, started = asyncio.Event(), asyncio.Event()
    unretrieved: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unretrieved.append(context))

    async def fails_late() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(let_go.wait())
            raise RuntimeError("broken while stopping")

    task = asyncio.create_task(fails_late(), name="the sampler")
    await started.wait()
    waiting = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    let_go.set()
    await asyncio.wait({task})
    await asyncio.sleep(0)  # the done callbacks
    del task
    gc.collect()
    assert unretrieved == []
    (record,) = [r for r in caplog.records if r.name == "dynamic_agents.tasks"]
    assert record.levelname == "ERROR"
    assert "'the sampler' failed while ending, after its caller stopped waiting" in record.getMessage()
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "broken while stopping"


async def test_every_failure_but_the_one_raised_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def fails(message: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError(message)

    first, second = asyncio.create_task(fails("first")), asyncio.create_task(fails("second"))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="first"):
        await cancel_and_wait(first, second)
    (record,) = [r for r in caplog.records if r.name == "dynamic_agents.tasks"]
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "second"
