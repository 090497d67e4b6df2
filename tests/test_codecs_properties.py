"""Round trips of both codecs over generated events: non-ASCII text, empty and maximal fields."""

from __future__ import annotations

import contextlib
import json
import string
from collections.abc import Callable
from datetime import UTC

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, Attachment, EventCodec
from dynamic_agents.events.envelope import (
    Envelope,
    _decode_envelope_checked,
    decode_envelope,
    encode_envelope,
    encode_with_correlation_id,
)
from dynamic_agents.events.models import _REQUEST_FAST_PATH
from dynamic_agents.exceptions import DynamicAgentsError, EnvelopeError, EventTooLargeError

MAX_CONTENT = 2_000
CODEC = EventCodec(max_content_length=MAX_CONTENT, max_size=64 * 1024)

ids = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256)
any_text = st.text(max_size=80)  # every plane, surrogates excluded by hypothesis
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
metadata = st.dictionaries(any_text, json_values, max_size=4)
timestamps = st.datetimes(timezones=st.just(UTC))
sources = st.from_regex(r"[a-z][a-z0-9_.-]{0,63}", fullmatch=True)
channels = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=256)
attachments = st.builds(
    Attachment,
    kind=st.sampled_from(["image", "file", "audio"]),
    url=st.none() | st.just("https://cdn.example/a.png"),
    filename=st.none() | any_text,
    size_bytes=st.none() | st.integers(0, 2**40),
)

requests = st.builds(
    AgentRequestEvent,
    id=ids,
    timestamp=timestamps,
    source=sources,
    source_id=channels,
    user_id=any_text,
    user_name=st.none() | any_text,
    content=st.text(max_size=MAX_CONTENT) | st.just("é" * MAX_CONTENT) | st.just(""),
    attachments=st.lists(attachments, max_size=3),
    agent_id=st.none() | any_text,
    session_id=st.text(min_size=1, max_size=512),
    session_state=metadata,
    reply_stream=st.none() | st.text(min_size=1, max_size=100),
    metadata=metadata,
)
responses = st.builds(
    AgentResponseEvent,
    id=ids,
    request_id=ids,
    timestamp=timestamps,
    content=st.text(max_size=MAX_CONTENT),
    structured_data=st.none() | metadata,
    execution_time_ms=st.none() | st.integers(0, 10**9),
    tokens_used=st.none() | st.integers(0, 10**9),
    images=st.lists(any_text, max_size=3),
    files=st.lists(st.dictionaries(any_text, any_text, max_size=2), max_size=2),
    metadata=metadata,
)
ascii_headers = st.dictionaries(
    st.text(alphabet=string.ascii_letters + "-_", min_size=1, max_size=20).filter(
        lambda key: key not in {"correlation_id", "content-type", "reply_to"}
    ),
    st.text(alphabet=string.printable, max_size=200),
    max_size=4,
)


@given(requests)
def test_request_round_trips_through_json(event: AgentRequestEvent) -> None:
    assert CODEC.decode_json(CODEC.encode_json(event), AgentRequestEvent) == event


@given(requests, st.none() | st.text(string.ascii_letters, min_size=1), ascii_headers)
def test_request_round_trips_through_the_envelope(
    event: AgentRequestEvent, reply_to: str | None, headers: dict[str, str]
) -> None:
    message = CODEC.decode_entry(
        CODEC.encode_entry(event, reply_to=reply_to, headers=headers), AgentRequestEvent
    )
    assert message.event == event
    assert message.correlation_id == event.id
    assert message.reply_to == reply_to
    assert {k: message.headers[k] for k in headers} == headers


@given(responses)
def test_response_round_trips_through_both_codecs(event: AgentResponseEvent) -> None:
    assert CODEC.decode_json(CODEC.encode_json(event), AgentResponseEvent) == event
    envelope = CODEC.encode_envelope(event)
    assert CODEC.decode_envelope(envelope, AgentResponseEvent).event == event


@given(st.binary(max_size=4096), ascii_headers)
def test_envelope_round_trips_any_body(body: bytes, headers: dict[str, str]) -> None:
    decoded = decode_envelope(encode_envelope(body, headers))
    assert decoded.body == body
    assert dict(decoded.headers) == headers


@given(st.binary(max_size=256), st.text(max_size=80), st.text(max_size=40))
def test_the_one_step_encoder_writes_what_the_general_one_does(
    body: bytes, correlation_id: str, content_type: str
) -> None:
    """encode_with_correlation_id packs the two headers every event carries in one step; for any
    id and content type (non-ASCII, empty) it writes the same bytes, or refuses the same way."""

    def outcome(encode: Callable[[], bytes]) -> bytes | str:
        try:
            return encode()
        except EnvelopeError as error:
            return str(error)

    headers = {"correlation_id": correlation_id, "content-type": content_type}
    assert outcome(lambda: encode_with_correlation_id(body, correlation_id, content_type)) == outcome(
        lambda: encode_envelope(body, headers)
    )


@given(st.binary(max_size=64), ascii_headers, st.data())
def test_the_fast_envelope_reader_agrees_with_the_checked_one(
    body: bytes, headers: dict[str, str], data: st.DataObject
) -> None:
    """decode_envelope reads a well-formed envelope in one pass and hands anything odd to the
    step-by-step reader: on damaged input both must give the same envelope or both refuse it."""
    envelope = bytearray(encode_envelope(body, headers))
    for index, value in data.draw(
        st.lists(st.tuples(st.integers(0, len(envelope) - 1), st.integers(0, 255)))
    ):
        envelope[index] = value
    damaged = bytes(envelope[: data.draw(st.integers(0, len(envelope)))])

    def outcome(read: Callable[[bytes], Envelope]) -> Envelope | str:
        try:
            return read(damaged)
        except EnvelopeError:
            return "refused"

    assert outcome(decode_envelope) == outcome(_decode_envelope_checked)


@given(st.integers(MAX_CONTENT + 1, MAX_CONTENT + 50))
def test_content_one_past_the_limit_is_refused(length: int) -> None:
    event = AgentRequestEvent(source="rest", source_id="c", user_id="u", content="ü" * length)
    with pytest.raises(EventTooLargeError) as caught:
        CODEC.encode_json(event)
    assert caught.value.size == length


@given(st.binary(max_size=300))
def test_garbage_entries_raise_only_library_errors(data: bytes) -> None:
    with contextlib.suppress(DynamicAgentsError):
        CODEC.decode_entry({b"__data__": data}, AgentRequestEvent)


# (st.text() leaves surrogates out, whatever its alphabet)
_with_surrogates = st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=20).map("".join)


@given(_with_surrogates, st.dictionaries(_with_surrogates, _with_surrogates, max_size=3))
def test_legacy_envelopes_of_any_strings_raise_only_library_errors(
    data: str, headers: dict[str, str]
) -> None:
    """JSON escapes every string, lone surrogates too (``"\\ud800"``): what the legacy envelope
    reads from them must still be a library error at worst."""
    with contextlib.suppress(DynamicAgentsError):
        CODEC.decode_entry(
            {b"__data__": json.dumps({"data": data, "headers": headers}).encode()}, AgentRequestEvent
        )


# -- decoding a request without the seed-shape step ---------------------------------------------------

request_keys = st.sampled_from(
    [*AgentRequestEvent.model_fields, "channel_id", "conversation_id", "chat_id", "type", "guild_id"]
)
seed_metadata = st.dictionaries(
    st.sampled_from(["agent_id", "team_id", "session_id", "reply_to", "guild_id"]) | any_text,
    st.none() | any_text | st.integers(),
    max_size=4,
)
request_values = (
    json_values
    | st.floats(allow_nan=False)
    | st.sampled_from(
        ["discord", " Slack ", "1.0", "2.0", "", "2026-11-27T04:00:00", "2026-11-27T04:00:00+02:00"]
    )
    | seed_metadata
)
# Requests in the model's shape (half of them) and in the seed's, with or without session ids, and
# any other keys (field names among them) holding any values.
_sources = st.sampled_from(["discord", " Rest", "slack", "9bad"])
_others = st.dictionaries(request_keys | any_text, request_values, max_size=4)
request_objects = st.builds(
    lambda others, base: {**others, **base},
    _others,
    st.fixed_dictionaries(
        {
            "source": _sources,
            "source_id": channels,
            "user_id": any_text,
            "content": any_text,
            "session_id": st.text(min_size=1, max_size=8),
        }
    )
    | st.fixed_dictionaries(
        {"source": _sources, "user_id": any_text},
        optional={
            "content": any_text,
            "source_id": channels,
            "channel_id": channels,
            "session_id": st.none() | st.text(max_size=8),
            "metadata": seed_metadata,
        },
    ),
)


def _full_outcome(body: str) -> AgentRequestEvent | None:
    """The model's own validator (``model_validate_json``); ``None`` where it refuses."""
    try:
        return AgentRequestEvent.model_validate_json(body)
    except ValidationError:
        return None


def _same_event(one: AgentRequestEvent, other: AgentRequestEvent) -> bool:
    """Equal, fields set included; an id or timestamp left to its default differs between two
    validations and is left out."""
    made = {"id", "timestamp"} - one.model_fields_set
    return (
        one.model_fields_set == other.model_fields_set
        and one.model_dump(exclude=made) == other.model_dump(exclude=made)
        and one.model_extra == other.model_extra
        and one.model_dump_json(exclude=made) == other.model_dump_json(exclude=made)
    )


@settings(max_examples=400)
@given(request_objects)
def test_the_fast_request_validator_agrees_with_the_model(data: dict[str, object]) -> None:
    """Where the validator without ``_read_seed_shape`` accepts an object, the model's own gives
    the same event: that step changes nothing on what it accepts (seed shape and missing session
    ids among the generated objects)."""
    assert _REQUEST_FAST_PATH is not None
    body = json.dumps(data)
    full = _full_outcome(body)
    with contextlib.suppress(ValidationError):
        fast = _REQUEST_FAST_PATH.validate_json(body)
        assert full is not None
        assert _same_event(fast, full)
    if full is None:
        with pytest.raises(DynamicAgentsError):
            CODEC.decode_json(body, AgentRequestEvent)
    else:
        assert _same_event(CODEC.decode_json(body, AgentRequestEvent), full)


def test_the_codec_reads_the_seed_shape_and_fills_the_session_through_the_model() -> None:
    """Objects the fast validator refuses (the seed's publish shape, no session id) still decode."""
    seed = {
        "type": "message",
        "source": "discord",
        "channel_id": "42",
        "user_id": "u",
        "content": "hi",
        "metadata": {"agent_id": "a", "reply_to": "agent:responses:discord"},
    }
    event = CODEC.decode_json(json.dumps(seed), AgentRequestEvent)
    assert (event.source_id, event.session_id, event.agent_id, event.reply_stream) == (
        "42",
        "discord:42",
        "a",
        "agent:responses:discord",
    )
    assert event.metadata == {"event_type": "message"}
    assert (
        CODEC.decode_json(
            b'{"source":"rest","source_id":"c","user_id":"u","content":""}', AgentRequestEvent
        ).session_id
        == "rest:c"
    )


def test_a_repeated_key_means_the_same_on_both_paths() -> None:
    body = '{"source":"rest","source_id":"a","source_id":"b","user_id":"u","content":"","session_id":"s"}'
    decoded, full = CODEC.decode_json(body, AgentRequestEvent), _full_outcome(body)
    assert full is not None
    assert _same_event(decoded, full)
    assert decoded.source_id == "b"


@pytest.mark.parametrize(
    "change",
    [
        {"source": " Slack"},
        {"schema_version": "1.1"},
        {"session_id": None},
        {"session_id": ""},
        {"schema_version": "2.0"},
    ],
    ids=["source to normalise", "newer minor version", "no session id", "empty session id", "major 2"],
)
def test_requests_the_model_would_change_or_refuse_take_its_own_steps(change: dict[str, object]) -> None:
    """The fast validator accepts only what the model's Python steps leave as it is: the others
    are refused by it, and decoded (or refused) by the model's own validator."""
    assert _REQUEST_FAST_PATH is not None
    base = {"source": "slack", "source_id": "C1", "user_id": "u", "content": "hi", "session_id": "s"}
    body = json.dumps({key: value for key, value in {**base, **change}.items() if value is not None})
    with pytest.raises(ValidationError):
        _REQUEST_FAST_PATH.validate_json(body)
    full = _full_outcome(body)
    if full is None:
        with pytest.raises(DynamicAgentsError):
            CODEC.decode_json(body, AgentRequestEvent)
    else:
        assert _same_event(CODEC.decode_json(body, AgentRequestEvent), full)


def test_the_fast_request_validator_is_in_use() -> None:
    """None would mean pydantic laid the model's schema out differently (a pydantic upgrade):
    requests would still decode, only slower. This test says so instead of the benchmark."""
    assert _REQUEST_FAST_PATH is not None
