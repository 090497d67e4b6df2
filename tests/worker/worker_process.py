"""One ``AgentWorker`` in a process of its own, for the fault tests (``test_worker_faults.py``).

    python tests/worker/worker_process.py REDIS_URL PREFIX CONSUMER [--crash-at POINT] [options]

It answers each request with ``echo: <content>`` after sleeping ``--delay-ms MIN MAX`` (a random
duration in that range) and tags the reply's metadata with ``{"consumer": CONSUMER}`` so a test can
tell which process answered. Its stdout carries one line per milestone:

* ``ready`` once its consumer group exists and it is consuming;
* ``crash <point> <request id>`` right before it ends with ``os._exit(17)``, the first time it
  reaches ``--crash-at`` (``after_execute``: the run finished, nothing published or acked yet;
  ``after_complete``: reply, record and ack written);
* ``stopped`` after a graceful stop on SIGTERM or SIGINT (exit status 0).

Warnings of the library (reconnects, take-overs) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys

from dynamic_agents.events import AgentRequestEvent, ResponseStatus, StreamNames, Target, TargetType
from dynamic_agents.execution import ExecutionResult, FunctionExecutor
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import Completion, RedisStreamsTransport
from dynamic_agents.worker import AgentWorker, BaseHooks, RunContext, WorkerSettings

CRASH_STATUS = 17
CRASH_POINTS = ("after_execute", "after_complete")


def say(line: str) -> None:
    print(line, flush=True)


class CrashAt(BaseHooks):
    """Ends the process, without any cleanup, the first time the worker reaches ``point``."""

    def __init__(self, point: str) -> None:
        self.point = point

    def _reached(self, point: str, context: RunContext) -> None:
        if point == self.point:
            say(f"crash {point} {context.request.id}")
            os._exit(CRASH_STATUS)

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        self._reached("after_execute", context)

    async def after_complete(self, context: RunContext, completion: Completion) -> None:
        self._reached("after_complete", context)


def tagged_echo(consumer: str, delay_ms: tuple[float, float]) -> FunctionExecutor:
    async def echo(target: Target, request: AgentRequestEvent) -> ExecutionResult:
        await asyncio.sleep(random.uniform(*delay_ms) / 1000)
        return ExecutionResult(
            ResponseStatus.COMPLETED, content=f"echo: {request.content}", metadata={"consumer": consumer}
        )

    return FunctionExecutor(echo, name="tagged-echo")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("redis_url")
    parser.add_argument("prefix", help="stream prefix (StreamNames)")
    parser.add_argument("consumer", help="consumer name in the group")
    parser.add_argument("--crash-at", choices=CRASH_POINTS)
    parser.add_argument("--delay-ms", nargs=2, type=float, default=(0.0, 0.0), metavar=("MIN", "MAX"))
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--claim-min-idle", type=float, default=1.0)
    parser.add_argument("--lease-ttl", type=float, default=1.0)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    names = StreamNames(args.prefix)
    transport = RedisStreamsTransport.from_url(args.redis_url, names=names)
    settings = WorkerSettings(
        consumer=args.consumer,
        concurrency=args.concurrency,
        block=0.05,
        claim_min_idle=args.claim_min_idle,
        lease_ttl=args.lease_ttl,
        lease_poll=0.02,
        request_timeout=10,
        record_ttl=3600,
    )
    worker = AgentWorker(
        transport,
        transport.coordinator(),
        EventRouter(default=Target(type=TargetType.AGENT, id="echo")),
        tagged_echo(args.consumer, tuple(args.delay_ms)),
        settings=settings,
        hooks=[CrashAt(args.crash_at)] if args.crash_at else [],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await transport.ensure_group(names.requests, settings.group)
        async with worker:  # runs in the background; a graceful stop on exit
            say("ready")
            await stop.wait()
    finally:
        await transport.aclose()
    say("stopped")


def main(argv: list[str]) -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
