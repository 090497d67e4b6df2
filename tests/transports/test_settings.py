"""Settings of the transport values (subscriptions, replies) are checked when they are made: a bad
one is a ConfigurationError naming the setting and the value, never a hang or a bare error later."""

from __future__ import annotations

import math

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
        ("batch_size", True),
        ("batch_size", 0),
    ],
)
def test_a_subscription_refuses_a_setting_that_is_not_a_valid_number(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{setting} must be .*, got {value!r}$"):
        Subscription("s", "g", "c", AgentRequestEvent, **{setting: value})  # type: ignore[arg-type]


def test_a_subscription_keeps_its_valid_settings() -> None:
    sub = Subscription("s", "g", "c", AgentRequestEvent, block=0, claim_min_idle=None, claim_interval=0)
    assert (sub.block, sub.claim_min_idle, sub.claim_interval, sub.reclaim_every) == (0, None, 0, 0)


@pytest.mark.parametrize(("setting", "value"), [("maxlen", -1), ("expire", 0), ("expire", math.nan)])
def test_a_reply_refuses_a_bad_maxlen_or_expire(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{setting} must be .*, got {value!r}$"):
        Reply(AgentResponseEvent(request_id="r"), "replies", **{setting: value})  # type: ignore[arg-type]
