"""FastStream's Redis message formats: the binary envelope ``BinaryMessageFormatV1`` and its fallbacks.

Layout (all integers big-endian)::

    magic (8 bytes) 89 42 49 4E 0D 0A 1A 0A
    version u16 = 1
    headers_start u32, data_start u32
    at headers_start: count u16, then count x (key, value), each a u16 byte length + UTF-8 bytes
    at data_start: the body, to the end

A reader follows the offsets (FastStream writes ``headers_start = 18`` but a reader must not assume
it). Header keys and values are written as ASCII only: FastStream's own writer stores the character
count of a string instead of its byte count, so non-ASCII headers would not read back on its side.
Such an envelope from a FastStream peer is still read: when the byte counts do not fit, the lengths
are read as character counts.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from dynamic_agents._frozen import slot_init
from dynamic_agents.exceptions import EnvelopeError

__all__ = [
    "DATA_FIELD",
    "MAGIC",
    "Envelope",
    "decode_envelope",
    "encode_envelope",
    "fits_in_header",
    "read_entry_data",
]

MAGIC: Final = b"\x89BIN\r\n\x1a\n"
VERSION: Final = 1
DATA_FIELD: Final = "__data__"
"""The one stream-entry field FastStream reads and writes."""

_PREAMBLE: Final = struct.Struct(">8sHII")  # magic, version, headers_start, data_start
_U16: Final = struct.Struct(">H")
_U16_MAX: Final = 0xFFFF


@slot_init
@dataclass(frozen=True, slots=True)
class Envelope:
    """A message body with its headers, as FastStream carries them."""

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def fits_in_header(text: str) -> bool:
    """Whether :func:`encode_envelope` can write ``text`` as a header name or value: ASCII (what a
    FastStream peer reads back), at most 65535 bytes (a u16 length)."""
    return text.isascii() and len(text) <= _U16_MAX


def _shown(text: str, *, header: str | None = None) -> str:
    """A header's name, or the value of ``header``, as errors show a value: masked where it may be
    a secret, cut to 60 characters (a name may be 65,535 bytes long)."""
    from dynamic_agents.secrets.references import shown_value  # on the error path only

    return shown_value(text, name=header) or repr(text[:60])


def _ascii(kind: str, text: str, *, header: str | None = None) -> bytes:
    """``text`` as checked bytes: ``kind`` says what it is (``name``, ``value``), ``header`` whose
    value it is."""
    try:
        encoded = text.encode("ascii")
    except UnicodeEncodeError:
        raise EnvelopeError(
            f"header {_label(kind, header)} {_shown(text, header=header)} is not ASCII: FastStream "
            "peers cannot read non-ASCII headers back; percent-encode it, or carry the value in the "
            "event body"
        ) from None
    if len(encoded) > _U16_MAX:
        raise EnvelopeError(
            f"header {_label(kind, header)} is {len(encoded)} bytes long, over the {_U16_MAX} limit"
        )
    return encoded


def _label(kind: str, header: str | None) -> str:
    return kind if header is None else f"{_shown(header)} {kind}"


def encode_envelope(body: bytes, headers: Mapping[str, str]) -> bytes:
    """The binary envelope of ``body`` with ``headers`` in their given order.

    For the same body bytes and headers the result equals what FastStream writes.
    """
    if len(headers) > _U16_MAX:
        raise EnvelopeError(f"{len(headers)} headers is over the {_U16_MAX} limit")
    parts: list[bytes] = [b"", _U16.pack(len(headers))]  # parts[0]: the preamble, once the size is known
    for key, value in headers.items():
        try:  # the common case in one step; the checks below name what is wrong
            key_bytes, value_bytes = key.encode("ascii"), value.encode("ascii")
        except (AttributeError, UnicodeEncodeError):
            key_bytes, value_bytes = _header(key, value)
        if len(key_bytes) > _U16_MAX or len(value_bytes) > _U16_MAX:
            key_bytes, value_bytes = _header(key, value)
        parts += (_U16.pack(len(key_bytes)), key_bytes, _U16.pack(len(value_bytes)), value_bytes)
    data_start = sum(map(len, parts))
    parts[0] = _PREAMBLE.pack(MAGIC, VERSION, _PREAMBLE.size, _PREAMBLE.size + data_start)
    parts.append(body)
    return b"".join(parts)


def encode_with_correlation_id(body: bytes, correlation_id: str, content_type: str) -> bytes:
    """``encode_envelope(body, {"correlation_id": …, "content-type": …})``: the headers every
    event carries, in one step (most envelopes have no others)."""
    try:
        value = correlation_id.encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        value = b""
    if not value or len(value) > _U16_MAX:  # a header the general path refuses (or writes) properly
        return encode_envelope(body, {"correlation_id": correlation_id, "content-type": content_type})
    head, tail = _correlation_headers(content_type)
    data_start = _PREAMBLE.size + len(head) + 2 + len(value) + len(tail)
    preamble = _PREAMBLE.pack(MAGIC, VERSION, _PREAMBLE.size, data_start)
    return b"".join((preamble, head, _U16.pack(len(value)), value, tail, body))


@functools.lru_cache(maxsize=16)
def _correlation_headers(content_type: str) -> tuple[bytes, bytes]:
    """The fixed parts around the correlation id: header count and name before, content type after."""
    name, kind_name, kind = (
        b"correlation_id",
        b"content-type",
        _ascii("value", content_type, header="content-type"),
    )
    head = _U16.pack(2) + _U16.pack(len(name)) + name
    return head, _U16.pack(len(kind_name)) + kind_name + _U16.pack(len(kind)) + kind


def _header(key: object, value: object) -> tuple[bytes, bytes]:
    """A header's name and value as checked bytes; raises :class:`EnvelopeError` naming the problem."""
    if not isinstance(key, str):
        raise EnvelopeError(f"header names must be strings, got {type(key).__name__}")
    if not isinstance(value, str):
        raise EnvelopeError(f"header {_shown(key)} must be a string, got {type(value).__name__}")
    return _ascii("name", key), _ascii("value", value, header=key)


def decode_envelope(data: bytes) -> Envelope:
    """Read a binary envelope strictly: every offset and length must stay inside the data."""
    if len(data) >= _PREAMBLE.size:  # the common case in one pass; anything odd, the checked path
        magic, version, offset, data_start = _PREAMBLE.unpack_from(data)
        if magic == MAGIC and version == VERSION and _PREAMBLE.size <= offset <= data_start <= len(data):
            try:
                headers = _read_headers(data, offset, data_start)
            except (struct.error, UnicodeDecodeError, ValueError):
                pass
            else:
                return Envelope(data[data_start:], headers)  # positional: no keyword dict per call
    return _decode_envelope_checked(data)


def _read_headers(data: bytes, offset: int, data_start: int) -> dict[str, str]:
    """The headers between ``offset`` and ``data_start``; ``ValueError`` when anything runs past."""
    if offset + 2 > data_start:
        raise ValueError("no header count before the body")
    (count,) = _U16.unpack_from(data, offset)
    offset += 2
    headers: dict[str, str] = {}
    for _ in range(count):
        (length,) = _U16.unpack_from(data, offset)
        key_end = offset + 2 + length
        (length,) = _U16.unpack_from(data, key_end)
        end = key_end + 2 + length
        if end > data_start:
            raise ValueError("past the headers")
        headers[data[offset + 2 : key_end].decode("utf-8")] = data[key_end + 2 : end].decode("utf-8")
        offset = end
    if offset != data_start:  # a gap: maybe lengths FastStream counted in characters (checked path)
        raise ValueError("the headers end before the body")
    return headers


def _read_headers_by_characters(data: bytes, offset: int, data_start: int) -> dict[str, str] | None:
    """The headers read with each length a count of *characters*, as FastStream 0.7's writer stores
    it (``len(str)``, not the UTF-8 byte count) — or ``None`` unless that reading ends exactly
    where the body starts (the body offset FastStream writes is right)."""
    (count,) = _U16.unpack_from(data, offset)
    offset += 2
    strings: list[str] = []
    for _ in range(2 * count):
        if offset + 2 > data_start:
            return None
        (characters,) = _U16.unpack_from(data, offset)
        offset += 2
        end = offset
        for _ in range(characters):  # one UTF-8 sequence per character, its length from its lead byte
            if end >= data_start:
                return None
            lead = data[end]
            end += 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if end > data_start:
            return None
        try:
            strings.append(data[offset:end].decode("utf-8"))
        except UnicodeDecodeError:
            return None
        offset = end
    if offset != data_start:
        return None
    return dict(zip(strings[::2], strings[1::2], strict=True))


def _decode_envelope_checked(data: bytes) -> Envelope:
    """:func:`decode_envelope` step by step, raising :class:`EnvelopeError` with what is wrong."""
    if len(data) < _PREAMBLE.size:
        raise EnvelopeError(
            f"envelope truncated: {len(data)} bytes, the fixed preamble alone is {_PREAMBLE.size}"
        )
    magic, version, headers_start, data_start = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise EnvelopeError(f"not a FastStream binary envelope: magic bytes {magic!r}")
    if version != VERSION:
        raise EnvelopeError(f"envelope version {version} is not supported (only {VERSION})")
    if not _PREAMBLE.size <= headers_start <= data_start <= len(data):
        raise EnvelopeError(
            f"envelope offsets out of range: headers_start={headers_start}, "
            f"data_start={data_start}, length={len(data)}"
        )
    view = memoryview(data)[:data_start]
    offset = headers_start

    def read_string(index: int, header: str | None = None) -> str:
        """Header ``index``'s name, or (``header`` given) the value of the header of that name."""
        nonlocal offset

        def what() -> str:  # on the error path only: a name is shown as errors show a value
            return f"header {index} name" if header is None else f"header {_shown(header)} value"

        if offset + _U16.size > data_start:
            raise EnvelopeError(f"envelope truncated: {what()} length at byte {offset} runs past the headers")
        (length,) = _U16.unpack_from(view, offset)
        offset += _U16.size
        end = offset + length
        if end > data_start:
            raise EnvelopeError(
                f"envelope corrupt: {what()} of {length} bytes at byte {offset} runs past the "
                f"headers (which end at byte {data_start})"
            )
        try:
            text = bytes(view[offset:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeError(f"envelope corrupt: {what()} at byte {offset} is not UTF-8") from None
        offset = end
        return text

    if headers_start + _U16.size > data_start:
        raise EnvelopeError("envelope truncated: no header count before the body")
    (count,) = _U16.unpack_from(view, headers_start)
    offset += _U16.size
    headers: dict[str, str] = {}
    try:
        for index in range(count):
            key = read_string(index)
            headers[key] = read_string(index, key)
    except EnvelopeError:
        # FastStream 0.7 writes non-ASCII header strings with their character count as length
        miscounted = _read_headers_by_characters(data, headers_start, data_start)
        if miscounted is None:
            raise
        return Envelope(body=data[data_start:], headers=miscounted)
    if offset != data_start:  # a gap before the body: the same miscount can end up here
        headers = _read_headers_by_characters(data, headers_start, data_start) or headers
    return Envelope(body=data[data_start:], headers=headers)


def read_entry_data(data: bytes) -> Envelope:
    """Read a ``__data__`` value as FastStream does: binary envelope, legacy JSON envelope, raw body.

    The legacy JSON envelope is an object with a string ``data`` and an optional ``headers`` object
    and no other keys, read as FastStream reads it (``json.loads``: whitespace around it, UTF-8,
    UTF-16 or UTF-32); anything else is the body itself. A value that starts like the binary magic
    but is malformed or truncated raises :class:`EnvelopeError` instead of passing as a raw body,
    as does a legacy envelope whose ``data`` or a header holds a lone surrogate (``"\\ud800"``:
    valid JSON, but no UTF-8 text).
    """
    if data[:1] == MAGIC[:1]:  # 0x89 never starts JSON or UTF-8 text: a (maybe broken) envelope
        return decode_envelope(data)
    if _may_be_a_json_envelope(data):
        try:
            parsed = json.loads(data)  # as FastStream reads it (without orjson): bytes in any UTF
        except (ValueError, RecursionError):  # FastStream: any failure is a bare body
            return Envelope(body=data)
        if (
            isinstance(parsed, dict)
            and isinstance(parsed.get("data"), str)
            and set(parsed) <= {"data", "headers"}
            and isinstance(parsed.get("headers", {}), dict)
        ):
            headers: dict[str, str] = {}
            for key, value in parsed.get("headers", {}).items():
                if value is None:  # absent, as FastStream reads it (not a reply_to channel "null")
                    continue
                text = value if isinstance(value, str) else json.dumps(value)
                _legacy_utf8("a header name", str(key))
                _legacy_utf8("header", text, header=str(key))
                headers[str(key)] = text
            return Envelope(body=_legacy_utf8("'data'", parsed["data"]), headers=headers)
    return Envelope(body=data)


_JSON_WHITESPACE: Final = b" \t\n\r"
_BYTE_ORDER_MARKS: Final = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")  # UTF-8, UTF-16/32 LE, UTF-16 BE


def _may_be_a_json_envelope(data: bytes) -> bool:
    """``False`` only where ``json.loads`` cannot find an object with a ``data`` key: a cheap
    test before parsing, not the decision. ``json.loads`` skips JSON whitespace, and reads bytes
    as UTF-8, UTF-16 or UTF-32, told apart by a byte order mark or by zero bytes among the first
    four; a key may be written with an escape (``"d\\u0061ta"``)."""
    if data.startswith(_BYTE_ORDER_MARKS) or b"\x00" in data[:4]:
        return True  # a byte order mark, or UTF-16 / UTF-32: the parser decides
    if data[:1] != b"{" and data.lstrip(_JSON_WHITESPACE)[:1] != b"{":
        return False
    return b'"data"' in data or b"\\u" in data


def _legacy_utf8(what: str, text: str, *, header: str | None = None) -> bytes:
    """``text`` of a legacy JSON envelope as UTF-8. JSON can escape a lone surrogate (``"\\ud800"``),
    which no UTF-8 body or header holds: :class:`EnvelopeError` says where it is (``what``, and
    the name of the ``header`` whose value it is)."""
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        where = what if header is None else f"{what} {_shown(header)}"
        raise EnvelopeError(
            f"legacy JSON envelope: {where} is not valid Unicode: a lone surrogate "
            f"U+{ord(text[error.start]):04X} at index {error.start}"
        ) from None
