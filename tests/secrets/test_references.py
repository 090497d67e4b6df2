"""Secret references at their edges: how a value is shown in an error, and references as cached,
immutable values."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from dynamic_agents._redaction import MASK, REDACTOR
from dynamic_agents.exceptions import ConfigurationError, SecretReferenceError
from dynamic_agents.secrets.references import (
    EnvReference,
    SecretReference,
    masked_settings,
    parse_reference,
    shown_value,
)


def test_a_value_is_shown_whole_up_to_60_characters_then_cut_keeping_its_closing_quote() -> None:
    fits = "a b " * 14 + "ab"  # repr: 60 characters
    assert shown_value(fits) == repr(fits)
    longer = fits + "c"
    assert shown_value(longer) == repr(longer)[:56] + "...'"


def test_an_int_past_str_s_digit_limit_is_shown_by_its_number_of_digits() -> None:
    # str() refuses an int past 4,300 digits: a spec's or a setting's error raised a ValueError
    assert shown_value(10**5000, name="max_tokens") == "an int of 5001 digits"
    assert shown_value(12345) == "12345"


CANARY = "plain-canary-words"  # not shaped like a key: only its name can mask it


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "access_token",
        "api_token",
        "refresh_token",
        "bearer_token",
        "auth_token",
        "bot_token",
        "aws_session_token",
        "azure_ad_token",
        "X-Auth-Token",
        "accessToken",
        "TOKEN",
        "api_key",
        "client_secret",
        "password",
        "Authorization",
        "credentials",
        "max_tokens_key",
        "tokens",  # a list of them
        "api_tokens",
        "bot_tokens",
    ],
)
def test_a_value_under_a_credentials_name_is_masked(name: str) -> None:
    assert shown_value(CANARY, name=name) == MASK


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "max_input_tokens",
        "total_tokens",
        "tokens_per_minute",
        "budget_tokens",
        "maxTokens",
        "MAX_TOKENS",
        "tpm",
        "temperature",
    ],
)
def test_a_value_under_a_count_of_tokens_is_shown(name: str) -> None:
    # "max_tokens: lots" was shown masked, hiding the mistake it was refused for
    assert (shown_value("-5", name=name), shown_value(CANARY, name=name)) == ("'-5'", repr(CANARY))


def test_parsed_references_are_immutable() -> None:
    """They are cached and shared by every caller: none may change one for the others."""
    secret = parse_reference("secret:openai:api_key")
    environment = parse_reference("os.environ/OPENAI_API_KEY")
    assert isinstance(secret, SecretReference)
    assert isinstance(environment, EnvReference)
    with pytest.raises(dataclasses.FrozenInstanceError):
        secret.field = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        environment.variable = "OTHER"  # type: ignore[misc]


def test_a_reference_prefix_after_spaces_or_in_another_case_is_refused_saying_which() -> None:
    with pytest.raises(
        SecretReferenceError, match=r"starts with 'secret:' after leading spaces; a reference starts"
    ):
        parse_reference("  secret:openai:api_key")
    with pytest.raises(SecretReferenceError) as refused:
        parse_reference("Secret:openai:api_key")
    assert "after leading spaces" not in str(refused.value)
    assert "it starts with 'Secret:'; a reference starts with 'secret:' exactly" in str(refused.value)


def test_a_reference_part_shaped_like_a_key_is_registered_with_the_redactor() -> None:
    """A key pasted where a name goes: logs that quote the reference anyway mask it."""
    name_key, variable_key = f"sk-{uuid.uuid4().hex}", f"sk_{uuid.uuid4().hex}"
    parse_reference(f"secret:openai/{name_key}:api_key")
    parse_reference(f"os.environ/{variable_key}")
    assert name_key in REDACTOR
    assert variable_key in REDACTOR


def test_masked_settings_masks_key_shaped_strings_only_when_asked() -> None:
    shaped = "a1" * 16
    never = lambda key, parent: False  # noqa: E731
    assert masked_settings({"note": shaped, "list": [shaped]}, never) == {"note": shaped, "list": [shaped]}
    assert masked_settings({"note": shaped, "list": [shaped]}, never, key_shaped=True) == {
        "note": MASK,
        "list": [MASK],
    }
    assert masked_settings({"note": "two words " + shaped}, never, key_shaped=True) == {
        "note": "two words " + shaped  # a key has no spaces
    }


def test_masked_settings_masks_registered_secrets_only_with_redact_and_keeps_sequence_types() -> None:
    secret = f"canary-settings-{uuid.uuid4().hex}"
    REDACTOR.register(secret)
    never = lambda key, parent: False  # noqa: E731
    settings = {"note": f"uses {secret}", "models": ("a", f"x {secret}"), "urls": ["redis://:pw@h/0"]}
    assert masked_settings(settings, never) == {
        "note": f"uses {secret}",
        "models": ("a", f"x {secret}"),
        "urls": [f"redis://:{MASK}@h/0"],
    }
    assert masked_settings(settings, never, redact=True) == {
        "note": f"uses {MASK}",
        "models": ("a", f"x {MASK}"),
        "urls": [f"redis://:{MASK}@h/0"],
    }


def test_a_malformed_reference_is_quoted_only_as_far_as_it_is_a_reference() -> None:
    with pytest.raises(
        SecretReferenceError, match=r"^malformed secret reference 'secret:': use 'secret:provider:field'"
    ):
        parse_reference("secret:")
    pasted = "secret:openai:api_key=canary-pasted-value"
    with pytest.raises(SecretReferenceError) as refused:
        parse_reference(pasted)
    assert "'secret:openai:api_key…' (20 more characters, not shown)" in str(refused.value)
    assert "canary" not in str(refused.value)


def test_masked_settings_keeps_other_values_as_they_are() -> None:
    never = lambda key, parent: False  # noqa: E731
    assert masked_settings({"n": 3, "off": None, "on": True}, never) == {"n": 3, "off": None, "on": True}


@pytest.mark.parametrize("value", [5, None, b"secret:openai:api_key", ["secret:openai:api_key"]])
def test_a_reference_that_is_no_string_is_a_configuration_error(value: object) -> None:
    # 5 failed with a bare AttributeError ('int' object has no attribute 'startswith'), a list
    # with the cache's "unhashable type"
    with pytest.raises(ConfigurationError, match=r"^a secret reference must be a str .*, got "):
        parse_reference(value)  # type: ignore[arg-type]


def test_a_key_given_as_bytes_in_place_of_a_reference_is_not_quoted() -> None:
    key = b"sk-proj-" + uuid.uuid4().hex.encode()
    with pytest.raises(ConfigurationError) as refused:
        parse_reference(key)  # type: ignore[arg-type]
    assert key.decode() not in str(refused.value)
    assert str(refused.value).endswith("got a bytes")


@pytest.mark.parametrize("name", ["sk-proj-\udcffabcdefghijklmnopqrstuv", "team-\udcff"])
def test_a_name_that_is_not_valid_text_is_a_malformed_reference(name: str) -> None:
    # a key-shaped one, registered with the redactor, raised its UnicodeEncodeError (the name in
    # its .object); another was a name no request can carry
    with pytest.raises(SecretReferenceError) as refused:
        parse_reference(f"secret:openai/{name}:api_key")
    assert str(refused.value).startswith(
        f"malformed secret reference 'secret:…' ({len(name) + 15} more characters, not shown): "
    )
    assert refused.value.__context__ is None
