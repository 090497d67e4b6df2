"""The redactor and masking functions at their edges: the shortest value masked, a value containing
another, credentials in a URL written with another percent-encoding, an unparseable URL."""

from __future__ import annotations

import json
import logging
import sys
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamic_agents._redaction import (
    MASK,
    MIN_REDACTED_LENGTH,
    REDACTOR,
    RedactingFilter,
    Redactor,
    masked_url,
    protect_loggers,
    redact_text,
)


def test_values_from_the_minimum_length_on_are_masked_shorter_ones_are_not() -> None:
    redactor = Redactor()
    shortest, short = "a" * MIN_REDACTED_LENGTH, "b" * (MIN_REDACTED_LENGTH - 1)
    redactor.register(shortest)
    redactor.register(short)
    assert shortest in redactor
    assert short not in redactor
    assert len(redactor) == 1
    assert redactor.redact(f"x {shortest} {short} x") == f"x {MASK} {short} x"
    assert MIN_REDACTED_LENGTH == 6


def test_a_value_registered_twice_counts_once() -> None:
    redactor = Redactor()
    redactor.register("canary-twice")
    redactor.register("canary-twice")
    assert len(redactor) == 1
    assert repr(redactor) == "Redactor(1 values)"


def test_a_value_containing_another_is_masked_whole() -> None:
    """Longest first: masking the shorter value first would leave the rest of the longer one."""
    for order in (("canary-in", "canary-in-a-longer-one"), ("canary-in-a-longer-one", "canary-in")):
        redactor = Redactor()
        for value in order:
            redactor.register(value)
        assert redactor.redact("key canary-in-a-longer-one") == f"key {MASK}"


def _masked_the_plain_way(forms: list[str], text: str) -> str:
    """Every form, longest first, replaced wherever it is: what the redactor must give."""
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


_SECRET_LETTERS = st.sampled_from("abAB01-_%+ é")


@settings(max_examples=200, deadline=None)
@given(
    secrets=st.lists(st.text(_SECRET_LETTERS, min_size=MIN_REDACTED_LENGTH, max_size=14), max_size=40),
    filler=st.sampled_from([0, 30, 400, 3000]),
    pieces=st.lists(st.one_of(st.text(_SECRET_LETTERS, max_size=12), st.integers(0, 39)), max_size=30),
)
def test_a_large_redactor_masks_what_masking_every_form_in_turn_masks(
    secrets: list[str], filler: int, pieces: list[str | int]
) -> None:
    """With thousands of values registered (every user's key), a log line was checked against each
    (0.5 ms a line with 10,000): past a few hundred it looks the line's own 6-letter windows up
    instead. Both ways mask what replacing every form, longest first, masks."""
    large, small = Redactor(), Redactor()
    for index in range(filler):  # values the text never holds, to make the redactor large
        large.register(f"filler-{index:05d}-zz")
    for secret in secrets:
        large.register(secret)
        small.register(secret)
    text = "".join(
        secrets[piece % len(secrets)] if isinstance(piece, int) and secrets else str(piece)
        for piece in pieces
    )
    expected = _masked_the_plain_way(small._forms, text)  # the forms each value is masked in
    assert small.redact(text) == expected
    assert large.redact(text) == expected


def test_a_query_credential_is_registered_as_written_in_the_url_too() -> None:
    """Percent-encoding is not unique (``%2f`` and ``%2F``, ``%20`` and ``+``): the value as the URL
    writes it is registered besides its decoded form, so a log line quoting the URL's query masks it."""
    raw = f"canary%2f{uuid.uuid4().hex}%20x"
    assert masked_url(f"https://h.test/v1?key={raw}") == f"https://h.test/v1?key={MASK}"
    assert REDACTOR.redact(raw) == MASK
    assert REDACTOR.redact(f"GET ?key={raw}") == f"GET ?key={MASK}"


def test_a_password_is_registered_as_written_in_the_url_too() -> None:
    raw = f"canary%2f{uuid.uuid4().hex}"
    assert masked_url(f"redis://:{raw}@cache:6379/0") == f"redis://:{MASK}@cache:6379/0"
    assert REDACTOR.redact(f"connecting to :{raw}@cache") == f"connecting to :{MASK}@cache"


@pytest.mark.parametrize(
    "value",
    [
        "canary\\back-slashed",  # a generated password with a backslash
        "canary'single\"double",  # both quotes: repr escapes one
        "canary'single-only",  # escaped as \' only where the text around it holds a " too
        "canary-pässwörd",  # non-ASCII: JSON writes \\u escapes
        "canary\ttabbed",
    ],
)
def test_a_value_is_masked_where_repr_or_json_escapes_it(value: str) -> None:
    """A log line quoting a value's ``repr`` (``%r``, a dict of settings, an exception's args) or
    its JSON (a request body) writes its backslashes, quotes and non-ASCII letters escaped."""
    redactor = Redactor()
    redactor.register(value)
    around = (value, f'{value} said "no"', f"{value}'s")
    for shown in (*map(repr, around), repr({"password": value}), repr(ValueError(f'"{value}"'))):
        assert value not in redactor.redact(shown)
        assert MASK in redactor.redact(shown), shown
    for shown in (json.dumps({"p": value}), json.dumps({"p": value}, ensure_ascii=False)):
        assert redactor.redact(shown) == f'{{"p": "{MASK}"}}', shown
    assert len(redactor) == 1


def test_an_unparseable_url_has_its_userinfo_and_query_credentials_masked() -> None:
    """``urlsplit`` refuses a URL with a broken IPv6 host: whatever userinfo it may hold is hidden,
    and its query and fragment are masked as in any URL."""
    assert masked_url("https://user:pw-canary@[::1/x?key=canary-q&a=1#token=canary-f", register=False) == (
        f"https://{MASK}@[::1/x?key={MASK}&a=1#token={MASK}"
    )
    assert masked_url("https://[::1/x?a=1", register=False) == "https://[::1/x?a=1"
    assert masked_url("https://[::1/x", register=False) == "https://[::1/x"


def test_redact_text_masks_an_unparseable_url_in_text() -> None:
    assert redact_text("GET https://u:canary-pw@[::1/x failed") == f"GET https://{MASK}@[::1/x failed"


def test_key_shapes_start_at_their_documented_lengths() -> None:
    """A known prefix with 16 characters after it; a run of 20 letters and digits mixed; a run of
    32 with no separator at all. One character fewer is a word."""
    from dynamic_agents._redaction import looks_like_a_key

    assert looks_like_a_key("sk-" + "a" * 16)
    assert not looks_like_a_key("sk-" + "a" * 15)
    assert looks_like_a_key("a1" * 10)
    assert not looks_like_a_key("a1" * 9 + "a")
    assert not looks_like_a_key("a" * 20)  # letters only: no key until the long run
    assert not looks_like_a_key("1" * 20)  # digits only: an id, not a key
    assert looks_like_a_key("a" * 32)
    assert not looks_like_a_key("a" * 31)
    assert not looks_like_a_key("OPENAI_API_KEY_" + "a1" * 9 + "a")


@pytest.mark.parametrize(
    "text",
    [
        "FileNotFoundError: No such file or directory: '/var/lib/agents/specs/customersupportagent.yaml'",
        "404 Not Found for url 'http://localhost:8080/api/v1/agents/customersupport/sessions'",
        "spec store at /srv/dynamicagents/specifications/v2/knowledgebaseassistant",
    ],
)
def test_a_lower_case_path_is_judged_a_segment_at_a_time(text: str) -> None:
    """A file path or a URL's path of lower-case words runs long with no ``_ - .`` in it: taken
    whole, it looked like a key, and an error reply lost the very path it was about."""
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # an AWS secret access key holds "/": with upper-case letters, the run is judged whole
        (
            "aws_secret_access_key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        # a bot token in a URL's path (Telegram's shape), its last piece joined to the method
        (
            "POST https://api.telegram.org/bot123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
            "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        ),
        # a key-shaped segment of a lower-case path is still a key
        ("GET /v1/keys/0123456789abcdef0123456789abcdef failed", "0123456789abcdef0123456789abcdef"),
        ("GET /v1/keys/a1b2c3d4e5f6a7b8c9d0e1f2/rotate failed", "a1b2c3d4e5f6a7b8c9d0e1f2"),
    ],
)
def test_keys_in_paths_are_still_masked(text: str, key: str) -> None:
    shown = redact_text(text)
    assert key not in shown
    assert MASK in shown


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("dynamic_agents.test", logging.WARNING, __file__, 1, message, args, None)


def test_the_filter_passes_every_record_with_or_without_values_to_mask() -> None:
    record = _record("plain %s", "text")
    assert RedactingFilter(Redactor()).filter(record) is True
    assert (record.msg, record.args) == ("plain %s", ("text",))  # nothing registered: left as it is
    redactor = Redactor()
    redactor.register("canary-filter-0")
    assert RedactingFilter(redactor).filter(_record("plain")) is True


def test_the_filter_masks_a_secret_in_a_message_without_arguments() -> None:
    redactor = Redactor()
    redactor.register("canary-filter-1")
    record = _record("token canary-filter-1 refused")
    assert RedactingFilter(redactor).filter(record)
    assert record.getMessage() == f"token {MASK} refused"


def test_the_filter_masks_a_secret_in_a_text_given_as_extra() -> None:
    """``extra=`` fields are the record's attributes, which a formatter may print (``%(url)s``) and
    a JSON formatter writes every one of."""
    redactor = Redactor()
    redactor.register("canary-extra-1")
    logger = logging.getLogger(f"canary.extra.{uuid.uuid4().hex}")
    record = logger.makeRecord(
        logger.name,
        logging.WARNING,
        __file__,
        1,
        "calling",
        None,
        None,
        extra={"url": "https://h.test/?key=canary-extra-1", "attempt": 2},
    )
    assert RedactingFilter(redactor).filter(record)
    assert record.url == f"https://h.test/?key={MASK}"  # type: ignore[attr-defined]
    assert record.attempt == 2  # type: ignore[attr-defined]  # not text: left as it is
    shown = logging.Formatter("%(message)s %(url)s").format(record)
    assert shown == f"calling https://h.test/?key={MASK}"


class TracebackFromExcInfo(logging.Formatter):
    """Formats the traceback from the exception itself, as JSON formatters and Sentry's do."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info:
            return f"{record.getMessage()}\n{self.formatException(record.exc_info)}"
        return f"{record.getMessage()}\n{record.exc_text}"


def test_a_traceback_that_quotes_a_secret_is_left_only_as_masked_text() -> None:
    redactor = Redactor()
    redactor.register("canary-traceback-1")
    try:
        try:
            raise ValueError("refused key canary-traceback-1")
        except ValueError as error:
            raise RuntimeError("the call failed") from error
    except RuntimeError:
        record = logging.getLogger("canary").makeRecord(
            "canary", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    assert RedactingFilter(redactor).filter(record)
    for formatter in (logging.Formatter(), TracebackFromExcInfo()):
        shown = formatter.format(record)
        assert "canary-traceback-1" not in shown
        assert f"ValueError: refused key {MASK}" in shown
        assert "RuntimeError: the call failed" in shown


def test_a_traceback_without_a_secret_keeps_its_exception() -> None:
    redactor = Redactor()
    redactor.register("canary-traceback-2")
    try:
        raise ValueError("nothing secret")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.getLogger("canary").makeRecord(
        "canary", logging.ERROR, __file__, 1, "failed", None, exc_info
    )
    assert RedactingFilter(redactor).filter(record)
    assert record.exc_info == exc_info  # for a handler that sends the exception itself (Sentry's)


def test_arguments_that_do_not_fit_are_masked_one_by_one_whatever_their_shape() -> None:
    """The handler reports such a record with its arguments: a tuple stays a tuple of masked
    texts, a mapping a mapping, anything else one masked text."""
    redactor = Redactor()
    redactor.register("canary-args-1")
    as_tuple = _record("%d tries with %s", "canary-args-1", 3)
    as_mapping = _record("%(n)d tries", {"n": "canary-args-1"})
    as_list = _record("%d tries", 1)
    as_list.args = ["canary-args-1"]  # type: ignore[assignment]  # a caller's own record
    for record in (as_tuple, as_mapping, as_list):
        assert RedactingFilter(redactor).filter(record)
    assert as_tuple.args == (MASK, "3")
    assert as_mapping.args == {"n": MASK}
    assert as_list.args == (f"['{MASK}']",)


def test_protect_loggers_filters_a_logger_and_its_handlers_once() -> None:
    name = f"canary.protected.{uuid.uuid4().hex}"
    logger = logging.getLogger(name)
    handler = logging.NullHandler()
    logger.addHandler(handler)
    redactor = Redactor()
    redactor.register("canary-protected-1")
    protect_loggers(name, redactor=redactor)
    protect_loggers(name, redactor=redactor)
    for holder in (logger, handler):
        assert [type(f) for f in holder.filters] == [RedactingFilter]
    record = logger.makeRecord(name, logging.WARNING, __file__, 1, "key %s", ("canary-protected-1",), None)
    assert logger.filter(record)
    assert record.getMessage() == f"key {MASK}"
