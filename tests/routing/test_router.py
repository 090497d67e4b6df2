from __future__ import annotations

from typing import Any

import pytest
import regex
from pydantic import ValidationError

from dynamic_agents.events import AgentRequestEvent, Target, TargetType
from dynamic_agents.exceptions import ConfigurationError, NoRouteError, RoutingConfigError
from dynamic_agents.routing import EventRouter, RoutingRule, SafePattern, UnsafePatternError, check_pattern

AGENT, TEAM, WORKFLOW = TargetType.AGENT, TargetType.TEAM, TargetType.WORKFLOW


def event(**fields: Any) -> AgentRequestEvent:
    base: dict[str, Any] = {"source": "discord", "source_id": "general", "user_id": "u1", "content": "hello"}
    base.update(fields)
    return AgentRequestEvent.model_validate(base)


def rule(name: str, target: str = "a", **conditions: Any) -> RoutingRule:
    return RoutingRule.model_validate({"name": name, "agent_id": target, **conditions})


def test_explicit_ids_come_first() -> None:
    router = EventRouter([rule("any discord", "ruled", source="discord")])
    assert router.route(event(team_id="t", workflow_id="w")).target == Target(type=TEAM, id="t")
    decision = router.route(event(agent_id="x", team_id="t"))
    assert (decision.target_type, decision.target_id, decision.rule) == (AGENT, "x", None)
    assert decision.reason == "explicit agent_id in the event"
    assert router.route(event(workflow_id="w")).target == Target(type=WORKFLOW, id="w")


def test_higher_priority_wins_and_ties_keep_declaration_order() -> None:
    router = EventRouter(
        [
            rule("first declared", "one", source="discord"),
            rule("second declared", "two", source="discord"),
            rule("urgent", "three", source="discord", priority=10, content_pattern="urgent"),
        ]
    )
    assert router.route(event()).target_id == "one"
    assert router.route(event(content="this is urgent")).target_id == "three"


def test_priority_order_holds_across_indexes() -> None:
    router = EventRouter(
        [
            rule("by channel", "channel", source_ids=["general"]),
            rule("by user", "user", user_ids=["u1"], priority=5),
            rule("by guild", "guild", metadata_match={"guild_id": ["g1", "g2"]}, priority=7),
            rule("by content", "content", content_pattern="hello", priority=6),
        ]
    )
    assert router.route(event(metadata={"guild_id": "g2"})).target_id == "guild"
    assert router.route(event(metadata={"guild_id": "other"})).target_id == "content"
    assert router.route(event(content="bye")).target_id == "user"
    assert router.route(event(content="bye", user_id="u2")).target_id == "channel"


def test_every_condition_must_hold() -> None:
    router = EventRouter(
        [
            rule(
                "narrow",
                "narrow",
                source="slack",
                source_id_pattern="^C0",
                user_ids=["U1"],
                content_pattern="^/deploy",
            )
        ],
        default=Target(type=AGENT, id="fallback"),
    )
    match = event(source="slack", source_id="C042", user_id="U1", content="/deploy now")
    assert router.route(match).target_id == "narrow"
    for change in ({"source_id": "D042"}, {"user_id": "U2"}, {"content": "deploy"}, {"source": "discord"}):
        assert (
            router.route(event(**{**match.model_dump(), **change, "session_id": None})).target_id
            == "fallback"
        )


def test_source_default_then_global_default_then_no_route() -> None:
    router = EventRouter(
        source_defaults={"discord": Target(type=AGENT, id="discord-assistant")},
        default=Target(type=AGENT, id="default-assistant"),
    )
    decision = router.route(event())
    assert (decision.target_id, decision.reason) == ("discord-assistant", "default for source 'discord'")
    assert router.route(event(source="whatsapp")).reason == "global default"
    with pytest.raises(NoRouteError, match="no route for whatsapp:general"):
        EventRouter().route(event(source="whatsapp"))


def test_metadata_values_and_lists() -> None:
    router = EventRouter([rule("paid tier", "paid", metadata_match={"tier": "paid", "region": ["eu", "us"]})])
    assert router.route(event(metadata={"tier": "paid", "region": "eu"})).target_id == "paid"
    with pytest.raises(NoRouteError):
        router.route(event(metadata={"tier": "paid", "region": "ap"}))
    with pytest.raises(NoRouteError):
        router.route(event(metadata={"tier": ["paid"], "region": "eu"}))  # unhashable: no match, no crash


def test_explain_lists_every_rule_and_why() -> None:
    router = EventRouter(
        [
            rule("code", "code", content_pattern="^/code"),
            rule("admins", "admin", source_ids=["admin"], priority=3),
            rule("slack only", "s", source="slack"),
        ],
        default=Target(type=AGENT, id="d"),
    )
    explanation = router.explain(event(content="/code fix it"))
    assert [(c.rule, c.matched) for c in explanation.checks] == [
        ("admins", False),
        ("code", True),
        ("slack only", False),
    ]
    assert "channel 'general' is not among the rule's 1 channel" in explanation.checks[0].reason
    assert explanation.decision is not None
    assert explanation.decision.rule == "code"
    assert "✓ code" in str(explanation)
    unmatched = EventRouter([rule("code", "code", content_pattern="^/code")]).explain(event())
    assert unmatched.decision is None
    assert unmatched.error is not None
    assert "no route" in str(unmatched)


def test_rules_of_other_sources_are_never_candidates() -> None:
    router = EventRouter([rule(f"slack {n}", source="slack", content_pattern=f"x{n}") for n in range(50)])
    assert list(router._index.candidates(event())) == []
    assert len(list(router._index.candidates(event(source="slack")))) == 50


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(RoutingConfigError) as caught:
        EventRouter([rule("twice", source="a"), rule("twice", source="b")])
    # no "<dict>: " before it: no mapping or file was read
    assert str(caught.value) == "rule names must be unique; repeated: twice"
    assert (caught.value.source, caught.value.line, caught.value.path) == ("", None, "")


def test_a_rule_needs_a_condition_and_one_target() -> None:
    with pytest.raises(ValueError, match="no condition"):
        RoutingRule.model_validate({"name": "all", "agent_id": "a"})
    with pytest.raises(ValueError, match="give one of agent_id, team_id, workflow_id"):
        RoutingRule.model_validate({"name": "two", "agent_id": "a", "team_id": "t", "source": "x"})
    seed_form = RoutingRule.model_validate(
        {"name": "seed", "source": "discord", "target_type": "team", "target_id": "t", "user_id": "u"}
    )
    assert (seed_form.target, seed_form.user_ids) == (Target(type=TEAM, id="t"), frozenset({"u"}))


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(\w*)*x", r"((ab)+c)*", r"(?:x+y)+", r"(a|b+)*"])
def test_nested_unbounded_quantifiers_are_refused(pattern: str) -> None:
    with pytest.raises(UnsafePatternError, match="nests an unbounded quantifier"):
        check_pattern(pattern)
    with pytest.raises(ValueError, match="nests an unbounded quantifier"):
        rule("bad", content_pattern=pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)(?1)+b",
        r"(?P<x>a+)(?&x)+b",
        r"(?P<x>a+)(?P>x)+b",
        r"(a+)(?-1)+b",
        r"((?1)|a)+",
        r"(?R)",
        r"x(?0)?",
        r"(?+1)*(a+)",
    ],
)
def test_a_pattern_calling_a_group_or_itself_is_refused(pattern: str) -> None:
    """The ``regex`` engine calls a group (``(?1)``, ``(?&name)``) or the whole pattern
    (``(?R)``) again: ``(a+)(?1)+`` nests ``a+`` in an unbounded repeat as ``(a+)+`` does, unseen
    by the nesting check, and a call that consumes nothing first (``((?1)|a)+``, ``(?R)``)
    recurses until the timeout on any content, its memory growing all the while (hundreds of MB
    in a second; a ``MemoryError`` out of ``route`` with a longer ``pattern_timeout``). A
    ``regex`` release without relative calls (``(?-1)``, ``(?+1)``; the floor, 2022.9.13) refuses those
    as not compiling."""
    try:
        regex.compile(pattern)
    except regex.error:
        why = "does not compile"
    else:
        why = "calls a group or the whole pattern"
    with pytest.raises(UnsafePatternError, match=why):
        check_pattern(pattern)
    with pytest.raises(ValueError, match=why):
        rule("recursive", content_pattern=pattern)


@pytest.mark.parametrize(
    "pattern", [r"[(?R)]x", r"\(?1\)", r"(?#(?R)x", r"(a)?(?(1)b|c)", r"(?P<x>a)b(?P=x)", r"(a)\1"]
)
def test_text_that_only_looks_like_a_call_is_accepted(pattern: str) -> None:
    check_pattern(pattern)


@pytest.mark.parametrize("pattern", ["(" * 1000 + "a" + ")" * 1000, "(?:" * 1000 + "a" + ")" * 1000 + r"\m"])
def test_a_pattern_nested_too_deeply_to_check_is_refused_not_a_recursion_error(pattern: str) -> None:
    """The ``regex`` compiler and the stdlib parser recurse once per group: a pattern of 1,000
    nested groups raised a bare ``RecursionError`` out of the rule (a 500 from ``PUT
    /routing/rules``, a traceback from ``RoutingConfig.from_yaml``)."""
    with pytest.raises(UnsafePatternError, match="nests groups too deeply"):
        check_pattern(pattern)
    with pytest.raises(ValidationError, match="nests groups too deeply") as caught:
        rule("deep", content_pattern=pattern)
    assert caught.value.errors()[0]["loc"] == ("content_pattern",)


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
@pytest.mark.parametrize(
    "pattern",
    [
        "a{1000000}",
        "(?:a{1000}){1000}",
        "(?:ab{1000,}){1000}",
        r"\m(?:a{1000}){1000}",
        "(?:a{1000})(?#x){1000}",
        "(?x)(?:a{1000}) {1000}",
        "(?x)(?:a{1000}) # x\n{1000}",
        "[[](?:a{1000}){1000}",
        "a{" + "9" * 5000 + "}",  # a count past int()'s 4,300 digits: a bare ValueError
    ],
)
def test_a_pattern_whose_counted_repeats_compile_to_millions_of_parts_is_refused(pattern: str) -> None:
    """The ``regex`` engine writes a counted repeat out when it compiles it, nested counts
    multiplying: ``(?:a{1000}){1000}`` took 270 MB and 2 s to compile, ``(?:a{3000}){3000}`` 2.3 GB
    and 13 s, ``a{4294967294}`` all the memory there was, in the check itself, at load or in
    ``PUT /routing/rules``."""
    with pytest.raises(UnsafePatternError, match="repeats its parts"):
        check_pattern(pattern)
    with pytest.raises(ValidationError, match="repeats its parts"):
        rule("long", content_pattern=pattern)


def test_a_small_count_written_with_thousands_of_leading_zeros_is_refused_as_not_compiling() -> None:
    """The regex engine's own int() of it raised a bare ValueError out of the check."""
    with pytest.raises(UnsafePatternError, match="does not compile: Exceeds the limit"):
        check_pattern("a{" + "0" * 5000 + "3}")


@pytest.mark.parametrize(
    "pattern", [r"\d{4}-\d{2}-\d{2}", "a{100000}", "a{1,1000000}", "(?:a{1,1000}){1000}", "(?:a+){1000}"]
)
def test_counted_repeats_that_compile_small_are_accepted(pattern: str) -> None:
    check_pattern(pattern)


@pytest.mark.parametrize("pattern", [r"^/code", r"(ab|cd)+", r"a{1,5}", r"\d+-\d+", r"(a*)?b"])
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    check_pattern(pattern)


def test_a_pattern_that_does_not_compile_is_refused() -> None:
    with pytest.raises(ValueError, match="does not compile"):
        rule("broken", content_pattern="(unclosed")


def test_adversarial_content_returns_quickly(caplog: pytest.LogCaptureFixture) -> None:
    # Not refused at load (no nested quantifier), but exponential on "aaaa…!" for a backtracking
    # engine: the timeout turns it into "no match" and routing goes on to the next rule.
    router = EventRouter(
        [rule("evil", "evil", content_pattern=r"^(a|aa)*$"), rule("after", "after", content_pattern="!$")],
        pattern_timeout=0.05,
        max_content_chars=2 * 1024 * 1024,
    )
    # No wall-clock threshold: the log shows the match was abandoned at pattern_timeout (without
    # it the match would run for hours and pytest-timeout would fail the test).
    decision = router.route(event(content="a" * (1024 * 1024) + "!"))
    assert decision.rule == "after"
    assert "timed out" in caplog.text


def test_adversarial_channel_id_returns_quickly(caplog: pytest.LogCaptureFixture) -> None:
    # Channel ids come from the platform (any text on a REST or webhook interface): a
    # source_id_pattern is bounded by the timeout too, like a content pattern.
    router = EventRouter(
        [rule("evil", "evil", source_id_pattern=r"^(\d|[0-9])*$"), rule("after", "after", source="discord")],
        pattern_timeout=0.05,
    )
    decision = router.route(event(source_id="1" * 255 + "x"))
    assert decision.rule == "after"
    assert "timed out" in caplog.text


def test_content_is_matched_on_a_bounded_prefix() -> None:
    router = EventRouter([rule("tail", "tail", content_pattern="needle")], max_content_chars=100)
    with pytest.raises(NoRouteError):
        router.route(event(content="x" * 200 + "needle"))
    assert router.route(event(content="needle" + "x" * 200)).target_id == "tail"


async def test_check_targets_names_the_unknown_ones() -> None:
    router = EventRouter(
        [rule("r1", "known", source="a"), rule("r2", "ghost", source="b")],
        default=Target(type=TEAM, id="phantom-team"),
    )

    async def exists(target: Target) -> bool:
        return target.id == "known"

    with pytest.raises(RoutingConfigError) as caught:
        await router.check_targets(exists)
    # it read "<dict>: unknown routing targets: …", though no mapping or file was read
    assert str(caught.value) == "unknown routing targets: agent 'ghost', team 'phantom-team'"
    assert caught.value.source == ""
    await router.check_targets(lambda target: True)


@pytest.mark.parametrize("source", ["", "my platform", "9gag", "slack!"])
def test_a_source_default_no_event_can_have_is_refused(source: str) -> None:
    """Rules and interfaces refused a source no event can have; a default keyed by one was kept,
    and never applied."""
    with pytest.raises(RoutingConfigError, match=r"^source_defaults key .* is not a platform name"):
        EventRouter(source_defaults={source: Target(type=AGENT, id="helper")})


def test_source_defaults_are_keyed_by_the_source_as_events_read_it() -> None:
    """Events, rules and interface configs read a source stripped and in lower case; a default
    given for ``"Slack"`` never applied."""
    router = EventRouter(source_defaults={" Slack ": Target(type=AGENT, id="slack-assistant")})
    assert router.route(event(source="slack")).target_id == "slack-assistant"
    assert router.source_defaults == {"slack": Target(type=AGENT, id="slack-assistant")}
    with pytest.raises(RoutingConfigError, match=r"^source_defaults gives 'Slack' and 'slack': "):
        EventRouter(
            source_defaults={"Slack": Target(type=AGENT, id="a"), "slack": Target(type=AGENT, id="b")}
        )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_content_chars", 0),
        ("max_content_chars", -5),
        ("max_content_chars", 2.5),
        ("max_content_chars", True),
        ("pattern_timeout", 0),
        ("pattern_timeout", -1.0),
        ("pattern_timeout", float("nan")),
        ("pattern_timeout", float("inf")),
    ],
)
def test_limits_out_of_range_are_refused_not_silently_misapplied(option: str, value: object) -> None:
    """``max_content_chars=-5`` matched patterns against the content minus its last five
    characters, and a zero timeout made every content pattern miss: both silently wrong."""
    with pytest.raises(ConfigurationError, match=rf"^{option} must be .*got {value!r}"):
        EventRouter([rule("r", content_pattern="o$")], **{option: value})  # type: ignore[arg-type]


def test_a_rule_cannot_be_changed_behind_the_routers_back() -> None:
    """A rule is frozen, but its ``metadata_match`` was a plain dict: changing it through the rule
    (``router.rules[0]``, or the caller's own reference) changed what the router matched, and
    ``route`` (indexed at construction) and ``explain`` (checking the dict) disagreed."""
    guild = rule("guild", metadata_match={"guild_id": "1"})
    router = EventRouter([guild])
    with pytest.raises(TypeError):
        router.rules[0].metadata_match["guild_id"] = "2"  # type: ignore[index]
    assert router.route(event(metadata={"guild_id": "1"})).rule == "guild"
    assert router.explain(event(metadata={"guild_id": "1"})).decision == router.route(
        event(metadata={"guild_id": "1"})
    )
    assert hash(guild) == hash(rule("guild", metadata_match={"guild_id": "1"}))
    assert guild.model_dump(mode="json")["metadata_match"] == {"guild_id": "1"}
    assert guild.model_copy(deep=True) == guild


@pytest.mark.parametrize(
    ("conditions", "field"),
    [
        ({"source": "discord", "channel_ids": []}, "channel_ids"),
        ({"source": "discord", "user_ids": []}, "user_ids"),
        ({"user_id": "u1", "guild_ids": []}, "metadata_match"),
        ({"metadata_match": {"team": []}}, "metadata_match"),
        ({"source": "", "user_id": "u1"}, "source"),
        ({"source": "my discord", "user_id": "u1"}, "source"),
    ],
)
def test_a_condition_no_event_can_meet_is_refused(conditions: dict[str, Any], field: str) -> None:
    """An empty list of channels (or users, or accepted values) or a source no event can have
    made a rule that silently never matched."""
    with pytest.raises(ValidationError) as caught:
        rule("never", **conditions)
    (error,) = caught.value.errors()
    assert error["loc"][0] == field
    assert "no event" in error["msg"]


@pytest.mark.parametrize(
    "pattern", [r"(\p{L}+)+$", r"(?:\X+)+$", r"([\p{L}\d]+)*!", r"(\pL+)+$", r"(\P{Lu}*)*x"]
)
def test_nesting_is_refused_in_patterns_with_regex_only_escapes(pattern: str) -> None:
    """``\\p{L}`` and ``\\X`` exist only in the ``regex`` engine: the stdlib parser used for the
    check failed on them, and the nesting went unchecked."""
    with pytest.raises(UnsafePatternError, match="nests an unbounded quantifier"):
        check_pattern(pattern)


@pytest.mark.parametrize("pattern", [r"\p{L}+", r"[\p{L}\d]+-\X", r"\\p{L}", r"\\\p{Lu}+"])
def test_patterns_with_regex_only_escapes_are_still_accepted(pattern: str) -> None:
    check_pattern(pattern)


@pytest.mark.parametrize("priority", [True, False])
def test_a_boolean_priority_is_refused(priority: bool) -> None:
    """YAML reads ``priority: yes`` as ``True``, which pydantic took as 1: a rule silently ranked."""
    with pytest.raises(ValidationError) as caught:
        rule("r", source="discord", priority=priority)
    assert caught.value.errors()[0]["loc"] == ("priority",)


@pytest.mark.parametrize(
    ("wanted", "shown"),
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        ([1, float("-inf")], "-inf"),
        ([float("nan"), "x"], "nan"),
    ],
)
def test_a_metadata_value_that_is_no_finite_number_is_refused(wanted: Any, shown: str) -> None:
    """NaN equals nothing, not even itself: ``{score: .nan}`` could never match. NaN and an
    infinity have no JSON form: ``model_dump_json()`` wrote them as ``null``, which, read back,
    matched every event without the key."""
    with pytest.raises(ValidationError) as caught:
        rule("score", metadata_match={"score": wanted})
    error = caught.value.errors()[0]
    assert error["loc"] == ("metadata_match",)
    assert f"'score' holds {shown}" in error["msg"]
    assert "no JSON number" in error["msg"]


@pytest.mark.parametrize(
    ("wanted", "sent"),
    [(True, 1), (1, True), (False, 0), (0, False), ([1, "x"], True), ([True], 1.0), (1.0, True)],
)
def test_a_metadata_boolean_is_not_a_number(wanted: Any, sent: Any) -> None:
    """``True == 1`` in Python, so ``metadata_match: {admin: true}`` matched an event whose
    ``admin`` was ``1`` (and ``{tier: 1}`` one whose tier was ``true``): JSON tells them apart."""
    router = EventRouter(
        [rule("flagged", "flagged", metadata_match={"flag": wanted})],
        default=Target(type=AGENT, id="fallback"),
    )
    routed = event(metadata={"flag": sent})
    assert router.route(routed).target_id == "fallback"
    assert router.explain(routed).decision == router.route(routed)


def test_metadata_numbers_match_whether_written_as_integers_or_not() -> None:
    router = EventRouter(
        [rule("one", "one", metadata_match={"n": 1}), rule("yes", "yes", metadata_match={"b": True})]
    )
    assert router.route(event(metadata={"n": 1.0})).target_id == "one"
    assert router.route(event(metadata={"b": True})).target_id == "yes"


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)+\m",
        r"(\w+)+\M",
        r"(a+)+\G",
        r"^(?|(a+)+)$",
        r"(a+)+(?i)",
        r"(?V1)(a+)+$",
        r"(a+)+(?(DEFINE)b)",
        r"(?V1)([[a-z]--[q]]+)*!",
        r"(?:x(?:y+)*){2,}\K",
    ],
)
def test_nesting_is_refused_in_patterns_only_the_regex_engine_parses(pattern: str) -> None:
    """Syntax the stdlib parser does not know (``\\m``, ``(?V1)``, a flag mid-pattern, a
    branch reset) made the check give up, so ``(a+)+\\m`` was accepted."""
    with pytest.raises(UnsafePatternError, match="nests an unbounded quantifier"):
        check_pattern(pattern)


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"[[]\m(a+)+b", "nests an unbounded quantifier"),
        (r"[[]x(a+)(?1)+b", "calls a group"),
        (r"[[](?R)", "calls a group"),
    ],
)
def test_a_bracket_in_a_character_class_does_not_hide_the_rest_of_the_pattern(
    pattern: str, problem: str
) -> None:
    """Outside ``(?V1)`` the ``regex`` engine reads a ``[`` inside a class as a character
    (``[[]`` is one ``[``); the check read a nested set that never closed, and skipped the rest of
    the pattern unchecked."""
    with pytest.raises(UnsafePatternError, match=problem):
        check_pattern(pattern)


@pytest.mark.parametrize(
    "pattern", [r"\m(a+)(?#c)+b", "(?x)\\m(a+) +b", "(?x)\\m(a+)  # c\n  +b", r"\m(?x:(a+) +)b"]
)
def test_nesting_is_refused_across_a_comment_or_a_verbose_space(pattern: str) -> None:
    """A quantifier after a comment, or after a space in ``(?x)`` mode, repeats what is before
    them; in a pattern only the ``regex`` engine parses, the check took it for another part."""
    with pytest.raises(UnsafePatternError, match="nests an unbounded quantifier"):
        check_pattern(pattern)


def test_a_space_outside_verbose_mode_is_a_character() -> None:
    check_pattern(r"\m(\w+) +\M")  # words, spaces: no nesting


@pytest.mark.parametrize(
    "pattern",
    [r"\m\w+\M", r"(?V1)[[a-z]--[aeiou]]+", r"(?|(a)|(b))+x", r"foo(?i)bar", r"(?:x+){e<=1}", r"[(a+)+]\G"],
)
def test_patterns_only_the_regex_engine_parses_are_still_accepted(pattern: str) -> None:
    check_pattern(pattern)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), True])
def test_a_safe_pattern_refuses_a_timeout_that_is_no_bound(timeout: float) -> None:
    """``SafePattern(p, timeout=0)`` (or ``inf``) never matched, and a negative or NaN timeout
    searched without any bound: all silently."""
    with pytest.raises(ConfigurationError, match=r"timeout must be a finite number of seconds > 0"):
        SafePattern("b", timeout=timeout)
    assert SafePattern("b", timeout=0.5).search("abc")


@pytest.mark.parametrize("name", [" ", "\t", " \n "])
def test_a_rule_name_of_only_whitespace_is_refused(name: str) -> None:
    """A decision and ``explain`` name the rule: a blank name names none."""
    with pytest.raises(ValidationError) as caught:
        rule(name, source="discord")
    assert caught.value.errors()[0]["loc"] == ("name",)
    assert f"name {name!r} is only whitespace" in str(caught.value)


@pytest.mark.parametrize("wanted", [987654321, [987654321], [987654321, "other"]])
@pytest.mark.parametrize("sent", [987654321, "987654321", 987654321.0])
def test_a_metadata_integer_matches_the_id_sent_as_text_too(wanted: Any, sent: Any) -> None:
    """``metadata_match: {guild_id: 987654321}`` (an id written unquoted in YAML) matches the id
    sent as text or as a number, as the ``guild_ids`` shorthand does; route() and explain() agree."""
    router = EventRouter(
        [rule("guild", "guild", metadata_match={"guild_id": wanted})], default=Target(type=AGENT, id="d")
    )
    routed = event(metadata={"guild_id": sent})
    assert router.route(routed).target_id == "guild"
    assert router.explain(routed).decision == router.route(routed)
    for other in ("98765432", "987654321 ", True, "0x3ade68b1"):
        missed = event(metadata={"guild_id": other})
        assert router.route(missed).target_id == "d"
        assert router.explain(missed).decision == router.route(missed)


def test_a_long_list_of_ids_gains_its_text_forms_in_linear_time() -> None:
    """Each integer's text was looked up in the whole list (``in`` on a tuple): 20,000 guild ids
    took 14 s to read. Counted, not timed: comparisons of an id with another value."""
    from dynamic_agents.routing.rules import _with_text_forms

    compared = 0

    class CountedId(int):
        def __eq__(self, other: object) -> bool:
            nonlocal compared
            compared += 1
            return int.__eq__(self, other) is True

        __hash__ = int.__hash__

    ids = tuple(CountedId(n) for n in range(2_000))
    forms = _with_text_forms((*ids, "7"))
    assert forms == (*ids, "7", *(str(n) for n in range(2_000) if n != 7))
    assert compared <= 4 * len(ids)


@pytest.mark.parametrize(("wanted", "sent"), [(1, True), (1, "True"), ([0], False), ("1", 1), (1.5, "1.5")])
def test_only_an_integer_gains_its_text_form(wanted: Any, sent: Any) -> None:
    """A boolean still matches only a boolean; text and non-integral numbers match as written."""
    router = EventRouter(
        [rule("flagged", "flagged", metadata_match={"flag": wanted})], default=Target(type=AGENT, id="d")
    )
    routed = event(metadata={"flag": sent})
    assert router.route(routed).target_id == "d"
    assert router.explain(routed).decision == router.route(routed)


@pytest.mark.parametrize("sent", [1, True, "1"])
def test_a_list_of_a_boolean_and_an_integer_matches_each_as_its_own_kind(sent: Any) -> None:
    router = EventRouter([rule("either", "either", metadata_match={"flag": [True, 1]})])
    routed = event(metadata={"flag": sent})
    assert router.route(routed).target_id == "either"
    assert router.explain(routed).decision == router.route(routed)


class _InterleavingRouter(EventRouter):
    """Runs ``during`` at one chosen point of another call: after the ``pause_at``-th read of the
    router's own data, or after each of its attribute assignments — where another thread could
    run between two bytecodes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_hook"] = None
        super().__init__(*args, **kwargs)

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        hook = super().__getattribute__("__dict__").get("_hook")
        if hook is not None and name in super().__getattribute__("__dict__") and name != "_hook":
            hook("read")
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        hook = self.__dict__.get("_hook")
        if hook is not None:
            hook("write")


@pytest.mark.parametrize("pause_at", range(1, 8))
def test_a_route_during_replace_rules_sees_the_old_rules_or_the_new_never_a_mix(pause_at: int) -> None:
    """``replace_rules`` assigned the index in several attributes and ``route`` read them one by
    one: a route on another thread could meet one rule set's per-source index with the other's
    any-source one, and decide by a mix of rules neither set holds."""
    fallback = Target(type=AGENT, id="fallback")
    routed = event(user_id="u1")

    # a replace_rules between two reads of a route: the old per-source "x" with the new "z"
    # would give "x", where the old rules give "y" and the new "z"
    old_rules = [rule("x", "x", source="discord", priority=1), rule("y", "y", user_ids=["u1"], priority=2)]
    new_rules = [rule("z", "z", user_ids=["u1"])]
    router = _InterleavingRouter(old_rules, default=fallback)
    reads = 0

    def replace_after_a_read(kind: str) -> None:
        nonlocal reads
        reads += kind == "read"
        if reads == pause_at:
            router.__dict__["_hook"] = None
            router.replace_rules(new_rules)

    router.__dict__["_hook"] = replace_after_a_read
    assert router.route(routed).target_id in {"y", "z"}
    if router.__dict__["_hook"] is not None:  # the route read less than that: nothing to interleave
        router.__dict__["_hook"] = None
        router.replace_rules(new_rules)
    assert router.route(routed).target_id == "z"

    # a route between two writes of a replace_rules: the new per-source index (no rule for
    # discord) with the old any-source one (none) would fall back, where either set routes
    old_rules = [rule("old", "old", source="discord")]
    new_rules = [rule("new", "new", user_ids=["u1"])]
    router = _InterleavingRouter(old_rules, default=fallback)
    seen: list[str] = []

    def route_after_a_write(kind: str) -> None:
        if kind == "write":
            router.__dict__["_hook"] = None
            seen.append(router.route(routed).target_id)
            router.__dict__["_hook"] = route_after_a_write

    router.__dict__["_hook"] = route_after_a_write
    router.replace_rules(new_rules)
    router.__dict__["_hook"] = None
    assert set(seen) <= {"old", "new"}
    assert router.route(routed).target_id == "new"
    assert [r.name for r in router.rules] == ["new"]


CANARY = "sk-live-routing-canary-7f3a9c2e1b5d4f60"


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"rules": "vip"}, "rules"),
        ({"rules": None}, "rules"),
        ({"rules": [{"name": "r", "source": "slack", "agent_id": "a"}]}, "rules[0]"),
        ({"rules": [rule("ok", source="slack"), CANARY]}, "rules[1]"),
        ({"source_defaults": [("slack", Target(type=AGENT, id="a"))]}, "source_defaults"),
        ({"source_defaults": {"slack": "slack-assistant"}}, "source_defaults['slack']"),
        ({"source_defaults": {"slack": CANARY}}, "source_defaults['slack']"),
        ({"default": "default-assistant"}, "default"),
        ({"default": {"type": "agent", "id": "x"}}, "default"),
        ({"default": CANARY}, "default"),
    ],
)
def test_arguments_of_the_wrong_type_are_refused_at_construction(
    arguments: dict[str, Any], named: str
) -> None:
    """A string default or source default made decisions whose ``target`` was that string (the
    worker then failed on ``decision.target_id``); rules of the wrong type failed with a bare
    ``AttributeError``. Each is a ``ConfigurationError`` naming the argument and the value, a
    key-shaped one masked."""
    with pytest.raises(ConfigurationError) as caught:
        EventRouter(**arguments)
    message = str(caught.value)
    assert message.startswith(named + " must be")
    assert CANARY not in message


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("helper", "Target(type=TargetType.AGENT, id='helper') for an agent of that id"),
        ({"type": "team", "id": "t"}, "Target.model_validate(mapping) for a target as data"),
        (3, "such as Target(type=TargetType.AGENT, id='assistant')"),
        (CANARY, "such as Target(type=TargetType.AGENT, id='assistant')"),  # not even masked
    ],
)
def test_a_default_that_is_no_target_is_told_how_to_write_what_was_given(value: object, hint: str) -> None:
    """Each said "such as Target(type=TargetType.AGENT, id='assistant')", whatever was given."""
    for arguments, named in [
        ({"default": value}, "default must be a Target or None"),
        ({"source_defaults": {"slack": value}}, "source_defaults['slack'] must be a Target"),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            EventRouter(**arguments)
        assert str(caught.value).startswith(f"{named}, {hint}, got ")
        assert CANARY not in str(caught.value)


@pytest.mark.parametrize("rules", ["vip", [{"name": "r", "source": "slack", "agent_id": "a"}]])
def test_replace_rules_of_the_wrong_type_are_refused_keeping_the_old(rules: Any) -> None:
    router = EventRouter([rule("old", source="slack")])
    with pytest.raises(ConfigurationError, match=r"^rules"):
        router.replace_rules(rules)
    assert [r.name for r in router.rules] == ["old"]


class _CountedName(str):
    """A rule name counting how often it is compared with another."""

    __slots__ = ()
    comparisons = 0

    def __eq__(self, other: object) -> bool:
        _CountedName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_duplicate_rule_names_are_found_without_comparing_every_pair() -> None:
    """Every name was counted in the whole list (``names.count``): 10,000 rules took 1.6 s and
    40,000 took 29 s, in ``EventRouter()`` and in ``replace_rules`` (``PUT /routing/rules``, on
    the event loop). Hashing compares a name only with one of the same hash."""
    rules = [
        RoutingRule.model_construct(
            name=_CountedName(f"rule-{n:04d}"),
            source="discord",
            source_ids=frozenset({str(n)}),
            target=Target(type=AGENT, id="a"),
        )
        for n in range(400)
    ]
    _CountedName.comparisons = 0
    router = EventRouter(rules)
    assert _CountedName.comparisons < len(rules)
    assert router.route(event(source_id="7")).rule == "rule-0007"
    with pytest.raises(RoutingConfigError, match=r"repeated: rule-0001$"):
        router.replace_rules([*rules, rules[1]])


def test_rules_sharing_a_metadata_value_are_indexed_without_comparing_every_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rule joined a metadata value's list after a look through the whole list (``not in``):
    20,000 rules of one guild took 6.4 s to index (its number and its text, two lists)."""
    from dynamic_agents.routing import router as router_module

    comparisons = 0

    def counted(self: object, other: object) -> bool:
        nonlocal comparisons
        comparisons += 1
        return self is other

    monkeypatch.setattr(router_module._CompiledRule, "__eq__", counted)
    rules = [rule(f"guild rule {n}", guild_ids=["987"], content_pattern=f"^c{n}$") for n in range(300)]
    router = EventRouter(rules)
    assert comparisons < len(rules)
    assert router.route(event(content="c42", metadata={"guild_id": 987})).rule == "guild rule 42"
    assert router.route(event(content="c43", metadata={"guild_id": "987"})).rule == "guild rule 43"
