"""Automatic pipelining of Lua script calls for the Redis backend.

With many requests in flight, a worker's claims and completions come in bursts: each one awaited
on its own costs a socket write, a read and an event-loop wake-up. :class:`ScriptPipeline` sends
the calls made during one event-loop iteration as one pipeline (``transaction=False``): one write,
one connection, replies read back in order. Each caller still awaits its own reply, and an error
reaches only the call it belongs to. A lone call goes out one loop iteration later than it would
on its own, which costs microseconds.

Scripts are sent with ``EVALSHA``; after a reply of ``NOSCRIPT`` (a restarted or flushed server)
each script is loaded once and the calls that got it are sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["ScriptPipeline"]

Arg = bytes | str | int


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[Arg]
    future: asyncio.Future[object]


class ScriptPipeline:
    """Batches script calls per event-loop iteration into one pipeline (see the module docs)."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._queued: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self.pipelines = 0
        """Pipelines sent (for tests and benchmarks)."""
        self.calls = 0
        """Script calls sent through them."""

    def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> asyncio.Future[object]:
        """Queue a call; the future resolves with its reply (or its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append(_Call(script, keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        batch = [call for call in batch if not call.future.done()]  # callers cancelled meanwhile
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call], *, reload: bool = True) -> None:
        self.pipelines += 1
        self.calls += len(batch)
        pipe = self._client.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        try:
            replies: list[object] = await pipe.execute(raise_on_error=False)
        except BaseException as error:  # the connection failed: every call in the batch failed
            for call in batch:
                _settle(call.future, error=error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        unknown = []
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and reload:
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
            for script in {id(call.script): call.script for call in batch}.values():
                script.sha = await self._client.script_load(script.script)
        except Exception as error:
            for call in batch:
                _settle(call.future, error=error)
            return
        await self._send(batch, reload=False)


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
