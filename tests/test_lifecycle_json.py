"""``LifecycleJson`` writes the bytes the lifecycle models write, for every field value it accepts,
and declines (``None``) what the models would refuse or cannot write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
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
stamps = st.datetimes(timezones=st.just(UTC))
AT = datetime(2026, 11, 28, 17, 30, 1, 250, tzinfo=UTC)
EVENT_ID = "0b1c5f3e-2a7d-4e2b-9a57-3c1f4c1e9d21"


def model_json(model: type[LifecycleEvent], common: dict[str, Any], **fields: Any) -> bytes:
    event = model.model_validate({**common, **fields})
    return event.model_dump_json().encode()


def common(
    request_id: str, session_id: str, target: Target | None, event_id: str, at: datetime
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "session_id": session_id,
        "target": target,
        "id": event_id,
        "timestamp": at,
    }


@given(ids, text, targets, st.uuids().map(str), stamps, st.integers(1, 2**63), counts, text)
def test_events_are_the_bytes_their_models_write(
    request_id: str,
    session_id: str,
    target: Target | None,
    event_id: str,
    at: datetime,
    delivery_count: int,
    sequence: int,
    content: str,
) -> None:
    writer = LifecycleJson(request_id, session_id, target)
    fields = common(request_id, session_id, target, event_id, at)
    when = {"event_id": event_id, "timestamp": at}
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
    at: datetime,
    execution_time_ms: int | None,
    tokens_used: int | None,
    status: ResponseStatus,
) -> None:
    writer = LifecycleJson(request_id, session_id, target)
    fields = common(request_id, session_id, target, EVENT_ID, at)
    when = {"event_id": EVENT_ID, "timestamp": at}
    assert writer.completed(execution_time_ms, tokens_used, **when) == model_json(
        RunCompleted, fields, execution_time_ms=execution_time_ms, tokens_used=tokens_used
    )
    message = None if tokens_used is None else f'failed after {tokens_used} tokens: "{session_id}"\n'
    assert writer.failed(status, message, **when) == model_json(
        RunFailed, fields, status=status, error_message=message
    )


def test_what_the_models_refuse_or_cannot_write_is_declined() -> None:
    """``None`` sends the caller to the model, whose validation or codec raises the typed error."""
    when = {"event_id": EVENT_ID, "timestamp": AT}
    writer = LifecycleJson("r", "s", None)
    assert writer.started(0, **when) is None  # delivery_count >= 1
    assert writer.started(True, **when) is None  # a bool is no count
    assert writer.delta(-1, "x", **when) is None
    assert writer.delta(0, "half a pair \ud800", **when) is None  # UTF-8 cannot carry it
    assert writer.completed(-1, None, **when) is None
    assert writer.completed(None, -5, **when) is None
    assert writer.failed("error", None, **when) is None  # type: ignore[arg-type]  # not the enumeration
    assert writer.failed(ResponseStatus.ERROR, "\udfff", **when) is None
    assert writer.accepted(event_id=EVENT_ID, timestamp=datetime(2026, 1, 1)) is None  # naive
    paris = timezone(timedelta(hours=1))
    assert writer.accepted(event_id=EVENT_ID, timestamp=datetime(2026, 1, 1, tzinfo=paris)) is None


@pytest.mark.parametrize(
    ("request_id", "session_id"),
    [("r 1", "s"), ("", "s"), ("r\n", "s"), ("r" * 257, "s"), ("r", "s\ud800")],
)
def test_a_request_whose_fields_the_model_refuses_is_declined_whole(request_id: str, session_id: str) -> None:
    writer = LifecycleJson(request_id, session_id, None)
    assert writer.accepted(event_id=EVENT_ID, timestamp=AT) is None
    assert writer.delta(0, "x", event_id=EVENT_ID, timestamp=AT) is None
