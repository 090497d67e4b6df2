"""The binary envelope at its edges: the u16 limits, the one-pass reader taking every well-formed
envelope, the offsets followed as written, FastStream's character-counted headers, and the
errors of the checked reader."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from dynamic_agents.events import envelope as envelope_module
from dynamic_agents.events.envelope import MAGIC, decode_envelope, encode_envelope, read_entry_data
from dynamic_agents.exceptions import EnvelopeError

U16_MAX = 0xFFFF


def raw_envelope(
    headers: list[tuple[str, str]], body: bytes, *, by_characters: bool = False, gap: bytes = b""
) -> bytes:
    """An envelope written by hand: lengths as byte counts, or as FastStream 0.7 writes them (the
    character count), with ``gap`` between the headers and the body (the offset points past it)."""
    part = struct.pack(">H", len(headers))
    for key, value in headers:
        for text in (key, value):
            encoded = text.encode()
            part += struct.pack(">H", len(text) if by_characters else len(encoded)) + encoded
    return MAGIC + struct.pack(">HII", 1, 18, 18 + len(part) + len(gap)) + part + gap + body


def test_a_header_of_the_u16_maximum_is_written_one_byte_more_is_refused() -> None:
    longest = "v" * U16_MAX
    data = encode_envelope(b"body", {"k" * U16_MAX: longest})
    assert decode_envelope(data).headers == {"k" * U16_MAX: longest}
    with pytest.raises(EnvelopeError, match=r"^header 'x' value is 65536 bytes long, over the 65535 limit$"):
        encode_envelope(b"body", {"x": longest + "v"})
    with pytest.raises(EnvelopeError, match=r"^header name is 65536 bytes long, over the 65535 limit$"):
        encode_envelope(b"body", {"k" * (U16_MAX + 1): "v"})
    with pytest.raises(
        EnvelopeError, match=r"^header \S{1,60} value is 65536 bytes long, over the 65535 limit$"
    ):
        encode_envelope(b"body", {"k" * U16_MAX: longest + "v"})  # the name, at the maximum, is fine (cut)


def test_the_u16_maximum_of_headers_is_written_one_more_is_refused() -> None:
    headers = {str(index): "" for index in range(U16_MAX)}
    assert decode_envelope(encode_envelope(b"", headers)).headers == headers
    headers[str(U16_MAX)] = ""
    with pytest.raises(EnvelopeError, match=r"^65536 headers is over the 65535 limit$"):
        encode_envelope(b"", headers)


@pytest.mark.parametrize("correlation_id", ["c" * U16_MAX, "c" * (U16_MAX + 1), "", "é-1"])
def test_the_correlation_id_encoder_writes_or_refuses_as_the_general_one(correlation_id: str) -> None:
    headers = {"correlation_id": correlation_id, "content-type": "application/json"}
    try:
        expected = encode_envelope(b"{}", headers)
    except EnvelopeError as error:
        with pytest.raises(EnvelopeError, match=str(error)):
            envelope_module.encode_with_correlation_id(b"{}", correlation_id, "application/json")
    else:
        assert (
            envelope_module.encode_with_correlation_id(b"{}", correlation_id, "application/json") == expected
        )
        assert decode_envelope(expected) == envelope_module.Envelope(b"{}", headers)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("correlation_id", "c-1"), ("content-type", "application/json")],
        [("x-user", "Zoë — 🌦"), ("ключ", "")],
    ],
)
@pytest.mark.parametrize("body", [b"", b"{}", b"\x89BIN"])
def test_a_well_formed_envelope_is_read_in_one_pass(
    headers: list[tuple[str, str]], body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common case never takes the step-by-step reader (which names what is wrong)."""

    def checked(data: bytes) -> envelope_module.Envelope:
        raise AssertionError("the checked reader was used")

    monkeypatch.setattr(envelope_module, "_decode_envelope_checked", checked)
    assert decode_envelope(raw_envelope(headers, body)) == envelope_module.Envelope(body, dict(headers))


@pytest.mark.parametrize("headers", [[], [("correlation_id", "c-1")], [("x-user", "Zoë")]])
def test_the_body_starts_where_the_offset_says_after_a_gap(headers: list[tuple[str, str]]) -> None:
    """A reader follows the offsets: bytes between the headers and ``data_start`` are skipped."""
    data = raw_envelope(headers, b"{}", gap=b"\x00\x07\x00")
    assert decode_envelope(data) == envelope_module.Envelope(b"{}", dict(headers))
    assert read_entry_data(data) == envelope_module.Envelope(b"{}", dict(headers))


@pytest.mark.parametrize(
    "value",
    [
        "\u07ff",  # two UTF-8 bytes, lead 0xDF
        "\u0915",  # three, lead 0xE0 (Devanagari ka)
        "\u20ac",  # three, lead 0xE2 (euro)
        "\uff01",  # three, lead 0xEF (fullwidth !)
        "\U0001f326",  # four, lead 0xF0
        "\x7fé",  # DEL, the highest one-byte character
        "éé",  # read by bytes, its count (2) ends on a character boundary: "é" and a gap
        "é\u0915\U0001f326\uff01a",
    ],
)
@pytest.mark.parametrize("body", [b"", b"{}"])
def test_headers_counted_in_characters_are_read_for_every_utf8_length(value: str, body: bytes) -> None:
    """FastStream 0.7 writes a header string's character count where its byte count belongs."""
    for headers in (
        [(value, "key"), ("x-user", value)],
        [("x-user", value), ("empty", "")],
        [("x-user", value)],
    ):
        data = raw_envelope(headers, body, by_characters=True)
        assert decode_envelope(data) == envelope_module.Envelope(body, dict(headers))


def test_an_envelope_with_other_magic_bytes_is_refused() -> None:
    data = bytearray(raw_envelope([("a", "b")], b"{}"))
    data[1:4] = b"BAD"
    with pytest.raises(EnvelopeError, match=r"^not a FastStream binary envelope: magic bytes b'\\x89BAD"):
        decode_envelope(bytes(data))
    with pytest.raises(EnvelopeError, match="not a FastStream binary envelope"):
        read_entry_data(bytes(data))


@pytest.mark.parametrize("body", [b"", b"{}"])
def test_a_header_count_with_no_header_after_it_is_refused(body: bytes) -> None:
    data = MAGIC + struct.pack(">HII", 1, 18, 20) + struct.pack(">H", 1) + body
    with pytest.raises(
        EnvelopeError, match=r"^envelope truncated: header 0 name length at byte 20 runs past the headers$"
    ):
        decode_envelope(data)
    stray = MAGIC + struct.pack(">HII", 1, 18, 21) + struct.pack(">H", 1) + b"x" + body  # half a length
    with pytest.raises(
        EnvelopeError, match=r"^envelope truncated: header 0 name length at byte 20 runs past"
    ):
        decode_envelope(stray)


@pytest.mark.parametrize("body", [b"", b"{}"])
def test_a_header_running_past_the_body_offset_is_refused(body: bytes) -> None:
    """Also when read as characters: nothing past ``data_start`` is taken for a header's."""
    data = MAGIC + struct.pack(">HII", 1, 18, 25) + struct.pack(">HH", 1, 5) + b"abc" + body
    with pytest.raises(
        EnvelopeError,
        match=r"^envelope corrupt: header 0 name of 5 bytes at byte 22 runs past the headers "
        r"\(which end at byte 25\)$",
    ):
        decode_envelope(data)


SECRET_NAME = "sk-proj-canary0045abcdefghijklmnopqrstuvwxyz"  # a key pasted as a header name


def value_past_the_headers(name: str) -> bytes:
    """An envelope whose one header's value says it is 1,000 bytes long, with 5 before the body."""
    part = struct.pack(">HH", 1, len(name)) + name.encode() + struct.pack(">H", 1000) + b"value"
    return MAGIC + struct.pack(">HII", 1, 18, 18 + len(part)) + part + b"{}"


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param(lambda: encode_envelope(b"{}", {SECRET_NAME: 5}), id="a value that is no string"),
        pytest.param(lambda: encode_envelope(b"{}", {SECRET_NAME: "v" * 70_000}), id="a value too long"),
        pytest.param(lambda: encode_envelope(b"{}", {SECRET_NAME: "caf\u00e9"}), id="a non-ASCII value"),
        pytest.param(
            lambda: decode_envelope(value_past_the_headers(SECRET_NAME)), id="a value past the headers"
        ),
        pytest.param(
            lambda: read_entry_data(b'{"data": "{}", "headers": {"%s": "\\ud800"}}' % SECRET_NAME.encode()),
            id="a legacy value with a lone surrogate",
        ),
        pytest.param(lambda: encode_envelope(b"{}", {"k" * U16_MAX: 5}), id="a long name"),
    ],
)
def test_a_header_name_in_an_error_is_masked_and_cut(refused: Callable[[], object]) -> None:
    """An error about a header's value names the header, as errors show a value: masked where it
    may be a secret (a key pasted as a name), cut to 60 characters (a name can be 65,535 bytes
    long, and the error goes to logs and dead-letter reasons whole)."""
    with pytest.raises(EnvelopeError) as caught:
        refused()
    message = str(caught.value)
    assert "canary" not in message
    assert len(message) < 300
