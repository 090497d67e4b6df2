"""``LifecycleJson`` writes the bytes the lifecycle models write, for every field value it accepts,
and declines (``None``) what the models would refuse or cannot write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamic_agents.events import ResponseStatus, Target, TargetType
from dynamic_agents.events.lifecycle import (
    ContentDelta,
    LifecycleEvent,
    LifecycleJson,
    RequestAccepted,
    RunCompleted,
    RunFailed,
    RunStarted,
)

ids = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256)
text = st.text(max_size=200)  # every plane; hypothesis leaves out lone surrogates
counts = st.integers(0, 2**63)
targets = st.none() | st.builds(
    Target,
    type=st.sampled_from(TargetType),
    id=st.text(min_size=1, max_size=40),
    extra=st.none() | text,  # a newer producer's field, kept and written back
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_NS = (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC) - EPOCH) // timedelta(
    microseconds=1
) * 1000 + 999
stamps = st.integers(0, LAST_NS)  # nanoseconds since the epoch, as time.time_ns()
AT = 1_795_887_001_000_250_999  # 2026-11-28T17:30:01.000250Z and 999 ns
EVENT_ID = "0b1c5f3e-2a7d-4e2b-9a57-3c1f4c1e9d21"


def model_json(model: type[LifecycleEvent], common: dict[str, Any], **fields: Any) -> bytes:
    event = model.model_validate({**common, **fields})
    return event.model_dump_json().encode()


def common(request_id: str, session_id: str, target: Target | None, event_id: str, at: int) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "session_id": session_id,
        "target": target,
        "id": event_id,
        "timestamp": EPOCH + timedelta(microseconds=at // 1000),  # what the models hold
    }


@given(ids, text, targets, st.uuids().map(str), stamps, st.integers(1, 2**63), counts, text)
def test_events_are_the_bytes_their_models_write(
    request_id: str,
    session_id: str,
    target: Target | None,
    event_id: str,
    at: int,
    delivery_count: int,
    sequence: int,
    content: str,
) -> None:
    writer = LifecycleJson(request_id, session_id, target)
    fields = common(request_id, session_id, target, event_id, at)
    when = {"event_id": event_id, "at": at}
    assert writer.accepted(**when) == model_json(RequestAccepted, fields)
    assert writer.started(delivery_count, **when) == model_json(
        RunStarted, fields, delivery_count=delivery_count
    )
    assert writer.delta(sequence, content, **when) == model_json(
        ContentDelta, fields, sequence=sequence, content=content
    )


@given(ids, text, targets, stamps, st.none() | counts, st.none() | counts, st.sampled_from(ResponseStatus))
def test_ends_are_the_bytes_their_models_write(
    request_id: str,
    session_id: str,
    target: Target | None,
    at: int,
    execution_time_ms: int | None,
    tokens_used: int | None,
    status: ResponseStatus,
) -> None:
    writer = LifecycleJson(request_id, session_id, target)
    fields = common(request_id, session_id, target, EVENT_ID, at)
    when = {"event_id": EVENT_ID, "at": at}
    assert writer.completed(execution_time_ms, tokens_used, **when) == model_json(
        RunCompleted, fields, execution_time_ms=execution_time_ms, tokens_used=tokens_used
    )
    message = None if tokens_used is None else f'failed after {tokens_used} tokens: "{session_id}"\n'
    assert writer.failed(status, message, **when) == model_json(
        RunFailed, fields, status=status, error_message=message
    )


def test_what_the_models_refuse_or_cannot_write_is_declined() -> None:
    """``None`` sends the caller to the model, whose validation or codec raises the typed error."""
    when = {"event_id": EVENT_ID, "at": AT}
    writer = LifecycleJson("r", "s", None)
    assert writer.started(0, **when) is None  # delivery_count >= 1
    assert writer.started(True, **when) is None  # a bool is no count
    assert writer.delta(-1, "x", **when) is None
    assert writer.delta(0, "half a pair \ud800", **when) is None  # UTF-8 cannot carry it
    assert writer.completed(-1, None, **when) is None
    assert writer.completed(None, -5, **when) is None
    assert writer.failed("error", None, **when) is None  # type: ignore[arg-type]  # not the enumeration
    assert writer.failed(ResponseStatus.ERROR, "\udfff", **when) is None


@pytest.mark.parametrize(
    ("request_id", "session_id"),
    [("r 1", "s"), ("", "s"), ("r\n", "s"), ("r" * 257, "s"), ("r", "s\ud800")],
)
def test_a_request_whose_fields_the_model_refuses_is_declined_whole(request_id: str, session_id: str) -> None:
    writer = LifecycleJson(request_id, session_id, None)
    assert writer.accepted(event_id=EVENT_ID, at=AT) is None
    assert writer.delta(0, "x", event_id=EVENT_ID, at=AT) is None


def test_timestamps_follow_the_clock_across_seconds() -> None:
    """The text of a whole second is kept between calls: a call in another second (later, or
    earlier: the clock stepped back) writes that second's."""
    writer = LifecycleJson("r", "s", None)
    second = 1_000_000_000
    moments = [AT, AT + 5, AT + second, AT - 3 * second, AT - 3 * second + 1_000, AT - 250_999]
    for at in moments:
        body = writer.accepted(event_id=EVENT_ID, at=at)
        assert body == model_json(RequestAccepted, common("r", "s", None, EVENT_ID, at))
    assert b'"timestamp":"2026-11-28T17:30:01Z"' in (
        writer.accepted(event_id=EVENT_ID, at=AT - 250_999) or b""
    )
