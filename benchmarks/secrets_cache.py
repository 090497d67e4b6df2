"""Cache-hit throughput and cold single-flight latency of ``SecretsManager``.

Run from the repository root::

    python benchmarks/secrets_cache.py                       # 1,000,000 gets, 3 repetitions, 200 cold keys
    python benchmarks/secrets_cache.py --gets 2000000 --cold-keys 500 --delay 0.002 --json out.json

Everything runs in this one process, on one event loop; no network.

1. **Cache hits.** ``SecretsManager(StaticSource({...}))`` with its key already loaded; N sequential
   ``await`` calls in one coroutine, timed with ``time.perf_counter``:

   * ``bare TTLCache``: the baseline, ``async def get(key): return cache.get(key)`` over a
     ``cachetools.TTLCache`` (the manager's own cache class, the same size, ttl and
     ``time.monotonic`` timer) holding the same ``(provider, user_id, name)`` tuple key, built once;
   * ``get system``: ``await manager.get("openai", "api_key")``;
   * ``get user``: ``await manager.get("openai", "api_key", user_id="u1")``;
   * ``resolve``: ``await manager.resolve("secret:openai:api_key")`` (parses the reference each call).

   The variants run interleaved in each repetition (bare, system, user, resolve, then again); the
   table shows the median of the repetitions and each variant's ratio to the baseline.

2. **Cold keys, single-flight.** An ``InMemoryIdentityService`` (``--delay`` seconds added to every
   request it answers) served through ``IdentityClient(url, token=..., transport=
   service.mock_transport())``, ``IdentitySource`` and a ``SecretsManager``. Each of K users owns one
   ``openai`` secret. For each of K cold keys, ``asyncio.gather`` of C (1,000) concurrent gets of
   that key is timed as a whole; for K more cold keys, one ``get`` alone. The table gives p50 / p99
   / max over the K keys, next to a warm gather (C concurrent gets of a cached key: what ``gather``
   and the hits cost without any fetch). Every cold key must cost exactly one list request
   (``GET /api/v1/secrets``) and one values request (``GET /api/v1/secrets/{id}/values``), and every
   get must return the key's own value; otherwise the script exits with status 1.

3. **Redaction.** A ``Redactor`` holding N registered values (random 40-character keys, as every
   user's key would be), for N in 10, 1,000 and 10,000: the time to register them, and to redact
   a 200-character log line and a 5 KB traceback that hold none of them, against the baseline of
   the same run: searching the text for every form in turn (what ``redact`` did before it looked a
   large set up by the text's windows). Both must give the same text (checked).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import _common
import cachetools
import httpx
from cachetools import TTLCache

from dynamic_agents import __version__ as library_version
from dynamic_agents._redaction import MASK, Redactor
from dynamic_agents.secrets import IdentityClient, IdentitySource, SecretsManager, SecretValue, StaticSource
from dynamic_agents.testing import InMemoryIdentityService

PROVIDER: Final = "openai"
FIELD: Final = "api_key"
USER: Final = "u1"
REFERENCE: Final = f"secret:{PROVIDER}:{FIELD}"
IDENTITY_URL: Final = "http://localhost:8000"  # never contacted: the mock transport answers
SERVICE_TOKEN: Final = "service-token"  # the in-memory service's default token: acts for the service
LIST_PATH: Final = "/api/v1/secrets"
VALUES_PATH: Final = "/api/v1/secrets/{id}/values"
BASELINE: Final = "bare TTLCache"
TARGET_PER_S: Final = 500_000


class BenchmarkError(Exception):
    """A check failed: the figures would not mean what they claim."""


# -- cache hits -----------------------------------------------------------------------------------

CacheKey = tuple[str, str | None, str | None]  # provider, user_id, name: the manager's key


def bare_cache_get() -> tuple[Callable[[CacheKey], Awaitable[SecretValue | None]], CacheKey]:
    """The baseline: a ``TTLCache`` as the manager builds it (size, ttl, timer) behind one async get."""
    cache: TTLCache[CacheKey, SecretValue] = TTLCache(maxsize=1024, ttl=300.0 + 600.0, timer=time.monotonic)
    key: CacheKey = (PROVIDER, None, None)
    cache[key] = SecretValue("sk-bare")

    async def get(key: CacheKey) -> SecretValue | None:
        return cache.get(key)

    return get, key


# One loop per variant, each awaiting its call directly as a caller would write it (a shared
# wrapper coroutine would add a frame per call and flatten the differences).


async def loop_bare(get: Callable[[CacheKey], Awaitable[SecretValue | None]], key: CacheKey, n: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(n):
        await get(key)
    return time.perf_counter() - started


async def loop_system(manager: SecretsManager, n: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(n):
        await manager.get("openai", "api_key")
    return time.perf_counter() - started


async def loop_user(manager: SecretsManager, n: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(n):
        await manager.get("openai", "api_key", user_id="u1")
    return time.perf_counter() - started


async def loop_resolve(manager: SecretsManager, n: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(n):
        await manager.resolve("secret:openai:api_key")
    return time.perf_counter() - started


@dataclass
class HitSummary:
    name: str
    per_s: float
    ns_per_get: float
    vs_baseline: float
    runs_per_s: list[float] = field(default_factory=list)


async def measure_hits(n: int, repetitions: int) -> tuple[list[HitSummary], dict[str, int]]:
    manager = SecretsManager(
        StaticSource({PROVIDER: {FIELD: "sk-system"}}, users={USER: {PROVIDER: {FIELD: "sk-user"}}})
    )
    get, key = bare_cache_get()
    checks = [  # (what, got, expected); the manager's first two gets are misses that load the keys
        ("bare get", await get(key), "sk-bare"),
        ("get system", await manager.get(PROVIDER, FIELD), "sk-system"),
        ("get user", await manager.get(PROVIDER, FIELD, user_id=USER), "sk-user"),
        ("resolve", await manager.resolve(REFERENCE), "sk-system"),
    ]
    for what, value, expected in checks:
        if value is None or value.reveal() != expected:
            raise BenchmarkError(f"warm-up {what} returned {value!r}, not the expected value")
    manager.stats.hits = manager.stats.misses = manager.stats.fetches = 0
    variants: dict[str, Callable[[], Awaitable[float]]] = {
        BASELINE: lambda: loop_bare(get, key, n),
        "get system": lambda: loop_system(manager, n),
        "get user": lambda: loop_user(manager, n),
        "resolve": lambda: loop_resolve(manager, n),
    }
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for repetition in range(1, repetitions + 1):
        line = []
        for name, run in variants.items():
            per_s = n / await run()
            runs[name].append(per_s)
            line.append(f"{name} {per_s:,.0f}/s")
        print(f"  rep {repetition}: " + ", ".join(line), flush=True)
    stats = {"hits": manager.stats.hits, "misses": manager.stats.misses, "fetches": manager.stats.fetches}
    await manager.aclose()
    if stats != {"hits": 3 * n * repetitions, "misses": 0, "fetches": 0}:
        raise BenchmarkError(f"the hit phase was not all cache hits: {stats}")
    base = statistics.median(runs[BASELINE])
    summaries = []
    for name, per_run in runs.items():
        per_s = statistics.median(per_run)
        summaries.append(HitSummary(name, per_s, 1e9 / per_s, per_s / base, per_run))
    return summaries, stats


# -- cold keys ------------------------------------------------------------------------------------


@dataclass
class Latency:
    """Seconds over the cold keys: p50, p99 (inclusive quantiles), max."""

    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        cuts = (
            statistics.quantiles(seconds, n=100, method="inclusive")
            if len(seconds) > 1
            else [seconds[0]] * 99
        )
        return cls(len(seconds), cuts[49] * 1e3, cuts[98] * 1e3, max(seconds) * 1e3)


@dataclass
class ColdSummary:
    keys: int
    concurrency: int
    delay_s: float
    gather_cold: Latency
    single_cold: Latency
    gather_warm: Latency
    cold_keys_checked: int
    list_requests: int
    values_requests: int
    manager_stats: dict[str, int]


def user_of(index: int) -> str:
    return f"user-{index:05d}"


async def measure_cold(keys: int, concurrency: int, delay: float) -> ColdSummary:
    service = InMemoryIdentityService()  # its default "service-token" acts for the service: sees all
    expected = {user_of(index): f"sk-{user_of(index)}" for index in range(2 * keys + 1)}
    for user_id, value in expected.items():
        service.add_secret("default", PROVIDER, {FIELD: value}, user_id=user_id)
    service.delay = delay
    client = IdentityClient(IDENTITY_URL, token=SERVICE_TOKEN, transport=service.mock_transport())
    manager = SecretsManager(IdentitySource(client))

    async def timed(user_id: str, n: int) -> tuple[float, tuple[int, int]]:
        """Seconds for ``n`` concurrent gets of the key (one plain ``await`` for ``n == 1``), and the
        (list, values) requests they sent; checks every value returned."""
        lists, reads = service.count("GET", LIST_PATH), service.count("GET", VALUES_PATH)
        gc.collect()
        started = time.perf_counter()
        if n == 1:
            values = [await manager.get(PROVIDER, FIELD, user_id)]
        else:
            values = await asyncio.gather(*(manager.get(PROVIDER, FIELD, user_id) for _ in range(n)))
        seconds = time.perf_counter() - started
        if any(value is None or value.reveal() != expected[user_id] for value in values):
            raise BenchmarkError(f"{user_id}: a get returned another key's value, or None")
        sent = (service.count("GET", LIST_PATH) - lists, service.count("GET", VALUES_PATH) - reads)
        return seconds, sent

    gathered: list[float] = []
    singles: list[float] = []
    warm: list[float] = []
    sent_by_key: dict[str, tuple[int, int]] = {}
    try:
        await timed(user_of(2 * keys), concurrency)  # warm up the client and the code paths once
        for index in range(keys):
            user_id, single_user = user_of(index), user_of(keys + index)
            seconds, sent_by_key[user_id] = await timed(user_id, concurrency)
            gathered.append(seconds)
            seconds, sent_by_key[single_user] = await timed(single_user, 1)
            singles.append(seconds)
            seconds, sent = await timed(user_id, concurrency)  # now cached: must send nothing
            warm.append(seconds)
            if sent != (0, 0):
                raise BenchmarkError(f"{user_id}: gets of a cached key sent {sent} (list, values) requests")
        stats = {
            "hits": manager.stats.hits,
            "misses": manager.stats.misses,
            "fetches": manager.stats.fetches,
            "errors": manager.stats.errors,
        }
    finally:
        await manager.aclose()
    wrong = {user_id: sent for user_id, sent in sent_by_key.items() if sent != (1, 1)}
    if wrong:
        sample = ", ".join(f"{user_id}: {sent}" for user_id, sent in list(wrong.items())[:3])
        raise BenchmarkError(
            f"{len(wrong)} of {len(sent_by_key)} cold keys did not cost exactly 1 list + 1 values request "
            f"(list, values): {sample}"
        )
    loaded = 2 * keys + 1  # the cold keys and the warm-up key: one miss and one fetch each
    if (stats["misses"], stats["fetches"], stats["errors"]) != (loaded, loaded, 0):
        raise BenchmarkError(f"expected {loaded} misses and fetches and no errors, got {stats}")
    return ColdSummary(
        keys=keys,
        concurrency=concurrency,
        delay_s=delay,
        gather_cold=Latency.of(gathered),
        single_cold=Latency.of(singles),
        gather_warm=Latency.of(warm),
        cold_keys_checked=len(sent_by_key),
        list_requests=sum(sent[0] for sent in sent_by_key.values()),
        values_requests=sum(sent[1] for sent in sent_by_key.values()),
        manager_stats=stats,
    )


# -- redaction ------------------------------------------------------------------------------------

LOG_LINE: Final = ("worker handled request 8c1f in 12.3 ms for session s-42: completed, 3 events " * 3)[:200]
TRACEBACK: Final = (
    'Traceback (most recent call last):\n  File "/srv/app/worker.py", line 412, in handle\n'
    "    result = await executor.run(target, request)\nTransportError: reading 'agent:requests' "
    "failed: Connection reset by peer\n"
) * 25


@dataclass
class RedactionSummary:
    values: int
    register_us_per_value: float
    line_us: float
    line_every_form_us: float
    traceback_us: float
    traceback_every_form_us: float


def _every_form(forms: Sequence[str], text: str) -> str:
    """The baseline: the text searched for each form, longest first."""
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def measure_redaction(sizes: Sequence[int]) -> list[RedactionSummary]:
    summaries = []
    for size in sizes:
        values = [secrets.token_urlsafe(30) for _ in range(size)]
        redactor = Redactor()
        started = time.perf_counter()
        for value in values:
            redactor.register(value)
        registering = time.perf_counter() - started
        forms = sorted(redactor._forms, key=len, reverse=True)  # the forms it masks, longest first
        timings = []
        for text in (LOG_LINE, TRACEBACK):
            if redactor.redact(text) != _every_form(forms, text):
                raise BenchmarkError(f"redact and the every-form baseline differ on {text[:40]!r}")
            number = 2000 if text is LOG_LINE else 100
            for redact in (partial(redactor.redact, text), partial(_every_form, forms, text)):
                best = min(timeit.repeat(redact, number=number, repeat=5))
                timings.append(best / number * 1e6)
        line, line_every, traceback, traceback_every = timings
        summaries.append(
            RedactionSummary(size, registering / size * 1e6, line, line_every, traceback, traceback_every)
        )
    return summaries


def redaction_table(summaries: Sequence[RedactionSummary]) -> str:
    header = (
        f"{'values registered':<18} {'register µs/value':>17} {'200-char line µs':>17} {'every form':>11} "
        f"{'5 KB text µs':>13} {'every form':>11}"
    )
    rows = [
        f"{s.values:<18,} {s.register_us_per_value:>17.1f} {s.line_us:>17.1f} {s.line_every_form_us:>11.1f} "
        f"{s.traceback_us:>13.1f} {s.traceback_every_form_us:>11.1f}"
        for s in summaries
    ]
    return "\n".join([header, "-" * len(header), *rows])


# -- reporting ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return _common.machine(
        cachetools=cachetools.__version__, httpx=httpx.__version__, dynamic_agents=library_version
    )


def hit_table(summaries: Sequence[HitSummary]) -> str:
    header = f"{'cache hit':<14} {'gets/s':>10} {'ns/get':>8} {'vs ' + BASELINE:>17}"
    rows = [
        f"{s.name:<14} {s.per_s:>10,.0f} {s.ns_per_get:>8,.0f} {s.vs_baseline:>16.2f}x" for s in summaries
    ]
    return "\n".join([header, "-" * len(header), *rows])


def cold_table(cold: ColdSummary) -> str:
    header = f"{'latency (ms)':<34} {'p50':>8} {'p99':>8} {'max':>8}"
    rows = [
        (f"cold key, gather of {cold.concurrency:,} gets", cold.gather_cold),
        ("cold key, one get", cold.single_cold),
        (f"warm key, gather of {cold.concurrency:,} gets", cold.gather_warm),
    ]
    lines = [header, "-" * len(header)]
    lines += [f"{name:<34} {lat.p50_ms:>8.3f} {lat.p99_ms:>8.3f} {lat.max_ms:>8.3f}" for name, lat in rows]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


async def benchmark(gets: int, repetitions: int, keys: int, concurrency: int, delay: float) -> dict[str, Any]:
    """Run both parts, print the figures and return them (the ``--json`` report)."""
    info = machine()
    print(
        f"{info['nproc']} CPU ({info['cpu']}), Python {info['python']}, cachetools {info['cachetools']}, "
        f"httpx {info['httpx']}",
        flush=True,
    )
    print(f"cache hits: {gets:,} sequential gets per variant, {repetitions} repetitions (median)", flush=True)
    hits, hit_stats = await measure_hits(gets, repetitions)
    print(
        f"cold keys: {keys} gathers of {concurrency:,} gets + {keys} single gets, "
        f"service delay {delay * 1e3:g} ms",
        flush=True,
    )
    cold = await measure_cold(keys, concurrency, delay)
    print("redaction: 10, 1,000 and 10,000 values registered (best of 5)", flush=True)
    redaction = measure_redaction((10, 1_000, 10_000))
    manager_hit = next(s for s in hits if s.name == "get system")
    print()
    print(hit_table(hits))
    print(
        f"target: get system >= {TARGET_PER_S:,}/s: "
        f"{'met' if manager_hit.per_s >= TARGET_PER_S else 'NOT met'}"
    )
    print()
    print(cold_table(cold))
    print(
        f"single-flight: {cold.cold_keys_checked} cold keys sent {cold.list_requests} list + "
        f"{cold.values_requests} values requests (exactly 1 + 1 each: checked); manager stats "
        f"{cold.manager_stats}"
    )
    print()
    print(redaction_table(redaction))
    return {
        "benchmark": "secrets_cache",
        "gets": gets,
        "repetitions": repetitions,
        "machine": info,
        "hits": {s.name: asdict(s) for s in hits},
        "hit_stats": hit_stats,
        "target_per_s": TARGET_PER_S,
        "target_met": manager_hit.per_s >= TARGET_PER_S,
        "cold": asdict(cold),
        "redaction": [asdict(summary) for summary in redaction],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--gets", type=int, default=1_000_000, help="gets per hit run (default 1000000)")
    parser.add_argument("--repetitions", type=int, default=3, help="hit runs per variant (default 3)")
    parser.add_argument("--cold-keys", type=int, default=200, help="cold keys per kind (default 200)")
    parser.add_argument("--concurrency", type=int, default=1000, help="gets per gather (default 1000)")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds the service waits per request (default 0)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.gets, args.repetitions, args.cold_keys, args.concurrency) < 1 or args.delay < 0:
        parser.error("--gets, --repetitions, --cold-keys and --concurrency must be >= 1, --delay >= 0")
    try:
        report = asyncio.run(
            benchmark(args.gets, args.repetitions, args.cold_keys, args.concurrency, args.delay)
        )
    except BenchmarkError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
