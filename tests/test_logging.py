from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from dynamic_agents._logging import get_logger, log_context


def test_records_carry_request_and_session_ids(caplog: pytest.LogCaptureFixture) -> None:
    logger = get_logger("events")
    assert logger.name == "dynamic_agents.events"
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        logger.debug("outside")
        with log_context(request_id="r1", session_id="s1"):
            logger.debug("inside")
    outside, inside = caplog.records
    assert (outside.request_id, outside.session_id) == (None, None)  # type: ignore[attr-defined]
    assert (inside.request_id, inside.session_id) == ("r1", "s1")  # type: ignore[attr-defined]


async def test_ids_follow_tasks_and_do_not_leak_between_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = get_logger("worker")

    async def handle(request_id: str) -> None:
        with log_context(request_id=request_id, session_id=f"s-{request_id}"):
            await asyncio.sleep(0)
            logger.debug("handled %s", request_id)

    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        await asyncio.gather(*(handle(str(n)) for n in range(5)))
    assert sorted(
        (r.getMessage(), r.request_id, r.session_id)  # type: ignore[attr-defined]
        for r in caplog.records
    ) == [(f"handled {n}", str(n), f"s-{n}") for n in range(5)]


def test_library_adds_no_handler_but_a_null_one() -> None:
    root = logging.getLogger("dynamic_agents")
    assert all(isinstance(h, logging.NullHandler) for h in root.handlers)


def test_get_logger_attaches_its_filters_once() -> None:
    logger = get_logger("routing")
    get_logger("routing")
    assert [type(f).__name__ for f in logger.filters] == ["_ContextFilter", "RedactingFilter"]


def test_part_loggers_mask_secret_values(caplog: pytest.LogCaptureFixture) -> None:
    from dynamic_agents.secrets import SecretValue

    secret = SecretValue("canary-logging-0000")
    logger = get_logger("secrets")
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        logger.warning("token is %s", secret.reveal())
        try:
            raise ValueError(f"bad key {secret.reveal()}")
        except ValueError:
            logger.exception("failed")
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "canary-logging-0000" not in text
    assert "token is **********" in text


def test_a_record_whose_arguments_do_not_fit_is_left_to_the_handler_masked() -> None:
    """A logging call with the wrong arguments (a caller's bug) must not raise out of the call: the
    handler reports such a record (``--- Logging error ---``, with its message and arguments),
    so those are masked."""
    from dynamic_agents._redaction import RedactingFilter
    from dynamic_agents.secrets import SecretValue

    secret = SecretValue("canary-logging-1111")
    record = get_logger("secrets").makeRecord(
        "dynamic_agents.secrets", logging.WARNING, __file__, 1, "%d tries with %s", (secret.reveal(),), None
    )
    assert RedactingFilter().filter(record)
    assert "canary-logging-1111" not in f"{record.msg!r} {record.args!r}"
    with pytest.raises(TypeError):
        record.getMessage()  # still broken, for the handler to report


def test_a_secret_is_masked_in_urls_too_where_it_is_percent_encoded(caplog: pytest.LogCaptureFixture) -> None:
    """A secret with characters a URL must escape (``/``, ``+``, ``@``, a space) appears in a logged
    URL or query string encoded; and a password read from a URL is encoded there, its value not."""
    from urllib.parse import quote, quote_plus

    from dynamic_agents._redaction import masked_url
    from dynamic_agents.secrets import SecretValue

    secret = SecretValue("canary/logging+2222 @x").reveal()
    logger = get_logger("secrets")
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        logger.warning("GET https://identity.test/v1/check?key=%s", quote(secret, safe=""))
        logger.warning("POST body token=%s", quote_plus(secret))
        logger.warning("redis://:%s@cache:6379/0", quote(secret))
    assert "canary" not in caplog.text

    assert masked_url("redis://:canary%2Furl%40password3333@cache:6379") == "redis://:**********@cache:6379"
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        logger.warning("AUTH with %s refused", "canary/url@password3333")  # the value, decoded
    assert "password3333" not in caplog.text


def test_credentials_in_a_query_string_are_masked_by_masked_url_and_in_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``masked_url`` masks (and registers) the values of credential-named query parameters, any
    case, encoded or not; the RedactingFilter then masks them wherever a log line quotes them."""
    import uuid
    from urllib.parse import quote

    from dynamic_agents._redaction import masked_url

    key = f"AIza-canary-{uuid.uuid4().hex}"
    sas = f"canary/sas+{uuid.uuid4().hex}="
    url = f"https://generativelanguage.googleapis.com/v1?Key={key}&sig={quote(sas, safe='')}&timeout=5"
    shown = masked_url(url)
    assert shown == "https://generativelanguage.googleapis.com/v1?Key=**********&sig=**********&timeout=5"
    ordinary = "https://h.test/v1?api-version=2024-06-01&timeout=5&max_tokens=100&token_type=bearer&keyword=x"
    assert masked_url(ordinary) == ordinary
    for name in ("apiKey", "X-Amz-Signature", "X-Amz-Security-Token", "client_secret", "subscription-key"):
        assert masked_url(f"https://h.test/v1?{name}=canary-{name}") == f"https://h.test/v1?{name}=**********"
    assert masked_url("https://u:pw-canary@h.test/v1?access_token=tok-canary-1#top") == (
        "https://u:**********@h.test/v1?access_token=**********#top"
    )
    logger = get_logger("secrets")
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        logger.warning("GET %s failed", url)
        logger.warning("the SAS was %s", sas)  # the value itself, decoded
    assert "canary" not in caplog.text


def test_a_token_in_a_url_fragment_is_masked() -> None:
    """OAuth's implicit flow returns the token in the fragment: ``#access_token=…``."""
    from dynamic_agents._redaction import REDACTOR, masked_url

    url = "https://app.test/callback#access_token=canary-fragment-4444&token_type=bearer"
    assert masked_url(url) == "https://app.test/callback#access_token=**********&token_type=bearer"
    assert "canary-fragment-4444" in REDACTOR
    assert masked_url("https://app.test/docs#section-2") == "https://app.test/docs#section-2"


def test_text_masked_for_a_message_registers_nothing() -> None:
    """``redact_text`` runs on every error reply; a provider's error quoting a signed URL has a new
    signature each time, and registering each would grow the redactor, which every log record is
    checked against, for the life of the process."""
    import uuid

    from dynamic_agents._redaction import REDACTOR, redact_text

    before = len(REDACTOR)
    for _ in range(20):
        signature, password = uuid.uuid4().hex, uuid.uuid4().hex
        text = f"GET https://u:{password}@blob.test/f?sv=1&sig={signature} failed"
        shown = redact_text(text)
        assert signature not in shown
        assert password not in shown
    assert len(REDACTOR) == before


def test_a_url_whose_host_is_a_registered_secret_still_has_its_credentials_masked() -> None:
    """An endpoint can be a secret (Azure's): masked first, it hid the URL around it, whose key
    then went out as it was (seen when another test had registered such an endpoint)."""
    from dynamic_agents._redaction import redact_text
    from dynamic_agents.secrets import SecretValue

    endpoint = SecretValue("https://canary-endpoint.example.com").reveal()
    shown = redact_text(f"GET {endpoint}/v1/search?api_key=canary-query-0001 failed")
    assert "canary-query-0001" not in shown
    assert "canary-endpoint" not in shown


def test_every_part_logger_is_documented() -> None:
    root = Path(__file__).parents[1]
    src = (root / "src" / "dynamic_agents").rglob("*.py")
    parts = {part for path in src for part in re.findall(r'get_logger\("([a-z_.]+)"\)', path.read_text())}
    assert parts  # the scan found the library's loggers
    documented = (root / "docs" / "logging.md").read_text()
    assert [part for part in sorted(parts) if f"`dynamic_agents.{part}`" not in documented] == []
