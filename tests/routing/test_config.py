from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dynamic_agents.events import AgentRequestEvent, Target, TargetType
from dynamic_agents.exceptions import NoRouteError, RoutingConfigError, SecretNotFoundError
from dynamic_agents.routing import (
    EventRouter,
    InterfaceConfig,
    InterfaceRouting,
    RoutingConfig,
    RoutingRule,
    SessionSettings,
)
from dynamic_agents.secrets import SecretsManager, StaticSource
from tests.support.yaml_documents import FORBIDDEN_CHARACTERS, alias_bomb

# The design document's config/interfaces/discord.yaml, as written there.
SEED_DISCORD_YAML = """\
# config/interfaces/discord.yaml
discord:
  token: "secret:discord:bot_token"  # Resolved via SecretsManager

  routing:
    default_agent: "discord-assistant"

    rules:
      - name: "Admin Channel"
        channel_ids: ["123456789"]
        agent_id: "admin-agent"

      - name: "Support Guild"
        guild_ids: ["987654321"]
        team_id: "support-team"

      - name: "Code Help"
        content_pattern: "^/code"
        agent_id: "code-assistant"

  session:
    prefix: "discord"
    ttl: 3600
"""


def discord(**fields: Any) -> AgentRequestEvent:
    base: dict[str, Any] = {"source": "discord", "source_id": "555", "user_id": "u", "content": "hi"}
    base.update(fields)
    return AgentRequestEvent.model_validate(base)


@pytest.mark.usefixtures("yaml_loader")
def test_the_seed_discord_yaml_loads_and_routes() -> None:
    config = RoutingConfig.from_yaml(SEED_DISCORD_YAML, source="discord.yaml")
    router = config.router()
    cases = [
        (discord(source_id="123456789", content="/code but in the admin channel"), "agent", "admin-agent"),
        (discord(metadata={"guild_id": "987654321"}), "team", "support-team"),
        (discord(content="/code fix my loop"), "agent", "code-assistant"),
        (discord(content="anything else"), "agent", "discord-assistant"),
    ]
    for event, kind, target in cases:
        decision = router.route(event)
        assert (decision.target_type.value, decision.target_id) == (kind, target), event.content
    interface = config.interfaces["discord"]
    assert (interface.session.prefix, interface.session.ttl) == ("discord", 3600)
    assert interface.settings == {"token": "secret:discord:bot_token"}
    assert all(rule.source == "discord" for rule in interface.routing.rules)


def test_rules_of_one_interface_do_not_apply_to_another() -> None:
    config = RoutingConfig.from_yaml(
        SEED_DISCORD_YAML + "\nslack:\n  routing:\n    default_agent: slack-assistant\n"
    )
    decision = config.router().route(discord(source="slack", content="/code x"))
    assert decision.target_id == "slack-assistant"


async def test_secret_references_in_settings_resolve_through_the_manager() -> None:
    config = RoutingConfig.from_yaml(SEED_DISCORD_YAML)
    secrets = SecretsManager(StaticSource({"discord": {"bot_token": "discord-bot-token-0001"}}))
    settings = await config.interfaces["discord"].resolve_settings(secrets)
    assert settings["token"].reveal() == "discord-bot-token-0001"
    assert "discord-bot-token-0001" not in repr(settings)


async def test_a_setting_that_cannot_be_resolved_is_named() -> None:
    config = RoutingConfig.from_yaml(SEED_DISCORD_YAML)
    secrets = SecretsManager(StaticSource({}))
    with pytest.raises(SecretNotFoundError, match=r"^token: no secret field 'bot_token'"):
        await config.interfaces["discord"].resolve_settings(secrets)


def test_global_default_from_the_top_level() -> None:
    config = RoutingConfig.from_dict({"default_agent": "everyone", "discord": {}})
    assert config.default == Target(type=TargetType.AGENT, id="everyone")
    assert config.router().route(discord(source="telegram")).reason == "global default"


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("yaml_text", "line", "path", "message"),
    [
        (
            "discord:\n  routing:\n    rules:\n"
            "      - name: ok\n        source: discord\n        agent_id: a\n"
            "      - name: evil\n        content_pattern: '(a+)+$'\n        agent_id: b\n",
            8,
            "discord.routing.rules[1].content_pattern",
            "nests an unbounded quantifier",
        ),
        (
            "discord:\n  routing:\n    default_agent: a\n    default_team: b\n",
            3,
            "discord.routing",
            "give one default",
        ),
        (
            "discord:\n  session:\n    ttl: -5\n",
            3,
            "discord.session.ttl",
            "greater than 0",
        ),
        (
            "discord:\n  routing:\n    rules:\n      - name: x\n        agent_id: a\n        team_id: b\n",
            4,
            "discord.routing.rules[0]",
            "give one of agent_id, team_id, workflow_id",
        ),
        (
            "discord:\n  routing:\n    rules:\n"
            "      - name: typo\n        chanel_ids: ['1']\n        agent_id: a\n",
            5,
            "discord.routing.rules[0].chanel_ids",
            "Extra inputs are not permitted",
        ),
        (  # one would silently replace the other
            "discord:\n  routing:\n    rules:\n"
            "      - name: vip\n        user_ids: ['1', '2']\n        user_id: '3'\n        agent_id: a\n",
            4,
            "discord.routing.rules[0]",
            "give user_id (one user) or user_ids (a list), not both",
        ),
        (
            "discord:\n  routing:\n    rules:\n      - name: guild\n        guild_ids: ['1']\n"
            "        metadata_match: {guild_id: '2'}\n        agent_id: a\n",
            4,
            "discord.routing.rules[0]",
            "give guild_ids or metadata_match.guild_id, not both",
        ),
        (
            "discord:\n  routing:\n    default_agent: a\n    default: {type: team, id: t}\n",
            3,
            "discord.routing",
            "give one default, not default_agent and default",
        ),
    ],
)
def test_errors_give_file_line_and_path(yaml_text: str, line: int, path: str, message: str) -> None:
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="interfaces.yaml")
    error = caught.value
    assert (error.source, error.line, error.path) == ("interfaces.yaml", line, path)
    assert message in str(error)
    assert str(error).startswith(f"interfaces.yaml:{line} at {path}: ")


@pytest.mark.usefixtures("yaml_loader")
def test_invalid_yaml_and_wrong_shapes() -> None:
    with pytest.raises(RoutingConfigError, match=r"bad.yaml:3: not valid YAML"):
        RoutingConfig.from_yaml("discord:\n  routing: [unclosed\n", source="bad.yaml")
    with pytest.raises(RoutingConfigError, match="expected a mapping"):
        RoutingConfig.from_yaml("- just\n- a list\n")
    assert RoutingConfig.from_yaml("").interfaces == {}


def test_several_files_make_one_config(tmp_path: Path) -> None:
    (tmp_path / "discord.yaml").write_text(SEED_DISCORD_YAML)
    (tmp_path / "slack.yaml").write_text("slack:\n  routing:\n    default_agent: slack-assistant\n")
    config = RoutingConfig.from_files(sorted(tmp_path.glob("*.yaml")))
    assert set(config.interfaces) == {"discord", "slack"}
    (tmp_path / "again.yaml").write_text("# the same interface again\ndiscord: {}\n")
    with pytest.raises(RoutingConfigError) as twice:
        RoutingConfig.from_files([tmp_path / "discord.yaml", tmp_path / "again.yaml"])
    assert (twice.value.source, twice.value.line, twice.value.path) == (
        str(tmp_path / "again.yaml"),
        2,
        "discord",
    )
    assert f"configured twice (first in {tmp_path / 'discord.yaml'}:" in str(twice.value)


def test_a_second_global_default_in_another_file_names_both_places(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("default_agent: a\n")
    (tmp_path / "b.yaml").write_text("slack: {}\n\ndefault_team: b\n")
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_files([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    error = caught.value
    assert (error.source, error.line, error.path) == (str(tmp_path / "b.yaml"), 3, "default_team")
    assert f"the first in {tmp_path / 'a.yaml'}:1" in str(error)


def test_a_top_level_default_is_the_global_default_not_an_interface(tmp_path: Path) -> None:
    """``default:`` with a target, as under ``routing``: it made an interface named "default"."""
    config = RoutingConfig.from_yaml("default: {type: agent, id: everyone}\ndiscord: {}\n")
    assert config.default == Target(type=TargetType.AGENT, id="everyone")
    assert set(config.interfaces) == {"discord"}
    assert config.router().route(discord(source="telegram")).target == config.default
    with pytest.raises(RoutingConfigError, match="give one default, not default_team and default"):
        RoutingConfig.from_yaml("default: {type: agent, id: a}\ndefault_team: t\n")
    (tmp_path / "a.yaml").write_text("default_agent: a\n")
    (tmp_path / "b.yaml").write_text("slack: {}\ndefault: {type: team, id: b}\n")
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_files([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert (caught.value.line, caught.value.path) == (2, "default")


async def test_targets_can_be_checked_against_a_store() -> None:
    router = RoutingConfig.from_yaml(SEED_DISCORD_YAML).router()
    known = {"admin-agent", "code-assistant", "discord-assistant"}
    with pytest.raises(RoutingConfigError, match="team 'support-team'"):
        await router.check_targets(lambda target: target.id in known)


def test_two_global_defaults_are_a_config_error_naming_the_file() -> None:
    with pytest.raises(
        RoutingConfigError, match=r"^interfaces.yaml: give one default, not default_agent, default_team"
    ):
        RoutingConfig.from_yaml("default_agent: a\ndefault_team: b\n", source="interfaces.yaml")


def test_a_rule_name_used_twice_is_refused_at_load_naming_where(tmp_path: Path) -> None:
    """The router names the rule behind each decision, so names are unique across interfaces: a
    repeat is refused where it is written, not later by ``router()`` as ``<dict>``."""
    admin = "  routing:\n    rules:\n      - name: Admin\n        channel_ids: ['1']\n        agent_id: a\n"
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(f"discord:\n{admin}slack:\n{admin}", source="interfaces.yaml")
    error = caught.value
    assert (error.source, error.line, error.path) == ("interfaces.yaml", 10, "slack.routing.rules[0].name")
    assert "'Admin' is already used at interfaces.yaml:4 at discord.routing.rules[0].name" in str(error)
    (tmp_path / "discord.yaml").write_text(f"discord:\n{admin}")
    (tmp_path / "slack.yaml").write_text(f"slack:\n{admin}")
    with pytest.raises(RoutingConfigError) as across:
        RoutingConfig.from_files([tmp_path / "discord.yaml", tmp_path / "slack.yaml"])
    error = across.value
    assert (error.source, error.line) == (str(tmp_path / "slack.yaml"), 4)
    assert f"already used at {tmp_path / 'discord.yaml'}:4 at discord.routing.rules[0].name" in str(error)


@pytest.mark.parametrize("written", ["[987654321]", "['987654321']", "'987654321'"])
@pytest.mark.parametrize("sent", [987654321, "987654321"])
def test_guild_ids_match_an_id_sent_as_text_or_as_a_number(written: str, sent: object) -> None:
    """Platforms send guild ids as text or as numbers, and YAML reads an unquoted id as a number."""
    yaml_text = (
        f"discord:\n  routing:\n    rules:\n      - {{name: g, guild_ids: {written}, agent_id: guildbot}}\n"
    )
    router = RoutingConfig.from_yaml(yaml_text).router()
    event = AgentRequestEvent(
        source="discord", source_id="c", user_id="u", content="x", metadata={"guild_id": sent}
    )
    assert router.route(event).target_id == "guildbot"
    other = event.model_copy(update={"metadata": {"guild_id": 98765432}})
    with pytest.raises(NoRouteError):
        router.route(other)


@pytest.mark.parametrize(
    ("condition", "channel", "user"),
    [
        ("channel_ids: [123456789]", "123456789", "u"),  # a snowflake written unquoted
        ("channel_ids: [123456789, C024BE91L]", "C024BE91L", "u"),
        ("channel_ids: ['123456789']", "123456789", "u"),
        ("user_ids: [42, '43']", "c", "42"),
        ("user_ids: [42, '43']", "c", "43"),
        ("user_id: 42", "c", "42"),
        ("user_id: 0", "c", "0"),
        ("user_id: U024BE7LH", "c", "U024BE7LH"),
        ("channel_ids: 123456789", "123456789", "u"),  # one id alone, as guild_ids takes one
        ("user_ids: U024BE7LH", "c", "U024BE7LH"),
    ],
)
def test_channel_and_user_ids_written_unquoted_match_the_id_an_event_sends(
    condition: str, channel: str, user: str
) -> None:
    """Discord and Slack ids are naturally written unquoted in YAML, which reads them as numbers:
    ``channel_ids: [123]`` was refused (``Input should be a valid string``) while ``guild_ids:
    [123]`` was taken. An event's ``source_id`` and ``user_id`` are text: the rule keeps the text."""
    yaml_text = f"discord:\n  routing:\n    rules:\n      - {{name: r, {condition}, agent_id: ids}}\n"
    router = RoutingConfig.from_yaml(yaml_text).router()
    sent = AgentRequestEvent(source="discord", source_id=channel, user_id=user, content="x")
    assert router.route(sent).target_id == "ids"
    assert router.explain(sent).decision == router.route(sent)
    missed = sent.model_copy(update={"source_id": "12345678", "user_id": "4"})
    with pytest.raises(NoRouteError):
        router.route(missed)


@pytest.mark.parametrize(
    ("key", "noun"), [("channel_ids", "channel"), ("user_ids", "user"), ("user_id", "user")]
)
@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("1.5", "1.5"),
        ("9.87654321e+8", "987654321.0"),  # equal to an id, yet none
        ("yes", "the boolean True"),
        ("null", "None"),
        ("2001-02-03", "a date"),
        ("{id: 1}", "a dict"),
    ],
)
def test_a_channel_or_user_id_that_is_neither_text_nor_an_integer_is_refused_naming_the_rule(
    key: str, noun: str, written: str, shown: str
) -> None:
    """As ``guild_ids`` refuses one, in the same words."""
    value = written if key == "user_id" else f"[u1, {written}]"
    yaml_text = (
        f"discord:\n  routing:\n    rules:\n      - name: r\n        {key}: {value}\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="ids.yaml")
    assert (caught.value.line, caught.value.path) == (4, "discord.routing.rules[0]")
    assert f"rule 'r': {key} holds {shown}: a {noun} id is text or an integer:" in str(caught.value)
    assert ("YAML reads an unquoted yes" in str(caught.value)) == (written == "yes")


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("written", "number"),
    [("0123456", 42798), ("0x1f", 31), ("1_000", 1000), ("1:30", 90), ("0b101", 5)],
)
@pytest.mark.parametrize("key", ["channel_ids", "user_ids", "guild_ids"])
def test_an_integer_not_written_in_decimal_is_refused_naming_the_number_yaml_reads(
    key: str, written: str, number: int
) -> None:
    """YAML 1.1 reads an unquoted ``0123456`` as octal, ``1:30`` as 90 (base 60): an id so written
    became another id (``'42798'``), and the rule never matched the channel meant."""
    yaml_text = (
        "discord:\n  routing:\n    rules:\n      - name: r\n"
        f"        {key}: [1, {written}]\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="ids.yaml")
    assert (caught.value.line, caught.value.path) == (5, f"discord.routing.rules[0].{key}[1]")
    assert f"{written} is read by YAML as the number {number}" in str(caught.value)
    assert f"'{written}'" in str(caught.value)  # quote it
    if key != "guild_ids" or written.isdigit():  # a guild id is digits
        quoted = yaml_text.replace(written, f"'{written}'")
        assert RoutingConfig.from_yaml(quoted).interfaces["discord"].routing.rules


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    "key", ["channel_ids", "source_ids", "user_ids", "source", "source_id_pattern", "content_pattern"]
)
@pytest.mark.parametrize("written", ["", " null", " ~"])
def test_a_condition_written_without_a_value_is_refused_naming_its_line(key: str, written: str) -> None:
    """``channel_ids:`` with nothing after it (a list not filled in) is YAML's null, and a null
    condition was taken as one left out: the rule matched every channel of its source."""
    yaml_text = (
        "discord:\n  routing:\n    rules:\n      - name: support\n        source: discord\n"
        f"        {key}:{written}\n        agent_id: support\n"
    )
    if key == "source":  # given once only
        yaml_text = yaml_text.replace("        source: discord\n", "        user_id: u1\n")
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="rules.yaml")
    assert (caught.value.line, caught.value.path) == (6, f"discord.routing.rules[0].{key}")
    assert f"{key} has no value" in str(caught.value)
    assert "leave the key out" in str(caught.value)
    # elsewhere an empty value is the setting's own business
    assert RoutingConfig.from_yaml(f"discord:\n  {key}:{written}\n").interfaces["discord"].settings == {
        key: None
    }


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("key", "value", "path"),
    [
        ("user_ids", "[u1, +15551234567]", "user_ids[1]"),
        ("user_id", "+15551234567", "user_id"),
        ("channel_ids", "[+15551234567]", "channel_ids[0]"),
        ("metadata_match", "{phone: +15551234567}", "metadata_match.phone"),
    ],
)
def test_an_id_written_with_a_plus_sign_is_refused_not_read_without_it(
    key: str, value: str, path: str
) -> None:
    """YAML reads an unquoted ``+15551234567`` (a phone number: Signal, SMS and Twilio's WhatsApp
    ids) as the number 15551234567, which a rule took as the text ``'15551234567'``: the ``+``
    was lost, and the rule never matched the sender written."""
    yaml_text = (
        "discord:\n  routing:\n    rules:\n      - name: phone\n"
        f"        {key}: {value}\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="ids.yaml")
    assert (caught.value.line, caught.value.path) == (5, f"discord.routing.rules[0].{path}")
    assert "+15551234567 is read by YAML as the number 15551234567" in str(caught.value)
    assert "'+15551234567'" in str(caught.value)  # quote it
    quoted = yaml_text.replace("+15551234567", "'+15551234567'")
    router = RoutingConfig.from_yaml(quoted).router()
    fields: dict[str, Any] = {"user_id": "u1", "source_id": "555", "metadata": {}}
    if key.startswith("user_id"):
        fields["user_id"] = "+15551234567"
    elif key == "channel_ids":
        fields["source_id"] = "+15551234567"
    else:
        fields["metadata"] = {"phone": "+15551234567"}
    assert router.route(discord(**fields)).rule == "phone"


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("written", "value"), [("no", False), ("NO", False), ("yes", True), ("on", True), ("Off", False)]
)
def test_a_metadata_value_yaml_reads_as_a_boolean_unless_true_or_false_is_refused(
    written: str, value: bool
) -> None:
    """YAML 1.1 reads an unquoted ``no`` (Norway's country code, Norwegian's language code),
    ``yes``, ``on`` or ``off`` as a boolean: ``metadata_match: {lang: no}`` wanted ``False`` and
    never matched the ``"no"`` an event sends."""
    yaml_text = (
        "discord:\n  routing:\n    rules:\n      - name: norsk\n"
        f"        metadata_match: {{lang: {written}}}\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="rules.yaml")
    assert (caught.value.line, caught.value.path) == (5, "discord.routing.rules[0].metadata_match.lang")
    assert f"{written} is read by YAML as the boolean {value}" in str(caught.value)
    assert f"'{written}'" in str(caught.value)  # quote it
    assert str(value).lower() in str(caught.value)  # or write true / false
    quoted = RoutingConfig.from_yaml(yaml_text.replace(f"lang: {written}", f"lang: '{written}'"))
    assert quoted.router().route(discord(metadata={"lang": written})).rule == "norsk"
    # true and false are booleans, as JSON writes them
    for boolean in ("true", "false", "True"):
        router = RoutingConfig.from_yaml(yaml_text.replace(f"lang: {written}", f"lang: {boolean}")).router()
        assert router.route(discord(metadata={"lang": boolean.lower() == "true"})).rule == "norsk"


def test_a_metadata_value_of_nan_in_yaml_is_refused_naming_its_line() -> None:
    yaml_text = (
        "discord:\n  routing:\n    rules:\n      - name: scored\n"
        "        metadata_match: {score: .nan}\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="rules.yaml")
    assert (caught.value.line, caught.value.path) == (5, "discord.routing.rules[0].metadata_match")
    assert "'score' holds nan" in str(caught.value)


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(("written", "number"), [("0600", 384), ("1:30", 90), ("1:00:00", 3600)])
def test_a_session_ttl_not_written_in_decimal_is_refused_naming_the_number_yaml_reads(
    written: str, number: int
) -> None:
    """``ttl: 0600`` was 384 seconds (octal), ``ttl: 1:30`` 90 (base 60), without a word."""
    yaml_text = f"discord:\n  session:\n    prefix: d\n    ttl: {written}\n"
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="discord.yaml")
    assert (caught.value.line, caught.value.path) == (4, "discord.session.ttl")
    assert f"{written} is read by YAML as the number {number}" in str(caught.value)
    assert str(caught.value).endswith("write the number in decimal")
    # forms that say what they are stay numbers
    for other, seconds in (("600", 600), ("3_600", 3600), ("0x10", 16), ("+60", 60)):
        session = RoutingConfig.from_yaml(yaml_text.replace(written, other)).interfaces["discord"].session
        assert session.ttl == seconds


@pytest.mark.usefixtures("yaml_loader")
def test_a_metadata_value_written_with_nothing_after_it_is_refused_naming_its_line() -> None:
    """``guild_id:`` with nothing after it (a value not filled in) is YAML's null, which matches
    an event without a ``guild_id``: the rule took every direct message, silently."""
    yaml_text = (
        "discord:\n  routing:\n    rules:\n      - name: guild\n        metadata_match:\n"
        "          guild_id:\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="rules.yaml")
    assert (caught.value.line, caught.value.path) == (6, "discord.routing.rules[0].metadata_match.guild_id")
    assert "guild_id has no value" in str(caught.value)
    assert "write null" in str(caught.value)
    # null written out means it: an event without the key (or with null)
    router = RoutingConfig.from_yaml(yaml_text.replace("guild_id:\n", "guild_id: null\n")).router()
    assert router.route(discord()).rule == "guild"


def test_a_pattern_nested_too_deeply_in_yaml_is_a_config_error_naming_its_line() -> None:
    pattern = "(" * 1000 + "a" + ")" * 1000
    yaml_text = (
        "discord:\n  routing:\n    rules:\n      - name: deep\n"
        f"        source_id_pattern: '{pattern}'\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="rules.yaml")
    assert (caught.value.line, caught.value.path) == (5, "discord.routing.rules[0].source_id_pattern")
    assert "nests groups too deeply" in str(caught.value)


@pytest.mark.usefixtures("yaml_loader")
def test_integers_written_in_decimal_are_read() -> None:
    text = (
        "discord:\n  routing:\n    rules:\n"
        "      - {name: r, channel_ids: [0, 10, -7], priority: -5, agent_id: a}\n"
        "      - {name: s, channel_ids: [1], priority: +5, agent_id: a}\n"
    )
    rule, other = RoutingConfig.from_yaml(text).interfaces["discord"].routing.rules
    assert (rule.source_ids, rule.priority, other.priority) == (frozenset({"0", "10", "-7"}), -5, 5)
    # an interface's own settings may mean an octal number
    settings = RoutingConfig.from_yaml("discord:\n  mode: 0644\n").interfaces["discord"].settings
    assert settings == {"mode": 0o644}


@pytest.mark.usefixtures("yaml_loader")
def test_a_negative_channel_or_user_id_written_unquoted_is_kept_as_its_text_and_matches() -> None:
    """Telegram's group chats have negative ids (``-1001234567890``): written unquoted, YAML reads
    one as a number; it was refused, though its text is the id the event carries."""
    text = (
        "telegram:\n  routing:\n    rules:\n"
        "      - {name: group, channel_ids: [-1001234567890], user_id: -42, agent_id: a}\n"
    )
    (rule,) = RoutingConfig.from_yaml(text).interfaces["telegram"].routing.rules
    assert (rule.source_ids, rule.user_ids) == (frozenset({"-1001234567890"}), frozenset({"-42"}))
    router = EventRouter(rules=[rule])
    event = AgentRequestEvent(source="telegram", source_id="-1001234567890", user_id="-42", content="hi")
    assert router.route(event).target == Target(type=TargetType.AGENT, id="a")
    with pytest.raises(ValidationError, match=r"guild_ids holds -5: a guild id is an integer or its"):
        RoutingRule.model_validate({"name": "r", "guild_ids": [-5], "agent_id": "a"})  # a snowflake


@pytest.mark.parametrize(
    ("written", "shown"), [("", "''"), ("a\nb", "'a\\nb'"), ("general " * 33, "'general general")]
)
def test_a_channel_id_no_event_can_have_is_refused_naming_the_rule(written: str, shown: str) -> None:
    """An event's ``source_id`` is 1 to 256 characters without control characters: a rule's empty
    channel id (``channel_ids: ['']``) was accepted and matched nothing, silently."""
    with pytest.raises(ValidationError) as caught:
        RoutingRule.model_validate({"name": "r", "channel_ids": ["C1", written], "agent_id": "a"})
    assert f"rule 'r': channel_ids holds {shown}" in str(caught.value)
    assert "which no event's channel id can be (1 to 256 characters" in str(caught.value)
    # a user id has no such bounds on the wire: an event's user_id may be empty
    rule = RoutingRule.model_validate({"name": "r", "user_ids": [""], "agent_id": "a"})
    assert rule.user_ids == frozenset({""})


def test_ids_given_in_code_as_integers_are_kept_as_their_text() -> None:
    rule = RoutingRule.model_validate({"name": "r", "source_ids": [1, "1", 2], "user_id": 7, "agent_id": "a"})
    assert (rule.source_ids, rule.user_ids) == (frozenset({"1", "2"}), frozenset({"7"}))
    with pytest.raises(
        ValidationError, match=r"rule .r.: channel_ids holds the boolean True: a channel id is"
    ):
        RoutingRule.model_validate({"name": "r", "channel_ids": [True], "agent_id": "a"})


@pytest.mark.usefixtures("yaml_loader")
def test_a_recursive_yaml_alias_is_a_config_error_naming_the_line() -> None:
    """``&a [*a]`` is valid YAML for a structure that contains itself: a typed error, not a
    ``RecursionError`` out of the loader."""
    for text in ("discord:\n  extra: &a [*a]\n", "discord: &a\n  nested: *a\n"):
        with pytest.raises(RoutingConfigError) as caught:
            RoutingConfig.from_yaml(text, source="loop.yaml")
        assert caught.value.source == "loop.yaml"
        assert "refers to itself" in str(caught.value)


@pytest.mark.usefixtures("yaml_loader")
def test_an_alias_bomb_is_refused_at_load_naming_the_line() -> None:
    """Nine levels of nine aliases each stand for 9**9 (387 million) values ("billion laughs"):
    the loader shares them, but whatever walks the settings (``repr``, ``resolve_settings``, a
    JSON dump) meets every copy and never ends. Refused before anything walks them."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(alias_bomb("discord"), source="bomb.yaml")
    assert caught.value.source == "bomb.yaml"
    assert "aliases" in str(caught.value)
    assert caught.value.path.startswith("discord.l")


@pytest.mark.usefixtures("yaml_loader")
def test_aliases_that_expand_moderately_load() -> None:
    """A shared block (a merge key in every rule, a list reused) is what anchors are for."""
    rules = "".join(
        f"      - <<: *common\n        name: r{n}\n        channel_ids: *channels\n" for n in range(2000)
    )
    text = "discord:\n  ids: &channels ['1', '2', '3']\n  base: &common {agent_id: a}\n  routing:\n"
    config = RoutingConfig.from_yaml(text + "    rules:\n" + rules)
    assert len(config.interfaces["discord"].routing.rules) == 2000


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("text", "line", "path"),
    [
        ("discord:\n  routing: {default_agent: a}\ndiscord:\n  x: 1\n", 3, "discord"),
        ("discord:\n  routing: {default_agent: a}\nDiscord:\n  x: 1\n", 4, "Discord"),
        (
            "discord:\n  routing:\n    rules:\n      - name: r\n        user_id: u\n        agent_id: a\n"
            "        agent_id: b\n",
            7,
            "discord.routing.rules[0].agent_id",
        ),
    ],
)
def test_a_key_given_twice_is_refused_not_overwritten(text: str, line: int, path: str) -> None:
    """YAML readers keep the last of two equal keys; an interface written twice (in any case, as
    sources are read in lower case) lost its rules without a word. A merge key (``<<: *base``)
    overridden in place is still fine."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text, source="interfaces.yaml")
    assert (caught.value.line, caught.value.path) == (line, path)
    assert "given twice" in str(caught.value)


def test_interfaces_differing_only_in_case_are_refused_from_data_too() -> None:
    with pytest.raises(RoutingConfigError, match="'Discord' and 'discord' are one interface"):
        RoutingConfig.from_dict({"Discord": {"routing": {"default_agent": "a"}}, "discord": {}})


def test_a_merged_key_may_be_overridden() -> None:
    text = "discord:\n  base: &base {a: 1, b: 2}\n  mine:\n    <<: *base\n    b: 3\n"
    assert RoutingConfig.from_yaml(text).interfaces["discord"].settings["mine"] == {"a": 1, "b": 3}


def test_a_literal_token_in_interface_settings_is_masked_in_repr() -> None:
    """A bot token pasted in place of a reference must not reach a log line through ``repr``;
    references (which hold no secret) and other settings are shown."""
    canaries = ("CANARYtok3nMTIzNDU2Nzg5MDEy", "canary-signing-secret", "canary-nested-pass")
    text = (
        "slack:\n"
        f"  bot_token: {canaries[0]}\n"
        f"  signing_secret: {canaries[1]}\n"
        "  app_token: secret:slack:app_token\n"
        f"  proxy: {{url: 'http://proxy:8080', password: {canaries[2]}}}\n"
        "  team_name: Support Team\n"
    )
    config = RoutingConfig.from_yaml(text)
    interface = config.interfaces["slack"]
    for shown in (repr(config), str(config), repr(interface), str(interface)):
        for canary in canaries:
            assert canary not in shown
        assert "secret:slack:app_token" in shown
        assert "Support Team" in shown
        assert "http://proxy:8080" in shown
    assert interface.settings["bot_token"] == canaries[0]  # the value itself is kept for use


def test_an_interface_name_no_event_can_have_is_refused() -> None:
    """Rules under an interface apply to the source it names: under ``my discord`` they applied
    to no event at all, silently."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(
            "my discord:\n  routing:\n    rules: [{name: r, user_id: u, agent_id: a}]\n", source="i.yaml"
        )
    assert (caught.value.line, caught.value.path) == (2, "my discord")
    assert "not a platform name" in str(caught.value)
    with pytest.raises(RoutingConfigError, match="not a platform name"):
        RoutingConfig.from_dict({"": {}})


def test_an_interface_name_is_read_as_events_read_a_source() -> None:
    config = RoutingConfig.from_dict({" Discord ": {"routing": {"default_agent": "a"}}})
    assert set(config.interfaces) == {"discord"}
    event = AgentRequestEvent(source="discord", source_id="c", user_id="u", content="x")
    assert config.router().route(event).target_id == "a"


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("text", "message"),
    [
        # the pure reader's RecursionError, or libyaml's own limit (1,000 levels, at the line)
        ("discord:\n  x: " + "[" * 1000 + "]" * 1000 + "\n", "nested too deeply|maximum nesting depth"),
        ("discord: {}\n\x00\n", "not valid YAML"),
    ],
)
def test_yaml_the_reader_cannot_take_is_a_config_error(text: str, message: str) -> None:
    """Deep nesting raised ``RecursionError`` out of the YAML composer, and a control character
    a ``ReaderError`` from creating the loader, outside the error translation."""
    with pytest.raises(RoutingConfigError, match=message) as caught:
        RoutingConfig.from_yaml(text, source="odd.yaml")
    assert caught.value.source == "odd.yaml"


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(("text", "problem"), [(text, problem) for text, problem, _ in FORBIDDEN_CHARACTERS])
def test_a_character_yaml_does_not_allow_is_named_with_its_line_and_column(text: str, problem: str) -> None:
    """As every YAML reader of the library names it: it gave PyYAML's offset, no line."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text, source="odd.yaml")
    line, _, said = problem.removeprefix("at line ").partition(": ")
    assert caught.value.line == int(line)
    assert str(caught.value) == f"odd.yaml:{line}: not valid YAML: {said}"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            "discord:\n  routing:\n    rules:\n      - name: r\n        user_id: u\n"
            "        target: {type: agent, id: a, priority: 10}\n",
            "discord.routing.rules[0].target",
        ),
        ("discord:\n  routing:\n    default: {type: agent, id: a, ttl: 5}\n", "discord.routing.default"),
    ],
)
def test_an_unknown_key_in_a_target_is_refused_not_ignored(text: str, path: str) -> None:
    """A target is a type and an id: ``priority`` written inside it was dropped without a word,
    and the rule kept priority 0."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text)
    assert caught.value.path.startswith(path)
    assert "priority" in str(caught.value) or "ttl" in str(caught.value)


@pytest.mark.parametrize(
    ("yaml_text", "line", "path", "message"),
    [
        ("discord:\n  token: x\n  rules: []\n", 3, "discord.rules", "'rules' belongs under 'routing:'"),
        ("discord:\n  default_agent: a\n", 2, "discord.default_agent", "'default_agent' belongs under"),
        ("discord:\n  routng:\n    default_agent: a\n", 3, "discord.routng", "'routng' is not 'routing'"),
        ("slack:\n  Session: {ttl: 3}\n", 2, "slack.Session", "'Session' is not 'session'"),
    ],
)
def test_routing_keys_at_the_interface_level_and_misspellings_are_refused(
    yaml_text: str, line: int, path: str, message: str
) -> None:
    """Kept as settings, they left the interface routing nothing, without a word."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="i.yaml")
    assert (caught.value.line, caught.value.path) == (line, path)
    assert message in str(caught.value)


def test_other_settings_are_kept_as_given() -> None:
    text = "discord:\n  token: t\n  routes: 3\n  sessions_dir: /tmp\n  routing: {default_agent: a}\n"
    settings = RoutingConfig.from_yaml(text).interfaces["discord"].settings
    assert settings == {"token": "t", "routes": 3, "sessions_dir": "/tmp"}


def test_a_rule_naming_another_source_than_its_interface_is_refused() -> None:
    """A rule under ``discord:`` that said ``source: slack`` kept it, so it routed slack events
    and never a discord one, without a word: rules under an interface apply to that source."""
    text = (
        "discord:\n  routing:\n    rules:\n      - name: ok\n        source: Discord\n        agent_id: a\n"
        "      - name: stray\n        source: slack\n        content_pattern: hi\n        agent_id: b\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text, source="i.yaml")
    assert (caught.value.source, caught.value.line, caught.value.path) == (
        "i.yaml",
        8,
        "discord.routing.rules[1].source",
    )
    assert "'slack'" in str(caught.value)
    assert "'discord'" in str(caught.value)
    stray = RoutingRule.model_validate({"name": "stray", "source": "slack", "user_id": "u", "agent_id": "b"})
    with pytest.raises(ValueError, match=r"discord\.routing\.rules\[0\].*'slack'"):
        RoutingConfig(interfaces={"discord": InterfaceConfig(routing=InterfaceRouting(rules=(stray,)))})


@pytest.mark.parametrize("kind", [str, Path])
def test_from_files_given_one_path_says_to_pass_a_list(tmp_path: Path, kind: type[str] | type[Path]) -> None:
    """A single path was iterated: a ``str`` character by character (``No such file or
    directory: 'c'``), a ``Path`` not at all (``'PosixPath' object is not iterable``)."""
    path = tmp_path / "discord.yaml"
    path.write_text("discord:\n  routing: {default_agent: a}\n", encoding="utf-8")
    with pytest.raises(
        TypeError, match=r"from_files takes an iterable of paths, got the path '.*discord\.yaml'"
    ):
        RoutingConfig.from_files(kind(path))  # type: ignore[arg-type]
    assert set(RoutingConfig.from_files([kind(path)]).interfaces) == {"discord"}


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("yaml_text", "path", "shown"),
    [
        (
            "discord:\n  routing:\n    rules:\n"
            "      - {name: a, channel_ids: [c], agent_id: x, priority: 1.5}\n",
            "discord.routing.rules[0].priority",
            "Input should be a valid integer (got 1.5)",
        ),
        ("discord:\n  session:\n    ttl: soon\n", "discord.session.ttl", "(got 'soon')"),
        # the settings' durations are finite and at most MAX_SECONDS (2**31) everywhere
        ("discord:\n  session:\n    ttl: .inf\n", "discord.session.ttl", "finite number (got inf)"),
        ("discord:\n  session:\n    ttl: 1.0e+30\n", "discord.session.ttl", "2147483648 (got 1e+30)"),
        (  # a key pasted where a value belongs is masked, as in the spec errors
            "discord:\n  routing:\n    rules:\n"
            "      - {name: a, channel_ids: ['1'],\n"
            "         target: {type: 'sk-proj-abcdefghijklmnopqrstuvwxyz0123', id: x}}\n",
            "discord.routing.rules[0].target.type",
            "(got **********)",
        ),
    ],
)
def test_a_pydantic_error_shows_the_value_found(yaml_text: str, path: str, shown: str) -> None:
    """Path and line say where; the value says what was wrong there (``priority: 1.5`` is no
    integer)."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="interfaces.yaml")
    assert caught.value.path == path
    assert shown in str(caught.value)
    assert "sk-proj" not in str(caught.value)


@pytest.mark.parametrize(
    ("yaml_text", "line", "path", "refused"),
    [
        (
            "discord:\n  session:\n    ttl: '3600'\n",
            3,
            "discord.session.ttl",
            "Input should be a valid number (got '3600')",
        ),
        ("discord:\n  session:\n    ttl: yes\n", 3, "discord.session.ttl", "valid number (got True)"),
        (
            "discord:\n  routing:\n    rules:\n"
            "      - {name: a, channel_ids: ['1'], agent_id: x, priority: '10'}\n",
            4,
            "discord.routing.rules[0].priority",
            "Input should be a valid integer (got '10')",
        ),
        (
            "discord:\n  routing:\n    rules:\n"
            "      - {name: a, channel_ids: ['1'], agent_id: x, priority: 10.0}\n",
            4,
            "discord.routing.rules[0].priority",
            "Input should be a valid integer (got 10.0)",
        ),
    ],
)
def test_a_number_written_as_text_is_refused_naming_its_path(
    yaml_text: str, line: int, path: str, refused: str
) -> None:
    """As RouterConfig and the specs refuse it: ``ttl: "3600"`` and ``priority: "10"`` were read as
    numbers (``ttl: yes`` as one second)."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="interfaces.yaml")
    assert (caught.value.line, caught.value.path) == (line, path)
    assert refused in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"session": {"ttl": "30"}}, "discord.session.ttl"),
        (
            {"routing": {"rules": [{"name": "a", "source_ids": ["1"], "agent_id": "x", "priority": "5"}]}},
            "discord.routing.rules[0].priority",
        ),
    ],
)
def test_a_number_as_text_in_a_dict_is_refused_too(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_dict({"discord": settings})
    assert caught.value.path == path


def test_plain_numbers_are_taken_an_int_for_a_float_too() -> None:
    config = RoutingConfig.from_yaml(
        "discord:\n  session: {ttl: 30}\n  routing:\n    rules:\n"
        "      - {name: a, channel_ids: ['1'], agent_id: x, priority: -3}\n"
        "slack:\n  session: {ttl: 0.5}\n"
    )
    discord = config.interfaces["discord"]
    assert (discord.session.ttl, discord.routing.rules[0].priority) == (30, -3)
    assert config.interfaces["slack"].session.ttl == 0.5


def test_a_value_already_in_the_message_is_not_shown_twice() -> None:
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_dict(
            {
                "discord": {
                    "routing": {
                        "rules": [{"name": "a", "priority": True, "channel_ids": ["1"], "agent_id": "x"}]
                    }
                }
            }
        )
    assert str(caught.value).endswith("got True")


def test_a_blank_rule_name_in_yaml_names_the_field_and_the_value() -> None:
    text = "discord:\n  routing:\n    rules:\n      - {name: ' ', channel_ids: ['1'], agent_id: a}\n"
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text)
    assert caught.value.path == "discord.routing.rules[0].name"
    assert "name ' ' is only whitespace" in str(caught.value)


@pytest.mark.parametrize("prefix", ["a\x00b", "disc\nord", "tab\t", "del\x7f", "c1\x85"])
def test_a_session_prefix_with_a_control_character_is_refused(prefix: str) -> None:
    """The prefix becomes part of session ids and Redis key names."""
    with pytest.raises(ValidationError) as caught:
        SessionSettings(prefix=prefix)
    assert caught.value.errors()[0]["loc"] == ("prefix",)
    assert f"session prefix {prefix!r} has a control character" in str(caught.value)


@pytest.mark.usefixtures("yaml_loader")
def test_a_session_prefix_with_a_control_character_in_yaml_names_the_path_and_the_value() -> None:
    text = 'discord:\n  session:\n    prefix: "disc\\x01ord"\n'
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text, source="interfaces.yaml")
    assert (caught.value.line, caught.value.path) == (3, "discord.session.prefix")
    assert "session prefix 'disc\\x01ord' has a control character" in str(caught.value)
    assert SessionSettings(prefix="discord-eu:v2").prefix == "discord-eu:v2"


@pytest.mark.parametrize(("written", "value"), [('""', ""), ("''", ""), ('"  "', "  ")])
def test_an_empty_session_prefix_is_refused_naming_the_path_and_the_value(written: str, value: str) -> None:
    """``prefix: ""`` silently gave session ids prefixed with the source instead (and ``"  "``
    ids starting with blanks): surely a mistake. Left out (or ``null``), the source is used."""
    text = f"discord:\n  session:\n    prefix: {written}\n"
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text, source="interfaces.yaml")
    assert (caught.value.line, caught.value.path) == (3, "discord.session.prefix")
    assert f"session prefix {value!r} is blank" in str(caught.value)
    assert "leave prefix out to use the source" in str(caught.value)
    assert (
        RoutingConfig.from_yaml("discord:\n  session:\n    prefix: null\n").interfaces["discord"].session
        == SessionSettings()
    )


@pytest.mark.parametrize(
    ("written", "shown"),
    [("[yes, 1]", "True"), ("[1, true]", "True"), ("['1', no]", "False"), ("on", "True")],
)
def test_a_boolean_among_guild_ids_is_refused(written: str, shown: str) -> None:
    """``True == 1``: ``guild_ids: [yes, 1]`` (YAML reads ``yes`` as a boolean) dropped the ``1``
    as a duplicate of ``True``, so guild 1 was not routed. A guild id is text or an integer."""
    yaml_text = (
        "discord:\n  routing:\n    rules:\n"
        f"      - name: g\n        guild_ids: {written}\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="guilds.yaml")
    assert (caught.value.line, caught.value.path) == (4, "discord.routing.rules[0]")
    assert f"rule 'g': guild_ids holds the boolean {shown}: a guild id is an integer" in str(caught.value)


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("1.5", "1.5"),  # a float: it matched only an event's 1.5, never a guild
        ("[987654321, 1.5]", "1.5"),
        ("9.87654321e+8", "987654321.0"),  # equal to the id, yet no id
        ("[.inf]", "inf"),
        ("null", "None"),  # matched every event without a guild_id
        ("[~]", "None"),
        ("[general]", "'general'"),  # a channel's name, not a guild's id
        ("'98765 4321'", "'98765 4321'"),
        ("[-5]", "-5"),
        ("[2001-02-03]", "a date"),
        ("{id: 1}", "a dict"),
        ("[[1]]", "a list"),
    ],
)
def test_a_guild_id_that_is_no_integer_is_refused_naming_the_rule_and_the_value(
    written: str, shown: str
) -> None:
    """Guild ids are snowflakes, an integer or its digits as text: ``guild_ids: 1.5`` (or
    ``null``, or a name) was taken as the id wanted and the rule never matched a guild."""
    yaml_text = (
        "discord:\n  routing:\n    rules:\n"
        f"      - name: guild rule\n        guild_ids: {written}\n        agent_id: a\n"
    )
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(yaml_text, source="guilds.yaml")
    assert (caught.value.source, caught.value.line, caught.value.path) == (
        "guilds.yaml",
        4,
        "discord.routing.rules[0]",
    )
    assert (
        f"rule 'guild rule': guild_ids holds {shown}: a guild id is an integer or its digits as text"
        in str(caught.value)
    )
    with pytest.raises(ValidationError, match=r"rule 'r': guild_ids holds 1\.5: a guild id is"):
        RoutingRule(name="r", guild_ids=1.5, agent_id="a")


def test_guild_ids_given_as_text_and_as_the_same_number_keep_both_forms() -> None:
    rule = RoutingRule(name="g", guild_ids=["1", 1, 2], agent_id="a")
    assert rule.metadata_match["guild_id"] == ("1", 1, 2, "2")


KEY_CANARY = "sk-live-routing-canary-7f3a9c2e1b5d4f60"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (f'discord:\n  session:\n    prefix: "{KEY_CANARY}\\u0007"\n', "discord.session.prefix"),
        (
            f"discord:\n  routing:\n    rules:\n      - name: r\n        source: {KEY_CANARY}\n"
            "        agent_id: a\n",
            "discord.routing.rules[0].source",
        ),
        (
            f'discord:\n  routing:\n    rules:\n      - name: r\n        source: "{KEY_CANARY} x"\n'
            "        agent_id: a\n",
            "discord.routing.rules[0].source",
        ),
    ],
)
def test_a_key_pasted_into_a_routing_field_is_masked_in_the_error(text: str, path: str) -> None:
    """The value found is masked when shaped like a key, in the validator's own words too: the
    prefix error quoted the key in full and then masked it in its "(got …)"."""
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text, source="pasted.yaml")
    assert caught.value.path == path
    assert KEY_CANARY not in str(caught.value)
    assert "canary" not in repr(caught.value)


def test_a_key_pasted_as_a_source_defaults_key_is_masked_in_the_error() -> None:
    with pytest.raises(RoutingConfigError) as caught:
        EventRouter(
            source_defaults={
                f"{KEY_CANARY} ": Target(type=TargetType.AGENT, id="a"),
                "!": Target(type=TargetType.AGENT, id="b"),
            }
        )
    assert "canary" not in str(caught.value)


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("2001-02-30", "day is out of range for month"),  # a date YAML reads, then cannot build
        ("2001-13-01", "month must be in 1..12"),
        ("9" * 5000, "4300 digits"),
        ("!!int abc", "'abc'"),
        ("!!float abc", "'abc'"),
        (f"!!int {KEY_CANARY}", "**********"),
    ],
)
def test_a_scalar_the_yaml_reader_cannot_build_is_a_config_error_naming_the_line(
    value: str, says: str
) -> None:
    """Each escaped the loader as a bare ``ValueError`` naming no file, line or path."""
    text = f"discord:\n  routing:\n    default_agent: a\n  started: {value}\n"
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_yaml(text, source="scalar.yaml")
    assert (caught.value.source, caught.value.line) == ("scalar.yaml", 4)
    assert says in str(caught.value)
    assert "canary" not in str(caught.value)


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize("many", [False, True])
def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_file_and_line(
    tmp_path: Path, many: bool
) -> None:
    """A file saved as Latin-1 raised a bare ``UnicodeDecodeError`` naming no file: among
    ``from_files(config/interfaces/*.yaml)`` there was no telling which."""
    good = tmp_path / "slack.yaml"
    good.write_text("slack:\n  routing: {default_agent: a}\n", encoding="utf-8")
    latin = tmp_path / "discord.yaml"
    latin.write_bytes("discord:\n  routing: {default_agent: b}\n  greeting: 'olá'\n".encode("latin-1"))
    with pytest.raises(RoutingConfigError) as caught:
        RoutingConfig.from_files([good, latin]) if many else RoutingConfig.from_file(latin)
    assert (caught.value.source, caught.value.line) == (str(latin), 3)
    assert "UTF-8" in str(caught.value)
