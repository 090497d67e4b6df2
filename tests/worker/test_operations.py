"""Dead-letter operations, on dead letters made the real way: by a worker, on both backends."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dynamic_agents.events import AgentRequestEvent, EventCodec, ResponseStatus, StreamNames
from dynamic_agents.exceptions import ConfigurationError, DeliveryError, RequeueError, TransportError
from dynamic_agents.operations import (
    MAX_DELIVERIES,
    UNDECODABLE,
    DeadLetters,
    DeadLetterSummary,
    reason_kind,
)
from dynamic_agents.transports import (
    CompletedRecord,
    InMemoryServer,
    InMemoryTransport,
    Subscription,
    Transport,
)
from tests.worker.conftest import Backend, replies, request_event, worker

GROUP = "dynamic-agents"
JUNK = (b"not json", b'{"source": 42}')


async def dead_undecodable(backend: Backend, transport: Transport, *junk: bytes) -> str:
    """Junk entries on the request stream, dead-lettered by a worker run; returns its consumer."""
    await transport.ensure_group(backend.names.requests, GROUP)
    for data in junk:
        await transport.publish_fields(backend.names.requests, {"__data__": data})
    w = worker(transport)
    await w.run_until_idle()
    assert w.stats.undecodable == len(junk)
    return w.settings.consumer


async def dead_past_max_deliveries(
    backend: Backend, transport: Transport, content: str = "cursed"
) -> tuple[AgentRequestEvent, str, str]:
    """A request whose first consumer died holding it: the next worker (``max_deliveries=1``) sees
    its second delivery, dead-letters it and sends an error reply. Returns the request, its entry id
    and the dead-lettering worker's consumer name."""
    request = request_event(backend.names, content)
    await transport.ensure_group(backend.names.requests, GROUP)
    entry_id = await transport.publish(backend.names.requests, request)
    crashed = Subscription(backend.names.requests, GROUP, "crashed", AgentRequestEvent, block=0)
    assert len(await transport.read(crashed, 1)) == 1
    w = worker(transport, max_deliveries=1)
    await w.run_until_idle()
    assert w.stats.dead_lettered == 1
    return request, entry_id, w.settings.consumer


async def dead_by_hand(transport: Transport, stream: str, reason: str) -> None:
    """A request on another stream, dead-lettered by its consumer with its own reason."""
    await transport.ensure_group(stream, "jobs")
    await transport.publish(stream, request_event(transport.names, "job"))
    subscription = Subscription(stream, "jobs", "job-runner", AgentRequestEvent, block=0)
    (delivery,) = await transport.read(subscription, 1)
    assert await transport.dead_letter(delivery, reason)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("undecodable: invalid AgentRequestEvent: source: …", UNDECODABLE),
        ("delivered 6 times (max_deliveries=5)", MAX_DELIVERIES),
        ("poison: tool exploded", "poison"),
        ("manual", "manual"),
        ("  ", "unknown"),
        (": nothing before", "unknown"),
    ],
)
def test_reasons_are_grouped_by_kind(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


async def test_list_shows_reasons_origins_and_counts(backend: Backend) -> None:
    transport = await backend.transport()
    before = datetime.now(UTC)
    junk_consumer = await dead_undecodable(backend, transport, *JUNK)
    request, origin_id, consumer = await dead_past_max_deliveries(backend, transport)
    dead = DeadLetters(transport)

    first, second, cursed = await dead.list()
    for letter, data in zip((first, second), JUNK, strict=True):
        assert letter.kind == UNDECODABLE
        assert letter.reason.startswith("undecodable: ")
        assert (letter.origin_stream, letter.group, letter.consumer) == (
            backend.names.requests,
            GROUP,
            junk_consumer,
        )
        assert letter.delivery_count == 1
        assert letter.request is None
        assert letter.decode_error
        assert letter.fields == {b"__data__": data}
    assert "not valid JSON" in (first.decode_error or "")
    assert "source" in (second.decode_error or "")

    assert cursed.kind == MAX_DELIVERIES
    assert cursed.reason == "delivered 2 times (max_deliveries=1)"
    assert (cursed.origin_stream, cursed.origin_entry_id, cursed.group, cursed.consumer) == (
        backend.names.requests,
        origin_id,
        GROUP,
        consumer,
    )
    assert cursed.delivery_count == 2
    assert cursed.request == request
    assert cursed.decode_error is None
    assert not any(key.startswith(b"dead_letter.") for key in cursed.fields)
    assert cursed.dead_at.tzinfo is UTC
    assert before - timedelta(seconds=1) <= first.dead_at <= cursed.dead_at <= datetime.now(UTC)

    # paging, and one by id
    assert await dead.list(limit=2) == [first, second]
    assert await dead.list(after=second.id) == [cursed]
    assert await dead.list(after=cursed.id) == []
    assert await dead.get(cursed.id) == cursed
    assert await dead.get(first.id) == first


async def test_summary_counts_by_reason_and_origin(backend: Backend) -> None:
    transport = await backend.transport()
    dead = DeadLetters(transport)
    empty = await dead.summary()
    assert empty == DeadLetterSummary(total=0, by_reason={}, by_stream={}, oldest=None, newest=None)

    await dead_undecodable(backend, transport, *JUNK)
    await dead_past_max_deliveries(backend, transport)
    jobs = f"{backend.names.prefix}:jobs"
    await dead_by_hand(transport, jobs, "poison: tool exploded")

    summary = await dead.summary()
    letters = await dead.list()
    assert summary.total == len(letters) == 4
    assert summary.by_reason == {UNDECODABLE: 2, MAX_DELIVERIES: 1, "poison": 1}
    assert summary.by_stream == {backend.names.requests: 3, jobs: 1}
    assert summary.oldest == min(letter.dead_at for letter in letters) == letters[0].dead_at
    assert summary.newest == max(letter.dead_at for letter in letters) == letters[-1].dead_at


async def test_a_requeued_request_is_answered_exactly_once(backend: Backend) -> None:
    transport = await backend.transport()
    request, origin_id, _ = await dead_past_max_deliveries(backend, transport)
    # Dead-lettering answered it with an error reply, and a completed-request record naming it.
    (error_reply,) = await replies(transport, backend.names)
    assert (error_reply.request_id, error_reply.status) == (request.id, ResponseStatus.ERROR)
    record = await transport.coordinator().get_record(request.id)
    assert record is not None
    assert record.response_id == error_reply.id

    # The fault (a worker dying on it) is gone: requeue it.
    dead = DeadLetters(transport)
    (letter,) = await dead.list()
    new_id = await dead.requeue(letter.id)
    assert new_id != origin_id
    assert await dead.list() == []
    (requeued,) = await transport.read_stream(backend.names.requests, AgentRequestEvent, after=origin_id)
    assert (requeued.entry_id, requeued.event, requeued.fields) == (new_id, request, letter.fields)

    # A fresh delivery budget: even a worker with max_deliveries=1 runs it now.
    w = worker(transport, max_deliveries=1)
    await w.run_until_idle()
    assert (w.stats.completed, w.stats.dead_lettered) == (1, 0)
    first, second = await replies(transport, backend.names)
    assert first == error_reply
    assert (second.request_id, second.status, second.content) == (
        request.id,
        ResponseStatus.COMPLETED,
        "echo: cursed",
    )
    record = await transport.coordinator().get_record(request.id)
    assert record is not None
    assert (record.response_id, record.status) == (second.id, str(ResponseStatus.COMPLETED))
    assert await transport.pending(backend.names.requests, GROUP) == []
    assert await dead.list() == []

    # Once: it cannot be requeued twice, and a leftover copy (a requeue that crashed before deleting
    # its dead letter, then requeued again) is acked as a duplicate without a third reply.
    with pytest.raises(DeliveryError):
        await dead.requeue(letter.id)
    await transport.publish_fields(backend.names.requests, letter.fields)
    again = worker(transport)
    await again.run_until_idle()
    assert (again.stats.duplicates, again.stats.completed) == (1, 0)
    assert len(await replies(transport, backend.names)) == 2


async def test_a_platform_retry_of_a_dead_lettered_request_is_not_run_until_requeued(
    backend: Backend,
) -> None:
    """The retry (the same request, a new entry) finds the dead letter's record: acked as answered,
    neither run (it could crash workers again) nor answered a second time. Requeueing runs it."""
    transport = await backend.transport()
    request, _, _ = await dead_past_max_deliveries(backend, transport)
    await transport.publish(backend.names.requests, request)
    w = worker(transport)
    await w.run_until_idle()
    assert (w.stats.duplicates, w.stats.completed, w.stats.dead_lettered) == (1, 0, 0)
    assert [reply.status for reply in await replies(transport, backend.names)] == [ResponseStatus.ERROR]
    assert await transport.pending(backend.names.requests, GROUP) == []

    dead = DeadLetters(transport)
    (letter,) = await dead.list()
    await dead.requeue(letter.id)
    await w.run_until_idle()
    assert (w.stats.duplicates, w.stats.completed) == (1, 1)
    assert [reply.status for reply in await replies(transport, backend.names)] == [
        ResponseStatus.ERROR,
        ResponseStatus.COMPLETED,
    ]


async def test_purging_a_dead_letter_leaves_the_request_answered(backend: Backend) -> None:
    transport = await backend.transport()
    request, _, _ = await dead_past_max_deliveries(backend, transport)
    dead = DeadLetters(transport)
    (letter,) = await dead.list()
    assert await dead.purge(letter.id) == 1
    record = await transport.coordinator().get_record(request.id)
    assert record is not None
    assert record.response_id == letter.response_id
    await transport.publish(backend.names.requests, request)
    w = worker(transport)
    await w.run_until_idle()
    assert (w.stats.duplicates, w.stats.completed) == (1, 0)


async def test_requeue_deletes_the_record_of_a_request_it_cannot_decode() -> None:
    """The worker decoded the request, the operator's DeadLetters does not (a stricter codec: a
    rolling upgrade): the letter still names the record, which goes, so the requeued request runs
    instead of being acked as answered."""
    server = InMemoryServer()
    names = StreamNames("ops")
    transport = InMemoryTransport(server, names=names)

    async def make() -> Transport:
        return transport

    async def delete(key: str) -> None:
        server.delete(key)

    request, _, _ = await dead_past_max_deliveries(Backend(names, make, delete), transport)
    strict = InMemoryTransport(server, names=names, codec=EventCodec(max_content_length=3))
    dead = DeadLetters(strict)
    (letter,) = await dead.list()
    assert letter.request is None
    assert letter.decode_error is not None
    assert letter.request_id == request.id
    assert letter.response_id is not None
    await dead.requeue(letter.id)
    assert await transport.coordinator().get_record(request.id) is None
    w = worker(transport)
    await w.run_until_idle()
    assert (w.stats.completed, w.stats.duplicates) == (1, 0)


async def test_requeue_keeps_a_record_a_later_answer_wrote(backend: Backend) -> None:
    """The dead letter's record expired and a retry was answered meanwhile: requeueing must not
    delete that answer's record, so the requeued request is acked, not answered a third time."""
    transport = await backend.transport()
    request, _, _ = await dead_past_max_deliveries(backend, transport)
    coordinator = transport.coordinator()
    dead_record = await coordinator.get_record(request.id)
    assert dead_record is not None
    assert await coordinator.delete_record(request.id)  # as if expired
    await transport.publish(backend.names.requests, request)
    w = worker(transport)
    await w.run_until_idle()
    answered = await coordinator.get_record(request.id)
    assert answered is not None
    assert answered.response_id != dead_record.response_id

    dead = DeadLetters(transport)
    (letter,) = await dead.list()
    assert letter.response_id == dead_record.response_id
    await dead.requeue(letter.id)
    await w.run_until_idle()
    assert (w.stats.completed, w.stats.duplicates) == (1, 1)
    assert await coordinator.get_record(request.id) == answered
    assert len(await replies(transport, backend.names)) == 2


@pytest.mark.parametrize("platform_retry", [False, True], ids=["alone", "with-a-platform-retry"])
async def test_a_requeue_cut_off_between_its_two_steps_is_retried_with_nothing_lost_or_run_twice(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, platform_retry: bool
) -> None:
    """Redis lost after the record's deletion, before the move: the letter stays, still naming the
    record, and the requeue tried again puts it back once. A platform retry answered in between
    (what the requeue was for) wrote a record of its own, which the retried requeue keeps: the
    requeued request is acked as answered, not run a second time."""
    transport = await backend.transport()
    request, _, _ = await dead_past_max_deliveries(backend, transport)
    dead = DeadLetters(transport)
    (letter,) = await dead.list()

    async def lost(*args: Any, **kwargs: Any) -> str | None:
        raise TransportError("move: Redis went away")

    with monkeypatch.context() as patched:
        patched.setattr(transport, "move", lost)
        with pytest.raises(TransportError):
            await dead.requeue(letter.id)
    assert await transport.coordinator().get_record(request.id) is None
    assert await dead.list() == [letter]
    w = worker(transport)
    if platform_retry:
        await transport.publish(backend.names.requests, request)
        await w.run_until_idle()
    await dead.requeue(letter.id)
    await w.run_until_idle()
    assert await dead.list() == []
    assert (w.stats.completed, w.stats.duplicates) == (1, int(platform_retry))
    assert [reply.status for reply in await replies(transport, backend.names)] == [
        ResponseStatus.ERROR,
        ResponseStatus.COMPLETED,
    ]
    assert await transport.pending(backend.names.requests, GROUP) == []


async def test_requeueing_a_dead_letter_of_an_older_version_deletes_no_record(backend: Backend) -> None:
    """A dead letter without ``dead_letter.response_id`` (an undecodable one, one written by hand or
    before records were written) deletes nothing: a record there is an answer."""
    transport = await backend.transport()
    request, _, _ = await dead_past_max_deliveries(backend, transport)
    dead = DeadLetters(transport)
    (letter,) = await dead.list()
    record = await transport.coordinator().get_record(request.id)
    old_style = {
        key: value
        for key, value in (await transport.read_stream(dead.stream, AgentRequestEvent))[0].fields.items()
        if key != b"dead_letter.response_id"
    }
    await dead.purge(letter.id)
    await transport.publish_fields(dead.stream, old_style)
    (old,) = await dead.list()
    assert old.response_id is None
    await dead.requeue(old.id)
    assert await transport.coordinator().get_record(request.id) == record
    w = worker(transport)
    await w.run_until_idle()
    assert (w.stats.duplicates, w.stats.completed) == (1, 0)


async def test_concurrent_requeues_of_one_dead_letter_publish_it_once(backend: Backend) -> None:
    transport = await backend.transport()
    await dead_past_max_deliveries(backend, transport)
    dead = DeadLetters(transport)
    (letter,) = await dead.list()
    last = await transport.last_entry_id(backend.names.requests)
    # a double click on one object, and two operators (other objects, other connections: as two
    # processes, or two API requests, would)
    others = [DeadLetters(await backend.transport()) for _ in range(2)]
    for other in others:  # connected, and all see the letter
        assert [each.id for each in await other.list()] == [letter.id]
    calls = [dead.requeue(letter.id), dead.requeue(letter.id), *(o.requeue(letter.id) for o in others)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["DeliveryError"] * 3 + ["str"]
    assert len(await transport.read_stream(backend.names.requests, AgentRequestEvent, after=last)) == 1
    assert await dead.list() == []


async def test_requeue_all_skips_what_another_requeue_took_first(backend: Backend) -> None:
    transport = await backend.transport()
    await dead_undecodable(backend, transport, *JUNK)
    dead, other = DeadLetters(transport), DeadLetters(await backend.transport())
    assert len(await other.list()) == len(JUNK)
    last = await transport.last_entry_id(backend.names.requests)
    counts = await asyncio.gather(dead.requeue_all(), other.requeue_all())
    assert sum(counts) == len(JUNK)
    assert len(await transport.read_stream(backend.names.requests, AgentRequestEvent, after=last)) == len(
        JUNK
    )


async def test_requeue_all_by_kind_and_everything(backend: Backend) -> None:
    transport = await backend.transport()
    await dead_undecodable(backend, transport, *JUNK)
    request, _, _ = await dead_past_max_deliveries(backend, transport)
    dead = DeadLetters(transport)

    assert await dead.requeue_all(reason="no such kind") == 0
    assert await dead.requeue_all(reason=UNDECODABLE) == 2
    (left,) = await dead.list()
    assert left.kind == MAX_DELIVERIES
    # Still undecodable: the next worker dead-letters them again, as new dead letters.
    w = worker(transport)
    await w.run_until_idle()
    assert w.stats.undecodable == 2
    assert [letter.kind for letter in await dead.list()] == [MAX_DELIVERIES, UNDECODABLE, UNDECODABLE]

    assert await dead.requeue_all() == 3
    assert await dead.list() == []
    w = worker(transport, max_deliveries=1)
    await w.run_until_idle()
    assert (w.stats.completed, w.stats.undecodable) == (1, 2)
    assert [(r.request_id, r.status) for r in await replies(transport, backend.names)] == [
        (request.id, ResponseStatus.ERROR),
        (request.id, ResponseStatus.COMPLETED),
    ]
    assert (await dead.summary()).by_reason == {UNDECODABLE: 2}


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("undecodable: Expecting value", "undecodable"),
        ("delivered 5 times (max_deliveries=5)", "max deliveries"),
        (" poison", "poison"),
        ("", "unknown"),
    ],
)
async def test_a_reason_that_is_not_a_kind_is_refused_not_matched_against_nothing(
    backend: Backend, reason: str, kind: str
) -> None:
    # A whole reason (copied from a listing) matches no kind: the call answered 0, as if there were
    # no such dead letters, while they stay.
    transport = await backend.transport()
    await dead_undecodable(backend, transport, b"junk")
    await dead_past_max_deliveries(backend, transport)
    dead = DeadLetters(transport)
    for operation in (dead.requeue_all, dead.purge_all):
        with pytest.raises(ConfigurationError) as caught:
            await operation(reason=reason)
        assert str(caught.value).startswith(f"reason={reason!r} is not a reason kind")
        assert f"({kind!r} for this one)" in str(caught.value)
    assert len(await dead.list()) == 2


async def test_purge_one_older_ones_and_all(backend: Backend) -> None:
    transport = await backend.transport()
    for data in (b"one", b"two", b"three", b"four"):
        await dead_undecodable(backend, transport, data)
        await asyncio.sleep(0.01)  # distinct dead_at times
    await dead_by_hand(transport, f"{backend.names.prefix}:jobs", "poison: tool exploded")
    dead = DeadLetters(transport)
    one, _two, three, four, poison = await dead.list()

    assert await dead.purge(one.id) == 1
    with pytest.raises(DeliveryError):
        await dead.get(one.id)
    with pytest.raises(DeliveryError):
        await dead.purge(one.id)

    assert await dead.purge(before=datetime.now(UTC) - timedelta(days=1)) == 0
    assert await dead.purge(before=three.dead_at) == 1  # strictly older: two
    assert await dead.list() == [three, four, poison]

    assert await dead.purge_all(reason="poison") == 1
    assert await dead.list() == [three, four]
    assert await dead.purge_all() == 2
    assert await dead.list() == []
    assert await dead.purge_all() == 0
    assert (await dead.summary()).total == 0


async def test_purge_needs_exactly_one_selector(backend: Backend) -> None:
    dead = DeadLetters(await backend.transport())
    with pytest.raises(ConfigurationError, match="purge_all"):
        await dead.purge()
    with pytest.raises(ConfigurationError):
        await dead.purge("1-0", before=datetime.now(UTC))
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        await dead.purge(before=datetime(2030, 1, 1))  # naive on purpose


@pytest.mark.parametrize(
    "before", ["2030-01-01", 1700000000, datetime(2030, 1, 1).date(), datetime(2030, 1, 1)]
)
async def test_purge_before_takes_only_a_timezone_aware_datetime(backend: Backend, before: object) -> None:
    """A str, a timestamp or a date used to raise AttributeError (``.tzinfo``); a naive datetime is
    not taken as UTC: each is a ConfigurationError naming ``before``, the value and what is valid."""
    dead = DeadLetters(await backend.transport())
    with pytest.raises(ConfigurationError) as caught:
        await dead.purge(before=before)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("before must be a timezone-aware datetime"), message
    assert "naive" in message, message
    assert message.endswith(f"got {before!r}"), message


@pytest.mark.parametrize("entry_id", ["1-0", "0-0", "nope", "1-2-3", f"{2**64}-0", ""])
async def test_unknown_ids_are_lookup_errors(backend: Backend, entry_id: str) -> None:
    transport = await backend.transport()
    await dead_undecodable(backend, transport, b"junk")
    dead = DeadLetters(transport)
    for operation in (dead.get, dead.requeue, dead.purge):
        with pytest.raises(DeliveryError) as caught:
            await operation(entry_id)
        assert isinstance(caught.value, LookupError)
    assert len(await dead.list()) == 1


async def test_bad_list_arguments(backend: Backend) -> None:
    dead = DeadLetters(await backend.transport())
    assert await dead.list() == []  # no stream yet
    with pytest.raises(ConfigurationError):
        await dead.list(limit=0)
    with pytest.raises(ConfigurationError):
        await dead.list(after="yesterday")


CANARY = "sk-CANARY123456789abcdef"


@pytest.mark.parametrize("limit", [True, "5", 2.5, None])
async def test_a_list_limit_that_is_no_whole_number_is_refused(backend: Backend, limit: Any) -> None:
    # "5" and None were a bare TypeError ("'<' not supported"), True listed one letter
    dead = DeadLetters(await backend.transport())
    with pytest.raises(ConfigurationError, match=r"^limit must be a whole number > 0, got "):
        await dead.list(limit=limit)


async def test_a_value_that_is_no_entry_id_is_refused_with_it_masked(backend: Backend) -> None:
    # an operator pasting the wrong thing (a REST path, a query) saw it quoted back whole
    dead = DeadLetters(await backend.transport())
    with pytest.raises(ConfigurationError) as refused:
        await dead.list(after=CANARY)
    assert "CANARY" not in str(refused.value)
    for operation in (dead.get, dead.requeue, dead.purge):
        with pytest.raises(DeliveryError) as caught:
            await operation(CANARY)
        assert "CANARY" not in str(caught.value)


@pytest.mark.parametrize("value", [5, 1.5, b"1700000000000-0", ["1700000000000-0"]])
async def test_an_id_cursor_or_kind_that_is_no_str_is_refused_as_a_malformed_one(
    backend: Backend, value: Any
) -> None:
    # each was a bare TypeError ("expected string or bytes-like object", "cannot use a string
    # pattern on a bytes-like object": an id as raw redis-py gives it) or AttributeError (.strip)
    transport = await backend.transport()
    await dead_undecodable(backend, transport, b"junk")
    dead = DeadLetters(transport)
    with pytest.raises(ConfigurationError, match=r"^after=.* is not a stream entry id \(like '17"):
        await dead.list(after=value)
    for operation in (dead.get, dead.requeue, dead.purge):
        with pytest.raises(DeliveryError, match=r"^no dead letter .*: not a stream entry id \(like '17"):
            await operation(value)
    for bulk in (dead.requeue_all, dead.purge_all):
        with pytest.raises(ConfigurationError, match=r"^reason=.* is not a reason kind"):
            await bulk(reason=value)
    assert len(await dead.list()) == 1


async def test_no_cursor_or_id_at_all_is_refused_as_a_malformed_one(backend: Backend) -> None:
    """``after=None`` (a first page written as "no last id yet") and a ``None`` id."""
    dead = DeadLetters(await backend.transport())
    with pytest.raises(ConfigurationError, match=r"^after=None is not a stream entry id"):
        await dead.list(after=None)  # type: ignore[arg-type]
    for operation in (dead.get, dead.requeue):
        with pytest.raises(DeliveryError, match=r"^no dead letter None: not a stream entry id"):
            await operation(None)  # type: ignore[arg-type]


async def test_an_entry_without_dead_letter_fields_is_listed_but_not_requeued(backend: Backend) -> None:
    transport = await backend.transport()
    request = request_event(backend.names, "by hand")
    entry_id = await transport.publish(backend.names.dead_letters, request)
    dead = DeadLetters(transport)
    (letter,) = await dead.list()
    assert (letter.id, letter.reason, letter.kind, letter.origin_stream, letter.delivery_count) == (
        entry_id,
        "",
        "unknown",
        "",
        0,
    )
    assert letter.request == request
    assert abs(letter.dead_at.timestamp() * 1000 - int(entry_id.split("-")[0])) < 1
    with pytest.raises(RequeueError) as caught:
        await dead.requeue(entry_id)
    refused = caught.value
    assert isinstance(refused, TransportError)
    assert isinstance(refused, ValueError)
    assert not isinstance(refused, LookupError)  # it exists: not an unknown dead letter
    assert (refused.entry_id, refused.stream) == (entry_id, backend.names.dead_letters)
    assert str(refused) == (
        f"dead letter {entry_id!r} on {backend.names.dead_letters!r} cannot be requeued: it does not "
        "say which stream it came from (no dead_letter.stream field); purge it, or publish its request "
        "yourself"
    )
    assert await dead.requeue_all() == 0
    assert await dead.list() == [letter]


@pytest.mark.parametrize("request_id", ["bad\x00id", "line\nbreak", "\t"])
async def test_a_request_id_no_record_can_have_deletes_nothing_and_the_letter_is_requeued(
    backend: Backend, request_id: str
) -> None:
    """A letter written by hand (or by another tool) whose ``dead_letter.request_id`` no record key
    can hold: requeue raised the key builder's ConfigurationError (a 500 from the REST API) and
    requeue_all stopped at it. No record can have that id, so there is none to delete."""
    transport = await backend.transport()
    request = request_event(backend.names, "by hand")
    metadata = {"stream": backend.names.requests, "reason": "manual", "request_id": request_id}
    fields = {
        **{name.encode(): value for name, value in transport.codec.encode_entry(request).items()},
        **{f"dead_letter.{name}".encode(): value.encode() for name, value in metadata.items()},
        b"dead_letter.response_id": b"r-1",
    }
    first = await transport.publish_fields(backend.names.dead_letters, fields)
    await transport.publish_fields(backend.names.dead_letters, fields)
    dead = DeadLetters(transport)
    assert [letter.request_id for letter in await dead.list()] == [request_id, request_id]

    new_id = await dead.requeue(first)
    assert await dead.requeue_all() == 1
    assert await dead.list() == []
    requeued = await transport.read_stream(backend.names.requests, AgentRequestEvent)
    assert requeued[0].entry_id == new_id
    assert [entry.event for entry in requeued] == [request, request]


async def test_requeue_all_goes_past_a_letter_whose_origin_is_no_stream(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A letter whose origin key holds something else (a record, say: a name mistyped by hand):
    its move fails with WRONGTYPE on every try. requeue_all raised at it, the letters after it
    never requeued, and as it stays first, every later requeue_all stopped there again."""
    transport = await backend.transport()
    coordinator = transport.coordinator()
    taken = backend.names.completed_record("taken")
    await coordinator.set_record(CompletedRecord("taken", "r-1", "completed", None, None, 0.0), ttl=60)
    request = request_event(backend.names, "by hand")
    encoded = {name.encode(): value for name, value in transport.codec.encode_entry(request).items()}
    for origin in (taken, backend.names.requests):
        await transport.publish_fields(
            backend.names.dead_letters, {**encoded, b"dead_letter.stream": origin.encode()}
        )
    dead = DeadLetters(transport)
    stuck = (await dead.list())[0]
    with caplog.at_level(logging.WARNING, logger="dynamic_agents"):
        assert await dead.requeue_all() == 1
    assert [letter.id for letter in await dead.list()] == [stuck.id]
    assert [
        entry.event for entry in await transport.read_stream(backend.names.requests, AgentRequestEvent)
    ] == [request]
    (warning,) = [r for r in caplog.records if stuck.id in r.getMessage()]
    assert "not requeued" in warning.getMessage()
    assert "WRONGTYPE" in warning.getMessage()
    with pytest.raises(TransportError, match="WRONGTYPE"):  # one by one, it is still an error
        await dead.requeue(stuck.id)


async def test_a_dead_letter_without_original_fields_is_not_requeued(backend: Backend) -> None:
    transport = await backend.transport()
    entry_id = await transport.publish_fields(
        backend.names.dead_letters,
        {b"dead_letter.stream": backend.names.requests.encode(), b"dead_letter.reason": b"manual"},
    )
    dead = DeadLetters(transport)
    with pytest.raises(RequeueError, match="no original fields") as caught:
        await dead.requeue(entry_id)
    assert caught.value.entry_id == entry_id
    assert not isinstance(caught.value, LookupError)
    assert [letter.id for letter in await dead.list()] == [entry_id]
    assert await transport.read_stream(backend.names.requests, AgentRequestEvent) == []


async def test_purging_a_dead_letter_requeued_meanwhile_is_a_lookup_error(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = await backend.transport()
    await dead_past_max_deliveries(backend, transport)
    dead, other = DeadLetters(transport), DeadLetters(await backend.transport())
    (letter,) = await dead.list()
    read_entry = transport.read_entry

    async def read_then_requeued_by_another(*args: Any, **kwargs: Any) -> Any:
        entry = await read_entry(*args, **kwargs)
        await other.requeue(letter.id)  # another operator, between the purge's look-up and its delete
        return entry

    monkeypatch.setattr(transport, "read_entry", read_then_requeued_by_another)
    with pytest.raises(DeliveryError, match="requeued or purged meanwhile"):
        await dead.purge(letter.id)


@pytest.mark.parametrize("stream", ["", 42])
async def test_a_dead_letter_stream_that_is_no_name_is_refused(backend: Backend, stream: object) -> None:
    """``stream=""`` used to fall back to the default stream silently (an operator aiming elsewhere
    would have purged the real one): a ConfigurationError naming ``stream`` and the value."""
    with pytest.raises(ConfigurationError) as caught:
        DeadLetters(await backend.transport(), stream=stream)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("stream must be a non-empty stream name"), message
    assert message.endswith(f"got {stream!r}"), message


@pytest.mark.parametrize(
    ("transport", "shown"),
    [
        (None, "None"),
        ("redis://127.0.0.1:6379/0", "'redis://127.0.0.1:6379/0'"),
        (StreamNames("ops"), "a StreamNames"),
        ("sk-CANARY123456789abcdef", "**********"),  # a key pasted in its place is masked
    ],
)
def test_dead_letters_of_something_that_is_no_transport_is_a_configuration_error(
    transport: object, shown: str
) -> None:
    # it failed with a bare AttributeError ('NoneType' object has no attribute 'names'), as
    # AgentClient did
    with pytest.raises(ConfigurationError) as refused:
        DeadLetters(transport)  # type: ignore[arg-type]
    assert str(refused.value) == (
        f"transport must be a Transport (RedisStreamsTransport.from_url(…), InMemoryTransport()), got {shown}"
    )


async def test_no_stream_means_the_transports_dead_letter_stream(backend: Backend) -> None:
    transport = await backend.transport()
    assert DeadLetters(transport).stream == DeadLetters(transport, stream=None).stream
    assert DeadLetters(transport).stream == transport.names.dead_letters
    assert DeadLetters(transport, stream="other:dead").stream == "other:dead"
