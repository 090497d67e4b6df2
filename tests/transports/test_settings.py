"""Settings of the transport values (subscriptions, replies) are checked when they are made: a bad
one is a ConfigurationError naming the setting and the value, never a hang or a bare error later."""

from __future__ import annotations

import math
import re

import pytest

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.transports import Reply, Subscription


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("block", math.nan),
        ("block", math.inf),
        ("block", -1.0),
        ("claim_min_idle", math.nan),
        ("claim_min_idle", math.inf),
        ("claim_interval", -1.0),
        ("claim_interval", math.nan),
        ("claim_ttl", math.nan),
        ("claim_ttl", math.inf),
        ("claim_ttl", 1e30),
        ("claim_min_idle", 1e30),
        ("claim_interval", 1e30),
        ("block", 1e30),
        ("batch_size", True),
        ("batch_size", 0),
    ],
)
def test_a_subscription_refuses_a_setting_that_is_not_a_valid_number(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{setting} must be .*, got {re.escape(repr(value))}$"):
        Subscription("s", "g", "c", AgentRequestEvent, **{setting: value})  # type: ignore[arg-type]


def test_a_subscription_keeps_its_valid_settings() -> None:
    sub = Subscription("s", "g", "c", AgentRequestEvent, block=0, claim_min_idle=None, claim_interval=0)
    assert (sub.block, sub.claim_min_idle, sub.claim_interval, sub.reclaim_every) == (0, None, 0, 0)


@pytest.mark.parametrize(
    ("setting", "value"), [("maxlen", -1), ("expire", 0), ("expire", math.nan), ("expire", 1e30)]
)
def test_a_reply_refuses_a_bad_maxlen_or_expire(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{setting} must be .*, got {re.escape(repr(value))}$"):
        Reply(AgentResponseEvent(request_id="r"), "replies", **{setting: value})  # type: ignore[arg-type]


def _made_with(kind: str, names: object) -> object:
    from redis.asyncio import Redis

    from dynamic_agents.transports import (
        InMemoryCoordinator,
        InMemoryTransport,
        RedisCoordinator,
        RedisStreamsTransport,
    )

    client = Redis.from_url("redis://127.0.0.1:6379/0")  # (no connection is made)
    made: dict[str, object] = {
        "memory": lambda: InMemoryTransport(names=names),
        "memory coordinator": lambda: InMemoryCoordinator(names=names),
        "redis": lambda: RedisStreamsTransport(client, names=names),
        "redis coordinator": lambda: RedisCoordinator(client, names=names),
    }
    return made[kind]()  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["memory", "memory coordinator", "redis", "redis coordinator"])
@pytest.mark.parametrize("names", ["myapp", "", {"prefix": "myapp"}])
def test_names_that_are_no_stream_names_are_refused(kind: str, names: object) -> None:
    # "myapp" (a prefix given for the names) was taken, and failed at the first use with a bare
    # AttributeError; "" used the default names without a word
    with pytest.raises(ConfigurationError, match=r"^names must be a StreamNames \(StreamNames\('myapp'\)"):
        _made_with(kind, names)


@pytest.mark.parametrize("kind", ["transport", "coordinator"])
@pytest.mark.parametrize("client", [None, "redis://127.0.0.1:6379/0", object()])
def test_a_redis_backend_of_something_that_is_no_redis_client_is_a_configuration_error(
    kind: str, client: object
) -> None:
    # it failed with a bare AttributeError ('NoneType' object has no attribute 'get_connection_kwargs')
    from dynamic_agents.transports import RedisCoordinator, RedisStreamsTransport

    made = {"transport": RedisStreamsTransport, "coordinator": RedisCoordinator}[kind]
    with pytest.raises(ConfigurationError, match=r"^client must be a redis\.asyncio\.Redis client .*, got "):
        made(client)  # type: ignore[arg-type]
