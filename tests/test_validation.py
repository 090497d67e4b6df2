"""The shared checks of numeric and choice settings: each bound holds exactly where documented, and
a refusal names the setting, the value and what is valid."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from enum import StrEnum

import pytest
from pydantic import BaseModel, ValidationError

from dynamic_agents._validation import (
    MAX_SECONDS,
    check_choice,
    check_count,
    check_seconds,
    invalid_fields,
    shown,
    with_article,
)
from dynamic_agents.exceptions import ConfigurationError


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def test_check_seconds_refuses_none_unless_optional() -> None:
    refusal = r"^timeout must be a finite number of seconds > 0, got None$"
    with pytest.raises(ConfigurationError, match=refusal):
        check_seconds("timeout", None)
    assert check_seconds("timeout", None, optional=True) is None


def test_check_seconds_says_none_is_valid_only_when_it_is() -> None:
    with pytest.raises(ConfigurationError, match=r"^ttl must be .* > 0 \(or None\), got -1$"):
        check_seconds("ttl", -1, optional=True)
    with pytest.raises(ConfigurationError) as refused:
        check_seconds("ttl", -1)
    assert "(or None)" not in str(refused.value)


def test_check_seconds_bounds() -> None:
    assert check_seconds("block", 0, zero=True) == 0.0
    assert check_seconds("block", 2) == 2.0
    assert isinstance(check_seconds("block", 2), float)
    assert check_seconds("wait", math.inf, forever=True) == math.inf
    with pytest.raises(ConfigurationError, match=r"^block must be a finite number of seconds > 0, got 0$"):
        check_seconds("block", 0)
    refusal = r"^wait must be a number of seconds \(math.inf: no limit\) > 0, got -inf$"
    with pytest.raises(ConfigurationError, match=refusal):
        check_seconds("wait", -math.inf, forever=True)


def test_check_seconds_refuses_a_duration_over_the_maximum_naming_it() -> None:
    # 1e30 was taken, and failed on Redis (PX, XAUTOCLAIM) as an outage-like TransportError
    assert MAX_SECONDS == 2**31
    assert check_seconds("lease_ttl", MAX_SECONDS) == MAX_SECONDS
    refusal = r"^lease_ttl must be at most 2147483648 seconds \(about 68 years\), got 1e\+30$"
    with pytest.raises(ConfigurationError, match=refusal):
        check_seconds("lease_ttl", 1e30)
    with pytest.raises(
        ConfigurationError, match=r"^ttl must be at most 2147483648 seconds .*, got 2147483649$"
    ):
        check_seconds("ttl", MAX_SECONDS + 1, optional=True)


@pytest.mark.parametrize("options", [{}, {"zero": True}, {"forever": True}, {"optional": True}])
def test_check_seconds_floats_at_the_edges_whatever_the_options(options: dict[str, bool]) -> None:
    # the float fast path takes 0 < x <= MAX_SECONDS and leaves every other float to the full checks
    for taken in (5e-324, 0.25, float(MAX_SECONDS)):
        assert check_seconds("ttl", taken, **options) == taken
    over = math.nextafter(float(MAX_SECONDS), math.inf)
    with pytest.raises(ConfigurationError, match=r"^ttl must be at most 2147483648 seconds"):
        check_seconds("ttl", over, **options)
    for refused in (math.nan, -0.25, -math.inf):
        with pytest.raises(ConfigurationError, match=r"^ttl must be a .*, got "):
            check_seconds("ttl", refused, **options)
    if options.get("zero"):
        assert check_seconds("ttl", 0.0, **options) == 0.0
    else:
        with pytest.raises(ConfigurationError, match=r"> 0.*, got 0\.0$"):
            check_seconds("ttl", 0.0, **options)
    if options.get("forever"):
        assert check_seconds("ttl", math.inf, **options) == math.inf
    else:
        with pytest.raises(ConfigurationError, match=r"^ttl must be a finite number of seconds"):
            check_seconds("ttl", math.inf, **options)


@pytest.mark.parametrize("forever", [False, True])
def test_check_seconds_refuses_an_int_past_a_floats_range_as_over_the_maximum(forever: bool) -> None:
    # math.isnan(10**400) raised a bare OverflowError
    with pytest.raises(ConfigurationError, match=r"^timeout must be at most 2147483648 seconds"):
        check_seconds("timeout", 10**400, forever=forever)
    with pytest.raises(
        ConfigurationError, match=r"^timeout must be a .*> 0, got a negative int of 401 digits$"
    ):
        check_seconds("timeout", -(10**400), forever=forever)


def test_check_seconds_takes_math_inf_for_no_limit_but_no_huge_finite_duration() -> None:
    assert check_seconds("timeout", math.inf, forever=True, optional=True) == math.inf
    assert check_seconds("timeout", None, forever=True, optional=True) is None
    refusal = (
        r"^timeout must be at most 2147483648 seconds \(about 68 years; math.inf: no limit\), got 1e\+30$"
    )
    with pytest.raises(ConfigurationError, match=refusal):
        check_seconds("timeout", 1e30, forever=True)


def test_check_count_accepts_exactly_its_minimum() -> None:
    assert check_count("concurrency", 1) == 1
    assert check_count("retries", 0, minimum=0) == 0
    with pytest.raises(ConfigurationError, match=r"^concurrency must be a whole number > 0, got 0$"):
        check_count("concurrency", 0)
    with pytest.raises(ConfigurationError, match=r"^retries must be a whole number >= 0, got -1$"):
        check_count("retries", -1, minimum=0)


def test_check_count_refuses_none_unless_optional() -> None:
    with pytest.raises(ConfigurationError, match=r"^maxlen must be a whole number > 0, got None$"):
        check_count("maxlen", None)
    assert check_count("maxlen", None, optional=True) is None
    with pytest.raises(ConfigurationError, match=r"^maxlen must be a whole number > 0 \(or None\), got 0$"):
        check_count("maxlen", 0, optional=True)


def test_check_count_takes_a_whole_float_as_an_int() -> None:
    value = check_count("batch_size", 5.0)
    assert value == 5
    assert type(value) is int
    with pytest.raises(ConfigurationError, match=r"got 5.5$"):
        check_count("batch_size", 5.5)


def test_check_choice_keeps_a_member_and_converts_its_text() -> None:
    assert check_choice("colour", Colour.BLUE, Colour) is Colour.BLUE
    assert check_choice("colour", "red", Colour) is Colour.RED
    with pytest.raises(ConfigurationError, match=r"^colour must be one of 'red', 'blue', got 'green'$"):
        check_choice("colour", "green", Colour)
    with pytest.raises(ConfigurationError, match=r"^colour must be one of 'red', 'blue', got 1$"):
        check_choice("colour", 1, Colour)


class _Shape(BaseModel):
    size: int
    name: str


def test_invalid_fields_names_each_field_and_why_without_the_values() -> None:
    with pytest.raises(ValidationError) as error:
        _Shape.model_validate({"size": "sk-not-a-number", "name": 3})
    assert invalid_fields(error.value, "the shape") == (
        "size: Input should be a valid integer, unable to parse string as an integer; "
        "name: Input should be a valid string"
    )


def test_invalid_fields_names_an_error_of_the_whole_input() -> None:
    with pytest.raises(ValidationError) as error:
        _Shape.model_validate("not a mapping")
    assert invalid_fields(error.value, "the shape") == (
        "the shape: Input should be a valid dictionary or instance of _Shape"
    )


CANARY = "sk-CANARY123456789abcdef"


@pytest.mark.parametrize(
    "check",
    [
        lambda value: check_seconds("timeout", value),
        lambda value: check_count("concurrency", value),
        lambda value: check_choice("colour", value, Colour),
    ],
    ids=["seconds", "count", "choice"],
)
def test_a_key_given_for_a_setting_is_masked_in_the_refusal(check: Callable[[object], object]) -> None:
    # a key pasted into the wrong setting (or a variable read into the wrong one) must not reach
    # the logs through the error that refuses it
    with pytest.raises(ConfigurationError) as refused:
        check(CANARY)
    assert "CANARY" not in str(refused.value)
    assert str(refused.value).endswith("got **********")


def test_a_long_value_is_cut_and_a_container_named_by_its_type() -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_count("concurrency", "x" * 1000)
    assert len(str(refused.value)) < 150
    with pytest.raises(ConfigurationError, match=r"^concurrency must be a whole number > 0, got a list$"):
        check_count("concurrency", [CANARY])


def _refusals() -> list[Callable[[], object]]:
    from dynamic_agents.agents import AgentSpec, ToolRegistry
    from dynamic_agents.client import split_message
    from dynamic_agents.secrets import SecretsManager, StaticSource
    from dynamic_agents.transports.base import parse_entry_position, parse_read_position
    from dynamic_agents.worker import WorkerSettings

    return [
        lambda: WorkerSettings(policies={CANARY: "reject"}),
        lambda: WorkerSettings(policies={"agent:support": CANARY}),
        lambda: WorkerSettings(session_policy=CANARY),
        lambda: WorkerSettings(lease_ttl=CANARY),
        lambda: WorkerSettings(claim_on_read=CANARY),  # type: ignore[arg-type]
        lambda: SecretsManager(StaticSource({}), ttl=CANARY),
        lambda: parse_entry_position(CANARY),
        lambda: parse_read_position(CANARY),
        lambda: ToolRegistry().get_tool(CANARY),
        lambda: ToolRegistry().function("f", CANARY),
        lambda: AgentSpec.from_dict({"kind": CANARY, "id": "a", "model": "gpt"}),
        lambda: split_message("hello", platform=CANARY),
        lambda: split_message("hello", limit=CANARY),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize("index", range(13))
def test_the_library_s_refusals_of_a_setting_mask_a_key_given_for_it(index: int) -> None:
    refuse = _refusals()[index]
    with pytest.raises(ValueError, match=r"\*\*\*\*\*\*\*\*\*\*") as refused:
        refuse()
    assert "CANARY" not in str(refused.value)


@pytest.mark.parametrize(("typo", "meant"), [("Red", "red"), (" blue", "blue"), ("bleu", "blue")])
def test_check_choice_suggests_the_close_member(typo: str, meant: str) -> None:
    refusal = rf"^colour must be one of 'red', 'blue', got '{typo}'; did you mean '{meant}'\?$"
    with pytest.raises(ConfigurationError, match=refusal):
        check_choice("colour", typo, Colour)


def test_check_choice_suggests_nothing_far_off() -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_choice("colour", "green", Colour)
    assert "did you mean" not in str(refused.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10**5000, "an int of 5001 digits"),
        (-(10**5000), "a negative int of 5001 digits"),
        (10**60, "an int of 61 digits"),  # the first past the 60 characters a value is cut to
        (10**60 - 1, "9" * 60),
        (-(10**60) + 1, "-" + "9" * 60),
        (2**3_000_000, "an int of about 903090 digits"),  # not counted exactly past a million bits
    ],
    ids=["5001 digits", "negative", "61 digits", "60 digits", "60 digits negative", "huge"],  # str() fails
)
def test_shown_gives_a_long_int_by_its_number_of_digits_and_never_raises(value: int, expected: str) -> None:
    # str() of an int past 4,300 digits is a ValueError (sys.get_int_max_str_digits()): an error
    # quoting the value raised that in its place
    assert shown(value) == expected


def test_a_refusal_of_a_huge_int_names_the_setting() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^limit must be a whole number > 0, got a negative int of 5001 digits$"
    ):
        check_count("limit", -(10**5000))


def test_shown_names_what_it_does_not_show_by_its_type_with_its_article() -> None:
    class EventRouter:
        pass

    assert (shown({"k": 1}), shown([1]), shown(EventRouter()), shown(object())) == (
        "a dict",
        "a list",
        "an EventRouter",
        "an object",
    )


@pytest.mark.parametrize(
    ("noun", "expected"),
    [
        # by the first letter's sound: a consonant, a vowel
        ("dict", "a dict"),
        ("str", "a str"),
        ("EventRouter", "an EventRouter"),
        ("int", "an int"),
        ("object", "an object"),
        ("agent", "an agent"),
        ("workflow", "a workflow"),
        ("InMemoryTransport", "an InMemoryTransport"),
        ("UnsafePatternError", "an UnsafePatternError"),
        # a vowel said as "you" or "wun"
        ("User", "a User"),
        ("UserDict", "a UserDict"),
        ("Usage", "a Usage"),
        ("UnicodeDecodeError", "a UnicodeDecodeError"),
        ("UnionType", "a UnionType"),
        ("Url", "a Url"),
        ("Euro", "a Euro"),
        ("OneOf", "a OneOf"),
        # a silent h
        ("Hour", "an Hour"),
        ("Handler", "a Handler"),
        # an initialism, said letter by letter
        ("UUID", "a UUID"),
        ("URL", "a URL"),
        ("HTTPError", "an HTTPError"),
        ("LLMRouter", "an LLMRouter"),
        ("SSLError", "an SSLError"),
        ("OSError", "an OSError"),
        ("JSONDecodeError", "a JSONDecodeError"),
        ("X", "an X"),
        # a private class by its name
        ("_GeneratorContextManager", "a _GeneratorContextManager"),
        ("_Entry", "an _Entry"),
    ],
)
def test_with_article_chooses_it_by_the_sound_of_the_name(noun: str, expected: str) -> None:
    assert with_article(noun) == expected


def test_shown_names_a_type_whose_name_starts_with_a_you_sound_with_a() -> None:
    class User:
        pass

    assert (shown(User()), shown(uuid.uuid4())) == ("a User", "a UUID")
