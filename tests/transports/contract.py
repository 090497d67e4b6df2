"""The behaviour every transport and coordinator must have, written once for every backend.

A backend test module subclasses :class:`TransportContract` / :class:`CoordinatorContract` and
provides a ``backend`` fixture. Time is measured in units of ``backend.min_idle``: the in-memory
backend moves a manual clock, the Redis backend waits for real time to pass (that waiting *is* the
behaviour under test: idle times and expiry).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, ResponseStatus, StreamNames
from dynamic_agents.exceptions import (
    ConfigurationError,
    EnvelopeError,
    EventTooLargeError,
    LeaseLostError,
    TransportError,
)
from dynamic_agents.transports import (
    ClaimStatus,
    CompletedRecord,
    Coordinator,
    Delivery,
    Reply,
    Subscription,
    Transport,
)


@dataclass
class Backend:
    """One backend under test: transports sharing storage, and a way to let time pass."""

    names: StreamNames
    min_idle: float
    make_transport: Callable[[], Awaitable[Transport]]
    advance: Callable[[float], Awaitable[None]]
    forget_everything: Callable[[], Awaitable[None]]
    write_string: Callable[[str, str], Awaitable[None]]
    """Set a key to a plain string, as another program sharing the server could."""
    transports: list[Transport] = field(default_factory=list)

    async def transport(self) -> Transport:
        transport = await self.make_transport()
        self.transports.append(transport)
        return transport

    def stream(self, name: str = "requests") -> str:
        return f"{self.names.prefix}:{name}"

    def subscription(self, consumer: str = "c1", **overrides: Any) -> Subscription[AgentRequestEvent]:
        settings: dict[str, Any] = {
            "stream": self.stream(),
            "group": "workers",
            "consumer": consumer,
            "model": AgentRequestEvent,
            "block": 0.05,
            "claim_min_idle": self.min_idle,
            "claim_interval": 0.0,
        }
        settings.update(overrides)
        return Subscription(**settings)


def request(content: str = "hi", **overrides: Any) -> AgentRequestEvent:
    return AgentRequestEvent(source="discord", source_id="42", user_id="u", content=content, **overrides)


def response_to(event: AgentRequestEvent, content: str = "answer") -> AgentResponseEvent:
    return AgentResponseEvent(request_id=event.id, session_id=event.session_id, content=content)


async def published(backend: Backend, transport: Transport, *events: AgentRequestEvent) -> list[str]:
    await transport.ensure_group(backend.stream(), "workers")
    return [await transport.publish(backend.stream(), event) for event in events]


async def one_delivery(
    backend: Backend,
) -> tuple[Transport, Coordinator, AgentRequestEvent, Delivery[AgentRequestEvent]]:
    """A transport, its coordinator, and one request published and delivered to consumer ``c1``."""
    transport = await backend.transport()
    event = request()
    await published(backend, transport, event)
    (delivery,) = await transport.read(backend.subscription(), 1)
    return transport, transport.coordinator(), event, delivery


class TransportContract:
    # -- order, ack, pending --------------------------------------------------------------------

    async def test_entries_are_delivered_in_order(self, backend: Backend) -> None:
        transport = await backend.transport()
        events = [request(f"m{n}") for n in range(5)]
        ids = await published(backend, transport, *events)
        deliveries = await transport.read(backend.subscription(), 10)
        assert [d.entry_id for d in deliveries] == ids
        assert [d.event for d in deliveries] == events
        assert all(d.delivery_count == 1 and d.group == "workers" for d in deliveries)

    async def test_read_never_returns_more_than_count(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, *(request(str(n)) for n in range(10)))
        deliveries = await transport.read(backend.subscription(), 3)
        assert len(deliveries) == 3
        assert len(await transport.pending(backend.stream(), "workers")) == 3

    @pytest.mark.parametrize("count", [True, 2.5, float("nan"), "2", None])
    async def test_read_refuses_a_count_that_is_no_whole_number(
        self, backend: Backend, count: object
    ) -> None:
        """True was a redis-py DataError, 2.5 and NaN a TransportError ("COUNT must be > 0", as if
        Redis had failed), "2" a bare TypeError; in memory some of them read entries."""
        transport = await backend.transport()
        await published(backend, transport, request("a"), request("b"))
        with pytest.raises(ConfigurationError, match=r"^count must be a whole number >= 0, got "):
            await transport.read(backend.subscription(), count)  # type: ignore[arg-type]
        assert await transport.pending(backend.stream(), "workers") == []
        assert await transport.read(backend.subscription(), 0) == []  # a caller with no free slot
        assert len(await transport.read(backend.subscription(), 2.0)) == 2  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", ["", "  ", "workers\n", 5, None])
    async def test_a_group_or_stream_name_that_is_no_name_is_refused(
        self, backend: Backend, name: Any
    ) -> None:
        """ "" and "  " made a group (and a stream) of that name, 5 one named "5", None was a
        redis-py DataError, and a subscription said only that a name "must not be empty"."""
        transport = await backend.transport()
        refusal = r"^(group|stream) must be a non-empty name without control characters, got "
        with pytest.raises(ConfigurationError, match=refusal):
            await transport.ensure_group(backend.stream(), name)
        with pytest.raises(ConfigurationError, match=refusal):
            await transport.ensure_group(name, "workers")
        for part in ("stream", "group", "consumer"):
            with pytest.raises(ConfigurationError, match=rf"^{part} must be a non-empty name"):
                backend.subscription(**{part: name})

    async def test_ack_clears_pending(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request("a"), request("b"))
        first, second = await transport.read(backend.subscription(), 2)
        assert await transport.ack(first) == 1
        assert [p.entry_id for p in await transport.pending(backend.stream(), "workers")] == [second.entry_id]
        assert await transport.ack(first, second) == 1
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_pending_lists_consumer_and_delivery_count(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request())
        (delivery,) = await transport.read(backend.subscription("alice"), 1)
        (pending,) = await transport.pending(backend.stream(), "workers")
        assert (pending.entry_id, pending.consumer, pending.delivery_count) == (
            delivery.entry_id,
            "alice",
            1,
        )

    # -- reclaim and freshness ------------------------------------------------------------------

    async def test_unacked_entry_goes_to_another_consumer_after_min_idle(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request())
        (first,) = await transport.read(backend.subscription("dead"), 1)
        assert await transport.read(backend.subscription("alive"), 1) == []
        await backend.advance(backend.min_idle * 1.5)
        (again,) = await transport.read(backend.subscription("alive"), 1)
        assert again.entry_id == first.entry_id
        assert again.delivery_count == 2
        assert again.consumer == "alive"
        (pending,) = await transport.pending(backend.stream(), "workers")
        assert pending.consumer == "alive"

    async def test_held_entry_kept_fresh_stays_with_its_consumer(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request())
        (held,) = await transport.read(backend.subscription("busy"), 1)
        for _ in range(6):  # a run lasting 3x min idle, kept fresh every half min idle
            await backend.advance(backend.min_idle / 2)
            assert await transport.keep_fresh([held]) == []
            assert await transport.read(backend.subscription("thief"), 1) == []
        (pending,) = await transport.pending(backend.stream(), "workers")
        assert (pending.consumer, pending.delivery_count) == ("busy", 1)

    async def test_uncount_takes_back_a_delivery_of_this_consumers_own_reclaim(
        self, backend: Backend
    ) -> None:
        """Its own reclaim scan took back an entry it was still handling (kept fresh too late): a
        delivery that handled nothing, counted all the same (a taker could then find the entry
        past max_deliveries sooner). Taken back once, its idle time reset."""
        transport = await backend.transport()
        await published(backend, transport, request())
        (running,) = await transport.read(backend.subscription("busy"), 1)
        await backend.advance(backend.min_idle * 1.5)
        (again,) = await transport.read(backend.subscription("busy"), 1)
        assert (again.entry_id, again.delivery_count) == (running.entry_id, 2)
        assert await transport.uncount(again)
        counts = [
            (p.consumer, p.delivery_count) for p in await transport.pending(backend.stream(), "workers")
        ]
        assert counts == [("busy", 1)]
        assert not await transport.uncount(again)  # its count is no longer 2: once only
        assert await transport.read(backend.subscription("thief"), 1) == []  # fresh again

    async def test_uncount_leaves_what_other_consumers_counted(self, backend: Backend) -> None:
        """A delivery to another consumer (which may have run it) in between stays counted: only
        this consumer's last delivery goes, and only while it holds the entry with that count."""
        transport = await backend.transport()
        await published(backend, transport, request())
        await transport.read(backend.subscription("c1"), 1)
        await backend.advance(backend.min_idle * 1.5)
        (taken,) = await transport.read(backend.subscription("c2"), 1)
        await backend.advance(backend.min_idle * 1.5)
        (back,) = await transport.read(backend.subscription("c1"), 1)
        assert (taken.delivery_count, back.delivery_count) == (2, 3)
        assert not await transport.uncount(taken)  # c2 no longer holds it
        assert await transport.uncount(back)
        counts = [
            (p.consumer, p.delivery_count) for p in await transport.pending(backend.stream(), "workers")
        ]
        assert counts == [("c1", 2)]
        await backend.advance(backend.min_idle * 1.5)
        (again,) = await transport.read(backend.subscription("c2"), 1)
        assert again.delivery_count == 3
        assert not await transport.uncount(back)  # c1 no longer holds it
        counts = [
            (p.consumer, p.delivery_count) for p in await transport.pending(backend.stream(), "workers")
        ]
        assert counts == [("c2", 3)]

    async def test_uncount_of_a_first_or_settled_delivery_does_nothing(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request())
        (first,) = await transport.read(backend.subscription(), 1)
        assert not await transport.uncount(first)
        counts = [p.delivery_count for p in await transport.pending(backend.stream(), "workers")]
        assert counts == [1]
        await backend.advance(backend.min_idle * 1.5)
        (again,) = await transport.read(backend.subscription(), 1)
        await transport.ack(again)
        assert not await transport.uncount(again)
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_keep_fresh_reports_deliveries_lost_to_another_consumer(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request("a"), request("b"))
        stale, kept = await transport.read(backend.subscription("slow"), 2)
        await backend.advance(backend.min_idle * 1.5)
        assert await transport.keep_fresh([kept]) == []
        (stolen,) = await transport.read(backend.subscription("other"), 5)
        assert stolen.entry_id == stale.entry_id
        assert await transport.keep_fresh([stale, kept]) == [stale]

    async def test_release_gives_the_entry_back_after_the_delay(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request())
        (delivery,) = await transport.read(backend.subscription("c1"), 1)
        assert await transport.release(delivery, delay=backend.min_idle / 2)
        assert await transport.read(backend.subscription("c2"), 1) == []
        await backend.advance(backend.min_idle * 0.75)
        (again,) = await transport.read(backend.subscription("c2"), 1)
        assert (again.entry_id, again.delivery_count) == (delivery.entry_id, 2)

    @pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf, 10_000.0])
    async def test_a_release_delay_reclaim_cannot_keep_is_refused(
        self, backend: Backend, delay: float
    ) -> None:
        """Reclaim takes an entry once it has been idle ``claim_min_idle``: a longer delay was
        silently cut to that, a NaN one to none. Refused, naming both; the entry stays held."""
        transport = await backend.transport()
        await published(backend, transport, request())
        (delivery,) = await transport.read(backend.subscription("c1"), 1)
        with pytest.raises(ConfigurationError, match=r"delay must be"):
            await transport.release(delivery, delay=delay)
        assert [p.consumer for p in await transport.pending(backend.stream(), "workers")] == ["c1"]

    async def test_release_by_a_consumer_that_lost_the_entry_does_nothing(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request())
        (delivery,) = await transport.read(backend.subscription("c1"), 1)
        await transport.ack(delivery)
        assert not await transport.release(delivery)

    # -- complete -------------------------------------------------------------------------------

    async def test_complete_writes_reply_record_and_ack(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        reply_stream = backend.names.responses("discord", "42")
        answer = response_to(event)
        completion = await transport.complete(delivery, Reply(answer, reply_stream), record_ttl=60)

        assert completion.created
        (reply_entry,) = await transport.read_stream(reply_stream, AgentResponseEvent)
        assert reply_entry.event == answer
        record = await transport.coordinator().get_record(event.id)
        assert record == completion.record
        assert (record.response_id, record.status, record.reply_stream, record.reply_entry_id) == (
            answer.id,
            "completed",
            reply_stream,
            reply_entry.entry_id,
        )
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_a_delivery_whose_entry_id_is_no_entry_id_is_refused_before_anything_is_written(
        self, backend: Backend
    ) -> None:
        """A delivery made by hand with an ``entry_id`` that is no stream entry id: on Redis its
        completion failed the whole script call of the completions batched with it, after writing
        every reply and record and before any ack (a TransportError for each); in memory its reply
        and record were written, then a ConfigurationError. Every call taking a delivery refuses it
        now, naming it, before writing anything; the other completions go through."""
        transport = await backend.transport()
        events = [request("hand-made"), request("read")]
        await published(backend, transport, *events)
        real, other = await transport.read(backend.subscription(), 2)
        bad = replace(real, entry_id="not-an-id", delivery_count=2)
        reply_stream = backend.names.responses("discord", "42")
        refused = re.escape("entry_id 'not-an-id' of the delivery is not a stream entry id")
        completions = await asyncio.gather(
            transport.complete(bad, Reply(response_to(events[0]), reply_stream), record_ttl=60),
            transport.complete(other, Reply(response_to(events[1]), reply_stream), record_ttl=60),
            return_exceptions=True,
        )
        assert isinstance(completions[0], ConfigurationError)
        assert re.search(refused, str(completions[0]))
        assert not isinstance(completions[1], BaseException)
        assert completions[1].created
        (written,) = await transport.read_stream(reply_stream, AgentResponseEvent)
        assert written.event.request_id == events[1].id
        assert await transport.coordinator().get_record(events[0].id) is None
        reply = Reply(response_to(events[0]), reply_stream)
        for call in (
            transport.dead_letter(bad, "poison", reply, record_ttl=60),
            transport.ack(bad),
            transport.keep_fresh([bad]),
            transport.release(bad),
            transport.uncount(bad),
        ):
            with pytest.raises(ConfigurationError, match=refused):
                await call
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
        assert len(await transport.read_stream(reply_stream, AgentResponseEvent)) == 1
        assert [p.entry_id for p in await transport.pending(backend.stream(), "workers")] == [real.entry_id]

    async def test_complete_of_an_answered_request_only_acks(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        await transport.publish(backend.stream(), event)  # a platform retry of the same request
        first, retry = await transport.read(backend.subscription(), 2)
        reply_stream = backend.names.responses("discord", "42")
        done = await transport.complete(first, Reply(response_to(event, "one"), reply_stream), record_ttl=60)
        again = await transport.complete(retry, Reply(response_to(event, "two"), reply_stream), record_ttl=60)

        assert not again.created
        assert again.record == done.record
        assert [e.event.content for e in await transport.read_stream(reply_stream, AgentResponseEvent)] == [
            "one"
        ]
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_a_record_keeps_a_reply_stream_name_that_json_must_escape(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        reply_stream = backend.names.responses("discord", 'say "hi" \\ to café ☕')

        completion = await transport.complete(
            delivery, Reply(response_to(event), reply_stream), record_ttl=60
        )

        record = await transport.coordinator().get_record(event.id)
        assert record == completion.record
        assert record is not None
        assert record.reply_stream == reply_stream

    async def test_complete_without_a_reply_stream_keeps_the_record(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        completion = await transport.complete(delivery, Reply(response_to(event), None), record_ttl=60)
        assert completion.record.reply_stream is None
        assert completion.record.reply_entry_id is None
        assert await transport.coordinator().get_record(event.id) == completion.record

    @pytest.mark.parametrize("reply_stream", ["replies", None])
    @pytest.mark.parametrize("problem", ["too large", "a reserved header"])
    async def test_a_reply_that_cannot_be_encoded_is_refused_wherever_it_goes(
        self, backend: Backend, reply_stream: str | None, problem: str
    ) -> None:
        """A reply the codec refuses (content over ``max_content_length``, a header the codec
        sets) is an error of ``complete`` and ``dead_letter`` that writes nothing, with or without
        a reply stream. Redis's ``complete`` encoded it only for a reply stream or channel: without
        one it wrote the record, ``completed``, where memory refused it (and the worker answered with
        an error, its record ``failed``)."""
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        stream = backend.stream(reply_stream) if reply_stream is not None else None
        if problem == "too large":
            response = response_to(event, "x" * (transport.codec.max_content_length + 1))
            reply, refused = Reply(response, stream), EventTooLargeError
        else:
            reply, refused = Reply(response_to(event), stream, headers={"reply_to": "x"}), EnvelopeError
        with pytest.raises(refused):
            await transport.complete(delivery, reply, record_ttl=60)
        with pytest.raises(refused):
            await transport.dead_letter(delivery, "poison", reply, record_ttl=60)
        assert await transport.coordinator().get_record(event.id) is None
        (held,) = await transport.pending(backend.stream(), "workers")
        assert held.entry_id == delivery.entry_id
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
        if stream is not None:
            assert await transport.read_stream(stream, AgentResponseEvent) == []

    async def test_complete_is_all_or_nothing_when_the_reply_cannot_be_written(
        self, backend: Backend
    ) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        # Crash point between the parts: the reply stream's key holds a record (a hash), so the
        # reply write fails after the record check.
        blocker = CompletedRecord("other", "r", "completed", None, None, 0.0)
        await transport.coordinator().set_record(blocker, 60)
        bad_stream = backend.names.completed_record("other")

        with pytest.raises(TransportError, match="WRONGTYPE"):
            await transport.complete(delivery, Reply(response_to(event), bad_stream), record_ttl=60)
        assert await transport.coordinator().get_record(event.id) is None
        assert len(await transport.pending(backend.stream(), "workers")) == 1

    async def test_complete_is_all_or_nothing_when_the_record_cannot_be_written(
        self, backend: Backend
    ) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        # The record key is taken by a stream: the record part fails, so the reply must not appear.
        await transport.publish(backend.names.completed_record(event.id), request("squatter"))
        reply_stream = backend.names.responses("discord", "42")

        with pytest.raises(TransportError, match="WRONGTYPE"):
            await transport.complete(delivery, Reply(response_to(event), reply_stream), record_ttl=60)
        assert await transport.read_stream(reply_stream, AgentResponseEvent) == []
        assert len(await transport.pending(backend.stream(), "workers")) == 1

    async def test_complete_is_all_or_nothing_when_the_request_stream_is_not_a_stream(
        self, backend: Backend
    ) -> None:
        """The ack is the last write: a request stream replaced by a key of another type must
        make complete refuse before the reply, the record or the lease change."""
        transport = await backend.transport()
        coordinator = transport.coordinator()
        event = request()
        stream = backend.names.completed_record("other")  # a record will take the stream's key
        await transport.ensure_group(stream, "workers")
        await transport.publish(stream, event)
        (delivery,) = await transport.read(backend.subscription(stream=stream), 1)
        await backend.forget_everything()
        await coordinator.set_record(CompletedRecord("other", "r", "completed", None, None, 0.0), 60)
        lease = await coordinator.acquire(event.session_id, ttl=60, holder=event.id)
        assert lease is not None
        reply_stream = backend.names.responses("discord", "42")

        with pytest.raises(TransportError, match="WRONGTYPE"):
            await transport.complete(
                delivery, Reply(response_to(event), reply_stream), record_ttl=60, lease=lease
            )
        assert await transport.read_stream(reply_stream, AgentResponseEvent) == []
        assert await coordinator.get_record(event.id) is None
        assert await coordinator.holder(event.session_id) == event.id

    # -- complete under a session lease -----------------------------------------------------------

    async def test_complete_with_the_lease_releases_it(self, backend: Backend) -> None:
        transport, coordinator, event, delivery = await one_delivery(backend)
        lease = await coordinator.acquire(event.session_id, ttl=60, holder=event.id)
        assert lease is not None
        reply_stream = backend.names.responses("discord", "42")

        completion = await transport.complete(
            delivery, Reply(response_to(event), reply_stream), record_ttl=60, lease=lease
        )

        assert completion.created
        assert await coordinator.holder(event.session_id) is None
        assert len(await transport.read_stream(reply_stream, AgentResponseEvent)) == 1
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_complete_with_a_lost_lease_writes_nothing(self, backend: Backend) -> None:
        transport, coordinator, event, delivery = await one_delivery(backend)
        stale = await coordinator.acquire(event.session_id, ttl=backend.min_idle, holder=event.id)
        await backend.advance(backend.min_idle * 1.5)
        current = await coordinator.acquire(event.session_id, ttl=60, holder="someone-else")
        assert stale is not None
        assert current is not None
        reply_stream = backend.names.responses("discord", "42")

        with pytest.raises(LeaseLostError, match=event.session_id):
            await transport.complete(
                delivery, Reply(response_to(event), reply_stream), record_ttl=60, lease=stale
            )

        assert await transport.read_stream(reply_stream, AgentResponseEvent) == []
        assert await coordinator.get_record(event.id) is None
        assert len(await transport.pending(backend.stream(), "workers")) == 1
        assert await coordinator.holder(event.session_id) == "someone-else"  # the new owner's lease stays

    async def test_complete_of_an_answered_request_acks_and_releases_the_lease(
        self, backend: Backend
    ) -> None:
        transport = await backend.transport()
        coordinator = transport.coordinator()
        event = request()
        await published(backend, transport, event)
        await transport.publish(backend.stream(), event)
        first, retry = await transport.read(backend.subscription(), 2)
        done = await transport.complete(first, Reply(response_to(event), None), record_ttl=60)
        lease = await coordinator.acquire(event.session_id, ttl=60, holder=event.id)
        assert lease is not None

        again = await transport.complete(
            retry, Reply(response_to(event, "two"), None), record_ttl=60, lease=lease
        )

        assert not again.created
        assert again.record == done.record
        assert await coordinator.holder(event.session_id) is None
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_a_complete_that_fails_keeps_the_lease(self, backend: Backend) -> None:
        transport, coordinator, event, delivery = await one_delivery(backend)
        lease = await coordinator.acquire(event.session_id, ttl=60, holder=event.id)
        await transport.publish(backend.names.completed_record(event.id), request("squatter"))
        assert lease is not None

        with pytest.raises(TransportError, match="WRONGTYPE"):
            await transport.complete(delivery, Reply(response_to(event), None), record_ttl=60, lease=lease)
        assert await coordinator.holder(event.session_id) == event.id
        assert len(await transport.pending(backend.stream(), "workers")) == 1

    async def test_a_record_key_holding_a_string_that_is_no_record_reads_as_answered(
        self, backend: Backend
    ) -> None:
        """Records are strings: whatever string holds a request's record key marks it answered
        (nothing is written, the entry is acked and the lease given back), and is reported as
        unreadable; dead-lettering it only acks it."""
        transport, coordinator, event, delivery = await one_delivery(backend)
        lease = await coordinator.acquire(event.session_id, ttl=60, holder=event.id)
        assert lease is not None
        await backend.write_string(backend.names.completed_record(event.id), "not a record")
        reply_stream = backend.names.responses("discord", "42")

        with pytest.raises(TransportError, match="completed-request record is not readable"):
            await transport.complete(
                delivery, Reply(response_to(event), reply_stream), record_ttl=60, lease=lease
            )
        assert await transport.read_stream(reply_stream, AgentResponseEvent) == []
        assert await transport.pending(backend.stream(), "workers") == []
        assert await coordinator.holder(event.session_id) is None

        other = request()
        await published(backend, transport, other)
        (second,) = await transport.read(backend.subscription(), 1)
        await backend.write_string(backend.names.completed_record(other.id), "not a record")
        assert not await transport.dead_letter(second, "failed")
        assert await transport.pending(backend.stream(), "workers") == []
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []

    async def test_dead_lettering_a_request_whose_record_key_holds_another_type_only_acks_it(
        self, backend: Backend
    ) -> None:
        transport, _, event, delivery = await one_delivery(backend)
        await transport.publish(backend.names.completed_record(event.id), request("squatter"))
        assert not await transport.dead_letter(delivery, "failed")
        assert await transport.pending(backend.stream(), "workers") == []
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []

    async def test_records_expire(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        await transport.complete(delivery, Reply(response_to(event), None), record_ttl=backend.min_idle)
        await backend.advance(backend.min_idle * 1.5)
        assert await transport.coordinator().get_record(event.id) is None

    async def test_complete_refuses_a_record_ttl_that_is_not_positive(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        reply_stream = backend.names.responses("discord", "42")
        for ttl in (0, -1.5):
            with pytest.raises(
                ConfigurationError, match=f"record_ttl must be a finite number of seconds > 0, got {ttl}"
            ):
                await transport.complete(delivery, Reply(response_to(event), reply_stream), record_ttl=ttl)
        assert await transport.read_stream(reply_stream, AgentResponseEvent) == []
        assert await transport.coordinator().get_record(event.id) is None
        assert len(await transport.pending(backend.stream(), "workers")) == 1

    @pytest.mark.parametrize("ttl", [float("nan"), float("inf")])
    async def test_complete_refuses_a_record_ttl_that_is_not_finite(
        self, backend: Backend, ttl: float
    ) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        with pytest.raises(
            ConfigurationError, match=f"record_ttl must be a finite number of seconds > 0, got {ttl}"
        ):
            await transport.complete(delivery, Reply(response_to(event), None), record_ttl=ttl)
        assert await transport.coordinator().get_record(event.id) is None
        assert len(await transport.pending(backend.stream(), "workers")) == 1

    # -- dead letters ---------------------------------------------------------------------------

    async def test_dead_letter_writes_entry_reply_and_ack(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        await backend.advance(0)
        (delivery,) = await transport.read(backend.subscription("w1"), 1)
        reply_stream = backend.names.responses("discord", "42")
        error = AgentResponseEvent(request_id=event.id, status=ResponseStatus.ERROR, error_message="gave up")

        assert await transport.dead_letter(delivery, "too many deliveries", Reply(error, reply_stream))

        (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert dead.event == event  # the original fields are kept, so the entry still decodes
        assert dead.fields[b"dead_letter.reason"] == b"too many deliveries"
        assert dead.fields[b"dead_letter.delivery_count"] == b"1"
        assert dead.fields[b"dead_letter.consumer"] == b"w1"
        assert dead.fields[b"dead_letter.entry_id"] == delivery.entry_id.encode()
        assert dead.fields[b"dead_letter.stream"] == backend.stream().encode()
        (reply,) = await transport.read_stream(reply_stream, AgentResponseEvent)
        assert reply.event == error
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_dead_letter_with_a_record_ttl_writes_the_record_naming_its_reply(
        self, backend: Backend
    ) -> None:
        """The record is written in the same step, as ``complete`` writes one: a later delivery of
        the request (a platform's retry) is then answered, not run and dead-lettered again."""
        transport, coordinator, event, delivery = await one_delivery(backend)
        reply_stream = backend.names.responses("discord", "42")
        error = AgentResponseEvent(request_id=event.id, status=ResponseStatus.ERROR, error_message="gave up")

        assert await transport.dead_letter(delivery, "poison", Reply(error, reply_stream), record_ttl=60)

        (reply,) = await transport.read_stream(reply_stream, AgentResponseEvent)
        record = await coordinator.get_record(event.id)
        assert record is not None
        assert (record.request_id, record.response_id, record.status) == (event.id, error.id, "error")
        assert (record.reply_stream, record.reply_entry_id) == (reply_stream, reply.entry_id)
        (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert dead.fields[b"dead_letter.response_id"] == error.id.encode()
        assert dead.fields[b"dead_letter.request_id"] == event.id.encode()
        await transport.publish(backend.stream(), event)  # the platform retries it, twice
        await transport.publish(backend.stream(), event)
        retry, late_run = await transport.read(backend.subscription(), 2)
        assert (await coordinator.claim(event.session_id, [event.id], ttl=60)).status == ClaimStatus.ANSWERED
        assert not await transport.dead_letter(retry, "poison", Reply(error, reply_stream), record_ttl=60)
        assert len(await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)) == 1
        # a run of it that went on elsewhere answers nothing: the dead letter's answer stands
        completion = await transport.complete(
            late_run, Reply(response_to(event), reply_stream), record_ttl=60
        )
        assert (completion.created, completion.record) == (False, record)
        assert len(await transport.read_stream(reply_stream, AgentResponseEvent)) == 1
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_dead_letter_keeps_its_record_record_ttl_seconds(self, backend: Backend) -> None:
        transport, coordinator, event, delivery = await one_delivery(backend)
        error = AgentResponseEvent(request_id=event.id, status=ResponseStatus.ERROR, error_message="gave up")
        assert await transport.dead_letter(
            delivery, "poison", Reply(error, None), record_ttl=backend.min_idle
        )
        record = await coordinator.get_record(event.id)
        assert record is not None
        assert (record.response_id, record.reply_stream, record.reply_entry_id) == (error.id, None, None)
        await backend.advance(backend.min_idle * 1.5)
        assert await coordinator.get_record(event.id) is None

    async def test_dead_letter_without_a_record_ttl_writes_no_record(self, backend: Backend) -> None:
        transport, coordinator, event, delivery = await one_delivery(backend)
        error = AgentResponseEvent(request_id=event.id, status=ResponseStatus.ERROR, error_message="gave up")
        assert await transport.dead_letter(delivery, "poison", Reply(error, None))
        assert await coordinator.get_record(event.id) is None
        (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert b"dead_letter.response_id" not in dead.fields
        assert b"dead_letter.request_id" not in dead.fields

    async def test_an_undecodable_entry_dead_lettered_with_a_record_ttl_has_no_record(
        self, backend: Backend
    ) -> None:
        """No request id, no record: its reply (if any) is still written."""
        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        await transport.publish_fields(backend.stream(), {"__data__": b"junk"})
        (delivery,) = await transport.read(backend.subscription(dead_letter_undecodable=False), 1)
        assert delivery.message is None
        reply = Reply(AgentResponseEvent(request_id="unknown", content="?"), None)
        assert await transport.dead_letter(delivery, "undecodable", reply, record_ttl=60)
        assert await transport.coordinator().get_record("unknown") is None
        (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert b"dead_letter.response_id" not in dead.fields
        assert b"dead_letter.request_id" not in dead.fields

    @pytest.mark.parametrize("ttl", [0, -1.0, float("nan"), float("inf")])
    async def test_dead_letter_refuses_a_bad_record_ttl_and_changes_nothing(
        self, backend: Backend, ttl: float
    ) -> None:
        transport, coordinator, event, delivery = await one_delivery(backend)
        reply = Reply(response_to(event), None)
        with pytest.raises(
            ConfigurationError, match=f"record_ttl must be a finite number of seconds > 0, got {ttl}"
        ):
            await transport.dead_letter(delivery, "poison", reply, record_ttl=ttl)
        with pytest.raises(ConfigurationError, match=r"record_ttl=\.\.\.\) needs a reply"):
            await transport.dead_letter(delivery, "poison", record_ttl=60)
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
        assert await coordinator.get_record(event.id) is None
        assert len(await transport.pending(backend.stream(), "workers")) == 1

    async def test_dead_letter_twice_writes_once(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request())
        (delivery,) = await transport.read(backend.subscription(), 1)
        assert await transport.dead_letter(delivery, "first")
        assert not await transport.dead_letter(delivery, "second")
        dead = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert [d.fields[b"dead_letter.reason"] for d in dead] == [b"first"]

    async def test_dead_letter_by_a_consumer_that_lost_the_entry_does_nothing(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request())
        (stale,) = await transport.read(backend.subscription("slow"), 1)
        await backend.advance(backend.min_idle * 1.5)
        (owned,) = await transport.read(backend.subscription("fast"), 1)
        assert not await transport.dead_letter(stale, "stale view")
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
        assert await transport.dead_letter(owned, "owner")

    async def test_dead_letter_after_the_group_was_lost_does_nothing(self, backend: Backend) -> None:
        """The server lost the data (flushed, restarted without persistence): the entry is no
        longer held, as keep_fresh and release report."""
        transport = await backend.transport()
        await published(backend, transport, request())
        (delivery,) = await transport.read(backend.subscription(), 1)
        await backend.forget_everything()
        assert not await transport.dead_letter(delivery, "too late")
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
        assert await transport.keep_fresh([delivery]) == [delivery]

    async def test_a_delivery_of_a_lost_group_is_no_longer_held_by_any_call(self, backend: Backend) -> None:
        """After the server lost the data, every call on a delivery says it is no longer held, as
        in memory: Redis's ``uncount`` failed with a TransportError (NOGROUP) where ``keep_fresh``,
        ``release`` and ``dead_letter`` report the entry lost."""
        transport = await backend.transport()
        await published(backend, transport, request())
        await transport.read(backend.subscription("busy"), 1)
        await backend.advance(backend.min_idle * 1.5)
        (again,) = await transport.read(backend.subscription("busy"), 1)  # its own reclaim: counted twice
        assert again.delivery_count == 2
        await backend.forget_everything()
        assert not await transport.uncount(again)
        assert not await transport.release(again)
        assert await transport.keep_fresh([again]) == [again]
        assert not await transport.dead_letter(again, "too late")
        assert await transport.ack(again) == 0
        await backend.write_string(backend.stream("other"), "a string, not a stream")
        with pytest.raises(TransportError, match="WRONGTYPE"):  # a real failure still is one
            await transport.uncount(replace(again, stream=backend.stream("other")))

    async def test_dead_letter_of_an_answered_request_only_acks(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        await transport.publish(backend.stream(), event)
        first, retry = await transport.read(backend.subscription(), 2)
        await transport.complete(first, Reply(response_to(event), None), record_ttl=60)
        assert not await transport.dead_letter(retry, "late")
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_dead_letter_is_all_or_nothing(self, backend: Backend) -> None:
        transport = await backend.transport()
        event = request()
        await published(backend, transport, event)
        (delivery,) = await transport.read(backend.subscription(), 1)
        await transport.coordinator().set_record(CompletedRecord("x", "r", "completed", None, None, 0.0), 60)
        bad_reply = Reply(response_to(event), backend.names.completed_record("x"))

        with pytest.raises(TransportError, match="WRONGTYPE"):
            await transport.dead_letter(delivery, "poison", bad_reply)
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
        assert len(await transport.pending(backend.stream(), "workers")) == 1

    async def test_poison_entry_goes_to_the_dead_letter_stream(self, backend: Backend) -> None:
        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        poison_id = await transport.publish_fields(backend.stream(), {"__data__": b"\x89BIN truncated"})
        good = request("after the poison")
        await transport.publish(backend.stream(), good)

        poison, delivery = await transport.read(backend.subscription(), 5)
        assert poison.settled
        assert poison.error is not None
        assert delivery.event == good
        (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert dead.fields[b"__data__"] == b"\x89BIN truncated"
        assert dead.fields[b"dead_letter.entry_id"] == poison_id.encode()
        assert dead.fields[b"dead_letter.reason"].startswith(b"undecodable: ")
        assert [p.entry_id for p in await transport.pending(backend.stream(), "workers")] == [
            delivery.entry_id
        ]
        assert await transport.ack(poison) == 0  # settled: nothing left to do
        assert transport.stats.undecodable == 1

    async def test_undecodable_entries_can_be_left_to_the_caller(self, backend: Backend) -> None:
        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        await transport.publish_fields(backend.stream(), {"__data__": b"not json"})
        (delivery,) = await transport.read(backend.subscription(dead_letter_undecodable=False), 1)
        assert not delivery.settled
        assert delivery.error is not None
        with pytest.raises(type(delivery.error)):
            _ = delivery.event
        assert await transport.read_stream(backend.names.dead_letters, AgentRequestEvent) == []
        assert await transport.dead_letter(delivery, "caller decided")

    async def test_a_legacy_envelope_with_a_lone_surrogate_is_dead_lettered(self, backend: Backend) -> None:
        """A foreign legacy JSON envelope whose data is an escaped lone surrogate: it used to fail
        the whole read (UnicodeEncodeError) instead of going to the dead-letter stream."""
        transport = await backend.transport()
        await published(backend, transport, request("good"))
        await transport.publish_fields(backend.stream(), {b"__data__": b'{"data": "\\ud800", "headers": {}}'})
        good, bad = await transport.read(backend.subscription(), 10)
        assert (good.settled, bad.settled) == (False, True)
        (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert dead.fields[b"dead_letter.reason"].startswith(b"undecodable: legacy JSON envelope: 'data'")

    async def test_an_entry_whose_decoding_raises_anything_is_dead_lettered(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Any exception out of the codec makes that one entry undecodable, named in the reason:
        never a failed read."""
        transport = await backend.transport()
        await published(backend, transport, request("good"), request("bug"))
        decode = transport.codec.decode_entry

        def buggy(fields: Any, model: Any) -> Any:
            message = decode(fields, model)
            if message.event.content == "bug":
                raise KeyError("a codec bug")
            return message

        monkeypatch.setattr(type(transport.codec), "decode_entry", lambda _, f, m: buggy(f, m))
        good, bad = await transport.read(backend.subscription(), 10)
        assert good.event.content == "good"
        assert bad.settled
        assert bad.error is not None
        (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert (
            dead.fields[b"dead_letter.reason"]
            == b"undecodable: decoding the entry raised KeyError: 'a codec bug'"
        )

    async def test_an_entry_that_cannot_be_dead_lettered_stays_pending_and_the_rest_are_delivered(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        stuck = await transport.publish_fields(backend.stream(), {"__data__": b"not json"})
        await transport.publish_fields(backend.stream(), {"__data__": b"nor this"})
        good = await transport.publish(backend.stream(), request("good"))
        dead_letter = transport.dead_letter

        async def failing(delivery: Delivery[Any], reason: str, reply: Reply | None = None) -> bool:
            if delivery.entry_id == stuck:
                raise TransportError("dead-letter failed: the broker refused it")
            return await dead_letter(delivery, reason, reply)

        monkeypatch.setattr(transport, "dead_letter", failing)
        other, delivery = await transport.read(backend.subscription(), 10)
        assert other.settled
        assert delivery.entry_id == good
        assert [p.entry_id for p in await transport.pending(backend.stream(), "workers")] == [stuck, good]
        monkeypatch.undo()  # the fault is gone: the next reclaim dead-letters it
        await backend.advance(backend.min_idle * 1.5)
        (again,) = await transport.read(backend.subscription("c2"), 1)
        assert (again.entry_id, again.settled, again.delivery_count) == (stuck, True, 2)
        assert len(await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)) == 2

    async def test_an_undecodable_entry_with_thousands_of_fields_is_dead_lettered_whole(
        self, backend: Backend
    ) -> None:
        """More fields than a Redis script passes on to one command (unpack() stops near 8,000
        values): the dead letter carries them packed in ``dead_letter.fields``, and ``DeadLetters``
        gives them back unchanged, and requeues them."""
        from dynamic_agents.operations import DeadLetters

        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        fields = {f"f{n}".encode(): f"v{n}".encode() for n in range(4100)}
        await transport.publish_fields(backend.stream(), fields)
        await transport.publish(backend.stream(), request("good"))
        poison, good = await transport.read(backend.subscription(), 10)
        assert poison.settled
        assert not good.settled
        (dead,) = await transport.read_stream(backend.names.dead_letters, AgentRequestEvent)
        assert set(dead.fields) == {b"dead_letter.fields"} | {
            f"dead_letter.{k}".encode()
            for k in ("reason", "stream", "group", "consumer", "entry_id", "delivery_count", "dead_at")
        }
        assert [p.entry_id for p in await transport.pending(backend.stream(), "workers")] == [good.entry_id]
        letters = DeadLetters(transport)
        (letter,) = await letters.list()
        assert (dict(letter.fields), letter.origin_entry_id) == (fields, poison.entry_id)
        new_id = await letters.requeue(letter.id)
        (requeued,) = await transport.read_stream(backend.stream(), AgentRequestEvent, after=good.entry_id)
        assert (requeued.entry_id, dict(requeued.fields)) == (new_id, fields)
        assert await letters.list() == []

    @pytest.mark.parametrize(
        "own",
        [{b"dead_letter.reason": b"mine"}, {b"dead_letter.fields": b"not packed"}, {b"dead_letter.x": b"1"}],
        ids=["a-metadata-name", "the-packed-name", "another-prefixed-name"],
    )
    async def test_fields_named_like_dead_letter_metadata_are_requeued_unchanged(
        self, backend: Backend, own: dict[bytes, bytes]
    ) -> None:
        """An original field named ``dead_letter.…`` was overwritten by the metadata (or read as
        metadata) and dropped on requeue: such fields are packed, and come back exactly."""
        from dynamic_agents.operations import DeadLetters

        transport = await backend.transport()
        event = request()
        await transport.ensure_group(backend.stream(), "workers")
        fields = {
            **{k.encode(): v for k, v in transport.codec.encode_entry(event).items()},
            **own,
        }
        await transport.publish_fields(backend.stream(), fields)
        (delivery,) = await transport.read(backend.subscription(), 1)
        assert dict(delivery.fields) == fields

        assert await transport.dead_letter(delivery, "too many deliveries")

        letters = DeadLetters(transport)
        (letter,) = await letters.list()
        assert (letter.reason, dict(letter.fields), letter.request) == ("too many deliveries", fields, event)
        new_id = await letters.requeue(letter.id)
        (requeued,) = await transport.read_stream(
            backend.stream(), AgentRequestEvent, after=delivery.entry_id
        )
        assert (requeued.entry_id, dict(requeued.fields)) == (new_id, fields)

    async def test_keep_fresh_of_thousands_of_held_entries(self, backend: Backend) -> None:
        """More ids than a Redis script passes on to one XCLAIM: held in chunks."""
        # The thief's min idle is four units: keeping 8,100 entries fresh takes real time on Redis
        # (on a loaded machine, more than the unit's fraction), and the first chunk's idle time
        # runs from its own XCLAIM on.
        min_idle = backend.min_idle * 4
        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        await transport.publish_many(backend.stream(), [request(str(n)) for n in range(8100)])
        held = await transport.read(backend.subscription(), 8100)
        assert len(held) == 8100
        await backend.advance(min_idle * 0.75)
        assert await transport.keep_fresh(held) == []
        await backend.advance(min_idle * 0.5)  # past min idle since the read, not since kept fresh
        assert await transport.read(backend.subscription("thief", claim_min_idle=min_idle), 1) == []

    async def test_many_completions_in_one_batch(self, backend: Backend) -> None:
        """More completions at once than the batch script's MGET / XACK chunks."""
        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        await transport.publish_many(backend.stream(), [request(str(n)) for n in range(1100)])
        deliveries: list[Delivery[AgentRequestEvent]] = []
        while len(deliveries) < 1100:  # no reclaim: on a loaded machine the first would come back
            deliveries += await transport.read(backend.subscription(claim_min_idle=None), 500)
        reply_stream = backend.stream("replies")
        results = await asyncio.gather(
            *(
                transport.complete(d, Reply(response_to(d.event), reply_stream), record_ttl=60)
                for d in deliveries
            )
        )
        assert all(r.created for r in results)
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_reclaim_goes_on_past_count_within_one_interval(self, backend: Backend) -> None:
        """As XAUTOCLAIM's cursor: a scan stopped at ``count`` continues at the next read; only a
        scan that reached the end of the pending list waits for the next interval."""
        transport = await backend.transport()
        await published(backend, transport, request("a"), request("b"), request("c"))
        assert len(await transport.read(backend.subscription("dead"), 3)) == 3
        await backend.advance(backend.min_idle * 1.5)
        sub = backend.subscription("alive", claim_interval=backend.min_idle * 100)
        got: list[Delivery[AgentRequestEvent]] = []
        for _ in range(4):
            got += await transport.read(sub, 1)
        assert [(d.event.content, d.delivery_count) for d in got] == [("a", 2), ("b", 2), ("c", 2)]

    async def test_an_entry_deleted_while_pending_is_lost_to_keep_fresh_and_release(
        self, backend: Backend
    ) -> None:
        transport = await backend.transport()
        await published(backend, transport, request("a"), request("b"))
        first, second = await transport.read(backend.subscription(), 2)
        assert await transport.delete(backend.stream(), first.entry_id, second.entry_id) == 2
        assert await transport.keep_fresh([first]) == [first]
        assert not await transport.release(second)
        assert await transport.pending(backend.stream(), "workers") == []

    async def test_two_completions_under_one_lease_write_one(self, backend: Backend) -> None:
        """The same lease passed to two completions in one batch: the first releases it, so the
        second finds it gone, as it does when they are made one after the other."""
        transport = await backend.transport()
        await published(backend, transport, request("a"), request("b"))
        first, second = await transport.read(backend.subscription(), 2)
        lease = await transport.coordinator().acquire(first.event.session_id, 60.0)
        assert lease is not None
        outcomes = await asyncio.gather(
            *(
                transport.complete(d, Reply(response_to(d.event), None), record_ttl=60, lease=lease)
                for d in (first, second)
            ),
            return_exceptions=True,
        )
        assert [type(outcome).__name__ for outcome in outcomes] == ["Completion", "LeaseLostError"]
        assert await transport.coordinator().get_record(second.event.id) is None

    # -- groups ---------------------------------------------------------------------------------

    async def test_group_created_after_entries_sees_them(self, backend: Backend) -> None:
        transport = await backend.transport()
        early = request("written before any group")
        await transport.publish(backend.stream(), early)
        assert await transport.ensure_group(backend.stream(), "late-group")
        assert not await transport.ensure_group(backend.stream(), "late-group")
        (delivery,) = await transport.read(backend.subscription(group="late-group"), 5)
        assert delivery.event == early

    async def test_group_lost_with_the_data_is_recreated(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, request("before"))
        await backend.forget_everything()
        after = request("after")
        await transport.publish(backend.stream(), after)
        (delivery,) = await transport.read(backend.subscription(), 5)
        assert delivery.event == after
        assert transport.stats.groups_recreated == 1

    async def test_two_transports_share_one_group(self, backend: Backend) -> None:
        producer, worker_a, worker_b = [await backend.transport() for _ in range(3)]
        events = [request(str(n)) for n in range(6)]
        await published(backend, producer, *events)
        a = await worker_a.read(backend.subscription("a"), 3)
        b = await worker_b.read(backend.subscription("b"), 10)
        assert sorted(d.event.content for d in a + b) == sorted(e.content for e in events)
        assert {d.entry_id for d in a}.isdisjoint(d.entry_id for d in b)

    # -- blocking and consuming -----------------------------------------------------------------

    async def test_read_waits_for_an_entry(self, backend: Backend) -> None:
        transport, producer = await backend.transport(), await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        reading = asyncio.create_task(transport.read(backend.subscription(block=10.0), 1))
        await asyncio.sleep(0)
        event = request("late")
        await producer.publish(backend.stream(), event)
        (delivery,) = await asyncio.wait_for(reading, 10.0)
        assert delivery.event == event

    async def test_read_returns_nothing_after_the_block_timeout(self, backend: Backend) -> None:
        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        assert await transport.read(backend.subscription(block=0.05), 5) == []

    async def test_an_empty_read_without_block_yields_to_the_event_loop(self, backend: Backend) -> None:
        """``block=0`` is a read that does not wait, not one that holds the event loop: a caller
        polling with it lets other tasks run between its reads (as a read over the network does)."""
        transport = await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        try:
            await asyncio.sleep(0)  # the ticker has started
            before = ticks
            for _ in range(3):
                assert await transport.read(backend.subscription(block=0), 1) == []
            assert ticks > before
        finally:
            ticker.cancel()

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({}, "non-empty mapping"),
            ({b"a": None}, "field b'a' of an entry must be str or bytes"),
            ({"n": 1}, "its value is int"),
            ({1: b"x"}, "field 1 of an entry"),
        ],
    )
    async def test_fields_that_cannot_be_an_entry_are_refused_and_nothing_is_written(
        self, backend: Backend, fields: Any, message: str
    ) -> None:
        """Redis refused these as a server failure (TransportError); memory wrote an empty entry or
        the text ``None``. Both refuse them now, as the caller's mistake."""
        transport = await backend.transport()
        stream = backend.stream()
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            await transport.publish_fields(stream, fields)
        first = await transport.publish_fields(stream, {"ok": "text", b"raw": b"\xff"})
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            await transport.move(stream, first, backend.stream("elsewhere"), fields)
        (entry,) = await transport.read_stream(stream, AgentRequestEvent)
        assert entry.fields == {b"ok": b"text", b"raw": b"\xff"}

    async def test_consume_reads_only_free_capacity(self, backend: Backend) -> None:
        transport = await backend.transport()
        await published(backend, transport, *(request(str(n)) for n in range(5)))
        in_flight: list[Delivery[AgentRequestEvent]] = []
        stream = transport.consume(backend.subscription(batch_size=10), lambda: 2 - len(in_flight))
        in_flight.append(await anext(stream))
        in_flight.append(await anext(stream))
        assert len(await transport.pending(backend.stream(), "workers")) == 2
        await transport.ack(in_flight.pop(0))
        in_flight.append(await anext(stream))
        assert len(await transport.pending(backend.stream(), "workers")) == 2
        await stream.aclose()

    async def test_consume_at_full_capacity_waits_even_without_a_block(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With ``block=0`` (reads that never wait) and no free capacity, consume() slept 0 s
        between checks: a loop that held the CPU until a run ended. It waits a moment now."""
        transport = await backend.transport()
        await published(backend, transport, request("waiting"))
        naps: list[float] = []
        real_sleep = asyncio.sleep

        async def recorded(delay: float, *args: Any) -> Any:
            naps.append(delay)
            return await real_sleep(0, *args)

        checks = 0

        def capacity() -> int:
            nonlocal checks
            checks += 1
            return 1 if checks > 3 else 0  # full for three checks, then one slot

        monkeypatch.setattr(asyncio, "sleep", recorded)
        stream = transport.consume(backend.subscription(block=0), capacity)
        delivery = await asyncio.wait_for(anext(stream), 10.0)
        await stream.aclose()
        assert delivery.event.content == "waiting"
        assert len(naps) >= 3
        assert min(naps) > 0

    # -- plain reads, trimming, reply streams ---------------------------------------------------

    async def test_read_stream_after_an_id(self, backend: Backend) -> None:
        transport = await backend.transport()
        replies = backend.names.responses("slack", "C1")
        first = await transport.publish(replies, AgentResponseEvent(request_id="r1"))
        await transport.publish(replies, AgentResponseEvent(request_id="r2"))
        later = await transport.read_stream(replies, AgentResponseEvent, after=first)
        assert [e.event.request_id for e in later] == ["r2"]
        assert await transport.read_stream(replies, AgentResponseEvent, after=later[0].entry_id) == []

    async def test_read_stream_after_dollar_sees_only_what_comes_next(self, backend: Backend) -> None:
        """``$`` (Redis's "the newest id now") works without a group too: ``after="$"`` with
        ``block`` waits for the next entry; without ``block`` there is nothing after it."""
        transport, producer = await backend.transport(), await backend.transport()
        replies = backend.names.responses("slack", "C3")
        await producer.publish(replies, AgentResponseEvent(request_id="old"))
        assert await transport.read_stream(replies, AgentResponseEvent, after="$") == []
        reading = asyncio.create_task(
            transport.read_stream(replies, AgentResponseEvent, after="$", block=10.0)
        )
        async with asyncio.timeout(10.0):
            while not reading.done():  # until the read, wherever it got to, sees one
                await producer.publish(replies, AgentResponseEvent(request_id="new"))
                await asyncio.sleep(0.01)
        entries = reading.result()
        assert entries
        assert {e.event.request_id for e in entries} == {"new"}

    @pytest.mark.parametrize(
        "after", ["", "abc", " 1-0", "1_0-0", "1-0-0", "-1", "1-", "99999999999999999999999-0"]
    )
    async def test_read_stream_refuses_what_is_not_an_entry_id(self, backend: Backend, after: str) -> None:
        transport = await backend.transport()
        replies = backend.names.responses("slack", "C4")
        await transport.publish(replies, AgentResponseEvent(request_id="r"))
        with pytest.raises(ConfigurationError, match="is not a stream entry id"):
            await transport.read_stream(replies, AgentResponseEvent, after=after)

    async def test_read_stream_takes_an_id_without_its_sequence_and_refuses_count_0(
        self, backend: Backend
    ) -> None:
        transport = await backend.transport()
        replies = backend.names.responses("slack", "C5")
        first = await transport.publish(replies, AgentResponseEvent(request_id="r1"))
        await transport.publish(replies, AgentResponseEvent(request_id="r2"))
        millis = first.split("-")[0]
        # "ms" is "ms-0", as in XREAD: the first entry, unless it got sequence 0, is after it
        after = await transport.read_stream(replies, AgentResponseEvent, after=millis)
        assert [e.event.request_id for e in after][-1] == "r2"
        with pytest.raises(ConfigurationError, match="count must be a whole number > 0"):
            await transport.read_stream(replies, AgentResponseEvent, count=0)

    @pytest.mark.parametrize("block", [math.nan, math.inf, -1.0, "1"])
    async def test_read_stream_refuses_a_block_that_is_not_a_number_of_seconds(
        self, backend: Backend, block: object
    ) -> None:
        """A NaN block used to make the in-memory read wait forever, an infinite one a bare
        OverflowError on Redis."""
        transport = await backend.transport()
        with pytest.raises(ConfigurationError, match=rf"^block must be .*, got {block!r}$"):
            await transport.read_stream(backend.stream("quiet"), AgentResponseEvent, block=block)  # type: ignore[arg-type]

    @pytest.mark.parametrize("count", [-1, 0, True])
    async def test_pending_refuses_a_count_that_is_not_positive(
        self, backend: Backend, count: object
    ) -> None:
        """A negative count listed all but the last entries in memory and was a redis-py DataError."""
        transport = await backend.transport()
        await published(backend, transport, request("a"), request("b"))
        await transport.read(backend.subscription(), 2)
        with pytest.raises(ConfigurationError, match=rf"^count must be a whole number > 0, got {count!r}$"):
            await transport.pending(backend.stream(), "workers", count=count)  # type: ignore[arg-type]
        assert len(await transport.pending(backend.stream(), "workers", count=1)) == 1

    async def test_publish_with_maxlen_and_expire(self, backend: Backend) -> None:
        transport = await backend.transport()
        replies = backend.names.responses("slack", "C2")
        for n in range(5):
            await transport.publish(
                replies, AgentResponseEvent(request_id=f"r{n}"), maxlen=2, expire=backend.min_idle
            )
        assert len(await transport.read_stream(replies, AgentResponseEvent)) >= 2
        await backend.advance(backend.min_idle * 1.5)
        assert await transport.read_stream(replies, AgentResponseEvent) == []

    async def test_trim_keeps_pending_and_undelivered_entries(self, backend: Backend) -> None:
        transport = await backend.transport()
        ids = await published(backend, transport, *(request(str(n)) for n in range(6)))
        await transport.ensure_group(backend.stream(), "slow-group")
        acked, pending = await transport.read(backend.subscription(), 2)
        await transport.ack(acked)
        # "workers" acked entry 0 and holds entry 1; "slow-group" has read nothing.
        assert await transport.trim_acknowledged(backend.stream()) == 0
        (slow,) = await transport.read(backend.subscription(group="slow-group"), 1)
        await transport.ack(slow)
        assert await transport.trim_acknowledged(backend.stream()) == 1
        remaining = await transport.read_stream(backend.stream(), AgentRequestEvent)
        assert [e.entry_id for e in remaining] == ids[1:]
        assert pending.entry_id == ids[1]

    async def test_trim_without_groups_keeps_everything(self, backend: Backend) -> None:
        transport = await backend.transport()
        await transport.publish(backend.stream("lonely"), request())
        assert await transport.trim_acknowledged(backend.stream("lonely")) == 0
        assert await transport.trim_acknowledged(backend.stream("absent")) == 0

    # -- closing --------------------------------------------------------------------------------

    async def test_reads_waiting_when_the_transport_closes_fail_at_once(self, backend: Backend) -> None:
        """A blocking ``read`` or ``read_stream`` in flight when ``aclose()`` is called raises
        TransportError at once, as on Redis (whose read connections close under them): in memory
        they waited out their ``block`` and returned nothing, so a stop waited for them. Another
        transport's reads on the same storage wait on undisturbed."""
        transport, other = await backend.transport(), await backend.transport()
        await transport.ensure_group(backend.stream(), "workers")
        await other.ensure_group(backend.stream(), "others")  # (not served to a closed read first)
        reading = asyncio.create_task(transport.read(backend.subscription(block=3600.0), 1))
        tailing = asyncio.create_task(
            transport.read_stream(backend.stream(), AgentRequestEvent, after="$", block=3600.0)
        )
        theirs = asyncio.create_task(other.read(backend.subscription("c2", group="others", block=3600.0), 1))
        for _ in range(5):  # every read is waiting
            await asyncio.sleep(0)
        await transport.aclose()
        async with asyncio.timeout(10.0):  # bounds a hang: the reads would wait for an hour
            for task in (reading, tailing):
                with pytest.raises(TransportError, match="closed"):
                    await task
            assert not theirs.done()
            event = request("after the close")
            await other.publish(backend.stream(), event)
            (delivery,) = await theirs
        assert delivery.event == event


class CoordinatorContract:
    async def coordinator(self, backend: Backend) -> Coordinator:
        return (await backend.transport()).coordinator()

    async def test_a_lease_is_exclusive(self, backend: Backend) -> None:
        first, second = await self.coordinator(backend), await self.coordinator(backend)
        lease = await first.acquire("discord:42", ttl=60)
        assert lease is not None
        assert await second.acquire("discord:42", ttl=60) is None
        assert await second.acquire("discord:43", ttl=60) is not None

    async def test_a_lease_expires(self, backend: Backend) -> None:
        coordinator = await self.coordinator(backend)
        first = await coordinator.acquire("s", ttl=backend.min_idle)
        await backend.advance(backend.min_idle * 1.5)
        second = await coordinator.acquire("s", ttl=60)
        assert first is not None
        assert second is not None
        assert first.token != second.token
        assert not await coordinator.renew(first)
        assert not await coordinator.release(first)
        assert await coordinator.acquire("s", ttl=60) is None  # the stale owner changed nothing

    async def test_renew_keeps_the_lease_alive(self, backend: Backend) -> None:
        coordinator = await self.coordinator(backend)
        lease = await coordinator.acquire("s", ttl=backend.min_idle)
        assert lease is not None
        for _ in range(3):
            await backend.advance(backend.min_idle / 2)
            assert await coordinator.renew(lease)
        assert await coordinator.acquire("s", ttl=60) is None

    async def test_only_the_owner_releases(self, backend: Backend) -> None:
        coordinator = await self.coordinator(backend)
        lease = await coordinator.acquire("s", ttl=60)
        assert lease is not None
        impostor = type(lease)(lease.session_id, "not-the-token", lease.ttl)
        assert not await coordinator.release(impostor)
        assert not await coordinator.renew(impostor)
        assert await coordinator.acquire("s", ttl=60) is None
        assert await coordinator.release(lease)
        assert await coordinator.acquire("s", ttl=60) is not None

    async def test_records_are_set_once_and_expire(self, backend: Backend) -> None:
        coordinator = await self.coordinator(backend)
        record = CompletedRecord("req-1", "resp-1", "completed", "replies", "1-0", 1_700_000_000.5)
        assert await coordinator.get_record("req-1") is None
        assert await coordinator.set_record(record, ttl=backend.min_idle)
        assert not await coordinator.set_record(
            CompletedRecord("req-1", "resp-2", "error", None, None, 0.0), ttl=60
        )
        assert await coordinator.get_record("req-1") == record
        await backend.advance(backend.min_idle * 1.5)
        assert await coordinator.get_record("req-1") is None

    async def test_a_record_key_holding_a_string_that_is_no_record(self, backend: Backend) -> None:
        """Any string there marks the request answered: not overwritten, claimed as answered,
        and reported as unreadable."""
        coordinator = await self.coordinator(backend)
        await backend.write_string(backend.names.completed_record("req-1"), "not a record")
        record = CompletedRecord("req-1", "resp-1", "completed", None, None, 0.0)
        assert not await coordinator.set_record(record, ttl=60)
        claim = await coordinator.claim("s", ["req-1"], ttl=60)
        assert claim.status == ClaimStatus.ANSWERED
        assert claim.request_ids == {"req-1"}
        assert await coordinator.holder("s") is None
        with pytest.raises(TransportError, match="completed-request record is not readable"):
            await coordinator.get_record("req-1")

    async def test_a_record_key_holding_another_type(self, backend: Backend) -> None:
        """A key of another type (a stream) is no record: not overwritten, not an answer to a
        claim, and an error to read."""
        coordinator = await self.coordinator(backend)
        transport = await backend.transport()
        await transport.publish(backend.names.completed_record("req-1"), request("squatter"))
        record = CompletedRecord("req-1", "resp-1", "completed", None, None, 0.0)
        assert not await coordinator.set_record(record, ttl=60)
        claim = await coordinator.claim("s", ["req-1"], ttl=60)
        assert claim.status == ClaimStatus.LEASED
        with pytest.raises(TransportError, match="WRONGTYPE"):
            await coordinator.get_record("req-1")

    async def test_delete_record_deletes_only_the_record_naming_the_response(self, backend: Backend) -> None:
        coordinator = await self.coordinator(backend)
        record = CompletedRecord("req-1", "resp-1", "error", "replies", "1-0", 1_700_000_000.5)
        assert not await coordinator.delete_record("req-1", response_id="resp-1")  # none there
        assert await coordinator.set_record(record, ttl=60)
        assert not await coordinator.delete_record("req-1", response_id="resp-2")  # a later answer's
        assert await coordinator.get_record("req-1") == record
        assert await coordinator.delete_record("req-1", response_id="resp-1")
        assert await coordinator.get_record("req-1") is None
        assert await coordinator.set_record(record, ttl=60)  # deleted: it can be written again

    async def test_delete_record_without_a_response_id_deletes_whatever_is_there(
        self, backend: Backend
    ) -> None:
        coordinator = await self.coordinator(backend)
        assert not await coordinator.delete_record("req-1")
        await coordinator.set_record(CompletedRecord("req-1", "resp-1", "completed", None, None, 0.0), 60)
        assert await coordinator.delete_record("req-1")
        assert await coordinator.get_record("req-1") is None
        await backend.write_string(backend.names.completed_record("req-2"), "not a record")
        assert await coordinator.delete_record("req-2")
        assert (await coordinator.claim("s", ["req-2"], ttl=60)).status == ClaimStatus.LEASED

    @pytest.mark.parametrize("stored", ["not a record", "[1, 2]", '{"response_id": 5}', '"resp-1"'])
    async def test_delete_record_keeps_a_string_that_names_no_response(
        self, backend: Backend, stored: str
    ) -> None:
        coordinator = await self.coordinator(backend)
        await backend.write_string(backend.names.completed_record("req-1"), stored)
        assert not await coordinator.delete_record("req-1", response_id="resp-1")
        assert (await coordinator.claim("s", ["req-1"], ttl=60)).status == ClaimStatus.ANSWERED

    async def test_delete_record_of_a_key_holding_another_type_is_an_error(self, backend: Backend) -> None:
        coordinator = await self.coordinator(backend)
        transport = await backend.transport()
        await transport.publish(backend.names.completed_record("req-1"), request("squatter"))
        with pytest.raises(TransportError, match="WRONGTYPE"):
            await coordinator.delete_record("req-1", response_id="resp-1")
        assert (
            len(await transport.read_stream(backend.names.completed_record("req-1"), AgentRequestEvent)) == 1
        )

    @pytest.mark.parametrize("ttl", [float("nan"), float("inf")])
    async def test_a_ttl_that_is_not_a_finite_number_is_refused(self, backend: Backend, ttl: float) -> None:
        """NaN compares false with everything: a lease with it would never expire in memory, and
        Redis cannot take it as milliseconds."""
        coordinator = await self.coordinator(backend)
        record = CompletedRecord("req-1", "resp-1", "completed", None, None, 0.0)
        lease = await coordinator.acquire("held", ttl=60)
        assert lease is not None
        calls = [
            coordinator.acquire("s", ttl),
            coordinator.renew(lease, ttl),
            coordinator.request_cancel("r", ttl),
            coordinator.set_record(record, ttl),
            coordinator.claim("c", ["req-2"], ttl),
        ]
        for call in calls:
            with pytest.raises(
                ConfigurationError, match=f"ttl must be a finite number of seconds > 0, got {ttl}"
            ):
                await call
        assert await coordinator.holder("s") is None
        assert await coordinator.holder("c") is None
        assert await coordinator.cancelled(["r"]) == set()
        assert await coordinator.get_record("req-1") is None

    async def test_renewing_with_a_bad_ttl_is_refused_whoever_holds_the_lease(self, backend: Backend) -> None:
        """The ttl is checked first: a lease this caller does not hold (any more) gets the same
        error as one it holds, not ``False`` on one backend and an error on the other."""
        coordinator = await self.coordinator(backend)
        lease = await coordinator.acquire("s", ttl=60)
        assert lease is not None
        assert await coordinator.release(lease)
        with pytest.raises(ConfigurationError, match="ttl must be a finite number of seconds > 0"):
            await coordinator.renew(lease, 0)


class TransportOperationsContract:
    async def test_delete_and_last_entry_id(self, backend: Backend) -> None:
        transport = await backend.transport()
        stream = backend.stream("ops")
        assert await transport.last_entry_id(stream) == "0-0"
        first = await transport.publish(stream, request("a"))
        second = await transport.publish(stream, request("b"))
        assert await transport.last_entry_id(stream) == second
        assert await transport.delete(stream, first, "0-1") == 1
        assert [e.entry_id for e in await transport.read_stream(stream, AgentRequestEvent)] == [second]
        assert (
            await transport.read_stream(
                stream, AgentRequestEvent, after=await transport.last_entry_id(stream)
            )
            == []
        )

    async def test_an_id_that_is_not_an_entry_id_is_a_configuration_error(self, backend: Backend) -> None:
        """The Redis transport left these to the server: a TransportError, as if Redis had failed."""
        transport = await backend.transport()
        stream = backend.stream("ids")
        kept = await transport.publish(stream, request())
        with pytest.raises(ConfigurationError, match=r"^'abc' is not a stream entry id"):
            await transport.ensure_group(stream, "g", start_id="abc")
        with pytest.raises(ConfigurationError, match=r"^'abc' is not a stream entry id"):
            await transport.delete(stream, kept, "abc")
        with pytest.raises(ConfigurationError, match=r"^'\$' is not a stream entry id"):
            await transport.move(stream, "$", backend.stream("elsewhere"), {b"a": b"b"})
        # not a str (the bytes redis-py gives, None): the same error, not a bare TypeError
        for not_a_str in (kept.encode(), None):
            with pytest.raises(ConfigurationError, match="is not a stream entry id"):
                await transport.delete(stream, not_a_str)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError, match="is not a stream entry id"):
                await transport.read_stream(stream, AgentRequestEvent, after=not_a_str)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError, match="is not a stream entry id"):
                await transport.read_entry(stream, not_a_str, AgentRequestEvent)  # type: ignore[arg-type]
        assert [e.entry_id for e in await transport.read_stream(stream, AgentRequestEvent)] == [kept]
        assert await transport.ensure_group(stream, "g", start_id="$")

    async def test_read_entry_by_id(self, backend: Backend) -> None:
        transport = await backend.transport()
        stream = backend.stream("by-id")
        first = await transport.publish(stream, request("first"))
        second = await transport.publish(stream, request("second"))
        for entry_id, content in ((first, "first"), (second, "second")):
            entry = await transport.read_entry(stream, entry_id, AgentRequestEvent)
            assert entry is not None
            assert (entry.entry_id, entry.event.content) == (entry_id, content)
        assert await transport.delete(stream, first) == 1
        assert await transport.read_entry(stream, first, AgentRequestEvent) is None
        assert await transport.read_entry(backend.stream("missing"), second, AgentRequestEvent) is None
        for bad in ("0-0", "second", "1-2-3"):
            with pytest.raises(ConfigurationError, match="not a stream entry id"):
                await transport.read_entry(stream, bad, AgentRequestEvent)

    async def test_move_writes_an_entry_elsewhere_and_deletes_it_once(self, backend: Backend) -> None:
        transport = await backend.transport()
        source, destination = backend.stream("held"), backend.stream("back")
        kept = await transport.publish(source, request("stays"))
        moving = await transport.publish(source, request("moves"))
        (entry,) = await transport.read_stream(source, AgentRequestEvent, after=kept)
        new_id = await transport.move(source, moving, destination, entry.fields)
        assert new_id is not None
        (moved,) = await transport.read_stream(destination, AgentRequestEvent)
        assert (moved.entry_id, moved.fields, moved.event) == (new_id, entry.fields, entry.event)
        assert [e.entry_id for e in await transport.read_stream(source, AgentRequestEvent)] == [kept]
        # moved already, or never there: nothing is written
        assert await transport.move(source, moving, destination, entry.fields) is None
        assert await transport.move(backend.stream("missing"), moving, destination, entry.fields) is None
        assert len(await transport.read_stream(destination, AgentRequestEvent)) == 1

    async def test_a_move_by_an_id_without_its_sequence_moves_only_that_entry(self, backend: Backend) -> None:
        """``"1700000000000"`` is ``"1700000000000-0"``, as ``delete`` and ``read_stream`` read it.
        On Redis the move checked the entry with ``XRANGE ms ms`` (every entry of that millisecond)
        and deleted ``ms-0``: with ``ms-0`` gone and ``ms-1`` there, it wrote a copy of the fields
        and deleted nothing; in memory it found no entry and wrote nothing."""
        transport = await backend.transport()
        source, destination = backend.stream("held"), backend.stream("back")
        first, second = await transport.publish_many(source, [request("0"), request("1")])
        millis = first.partition("-")[0]
        assert (first, second) == (f"{millis}-0", f"{millis}-1")  # one millisecond (one script on Redis)
        assert await transport.delete(source, millis) == 1  # ms-0
        (entry,) = await transport.read_stream(source, AgentRequestEvent)
        assert await transport.move(source, millis, destination, entry.fields) is None
        assert await transport.read_stream(destination, AgentRequestEvent) == []
        assert [e.entry_id for e in await transport.read_stream(source, AgentRequestEvent)] == [second]

    async def test_concurrent_moves_of_one_entry_write_it_once(self, backend: Backend) -> None:
        transport, other = await backend.transport(), await backend.transport()
        source, destination = backend.stream("held"), backend.stream("back")
        entry_id = await transport.publish(source, request())
        (entry,) = await transport.read_stream(source, AgentRequestEvent)
        outcomes = await asyncio.gather(
            *(t.move(source, entry_id, destination, entry.fields) for t in (transport, other, transport))
        )
        assert sum(outcome is not None for outcome in outcomes) == 1
        assert len(await transport.read_stream(destination, AgentRequestEvent)) == 1

    async def test_move_to_a_key_of_another_type_writes_nothing(self, backend: Backend) -> None:
        transport = await backend.transport()
        source = backend.stream("held")
        entry_id = await transport.publish(source, request())
        (entry,) = await transport.read_stream(source, AgentRequestEvent)
        await transport.coordinator().set_record(CompletedRecord("x", "r", "completed", None, None, 0.0), 60)
        with pytest.raises(TransportError, match="WRONGTYPE"):
            await transport.move(source, entry_id, backend.names.completed_record("x"), entry.fields)
        assert [e.entry_id for e in await transport.read_stream(source, AgentRequestEvent)] == [entry_id]

    async def test_a_move_of_thousands_of_fields_writes_them_all_once(self, backend: Backend) -> None:
        """More fields than the Redis script passes on to one XADD."""
        transport, other = await backend.transport(), await backend.transport()
        source, destination = backend.stream("held"), backend.stream("back")
        fields = {f"f{n}".encode(): b"x" for n in range(4100)}
        entry_id = await transport.publish_fields(source, fields)
        outcomes = await asyncio.gather(
            *(t.move(source, entry_id, destination, fields) for t in (transport, other, transport))
        )
        assert sum(outcome is not None for outcome in outcomes) == 1
        (moved,) = await transport.read_stream(destination, AgentRequestEvent)
        assert dict(moved.fields) == fields
        assert await transport.read_stream(source, AgentRequestEvent) == []
        await transport.coordinator().set_record(CompletedRecord("x", "r", "completed", None, None, 0.0), 60)
        kept = await transport.publish_fields(source, fields)
        with pytest.raises(TransportError, match="WRONGTYPE"):
            await transport.move(source, kept, backend.names.completed_record("x"), fields)
        assert [e.entry_id for e in await transport.read_stream(source, AgentRequestEvent)] == [kept]

    @pytest.mark.parametrize("size", [1, 4100], ids=["few-fields", "thousands-of-fields"])
    async def test_a_publish_with_expire_to_a_key_of_another_type_changes_nothing(
        self, backend: Backend, size: int
    ) -> None:
        """XADD and PEXPIRE used to go in a MULTI, whose PEXPIRE ran after the XADD failed."""
        transport = await backend.transport()
        coordinator = transport.coordinator()
        lease = await coordinator.acquire("s-wrongtype", 1000.0)  # a string key, ttl 1000 s
        assert lease is not None
        key = backend.names.session_lease("s-wrongtype")
        fields = {f"f{n}".encode(): b"x" for n in range(size)}
        with pytest.raises(TransportError, match="WRONGTYPE"):
            await transport.publish_fields(key, fields, expire=backend.min_idle)
        await backend.advance(backend.min_idle * 2)
        assert await coordinator.holder("s-wrongtype") is not None  # its ttl untouched
        stream = backend.stream("expiring")
        await transport.publish_fields(stream, fields, expire=backend.min_idle)
        assert dict((await transport.read_stream(stream, AgentRequestEvent))[0].fields) == fields
        await backend.advance(backend.min_idle * 2)
        assert await transport.read_stream(stream, AgentRequestEvent) == []

    @pytest.mark.parametrize(
        ("setting", "value"),
        [
            ("maxlen", -1),
            ("maxlen", 2.5),
            ("maxlen", True),
            ("expire", 0),
            ("expire", -1.0),
            ("expire", math.nan),
        ],
    )
    async def test_a_publish_with_a_bad_maxlen_or_expire_is_refused_and_writes_nothing(
        self, backend: Backend, setting: str, value: object
    ) -> None:
        """A negative maxlen used to empty the in-memory stream (the new entry too) and be a
        Redis error; a NaN expire was a bare ValueError on Redis and no expiry in memory."""
        transport = await backend.transport()
        stream = backend.stream("bounded")
        kept = await transport.publish(stream, request("kept"))
        message = rf"^{setting} must be .*, got {value!r}$"
        with pytest.raises(ConfigurationError, match=message):
            await transport.publish(stream, request("refused"), **{setting: value})
        if setting == "maxlen":
            with pytest.raises(ConfigurationError, match=message):
                await transport.publish_many(stream, [request("refused")], maxlen=value)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError, match=message):
                await transport.publish_envelopes(
                    stream,
                    [transport.codec.encode_envelope(request("refused"))],
                    maxlen=value,  # type: ignore[arg-type]
                )
        assert [e.entry_id for e in await transport.read_stream(stream, AgentRequestEvent)] == [kept]

    @pytest.mark.parametrize(
        ("events", "message"),
        [
            (request("alone"), "events must be a list of events, got an AgentRequestEvent"),
            ([request("ok"), None], "events[1] must be an event (a WireModel), got None"),
            (["text"], "events[0] must be an event (a WireModel), got 'text'"),
        ],
    )
    async def test_events_that_are_no_list_of_events_are_refused_and_nothing_is_written(
        self, backend: Backend, events: Any, message: str
    ) -> None:
        """One event given in place of a list was iterated as its fields, and failed with a bare
        AttributeError (``'tuple' object has no attribute 'id'``), as did ``None`` in the list;
        ``publish`` of ``None`` too. A ConfigurationError names them now, before anything is
        written."""
        transport = await backend.transport()
        stream = backend.stream("many")
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            await transport.publish_many(stream, events)
        with pytest.raises(
            ConfigurationError, match=re.escape("event must be an event (a WireModel), got None")
        ):
            await transport.publish(stream, None)  # type: ignore[arg-type]
        assert await transport.read_stream(stream, AgentRequestEvent) == []

    async def test_publish_many_appends_in_order(self, backend: Backend) -> None:
        transport = await backend.transport()
        stream = backend.stream("many")
        events = [request(f"m{n}") for n in range(20)]
        assert await transport.publish_many(stream, []) == []
        ids = await transport.publish_many(stream, events, maxlen=1000)
        entries = await transport.read_stream(stream, AgentRequestEvent, count=100)
        assert [e.entry_id for e in entries] == ids
        assert [e.event for e in entries] == events

    async def test_publish_envelopes_appends_encoded_events_in_order(self, backend: Backend) -> None:
        transport = await backend.transport()
        stream = backend.stream("encoded")
        events = [request(f"e{n}") for n in range(20)]
        assert await transport.publish_envelopes(stream, []) == []
        ids = await transport.publish_envelopes(
            stream, [transport.codec.encode_envelope(e) for e in events], maxlen=1000
        )
        entries = await transport.read_stream(stream, AgentRequestEvent, count=100)
        assert [e.entry_id for e in entries] == ids
        assert [e.event for e in entries] == events
        # the same entries publish_many writes: {"__data__": envelope}
        assert all(set(e.fields) == {b"__data__"} for e in entries)

    @pytest.mark.parametrize(
        ("envelopes", "message"),
        [
            ([5], "envelopes[0] must be bytes (an encoded event) or str, got int"),
            ([b"ok", None], "envelopes[1] must be bytes (an encoded event) or str, got NoneType"),
            ([memoryview(b"x")], "envelopes[0] must be bytes (an encoded event) or str, got memoryview"),
            (b"one envelope", "envelopes must be a list of encoded events, got bytes"),
            ("one envelope", "envelopes must be a list of encoded events, got str"),
        ],
    )
    async def test_envelopes_that_are_no_encoded_events_are_refused_and_nothing_is_written(
        self, backend: Backend, envelopes: Any, message: str
    ) -> None:
        """Redis wrote an int or a memoryview as its text, each byte of one envelope given alone as
        an entry of its own, and failed on None with a bare TypeError; memory wrote the envelopes
        before a bad one, then refused it. Both refuse them now, before writing anything."""
        transport = await backend.transport()
        stream = backend.stream("encoded")
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            await transport.publish_envelopes(stream, envelopes)
        assert await transport.read_stream(stream, AgentRequestEvent) == []


class CoordinatorSignalsContract:
    async def test_a_lease_says_who_holds_it(self, backend: Backend) -> None:
        coordinator = (await backend.transport()).coordinator()
        assert await coordinator.holder("s") is None
        lease = await coordinator.acquire("s", ttl=60, holder="request-7")
        assert lease is not None
        assert lease.holder == "request-7"
        assert await coordinator.holder("s") == "request-7"
        assert await coordinator.renew(lease)
        assert await coordinator.release(lease)
        assert await coordinator.holder("s") is None

    async def test_cancellation_requests(self, backend: Backend) -> None:
        coordinator = (await backend.transport()).coordinator()
        assert await coordinator.cancelled(["a", "b"]) == set()
        await coordinator.request_cancel("b", ttl=backend.min_idle)
        assert await coordinator.cancelled(["a", "b", "c"]) == {"b"}
        assert await coordinator.cancelled([]) == set()
        assert await coordinator.cancelled({"a", "b"}) == {"b"}  # type: ignore[arg-type]  # any collection
        await backend.advance(backend.min_idle * 1.5)
        assert await coordinator.cancelled(["b"]) == set()

    async def test_a_refused_cancellation_ttl_leaves_no_request(self, backend: Backend) -> None:
        coordinator = (await backend.transport()).coordinator()
        with pytest.raises(ConfigurationError, match="ttl must be a finite number of seconds > 0, got 0"):
            await coordinator.request_cancel("r", ttl=0)
        assert await coordinator.cancelled(["r"]) == set()

    @pytest.mark.parametrize("request_id", ["evt-1 ", " ", "évt-1", "e" * 257])
    async def test_a_cancellation_of_an_id_no_request_can_have_is_refused(
        self, backend: Backend, request_id: str
    ) -> None:
        """A space (one copied with the id), a letter outside ASCII, more than 256 characters: no
        request has such an id, so the flag would never stop anything, yet the cancellation
        looked requested."""
        coordinator = (await backend.transport()).coordinator()
        with pytest.raises(ConfigurationError) as refused:
            await coordinator.request_cancel(request_id)
        assert str(refused.value).startswith("request_id "), refused.value
        assert "no request's id" in str(refused.value)
        assert "1 to 256 printable ASCII characters" in str(refused.value)
        assert await coordinator.cancelled([request_id]) == set()
        await coordinator.request_cancel("e" * 256)  # the longest id there is
        assert await coordinator.cancelled(["e" * 256]) == {"e" * 256}

    # -- claim: record, cancellation and lease in one step ----------------------------------------

    async def test_claim_takes_the_lease_for_the_last_request(self, backend: Backend) -> None:
        coordinator = (await backend.transport()).coordinator()
        claim = await coordinator.claim("s", ["a", "b"], ttl=60)
        assert claim.status is ClaimStatus.LEASED
        assert claim.lease is not None
        assert claim.lease.holder == "b"
        assert await coordinator.holder("s") == "b"

        busy = await coordinator.claim("s", ["c"], ttl=60)
        assert (busy.status, busy.lease, busy.request_ids) == (ClaimStatus.BUSY, None, frozenset())
        assert await coordinator.release(claim.lease)
        assert (await coordinator.claim("s", ["c"], ttl=60)).status is ClaimStatus.LEASED

    async def test_a_claimed_lease_expires_like_any_other(self, backend: Backend) -> None:
        coordinator = (await backend.transport()).coordinator()
        claim = await coordinator.claim("s", ["a"], ttl=backend.min_idle)
        await backend.advance(backend.min_idle * 1.5)
        assert claim.lease is not None
        assert not await coordinator.renew(claim.lease)
        assert (await coordinator.claim("s", ["b"], ttl=60)).status is ClaimStatus.LEASED

    async def test_claim_reports_answered_requests_and_takes_nothing(self, backend: Backend) -> None:
        coordinator = (await backend.transport()).coordinator()
        await coordinator.set_record(CompletedRecord("b", "r", "completed", None, None, 0.0), ttl=60)
        await coordinator.request_cancel("c")  # answered wins: the request needs no answer at all

        claim = await coordinator.claim("s", ["a", "b", "c"], ttl=60)

        assert (claim.status, claim.lease, claim.request_ids) == (
            ClaimStatus.ANSWERED,
            None,
            frozenset({"b"}),
        )
        assert await coordinator.holder("s") is None

    async def test_claim_of_an_answered_request_leaves_another_runs_lease_alone(
        self, backend: Backend
    ) -> None:
        coordinator = (await backend.transport()).coordinator()
        running = await coordinator.claim("s", ["a"], ttl=60)
        await coordinator.set_record(CompletedRecord("b", "r", "completed", None, None, 0.0), ttl=60)

        claim = await coordinator.claim("s", ["b"], ttl=60)

        assert (claim.status, claim.request_ids) == (ClaimStatus.ANSWERED, frozenset({"b"}))
        assert running.lease is not None
        assert await coordinator.holder("s") == "a"
        assert await coordinator.renew(running.lease)

    async def test_claim_reports_cancelled_requests_and_takes_nothing(self, backend: Backend) -> None:
        coordinator = (await backend.transport()).coordinator()
        await coordinator.request_cancel("a")
        await coordinator.request_cancel("c")

        claim = await coordinator.claim("s", ["a", "b", "c"], ttl=60)

        assert (claim.status, claim.request_ids) == (ClaimStatus.CANCELLED, frozenset({"a", "c"}))
        assert await coordinator.holder("s") is None

    async def test_claim_needs_a_request(self, backend: Backend) -> None:
        coordinator = (await backend.transport()).coordinator()
        with pytest.raises(ConfigurationError, match="at least one request id"):
            await coordinator.claim("s", [], ttl=60)
        with pytest.raises(ConfigurationError, match="ttl"):
            await coordinator.claim("s", ["a"], ttl=0)

    @pytest.mark.parametrize(
        ("request_ids", "shown"), [("req-1", "'req-1'"), (b"req-1", "a bytes"), (7, "7"), ([7], "7")]
    )
    async def test_request_ids_that_are_no_list_of_ids_are_refused(
        self, backend: Backend, request_ids: Any, shown: str
    ) -> None:
        """One request id given in place of a list, ``claim("s", "req-1", ttl)``, was read as its
        characters: the claim checked the records of "r", "e", … and took the lease with "1" as
        its holder; ``cancelled("req-1")`` asked about each character. An int failed with a bare
        TypeError, or was taken as an id. Both backends refuse them now, naming them."""
        coordinator = (await backend.transport()).coordinator()
        refused = "request_ids must be a list of request ids (str), got "
        with pytest.raises(ConfigurationError, match=re.escape(refused)) as claiming:
            await coordinator.claim("s", request_ids, ttl=60)
        assert shown in str(claiming.value)
        assert await coordinator.holder("s") is None
        with pytest.raises(ConfigurationError, match=re.escape(refused)):
            await coordinator.cancelled(request_ids)

    async def test_claim_refuses_a_bad_ttl_whatever_it_finds(self, backend: Backend) -> None:
        """In memory a claim of an answered or cancelled request returned before the ttl was
        checked; Redis refused it."""
        coordinator = (await backend.transport()).coordinator()
        await coordinator.set_record(CompletedRecord("answered", "r", "completed", None, None, 0.0), 60)
        await coordinator.request_cancel("cancelled")
        for request_id in ("answered", "cancelled", "fresh"):
            with pytest.raises(ConfigurationError, match=r"^ttl must be .*, got -1$"):
                await coordinator.claim("s-ttl", [request_id], ttl=-1)
        assert await coordinator.holder("s-ttl") is None

    async def test_a_closed_coordinator_or_one_of_a_closed_transport_fails_every_call(
        self, backend: Backend
    ) -> None:
        """After ``transport.aclose()``, or its own ``aclose()``, every call of a coordinator is a
        TransportError saying it is closed. On Redis only ``acquire`` and ``claim`` were (they go
        through the transport's closed pipeline) while the others went on, through a connection the
        closed client made again; in memory every call went on."""
        record = CompletedRecord("r", "a", "completed", None, None, 0.0)

        def calls(coordinator: Coordinator, lease: Any) -> list[Callable[[], Awaitable[object]]]:
            return [
                lambda: coordinator.acquire("t", ttl=60),
                lambda: coordinator.claim("t", ["r"], ttl=60),
                lambda: coordinator.holder("s"),
                lambda: coordinator.renew(lease),
                lambda: coordinator.release(lease),
                lambda: coordinator.request_cancel("r"),
                lambda: coordinator.cancelled(["r"]),
                lambda: coordinator.get_record("r"),
                lambda: coordinator.set_record(record, ttl=60),
                lambda: coordinator.delete_record("r"),
            ]

        closing = await backend.transport()
        of_closed, closed = closing.coordinator(), (await backend.transport()).coordinator()
        for coordinator, session_id in ((of_closed, "s1"), (closed, "s2")):
            lease = await coordinator.acquire(session_id, ttl=60)
            assert lease is not None
            await closing.aclose() if coordinator is of_closed else await coordinator.aclose()
            for call in calls(coordinator, lease):
                with pytest.raises(TransportError, match="closed"):
                    await call()
        open_one = (await backend.transport()).coordinator()
        assert await open_one.holder("s1") is not None  # nothing released by the closed ones
        assert await open_one.holder("s2") is not None
