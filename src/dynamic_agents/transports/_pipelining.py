"""Automatic pipelining of the Redis backend's hot-path commands.

With many requests in flight, a worker's claims, completions and event writes come in bursts: each
one awaited on its own costs a socket write, a read and an event-loop wake-up. :class:`AutoPipeline`
sends the commands queued during one event-loop iteration together: the first one queued starts a
task that, when it runs (in the next iteration), takes everything queued until then and sends it
with one write on one connection, reading the replies back in order. Each caller still awaits its
own reply, and an error reaches only the command it belongs to.

Calls of a :class:`BatchScript` queued in one iteration go further: they become *one* call of
the script, which handles the whole batch inside Redis (one ``MGET`` for every key it checks, one
``XACK`` for every entry it acks…) and returns one reply per call. The batch runs at the position
of its first call.

Commands queued in one iteration run in the order they were queued; separate batches may run in
any order (they can use different connections), so a caller that needs order awaits one batch
before queuing the next.

Scripts are sent with ``EVALSHA``; after a reply of ``NOSCRIPT`` (a restarted or flushed server)
each script is loaded once and the calls that got it are sent again.

The commands are packed here and written on a connection of the client's pool, and the replies are
read with the connection's own parser (hiredis when installed): redis-py's ``Pipeline`` and its
``pack_command`` cost more per command than the commands themselves on this path. What that skips
is redis-py's command layer — its response callbacks (replies come back raw, as the server sent
them) and any instrumentation that wraps ``execute_command``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["Arg", "AutoPipeline", "BatchScript"]

Arg = bytes | str | int
ReplyFuture = asyncio.Future[object]
"""What a caller awaits: the reply, or the error raised in its place."""
ItemT = TypeVar("ItemT")


@dataclass(frozen=True, slots=True)
class BatchScript(Generic[ItemT]):
    """A script that takes many calls at once: ``pack`` turns the calls (items) into the script's
    keys and arguments; the script returns a list with one reply per item, in order."""

    script: AsyncScript
    pack: Callable[[Sequence[ItemT]], tuple[list[str], list[Arg]]]


@dataclass(slots=True)
class _Call:
    """One command on the wire, and who awaits its reply."""

    command: Callable[[], Sequence[Arg]]
    """The command's arguments, made when it is sent (a script's sha can change on reload)."""
    futures: list[ReplyFuture]
    """Who awaits the reply: one caller, or (``batched``) one per item, each getting its part."""
    script: AsyncScript | None = None
    batched: bool = False

    def settle(self, reply: object) -> None:
        """Hand the reply (an error reply included) to whoever awaits it."""
        if isinstance(reply, BaseException) or not self.batched:
            for future in self.futures:
                _settle(future, reply)
        elif not isinstance(reply, list) or len(reply) != len(self.futures):
            mismatch = RuntimeError(f"a batch script answered {reply!r} to {len(self.futures)} calls")
            for future in self.futures:
                _settle(future, mismatch)
        else:
            for future, part in zip(self.futures, reply, strict=True):
                _settle(future, part)


@dataclass(slots=True)
class _Batch(Generic[ItemT]):
    """The calls of one :class:`BatchScript` queued in one iteration."""

    kind: BatchScript[ItemT]
    items: list[ItemT]
    futures: list[ReplyFuture]

    def call(self) -> _Call | None:
        """One call of the script for the items still awaited; each gets its part of the reply."""
        pairs = zip(self.items, self.futures, strict=True)
        live = [(item, future) for item, future in pairs if not future.done()]
        if not live:
            return None
        keys, args = self.kind.pack([item for item, _ in live])
        command = partial(_evalsha, self.kind.script, keys, args)
        return _Call(command, [future for _, future in live], self.kind.script, batched=True)


class AutoPipeline:
    """Batches commands per event-loop iteration into one write (see the module docs)."""

    def __init__(self, client: Redis, *, timeout: float = 5.0) -> None:
        self._client = client
        self._timeout = timeout
        self._queued: list[_Call | _Batch[Any]] = []
        self._batches: dict[int, _Batch[Any]] = {}  # id(BatchScript) -> its calls this iteration
        self._sending: set[asyncio.Task[None]] = set()

    def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> ReplyFuture:
        """Queue a script call; the future resolves with its reply (or its error)."""
        return self._queue(partial(_evalsha, script, keys, args), script)

    def batched(self, kind: BatchScript[ItemT], item: ItemT) -> ReplyFuture:
        """Queue one call of a batch script; the future resolves with this item's reply."""
        future = self._future()
        batch = self._batches.get(id(kind))
        if batch is None:
            batch = self._batches[id(kind)] = _Batch(kind, [], [])
            self._enqueue(batch)
        batch.items.append(item)
        batch.futures.append(future)
        return future

    def command(self, *args: Arg) -> ReplyFuture:
        """Queue one command as Redis spells it: ``command("XADD", stream, "*", field, value)``.
        The reply is raw (bytes, integers, lists), as the server sent it."""
        return self._queue(lambda: args)

    def _future(self) -> ReplyFuture:
        return asyncio.get_running_loop().create_future()

    def _queue(self, command: Callable[[], Sequence[Arg]], script: AsyncScript | None = None) -> ReplyFuture:
        future = self._future()
        self._enqueue(_Call(command, [future], script))
        return future

    def _enqueue(self, call: _Call | _Batch[Any]) -> None:
        if not self._queued:  # the first of this iteration: a task sends them all when it starts
            task = asyncio.get_running_loop().create_task(self._send_queued())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._queued.append(call)

    async def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        self._batches.clear()
        batch = []
        for queued_call in queued:
            call = queued_call.call() if isinstance(queued_call, _Batch) else queued_call
            if call is not None and not all(future.done() for future in call.futures):  # not all gone
                batch.append(call)
        if batch:
            await self._send(batch)

    async def _send(self, batch: list[_Call], *, reload: bool = True) -> None:
        try:
            replies = await self._execute(b"".join(_pack(call.command()) for call in batch), len(batch))
        except BaseException as error:  # the connection failed: every command in the batch failed
            for call in batch:
                call.settle(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        unknown = []
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and reload and call.script is not None:
                unknown.append(call)
            else:
                call.settle(reply)
        if unknown:
            await self._load_and_send(unknown)

    async def _execute(self, commands: bytes, count: int) -> list[object]:
        """Take a connection, write the packed commands and read their ``count`` replies, all
        within ``timeout`` seconds; an error reply is returned in its place, a connection failure
        or the timeout (``TimeoutError``) raised. Every queued call is thus settled in time."""
        async with asyncio.timeout(self._timeout):  # one bound on the whole exchange
            pool = self._client.connection_pool
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            replies: list[object] = []
            try:
                await connection.send_packed_command(commands)
                for _ in range(count):
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as error:  # the reply was an error: the connection is fine
                        replies.append(error)
            except BaseException:
                with contextlib.suppress(Exception):  # replies may be left unread: never reuse it
                    await connection.disconnect()
                raise
            finally:
                await pool.release(connection)
        return replies

    async def _load_and_send(self, batch: list[_Call]) -> None:
        """After ``NOSCRIPT`` (a restarted or flushed server): load each script once, send again."""
        try:
            for script in {id(call.script): call.script for call in batch if call.script}.values():
                script.sha = await self._client.script_load(script.script)
        except Exception as error:
            for call in batch:
                call.settle(error)
            return
        await self._send(batch, reload=False)


def _evalsha(script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Sequence[Arg]:
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def _pack(command: Sequence[Arg]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        value = arg.encode() if isinstance(arg, str) else b"%d" % arg if isinstance(arg, int) else arg
        parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
    return b"".join(parts)


def _settle(future: ReplyFuture, reply: object) -> None:
    """A reply or an error (an exception) to one caller, unless it stopped waiting."""
    if future.done():  # the caller was cancelled: nobody waits for this reply
        return
    if isinstance(reply, asyncio.CancelledError):
        future.cancel()
    elif isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)
