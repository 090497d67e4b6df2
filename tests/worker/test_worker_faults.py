"""Faults a worker must survive without losing an answer or giving one twice (real Redis).

Every test here ends with the same check: each request has exactly one reply on its reply stream
(none lost, none twice) and nothing is left pending in the group.

* **Crash at a deterministic point.** A worker process (``worker_process.py``) dies with
  ``os._exit(17)`` from a hook, then a second worker finishes the work. The transport's
  ``complete`` writes reply, completed-request record and ack in one Lua script, so "after the
  reply, before the ack" is not a state that exists and cannot be tested apart. The two points
  that do exist are the hooks around that step:

  - ``after_execute``: the run finished but nothing was published or acked. The entry stays
    pending on the dead consumer; the second worker reclaims it, runs it again and answers.
  - ``after_complete``: reply, record and ack are written. The second worker must not answer again
    (nothing is pending; the record would also stop a redelivery).

* **SIGKILL at a random moment**: two worker processes share 100 requests; one is killed once a
  random number of replies is out, with runs in flight; the survivor reclaims what it held.
* **Redis restarted under load** (a private redis-server with AOF ``appendfsync always``): killed
  with runs in flight, restarted once the worker has noticed; requests published before the kill
  and after the restart are all answered once.
* **Fuzz**: 10,000 undecodable entries interleaved with 100 valid requests; each piece of garbage
  is dead-lettered once with a reason, each request answered once, and the worker keeps going.

Waits are on conditions with deadlines; the randomness is seeded and the seed is in every message.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from dynamic_agents.client import AgentClient
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, EventCodec, RunCompleted, StreamNames
from dynamic_agents.events.envelope import encode_envelope
from dynamic_agents.exceptions import EventError
from dynamic_agents.execution import ExecutionResult, FunctionExecutor
from dynamic_agents.testing import RedisServer
from dynamic_agents.transports import Completion, Delivery, RedisStreamsTransport
from dynamic_agents.worker import AgentWorker, BaseHooks, WorkerSettings
from tests.worker.conftest import FAST, echo, echo_router, request_event, worker
from tests.worker.worker_process import CRASH_STATUS, tagged_echo

SCRIPT = Path(__file__).with_name("worker_process.py")
GROUP = "dynamic-agents"
POLL = 0.01

# -- worker processes -----------------------------------------------------------------------------


class WorkerProcess:
    """``worker_process.py`` running as a child process; its stderr goes to a file for diagnostics."""

    def __init__(self, consumer: str, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.consumer = consumer
        self.process = process
        self.stderr = stderr
        self.lines: list[str] = []

    def diagnostics(self) -> str:
        log = self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""
        return f"\n--- {self.consumer}: stdout {self.lines!r}; stderr tail:\n{log}"

    async def expect(self, prefix: str, within: float = 20.0) -> str:
        """The next stdout line starting with ``prefix``; fails if the process ends or ``within`` passes."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(within):
                while True:
                    raw = await self.process.stdout.readline()
                    if not raw:
                        status = await self.process.wait()
                        raise AssertionError(
                            f"{self.consumer} exited ({status}) before printing {prefix!r}"
                            + self.diagnostics()
                        )
                    line = raw.decode().strip()
                    self.lines.append(line)
                    if line.startswith(prefix):
                        return line
        except TimeoutError:
            raise AssertionError(
                f"{self.consumer} did not print {prefix!r} within {within}s" + self.diagnostics()
            ) from None

    async def exit_status(self, within: float = 20.0) -> int:
        try:
            async with asyncio.timeout(within):
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(f"{self.consumer} still runs after {within}s" + self.diagnostics()) from None

    def kill(self) -> None:
        """SIGKILL: no hook, no cleanup, like a machine going away."""
        if self.process.returncode is None:
            self.process.kill()

    def terminate(self) -> None:
        """SIGTERM: the worker stops gracefully."""
        if self.process.returncode is None:
            self.process.terminate()

    async def close(self) -> None:
        self.kill()
        await self.process.wait()
        if self.process.stdout is not None:
            await self.process.stdout.read()  # to EOF, so the pipe transport closes


class Spawn(Protocol):
    async def __call__(self, redis_url: str, prefix: str, consumer: str, *options: str) -> WorkerProcess: ...


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Starts worker processes; whatever still runs at the end of the test is killed."""
    started: list[WorkerProcess] = []

    async def start(redis_url: str, prefix: str, consumer: str, *options: str) -> WorkerProcess:
        stderr_path = tmp_path / f"{consumer}.stderr"
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                redis_url,
                prefix,
                consumer,
                *options,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        started.append(WorkerProcess(consumer, process, stderr_path))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            await process.close()


# -- checks ---------------------------------------------------------------------------------------


async def eventually(
    condition: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
    details: Callable[[], str] = str,
) -> None:
    try:
        async with asyncio.timeout(within):
            while not await condition():  # noqa: ASYNC110 - polling a condition, with a deadline
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}{details()}") from None


def reply_stream(names: StreamNames) -> str:
    return names.responses("discord", "c1")  # where request_event() asks for replies


async def replies(transport: RedisStreamsTransport, names: StreamNames) -> list[AgentResponseEvent]:
    entries = await transport.read_stream(reply_stream(names), AgentResponseEvent, count=100_000)
    return [entry.event for entry in entries]


async def reply_count(transport: RedisStreamsTransport, names: StreamNames) -> int:
    count: int = await transport.client.xlen(reply_stream(names))
    return count


async def all_answered(transport: RedisStreamsTransport, names: StreamNames, ids: Iterable[str]) -> bool:
    answered = {reply.request_id for reply in await replies(transport, names)}
    return answered >= set(ids) and not await transport.pending(names.requests, GROUP, count=1)


def assert_exactly_once(answers: list[AgentResponseEvent], ids: Iterable[str], context: str = "") -> None:
    expected = set(ids)
    counts = Counter(reply.request_id for reply in answers)
    missing = sorted(expected - counts.keys())
    repeated = {request_id: n for request_id, n in counts.items() if n > 1}
    unexpected = sorted(counts.keys() - expected)
    assert (missing, repeated, unexpected) == ([], {}, []), (
        f"{len(missing)} requests unanswered, {len(repeated)} answered more than once, "
        f"{len(unexpected)} unknown replies {context}"
    )


async def assert_nothing_pending(transport: RedisStreamsTransport, names: StreamNames) -> None:
    assert await transport.pending(names.requests, GROUP) == []


# -- 1. a worker process dies at a deterministic point --------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("crash_at", ["after_execute", "after_complete"])
async def test_a_worker_dying_at_a_crash_point_loses_and_repeats_nothing(
    crash_at: str, redis_url: str, redis_prefix: str, spawn: Spawn
) -> None:
    names = StreamNames(redis_prefix)
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    try:
        doomed = await spawn(redis_url, redis_prefix, "doomed", "--crash-at", crash_at)
        await doomed.expect("ready")
        # One session: the survivor also waits out the lease the dead worker never released.
        requests = [request_event(names, f"r{n}", session="crashing") for n in range(3)]
        for request in requests:
            await transport.publish(names.requests, request)
        assert await doomed.expect("crash") == f"crash {crash_at} {requests[0].id}"
        assert await doomed.exit_status() == CRASH_STATUS

        survivor = worker(transport, tagged_echo("survivor", (0, 0)), consumer="survivor")
        await survivor.run_until_idle(timeout=30)

        answers = await replies(transport, names)
        assert_exactly_once(answers, [request.id for request in requests])
        await assert_nothing_pending(transport, names)
        assert await transport.read_stream(names.dead_letters, AgentRequestEvent) == []
        answered_by = {reply.request_id: reply.metadata["consumer"] for reply in answers}
        if crash_at == "after_execute":  # the run is lost with the process: it runs again
            assert answered_by[requests[0].id] == "survivor"
            assert survivor.stats.completed == 3
        else:  # answered before the crash: the survivor answers only the other two
            assert answered_by[requests[0].id] == "doomed"
            assert survivor.stats.completed == 2
    finally:
        await transport.aclose()


# -- 2. one of two worker processes is SIGKILLed at a random moment -------------------------------


@pytest.mark.redis
async def test_sigkill_of_one_of_two_workers_mid_way_loses_and_repeats_nothing(
    redis_url: str, redis_prefix: str, spawn: Spawn
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    threshold = rng.randint(10, 60)
    victim_index = rng.randrange(2)
    context = f"(seed={seed}, killed after {threshold} replies)"
    names = StreamNames(redis_prefix)
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    options = ["--concurrency", "4", "--delay-ms", "20", "50", "--claim-min-idle", "1", "--lease-ttl", "1"]
    try:
        workers = [await spawn(redis_url, redis_prefix, name, *options) for name in ("a", "b")]
        for process in workers:
            await process.expect("ready")
        victim, survivor = workers[victim_index], workers[1 - victim_index]
        requests = [request_event(names, f"r{n}", session=f"s{n % 25}") for n in range(100)]
        request_of_entry = {await transport.publish(names.requests, r): r.id for r in requests}
        ids = [request.id for request in requests]

        async def threshold_reached() -> bool:  # and the victim holds runs (on a loaded machine
            # the other worker may have taken every entry read so far)
            if await reply_count(transport, names) < threshold:
                return False
            held = await transport.pending(names.requests, GROUP, count=200)
            return any(entry.consumer == victim.consumer for entry in held)

        await eventually(
            threshold_reached,
            30,
            f"{threshold} replies, the victim holding runs {context}",
            lambda: "".join(w.diagnostics() for w in workers),
        )
        victim.kill()
        assert await victim.exit_status() == -signal.SIGKILL
        held_by_the_victim = [
            entry
            for entry in await transport.pending(names.requests, GROUP, count=200)
            if entry.consumer == victim.consumer
        ]

        async def done() -> bool:
            return await all_answered(transport, names, ids)

        await eventually(done, 40, f"every request answered {context}", survivor.diagnostics)
        survivor.terminate()
        await survivor.expect("stopped")  # a graceful stop: nothing more will be written
        assert await survivor.exit_status() == 0, survivor.diagnostics()

        answers = await replies(transport, names)
        assert_exactly_once(answers, ids, context)
        await assert_nothing_pending(transport, names)
        assert await transport.read_stream(names.dead_letters, AgentRequestEvent) == []
        answered_by = {reply.request_id: reply.metadata["consumer"] for reply in answers}
        assert held_by_the_victim, f"the victim held nothing when killed {context}"
        taken_over = {request_of_entry[entry.entry_id] for entry in held_by_the_victim}
        # what the victim held when it died (runs in flight) was answered by the survivor
        assert {answered_by[request_id] for request_id in taken_over} == {survivor.consumer}, context
    finally:
        await transport.aclose()


# -- 3. Redis is killed and restarted under load -------------------------------------------------


@pytest.mark.redis_server
async def test_a_worker_rides_out_a_redis_restart_under_load(redis_server: RedisServer) -> None:
    names = StreamNames()  # a private server: the default names
    # retry_deadline outlasts the outage for ``complete`` and the other writes; a small retry_cap
    # keeps reconnect attempts frequent, so the test ends soon after the restart.
    consumer_side = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=60, retry_cap=0.5)
    publisher = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=60, retry_cap=0.5)
    w = worker(
        consumer_side,
        tagged_echo("in-process", (20, 50)),
        consumer="in-process",
        concurrency=4,
        claim_min_idle=1.0,
        keep_fresh_every=0.3,
        lease_ttl=2.0,
    )
    before = [request_event(names, f"before {n}", session=f"s{n % 10}") for n in range(40)]
    after = [request_event(names, f"after {n}", session=f"s{n % 10}") for n in range(40)]
    ids = [request.id for request in before + after]

    async def some_answered() -> bool:
        return await reply_count(publisher, names) >= 10

    async def outage_noticed() -> bool:
        return consumer_side.stats.reconnects > reconnects

    async def done() -> bool:
        return await all_answered(publisher, names, ids)

    try:
        await consumer_side.ensure_group(names.requests, GROUP)
        async with w:
            try:
                for request in before:
                    await publisher.publish(names.requests, request)
                await eventually(some_answered, 30, "the first replies")
                answered_before_the_kill = await reply_count(publisher, names)
                reconnects = consumer_side.stats.reconnects
                await asyncio.to_thread(redis_server.kill)  # runs in flight, more queued
                await eventually(outage_noticed, 30, "the worker to notice the outage")
            finally:  # never leave the worker waiting on a dead server (stopping it would hang)
                await asyncio.to_thread(redis_server.start)
            for request in after:
                await publisher.publish(names.requests, request)
            await eventually(done, 60, "every request answered after the restart")

        answers = await replies(publisher, names)
        assert_exactly_once(answers, ids, f"({answered_before_the_kill} answered before the kill)")
        await assert_nothing_pending(publisher, names)
        assert answered_before_the_kill < len(before)  # the kill came with work still to do
        assert await publisher.read_stream(names.dead_letters, AgentRequestEvent) == []
    finally:
        await w.stop(grace=0)
        await publisher.aclose()
        await consumer_side.aclose()


# -- 4. fuzzed entries among valid requests -------------------------------------------------------

GARBAGE = 10_000
VALID = 100
HUGE = 5
MAX_SIZE = EventCodec().max_size
WRONG_TYPES: Mapping[str, tuple[object, ...]] = {
    "content": (42, 1.5, True, [], {"text": "hi"}, None),
    "user_id": (7, [], {}, False, None),
    "source": (42, [], {"name": "discord"}, None, "Not A Slug!"),
    "source_id": (123, [], None, ""),
    "session_id": (5, [], {"id": 1}, "x" * 600),
    "reply_stream": (5, [], ""),
    "attachments": ("file", 3, {"kind": "image"}, [1, 2]),
    "metadata": ("text", [1], 5),
    "session_state": ("state", [True]),
    "timestamp": ("yesterday", [], {"t": 1}, True),
    "schema_version": (1, "2.0", "one", None),
    "id": ("", "has space", 9, None),
}


class Fuzzer:
    """Undecodable stream entries of many shapes, from one seed."""

    def __init__(self, seed: int, names: StreamNames) -> None:
        self.rng = random.Random(seed)
        self.codec = EventCodec()
        self.template = request_event(names, "a valid request, cut short or spoiled", session="fuzz")

    def random_bytes(self, longest: int = 300) -> bytes:
        return self.rng.randbytes(self.rng.randrange(longest))

    def valid_envelope(self) -> bytes:
        return self.codec.encode_entry(self.template)["__data__"]

    def spoiled_body(self) -> bytes:
        body = self.template.model_dump(mode="json")
        field = self.rng.choice(sorted(WRONG_TYPES))
        body[field] = self.rng.choice(WRONG_TYPES[field])
        return json.dumps(body).encode()

    def entry(self) -> dict[bytes, bytes]:
        kind = self.rng.randrange(8)
        if kind == 0:  # random bytes as the payload
            return {b"__data__": self.random_bytes()}
        if kind == 1:  # a binary envelope cut short
            valid = self.valid_envelope()
            return {b"__data__": valid[: self.rng.randrange(len(valid))]}
        if kind == 2:  # a bare JSON body cut short
            valid = self.template.model_dump_json().encode()
            return {b"__data__": valid[: self.rng.randrange(len(valid))]}
        if kind == 3:  # wrong types, as a bare JSON body
            return {b"__data__": self.spoiled_body()}
        if kind == 4:  # wrong types, in a well-formed binary envelope
            return {b"__data__": encode_envelope(self.spoiled_body(), {"content-type": "application/json"})}
        if kind == 5:  # JSON that is not an object, or a legacy envelope around garbage
            return {
                b"__data__": self.rng.choice(
                    [b"[1, 2, 3]", b'"text"', b"null", b"17", b'{"data": 5}', b'{"data": "{\\"id\\": 1}"}']
                )
            }
        if kind == 6:  # a flat field map (no __data__) that is no request
            return {self.random_bytes(20) + b"k": self.random_bytes() for _ in range(self.rng.randint(1, 4))}
        return {  # random fields next to a random payload
            b"__data__": self.random_bytes(),
            self.random_bytes(10) + b"x": self.random_bytes(),
        }

    def huge(self, n: int) -> dict[bytes, bytes]:
        """Over the codec's size limit (1 MiB), in three shapes."""
        over = MAX_SIZE + 1 + self.rng.randrange(1000)
        if n % 3 == 0:
            return {b"__data__": b"{" + b" " * over + b"}"}
        if n % 3 == 1:  # an otherwise valid request whose body is too big
            body = self.template.model_copy(update={"content": "x" * over}).model_dump_json().encode()
            return {b"__data__": encode_envelope(body, {"content-type": "application/json"})}
        return {b"source": b"discord", b"padding": b"p" * over}

    def garbage(self) -> list[dict[bytes, bytes]]:
        entries = [self.entry() for _ in range(GARBAGE - HUGE)] + [self.huge(n) for n in range(HUGE)]
        self.rng.shuffle(entries)
        for fields in entries:  # the oracle: garbage by construction, checked
            with pytest.raises(EventError):
                self.codec.decode_entry(fields, AgentRequestEvent)
        return entries


@pytest.mark.redis
async def test_fuzzed_entries_are_dead_lettered_once_and_valid_requests_answered_once(
    redis_url: str, redis_prefix: str
) -> None:
    seed = random.randrange(2**32)
    context = f"(seed={seed})"
    names = StreamNames(redis_prefix)
    fuzzer = Fuzzer(seed, names)
    garbage = fuzzer.garbage()
    valid = [request_event(names, f"valid {n}", session=f"s{n % 20}") for n in range(VALID)]
    # Valid requests at random places among the garbage, written raw as a producer would.
    stream: list[tuple[bool, dict[bytes, bytes]]] = [(False, fields) for fields in garbage]
    for request in valid:
        fields = {key.encode(): value for key, value in EventCodec().encode_entry(request).items()}
        stream.insert(fuzzer.rng.randrange(len(stream) + 1), (True, fields))

    admin = Redis.from_url(redis_url)
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    try:
        await transport.ensure_group(names.requests, GROUP)
        garbage_ids: list[str] = []
        for start in range(0, len(stream), 500):
            batch = stream[start : start + 500]
            pipe = admin.pipeline(transaction=False)
            for _, fields in batch:
                pipe.xadd(names.requests, fields)  # type: ignore[arg-type]
            ids: list[bytes] = await pipe.execute()
            garbage_ids += [
                entry_id.decode() for entry_id, (is_valid, _) in zip(ids, batch, strict=True) if not is_valid
            ]

        w = worker(transport, concurrency=16)
        await w.run_until_idle(timeout=90)
        # still consuming after all that: a request published now is answered too
        late = request_event(names, "after the storm", session="late")
        await transport.publish(names.requests, late)
        await w.run_until_idle(timeout=30)

        assert_exactly_once(await replies(transport, names), [r.id for r in [*valid, late]], context)
        await assert_nothing_pending(transport, names)
        assert (w.stats.undecodable, w.stats.completed) == (GARBAGE, VALID + 1), f"{context} {w.stats}"
        dead = await transport.read_stream(names.dead_letters, AgentRequestEvent, count=2 * GARBAGE)
        dead_ids = Counter(entry.fields[b"dead_letter.entry_id"].decode() for entry in dead)
        assert dead_ids == Counter(garbage_ids), f"dead letters do not match the garbage {context}"
        reasons = [entry.fields[b"dead_letter.reason"] for entry in dead]
        prefix = b"undecodable: "  # then what was wrong with it
        assert all(reason.startswith(prefix) and len(reason) > len(prefix) for reason in reasons), context
    finally:
        await transport.aclose()
        await admin.aclose()


# -- 5. the reply to a completion is lost once Redis has run it -----------------------------------


class Answers(BaseHooks):
    def __init__(self) -> None:
        self.created: list[bool] = []

    async def after_respond(
        self, delivery: Delivery[AgentRequestEvent], result: ExecutionResult, completion: Completion
    ) -> None:
        self.created.append(completion.created)


@pytest.mark.redis
async def test_an_answer_whose_write_was_retried_after_its_reply_was_lost_counts_as_answered(
    redis_url: str, redis_prefix: str
) -> None:
    """A connection lost (a ``CLIENT KILL``, a timeout) after Redis ran the completion script: the
    retry finds the record its first attempt wrote. The user gets one reply, and the worker counts
    an answer, its hooks see it created and the events stream ends the run with run.completed
    (it counted a duplicate, and published no end for the run)."""
    names = StreamNames(redis_prefix)
    transport = RedisStreamsTransport.from_url(redis_url, names=names)
    pipeline = transport._pipeline
    real_batched = pipeline.batched
    lost: list[object] = []

    def reply_lost_once(kind: Any, item: Any) -> Awaitable[object]:
        reply = real_batched(kind, item)
        if kind is not transport._completes or lost:
            return reply
        lost.append(item)

        async def lost_after_it_ran() -> object:
            await reply
            raise ConnectionError("connection lost before the reply was read")

        return lost_after_it_ran()

    pipeline.batched = reply_lost_once  # type: ignore[assignment,method-assign]
    answers = Answers()
    settings: dict[str, Any] = {**FAST, "events": True}
    w = AgentWorker(
        transport,
        transport.coordinator(),
        echo_router(),
        FunctionExecutor(echo),
        settings=WorkerSettings(**settings),
        hooks=[answers],
    )
    request = request_event(names, "once")
    try:
        async with w, AgentClient(transport, block=0.05) as client:
            reply = await client.request(request, timeout=30)
            await w.events.flush()
        assert reply.content == "echo: once"
        assert len(lost) == 1
        assert_exactly_once(await replies(transport, names), [request.id])
        await assert_nothing_pending(transport, names)
        assert (w.stats.completed, w.stats.duplicates) == (1, 0)
        assert answers.created == [True]
        events = await transport.read_stream(names.events, RunCompleted)
        assert [e.event.request_id for e in events if e.message is not None] == [request.id]
    finally:
        await transport.aclose()


# -- 6. Redis runs out of memory during a run -----------------------------------------------------


@pytest.mark.redis_server
async def test_a_run_outlasting_its_lease_while_redis_is_out_of_memory_is_answered_once(
    redis_server: RedisServer,
) -> None:
    """``maxmemory`` reached (``noeviction``) while a request runs, for longer than its lease's
    ttl: Redis takes a lease's renewal (``PEXPIRE``) and an entry's keeping fresh (``XCLAIM``)
    then, but their scripts were refused whole, so the run's lease expired, the run was cancelled
    and it ran again once the memory was freed. It runs once, and is answered once."""
    names = StreamNames()
    transport = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=1)
    coordinator = transport.coordinator()
    admin = Redis.from_url(redis_server.url)
    renewals: list[bool] = []
    real_renew = coordinator.renew

    async def renew(lease: Any, ttl: float | None = None) -> bool:
        renewals.append(True)
        return await real_renew(lease, ttl)

    coordinator.renew = renew  # type: ignore[method-assign]
    runs: list[str] = []
    finish = asyncio.Event()

    async def answer(target: Any, request: AgentRequestEvent) -> str:
        runs.append(request.id)
        await finish.wait()
        return "done"

    # This server fsyncs every write (AOF, always): on a loaded machine one fsync has stalled it
    # for longer than FAST's 0.4 s margin (lease_ttl 0.6, renewed every 0.2 s), losing the lease
    # for a reason other than the shortage. Margins of seconds keep the test about the shortage.
    slow = {"lease_ttl": 3.0, "claim_min_idle": 3.0, "keep_fresh_every": 0.5}
    settings: dict[str, Any] = {**FAST, **slow, "record_ttl": 60}
    w = AgentWorker(
        transport, coordinator, echo_router(), FunctionExecutor(answer), settings=WorkerSettings(**settings)
    )
    request = request_event(names, "through the shortage")
    try:
        async with w, AgentClient(transport, block=0.05) as client:
            asking = asyncio.create_task(client.request(request, timeout=30))
            await eventually(lambda: asyncio.sleep(0, bool(runs)), 10, "the run to start")
            await admin.config_set("maxmemory", "1")
            renewed_before = len(renewals)
            # renewals every third of lease_ttl: four of them span more than the lease's ttl
            await eventually(
                lambda: asyncio.sleep(0, len(renewals) >= renewed_before + 4 or w.stats.lost > 0),
                10,
                "the lease to outlive its ttl, or be lost",
            )
            await admin.config_set("maxmemory", "0")
            finish.set()
            reply = await asking
        assert reply.content == "done"
        assert runs == [request.id]
        assert w.stats.lost == 0
        assert_exactly_once(await replies(transport, names), [request.id])
        await assert_nothing_pending(transport, names)
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.aclose()
        await transport.aclose()


# -- 7. the worker is stopped while Redis is away -------------------------------------------------


@pytest.mark.redis_server
@pytest.mark.parametrize("started_by", ["async with", "run()"])
async def test_a_worker_stopped_while_redis_is_away_stops(redis_server: RedisServer, started_by: str) -> None:
    """A SIGTERM during an outage: the read in progress keeps retrying until cancelled, and stop()
    waited for the read loop to notice the stop: for ever (``async with``), or it returned while
    ``run()`` went on (the host's task never ended). docs/guides/worker.md bounds a stop: up to
    ``block`` for the read in progress, then the grace. The request it held stays pending, and
    the next worker answers it once Redis is back."""
    names = StreamNames()
    transport = RedisStreamsTransport.from_url(redis_server.url, retry_deadline=1, retry_cap=0.2)
    started = asyncio.Event()

    async def never_done(target: Any, request: AgentRequestEvent) -> str:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    w = worker(transport, FunctionExecutor(never_done), consumer="stopped", block=0.2)
    held = request_event(names, "held")
    running: asyncio.Task[None] | None = None
    try:
        await transport.ensure_group(names.requests, GROUP)
        await transport.publish(names.requests, held)
        if started_by == "async with":
            await w.__aenter__()
        else:
            running = asyncio.create_task(w.run())
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.to_thread(redis_server.kill)
        await eventually(lambda: asyncio.sleep(0, transport.stats.reconnects > 0), 30, "the outage noticed")
        async with asyncio.timeout(60):  # a hang guard: before, stop() or run() never returned
            await w.stop(grace=0)
            if running is not None:
                await running
    finally:
        await asyncio.to_thread(redis_server.start)
        await transport.aclose()
    publisher = RedisStreamsTransport.from_url(redis_server.url)
    try:
        successor = worker(publisher, consumer="successor")
        await successor.run_until_idle()
        assert_exactly_once(await replies(publisher, names), [held.id])
        await assert_nothing_pending(publisher, names)
    finally:
        await publisher.aclose()
