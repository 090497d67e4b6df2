from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from dynamic_agents.events import (
    KNOWN_SOURCES,
    AgentRequestEvent,
    AgentResponseEvent,
    EventCodec,
    ResponseStatus,
)
from dynamic_agents.events.models import new_event_id
from dynamic_agents.exceptions import UnsupportedSchemaVersionError


def request(**overrides: object) -> AgentRequestEvent:
    fields: dict[str, object] = {
        "source": "discord",
        "source_id": "123",
        "user_id": "u1",
        "content": "hello",
    }
    fields.update(overrides)
    return AgentRequestEvent.model_validate(fields)


def test_session_id_defaults_to_source_and_channel() -> None:
    assert request().session_id == "discord:123"
    assert request(session_id="custom").session_id == "custom"


def test_naive_timestamp_is_read_as_utc() -> None:
    event = request(timestamp="2025-01-02T03:04:05")
    assert event.timestamp == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_aware_timestamp_is_converted_to_utc() -> None:
    plus_three = timezone(timedelta(hours=3))
    event = request(timestamp=datetime(2025, 1, 2, 6, 0, tzinfo=plus_three))
    assert event.timestamp.tzinfo is UTC
    assert event.timestamp == datetime(2025, 1, 2, 3, 0, tzinfo=UTC)


def test_default_timestamp_is_aware_utc() -> None:
    assert request().timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize("source", ["whatsapp", "telegram", "matrix", "ms-teams", "Custom.Bridge"])
def test_any_platform_slug_is_a_valid_source(source: str) -> None:
    assert request(source=source).source == source.lower()


def test_known_sources_include_the_seed_platforms() -> None:
    assert {"discord", "slack", "rest", "webhook", "internal"} <= KNOWN_SOURCES


@pytest.mark.parametrize("source", ["", "has space", "9starts-with-digit", "a" * 65])
def test_source_must_be_a_slug(source: str) -> None:
    with pytest.raises(ValidationError, match="source"):
        request(source=source)


def test_newer_minor_version_is_read_and_its_fields_kept() -> None:
    codec = EventCodec()
    body = request().model_dump(mode="json") | {"schema_version": "1.7", "priority": "high"}
    event = AgentRequestEvent.model_validate(body)
    assert event.schema_version == "1.7"
    assert event.model_extra == {"priority": "high"}
    again = codec.decode_json(codec.encode_json(event), AgentRequestEvent)
    assert again.model_extra == {"priority": "high"}


def test_unknown_major_version_is_refused_on_construction() -> None:
    with pytest.raises(ValidationError) as caught:
        request(schema_version="2.0")
    assert isinstance(caught.value.errors()[0]["ctx"]["error"], UnsupportedSchemaVersionError)


@pytest.mark.parametrize("version", ["1.0\n", "\u0661.0", "1.\u0660", "1.0 ", " 1.0"])
def test_a_schema_version_with_a_trailing_newline_or_non_ascii_digits_is_refused(version: str) -> None:
    """``re.match`` with ``$`` passes ``"1.0\\n"`` and ``\\d`` passes Arabic-Indic digits: such a
    version was accepted and written back out as is, to peers that parse ``major.minor``."""
    with pytest.raises(ValidationError, match=r"schema_version must look like 'major\.minor'"):
        request(schema_version=version)


@pytest.mark.parametrize("metadata", ["oops", [1, 2], 5])
def test_the_seed_shape_with_metadata_that_is_not_an_object_is_refused_not_dropped(metadata: object) -> None:
    """In the model's own shape such ``metadata`` is a validation error; in the seed's shape it was
    replaced by ``{}`` without a word."""
    seed = {"source": "discord", "channel_id": "1", "guild_id": "9", "user_id": "u", "content": "x"}
    with pytest.raises(ValidationError) as caught:
        AgentRequestEvent.model_validate({**seed, "metadata": metadata})
    assert [error["loc"] for error in caught.value.errors()] == [("metadata",)]


def test_the_seed_shape_keeps_type_and_guild_id_when_metadata_has_its_own() -> None:
    """``type`` and ``guild_id`` move into ``metadata`` unless it holds ``event_type`` /
    ``guild_id`` already; then they were popped and lost. Nothing is dropped: they stay at the top
    level (kept with the unknown fields)."""
    event = AgentRequestEvent.model_validate(
        {
            "type": "discord.message",
            "source": "discord",
            "channel_id": "1",
            "guild_id": "from-top",
            "user_id": "u",
            "content": "x",
            "metadata": {"event_type": "edited", "guild_id": "from-metadata"},
        }
    )
    assert event.metadata == {"event_type": "edited", "guild_id": "from-metadata"}
    assert event.model_extra == {"type": "discord.message", "guild_id": "from-top"}


def test_seed_publish_example_maps_onto_the_request() -> None:
    # The seed's first example (agno-interfaces publishing to agent:requests).
    seed = {
        "type": "discord.message",
        "source": "discord",
        "channel_id": "123456789",
        "guild_id": "987654321",
        "user_id": "111222333",
        "content": "Hello agent!",
        "metadata": {
            "agent_id": "research-agent",
            "session_id": "discord:123456789",
            "reply_to": "agent:responses:discord:123456789",
        },
    }
    event = AgentRequestEvent.model_validate(seed)
    assert event.source_id == "123456789"
    assert event.agent_id == "research-agent"
    assert event.session_id == "discord:123456789"
    assert event.reply_stream == "agent:responses:discord:123456789"
    assert event.metadata == {"event_type": "discord.message", "guild_id": "987654321"}
    assert event.model_extra == {}


def test_response_fields_of_a_run_are_optional() -> None:
    response = AgentResponseEvent(request_id="r1", status=ResponseStatus.REJECTED, error_message="busy")
    assert response.agent_id is None
    assert response.agent_name is None
    assert response.execution_time_ms is None
    assert response.content == ""


@pytest.mark.parametrize("bad_id", ["", "has space", "naïve", "x" * 257])
def test_event_ids_are_printable_ascii(bad_id: str) -> None:
    with pytest.raises(ValidationError, match="id"):
        request(id=bad_id)


def test_an_explicitly_empty_session_id_is_refused() -> None:
    with pytest.raises(ValidationError, match="session_id must not be empty"):
        request(session_id="")


def test_event_ids_are_random_version_4_uuids() -> None:
    ids = [new_event_id() for _ in range(2_000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert (str(parsed), parsed.version, parsed.variant) == (event_id, 4, uuid.RFC_4122)
    assert AgentResponseEvent(request_id="r").id != AgentResponseEvent(request_id="r").id
