"""Instructions per request of the worker, counted by valgrind, not timed.

Run from the repository root (needs ``valgrind`` and ``redis-server`` on ``PATH``)::

    python benchmarks/instructions.py                  # 3 runs of 200 and 1,200 requests
    python benchmarks/instructions.py --quick          # 1 run
    python benchmarks/instructions.py --variant events # the worker with lifecycle events
    python benchmarks/instructions.py --runs 5 --json /tmp/instructions.json

Seconds move with the machine (the VMs this project is measured on changed speed by a third within
minutes); instructions do not: the same code, inputs and environment count the same within about
1 % whatever else the machine does. So a change to the worker's path is judged here, before and
after, and timed in ``round_trip.py``.

For each of ``small`` and ``large`` requests: a Redis server of its own (a free port), its request
stream prefilled by this process with requests made by ``round_trip.make_requests`` (1,024
sessions, 16 reply streams; the encoding and the ``XADD`` are not counted), then a child process
under ``valgrind --tool=cachegrind --cache-sim=no`` runs the minimal worker of ``round_trip.py``
(no lifecycle events, a no-op ``FunctionExecutor``, concurrency and batch 64; with ``--variant
events``, the same with lifecycle events on ``agent:events``) until the stream has
nothing left (``AgentWorker.run(until_idle=True)``) and checks that every request was answered.
Instructions per request = (count at ``large`` - count at ``small``) / (``large`` - ``small``): the
interpreter's start, the imports and the worker's start cancel out. The children run with
``PYTHONMALLOC=malloc`` (valgrind sees each allocation) and ``PYTHONHASHSEED=0``. Runs of the same
code differ by up to ~1.2 % (how replies and claims fall into event-loop iterations depends on
timing): count a change only when every run of it is below every run before it by more than that.

Without ``valgrind`` the script says so and writes a JSON report saying it was skipped (exit 0), so
``run_all.py`` goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AGNO_TELEMETRY", "false")

import _common
import round_trip
from redis.asyncio import Redis

from dynamic_agents import __version__ as library_version
from dynamic_agents.testing import RedisServer

SCRIPT: Final = str(Path(__file__).resolve())
SEED: Final = 20261128
VARIANTS: Final = {"minimal": "minimal worker", "events": "worker with lifecycle events"}
_I_REFS: Final = re.compile(r"I\s+refs:\s+([\d,]+)")


async def prefill(url: str, n: int) -> None:
    """``n`` requests in the request stream, in one pipeline, with the worker's group before them."""
    prepared, _ = round_trip.make_requests(n, random.Random(SEED), "instr")
    client = Redis.from_url(url)
    try:
        await client.xgroup_create(round_trip.REQUESTS, round_trip.GROUP, id="0", mkstream=True)
        async with client.pipeline(transaction=False) as pipe:
            for request in prepared:
                pipe.xadd(round_trip.REQUESTS, request.fields)  # type: ignore[arg-type]
            await pipe.execute()
    finally:
        await client.aclose()


async def child(url: str, n: int, *, events: bool) -> None:
    """The measured process: the worker over the prefilled stream until it is idle."""
    served = round_trip.AgentWorkerServed(url, events=events)
    try:
        await served.worker.run(until_idle=True)
        answered = served.worker.stats.completed
    finally:
        await served.transport.aclose()
    if answered != n:
        raise SystemExit(f"answered {answered} of {n} requests")


def count(n: int, variant: str) -> int:
    """Instructions of one child answering ``n`` prefilled requests, on a Redis of its own."""
    with RedisServer(durable=False) as server:
        asyncio.run(prefill(server.url, n))
        env = {**os.environ, "PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0"}
        command = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            SCRIPT,
            "--child",
            str(n),
            "--url",
            server.url,
            "--variant",
            variant,
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = _I_REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise SystemExit(f"the child answering {n} requests failed (exit {done.returncode}):\n{tail}")
    return int(found.group(1).replace(",", ""))


def measure(runs: int, small: int, large: int, variant: str) -> list[dict[str, float]]:
    results = []
    for run in range(1, runs + 1):
        started = time.monotonic()
        at_small, at_large = count(small, variant), count(large, variant)
        per_request = (at_large - at_small) / (large - small)
        print(
            f"  run {run}/{runs}: {at_small:,} instructions at {small}, {at_large:,} at {large}: "
            f"{per_request / 1000:,.1f}k per request ({time.monotonic() - started:.0f}s)",
            flush=True,
        )
        results.append({"small": at_small, "large": at_large, "per_request": per_request})
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of both sizes (default 3)")
    parser.add_argument("--small", type=int, default=200, help="requests in the smaller run")
    parser.add_argument("--large", type=int, default=1200, help="requests in the larger run")
    parser.add_argument("--quick", action="store_true", help="one run")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="minimal",
        help="minimal (default) or events: the worker with lifecycle events on agent:events",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        asyncio.run(child(args.url, args.child, events=args.variant == "events"))
        return
    if not 0 < args.small < args.large:
        parser.error(f"need 0 < --small < --large, got {args.small} and {args.large}")
    runs = 1 if args.quick else args.runs
    report: dict[str, Any] = {
        "machine": _common.machine(library=library_version, commit=_common.git_commit()),
        "small": args.small,
        "large": args.large,
        "variant": args.variant,
    }
    if shutil.which("valgrind") is None:
        print("valgrind not found: instructions not counted (apt-get install valgrind)")
        report["skipped"] = "valgrind not found"
    else:
        print(
            f"{VARIANTS[args.variant]}, instructions per request: {runs} run(s) of {args.small} and "
            f"{args.large} requests under cachegrind"
        )
        report["runs"] = measure(runs, args.small, args.large, args.variant)
        per_request = [run["per_request"] for run in report["runs"]]
        report["median_per_request"] = statistics.median(per_request)
        print(
            f"instructions per request: median {report['median_per_request'] / 1000:,.1f}k "
            f"(runs {', '.join(f'{value / 1000:,.1f}k' for value in per_request)})"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
