"""Bad input: each case gets a typed error from the tree, and nothing from pydantic or struct."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ModelWrapValidatorHandler, model_validator

from dynamic_agents.events import (
    AgentRequestEvent,
    AgentResponseEvent,
    ContentDelta,
    EventCodec,
    LifecycleEvent,
    RunFailed,
    Target,
    TargetType,
    WireModel,
)
from dynamic_agents.events.envelope import MAGIC, encode_envelope, read_entry_data
from dynamic_agents.exceptions import (
    ConfigurationError,
    DecodeError,
    DynamicAgentsError,
    EnvelopeError,
    EventTooLargeError,
    EventValidationError,
    UnsupportedSchemaVersionError,
)
from dynamic_agents.secrets import MASK, SecretValue

CODEC = EventCodec()


def valid_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "source": "slack",
        "source_id": "C1",
        "user_id": "U1",
        "content": "hi",
    }
    body.update(overrides)
    return body


def test_not_json() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        CODEC.decode_json(b"{nope", AgentRequestEvent)


def test_not_utf8() -> None:
    with pytest.raises(DecodeError):
        CODEC.decode_json(b'{"content": "\xff\xfe"}', AgentRequestEvent)


def test_text_with_a_lone_surrogate_is_a_decode_error() -> None:
    """A ``str`` that no UTF-8 can encode (a lone surrogate, as a bad ``bytes.decode(...,
    'surrogateescape')`` leaves) is not text: a :class:`DecodeError`, as bytes that are not UTF-8."""
    with pytest.raises(DecodeError, match="not valid UTF-8 text"):
        CODEC.decode_json('{"content": "\ud800"}', AgentRequestEvent)


def test_json_but_not_an_object() -> None:
    with pytest.raises(DecodeError, match="must be a JSON object, got list"):
        CODEC.decode_json(b"[1, 2]", AgentRequestEvent)


def test_wrong_types_name_each_field_and_value() -> None:
    body = json.dumps(valid_body(user_id=42, attachments="x")).encode()
    with pytest.raises(EventValidationError) as caught:
        CODEC.decode_json(body, AgentRequestEvent)
    locations = {error.location for error in caught.value.errors}
    assert locations == {"user_id", "attachments"}
    assert "user_id" in str(caught.value)
    assert "42" in str(caught.value)


def test_a_bad_value_quoted_by_an_error_has_its_keys_and_secrets_masked() -> None:
    """A decode error ends up in logs, in dead-letter reasons and in the REST API: the value it
    quotes is masked as any error text is (a key-shaped word, a registered secret), before it is
    cut, so not even a key's first characters show."""
    key = "sk-proj-" + "Q7w" * 12
    registered = SecretValue("tail-of-a-registered-secret-" + "x1y2" * 5)
    body = json.dumps(valid_body(user_id={"k": key}, user_name=["a" * 30 + registered.reveal()])).encode()
    with pytest.raises(EventValidationError) as caught:
        CODEC.decode_json(body, AgentRequestEvent)
    text = str(caught.value)
    assert {error.location for error in caught.value.errors} == {"user_id", "user_name"}
    assert "Q7wQ7w" not in text
    assert "tail-of-a" not in text
    assert MASK in text


def test_missing_required_fields_are_listed() -> None:
    with pytest.raises(EventValidationError) as caught:
        CODEC.decode_json(b'{"source": "slack"}', AgentRequestEvent)
    missing = {error.location for error in caught.value.errors}
    assert {"source_id", "user_id", "content"} <= missing
    assert all(error.value is None for error in caught.value.errors)


def test_unknown_major_schema_version() -> None:
    body = json.dumps(valid_body(schema_version="2.0")).encode()
    with pytest.raises(UnsupportedSchemaVersionError) as caught:
        CODEC.decode_json(body, AgentRequestEvent)
    assert caught.value.version == "2.0"
    assert "1.x" in str(caught.value)


@pytest.mark.parametrize(
    ("version", "named"),
    [("2", "2"), (2, "2"), (2.0, "2.0"), ("2.0.0", "2.0.0"), ("0", "0"), (0, "0"), ("9999", "9999")],
)
def test_a_version_of_another_major_in_another_shape_is_refused_for_its_major(
    version: object, named: str
) -> None:
    """A bare major (``"2"``, ``2``), a JSON number or three parts still say which major wrote the
    event: that major is refused as one (a newer producer), not as a malformed value, for a request
    as for a lifecycle event whose ``type`` this release does not know."""
    lifecycle = {"schema_version": version, "type": "run.paused", "request_id": "r", "session_id": "s"}
    for body, model in ((valid_body(schema_version=version), AgentRequestEvent), (lifecycle, LifecycleEvent)):
        with pytest.raises(UnsupportedSchemaVersionError) as caught:
            CODEC.decode_json(json.dumps(body).encode(), model)
        assert caught.value.version == named


@pytest.mark.parametrize("version", [True, "10000", 10_000, -2, "v2", "2.x", float("nan"), "\u0662"])
def test_a_version_whose_major_cannot_be_read_is_malformed(version: object) -> None:
    body = json.dumps(valid_body(schema_version=version)).encode()
    with pytest.raises(EventValidationError, match="schema_version"):
        CODEC.decode_json(body, AgentRequestEvent)


@pytest.mark.parametrize("version", ["one", "1", "1.0.0", 1.0])
def test_malformed_schema_version(version: object) -> None:
    body = json.dumps(valid_body(schema_version=version)).encode()
    with pytest.raises(EventValidationError, match="schema_version"):
        CODEC.decode_json(body, AgentRequestEvent)


def test_truncated_envelope() -> None:
    entry = CODEC.encode_entry(AgentRequestEvent.model_validate(valid_body()))
    data = entry["__data__"]
    for cut in (4, 12, 20, 30):
        with pytest.raises(EnvelopeError):
            CODEC.decode_entry({"__data__": data[:cut]}, AgentRequestEvent)


def test_header_length_running_past_the_end() -> None:
    header_count = struct.pack(">H", 1)
    key = struct.pack(">H", 500) + b"correlation_id"
    headers_start = 18
    data_start = headers_start + len(header_count) + len(key)
    data = MAGIC + struct.pack(">HII", 1, headers_start, data_start) + header_count + key + b"{}"
    with pytest.raises(EnvelopeError, match="runs past"):
        CODEC.decode_entry({b"__data__": data}, AgentRequestEvent)


def test_an_envelope_without_a_header_count_is_refused() -> None:
    data = MAGIC + struct.pack(">HII", 1, 18, 18) + b"\x00\x00{}"  # the body starts where the count should
    with pytest.raises(EnvelopeError, match="no header count"):
        CODEC.decode_envelope(data, AgentRequestEvent)


def test_offsets_past_the_end() -> None:
    data = MAGIC + struct.pack(">HII", 1, 18, 10_000) + b"\x00\x00{}"
    with pytest.raises(EnvelopeError, match="out of range"):
        CODEC.decode_envelope(data, AgentRequestEvent)


def test_unsupported_envelope_version() -> None:
    data = MAGIC + struct.pack(">HII", 9, 18, 20) + b"\x00\x00{}"
    with pytest.raises(EnvelopeError, match="version 9"):
        CODEC.decode_envelope(data, AgentRequestEvent)


def test_ten_mib_body_is_refused_before_parsing() -> None:
    huge = b'{"content": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    with pytest.raises(EventTooLargeError) as caught:
        CODEC.decode_json(huge, AgentRequestEvent)
    assert caught.value.limit == CODEC.max_size
    with pytest.raises(EventTooLargeError):
        CODEC.decode_entry({"__data__": encode_envelope(huge, {})}, AgentRequestEvent)


def test_the_size_limit_counts_bytes_for_text_input_too() -> None:
    """``max_size`` is in bytes, as the docs say; a ``str`` body or a flat entry of ``str`` fields
    was measured in characters, so four-byte characters passed at four times the limit."""
    codec = EventCodec(max_size=1000)
    body = json.dumps(valid_body(user_name="🌦" * 400), ensure_ascii=False)
    assert len(body) < 1000 < len(body.encode())
    with pytest.raises(EventTooLargeError) as caught:
        codec.decode_json(body, AgentRequestEvent)
    assert caught.value.size == len(body.encode())
    flat = {"source": "discord", "source_id": "1", "user_id": "u", "content": "🌦" * 400}
    with pytest.raises(EventTooLargeError):
        codec.decode_entry(flat, AgentRequestEvent)
    assert codec.decode_json(json.dumps(valid_body(user_name="é" * 10)), AgentRequestEvent).user_name


def test_content_over_the_limit_is_refused_both_ways() -> None:
    codec = EventCodec(max_content_length=10)
    long = AgentRequestEvent.model_validate(valid_body(content="x" * 11))
    with pytest.raises(EventTooLargeError, match="content"):
        codec.encode_json(long)
    with pytest.raises(EventTooLargeError, match="content"):
        codec.decode_json(EventCodec().encode_json(long), AgentRequestEvent)


def test_too_large_errors_name_the_unit_and_the_setting() -> None:
    """The message "content is 11 long, over the limit of 10" left the reader to guess whether the
    limit counts characters or bytes, and which setting to raise."""
    event = AgentRequestEvent.model_validate(valid_body(content="x" * 11))
    with pytest.raises(EventTooLargeError) as caught:
        EventCodec(max_content_length=10).encode_json(event)
    assert str(caught.value) == (
        "content is 11 characters long, over the limit of 10 characters (EventCodec max_content_length)"
    )
    assert (caught.value.unit, caught.value.setting) == ("characters", "max_content_length")
    body = EventCodec().encode_json(event)
    with pytest.raises(EventTooLargeError) as caught:
        EventCodec(max_size=100).decode_json(body, AgentRequestEvent)
    assert str(caught.value) == (
        f"event body is {len(body)} bytes long, over the limit of 100 bytes (EventCodec max_size)"
    )
    assert (caught.value.unit, caught.value.setting) == ("bytes", "max_size")


def test_encoding_over_the_size_limit_is_refused() -> None:
    codec = EventCodec(max_size=200)
    with pytest.raises(EventTooLargeError, match="encoded event"):
        codec.encode_entry(AgentRequestEvent.model_validate(valid_body(content="y" * 300)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("raw_message", object(), "Unable to serialize unknown type"),  # an extra field
        ("raw_bytes", b"\xff\xfe", "invalid utf-8"),
    ],
)
def test_a_value_that_cannot_be_written_as_json_is_an_event_error(
    field: str, value: object, message: str
) -> None:
    event = AgentRequestEvent.model_validate(valid_body(**{field: value}))
    with pytest.raises(EventValidationError) as caught:
        CODEC.encode_entry(event)
    (error,) = caught.value.errors
    assert error.location == field
    assert message in error.message


def test_a_metadata_value_set_after_validation_is_named_when_it_cannot_be_written() -> None:
    event = AgentRequestEvent.model_validate(valid_body())
    event.metadata["message"] = object()  # type: ignore[assignment]  # mutation skips validation
    with pytest.raises(EventValidationError, match="metadata: cannot be written as JSON"):
        CODEC.encode_json(event)


def test_non_ascii_header_is_refused_not_miswritten() -> None:
    event = AgentRequestEvent.model_validate(valid_body())
    with pytest.raises(EnvelopeError, match="not ASCII"):
        CODEC.encode_entry(event, headers={"x-user": "José"})


@pytest.mark.parametrize(
    "headers",
    [
        {"x-tenant": "canary-header-secret-0042\u00e9"},  # a registered secret
        {"authorization": "Bearer tok\u00e9n-canary-0043"},  # a credential's header
        {"x-note": "key sk-proj-canary0044abcdefghijklmnopqrstuvwxyz \u00e9"},  # a key-shaped word
        {"canary-header-secret-0042\u00e9": "v"},  # a secret pasted as the name
    ],
)
def test_a_non_ascii_header_that_may_be_a_secret_is_masked_in_the_error(headers: dict[str, str]) -> None:
    """The error names the header, but a value that may be a secret is masked: an EnvelopeError
    reaches logs and dead-letter reasons (the value was quoted as it was, 60 characters of it)."""
    SecretValue("canary-header-secret-0042\u00e9")
    event = AgentRequestEvent.model_validate(valid_body())
    with pytest.raises(EnvelopeError, match="is not ASCII") as caught:
        CODEC.encode_entry(event, headers=headers)
    assert "canary" not in str(caught.value)
    assert MASK in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-count": 3}, "header 'x-count' must be a string, got int"),
        ({7: "seven"}, "header names must be strings, got int"),
        ({"x-long": "v" * 70_000}, "header 'x-long' value is 70000 bytes long, over the 65535 limit"),
        ({"é": "v"}, "header name 'é' is not ASCII"),
    ],
)
def test_bad_headers_are_refused_with_what_is_wrong(headers: dict[Any, Any], message: str) -> None:
    with pytest.raises(EnvelopeError, match=re.escape(message)):
        encode_envelope(b"{}", headers)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({b"content": b"canary-flat-entry-0042 \xff"}, "'content'"),  # a registered secret
        ({b"content": b"sk-proj-canary0043abcdefghijklmnopqrstuvwxyz\xff"}, "'content'"),  # key-shaped
        ({b"sk-proj-canary0044abcdefghijklmnopqrstuvwxyz\xff": b"x"}, "name"),  # a key as the name
    ],
)
def test_a_flat_entry_field_that_is_not_utf8_is_named_and_masked(
    fields: dict[bytes, bytes], named: str
) -> None:
    """A flat stream entry (``XADD s content …``) with bytes that are not UTF-8: the error names
    the field and masks a value that may be a secret (it quoted the raw bytes, unmasked, and not
    which field they were), as it reaches logs and dead-letter reasons."""
    SecretValue("canary-flat-entry-0042")
    with pytest.raises(DecodeError, match="is not UTF-8") as caught:
        CODEC.decode_entry({b"source": b"slack", **fields}, AgentRequestEvent)
    assert "canary" not in str(caught.value)
    assert MASK in str(caught.value)
    assert named in str(caught.value)


def test_codec_owned_headers_cannot_be_overridden() -> None:
    event = AgentRequestEvent.model_validate(valid_body())
    with pytest.raises(EnvelopeError, match="correlation_id"):
        CODEC.encode_entry(event, headers={"correlation_id": "other"})


@pytest.mark.parametrize("limits", [{"max_size": 0}, {"max_content_length": -1}])
def test_limits_must_be_positive(limits: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError):
        EventCodec(**limits)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_size": float("nan")},
        {"max_size": 1.5},
        {"max_size": True},
        {"max_size": "1024"},
        {"max_content_length": float("inf")},
    ],
)
def test_limits_must_be_integers(limits: dict[str, object]) -> None:
    """``max_size=nan`` passed the positivity check and then turned the size limit off (no size
    compares greater than NaN); a string raised a bare ``TypeError``."""
    (name,) = limits
    with pytest.raises(ConfigurationError, match=f"^{name} must be a whole number > 0, got"):
        EventCodec(**limits)  # type: ignore[arg-type]


def test_every_error_is_in_the_tree() -> None:
    cases: list[bytes] = [b"", b"null", b"{", b'{"source": 1}', b'{"schema_version": "9.1"}']
    for case in cases:
        with pytest.raises(DynamicAgentsError):
            CODEC.decode_json(case, AgentRequestEvent)


def test_correlation_id_is_the_event_id_and_reply_to_is_a_header() -> None:
    event = AgentRequestEvent.model_validate(valid_body())
    entry = CODEC.encode_entry(event, reply_to="rpc-inbox", headers={"traceparent": "00-ab-cd-01"})
    message = CODEC.decode_entry(entry, AgentRequestEvent)
    assert message.event == event
    assert message.correlation_id == event.id
    assert message.reply_to == "rpc-inbox"
    assert message.traceparent == "00-ab-cd-01"
    assert list(message.headers) == ["correlation_id", "content-type", "reply_to", "traceparent"]


def test_legacy_json_envelope_and_bare_body_are_read() -> None:
    event = AgentRequestEvent.model_validate(valid_body())
    body = CODEC.encode_json(event).decode()
    legacy = json.dumps({"data": body, "headers": {"correlation_id": event.id}}).encode()
    assert CODEC.decode_entry({"__data__": legacy}, AgentRequestEvent).event == event
    assert CODEC.decode_entry({"__data__": legacy}, AgentRequestEvent).correlation_id == event.id
    assert CODEC.decode_entry({"__data__": body}, AgentRequestEvent).event == event


def test_a_null_header_in_a_legacy_envelope_is_absent_not_the_text_null() -> None:
    """``"reply_to": null`` read as the text ``"null"``: the worker would then PUBLISH its reply
    to a channel called ``null``. FastStream's reader keeps ``None`` (no reply): so does this one."""
    event = AgentRequestEvent.model_validate(valid_body())
    body = CODEC.encode_json(event).decode()
    legacy = json.dumps({"data": body, "headers": {"correlation_id": "c", "reply_to": None}}).encode()
    message = CODEC.decode_entry({"__data__": legacy}, AgentRequestEvent)
    assert message.reply_to is None
    assert dict(message.headers) == {"correlation_id": "c"}


@pytest.mark.parametrize(
    ("envelope", "where"),
    [
        (b'{"data": "\\ud800"}', "'data'"),
        (b'{"data": "{}", "headers": {"correlation_id": "x\\udfff"}}', "header 'correlation_id'"),
        (b'{"data": "{}", "headers": {"\\ud800": "x"}}', "a header name"),
    ],
)
def test_a_legacy_envelope_with_a_lone_surrogate_is_refused(envelope: bytes, where: str) -> None:
    """JSON may escape a lone surrogate; no UTF-8 body or header holds one: an EnvelopeError, not
    the UnicodeEncodeError that used to escape the codec."""
    with pytest.raises(EnvelopeError, match=re.escape(f"legacy JSON envelope: {where} is not valid Unicode")):
        read_entry_data(envelope)
    with pytest.raises(EnvelopeError):
        CODEC.decode_entry({b"__data__": envelope}, AgentRequestEvent)


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ({"data": valid_body()}, "'data' must be a string (the event's JSON text), got an object"),
        ({"data": "{}", "headers": [["correlation_id", "c"]]}, "'headers' must be an object, got an array"),
        ({"data": "{}", "headers": None}, "'headers' must be an object, got null"),
        ({"data": 17, "headers": {}}, "'data' must be a string (the event's JSON text), got a number"),
    ],
)
def test_a_legacy_envelope_of_wrong_types_is_refused_as_one(envelope: dict[str, Any], message: str) -> None:
    """Read as a bare body (as FastStream's reader reads it, or fails to), it was refused for the
    event fields it lacks (``source: Field required; …``), hiding what is wrong with it."""
    data = json.dumps(envelope).encode()
    with pytest.raises(EnvelopeError, match=re.escape(f"legacy JSON envelope: {message}")):
        CODEC.decode_entry({b"__data__": data}, AgentRequestEvent)


def test_a_legacy_envelope_around_a_body_of_the_same_shape_is_an_invalid_event() -> None:
    """The body inside a well-formed envelope is the event's, not a second envelope."""
    data = json.dumps({"data": json.dumps({"data": "x"})}).encode()
    with pytest.raises(EventValidationError, match=r"^invalid AgentRequestEvent: source: Field required"):
        CODEC.decode_entry({b"__data__": data}, AgentRequestEvent)


def test_body_with_a_data_field_is_not_mistaken_for_a_legacy_envelope() -> None:
    body = json.dumps(valid_body(data="not an envelope")).encode()
    assert read_entry_data(body).body == body


def test_flat_field_entry_is_read() -> None:
    fields = {b"source": b"discord", b"source_id": b"9", b"user_id": b"u", b"content": b"hey"}
    event = CODEC.decode_entry(fields, AgentRequestEvent).event
    assert (event.source, event.source_id, event.content) == ("discord", "9", "hey")


def test_lifecycle_events_decode_to_their_own_class() -> None:
    target = Target(type=TargetType.AGENT, id="helper")
    for event in (
        ContentDelta(request_id="r", session_id="s", target=target, sequence=3, content="par"),
        RunFailed(request_id="r", session_id="s", error_message="boom"),
    ):
        decoded = CODEC.decode_json(CODEC.encode_json(event), LifecycleEvent)
        assert type(decoded) is type(event)
        assert decoded == event


def test_a_newer_producers_target_fields_are_kept() -> None:
    """Unknown fields are kept at every level of an event, the target's too: a relay that decodes
    and re-encodes a newer producer's lifecycle event passes them on."""
    body = {"type": "request.accepted", "request_id": "r", "session_id": "s"}
    body["target"] = {"type": "agent", "id": "helper", "version": 7}
    decoded = CODEC.decode_json(json.dumps(body).encode(), LifecycleEvent)
    assert decoded.target is not None
    assert decoded.target.model_extra == {"version": 7}
    assert json.loads(CODEC.encode_json(decoded))["target"] == body["target"]
    assert hash(decoded.target) == hash(Target(type=TargetType.AGENT, id="helper"))  # still a key


def test_unknown_lifecycle_type_is_a_validation_error() -> None:
    with pytest.raises(EventValidationError, match="type"):
        CODEC.decode_json(b'{"type": "run.exploded", "request_id": "r"}', LifecycleEvent)


def test_a_response_is_not_read_as_a_request() -> None:
    response = AgentResponseEvent(request_id="r1", content="done")
    with pytest.raises(EventValidationError):
        CODEC.decode_json(CODEC.encode_json(response), AgentRequestEvent)


class Note(WireModel):
    text: str


class ArchivedNote(WireModel):
    """A model whose validator hands back another model (an old shape upgraded to a new one)."""

    text: str

    @model_validator(mode="wrap")
    @classmethod
    def _upgraded(cls, data: Any, handler: ModelWrapValidatorHandler[ArchivedNote]) -> Any:
        return Note(text=handler(data).text)


@pytest.mark.parametrize(
    "decode",
    [
        lambda: CODEC.decode_json(b'{"text": "old"}', ArchivedNote),
        lambda: CODEC.decode_entry({b"text": b"old"}, ArchivedNote),
    ],
    ids=["json", "flat entry"],
)
def test_an_event_of_another_class_is_named_with_the_right_article(decode: Callable[[], object]) -> None:
    """The check that the validator gave the model asked for wrote "expected a ArchivedNote"."""
    with pytest.raises(EventValidationError) as caught:
        decode()
    assert str(caught.value) == "invalid ArchivedNote: type: expected an ArchivedNote (got Note)"
