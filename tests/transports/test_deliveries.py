"""``decode_entry`` and ``delivered``: every field of the entry reaches the delivery, in its place
(both build their dataclass positionally, on every entry read); entries and deliveries made by
hand without what a read gives them say so."""

from __future__ import annotations

import dataclasses

import pytest

from dynamic_agents.events import AgentRequestEvent, EventCodec
from dynamic_agents.exceptions import DeliveryError, EventError
from dynamic_agents.transports import Claim, ClaimStatus, Delivery, Entry, Lease, Subscription
from dynamic_agents.transports.base import decode_entry, delivered

CODEC = EventCodec()
REQUEST = AgentRequestEvent(source="slack", source_id="C1", user_id="u", content="hi")
SUB = Subscription("agent:requests", "group", "consumer", AgentRequestEvent)


def test_a_decoded_entry_holds_its_message_and_no_error() -> None:
    fields = CODEC.encode_entry(REQUEST)
    entry = decode_entry(CODEC, "agent:requests", "1-0", fields, AgentRequestEvent)
    assert (entry.stream, entry.entry_id, entry.fields) == ("agent:requests", "1-0", fields)
    assert entry.message is not None
    assert entry.event == REQUEST
    assert entry.message.headers == {"correlation_id": REQUEST.id, "content-type": "application/json"}
    assert entry.error is None


def test_an_undecodable_entry_holds_its_error_and_no_message() -> None:
    entry = decode_entry(CODEC, "agent:requests", "1-0", {b"__data__": b"{"}, AgentRequestEvent)
    assert entry.message is None
    assert isinstance(entry.error, EventError)


def test_a_delivery_is_its_entry_with_the_subscription_count_and_claim() -> None:
    entry = decode_entry(CODEC, "agent:requests", "7-1", CODEC.encode_entry(REQUEST), AgentRequestEvent)
    claim = Claim(ClaimStatus.LEASED, Lease(REQUEST.session_id, "token/r", 30.0))
    delivery = delivered(entry, SUB, 3, claim)
    assert {f.name: getattr(delivery, f.name) for f in dataclasses.fields(entry)} == {
        f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)
    }
    assert (delivery.subscription, delivery.delivery_count, delivery.settled, delivery.claim) == (
        SUB,
        3,
        False,
        claim,
    )
    assert delivered(entry, SUB, 1).claim is None


def test_an_entry_made_without_message_or_error_says_so_when_its_event_is_read() -> None:
    """Both default to None (a custom transport's entry, a test's): the check was an assert, gone
    under ``python -O``, which then raised ``None`` (a bare TypeError)."""
    entry = Entry("agent:requests", "1-0", {})
    with pytest.raises(EventError, match=r"entry '1-0' of 'agent:requests' holds neither a decoded"):
        _ = entry.event


def test_a_delivery_made_without_a_subscription_says_so_when_its_group_is_read() -> None:
    """``subscription`` defaults to None: the check was an assert, gone under ``python -O``, which
    then failed with an AttributeError on None."""
    delivery: Delivery[AgentRequestEvent] = Delivery("agent:requests", "1-0", {})
    with pytest.raises(DeliveryError, match=r"delivery '1-0' of 'agent:requests' has no subscription"):
        _ = delivery.group
