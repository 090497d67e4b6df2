"""Throughput of ``RedisStreamsTransport`` against raw redis-py doing the same job.

Run from the repository root (needs the ``redis-server`` binary on ``PATH`` and the ``redis`` extra)::

    python benchmarks/transport_throughput.py                    # 20,000 messages, 3 repetitions
    python benchmarks/transport_throughput.py --messages 50000 --repetitions 5 --json out.json

One private ``redis-server`` is started on a free 127.0.0.1 port, without persistence
(``--appendonly no --save ""``) so the figures measure the client side and the server, not the
disk; only that process is stopped at the end. Every variant runs against it in the same run, in
interleaved order (transport, raw + codec, raw, then again), and the median of the repetitions is
reported. Each run:

1. publishes N ``AgentRequestEvent`` (about 200 characters of content, source ``discord``, 1,024
   distinct sessions) one message per round trip to a fresh request stream that already has a
   consumer group;
2. consumes them through that group, 64 per read, acking each batch with one call, until all N
   are consumed.

Variants:

* ``transport``: ``transport.publish(stream, event)``, then ``transport.read(sub, 64)`` and one
  ``transport.ack(*batch)`` per batch (``Subscription(batch_size=64, block=0.1,
  claim_min_idle=60)``, so the reclaim scan of ``read`` is live).
* ``raw+codec``: a plain ``redis.asyncio.Redis`` client (no pipelines): ``EventCodec().encode_entry``
  then ``XADD`` per message; ``XREADGROUP COUNT 64`` + ``EventCodec().decode_entry`` of every entry
  + ``XACK`` of the batch. The same encoding and decoding work as the transport, the same bytes
  on the wire.
* ``raw``: the same without the codec: ``XADD`` of the pre-encoded fields, entries not decoded.

Redis commands per message come from the server (``CONFIG RESETSTAT`` before each phase,
``INFO commandstats`` after it: every call, including those a Lua script makes) and from the
client (the commands it sent, i.e. top-level calls). ``codec`` timings (no Redis) show what
``encode_entry`` and ``decode_entry`` cost on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import _common
import pydantic
import redis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from dynamic_agents import __version__ as library_version
from dynamic_agents.events import AgentRequestEvent, EventCodec, StreamNames
from dynamic_agents.testing import RedisServer
from dynamic_agents.transports.base import Subscription
from dynamic_agents.transports.redis import RedisStreamsTransport

BATCH: Final = 64
BLOCK_SECONDS: Final = 0.1
SESSIONS: Final = 1024
USERS: Final = 4096
CONTENT_CHARS: Final = 200
GROUP: Final = "bench-workers"
CONSUMER: Final = "bench-worker-1"
SCRIPT_COMMANDS: Final = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
# The benchmark's own admin commands (stats reset and readout) are not part of any variant.
ADMIN_COMMANDS: Final = frozenset({"info", "config|resetstat"})
CORPUS: Final = (
    "the agent could you summarise this thread please and list the open questions about deploy "
    "release staging rollback config redis stream worker latency budget tomorrow meeting notes "
    "draft reply customer ticket priority bug regression test failing on main since yesterday"
)


class CountingConnection(Connection):
    """Counts the commands the client sends (top-level calls; a pipeline packs each command; the
    library's auto-pipeline packs its own, counted through ``_count_library_command``)."""

    sent: ClassVar[int] = 0

    def pack_command(self, *args: Any) -> list[bytes]:
        CountingConnection.sent += 1
        return super().pack_command(*args)


def _count_library_command(name: str) -> None:
    CountingConnection.sent += 1


def counting_client(url: str) -> Redis:
    return Redis.from_url(url, decode_responses=False, connection_class=CountingConnection)


# -- workload -------------------------------------------------------------------------------------


def make_events(n: int, seed: int = 7) -> list[AgentRequestEvent]:
    """N Discord messages of about 200 characters spread over 1,024 channels (= sessions)."""
    rng = random.Random(seed)
    vocabulary = CORPUS.split()
    names = StreamNames()
    channels = [str(rng.randrange(10**17, 10**18)) for _ in range(SESSIONS)]
    users = [str(rng.randrange(10**17, 10**18)) for _ in range(USERS)]
    events = []
    for _ in range(n):
        words: list[str] = []
        while sum(len(word) + 1 for word in words) < CONTENT_CHARS:
            words.append(rng.choice(vocabulary))
        content = " ".join(words)[:CONTENT_CHARS]
        channel = rng.choice(channels)
        user = rng.choice(users)
        events.append(
            AgentRequestEvent(
                source="discord",
                source_id=channel,
                user_id=user,
                user_name=f"user-{user[-6:]}",
                content=content,
                agent_id="assistant",
                session_id=f"discord:{channel}",
                reply_stream=names.responses("discord", channel),
                metadata={"guild_id": "912345678901234567", "message_id": str(rng.getrandbits(60))},
            )
        )
    return events


# -- variants -------------------------------------------------------------------------------------


class Variant(Protocol):
    name: str

    async def open(self, url: str, stream: str) -> None: ...
    async def publish(self, events: Sequence[AgentRequestEvent]) -> None: ...
    async def consume(self, n: int) -> None: ...
    async def close(self) -> None: ...


class TransportVariant:
    name = "transport"

    def __init__(self) -> None:
        self.transport: RedisStreamsTransport | None = None
        self.stream = ""

    async def open(self, url: str, stream: str) -> None:
        self.stream = stream
        self.transport = RedisStreamsTransport(counting_client(url), owns_client=True)
        await self.transport.ensure_group(stream, GROUP)  # also opens the connection

    async def publish(self, events: Sequence[AgentRequestEvent]) -> None:
        transport, stream = self.transport, self.stream
        assert transport is not None
        for event in events:
            await transport.publish(stream, event)

    async def consume(self, n: int) -> None:
        transport = self.transport
        assert transport is not None
        sub = Subscription(
            stream=self.stream,
            group=GROUP,
            consumer=CONSUMER,
            model=AgentRequestEvent,
            batch_size=BATCH,
            block=BLOCK_SECONDS,
            claim_min_idle=60,
        )
        consumed = 0
        while consumed < n:
            batch = await transport.read(sub, BATCH)
            if not batch:
                raise RuntimeError(f"transport: stream ran dry after {consumed} of {n} entries")
            consumed += len(batch)
            await transport.ack(*batch)
        stats = transport.stats
        if (stats.published, stats.delivered, stats.acked, stats.undecodable) != (n, n, n, 0):
            raise RuntimeError(f"transport: unexpected stats {stats}")

    async def close(self) -> None:
        if self.transport is not None:
            await self.transport.aclose()


class RawVariant:
    """A plain redis-py asyncio client, no pipelines; ``codec`` encodes on publish, decodes on read."""

    def __init__(self, *, codec: bool) -> None:
        self.name = "raw+codec" if codec else "raw"
        self.codec = EventCodec() if codec else None
        self.client: Redis | None = None
        self.stream = ""
        self.encoded: list[dict[str, bytes]] = []
        self.acked = 0

    def prepare(self, events: Sequence[AgentRequestEvent]) -> None:
        """The raw variant XADDs fields encoded ahead of time (same bytes as the codec writes)."""
        codec = EventCodec()
        self.encoded = [codec.encode_entry(event) for event in events]

    async def open(self, url: str, stream: str) -> None:
        self.stream = stream
        self.client = counting_client(url)
        await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        self.acked = 0

    async def publish(self, events: Sequence[AgentRequestEvent]) -> None:
        client, stream, codec = self.client, self.stream, self.codec
        assert client is not None
        if codec is not None:
            for event in events:
                await client.xadd(stream, codec.encode_entry(event))  # type: ignore[arg-type]
        else:
            for fields in self.encoded[: len(events)]:
                await client.xadd(stream, fields)  # type: ignore[arg-type]

    async def consume(self, n: int) -> None:
        client, stream, codec = self.client, self.stream, self.codec
        assert client is not None
        block = round(BLOCK_SECONDS * 1000)
        consumed = 0
        while consumed < n:
            reply = await client.xreadgroup(GROUP, CONSUMER, {stream: ">"}, count=BATCH, block=block)
            entries = _entries(reply)
            if not entries:
                raise RuntimeError(f"{self.name}: stream ran dry after {consumed} of {n} entries")
            if codec is not None:
                for _, fields in entries:
                    codec.decode_entry(fields, AgentRequestEvent)
            consumed += len(entries)
            self.acked += await client.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
        if self.acked != n:
            raise RuntimeError(f"{self.name}: acked {self.acked} of {n}")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """``(id, fields)`` of an XREADGROUP reply ``[[stream, [(id, fields), …]], …]``.

    redis-py 8 speaks RESP3 by default but still returns this (RESP2-era) shape for XREADGROUP.
    """
    if not reply:
        return []
    return [entry for _, entries in reply for entry in entries]


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    seconds: float
    top_level: int
    server_calls: dict[str, int]

    @property
    def script_calls(self) -> int:
        return sum(calls for name, calls in self.server_calls.items() if name in SCRIPT_COMMANDS)

    @property
    def all_calls(self) -> int:
        return sum(self.server_calls.values())


@dataclass
class RunResult:
    publish: PhaseResult
    consume: PhaseResult


async def reset_stats(admin: Redis) -> None:
    await admin.config_resetstat()
    CountingConnection.sent = 0


async def read_stats(admin: Redis) -> dict[str, int]:
    info: Mapping[str, Any] = await admin.info("commandstats")
    calls = {}
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        if name not in ADMIN_COMMANDS and isinstance(value, dict):
            calls[name] = int(value["calls"])
    return calls


async def phase(admin: Redis, operation: Callable[[], Awaitable[None]]) -> PhaseResult:
    await reset_stats(admin)
    gc.collect()
    started = time.perf_counter()
    await operation()
    seconds = time.perf_counter() - started
    top_level = CountingConnection.sent
    return PhaseResult(seconds, top_level, await read_stats(admin))


async def run_once(
    admin: Redis, url: str, variant: Variant, events: Sequence[AgentRequestEvent], stream: str
) -> RunResult:
    await admin.flushall()
    await variant.open(url, stream)
    try:
        published = await phase(admin, lambda: variant.publish(events))
        consumed = await phase(admin, lambda: variant.consume(len(events)))
    finally:
        await variant.close()
    pending = await admin.xpending(stream, GROUP)
    if pending["pending"] != 0 or await admin.xlen(stream) != len(events):
        raise RuntimeError(f"{variant.name}: stream not fully consumed: {pending}")
    return RunResult(published, consumed)


def codec_rates(events: Sequence[AgentRequestEvent]) -> dict[str, float]:
    """Messages per second of ``encode_entry`` and ``decode_entry`` alone (no Redis)."""
    codec = EventCodec()
    gc.collect()
    started = time.perf_counter()
    encoded = [codec.encode_entry(event) for event in events]
    encode_seconds = time.perf_counter() - started
    as_read = [{key.encode(): value for key, value in fields.items()} for fields in encoded]
    gc.collect()
    started = time.perf_counter()
    for fields in as_read:
        codec.decode_entry(fields, AgentRequestEvent)
    decode_seconds = time.perf_counter() - started
    return {"encode": len(events) / encode_seconds, "decode": len(events) / decode_seconds}


@dataclass
class Summary:
    """Medians over the repetitions; command counts are per message (publish + consume)."""

    name: str
    publish_per_s: float
    consume_per_s: float
    combined_per_s: float
    top_level_per_msg: float
    script_calls_per_msg: float
    all_calls_per_msg: float
    calls_by_command_per_msg: dict[str, float]
    runs: list[dict[str, float]] = field(default_factory=list)


def summarise(name: str, runs: Sequence[RunResult], n: int) -> Summary:
    def median(values: Sequence[float]) -> float:
        return statistics.median(values)

    per_run = [
        {
            "publish_seconds": run.publish.seconds,
            "consume_seconds": run.consume.seconds,
            "publish_per_s": n / run.publish.seconds,
            "consume_per_s": n / run.consume.seconds,
            "combined_per_s": n / (run.publish.seconds + run.consume.seconds),
            "top_level_per_msg": (run.publish.top_level + run.consume.top_level) / n,
            "script_calls_per_msg": (run.publish.script_calls + run.consume.script_calls) / n,
            "all_calls_per_msg": (run.publish.all_calls + run.consume.all_calls) / n,
        }
        for run in runs
    ]
    last = runs[-1]
    by_command: dict[str, float] = {}
    for calls in (last.publish.server_calls, last.consume.server_calls):
        for command, count in calls.items():
            by_command[command] = by_command.get(command, 0) + count / n
    return Summary(
        name=name,
        publish_per_s=median([r["publish_per_s"] for r in per_run]),
        consume_per_s=median([r["consume_per_s"] for r in per_run]),
        combined_per_s=median([r["combined_per_s"] for r in per_run]),
        top_level_per_msg=median([r["top_level_per_msg"] for r in per_run]),
        script_calls_per_msg=median([r["script_calls_per_msg"] for r in per_run]),
        all_calls_per_msg=median([r["all_calls_per_msg"] for r in per_run]),
        calls_by_command_per_msg=dict(sorted(by_command.items(), key=lambda item: -item[1])),
        runs=per_run,
    )


# -- reporting ------------------------------------------------------------------------------------


def machine(redis_version: str) -> dict[str, Any]:
    return _common.machine(
        redis_server=redis_version,
        redis_py=redis.__version__,
        pydantic=pydantic.VERSION,
        dynamic_agents=library_version,
    )


def table(summaries: Sequence[Summary], baseline: str) -> str:
    base = next(s for s in summaries if s.name == baseline)
    header = (
        f"{'variant':<10} {'publish/s':>10} {'consume+ack/s':>14} {'combined/s':>11} "
        f"{'vs ' + baseline:>13} {'top-level/msg':>14} {'EVAL*/msg':>10} {'all calls/msg':>14}"
    )
    rows = [
        f"{s.name:<10} {s.publish_per_s:>10,.0f} {s.consume_per_s:>14,.0f} {s.combined_per_s:>11,.0f} "
        f"{s.combined_per_s / base.combined_per_s:>12.2f}x {s.top_level_per_msg:>14.5f} "
        f"{s.script_calls_per_msg:>10.5f} {s.all_calls_per_msg:>14.5f}"
        for s in summaries
    ]
    return "\n".join([header, "-" * len(header), *rows])


def breakdown(summaries: Sequence[Summary]) -> str:
    lines = ["server calls per message by command (last repetition, including calls made by scripts):"]
    for s in summaries:
        parts = ", ".join(f"{name} {count:.5f}" for name, count in s.calls_by_command_per_msg.items())
        lines.append(f"  {s.name:<10} {parts}")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


async def benchmark(n: int, repetitions: int) -> dict[str, Any]:
    """Run every variant, print the figures and return them (the ``--json`` report)."""
    print(f"building {n:,} events ...", flush=True)
    events = make_events(n)
    codec = EventCodec()
    sizes = [len(codec.encode_entry(event)["__data__"]) for event in events[:1000]]
    raw = RawVariant(codec=False)
    raw.prepare(events)
    variants: list[Variant] = [TransportVariant(), RawVariant(codec=True), raw]

    with RedisServer(durable=False) as server:
        admin = Redis.from_url(server.url, decode_responses=False)
        try:
            redis_version = str((await admin.info("server"))["redis_version"])
            info = machine(redis_version)
            print(
                f"{info['nproc']} CPU ({info['cpu']}), Python {info['python']}, redis-server "
                f"{redis_version}, redis-py {info['redis_py']}, pydantic {info['pydantic']}",
                flush=True,
            )
            print(
                f"{n:,} messages, entry payload median {statistics.median(sizes)} bytes, "
                f"batch {BATCH}, {repetitions} repetitions (median reported)",
                flush=True,
            )
            runs: dict[str, list[RunResult]] = {variant.name: [] for variant in variants}
            for repetition in range(1, repetitions + 1):
                for variant in variants:
                    stream = f"bench:{variant.name}:{repetition}:requests"
                    result = await run_once(admin, server.url, variant, events, stream)
                    runs[variant.name].append(result)
                    print(
                        f"  rep {repetition} {variant.name:<10} publish {result.publish.seconds:6.2f}s  "
                        f"consume+ack {result.consume.seconds:6.2f}s",
                        flush=True,
                    )
            await admin.flushall()
        finally:
            await admin.aclose()

    codec_figures = [codec_rates(events) for _ in range(repetitions)]
    codec_median = {
        key: statistics.median(figures[key] for figures in codec_figures) for key in ("encode", "decode")
    }
    summaries = [summarise(name, results, n) for name, results in runs.items()]
    print()
    print(table(summaries, baseline="raw+codec"))
    print()
    print(breakdown(summaries))
    print()
    print(
        f"codec alone (no Redis): encode_entry {codec_median['encode']:,.0f} msg/s, "
        f"decode_entry {codec_median['decode']:,.0f} msg/s"
    )
    return {
        "benchmark": "transport_throughput",
        "messages": n,
        "repetitions": repetitions,
        "batch": BATCH,
        "entry_payload_bytes_median": statistics.median(sizes),
        "machine": info,
        "variants": {summary.name: asdict(summary) for summary in summaries},
        "codec_alone_per_s": codec_median,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (default 20000)")
    parser.add_argument("--repetitions", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.repetitions < 1:
        parser.error("--messages and --repetitions must be at least 1")
    _common.count_library_commands(_count_library_command)  # the transport's auto-pipelined commands
    report = asyncio.run(benchmark(args.messages, args.repetitions))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
