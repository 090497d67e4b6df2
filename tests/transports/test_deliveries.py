"""``decode_entry`` and ``delivered``: every field of the entry reaches the delivery, in its place
(both build their dataclass positionally, on every entry read)."""

from __future__ import annotations

import dataclasses

from dynamic_agents.events import AgentRequestEvent, EventCodec
from dynamic_agents.exceptions import EventError
from dynamic_agents.transports import Claim, ClaimStatus, Lease, Subscription
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
