"""Import time, memory per run in flight and per cached spec, and building a 50-deployment LLM router.

Run from the repository root::

    python benchmarks/imports_memory.py                  # the defaults below (about a minute)
    python benchmarks/imports_memory.py --quick          # fewer repetitions (about 25 s)
    python benchmarks/imports_memory.py --import-repetitions 15 --json out.json

Every measurement runs in a fresh interpreter (``sys.executable``), started by this script; this
process only starts them, collects what they print and reports.

1. **Import time.** For each import set, ``--import-repetitions`` (7) fresh interpreters each run
   ``t = perf_counter(); import ...; print(perf_counter() - t)``, interleaved with a baseline that
   imports nothing (one warm-up round first, not counted, so every ``.pyc`` exists: the children
   run without ``PYTHONDONTWRITEBYTECODE``, see ``child_env``). Reported: the
   median import time measured inside the interpreter (the target is judged on this), the median
   wall time of the whole ``python -c`` minus the baseline's (start-up and teardown of the extra
   modules included), how many modules the import adds and how much it adds to the RSS. The
   import sets: a reference (pydantic and one model class: the floor under anything built on
   pydantic); ``dynamic_agents``; ``dynamic_agents.events``; a worker with a plain function
   (``dynamic_agents.worker`` and ``RedisStreamsTransport``); and a worker with the
   ``AgnoExecutor`` (the same, plus ``AgentRuntime`` / ``AgnoExecutor`` / ``RouterModels`` from
   ``dynamic_agents.agents``, ``dynamic_agents.llm.router`` and ``dynamic_agents.llm.agno``: agno
   and litellm). One ``python -X importtime`` run per set splits the import by top-level package.
   Target: ``import dynamic_agents.events`` <= 150 ms (``--target-ms``); a miss exits with status 1.

2. **Memory per run in flight.** An ``AgentWorker`` on an ``InMemoryTransport`` with a
   ``FunctionExecutor`` whose handler waits on an ``asyncio.Event``, ``concurrency`` = N. N requests
   (about 200 characters of content, one session each, so all of them run at once) are published,
   then the worker starts; once all N handlers are waiting, the traced memory (``tracemalloc``) is
   compared with the memory after publishing. N = 0, 100, 1,000 (``--runs``), each in its own
   interpreter, ``--memory-repetitions`` (3) times; the figure is the least-squares slope of the
   medians: bytes per run in flight in the worker's process (the queued request entries, which
   Redis would hold, are counted apart). The same again without ``tracemalloc`` gives an RSS slope.

3. **Memory per cached spec.** An ``AgentRuntime`` on an ``InMemorySpecStore`` with
   ``ScriptedModels``; ``--specs`` (1,000) ``AgentSpec``\\ s are stored, then
   ``await runtime.current(SpecKind.AGENT, id)`` validates and caches each one. Traced memory after
   minus before, per spec, for a minimal spec (id and model) and a typical one (name, description,
   ~300 characters of instructions, two tools, tags, history settings). Also timed: a miss (store
   read + validation) and a hit (the cached spec, within ``max_staleness``).

4. **A 50-deployment router.** A ``RouterConfig`` of ``--deployments`` (50) deployments in 10
   model groups, each with ``api_key`` and ``api_base`` as ``secret:`` references to its own named
   secret in a ``StaticSource``: ``build_router(config, secrets)`` then ``aclose()``, timed
   ``--router-runs`` (7) times (median; the first build of the process, with a cold secrets cache,
   reported apart), and the resolution alone: ``await secrets.resolve_all(params)`` for the 50
   deployments (warm cache, median of ``--resolve-loops`` (200) loops; and cold, a new manager each
   time). Routers of 1 and 10 deployments show how the build scales.

A failed check (a probe that crashed, runs not all in flight, a spec not cached, a key not
resolved) exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import _common
import pydantic

from dynamic_agents import __version__ as library_version

TARGET_MS: Final = 150.0
PROBE_PREFIX: Final = "PROBE "
SCRIPT: Final = Path(__file__).resolve()
CHILD_ENV: Final = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "AGNO_TELEMETRY": "false"}
CONTENT: Final = (
    "Hi team, the deploy to staging failed again this morning with a config error in the payment "
    "service; could someone look at the logs and tell me whether we can release today? Thanks!"
)
INSTRUCTIONS: Final = (
    "You are the support assistant of an online shop. Answer in the customer's language, briefly "
    "and politely. Look orders up with the tools before answering questions about them, never "
    "invent an order status, and hand over to a human when the customer asks for one.",
    "Format prices with their currency.",
)
MODEL_GROUPS: Final = 10


class BenchmarkError(Exception):
    """A check failed: the figures would not mean what they claim."""


# -- import sets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSet:
    name: str
    code: str
    target: bool = False


IMPORT_SETS: Final = (
    # The floor under any pydantic-based import: pydantic itself and one model class built.
    ImportSet(
        "reference: pydantic + one model", "from pydantic import BaseModel\nclass M(BaseModel):\n    x: int"
    ),
    ImportSet("import dynamic_agents", "import dynamic_agents"),
    ImportSet("import dynamic_agents.events", "import dynamic_agents.events", target=True),
    ImportSet(
        "worker (FunctionExecutor, Redis)",
        "import dynamic_agents.worker\nfrom dynamic_agents.transports import RedisStreamsTransport",
    ),
    ImportSet(
        "worker (AgnoExecutor: agents extra)",
        "import dynamic_agents.worker\n"
        "from dynamic_agents.transports import RedisStreamsTransport\n"
        "from dynamic_agents.agents import AgentRuntime, AgnoExecutor, RouterModels\n"
        "import dynamic_agents.llm.router, dynamic_agents.llm.agno",
    ),
)
TARGET_SET: Final = next(item for item in IMPORT_SETS if item.target)
_TIMED: Final = """\
import time
_started = time.perf_counter_ns()
{code}
_elapsed = time.perf_counter_ns() - _started
import os, sys
try:
    with open("/proc/self/statm") as _statm:
        _rss = int(_statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
except OSError:
    _rss = 0
print(_elapsed, len(sys.modules), _rss)
"""
_MARK: Final = "--- imports start here ---"


def child_env() -> dict[str, str]:
    """This process's environment for the measured interpreters, with ``CHILD_ENV``, and without
    ``PYTHONDONTWRITEBYTECODE``: with it set (some machines set it globally), the warm-up round
    writes no ``.pyc`` and every measured import of the library, an editable install, compiles
    its modules from source again, while its dependencies' ``.pyc`` files, written when pip
    installed them, are read. An installed package's users import from ``.pyc`` files."""
    env = {**os.environ, **CHILD_ENV}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@dataclass
class ImportSample:
    import_ns: int
    wall_ns: int
    modules: int
    rss_bytes: int


def run_import(code: str) -> ImportSample:
    started = time.perf_counter_ns()
    done = subprocess.run(
        [sys.executable, "-c", _TIMED.format(code=code)],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    wall = time.perf_counter_ns() - started
    if done.returncode != 0:
        raise BenchmarkError(f"importing {code!r} failed:\n{done.stderr.strip()}")
    elapsed, modules, rss = (int(part) for part in done.stdout.split())
    return ImportSample(elapsed, wall, modules, rss)


@dataclass
class ImportFigures:
    name: str
    code: str
    import_ms: float  # median, measured inside the interpreter
    import_ms_min: float
    wall_minus_baseline_ms: float  # median wall time of `python -c` minus the baseline's median
    modules_added: int
    rss_added_mb: float
    samples_ms: list[float]
    importtime_total_ms: float = 0.0  # -X importtime's own total (it adds overhead)
    # -X importtime self time by top-level package; stdlib modules as "stdlib via <package that
    # imported them>"
    by_package_ms: dict[str, float] = field(default_factory=dict)
    own_modules_ms: dict[str, float] = field(default_factory=dict)  # dynamic_agents.* self time


def importtime_breakdown(code: str) -> tuple[float, dict[str, float], dict[str, float]]:
    """One ``-X importtime`` run of ``code`` (start-up imports left out): the total, self time by
    top-level package (stdlib modules under the package that imported them) and the library's
    own modules' self time, in ms."""
    marked = f"import sys\nsys.stderr.write({_MARK!r} + '\\n')\nsys.stderr.flush()\n{code}"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", marked],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    if done.returncode != 0:
        raise BenchmarkError(f"-X importtime of {code!r} failed:\n{done.stderr.strip()}")
    entries: list[tuple[int, str, float]] = []  # (depth, module, self ms), children before parents
    for line in done.stderr.split(_MARK, 1)[-1].splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        depth = (len(parts[2]) - len(parts[2].lstrip()) - 1) // 2
        entries.append((depth, parts[2].strip(), int(parts[0]) / 1000))
    by_package: dict[str, float] = {}
    own: dict[str, float] = {}
    ancestors: list[tuple[int, str]] = []  # (depth, group); reversed, a parent precedes its imports
    for depth, name, self_ms in reversed(entries):
        while ancestors and ancestors[-1][0] >= depth:
            ancestors.pop()
        top = name.split(".")[0]
        owner = top
        if top in sys.stdlib_module_names:
            owner = ancestors[-1][1] if ancestors else ""
        ancestors.append((depth, owner))
        group = owner if top == owner else f"stdlib via {owner}" if owner else "stdlib"
        by_package[group] = by_package.get(group, 0.0) + self_ms
        if top == "dynamic_agents":
            own[name] = own.get(name, 0.0) + self_ms
    ordered = dict(sorted(by_package.items(), key=lambda item: -item[1]))
    return sum(by_package.values()), ordered, dict(sorted(own.items(), key=lambda item: -item[1]))


def measure_imports(repetitions: int) -> tuple[list[ImportFigures], ImportSample]:
    for item in (None, *IMPORT_SETS):  # warm-up: compile every .pyc, fill the page cache
        run_import("pass" if item is None else item.code)
    baseline: list[ImportSample] = []
    samples: dict[str, list[ImportSample]] = {item.name: [] for item in IMPORT_SETS}
    for repetition in range(repetitions):
        print(f"  import round {repetition + 1}/{repetitions}", flush=True)
        baseline.append(run_import("pass"))
        for item in IMPORT_SETS:
            samples[item.name].append(run_import(item.code))
    base = ImportSample(
        round(statistics.median(s.import_ns for s in baseline)),
        round(statistics.median(s.wall_ns for s in baseline)),
        round(statistics.median(s.modules for s in baseline)),
        round(statistics.median(s.rss_bytes for s in baseline)),
    )
    figures = []
    for item in IMPORT_SETS:
        runs = samples[item.name]
        total, by_package, own = importtime_breakdown(item.code)
        figures.append(
            ImportFigures(
                name=item.name,
                code=item.code,
                import_ms=statistics.median(s.import_ns for s in runs) / 1e6,
                import_ms_min=min(s.import_ns for s in runs) / 1e6,
                wall_minus_baseline_ms=(statistics.median(s.wall_ns for s in runs) - base.wall_ns) / 1e6,
                modules_added=round(statistics.median(s.modules for s in runs)) - base.modules,
                rss_added_mb=(statistics.median(s.rss_bytes for s in runs) - base.rss_bytes) / 2**20,
                samples_ms=[s.import_ns / 1e6 for s in runs],
                importtime_total_ms=total,
                by_package_ms=by_package,
                own_modules_ms=own,
            )
        )
    return figures, base


# -- probes (each in its own interpreter) ---------------------------------------------------------


def rss_bytes() -> int | None:
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


def memory_now(traced: bool) -> int:
    gc.collect()
    if traced:
        return tracemalloc.get_traced_memory()[0]
    return rss_bytes() or 0


def short_path(path: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    stdlib = f"python{sys.version_info.major}.{sys.version_info.minor}/"
    if stdlib in path:
        return "stdlib: " + path.split(stdlib, 1)[1]
    return path


def by_file() -> dict[str, int]:
    """Traced bytes by the file that allocated them (the snapshot itself is freed before returning)."""
    snapshot = tracemalloc.take_snapshot()
    sizes = {
        short_path(str(stat.traceback[0].filename)): stat.size for stat in snapshot.statistics("filename")
    }
    del snapshot
    gc.collect()
    return sizes


async def probe_worker(n: int, traced: bool) -> dict[str, Any]:
    from dynamic_agents.events import AgentRequestEvent, Target, TargetType
    from dynamic_agents.execution import FunctionExecutor
    from dynamic_agents.routing import EventRouter
    from dynamic_agents.transports import InMemoryTransport
    from dynamic_agents.worker import AgentWorker, WorkerSettings

    if traced:
        tracemalloc.start(1)
    transport = InMemoryTransport()
    names = transport.names
    release = asyncio.Event()
    started = 0

    async def blocked(target: Target, request: AgentRequestEvent) -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "done"

    worker = AgentWorker(
        transport,
        transport.coordinator(),
        EventRouter(default=Target(type=TargetType.AGENT, id="assistant")),
        FunctionExecutor(blocked, name="blocked"),
        settings=WorkerSettings(concurrency=max(1, n), batch_size=max(1, n), block=0.05),
    )
    await transport.ensure_group(names.requests, worker.settings.group)
    before_publish = memory_now(traced)
    for i in range(n):  # built and published one at a time: no list of events stays alive
        await transport.publish(
            names.requests,
            AgentRequestEvent(
                source="discord",
                source_id=f"{900_000_000_000_000_000 + i}",
                user_id=f"{800_000_000_000_000_000 + i}",
                user_name=f"user{i}",
                content=CONTENT,
                session_id=f"discord:{900_000_000_000_000_000 + i}",
                reply_stream=names.responses("discord", f"{900_000_000_000_000_000 + i}"),
                metadata={"guild_id": "700000000000000000"},
            ),
        )
    files_published = by_file() if traced and n else {}
    published = memory_now(traced)
    async with worker:
        async with asyncio.timeout(120):
            while started < n or worker.in_flight < n:  # noqa: ASYNC110 - polling, with a deadline
                await asyncio.sleep(0.005)
            for _ in range(20):  # let every task reach its await
                await asyncio.sleep(0)
        in_flight = worker.in_flight
        running = memory_now(traced)
        files_running = by_file() if traced and n else {}
        release.set()
        async with asyncio.timeout(120):
            while worker.stats.completed < n:  # noqa: ASYNC110 - polling, with a deadline
                await asyncio.sleep(0.005)
    if in_flight != n or started != n or worker.stats.completed != n:
        raise BenchmarkError(
            f"{n} requests: {started} started, {in_flight} in flight, {worker.stats.completed} completed"
        )
    per_file = {
        name: size - files_published.get(name, 0)
        for name, size in files_running.items()
        if size - files_published.get(name, 0) > 0
    }
    return {
        "n": n,
        "traced": traced,
        "before_publish": before_publish,
        "published": published,
        "running": running,
        "entries_bytes": published - before_publish,
        "worker_bytes": running - published,
        "per_file": dict(sorted(per_file.items(), key=lambda item: -item[1])[:12]),
    }


def spec_document(variant: str, i: int) -> dict[str, Any]:
    document: dict[str, Any] = {"id": f"agent-{i}", "model": "gpt"}
    if variant == "typical":
        document |= {
            "name": f"Support agent {i}",
            "description": "Answers customers' questions about their orders.",
            "instructions": list(INSTRUCTIONS),
            "tools": ["lookup_order", "search_help"],
            "tags": ["support", "en"],
            "add_history_to_context": True,
            "num_history_runs": 5,
        }
    return document


def lookup_order(order_id: str) -> str:
    """The status of an order."""
    return f"order {order_id}: shipped"


def search_help(query: str) -> str:
    """Search the help centre."""
    return f"no article about {query}"


async def probe_specs(n: int, variant: str) -> dict[str, Any]:
    os.environ.setdefault("AGNO_TELEMETRY", "false")
    from dynamic_agents.agents import AgentRuntime, AgentSpec, InMemorySpecStore, SpecKind, ToolRegistry
    from dynamic_agents.testing import ScriptedModels

    registry = ToolRegistry()
    registry.tool(lookup_order)
    registry.tool(search_help)
    store = InMemorySpecStore()
    runtime = AgentRuntime(store, registry, ScriptedModels({"gpt": []}), max_staleness=3600.0)
    document_chars = 0
    for i in range(n):
        stored = await store.create(AgentSpec.from_dict(spec_document(variant, i)))
        document_chars += len(json.dumps(stored.to_document()))
    # One spec first, then forgotten: one-time costs (validators, registry lookups) stay out.
    await runtime.current(SpecKind.AGENT, "agent-0")
    runtime.forget(SpecKind.AGENT, "agent-0")
    ids = [f"agent-{i}" for i in range(n)]
    tracemalloc.start(1)
    before = memory_now(traced=True)
    for spec_id in ids:
        await runtime.current(SpecKind.AGENT, spec_id)
    after = memory_now(traced=True)
    tracemalloc.stop()
    cached = len(runtime._cache)  # the runtime's cache itself: what is being measured
    if cached != n:
        raise BenchmarkError(f"{cached} specs cached after {n} current() calls")
    gc.collect()
    for spec_id in ids:  # timed misses: store read, JSON, validation, references checked
        runtime.forget(SpecKind.AGENT, spec_id)
    started = time.perf_counter()
    for spec_id in ids:
        spec = await runtime.current(SpecKind.AGENT, spec_id)
        if spec.id != spec_id:
            raise BenchmarkError(f"current({spec_id!r}) returned {spec.id!r}")
    miss_s = time.perf_counter() - started
    hits = max(n, 100_000)
    started = time.perf_counter()
    for i in range(hits):
        await runtime.current(SpecKind.AGENT, ids[i % n])
    hit_s = time.perf_counter() - started
    await runtime.aclose()
    return {
        "n": n,
        "variant": variant,
        "document_chars_mean": document_chars / n,
        "bytes": after - before,
        "bytes_per_spec": (after - before) / n,
        "miss_us": miss_s / n * 1e6,
        "hit_ns": hit_s / hits * 1e9,
    }


def router_config(deployments: int) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": f"chat-{i % MODEL_GROUPS}",
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_key": f"secret:openai/region-{i}:api_key",
                    "api_base": f"secret:openai/region-{i}:api_base",
                    "rpm": 600,
                },
            }
            for i in range(deployments)
        ],
        "num_retries": 1,
    }


def secret_values(deployments: int) -> dict[tuple[str, str], dict[str, str]]:
    return {
        ("openai", f"region-{i}"): {
            "api_key": f"sk-region{i:03d}-" + "x" * 40,
            "api_base": f"https://llm-{i}.example.net/v1",
        }
        for i in range(deployments)
    }


async def probe_router(deployments: int, runs: int, loops: int) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # after the variable above (the library's adapter sets it too)

    from dynamic_agents.llm import RouterConfig
    from dynamic_agents.llm.router import build_router
    from dynamic_agents.secrets import SecretsManager, StaticSource

    values = secret_values(deployments)
    started = time.perf_counter()
    config = RouterConfig.from_dict(router_config(deployments))
    config_ms = (time.perf_counter() - started) * 1e3
    config_runs = []
    for _ in range(runs):
        started = time.perf_counter()
        RouterConfig.from_dict(router_config(deployments))
        config_runs.append((time.perf_counter() - started) * 1e3)
    secrets = SecretsManager(StaticSource(named=values))
    cost_entries_before = len(litellm.model_cost)

    started = time.perf_counter()
    llm = await build_router(config, secrets)
    first_ms = (time.perf_counter() - started) * 1e3
    deployed = llm.router.model_list
    keys = {d["litellm_params"].get("api_key") for d in deployed}
    expected = {v["api_key"] for v in values.values()}
    if len(llm.deployment_ids) != deployments or keys != expected:
        raise BenchmarkError(
            f"router built with {len(llm.deployment_ids)} deployments; keys resolved: {keys == expected}"
        )
    cost_entries_built = len(litellm.model_cost)
    await llm.aclose()
    cost_entries_closed = len(litellm.model_cost)

    build_runs, close_runs = [], []
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        llm = await build_router(config, secrets)
        built = time.perf_counter()
        await llm.aclose()
        close_runs.append((time.perf_counter() - built) * 1e3)
        build_runs.append((built - started) * 1e3)

    params = [d.litellm_params for d in config.model_list]
    warm_runs = []
    for _ in range(loops):
        started = time.perf_counter()
        for item in params:
            await secrets.resolve_all(item)
        warm_runs.append((time.perf_counter() - started) * 1e3)
    resolved = [await secrets.resolve_all(item) for item in params]
    if {r["api_key"].reveal() for r in resolved} != expected:
        raise BenchmarkError("resolve_all did not return the secrets' values")
    cold_runs = []
    for _ in range(runs):
        fresh = SecretsManager(StaticSource(named=values))
        started = time.perf_counter()
        for item in params:
            await fresh.resolve_all(item)
        cold_runs.append((time.perf_counter() - started) * 1e3)
        await fresh.aclose()

    scaling: dict[str, float] = {}
    for size in sorted({1, 10, deployments}):
        smaller = RouterConfig.from_dict(router_config(size))
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            llm = await build_router(smaller, secrets)
            times.append((time.perf_counter() - started) * 1e3)
            await llm.aclose()
        scaling[str(size)] = statistics.median(times)
    await secrets.aclose()
    references = sum(
        1
        for item in params
        for value in item.values()
        if isinstance(value, str) and value.startswith("secret:")
    )
    return {
        "deployments": deployments,
        "model_groups": MODEL_GROUPS,
        "references": references,
        "runs": runs,
        "loops": loops,
        "config_first_ms": config_ms,
        "config_ms": statistics.median(config_runs),
        "first_build_ms": first_ms,
        "build_ms": statistics.median(build_runs),
        "build_ms_min": min(build_runs),
        "build_runs_ms": build_runs,
        "aclose_ms": statistics.median(close_runs),
        "resolve_warm_ms": statistics.median(warm_runs),
        "resolve_warm_us_per_reference": statistics.median(warm_runs) * 1e3 / references,
        "resolve_cold_ms": statistics.median(cold_runs),
        "build_ms_by_deployments": scaling,
        "litellm_model_cost_entries": {
            "before": cost_entries_before,
            "built": cost_entries_built,
            "after_aclose": cost_entries_closed,
        },
        "litellm": getattr(litellm, "__version__", None) or _version("litellm"),
    }


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def run_probe(args: argparse.Namespace) -> int:
    """The child side: measure one thing, print one ``PROBE {json}`` line."""
    result: dict[str, Any]
    try:
        if args.probe == "worker":
            result = asyncio.run(probe_worker(args.n, args.mode == "tracemalloc"))
        elif args.probe == "specs":
            result = asyncio.run(probe_specs(args.n, args.mode))
        else:
            result = asyncio.run(probe_router(args.n, args.router_runs or 1, args.loops))
    except BenchmarkError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(PROBE_PREFIX + json.dumps(result), flush=True)
    return 0


def probe(kind: str, n: int, mode: str = "", *, runs: int = 1, loops: int = 1) -> dict[str, Any]:
    """Run one probe in a fresh interpreter and return what it measured."""
    command = [sys.executable, str(SCRIPT), "--probe", kind, "--n", str(n), "--mode", mode]
    command += ["--router-runs", str(runs), "--loops", str(loops)]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(PROBE_PREFIX)]
    if done.returncode != 0 or not lines:
        raise BenchmarkError(
            f"probe {kind} n={n} {mode} failed (status {done.returncode}):\n{done.stderr.strip()[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(PROBE_PREFIX))
    return result


# -- memory figures -------------------------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


@dataclass
class InFlightRow:
    n: int
    worker_bytes: float  # traced, median of the repetitions
    entries_bytes: float  # traced: the queued request entries in the in-memory "Redis"
    rss_bytes: float | None  # RSS after all in flight minus after publishing, median
    worker_runs: list[int]
    rss_runs: list[int]


@dataclass
class InFlightFigures:
    rows: list[InFlightRow]
    bytes_per_run: float  # least-squares slope, tracemalloc
    entry_bytes_per_request: float
    rss_bytes_per_run: float | None
    per_file_per_run: dict[str, float]  # largest N, last traced repetition


def measure_in_flight(sizes: Sequence[int], repetitions: int) -> InFlightFigures:
    rows = []
    per_file: dict[str, float] = {}
    rss_available = rss_bytes() is not None
    for n in sizes:
        traced = []
        rss: list[dict[str, Any]] = []
        for repetition in range(repetitions):
            print(f"  {n:,} runs in flight, repetition {repetition + 1}/{repetitions}", flush=True)
            traced.append(probe("worker", n, "tracemalloc"))
            if rss_available:
                rss.append(probe("worker", n, "rss"))
        if n == max(sizes) and n:
            per_file = {name: size / n for name, size in traced[-1]["per_file"].items()}
        rows.append(
            InFlightRow(
                n=n,
                worker_bytes=statistics.median(r["worker_bytes"] for r in traced),
                entries_bytes=statistics.median(r["entries_bytes"] for r in traced),
                rss_bytes=statistics.median(r["worker_bytes"] for r in rss) if rss else None,
                worker_runs=[r["worker_bytes"] for r in traced],
                rss_runs=[r["worker_bytes"] for r in rss],
            )
        )
    rss_points = [(row.n, row.rss_bytes) for row in rows if row.rss_bytes is not None]
    return InFlightFigures(
        rows=rows,
        bytes_per_run=slope([(row.n, row.worker_bytes) for row in rows]),
        entry_bytes_per_request=slope([(row.n, row.entries_bytes) for row in rows]),
        rss_bytes_per_run=slope(rss_points) if len(rss_points) == len(rows) else None,
        per_file_per_run=per_file,
    )


# -- reporting ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return _common.machine(
        pydantic=pydantic.VERSION,
        agno=_version("agno"),
        litellm=_version("litellm"),
        dynamic_agents=library_version,
    )


def import_table(figures: Sequence[ImportFigures], base: ImportSample, repetitions: int) -> str:
    header = (
        f"{f'import (median of {repetitions})':<38} {'import ms':>10} {'min ms':>8} {'wall-pass ms':>13} "
        f"{'+modules':>9} {'+RSS MB':>8}"
    )
    lines = [header, "-" * len(header)]
    lines += [
        f"{f.name:<38} {f.import_ms:>10.1f} {f.import_ms_min:>8.1f} {f.wall_minus_baseline_ms:>13.1f} "
        f"{f.modules_added:>9,} {f.rss_added_mb:>8.1f}"
        for f in figures
    ]
    lines.append(
        f"(baseline `python -c pass`: {base.wall_ns / 1e6:.1f} ms wall, {base.modules} modules, "
        f"{base.rss_bytes / 2**20:.1f} MB RSS)"
    )
    lines.append("-X importtime, self time by top-level package (share of its total):")
    for f in figures:
        parts = ", ".join(
            f"{name} {ms:.0f} ms ({ms / f.importtime_total_ms:.0%})"
            for name, ms in list(f.by_package_ms.items())[:6]
            if f.importtime_total_ms
        )
        lines.append(f"  {f.name}: {parts}")
    events = next(f for f in figures if f.name == TARGET_SET.name)
    own = ", ".join(f"{name} {ms:.1f}" for name, ms in list(events.own_modules_ms.items())[:5])
    lines.append(f"  largest own modules under `import dynamic_agents.events` (self ms): {own}")
    return "\n".join(lines)


def in_flight_table(figures: InFlightFigures) -> str:
    header = (
        f"{'runs in flight':<15} {'worker bytes (traced)':>22} {'per run':>9} {'request entries':>16} "
        f"{'RSS delta':>12}"
    )
    lines = [header, "-" * len(header)]
    for row in figures.rows:
        per_run = f"{row.worker_bytes / row.n:,.0f}" if row.n else "-"
        rss = f"{row.rss_bytes:,.0f}" if row.rss_bytes is not None else "n/a"
        lines.append(
            f"{row.n:<15,} {row.worker_bytes:>22,.0f} {per_run:>9} {row.entries_bytes:>16,.0f} {rss:>12}"
        )
    rss_slope = (
        f"{figures.rss_bytes_per_run:,.0f} B by RSS" if figures.rss_bytes_per_run is not None else "no RSS"
    )
    lines.append(
        f"slope: {figures.bytes_per_run:,.0f} B per run in flight traced ({rss_slope}); "
        f"a queued request entry: {figures.entry_bytes_per_request:,.0f} B"
    )
    top = ", ".join(f"{name} {size:,.0f}" for name, size in list(figures.per_file_per_run.items())[:8])
    lines.append(f"per run, by allocating file (B): {top}")
    return "\n".join(lines)


def spec_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'cached specs':<13} {'variant':<8} {'JSON chars':>11} {'bytes/spec':>11} {'miss µs':>8} "
        f"{'hit ns':>7}"
    )
    lines = [header, "-" * len(header)]
    lines += [
        f"{r['n']:<13,} {r['variant']:<8} {r['document_chars_mean']:>11,.0f} {r['bytes_per_spec']:>11,.0f} "
        f"{r['miss_us']:>8.1f} {r['hit_ns']:>7,.0f}"
        for r in rows
    ]
    lines.append(
        "(miss: store read + JSON + validation + reference checks; hit: cached, within max_staleness)"
    )
    return "\n".join(lines)


def router_table(r: dict[str, Any]) -> str:
    n, refs = r["deployments"], r["references"]
    header = f"{f'router: {n} deployments, {refs} secret references':<50} {'median ms':>10}"
    rows = [
        ("RouterConfig.from_dict", r["config_ms"]),
        ("build_router, first in the process (cold cache)", r["first_build_ms"]),
        (f"build_router, warm secrets cache ({r['runs']} runs)", r["build_ms"]),
        ("LLMRouter.aclose", r["aclose_ms"]),
        (f"resolve_all x {n}, warm cache", r["resolve_warm_ms"]),
        (f"resolve_all x {n}, cold cache (new manager)", r["resolve_cold_ms"]),
    ]
    rows += [(f"build_router, {size} deployment(s)", ms) for size, ms in r["build_ms_by_deployments"].items()]
    lines = [header, "-" * len(header), *(f"{name:<50} {ms:>10.2f}" for name, ms in rows)]
    by_size = {int(size): ms for size, ms in r["build_ms_by_deployments"].items()}
    sizes = sorted(by_size)
    if len(sizes) > 1:
        per = (by_size[sizes[-1]] - by_size[sizes[0]]) / (sizes[-1] - sizes[0])
        lines.append(f"build cost per extra deployment: {per:.2f} ms")
    lines.append(
        f"warm resolution: {r['resolve_warm_us_per_reference']:.2f} µs per reference; "
        f"litellm.model_cost entries: {r['litellm_model_cost_entries']}"
    )
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    info = machine()
    print(
        f"{info['nproc']} CPU ({info['cpu']}), Python {info['python']}, pydantic {info['pydantic']}, "
        f"agno {info['agno']}, litellm {info['litellm']}",
        flush=True,
    )
    print(f"import time: {args.import_repetitions} rounds of fresh interpreters", flush=True)
    imports, base = measure_imports(args.import_repetitions)
    print(f"memory per run in flight: N = {', '.join(map(str, args.runs))}", flush=True)
    in_flight = measure_in_flight(args.runs, args.memory_repetitions)
    print(f"memory per cached spec: {args.specs:,} specs", flush=True)
    specs = [probe("specs", args.specs, variant) for variant in ("minimal", "typical")]
    print(f"router: {args.deployments} deployments, {args.router_runs} builds", flush=True)
    router = probe("router", args.deployments, runs=args.router_runs, loops=args.resolve_loops)

    print()
    print(import_table(imports, base, args.import_repetitions))
    events = next(f for f in imports if f.name == TARGET_SET.name)
    reference = next(f for f in imports if f.name == IMPORT_SETS[0].name)  # how fast imports are now
    met = events.import_ms <= args.target_ms
    print(
        f"target: import dynamic_agents.events <= {args.target_ms:g} ms: "
        f"{'met' if met else 'missed'} ({events.import_ms:.1f} ms; the reference "
        f"{reference.import_ms:.1f} ms, {events.import_ms / reference.import_ms:.2f}x)"
    )
    print()
    print(in_flight_table(in_flight))
    print()
    print(spec_table(specs))
    print()
    print(router_table(router))
    failed = (
        [] if met else [f"import dynamic_agents.events took {events.import_ms:.1f} ms > {args.target_ms:g}"]
    )
    report = {
        "benchmark": "imports_memory",
        "machine": info,
        "quick": args.quick,
        "import_repetitions": args.import_repetitions,
        "import_baseline": asdict(base),
        "imports": [asdict(f) for f in imports],
        "target_ms": args.target_ms,
        "target_met": met,
        "in_flight": asdict(in_flight),
        "memory_repetitions": args.memory_repetitions,
        "specs": specs,
        "router": router,
    }
    return report, failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (3 / 1 / 3 / 50)")
    parser.add_argument(
        "--import-repetitions", type=int, default=None, help="interpreters per import set (default 7)"
    )
    parser.add_argument(
        "--runs",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[0, 100, 1000],
        metavar="N,N,...",
        help="runs in flight to measure (default 0,100,1000)",
    )
    parser.add_argument(
        "--memory-repetitions", type=int, default=None, help="interpreters per N and mode (default 3)"
    )
    parser.add_argument("--specs", type=int, default=1000, help="specs to cache (default 1000)")
    parser.add_argument("--deployments", type=int, default=50, help="router deployments (default 50)")
    parser.add_argument("--router-runs", type=int, default=None, help="timed builds (default 7)")
    parser.add_argument(
        "--resolve-loops", type=int, default=None, help="timed resolutions of every deployment (default 200)"
    )
    parser.add_argument("--target-ms", type=float, default=TARGET_MS, help="import target (default 150)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures here")
    # the child side (one measurement in a fresh interpreter)
    parser.add_argument("--probe", choices=("worker", "specs", "router"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="", help=argparse.SUPPRESS)
    parser.add_argument("--loops", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe is not None:
        return run_probe(args)
    quick = args.quick
    args.import_repetitions = args.import_repetitions or (3 if quick else 7)
    args.memory_repetitions = args.memory_repetitions or (1 if quick else 3)
    args.router_runs = args.router_runs or (3 if quick else 7)
    args.resolve_loops = args.resolve_loops or (50 if quick else 200)
    sizes = (args.import_repetitions, args.memory_repetitions, args.router_runs, args.resolve_loops)
    if min(sizes) < 1 or args.specs < 1 or args.deployments < 1 or min(args.runs) < 0 or len(args.runs) < 2:
        parser.error("counts must be >= 1, --runs needs two sizes or more, none negative")
    try:
        report, failed = benchmark(args)
    except BenchmarkError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    for failure in failed:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
