"""The worker's hook points: their order, what a hook may add to a reply, and no cost without hooks."""

from __future__ import annotations

from typing import Any

import pytest

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, StreamNames, Target
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import Completion, Delivery, InMemoryTransport
from dynamic_agents.worker import AgentWorker, BaseHooks, RunContext
from tests.observability.conftest import hooked_worker
from tests.worker.conftest import request_event


class Recorder(BaseHooks):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_start(self, worker: AgentWorker) -> None:
        self.calls.append("on_start")

    async def on_stop(self, worker: AgentWorker) -> None:
        self.calls.append("on_stop")

    async def on_received(self, delivery: Delivery[AgentRequestEvent]) -> None:
        self.calls.append("on_received")

    async def on_duplicate(self, delivery: Delivery[AgentRequestEvent]) -> None:
        self.calls.append("on_duplicate")

    async def on_routed(self, delivery: Delivery[AgentRequestEvent], target: Target | None) -> None:
        self.calls.append(f"on_routed {target.id if target else None}")

    async def before_execute(self, context: RunContext) -> None:
        self.calls.append("before_execute")

    async def after_execute(self, context: RunContext, result: ExecutionResult) -> None:
        self.calls.append("after_execute")

    async def before_respond(
        self, delivery: Delivery[AgentRequestEvent], response: AgentResponseEvent, headers: dict[str, str]
    ) -> None:
        headers["x-seen-by"] = "recorder"
        self.calls.append(f"before_respond {response.status}")

    async def after_respond(
        self, delivery: Delivery[AgentRequestEvent], result: ExecutionResult, completion: Completion
    ) -> None:
        self.calls.append(f"after_respond created={completion.created}")

    async def after_complete(self, context: RunContext, completion: Completion) -> None:
        self.calls.append("after_complete")

    async def on_dead_letter(self, delivery: Delivery[AgentRequestEvent], written: bool) -> None:
        self.calls.append(f"on_dead_letter {written}")

    async def after_handle(self, delivery: Delivery[AgentRequestEvent], error: BaseException | None) -> None:
        self.calls.append(f"after_handle {type(error).__name__ if error else None}")


async def test_hooks_are_called_in_order_and_may_add_reply_headers() -> None:
    transport = InMemoryTransport(names=StreamNames("test"))
    recorder = Recorder()
    await transport.publish(transport.names.requests, request_event(transport.names))
    await hooked_worker(transport, [recorder]).run_until_idle()
    assert recorder.calls == [
        "on_start",
        "on_received",
        "on_routed echo",
        "before_execute",
        "after_execute",
        "before_respond completed",
        "after_respond created=True",
        "after_complete",
        "after_handle None",
        "on_stop",
    ]
    (entry,) = await transport.read_stream(transport.names.responses("discord", "c1"), AgentResponseEvent)
    assert entry.message is not None
    assert entry.message.headers["x-seen-by"] == "recorder"


async def test_no_route_is_routed_to_none_and_answered() -> None:
    transport = InMemoryTransport(names=StreamNames("test"))
    recorder = Recorder()
    await transport.publish(transport.names.requests, request_event(transport.names))
    await hooked_worker(transport, [recorder], router=EventRouter()).run_until_idle()
    assert recorder.calls[1:-1] == [
        "on_received",
        "on_routed None",
        "before_respond error",
        "after_respond created=True",
        "after_handle None",
    ]


async def test_a_worker_without_hooks_never_calls_into_them(monkeypatch: pytest.MonkeyPatch) -> None:
    async def forbidden(self: AgentWorker, name: str, *args: Any) -> None:
        raise AssertionError(f"hook {name} called on a worker without hooks")

    monkeypatch.setattr(AgentWorker, "_call_hooks", forbidden)
    transport = InMemoryTransport(names=StreamNames("test"))
    await transport.publish(transport.names.requests, request_event(transport.names))
    await transport.publish(transport.names.requests, request_event(transport.names, "again"))
    await hooked_worker(transport, []).run_until_idle()
    await transport.publish(transport.names.requests, request_event(transport.names, "lost"))
    worker = hooked_worker(transport, [], router=EventRouter())  # no route: the error path too
    await worker.run_until_idle()
    replies = await transport.read_stream(transport.names.responses("discord", "c1"), AgentResponseEvent)
    assert sorted(str(entry.event.status) for entry in replies) == ["completed", "completed", "error"]
