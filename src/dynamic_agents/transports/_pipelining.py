"""Automatic pipelining of the Redis backend's hot-path commands.

With many requests in flight, a worker's claims, completions and event writes come in bursts: each
one awaited on its own costs a socket write, a read and an event-loop wake-up. :class:`AutoPipeline`
sends the commands queued during one event-loop iteration as one pipeline (``transaction=False``):
one write, one connection, replies read back in order. Each caller still awaits its own reply, and
an error reaches only the command it belongs to. A command alone in its iteration is sent as it is,
without a pipeline (whose setup in redis-py costs more than the command).

Commands queued in one iteration run in the order they were queued; separate pipelines may run in
any order (they can use different connections), so a caller that needs order awaits one batch
before queuing the next.

Scripts are sent with ``EVALSHA``; after a reply of ``NOSCRIPT`` (a restarted or flushed server)
each script is loaded once and the calls that got it are sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["AutoPipeline"]

Arg = bytes | str | int


@dataclass(slots=True)
class _Call:
    stage: Callable[[Pipeline], object]
    """Adds exactly one command to the pipeline."""
    alone: Callable[[], Awaitable[object]]
    """Sends the same command without a pipeline."""
    future: asyncio.Future[object]
    script: AsyncScript | None = None


class AutoPipeline:
    """Batches commands per event-loop iteration into one pipeline (see the module docs)."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._queued: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> asyncio.Future[object]:
        """Queue a script call; the future resolves with its reply (or its error)."""
        alone = partial(script, keys=keys, args=args)  # redis-py's call loads the script on NOSCRIPT
        return self._queue(_Call(_evalsha(script, keys, args), alone, self._future(), script))

    def command(self, name: str, *args: Any, **options: Any) -> asyncio.Future[object]:
        """Queue one redis-py command by its method name: ``command("xadd", stream, fields)``."""

        def stage(pipe: Pipeline) -> object:
            return getattr(pipe, name)(*args, **options)

        def alone() -> Awaitable[object]:
            return getattr(self._client, name)(*args, **options)  # type: ignore[no-any-return]

        return self._queue(_Call(stage, alone, self._future()))

    def _future(self) -> asyncio.Future[object]:
        return asyncio.get_running_loop().create_future()

    def _queue(self, call: _Call) -> asyncio.Future[object]:
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append(call)
        return call.future

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        batch = [call for call in batch if not call.future.done()]  # callers cancelled meanwhile
        if not batch:
            return
        send = self._send_alone(batch[0]) if len(batch) == 1 else self._send(batch)
        task = asyncio.get_running_loop().create_task(send)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_alone(self, call: _Call) -> None:
        try:
            reply = await call.alone()
        except BaseException as error:
            _settle(call.future, error=error)
            if isinstance(error, asyncio.CancelledError):
                raise
        else:
            _settle(call.future, result=reply)

    async def _send(self, batch: list[_Call], *, reload: bool = True) -> None:
        pipe = self._client.pipeline(transaction=False)
        for call in batch:
            call.stage(pipe)
        try:
            replies: list[object] = await pipe.execute(raise_on_error=False)
        except BaseException as error:  # the connection failed: every command in the batch failed
            for call in batch:
                _settle(call.future, error=error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        unknown = []
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and reload and call.script is not None:
                unknown.append(call)
            elif isinstance(reply, BaseException):
                _settle(call.future, error=reply)
            else:
                _settle(call.future, result=reply)
        if unknown:
            await self._load_and_send(unknown)

    async def _load_and_send(self, batch: list[_Call]) -> None:
        """After ``NOSCRIPT`` (a restarted or flushed server): load each script once, send again."""
        try:
            for script in {id(call.script): call.script for call in batch if call.script}.values():
                script.sha = await self._client.script_load(script.script)
        except Exception as error:
            for call in batch:
                _settle(call.future, error=error)
            return
        await self._send(batch, reload=False)


def _evalsha(script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Callable[[Pipeline], object]:
    # The sha is read when the command is staged, so a resend after a reload uses the new one.
    return lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args)


def _settle(
    future: asyncio.Future[object], *, result: object = None, error: BaseException | None = None
) -> None:
    if future.done():  # the caller was cancelled: nobody waits for this reply
        return
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
