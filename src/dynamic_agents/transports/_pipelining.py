"""Automatic pipelining of the Redis backend's hot-path commands.

With many requests in flight, a worker's claims, completions and event writes come in bursts: each
one awaited on its own costs a socket write, a read and an event-loop wake-up. :class:`AutoPipeline`
sends the commands queued during one event-loop iteration together: the first one queued schedules
a flush for the end of the iteration, which writes everything queued until then with one write.
Each caller still awaits its own reply, and an error reaches only the command it belongs to.

Calls of a :class:`BatchScript` queued in one iteration go further: they become *one* call of
the script, which handles the whole batch inside Redis (one ``MGET`` for every key it checks, one
``XACK`` for every entry it acks…) and returns one reply per call. Calls of a
:class:`BatchCommands` become the plain commands it makes for all of them (one ``MGET`` for all
their reads, say), whose replies it shares out. A batch runs at the position of its first call.

Commands queued in one iteration run in the order they were queued. Separate batches go out in
order on one connection, but one queued while the connection is being (re)made may be overtaken,
so a caller that needs order awaits one batch before queuing the next.

Scripts are sent with ``EVALSHA``; after a reply of ``NOSCRIPT`` (a restarted or flushed server,
a new master: the script cache is not replicated) each script's ``SCRIPT LOAD`` and the calls that
got it are sent again in one write, on one connection: the server that runs them has them.

**The connection.** The pipeline keeps one connection of its own, made and set up (credentials,
database, protocol, client name, TLS) by the client's connection pool, then taken over: its
commands are packed here and written as they are flushed, and its replies parsed as they arrive
(hiredis) and handed, in order, to the futures awaiting them, with no task, pool checkout or
timeout context per batch; redis-py's command layer cost more than the commands themselves on
this path. What that skips is redis-py's response callbacks (replies come back raw, as the server
sent them) and any instrumentation that wraps ``execute_command``, such as a Sentinel
connection's turning ``READONLY`` into a reconnect. A call unanswered within the timeout fails its
connection, and every call on it, with ``TimeoutError``; a lost connection fails them with
``ConnectionError``, and so does a write refused there for want of a master (:func:`refuses_writes`:
the call that got it gets the refusal); either way the next call makes a new connection (the
pool's: through Sentinel, to the master it names then). Blocking commands must not go through it:
everything queued behind one would wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Generic, TypeVar

import hiredis
from redis._parsers import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, ReadOnlyError, ResponseError

__all__ = ["Arg", "AutoPipeline", "BatchCommands", "BatchScript", "PipelineClosedError", "refuses_writes"]

Arg = bytes | str | int
ReplyFuture = asyncio.Future[object]
"""What a caller awaits: the reply, or the error raised in its place."""
ItemT = TypeVar("ItemT")
_INCOMPLETE: Final = object()
"""What the parser returns while no whole reply has arrived (a RESP3 reply can be ``False``)."""


class PipelineClosedError(Exception):
    """A command queued after :meth:`AutoPipeline.close` (not a connection problem: no retry)."""


def refuses_writes(reply: object) -> bool:
    """Whether ``reply`` is a write refused by a server that is no master (``READONLY``: a
    replica, such as a master demoted without its connections closed, by ``REPLICAOF`` or the
    ``FAILOVER`` command) or a master short of the replicas ``min-replicas-to-write`` asks for
    (``NOREPLICAS``: one cut off from them, as an old master is once its replica is promoted). The
    command did not run; sent again on a new connection (which a Sentinel client's pool makes to
    the master Sentinel names now) it may find a master that takes it."""
    if isinstance(reply, ReadOnlyError):
        return True
    return isinstance(reply, ResponseError) and str(reply).startswith("NOREPLICAS ")


@dataclass(frozen=True, slots=True)
class BatchScript(Generic[ItemT]):
    """A script that takes many calls at once: ``pack`` turns the calls (items) into the script's
    keys and arguments; the script returns a list with one reply per item, in order."""

    script: AsyncScript
    pack: Callable[[Sequence[ItemT]], tuple[list[str], list[Arg]]]

    def call(self, items: Sequence[ItemT], futures: list[ReplyFuture]) -> _Call:
        keys, args = self.pack(items)
        return _Call(partial(_evalsha, self.script, keys, args), futures, self.script, split=_parts)


@dataclass(frozen=True, slots=True)
class BatchCommands(Generic[ItemT]):
    """Plain commands that serve many calls at once: ``pack`` turns the calls (items) into
    commands, sent together; ``unpack`` turns their replies (in order, an error reply as its
    exception) into one reply per item, in order: what its caller gets, or an exception it raises."""

    pack: Callable[[Sequence[ItemT]], list[tuple[Arg, ...]]]
    unpack: Callable[[Sequence[ItemT], list[object]], list[object]]

    def call(self, items: Sequence[ItemT], futures: list[ReplyFuture]) -> _Call:
        commands = self.pack(items)
        return _Call(
            lambda: commands, futures, split=partial(self.unpack, items), expected=len(commands), parts=[]
        )


@dataclass(slots=True)
class _Call:
    """Commands on the wire (one, or a batch's several), and who awaits their reply."""

    commands: Callable[[], Sequence[tuple[Arg, ...]]]
    """The commands' arguments, made when they are sent (a script's sha can change on reload)."""
    futures: list[ReplyFuture]
    """Who awaits the reply: one caller, or (a batch) one per item, each getting its part."""
    script: AsyncScript | None = None
    """The script it calls, while a ``NOSCRIPT`` reply should load it and send the call again."""
    split: Callable[[Any], list[object]] | None = None
    """A batch's: its reply into one part per item."""
    expected: int = 1
    """Replies it awaits, one per command; with several, the reply is the list of them all."""
    parts: list[object] | None = None
    """The replies received so far, while it awaits several."""
    blocks: float = 0.0
    """Seconds the server may hold the reply (a blocking command's own timeout), on top of the
    pipeline's timeout."""
    deadline: float = 0.0

    def settle(self, reply: object) -> None:
        """Hand the reply (an error reply included) to whoever awaits it."""
        if isinstance(reply, BaseException) or self.split is None:
            for future in self.futures:
                _settle(future, reply)
            return
        parts = self.split(reply)
        if len(parts) != len(self.futures):
            mismatch = RuntimeError(f"a batch was answered {reply!r} for {len(self.futures)} calls")
            for future in self.futures:
                _settle(future, mismatch)
            return
        for future, part in zip(self.futures, parts, strict=True):
            _settle(future, part)


@dataclass(slots=True)
class _Batch(Generic[ItemT]):
    """The calls of one batch kind queued in one iteration."""

    kind: BatchScript[ItemT] | BatchCommands[ItemT]
    items: list[ItemT]
    futures: list[ReplyFuture]

    def call(self) -> _Call | None:
        """One call for the items still awaited; each gets its part of the reply."""
        pairs = zip(self.items, self.futures, strict=True)
        live = [(item, future) for item, future in pairs if not future.done()]
        if not live:
            return None
        return self.kind.call([item for item, _ in live], [future for _, future in live])


class AutoPipeline:
    """Batches commands per event-loop iteration into one write (see the module docs).

    It keeps one connection of its own, made with the client's settings (address, credentials,
    database, protocol, TLS): :meth:`aclose` closes it."""

    def __init__(self, client: Redis, *, timeout: float = 5.0) -> None:
        self._client = client
        self._timeout = timeout
        self._queued: list[_Call | _Batch[Any]] = []
        self._batches: dict[int, _Batch[Any]] = {}  # id(BatchScript) -> its calls this iteration
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task[_Wire] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.writes = 0
        """Socket writes so far: one per batch of commands sent (one round trip)."""

    def script(
        self, script: AsyncScript, keys: Sequence[Arg], args: Sequence[Arg], *, blocks: float = 0.0
    ) -> ReplyFuture:
        """Queue a script call; the future resolves with its reply (or its error). ``blocks``: as
        for :meth:`command`, when it is queued behind a blocking command."""
        return self._queue(partial(_evalsha, script, keys, args), script, blocks)

    def batched(self, kind: BatchScript[ItemT] | BatchCommands[ItemT], item: ItemT) -> ReplyFuture:
        """Queue one call of a batch; the future resolves with this item's reply."""
        future = self._future()
        batch = self._batches.get(id(kind))
        if batch is None:
            batch = self._batches[id(kind)] = _Batch(kind, [], [])
            self._enqueue(batch)
        batch.items.append(item)
        batch.futures.append(future)
        return future

    def command(self, *args: Arg, blocks: float = 0.0) -> ReplyFuture:
        """Queue one command as Redis spells it: ``command("XADD", stream, "*", field, value)``.
        The reply is raw (bytes, integers, lists), as the server sent it. A blocking command says
        how long the server may hold its reply (``blocks`` seconds), and should have a pipeline of
        its own: the commands queued behind it wait as long."""
        return self._queue(lambda: (args,), blocks=blocks)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close for good, now: commands awaiting a reply fail with ``ConnectionError``, and any
        queued from now on with :class:`PipelineClosedError`."""
        self._closed = True
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()

    async def aclose(self) -> None:
        """:meth:`close`, and let the pipeline's own tasks (a connection being made, scripts being
        loaded) end: within the timeout, else they are cancelled."""
        self.close()
        if not self._tasks:
            return
        _, late = await asyncio.wait(list(self._tasks), timeout=self._timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    def _future(self) -> ReplyFuture:
        return asyncio.get_running_loop().create_future()

    def _queue(
        self,
        command: Callable[[], Sequence[tuple[Arg, ...]]],
        script: AsyncScript | None = None,
        blocks: float = 0.0,
    ) -> ReplyFuture:
        future = self._future()
        self._enqueue(_Call(command, [future], script, blocks=blocks))
        return future

    def _enqueue(self, call: _Call | _Batch[Any]) -> None:
        if not self._queued:  # the first of this iteration: all are sent once this iteration is over
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append(call)

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        self._batches.clear()
        calls = [c for c in map(_call_of, queued) if c is not None]
        wire = self._wire
        if wire is not None and wire.usable():
            self._write_live(wire, calls)
        elif calls:
            self._spawn(self._connect_and_send(calls))

    def _write(self, wire: _Wire, calls: list[_Call]) -> None:
        """Send ``calls`` in one write. A call whose commands cannot be packed (an argument of a
        type the protocol has no form for) fails alone: the others go out."""
        packed: list[bytes] = []
        sent: list[_Call] = []
        for call in calls:
            try:
                packed.append(b"".join(_pack(command) for command in call.commands()))
            except Exception as error:
                call.settle(error)
                continue
            sent.append(call)
        if sent:
            self.writes += 1
            wire.send(sent, b"".join(packed))

    def _write_live(self, wire: _Wire, calls: list[_Call]) -> None:
        """Those of ``calls`` someone still awaits (the others' callers gave up while waiting)."""
        live = [call for call in calls if not all(future.done() for future in call.futures)]
        if live:
            self._write(wire, live)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_and_send(self, calls: list[_Call]) -> None:
        try:
            wire = await self._connected()
        except BaseException as error:  # every call waiting for the connection fails with it
            for call in calls:
                call.settle(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        self._write_live(wire, calls)

    async def _connected(self) -> _Wire:
        """The connection, made once however many calls wait for it."""
        wire = self._wire
        if wire is not None and wire.usable():
            return wire
        if self._closed:
            raise PipelineClosedError("the pipeline was closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Wire:
        old, self._wire = self._wire, None
        if old is not None:
            old.close()
        connection = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self._timeout):
                await connection.connect()  # the client's handshake: AUTH, HELLO, SELECT, CLIENT SETNAME
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)
            raise
        wire = _Wire(_take_over(connection), self._timeout, self._noscript)
        if self._closed:  # while the connection was being made
            wire.close()
            raise PipelineClosedError("the pipeline was closed")
        self._wire = wire
        return wire

    def _noscript(self, calls: list[_Call]) -> None:
        self._spawn(self._load_and_send(calls))

    async def _load_and_send(self, calls: list[_Call]) -> None:
        """After ``NOSCRIPT`` (a restarted or flushed server, a new master): send each script's
        ``SCRIPT LOAD`` and the calls again, in one write, so the server that runs them has them
        (the client's pool may reach another one: the old master, until Sentinel demotes it). A
        load that fails leaves the calls behind it their own ``NOSCRIPT``."""
        scripts = {id(call.script): call.script for call in calls if call.script}.values()
        loads = [_Call(partial(_script_load, script), [self._future()]) for script in scripts]
        for load in loads:
            load.futures[0].add_done_callback(_retrieved)  # nobody awaits it
        for call in calls:
            call.script = None  # a second NOSCRIPT is an error, not another reload
        await self._connect_and_send([*loads, *calls])


class _Wire(asyncio.Protocol):
    """The pipeline's connection: calls are written as they are flushed, and replies parsed as they
    arrive (hiredis) and handed in order to the calls awaiting them, with no task in between.

    A call unanswered ``timeout`` seconds after it was written fails the connection, and every
    call on it, with ``TimeoutError``; a connection lost fails them with ``ConnectionError``."""

    def __init__(
        self, writer: asyncio.StreamWriter, timeout: float, noscript: Callable[[list[_Call]], None]
    ) -> None:
        self._writer = writer  # kept: collecting it would close the socket
        self._transport = transport = writer.transport
        self._timeout = timeout
        self._noscript = noscript
        self._loop = asyncio.get_running_loop()
        self._parser = hiredis.Reader(replyError=BaseParser.parse_error, notEnoughData=_INCOMPLETE)
        self._waiting: deque[_Call] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._lost = False
        transport.set_protocol(self)

    def usable(self) -> bool:
        return not self._lost and self._loop is asyncio.get_running_loop()

    def send(self, calls: list[_Call], data: bytes) -> None:
        if self._lost:  # lost while these waited for it
            for call in calls:
                call.settle(ConnectionError("Redis closed the connection"))
            return
        deadline = self._loop.time() + self._timeout
        for call in calls:
            call.deadline = deadline + call.blocks
        self._waiting.extend(calls)
        self._transport.write(data)
        if self._timer is None:
            self._timer = self._loop.call_at(self._waiting[0].deadline, self._check_timeout)

    def close(self) -> None:
        if self._loop.is_closed():  # left behind by a loop that ended: nothing can run on it now
            self._lost = True
            return
        self._transport.close()
        self._fail(ConnectionError("the pipeline was closed"))

    def data_received(self, data: bytes) -> None:
        parser, waiting = self._parser, self._waiting
        parser.feed(data)
        unknown = []
        refused: object = None
        try:
            while (reply := parser.gets()) is not _INCOMPLETE:
                if isinstance(reply, hiredis.PushNotification):
                    continue  # out of band (RESP3): not a reply to a call
                if refused is None and isinstance(reply, ResponseError) and refuses_writes(reply):
                    refused = reply
                call = waiting[0]
                if call.parts is not None:  # several commands: settled once all have replied
                    call.parts.append(reply)
                    if len(call.parts) < call.expected:
                        continue
                    reply = call.parts
                waiting.popleft()
                if call.script is not None and isinstance(reply, NoScriptError):
                    unknown.append(call)
                else:
                    call.settle(reply)
        except Exception as error:  # unreadable, or a reply nobody asked for: the stream is lost
            self._transport.abort()
            self._fail(ConnectionError(f"unreadable reply from Redis: {error!r}"))
        if refused is not None and not self._lost:  # no master to write to here: the next call
            self._transport.abort()  # makes a new connection (asking Sentinel, with its pool)
            self._fail(ConnectionError(f"Redis refused a write on this connection: {refused}"))
        if unknown:
            self._noscript(unknown)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._fail(ConnectionError(f"Redis closed the connection{reason}"))

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0].deadline  # the first is answered first: only it can be late
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_timeout)
            return
        self._transport.abort()
        self._fail(TimeoutError())  # no message: "did not answer in time", not a refused connection

    def _fail(self, error: BaseException) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for call in waiting:
            call.settle(error)


def _take_over(connection: AbstractConnection) -> asyncio.StreamWriter:
    """The socket of a connected redis-py connection, handed over to the pipeline: redis-py sees
    the connection as closed from then on (and will not close the socket behind our back). The
    writer is returned to be kept: when it is collected, asyncio closes its socket."""
    writer = connection._writer  # no public accessor; present in every redis-py 4.2+
    if writer is None:
        raise ConnectionError("the connection was closed during its handshake")
    connection._writer = connection._reader = None
    connection._parser.on_disconnect()  # type: ignore[no-untyped-call]
    return writer


def _call_of(queued: _Call | _Batch[Any]) -> _Call | None:
    """The call to send for what was queued; a batch that cannot be made into one (its ``pack``
    raised) fails its callers instead of the flush, which would leave every call waiting."""
    if not isinstance(queued, _Batch):
        return queued
    try:
        return queued.call()
    except Exception as error:
        for future in queued.futures:
            _settle(future, error)
        return None


def _evalsha(script: AsyncScript, keys: Sequence[Arg], args: Sequence[Arg]) -> tuple[tuple[Arg, ...]]:
    return (("EVALSHA", script.sha, len(keys), *keys, *args),)


def _script_load(script: AsyncScript) -> tuple[tuple[Arg, ...]]:
    source = script.script
    return (("SCRIPT", "LOAD", source if isinstance(source, bytes | str) else bytes(source)),)


def _retrieved(future: ReplyFuture) -> None:
    """Mark the outcome of a future nobody awaits as seen (asyncio logs an exception never seen)."""
    if not future.cancelled():
        future.exception()


def _parts(reply: object) -> list[object]:
    """A batch script's reply: one part per item (none if it is not a list: a mismatch)."""
    return reply if isinstance(reply, list) else []


def _pack(command: tuple[Arg, ...]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings (packed by hiredis)."""
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return packed


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
