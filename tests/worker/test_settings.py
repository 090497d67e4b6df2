"""``WorkerSettings``: the defaults docs/worker.md documents, the consumer name, and the checks at
their bounds."""

from __future__ import annotations

import dataclasses
import os
import re
import socket

import pytest

from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.worker import SessionPolicy, WorkerSettings


def test_the_defaults_are_the_documented_ones() -> None:
    """The table in docs/worker.md ("Settings")."""
    settings = WorkerSettings()
    assert settings.group == "dynamic-agents"
    assert (settings.concurrency, settings.batch_size, settings.block) == (8, 16, 1.0)
    assert (settings.claim_min_idle, settings.keep_fresh_every, settings.freshness_interval) == (
        60.0,
        None,
        20.0,
    )
    assert (settings.max_deliveries, settings.request_timeout) == (5, 120.0)
    assert (settings.lease_ttl, settings.lease_poll) == (30.0, 0.2)
    assert settings.claim_on_read is True
    assert settings.record_ttl == 7 * 24 * 3600
    assert settings.abandon_after == 5.0
    assert (settings.events, settings.events_maxlen, settings.delta_interval) == (False, 10_000, 0.1)
    assert (settings.reply_maxlen, settings.reply_expire) == (1_000, 7 * 24 * 3600)
    assert (settings.session_policy, settings.policies) == (SessionPolicy.ENQUEUE, {})
    assert settings.cancel_poll == 0.25
    assert settings.busy_message.startswith("Still working on your previous message; ")


def test_the_consumer_name_is_host_pid_and_a_random_part() -> None:
    first, second = WorkerSettings().consumer, WorkerSettings().consumer
    pattern = rf"{re.escape(socket.gethostname())}-{os.getpid()}-[0-9a-f]{{6}}"
    assert re.fullmatch(pattern, first)
    assert re.fullmatch(pattern, second)
    assert first != second


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        WorkerSettings().concurrency = 1  # type: ignore[misc]


def test_policies_that_are_no_mapping_are_refused() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^policies must be a mapping of target to policy, got \['reject'\]$"
    ):
        WorkerSettings(policies=["reject"])  # type: ignore[arg-type]


def test_record_ttl_may_equal_the_redelivery_window() -> None:
    """It must *outlive* ``max_deliveries x claim_min_idle + request_timeout``: equal is enough."""
    settings = WorkerSettings(max_deliveries=2, claim_min_idle=10, request_timeout=5, record_ttl=25)
    assert settings.record_ttl == 25
    with pytest.raises(
        ConfigurationError,
        match=r"^record_ttl=24.9s is too short: .* claim_min_idle \+ request_timeout = 25s after",
    ):
        WorkerSettings(max_deliveries=2, claim_min_idle=10, request_timeout=5, record_ttl=24.9)


def test_keep_fresh_every_must_be_shorter_than_claim_min_idle() -> None:
    assert WorkerSettings(claim_min_idle=10, keep_fresh_every=9.9).freshness_interval == 9.9
    with pytest.raises(
        ConfigurationError,
        match=r"^keep_fresh_every=10s must be shorter than claim_min_idle=10s: ",
    ):
        WorkerSettings(claim_min_idle=10, keep_fresh_every=10)
    with pytest.raises(ConfigurationError, match=r"^keep_fresh_every=30s .* claim_min_idle=5s: "):
        WorkerSettings(claim_min_idle=5, keep_fresh_every=30)


def test_delta_interval_may_be_zero_and_the_optional_ones_none() -> None:
    settings = WorkerSettings(delta_interval=0, keep_fresh_every=None, reply_expire=None, reply_maxlen=None)
    assert (settings.delta_interval, settings.reply_expire, settings.reply_maxlen) == (0, None, None)
    assert settings.freshness_interval == settings.claim_min_idle / 3


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (
            {"settings": {"concurrency": 4}},
            r"^settings must be a WorkerSettings \(WorkerSettings\(\*\*mapping\)",
        ),
        ({"settings": 4}, r"^settings must be a WorkerSettings .*, got an int$"),
        (
            {"stream": ""},
            r"^stream must be a non-empty stream name .*\(or None: the transport's request stream\)",
        ),
        ({"stream": 5}, r"^stream must be a non-empty stream name .*, got 5$"),
        ({"stream": "  "}, r"^stream must be a non-empty stream name .*, got '  '$"),
        ({"stream": "agent:requests\n"}, r"^stream must be a non-empty stream name .*control"),
    ],
)
def test_a_worker_refuses_settings_that_are_no_settings_and_an_empty_stream(
    options: dict[str, object], refusal: str
) -> None:
    # a dict of settings failed with a bare AttributeError; stream="" read the default stream
    from dynamic_agents.execution import FunctionExecutor
    from dynamic_agents.transports import InMemoryTransport
    from dynamic_agents.worker import AgentWorker
    from tests.worker.conftest import echo_router

    transport = InMemoryTransport()
    with pytest.raises(ConfigurationError, match=refusal):
        AgentWorker(
            transport,
            transport.coordinator(),
            echo_router(),
            FunctionExecutor(lambda request: "hi"),
            **options,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("value", [None, "redis://127.0.0.1:6379/0", "sk-CANARY123456789abcdef"])
@pytest.mark.parametrize(
    ("argument", "valid"),
    [
        ("transport", "a Transport"),
        ("coordinator", "a Coordinator"),
        ("router", "an EventRouter"),
        ("executor", "an Executor"),
    ],
)
def test_a_worker_refuses_a_transport_coordinator_router_or_executor_of_the_wrong_type(
    argument: str, valid: str, value: object
) -> None:
    """Each failed with a bare AttributeError: the transport at construction, the others at the
    first request (logged, and the request left pending for ever) or as an error reply."""
    from dynamic_agents.execution import FunctionExecutor
    from dynamic_agents.transports import InMemoryTransport
    from dynamic_agents.worker import AgentWorker
    from tests.worker.conftest import echo_router

    transport = InMemoryTransport()
    arguments: dict[str, object] = {
        "transport": transport,
        "coordinator": transport.coordinator(),
        "router": echo_router(),
        "executor": FunctionExecutor(lambda request: "hi"),
        argument: value,
    }
    with pytest.raises(ConfigurationError, match=rf"^{argument} must be {valid} \(.*\), got ") as refused:
        AgentWorker(**arguments)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "CANARY" not in message
    assert message.endswith("got **********" if value and "CANARY" in value else f"got {value!r}")


async def test_a_worker_takes_a_router_of_its_own_that_is_no_event_router() -> None:
    """The router check asks for route() only: a host's own router keeps working."""
    from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, Target, TargetType
    from dynamic_agents.execution import FunctionExecutor
    from dynamic_agents.routing import RouteDecision
    from dynamic_agents.transports import InMemoryTransport
    from dynamic_agents.worker import AgentWorker
    from tests.worker.conftest import request_event

    class ToEcho:
        def route(self, event: AgentRequestEvent) -> RouteDecision:
            return RouteDecision(Target(type=TargetType.AGENT, id="echo"), rule=None, reason="mine")

    transport = InMemoryTransport()
    executor = FunctionExecutor(lambda target, request: f"{target.id}: {request.content}")
    worker = AgentWorker(transport, transport.coordinator(), ToEcho(), executor)  # type: ignore[arg-type]
    await transport.publish(transport.names.requests, request_event(transport.names, "hi"))
    await worker.run_until_idle()
    (reply,) = await transport.read_stream(transport.names.responses("discord", "c1"), AgentResponseEvent)
    assert reply.event.content == "echo: hi"


@pytest.mark.parametrize("name", ["group", "consumer"])
@pytest.mark.parametrize("value", ["", " ", "\t", "workers\n", "a\x00b", None, 5])
def test_a_blank_group_or_consumer_name_or_one_with_control_characters_is_refused(
    name: str, value: object
) -> None:
    """The transports' check (check_name), at construction: " " was taken, and refused only when
    the worker subscribed."""
    with pytest.raises(
        ConfigurationError, match=rf"^{name} must be a non-empty name without control characters, got "
    ) as caught:
        WorkerSettings(**{name: value})  # type: ignore[arg-type]
    assert str(caught.value).endswith(f"got {value!r}")


def test_group_and_consumer_names_with_spaces_inside_are_kept() -> None:
    settings = WorkerSettings(group=" my group", consumer="host 1")
    assert (settings.group, settings.consumer) == (" my group", "host 1")


@pytest.mark.parametrize(
    "name",
    [
        "lease_ttl",
        "claim_min_idle",
        "request_timeout",
        "record_ttl",
        "reply_expire",
        "block",
        "abandon_after",
    ],
)
def test_a_duration_over_the_maximum_is_refused_naming_it(name: str) -> None:
    # 1e30 was taken, and then failed on Redis (PX, XAUTOCLAIM) as an outage-like TransportError
    with pytest.raises(
        ConfigurationError, match=rf"^{name} must be at most 2147483648 seconds .*, got 1e\+30$"
    ):
        WorkerSettings(**{name: 1e30})  # type: ignore[arg-type]
