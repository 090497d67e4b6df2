"""The round trip through Redis: request published → worker → reply observed, for five workers.

Run from the repository root (needs the ``redis-server`` binary on ``PATH``, the ``redis`` and
``agents`` extras and ``faststream[redis]`` 0.7, all in the ``dev`` extra)::

    python benchmarks/round_trip.py                    # 2,000 requests per measurement (agno: 200), 3 rounds
    python benchmarks/round_trip.py --requests 5000 --rounds 5 --json out.json
    python benchmarks/round_trip.py --agno-requests 500 --agno-db sqlite
    python benchmarks/round_trip.py --quick            # a smoke run: 500 requests (agno: 100), 1 round
    python benchmarks/round_trip.py --profile /tmp/p   # cProfile the workers: /tmp/p/<worker>-r<round>.prof

One private ``redis-server`` is started on a free 127.0.0.1 port without persistence
(``--appendonly no --save ""``); only that process is stopped at the end. This process is the load
generator; each worker runs in a process of its own, started with ``subprocess`` (this same file with
``--serve VARIANT``) and steered over its stdin / stdout.

**Load.** ``AgentRequestEvent``\\ s (about 200 characters of content, source ``discord``, 1,024
sessions = channels, each session answered on one of 16 reply streams), encoded with
``EventCodec().encode_entry`` (``{"__data__": FastStream binary envelope}``, which all three kinds of
worker read) before the clock starts, and ``XADD``\\ ed to ``agent:requests`` so that exactly K are
in flight: K at the start, then one more for each reply observed. The generator reads the 16 reply
streams with ``XREAD BLOCK`` on its own connection; a request's latency is the time from just before
its ``XADD`` is sent to the return of the ``XREAD`` that carried its reply. Throughput is N / (last
reply observed - first request sent). After the last reply the generator waits 0.3 s, reads the
reply streams once more, and checks that every request was answered exactly once (replies decoded
with ``EventCodec().decode_entry(fields, AgentResponseEvent)``: right ``request_id``, status
``completed``) and that nothing is left pending in the group; any failure exits with status 1.

**Workers** (each in a fresh process, on a flushed server):

* ``minimal``: ``AgentWorker`` over ``RedisStreamsTransport`` / ``RedisCoordinator``, an
  ``EventRouter`` with a default target, ``FunctionExecutor(lambda target, request: "ok")``,
  ``WorkerSettings(events=False, concurrency=64, batch_size=64)``, the rest default;
* ``with events``: the same with ``events=True`` (lifecycle and progress events on ``agent:events``);
* ``raw``: redis-py, nothing else: ``XREADGROUP COUNT 64 BLOCK 1000``, then one pipeline per batch
  with an ``XADD`` of each reply to its request's reply stream and one ``XACK`` of the batch. It
  decodes minimally: ``decode_envelope`` of ``__data__`` and ``json.loads`` of the body (no pydantic)
  for ``id``, ``session_id`` and ``reply_stream``; its reply is an ``AgentResponseEvent``-shaped
  dict, ``json.dumps``\\ ed and wrapped with ``encode_envelope``;
* ``faststream``: FastStream 0.7 written the ordinary way: ``RedisBroker(url, logger=None)``,
  ``@broker.subscriber(stream=StreamSub("agent:requests", group=..., consumer=..., last_id="0"))``
  on ``async def handle(request: AgentRequestEvent)``, which builds an ``AgentResponseEvent`` and
  ``await broker.publish(reply, stream=request.reply_stream)``. ``logger=None`` turns off its
  per-message access log (two INFO lines per message on stdout by default): the other workers log
  nothing per message either;
* ``agno``: the ``minimal`` worker with the library's agent stack instead of the no-op: executor
  ``AgnoExecutor(AgentRuntime(InMemorySpecStore(), ToolRegistry(), RouterModels(llm), db=...))``
  running ``AgentSpec(id="assistant", model="bench-mock", instructions="Answer in one word.")``: a
  fresh agno ``Agent`` per request, its model agno's ``LiteLLM`` through the library's ``LLMRouter``
  (``mock_llm_router({"bench-mock": "ok"})``: one litellm deployment with ``mock_response="ok"``,
  no network), so the reply's content is the model's ``ok``. Sessions in agno's ``InMemoryDb``
  (``--agno-db sqlite``: ``session_db`` SQLite in a temporary directory; ``none``: no db).

Each worker gets a warm-up (256 requests at 64 in flight), then N requests at 1 in flight, then N at
64; the agno worker gets ``--agno-requests`` (200; capped at N) instead, its runs costing ~20x the
CPU. Rounds interleave the workers (the order rotates each round); ratios are taken within a round
and the median of the per-round ratios is reported, with the median of each figure.

**Redis work.** Before each measurement ``CONFIG RESETSTAT``, after it ``INFO commandstats``:
``server calls/req`` is every call the server counted (including the commands Lua scripts run inside
Redis) minus the generator's own ``XADD``\\ s and ``XREAD``\\ s (counted on its client), per answered
request. The worker process counts, in redis-py's connection class and in the library's own
packer and writer, the commands it sends (``sent/req``: an ``EVALSHA`` is one) and the writes to
its sockets (``round trips/req``: a pipeline, or a batch of the library's, is one). The
critical-path round trips come from reading what each worker issues per request; ``round
trips/req`` at 1 in flight checks them.

**CPU.** The worker reports its own CPU time (``time.process_time()``) at each measurement's start
and end, and at exit; ``redis`` is the server's ``used_cpu_user + used_cpu_sys`` (``INFO cpu``) over
the measurement, ``generator`` this process's CPU time from the first request sent to the last reply
observed; all per answered request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

# Before litellm or agno are imported (the agno worker's process imports both): litellm must not try
# to download its model cost map, agno must not send telemetry.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AGNO_TELEMETRY", "false")

import _common
import pydantic
import redis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection

from dynamic_agents import __version__ as library_version
from dynamic_agents.events import (
    SCHEMA_VERSION,
    AgentRequestEvent,
    AgentResponseEvent,
    EventCodec,
    ResponseStatus,
    StreamNames,
    Target,
    TargetType,
    decode_envelope,
    encode_envelope,
)
from dynamic_agents.exceptions import EventError
from dynamic_agents.testing import RedisServer

NAMES: Final = StreamNames()
REQUESTS: Final = NAMES.requests
GROUP: Final = "dynamic-agents"  # WorkerSettings' default group, used by every worker
REPLY_STREAMS: Final = 16
SESSIONS: Final = 1024
USERS: Final = 4096
CONTENT_CHARS: Final = 200
BUDGET: Final = 64  # the larger in-flight level, and every worker's read count / concurrency
WARMUP: Final = 256
GRACE_SECONDS: Final = 0.3
STALL_SECONDS: Final = 30.0
MARK: Final = "@@round-trip "
SCRIPT: Final = str(Path(__file__).resolve())
VARIANTS: Final = ("minimal", "events", "raw", "faststream", "agno")
LABELS: Final = {
    "minimal": "AgentWorker minimal",
    "events": "AgentWorker with events",
    "raw": "raw redis-py",
    "faststream": "FastStream 0.7",
    "agno": "AgentWorker + agno Agent",
}
AGNO_MODEL: Final = "bench-mock"  # the LLMRouter's model group: one litellm mock_response deployment
AGNO_INSTRUCTIONS: Final = "Answer in one word."
# A real agent run costs the worker ~10-20 ms of CPU (agno + litellm's Router), 20x the bare worker:
# the agno worker gets fewer requests per measurement, so that the default run stays near 2 minutes.
AGNO_REQUESTS: Final = 200
AGNO_QUICK_REQUESTS: Final = 100
AGNO_DBS: Final = {"memory": "agno's InMemoryDb", "sqlite": "SQLite (session_db)", "none": "no db"}
# Round trips from the worker's read to the reply entry existing, by reading the code (see README).
CRITICAL_PATH: Final = {
    "minimal": (
        2,
        "XREADGROUP with the claim script behind it (EVALSHA: XPENDING, XRANGE, SET NX lease, "
        "MGET lease/record/cancel), EVALSHA complete (+ lease release); 3 for a request read in a "
        "batch of more than 8, whose claim goes out as plain commands [SET NX, MGET]",
    ),
    "events": (
        2,
        "minimal's 2; the 4 events (accepted, started, delta, completed) follow in the background "
        "(one EVALSHA per batch)",
    ),
    "raw": (2, "XREADGROUP, pipeline [XADD reply, XACK]"),
    "faststream": (2, "XREADGROUP, XADD reply (its XACK follows, off the path)"),
    "agno": (2, "minimal's 2 (the agent run itself sends nothing to Redis)"),
}
ADMIN_COMMANDS: Final = frozenset({"info", "config|resetstat"})
CORPUS: Final = (
    "the agent could you summarise this thread please and list the open questions about deploy "
    "release staging rollback config redis stream worker latency budget tomorrow meeting notes "
    "draft reply customer ticket priority bug regression test failing on main since yesterday"
)


class BenchmarkError(Exception):
    """A check failed (a request not answered exactly once, a worker died): exit status 1."""


# =================================================================================================
# The worker process (``--serve VARIANT``)
# =================================================================================================


@dataclass
class Counters:
    """What this process's redis-py connections sent: commands by name, and socket writes."""

    commands: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    gc_collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    """The garbage collector's runs by generation (young, middle, full)."""
    gc_seconds: float = 0.0
    """Time spent in them (``gc.callbacks``: from start to stop of each collection)."""


def count_collections(counters: Counters) -> None:
    """Count the garbage collector's runs and time them (``gc.callbacks``)."""
    started = 0.0

    def callback(phase: str, info: Mapping[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            counters.gc_seconds += time.perf_counter() - started
            counters.gc_collections[info["generation"]] += 1

    gc.callbacks.append(callback)


def install_counters() -> Counters:
    """Count in redis-py's asyncio connection class (every client of the process uses it,
    FastStream's included): ``pack_command`` once per command (a pipeline packs each of its
    commands), ``send_packed_command`` once per write, i.e. per round trip (a pipeline is one);
    and in the library's auto-pipeline, which packs and writes on a connection of its own."""
    counters = Counters()
    pack = AbstractConnection.pack_command
    send = AbstractConnection.send_packed_command

    def counting_pack(self: AbstractConnection, *args: Any) -> list[bytes]:
        name = args[0]
        text = name.decode() if isinstance(name, bytes) else str(name)
        counters.commands[text.split(" ", 1)[0].lower()] += 1
        return pack(self, *args)

    async def counting_send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        counters.writes += 1
        await send(self, command, check_health)

    AbstractConnection.pack_command = counting_pack  # type: ignore[method-assign]
    AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]

    def count(name: str) -> None:
        counters.commands[name] += 1

    def count_write() -> None:
        counters.writes += 1

    _common.count_library_commands(count, count_write)
    return counters


def emit(kind: str, payload: Mapping[str, Any]) -> None:
    print(MARK + json.dumps({"kind": kind, **payload}), flush=True)


class Served(Protocol):
    @property
    def answered(self) -> int: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


class AgentWorkerServed:
    """``AgentWorker`` with a no-op ``FunctionExecutor``; ``events`` switches lifecycle events."""

    def __init__(self, url: str, *, events: bool) -> None:
        from dynamic_agents.execution import FunctionExecutor
        from dynamic_agents.routing import EventRouter
        from dynamic_agents.transports import RedisStreamsTransport
        from dynamic_agents.worker import AgentWorker, WorkerSettings

        self.transport = RedisStreamsTransport.from_url(url)
        self.settings = WorkerSettings(
            events=events, consumer="bench-agent-worker", concurrency=BUDGET, batch_size=BUDGET
        )
        self.worker = AgentWorker(
            self.transport,
            self.transport.coordinator(),
            EventRouter(default=Target(type=TargetType.AGENT, id="assistant")),
            FunctionExecutor(lambda target, request: "ok", name="noop"),
            settings=self.settings,
        )

    @property
    def answered(self) -> int:
        return self.worker.stats.completed

    async def start(self) -> None:
        await self.transport.ensure_group(REQUESTS, self.settings.group)
        await self.worker.__aenter__()

    async def aclose(self) -> None:
        await self.worker.stop()
        await self.transport.aclose()


class RawServed:
    """redis-py only: XREADGROUP COUNT 64 BLOCK 1000; per batch one pipeline: XADD each reply, XACK."""

    def __init__(self, url: str) -> None:
        self.client = Redis.from_url(url, decode_responses=False)
        self.consumer = "bench-raw"
        self._answered = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def answered(self) -> int:
        return self._answered

    async def start(self) -> None:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
            await self.client.xgroup_create(REQUESTS, GROUP, id="0", mkstream=True)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        client = self.client
        while True:
            response: Any = await client.xreadgroup(
                GROUP, self.consumer, {REQUESTS: ">"}, count=BUDGET, block=1000
            )
            if not response:
                continue
            entries: list[tuple[bytes, dict[bytes, bytes]]] = [e for _, batch in response for e in batch]
            pipe = client.pipeline(transaction=False)
            for _, fields in entries:
                request = json.loads(decode_envelope(fields[b"__data__"]).body)
                pipe.xadd(request["reply_stream"], {b"__data__": raw_reply(request)})
            pipe.xack(REQUESTS, GROUP, *(entry_id for entry_id, _ in entries))
            await pipe.execute()
            self._answered += len(entries)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()


def raw_reply(request: Mapping[str, Any]) -> bytes:
    """An ``AgentResponseEvent``-shaped reply in FastStream's envelope, built without pydantic."""
    response_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "id": response_id,
            "request_id": request["id"],
            "timestamp": datetime.now(UTC).isoformat(),
            "content": "ok",
            "content_type": "text",
            "status": "completed",
            "session_id": request["session_id"],
            "agent_id": request.get("agent_id"),
        },
        separators=(",", ":"),
    ).encode()
    return encode_envelope(body, {"correlation_id": response_id, "content-type": "application/json"})


class FastStreamServed:
    """FastStream 0.7 the ordinary way: a subscriber taking the pydantic model, ``broker.publish``."""

    def __init__(self, url: str) -> None:
        from faststream.redis import RedisBroker, StreamSub

        # None is FastStream's documented way to turn the access log off (its typed kwargs say otherwise)
        self.broker = RedisBroker(url, logger=None)  # type: ignore[arg-type]
        self._answered = 0
        broker = self.broker

        @broker.subscriber(stream=StreamSub(REQUESTS, group=GROUP, consumer="bench-faststream", last_id="0"))
        async def handle(request: AgentRequestEvent) -> None:
            reply = AgentResponseEvent(
                request_id=request.id,
                session_id=request.session_id,
                content="ok",
                agent_id=request.agent_id,
            )
            await broker.publish(reply, stream=request.reply_stream)
            self._answered += 1

    @property
    def answered(self) -> int:
        return self._answered

    async def start(self) -> None:
        await self.broker.start()

    async def aclose(self) -> None:
        await self.broker.stop()


class AgnoServed:
    """The minimal ``AgentWorker`` with the library's agent stack as its executor: ``AgnoExecutor``
    over an ``AgentRuntime`` (in-memory spec store, no tools) running the spec ``assistant``, whose
    model is an agno ``LiteLLM`` through the library's ``LLMRouter`` to a litellm ``mock_response``
    deployment answering ``ok``. Sessions (``db``): ``memory`` = agno's ``InMemoryDb``, ``sqlite`` =
    ``session_db("sqlite:///…")`` (agno's ``AsyncSqliteDb``) in a temporary directory, ``none`` = no
    db (``AgentRuntime``'s default: agno stores nothing)."""

    def __init__(self, url: str, db: str) -> None:
        from dynamic_agents.transports import RedisStreamsTransport
        from dynamic_agents.worker import WorkerSettings

        self.db = db
        self.transport = RedisStreamsTransport.from_url(url)
        self.settings = WorkerSettings(
            events=False, consumer="bench-agno", concurrency=BUDGET, batch_size=BUDGET
        )
        self.directory = tempfile.TemporaryDirectory(prefix="round-trip-agno-")
        self.worker: Any = None
        self.runtime: Any = None
        self.llm: Any = None

    @property
    def answered(self) -> int:
        return int(self.worker.stats.completed)

    async def start(self) -> None:
        from dynamic_agents.agents import (
            AgentRuntime,
            AgentSpec,
            AgnoExecutor,
            InMemorySpecStore,
            RouterModels,
            ToolRegistry,
            session_db,
        )
        from dynamic_agents.routing import EventRouter
        from dynamic_agents.testing import mock_llm_router
        from dynamic_agents.worker import AgentWorker

        db: Any = None
        if self.db == "memory":
            from agno.db.in_memory import InMemoryDb

            db = InMemoryDb()
        elif self.db == "sqlite":
            db = session_db(f"sqlite:///{Path(self.directory.name) / 'sessions.db'}")
        self.llm = await mock_llm_router({AGNO_MODEL: "ok"})
        self.runtime = AgentRuntime(InMemorySpecStore(), ToolRegistry(), RouterModels(self.llm), db=db)
        await self.runtime.agents.create(
            AgentSpec.from_dict({"id": "assistant", "model": AGNO_MODEL, "instructions": AGNO_INSTRUCTIONS})
        )
        self.worker = AgentWorker(
            self.transport,
            self.transport.coordinator(),
            EventRouter(default=Target(type=TargetType.AGENT, id="assistant")),
            AgnoExecutor(self.runtime),
            settings=self.settings,
        )
        await self.transport.ensure_group(REQUESTS, self.settings.group)
        await self.worker.__aenter__()

    async def aclose(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        if self.runtime is not None:
            await self.runtime.aclose()
        if self.llm is not None:
            await self.llm.aclose()
        await self.transport.aclose()
        self.directory.cleanup()


def served(variant: str, url: str, agno_db: str = "memory") -> Served:
    if variant == "minimal":
        return AgentWorkerServed(url, events=False)
    if variant == "events":
        return AgentWorkerServed(url, events=True)
    if variant == "raw":
        return RawServed(url)
    if variant == "faststream":
        return FastStreamServed(url)
    if variant == "agno":
        return AgnoServed(url, agno_db)
    raise ValueError(f"unknown variant {variant!r}")


async def stdin_lines() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode().strip()


async def serve(variant: str, url: str, agno_db: str = "memory", gc_threshold: int | None = None) -> None:
    """Run one worker; answer ``snapshot`` with CPU time and Redis counts, ``stop`` (or EOF) ends.
    ``gc_threshold``: the collector's first threshold for this process (the others kept)."""
    counters = install_counters()
    count_collections(counters)
    if gc_threshold is not None:
        gc.set_threshold(gc_threshold, *gc.get_threshold()[1:])
    worker = served(variant, url, agno_db)
    await worker.start()
    started = time.process_time()
    emit("ready", {"pid": os.getpid()})

    def snapshot() -> dict[str, Any]:
        return {
            "cpu": time.process_time(),
            "answered": worker.answered,
            "commands": dict(counters.commands),
            "writes": counters.writes,
            "gc_collections": list(counters.gc_collections),
            "gc_seconds": counters.gc_seconds,
        }

    async for command in stdin_lines():
        if command == "snapshot":
            emit("snapshot", snapshot())
        elif command == "stop":
            break
    await worker.aclose()
    emit("stopped", {"cpu_seconds": time.process_time() - started, **snapshot()})


# =================================================================================================
# The load generator (this process)
# =================================================================================================


class CountingConnection(Connection):
    """The generator's own commands by name (subtracted from the server's counts)."""

    sent: ClassVar[Counter[str]] = Counter()

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        CountingConnection.sent[(name.decode() if isinstance(name, bytes) else str(name)).lower()] += 1
        return super().pack_command(*args)


class WorkerProcess:
    """One worker in its own process: ``ready`` once consuming, ``snapshot`` on demand, ``stop``."""

    def __init__(self, variant: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.variant = variant
        self.process = process
        self.log = log

    @classmethod
    async def start(
        cls,
        variant: str,
        url: str,
        profile: Path | None = None,
        agno_db: str = "memory",
        gc_threshold: int | None = None,
    ) -> WorkerProcess:
        descriptor, name = tempfile.mkstemp(prefix=f"round-trip-{variant}-", suffix=".log")
        extra = ["--profile", str(profile)] if profile is not None else []
        if variant == "agno":
            extra += ["--agno-db", agno_db]
        if gc_threshold is not None:
            extra += ["--gc-threshold", str(gc_threshold)]
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                SCRIPT,
                "--serve",
                variant,
                "--url",
                url,
                *extra,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=descriptor,  # the worker's warnings and tracebacks, shown if it fails
            )
        finally:
            os.close(descriptor)
        worker = cls(variant, process, Path(name))
        try:
            await worker.expect("ready", timeout=60)
        except (BenchmarkError, TimeoutError) as error:
            tail = worker.log_tail()
            worker.close()
            raise BenchmarkError(f"worker {variant} did not start: {error!r}{tail}") from None
        except BaseException:
            worker.close()
            raise
        return worker

    def log_tail(self) -> str:
        try:
            tail = self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""
        return f"\n--- worker {self.variant} stderr (end) ---\n{tail}" if tail.strip() else ""

    async def expect(self, kind: str, timeout: float = 30) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.process.stdout.readline()).decode()
                if not line:
                    await self.process.wait()
                    raise BenchmarkError(
                        f"worker {self.variant} exited ({self.process.returncode}) waiting for {kind!r}"
                    )
                if line.startswith(MARK):
                    message: dict[str, Any] = json.loads(line.removeprefix(MARK))
                    if message["kind"] == kind:
                        return message

    async def tell(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()

    async def snapshot(self) -> dict[str, Any]:
        await self.tell("snapshot")
        return await self.expect("snapshot")

    async def stop(self) -> dict[str, Any]:
        await self.tell("stop")
        final = await self.expect("stopped")
        await self.process.wait()
        return final

    def close(self) -> None:
        """Kill the worker if it still runs (only this process), and remove its log."""
        if self.process.returncode is None:
            self.process.kill()
        self.log.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Prepared:
    request_id: str
    fields: dict[str, bytes]


def make_requests(n: int, rng: random.Random, tag: str) -> tuple[list[Prepared], list[str]]:
    """N encoded requests over 1,024 sessions, each session answered on one of 16 reply streams."""
    vocabulary = CORPUS.split()
    codec = EventCodec()
    streams = [NAMES.responses("bench", f"{tag}-{k:02d}") for k in range(REPLY_STREAMS)]
    prepared = []
    for _ in range(n):
        words: list[str] = []
        while sum(len(word) + 1 for word in words) < CONTENT_CHARS:
            words.append(rng.choice(vocabulary))
        session = rng.randrange(SESSIONS)
        channel = str(900_000_000_000_000_000 + session)
        user = str(800_000_000_000_000_000 + rng.randrange(USERS))
        event = AgentRequestEvent(
            source="discord",
            source_id=channel,
            user_id=user,
            user_name=f"user-{user[-6:]}",
            content=" ".join(words)[:CONTENT_CHARS],
            agent_id="assistant",
            session_id=f"discord:{channel}",
            reply_stream=streams[session % REPLY_STREAMS],
            metadata={"guild_id": "912345678901234567", "message_id": str(rng.getrandbits(60))},
        )
        prepared.append(Prepared(event.id, codec.encode_entry(event)))
    return prepared, streams


@dataclass
class Drive:
    seconds: float
    latencies: list[float]  # seconds, one per request
    cpu_seconds: float  # the generator's own, from the first request sent to the last reply observed


def _entries(response: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    if not response:
        return []
    if isinstance(response, dict):
        return list(response.items())
    return [(name, entries) for name, entries in response]


async def drive(
    pub: Redis, sub: Redis, requests: Sequence[Prepared], streams: Sequence[str], in_flight: int
) -> Drive:
    """Keep ``in_flight`` requests outstanding until all are answered; check each answered once."""
    n = len(requests)
    index = {request.request_id: i for i, request in enumerate(requests)}
    sent_at = [0.0] * n
    observed: list[tuple[float, dict[bytes, bytes]]] = []
    last_ids: dict[Any, Any] = dict.fromkeys(streams, b"0-0")
    credits = min(in_flight, n)
    wake = asyncio.Event()
    wake.set()

    async def publisher() -> None:
        nonlocal credits
        following = 0
        while following < n:
            await wake.wait()
            wake.clear()
            k = min(credits, n - following)
            if k <= 0:
                continue
            credits -= k
            batch = requests[following : following + k]
            now = time.perf_counter()
            for i in range(following, following + k):
                sent_at[i] = now
            following += k
            if k == 1:
                await pub.xadd(REQUESTS, batch[0].fields)  # type: ignore[arg-type]
            else:
                pipe = pub.pipeline(transaction=False)
                for request in batch:
                    pipe.xadd(REQUESTS, request.fields)  # type: ignore[arg-type]
                await pipe.execute()

    async def read(block: int | None) -> int:
        response = await sub.xread(last_ids, count=1000, block=block)
        now = time.perf_counter()
        got = 0
        for name, entries in _entries(response):
            for _, fields in entries:
                observed.append((now, fields))
            got += len(entries)
            if entries:
                key = name.decode() if isinstance(name, bytes) else name
                last_ids[key] = entries[-1][0]
        return got

    cpu_started = time.process_time()
    publishing = asyncio.get_running_loop().create_task(publisher())
    try:
        received = 0
        progress_at = time.monotonic()
        while received < n:
            got = await read(1000)
            if got:
                received += got
                credits += got
                wake.set()
                progress_at = time.monotonic()
            elif time.monotonic() - progress_at > STALL_SECONDS:
                raise BenchmarkError(f"no reply for {STALL_SECONDS:.0f}s: {received} of {n} answered")
            if publishing.done() and publishing.exception() is not None:
                raise BenchmarkError(f"publishing failed: {publishing.exception()!r}")
        finished = observed[-1][0]
        cpu_seconds = time.process_time() - cpu_started
    finally:
        if not publishing.done():
            publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
    await asyncio.sleep(GRACE_SECONDS)
    while await read(None):  # late duplicates, if any
        pass

    codec = EventCodec()
    latencies = [math.nan] * n
    problems: list[str] = []
    for seen, fields in observed:
        try:
            reply = codec.decode_entry(fields, AgentResponseEvent).event
        except EventError as error:
            problems.append(f"undecodable reply: {error}")
            continue
        i = index.get(reply.request_id, -1)
        if i < 0:
            problems.append(f"reply to an unknown request {reply.request_id}")
        elif not math.isnan(latencies[i]):
            problems.append(f"request {reply.request_id} answered twice")
        elif reply.status != ResponseStatus.COMPLETED or reply.content != "ok":
            problems.append(f"request {reply.request_id} answered {reply.status}: {reply.error_message}")
        else:
            latencies[i] = seen - sent_at[i]
    missing = sum(1 for latency in latencies if math.isnan(latency))
    if missing:
        problems.append(f"{missing} requests without a reply")
    if problems:
        raise BenchmarkError(f"{len(problems)} problems, first: " + "; ".join(problems[:5]))
    return Drive(finished - sent_at[0], latencies, cpu_seconds)


@dataclass
class Measurement:
    """One worker at one in-flight level."""

    variant: str
    in_flight: int
    requests: int
    per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_us_per_req: float
    redis_cpu_us_per_req: float
    generator_cpu_us_per_req: float
    server_calls_per_req: float
    top_level_per_req: float
    round_trips_per_req: float
    gc_us_per_req: float
    """The worker's time in the garbage collector, per request."""
    gc_young_per_1k: float
    gc_middle_per_1k: float
    gc_full_per_1k: float
    """The collector's runs per 1,000 requests, by generation."""
    server_calls_by_command: dict[str, float]
    top_level_by_command: dict[str, float]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest rank."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


async def read_server_calls(admin: Redis) -> Counter[str]:
    info: Mapping[str, Any] = await admin.info("commandstats")
    calls: Counter[str] = Counter()
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        if name not in ADMIN_COMMANDS and isinstance(value, dict):
            calls[name] = int(value["calls"])
    return calls


async def redis_cpu(admin: Redis) -> float:
    info: Mapping[str, Any] = await admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(
    admin: Redis,
    pub: Redis,
    sub: Redis,
    worker: WorkerProcess,
    requests: Sequence[Prepared],
    streams: Sequence[str],
    in_flight: int,
) -> Measurement:
    n = len(requests)
    gc.collect()
    await admin.config_resetstat()
    CountingConnection.sent.clear()
    before = await worker.snapshot()
    redis_before = await redis_cpu(admin)
    result = await drive(pub, sub, requests, streams, in_flight)
    redis_after = await redis_cpu(admin)
    server = await read_server_calls(admin)
    after = await worker.snapshot()
    pending = await admin.xpending(REQUESTS, GROUP)
    if pending["pending"]:
        raise BenchmarkError(f"{worker.variant}: {pending['pending']} requests still pending after replies")
    answered = after["answered"] - before["answered"]
    if answered != n:
        raise BenchmarkError(f"{worker.variant}: the worker counts {answered} answered of {n}")
    server.subtract(CountingConnection.sent)  # the generator's XADDs and XREADs
    server_calls = {name: count / n for name, count in server.items() if count > 0}
    commands: Counter[str] = Counter(after["commands"])
    commands.subtract(before["commands"])
    top_level = {name: count / n for name, count in commands.items() if count > 0}
    latencies = sorted(result.latencies)
    return Measurement(
        variant=worker.variant,
        in_flight=in_flight,
        requests=n,
        per_s=n / result.seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_ms=statistics.fmean(latencies) * 1000,
        cpu_us_per_req=(after["cpu"] - before["cpu"]) / n * 1e6,
        redis_cpu_us_per_req=(redis_after - redis_before) / n * 1e6,
        generator_cpu_us_per_req=result.cpu_seconds / n * 1e6,
        server_calls_per_req=sum(server_calls.values()),
        top_level_per_req=sum(top_level.values()),
        round_trips_per_req=(after["writes"] - before["writes"]) / n,
        gc_us_per_req=(after["gc_seconds"] - before["gc_seconds"]) / n * 1e6,
        gc_young_per_1k=(after["gc_collections"][0] - before["gc_collections"][0]) / n * 1000,
        gc_middle_per_1k=(after["gc_collections"][1] - before["gc_collections"][1]) / n * 1000,
        gc_full_per_1k=(after["gc_collections"][2] - before["gc_collections"][2]) / n * 1000,
        server_calls_by_command=dict(sorted(server_calls.items(), key=lambda item: -item[1])),
        top_level_by_command=dict(sorted(top_level.items(), key=lambda item: -item[1])),
    )


@dataclass
class WorkerRun:
    variant: str
    round: int
    measurements: dict[int, Measurement]
    worker_cpu_seconds: float
    worker_answered: int


async def run_worker(
    variant: str,
    round_no: int,
    url: str,
    admin: Redis,
    n: int,
    rng: random.Random,
    profile_dir: Path | None = None,
    agno_db: str = "memory",
    gc_threshold: int | None = None,
) -> WorkerRun:
    await admin.flushall()
    tag = f"r{round_no}"
    warmup, warmup_streams = make_requests(WARMUP, rng, f"{tag}w")
    loads = {in_flight: make_requests(n, rng, f"{tag}k{in_flight}") for in_flight in (1, BUDGET)}
    pub = Redis.from_url(url, decode_responses=False, connection_class=CountingConnection)
    sub = Redis.from_url(url, decode_responses=False, connection_class=CountingConnection)
    profile = profile_dir / f"{variant}-r{round_no}.prof" if profile_dir is not None else None
    try:
        worker = await WorkerProcess.start(variant, url, profile, agno_db, gc_threshold)
        try:
            await measure(admin, pub, sub, worker, warmup, warmup_streams, BUDGET)
            measurements = {
                in_flight: await measure(admin, pub, sub, worker, requests, streams, in_flight)
                for in_flight, (requests, streams) in loads.items()
            }
            final = await worker.stop()
        except (BenchmarkError, TimeoutError) as error:
            message = str(error) or type(error).__name__
            raise BenchmarkError(
                f"{LABELS[variant]}, round {round_no}: {message}{worker.log_tail()}"
            ) from None
        finally:
            worker.close()
    finally:
        await pub.aclose()
        await sub.aclose()
    return WorkerRun(variant, round_no, measurements, final["cpu_seconds"], final["answered"])


# -- reporting ------------------------------------------------------------------------------------


def machine(redis_version: str) -> dict[str, Any]:
    return _common.machine(
        redis_server=redis_version,
        redis_py=redis.__version__,
        hiredis=_installed("hiredis"),
        faststream=metadata.version("faststream"),
        pydantic=pydantic.VERSION,
        agno=metadata.version("agno"),
        litellm=metadata.version("litellm"),
        dynamic_agents=library_version,
    )


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


FIGURES: Final = (
    "per_s",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "cpu_us_per_req",
    "redis_cpu_us_per_req",
    "generator_cpu_us_per_req",
    "server_calls_per_req",
    "top_level_per_req",
    "round_trips_per_req",
)
GC_FIGURES: Final = ("gc_us_per_req", "gc_young_per_1k", "gc_middle_per_1k", "gc_full_per_1k")
"""Reported as the mean over the rounds: a full collection is a rare lump (tens of ms) that a
median would leave out."""


def summarise(runs: Sequence[WorkerRun], in_flight: int) -> dict[str, float]:
    """Each figure of one worker at one in-flight level over the rounds: the median of
    ``FIGURES``, the mean of ``GC_FIGURES``."""
    by_name: dict[str, Callable[[list[float]], float]] = dict.fromkeys(FIGURES, statistics.median)
    by_name |= dict.fromkeys(GC_FIGURES, statistics.fmean)
    return {
        name: aggregate([float(getattr(run.measurements[in_flight], name)) for run in runs])
        for name, aggregate in by_name.items()
    }


def ratio(
    by_round: Mapping[int, Mapping[str, WorkerRun]], top: str, bottom: str, in_flight: int, figure: str
) -> tuple[float, list[float]]:
    """The median over the rounds of ``top / bottom`` (each round's ratio), and the ratios."""
    values = [
        float(getattr(runs[top].measurements[in_flight], figure))
        / float(getattr(runs[bottom].measurements[in_flight], figure))
        for runs in by_round.values()
    ]
    return statistics.median(values), values


def report(
    by_variant: Mapping[str, Sequence[WorkerRun]], by_round: Mapping[int, Mapping[str, WorkerRun]]
) -> dict[str, Any]:
    """Print the tables and return the summary for ``--json``."""
    summary = {
        variant: {str(in_flight): summarise(runs, in_flight) for in_flight in (1, BUDGET)}
        for variant, runs in by_variant.items()
    }

    def table(header: str, row: Callable[[str, int, Mapping[str, float]], str], *above: str) -> None:
        """One line per worker and in-flight level, under ``above`` and ``header``."""
        rows = [
            row(variant, in_flight, summary[variant][str(in_flight)]).rstrip()
            for variant in by_variant
            for in_flight in (1, BUDGET)
        ]
        print("\n".join([*above, header, "-" * len(header), *rows]))

    table(
        f"{'worker':<24} {'in flight':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   "
        f"{'CPU µs/req: worker':>18} {'redis':>6} {'generator':>9}",
        lambda variant, in_flight, f: (
            f"{LABELS[variant]:<24} {in_flight:>9} {f['per_s']:>8,.0f} {f['p50_ms']:>8.3f} "
            f"{f['p99_ms']:>8.3f}   {f['cpu_us_per_req']:>18.0f} {f['redis_cpu_us_per_req']:>6.0f} "
            f"{f['generator_cpu_us_per_req']:>9.0f}"
        ),
    )
    table(
        f"{'worker':<24} {'in flight':>9} {'GC µs/req':>9}   "
        f"{'collections per 1,000 requests: young':>38} {'middle':>6} {'full':>5}",
        lambda variant, in_flight, f: (
            f"{LABELS[variant]:<24} {in_flight:>9} {f['gc_us_per_req']:>9.1f}   "
            f"{f['gc_young_per_1k']:>38.1f} {f['gc_middle_per_1k']:>6.1f} {f['gc_full_per_1k']:>5.2f}"
        ),
        "",
        "the worker's garbage collector (gc.callbacks in the worker process; mean of the rounds):",
    )
    table(
        f"{'worker':<24} {'in flight':>9} {'server calls/req':>16} {'sent/req':>9} "
        f"{'round trips/req':>15} {'critical path':>13}",
        lambda variant, in_flight, f: (
            f"{LABELS[variant]:<24} {in_flight:>9} {f['server_calls_per_req']:>16.2f} "
            f"{f['top_level_per_req']:>9.2f} {f['round_trips_per_req']:>15.2f} "
            f"{CRITICAL_PATH[variant][0] if in_flight == 1 else '':>13}"
        ),
        "",
    )

    print("\nby command, per answered request (last round; server: every call, those inside scripts too):")
    for variant, runs in by_variant.items():
        for in_flight in (1, BUDGET):
            m = runs[-1].measurements[in_flight]
            server = ", ".join(f"{name} {count:.2f}" for name, count in m.server_calls_by_command.items())
            sent = ", ".join(f"{name} {count:.2f}" for name, count in m.top_level_by_command.items())
            print(f"  {LABELS[variant]:<24} @{in_flight:<2}  server: {server}")
            print(f"  {'':<24}      sent:   {sent}")

    print(
        "\ncritical path: the worker's round trips from the read that delivers a request to its reply entry"
    )
    for variant in by_variant:
        count, what = CRITICAL_PATH[variant]
        print(f"  {LABELS[variant]:<24} {count:>2}  {what}")

    ratios = {
        "minimal / FastStream, req/s at 64": ratio(by_round, "minimal", "faststream", BUDGET, "per_s"),
        "with events / FastStream, req/s at 64": ratio(by_round, "events", "faststream", BUDGET, "per_s"),
        "minimal / raw, req/s at 64": ratio(by_round, "minimal", "raw", BUDGET, "per_s"),
        "FastStream / raw, req/s at 64": ratio(by_round, "faststream", "raw", BUDGET, "per_s"),
        "minimal / raw, p50 at 1": ratio(by_round, "minimal", "raw", 1, "p50_ms"),
        "with events / raw, p50 at 1": ratio(by_round, "events", "raw", 1, "p50_ms"),
        "FastStream / raw, p50 at 1": ratio(by_round, "faststream", "raw", 1, "p50_ms"),
        "agno / minimal, req/s at 64": ratio(by_round, "agno", "minimal", BUDGET, "per_s"),
        "agno / minimal, p50 at 1": ratio(by_round, "agno", "minimal", 1, "p50_ms"),
        "agno / minimal, worker CPU at 64": ratio(by_round, "agno", "minimal", BUDGET, "cpu_us_per_req"),
    }
    minimal, many = summary["minimal"], str(BUDGET)
    print("\nratios (median of the per-round ratios; each round's in brackets):")
    for name, (value, values) in ratios.items():
        print(f"  {name:<38} {value:6.2f}x  [{', '.join(f'{v:.2f}' for v in values)}]")

    agno = summary["agno"]
    stack = {str(k): agno[str(k)]["cpu_us_per_req"] - minimal[str(k)]["cpu_us_per_req"] for k in (1, BUDGET)}
    agno_cpu, minimal_cpu = agno[many]["cpu_us_per_req"], minimal[many]["cpu_us_per_req"]
    print(
        f"\nthe agent stack over the bare worker (agno - minimal, medians): worker CPU "
        f"+{stack[many]:,.0f} µs per request at {BUDGET} in flight ({agno_cpu:,.0f} against "
        f"{minimal_cpu:,.0f}), +{stack['1']:,.0f} µs at 1; p50 at 1 "
        f"+{agno['1']['p50_ms'] - minimal['1']['p50_ms']:.3f} ms"
    )

    extra_trips = CRITICAL_PATH["minimal"][0] - CRITICAL_PATH["raw"][0]
    fast = ratios["minimal / FastStream, req/s at 64"][0]
    fast_events = ratios["with events / FastStream, req/s at 64"][0]
    slow = ratios["minimal / raw, p50 at 1"][0]
    targets = [
        ("at 64 in flight, minimal >= 5x FastStream's req/s", fast >= 5, f"{fast:.2f}x"),
        ("at 64 in flight, with events >= 3x FastStream's req/s", fast_events >= 3, f"{fast_events:.2f}x"),
        (
            "at 1 in flight, AgentWorker p50 (minimal) <= 1.5x raw",
            slow <= 1.5,
            f"minimal {slow:.2f}x; with events {ratios['with events / raw, p50 at 1'][0]:.2f}x, "
            "not held to it: four lifecycle events per request that raw does not write",
        ),
        (
            "Redis commands per request (minimal) <= 5",
            minimal[many]["server_calls_per_req"] <= 5,
            f"{minimal[many]['server_calls_per_req']:.2f} server calls, "
            f"{minimal[many]['top_level_per_req']:.2f} sent, at {BUDGET} in flight",
        ),
        (
            "at most 2 round trips more than raw on the critical path",
            extra_trips <= 2,
            f"+{extra_trips}: {CRITICAL_PATH['minimal'][0]} against {CRITICAL_PATH['raw'][0]}",
        ),
        (
            "worker CPU per answered request (minimal) <= 100 µs",
            minimal[many]["cpu_us_per_req"] <= 100,
            f"{minimal[many]['cpu_us_per_req']:.0f} µs at {BUDGET} in flight, "
            f"{minimal['1']['cpu_us_per_req']:.0f} µs at 1; raw redis-py "
            f"{summary['raw'][many]['cpu_us_per_req']:.0f} µs at {BUDGET} in this run",
        ),
    ]
    print()
    for name, met, figure in targets:
        print(f"target: {name}: {'met' if met else 'missed'} ({figure})")
    return {
        "figures": summary,
        "ratios": {name: {"median": value, "per_round": values} for name, (value, values) in ratios.items()},
        "targets": [{"target": name, "met": met, "figure": figure} for name, met, figure in targets],
        "critical_path_round_trips": {v: {"count": c, "what": w} for v, (c, w) in CRITICAL_PATH.items()},
        "agent_stack_cpu_us_per_req": stack,
    }


async def benchmark(
    n: int,
    rounds: int,
    seed: int,
    profile_dir: Path | None = None,
    agno_n: int = AGNO_REQUESTS,
    agno_db: str = "memory",
    gc_threshold: int | None = None,
) -> dict[str, Any]:
    rng = random.Random(seed)
    by_round: dict[int, dict[str, WorkerRun]] = {}
    started = time.monotonic()
    with RedisServer(durable=False) as server:
        admin = Redis.from_url(server.url, decode_responses=False)
        try:
            info = machine(str((await admin.info("server"))["redis_version"]))
            print(
                f"{info['nproc']} CPU ({info['cpu']}), Python {info['python']}, redis-server "
                f"{info['redis_server']}, redis-py {info['redis_py']} (hiredis {info['hiredis']}), "
                f"FastStream {info['faststream']}, "
                f"pydantic {info['pydantic']}, agno {info['agno']}, litellm {info['litellm']}",
                flush=True,
            )
            print(
                f"{n:,} requests per measurement at 1 and at {BUDGET} in flight (the agno worker "
                f"{agno_n:,}, sessions in {AGNO_DBS[agno_db]}), after {WARMUP} warm-up, {rounds} rounds, "
                f"{SESSIONS:,} sessions, {REPLY_STREAMS} reply streams",
                flush=True,
            )
            if gc_threshold is not None:
                print(f"every worker process with gc.set_threshold({gc_threshold}, …)", flush=True)
            for round_no in range(1, rounds + 1):
                shift = (round_no - 1) % len(VARIANTS)
                order = VARIANTS[shift:] + VARIANTS[:shift]
                by_round[round_no] = {}
                for variant in order:
                    size = agno_n if variant == "agno" else n
                    run = await run_worker(
                        variant, round_no, server.url, admin, size, rng, profile_dir, agno_db, gc_threshold
                    )
                    by_round[round_no][variant] = run
                    one, many = run.measurements[1], run.measurements[BUDGET]
                    print(
                        f"  round {round_no} {LABELS[variant]:<24} "
                        f"@1 {one.per_s:7,.0f}/s p50 {one.p50_ms:6.3f} ms   "
                        f"@{BUDGET} {many.per_s:7,.0f}/s p50 {many.p50_ms:6.3f} ms   "
                        f"worker CPU {run.worker_cpu_seconds:5.2f}s for {run.worker_answered:,} answered",
                        flush=True,
                    )
        finally:
            await admin.aclose()
    print(f"({time.monotonic() - started:.0f}s)\n")
    by_variant = {variant: [by_round[r][variant] for r in sorted(by_round)] for variant in VARIANTS}
    summary = report(by_variant, by_round)
    return {
        "benchmark": "round_trip",
        "requests_per_measurement": n,
        "agno_requests_per_measurement": agno_n,
        "agno_session_db": agno_db,
        "worker_gc_threshold": gc_threshold if gc_threshold is not None else gc.get_threshold()[0],
        "warmup": WARMUP,
        "rounds": rounds,
        "sessions": SESSIONS,
        "reply_streams": REPLY_STREAMS,
        "in_flight": [1, BUDGET],
        "machine": info,
        **summary,
        "runs": [
            {
                "variant": run.variant,
                "round": run.round,
                "worker_cpu_seconds": run.worker_cpu_seconds,
                "worker_answered": run.worker_answered,
                "measurements": {str(k): asdict(m) for k, m in run.measurements.items()},
            }
            for runs in by_round.values()
            for run in runs.values()
        ],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement (2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the five workers (3)")
    parser.add_argument(
        "--agno-requests",
        type=int,
        default=AGNO_REQUESTS,
        metavar="N",
        help=f"requests per measurement for the agno worker ({AGNO_REQUESTS}; at most --requests)",
    )
    parser.add_argument(
        "--agno-db",
        choices=tuple(AGNO_DBS),
        default="memory",
        help="the agno worker's session db: agno's InMemoryDb (default), SQLite in a temporary "
        "directory (session_db), or none",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 500 requests (agno worker 100), 1 round"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        metavar="N",
        help="set the garbage collector's first threshold to N in every worker process alike "
        "(default: Python's, 700)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures here")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run each worker under cProfile, writing DIR/<worker>-r<round>.prof (slows the workers)",
    )
    args = parser.parse_args(argv)
    if args.serve:
        if args.profile is None:
            asyncio.run(serve(args.serve, args.url, args.agno_db, args.gc_threshold))
            return
        import cProfile

        with cProfile.Profile() as profile:
            asyncio.run(serve(args.serve, args.url, args.agno_db, args.gc_threshold))
        profile.dump_stats(args.profile)
        return
    if args.quick:
        args.requests, args.rounds, args.agno_requests = 500, 1, AGNO_QUICK_REQUESTS
    if args.requests < 1 or args.rounds < 1 or args.agno_requests < 1:
        parser.error("--requests, --agno-requests and --rounds must be at least 1")
    if args.gc_threshold is not None and args.gc_threshold < 1:
        parser.error("--gc-threshold must be at least 1 (0 would turn the collector off)")
    agno_n = min(args.agno_requests, args.requests)
    try:
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(
            benchmark(
                args.requests, args.rounds, args.seed, args.profile, agno_n, args.agno_db, args.gc_threshold
            )
        )
    except BenchmarkError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
