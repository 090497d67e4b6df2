"""The legacy JSON envelope (``{"data": "...", "headers": {...}}``) read exactly as FastStream's
own reader (``BinaryMessageFormatV1.parse``) reads it: what it takes for an envelope, the codec
does; what it takes for a bare body, so does the codec.

Where the codec is stricter on purpose (an object with keys besides ``data`` and ``headers`` is a
bare body; header values that are not text) see ``read_entry_data``; no case here has them.
"""

from __future__ import annotations

import json

import pytest
from faststream.redis.parser import BinaryMessageFormatV1
from hypothesis import given
from hypothesis import strategies as st

from dynamic_agents.events import AgentRequestEvent, EventCodec
from dynamic_agents.events.envelope import read_entry_data

pytestmark = pytest.mark.faststream

ENVELOPE = json.dumps({"data": '{"a": 1}', "headers": {"correlation_id": "c-1"}})
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


def theirs(data: bytes) -> tuple[bytes, dict[str, object]]:
    return BinaryMessageFormatV1.parse(data)


def ours(data: bytes) -> tuple[bytes, dict[str, object]]:
    envelope = read_entry_data(data)
    return envelope.body, dict(envelope.headers)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b" " + ENVELOPE.encode(), id="a leading space"),
        pytest.param(b"\r\n\t  " + ENVELOPE.encode(), id="leading CR LF tab"),
        pytest.param(b"\n" + ENVELOPE.encode() + b"\n", id="newlines around"),
        pytest.param(ENVELOPE.encode() + b" \r\n", id="trailing whitespace"),
        pytest.param(b"\xef\xbb\xbf" + ENVELOPE.encode(), id="UTF-8 byte order mark"),
        *(pytest.param(ENVELOPE.encode(encoding), id=encoding) for encoding in ENCODINGS[2:]),
        pytest.param(b'{"d\\u0061ta": "x", "headers": {"k": "v"}}', id="key written with an escape"),
    ],
)
def test_a_legacy_envelope_faststream_reads_is_read_the_same(data: bytes) -> None:
    """``json.loads`` skips whitespace and reads UTF-16 / UTF-32 and a UTF-8 BOM: FastStream took
    these for envelopes where the codec took them for bare bodies (and then failed to decode)."""
    assert theirs(data)[1] != {}  # FastStream reads it as an envelope
    assert ours(data) == theirs(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0b" + ENVELOPE.encode(), id="vertical tab is no JSON whitespace"),
        pytest.param(b"\x0c" + ENVELOPE.encode(), id="form feed is no JSON whitespace"),
        pytest.param("\u00a0".encode() + ENVELOPE.encode(), id="no-break space"),
        pytest.param(b'["data", "headers"]', id="a list"),
        pytest.param(b'{"data": 1}', id="data is not text"),
        pytest.param(b'  "{\\"data\\": \\"x\\"}"', id="a JSON string"),
        pytest.param(b'{"data": "x", "headers": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", id="deep"),
        pytest.param(b'{"data": "x"', id="not JSON"),
        pytest.param(b"", id="empty"),
    ],
)
def test_what_faststream_reads_as_a_bare_body_is_a_bare_body(data: bytes) -> None:
    assert theirs(data) == (data, {})
    assert ours(data) == theirs(data)


header_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(
    before=st.text(" \t\r\n", max_size=4),
    after=st.text(" \t\r\n", max_size=4),
    encoding=st.sampled_from(ENCODINGS),
    ensure_ascii=st.booleans(),
    body=header_text,
    headers=st.dictionaries(header_text, header_text, max_size=3) | st.none(),
)
def test_legacy_envelopes_read_as_faststream_reads_them(
    before: str, after: str, encoding: str, ensure_ascii: bool, body: str, headers: dict[str, str] | None
) -> None:
    envelope = {"data": body} if headers is None else {"data": body, "headers": headers}
    data = (before + json.dumps(envelope, ensure_ascii=ensure_ascii) + after).encode(encoding)
    assert ours(data) == theirs(data) == (body.encode(), headers or {})


def test_the_codec_decodes_a_legacy_envelope_after_whitespace() -> None:
    event = AgentRequestEvent(source="discord", source_id="1", user_id="u", content="hi")
    codec = EventCodec()
    body = codec.encode_json(event).decode()
    legacy = b"\n  " + json.dumps({"data": body, "headers": {"correlation_id": "c-1"}}).encode()
    message = codec.decode_entry({b"__data__": legacy}, AgentRequestEvent)
    assert (message.event, message.correlation_id) == (event, "c-1")
