from __future__ import annotations

import pytest

from dynamic_agents.events import StreamNames
from dynamic_agents.exceptions import ConfigurationError


def test_default_names_match_the_seed() -> None:
    names = StreamNames()
    assert names.requests == "agent:requests"
    assert names.events == "agent:events"
    assert names.responses("discord", "123456789") == "agent:responses:discord:123456789"


def test_a_reply_stream_reads_its_source_as_events_do() -> None:
    """Events lower-case their source, so every builder of a reply stream name must too: a
    consumer asking for "Discord" reads the stream a request from "Discord" is answered on."""
    names = StreamNames()
    assert (
        names.responses("Discord", "C1") == names.responses("discord", "C1") == "agent:responses:discord:C1"
    )


def test_hash_tagged_prefix_puts_every_key_in_one_slot() -> None:
    names = StreamNames("{agents}")
    keys = [
        names.requests,
        names.events,
        names.dead_letters,
        names.responses("slack", "C1"),
        names.completed_record("r1"),
        names.session_lease("slack:C1"),
    ]
    assert all(key.startswith("{agents}:") for key in keys)
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(
    "prefix",
    # "agent\n": a prefix read from a file or an env file with its line end
    ["", "has space", "trailing:", "{open", "{a}{b}", "a}b", "agent\n", "{agents}\n"],
)
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="stream prefix"):
        StreamNames(prefix)


@pytest.mark.parametrize("prefix", ["agent", "prod:agent", "{agents}", "{agents}:prod"])
def test_good_prefixes(prefix: str) -> None:
    assert StreamNames(prefix).requests == f"{prefix}:requests"


@pytest.mark.parametrize(
    ("source", "source_id"), [("", "1"), ("discord", ""), ("a", "x\ny"), ("a", "x\n"), ("a", "\x7f")]
)
def test_response_stream_parts_are_checked(source: str, source_id: str) -> None:
    with pytest.raises(ConfigurationError):
        StreamNames().responses(source, source_id)


@pytest.mark.parametrize("part", ["123456789012345678", "ünïcode id", "a b", "a\u0085b", "a\u2028b"])
def test_parts_without_control_characters_are_accepted(part: str) -> None:
    """Printable or not (U+0085 and U+2028 are not), only control characters are refused."""
    assert StreamNames().responses("discord", part) == f"agent:responses:discord:{part}"
    assert StreamNames().completed_record(part) == f"agent:completed:{part}"
