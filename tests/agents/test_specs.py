"""Spec documents: what a bad one is told."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import yaml

from dynamic_agents.agents import AgentSpec, TeamSpec, WorkflowSpec
from dynamic_agents.agents.specs import SpecBase
from dynamic_agents.exceptions import SpecValidationError
from tests.support.yaml_documents import FORBIDDEN_CHARACTERS, UNREADABLE_SCALARS, alias_bomb


@pytest.mark.parametrize(
    ("model", "document", "path"),
    [
        # a step's type is a discriminator: it must not show up as a key of the path
        (WorkflowSpec, {"id": "w", "steps": [{"type": "agent"}]}, "steps[0].agent"),
        (WorkflowSpec, {"id": "w", "steps": [{"type": "agent", "agent": ""}]}, "steps[0].agent"),
        (
            WorkflowSpec,
            {"id": "w", "steps": [{"type": "loop", "steps": [{"type": "team"}], "max_iterations": 2}]},
            "steps[0].steps[0].team",
        ),
        (
            WorkflowSpec,
            {"id": "w", "steps": [{"type": "router", "selector": "s", "choices": [{"agent": "a"}]}]},
            "steps[0].choices[0]",
        ),
        (WorkflowSpec, {"id": "w", "steps": [{"type": "teleport"}]}, "steps[0]"),
        (
            WorkflowSpec,
            {"id": "w", "steps": [{"type": "loop", "steps": [], "max_iterations": 0}]},
            "steps[0].steps",
        ),
        # the member of a plain union (str | tuple of str) is no key of the path either
        (AgentSpec, {"id": "a", "model": "m", "instructions": 5}, "instructions"),
        (AgentSpec, {"id": "a", "model": "m", "instructions": {"text": "hi"}}, "instructions"),
    ],
)
def test_errors_name_the_path_inside_the_document(
    model: type[SpecBase], document: dict[str, Any], path: str
) -> None:
    with pytest.raises(SpecValidationError) as caught:
        model.from_dict(document)
    assert caught.value.path == path
    assert f" at {path}: " in str(caught.value)


@pytest.mark.parametrize(
    ("steps", "path"),
    [
        ([{"agent": "a"}], "steps[0]"),
        ([{"type": "parallel", "steps": [{"team": "t"}]}], "steps[0].steps[0]"),
    ],
)
def test_a_step_without_a_type_is_told_which_types_there_are(steps: list[Any], path: str) -> None:
    with pytest.raises(SpecValidationError) as caught:
        WorkflowSpec.from_dict({"id": "w", "steps": steps})
    assert caught.value.path == path
    message = str(caught.value)
    assert "needs a type" in message
    for step_type in ("agent", "team", "function", "parallel", "condition", "loop", "router"):
        assert repr(step_type) in message
    assert "discriminator" not in message  # pydantic's words, not the document's
    assert "more)" not in message  # the list's "too short" is the step's failure, not another one


@pytest.mark.parametrize("document", [["id", "a"], "id: a", None, 42])
def test_a_document_that_is_not_a_mapping_is_a_validation_error(document: Any) -> None:
    with pytest.raises(SpecValidationError, match=r"^an agent spec must be a mapping, got "):
        AgentSpec.from_dict(document)


@pytest.mark.parametrize(
    ("model", "text"),
    [
        # what the docs show (shorthand for model, tools and members), and what stores write (kind)
        (
            AgentSpec,
            "kind: agent\nid: a\nmodel: gpt\ntools: [get_weather, {name: search, parameters: {n: 3}}]\n",
        ),
        (TeamSpec, "kind: team\nid: t\nmodel: {name: gpt}\nmembers: [a, {kind: team, id: inner}]\n"),
        (WorkflowSpec, "kind: workflow\nid: w\nsteps: [{type: agent, agent: a}]\n"),
    ],
)
def test_the_json_schema_accepts_what_the_spec_accepts(model: type[SpecBase], text: str) -> None:
    schema = model.json_schema()
    document = yaml.safe_load(text)
    jsonschema.validate(document, schema)  # what an editor checks a spec file with
    jsonschema.validate(model.from_dict(document).to_document(), schema)  # a stored file


@pytest.mark.parametrize(
    ("model", "document"),
    [
        (AgentSpec, {"kind": "team", "id": "a", "model": "gpt"}),
        (AgentSpec, {"id": "a", "model": 5}),
        (AgentSpec, {"id": "a", "model": "gpt", "tools": [5]}),
        (TeamSpec, {"id": "t", "model": "gpt", "members": []}),
    ],
)
def test_the_json_schema_still_refuses_what_the_spec_refuses(model: type[SpecBase], document: Any) -> None:
    with pytest.raises(SpecValidationError):
        model.from_dict(document)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, model.json_schema())


@pytest.mark.parametrize(
    ("document", "shown"),
    [
        ({"id": "a", "model": {"name": "m", "temperature": 3.5}}, "(got 3.5)"),
        ({"id": "a", "model": "m", "markdown": "maybe"}, "(got 'maybe')"),
        ({"id": "a b", "model": "m"}, "(got 'a b')"),
        ({"id": "a", "model": "m", "status": "on"}, "(got 'on')"),
        ({"id": "a", "model": "m", "status": "on " * 100}, "(got '" + ("on " * 19)[:55] + "...')"),  # cut
        ({"id": "a", "model": "m", "colour": "secret:paint:colour"}, "(got 'secret:paint:colour')"),
    ],
)
def test_errors_show_the_value_found(document: dict[str, Any], shown: str) -> None:
    with pytest.raises(SpecValidationError) as caught:
        AgentSpec.from_dict(document)
    assert str(caught.value).endswith(shown)


CANARY_KEY = "sk-CANARY0spec0error00000000001"


@pytest.mark.parametrize(
    "document",
    [
        {"id": "a", "model": "m", "api_key": "not-key-shaped-at-all"},  # the name says credential
        {"id": "a", "model": "m", "notes": CANARY_KEY},  # the value is shaped like a key
        {"id": "a", "model": "m", "notes": f"use {CANARY_KEY} please"},
        {"id": "a", "model": {"name": "m", "temperature": CANARY_KEY}},
    ],
)
def test_a_value_that_may_be_a_credential_is_masked(document: dict[str, Any]) -> None:
    with pytest.raises(SpecValidationError) as caught:
        AgentSpec.from_dict(document)
    assert str(caught.value).endswith("(got **********)")
    assert CANARY_KEY not in repr(caught.value)
    assert "not-key-shaped-at-all" not in str(caught.value)


def test_a_url_value_is_shown_with_its_credentials_masked() -> None:
    """A URL's password and credential query values are masked as in any text for others' eyes
    (``redact_text``), the rest of it shown."""
    document = {
        "id": "a",
        "model": {"name": "m", "temperature": "https://u:pw0rd@h.example.com/x?token=abc123"},
    }
    with pytest.raises(SpecValidationError) as caught:
        AgentSpec.from_dict(document)
    assert "h.example.com/x" in str(caught.value)
    assert "abc123" not in str(caught.value)
    assert "pw0rd" not in str(caught.value)


@pytest.mark.parametrize(
    "document",
    [
        {"id": "a"},  # missing: nothing was found
        {"id": "a", "model": "m", "instructions": {"text": CANARY_KEY}},  # a mapping is not shown
        {"id": "a", "model": "m", "tags": {"first": CANARY_KEY}},
    ],
)
def test_missing_fields_and_containers_show_no_value(document: dict[str, Any]) -> None:
    with pytest.raises(SpecValidationError) as caught:
        AgentSpec.from_dict(document)
    assert "(got " not in str(caught.value)
    assert CANARY_KEY not in str(caught.value)


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    "text",
    [
        "id: a\nmodel: {name: gpt, api_key: sk-CANARY123456789abcdef\n",  # unclosed flow mapping
        "id: a\nmodel: gpt\n\tapi_key: sk-CANARY123456789abcdef\n",  # a tab
        'id: a\nmodel: "sk-CANARY123456789abcdef\n',  # unclosed quote
    ],
)
def test_yaml_that_does_not_parse_is_refused_by_line_without_quoting_it(text: str) -> None:
    # PyYAML's message quotes the line it stopped at: a key written there reached the logs
    with pytest.raises(SpecValidationError, match=r"^not valid YAML at line \d+: ") as refused:
        AgentSpec.from_yaml(text)
    assert "CANARY" not in str(refused.value)


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize("text", [alias_bomb("model"), *UNREADABLE_SCALARS, "id: a\nx: &a [*a]\n"])
def test_yaml_the_reader_lets_through_is_refused_as_yaml(text: str) -> None:
    # an alias bomb loaded, then validation walked every copy; a bad date was a bare ValueError
    with pytest.raises(SpecValidationError, match=r"^not valid YAML at line \d+: "):
        AgentSpec.from_yaml(text)


def test_a_key_given_twice_is_refused_not_overwritten() -> None:
    # the second instructions replaced the first without a word
    text = "id: a\nmodel: gpt\ninstructions: be brief\ninstructions: be thorough\n"
    with pytest.raises(
        SpecValidationError, match=r"^not valid YAML at line 4: key 'instructions' is given twice"
    ):
        AgentSpec.from_yaml(text)


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(("text", "problem"), [(text, problem) for text, problem, _ in FORBIDDEN_CHARACTERS])
def test_a_character_yaml_does_not_allow_is_named_with_its_line_and_column(text: str, problem: str) -> None:
    """It said only "not valid YAML: ReaderError"."""
    with pytest.raises(SpecValidationError) as refused:
        AgentSpec.from_yaml(text)
    assert str(refused.value) == f"not valid YAML {problem}"


@pytest.mark.parametrize(
    ("model", "data", "path"),
    [
        (AgentSpec, {"id": "a", "model": {"name": "gpt", "temperature": True}}, "model.temperature"),
        (AgentSpec, {"id": "a", "model": {"name": "gpt", "max_tokens": True}}, "model.max_tokens"),
        (AgentSpec, {"id": "a", "model": "gpt", "version": True}, "version"),
        (AgentSpec, {"id": "a", "model": "gpt", "num_history_runs": False}, "num_history_runs"),
        (AgentSpec, {"id": "a", "model": "gpt", "num_history_messages": True}, "num_history_messages"),
        (
            TeamSpec,
            {"id": "t", "model": "gpt", "members": ["a"], "num_team_history_runs": True},
            "num_team_history_runs",
        ),
        (
            TeamSpec,
            {"id": "t", "model": "gpt", "members": ["a"], "num_history_runs": True},
            "num_history_runs",
        ),
        (
            WorkflowSpec,
            {
                "id": "w",
                "steps": [
                    {"type": "loop", "steps": [{"type": "agent", "agent": "a"}], "max_iterations": True}
                ],
            },
            "steps[0].max_iterations",
        ),
    ],
)
def test_a_boolean_for_a_number_is_refused_naming_its_path(
    model: type[SpecBase], data: dict[str, Any], path: str
) -> None:
    # YAML reads `max_tokens: yes` as True, which pydantic took as 1 (a one-token answer)
    with pytest.raises(SpecValidationError, match=r"must be a number, not a boolean") as refused:
        model.from_dict(data)
    assert refused.value.path == path


def test_a_max_tokens_that_is_no_number_is_refused_showing_it() -> None:
    # shown masked, as if max_tokens held a credential
    with pytest.raises(SpecValidationError, match=r"at model\.max_tokens: .* \(got 'lots'\)$"):
        AgentSpec.from_dict({"id": "a", "model": {"name": "gpt", "max_tokens": "lots"}})


@pytest.mark.parametrize(
    ("model", "data", "path", "kind"),
    [
        (
            AgentSpec,
            {"id": "a", "model": {"name": "gpt", "temperature": "0.5"}},
            "model.temperature",
            "number",
        ),
        (
            AgentSpec,
            {"id": "a", "model": {"name": "gpt", "max_tokens": "800"}},
            "model.max_tokens",
            "integer",
        ),
        (AgentSpec, {"id": "a", "model": "gpt", "version": "2"}, "version", "integer"),
        (AgentSpec, {"id": "a", "model": "gpt", "num_history_runs": "3"}, "num_history_runs", "integer"),
        (
            AgentSpec,
            {"id": "a", "model": "gpt", "num_history_messages": "3"},
            "num_history_messages",
            "integer",
        ),
        (
            TeamSpec,
            {"id": "t", "model": "gpt", "members": ["a"], "num_team_history_runs": "3"},
            "num_team_history_runs",
            "integer",
        ),
        (
            TeamSpec,
            {"id": "t", "model": "gpt", "members": ["a"], "num_history_runs": "3"},
            "num_history_runs",
            "integer",
        ),
        (
            WorkflowSpec,
            {
                "id": "w",
                "steps": [
                    {"type": "loop", "steps": [{"type": "agent", "agent": "a"}], "max_iterations": "5"}
                ],
            },
            "steps[0].max_iterations",
            "integer",
        ),
    ],
)
def test_a_number_written_as_text_is_refused_naming_its_path(
    model: type[SpecBase], data: dict[str, Any], path: str, kind: str
) -> None:
    # as RouterConfig and WorkerSettings refuse them: "0.5" was read as 0.5 (the JSON schema an
    # editor checks a spec file with refused it already)
    with pytest.raises(
        SpecValidationError, match=rf"at {re.escape(path)}: Input should be a valid {kind} \(got "
    ) as refused:
        model.from_dict(data)
    assert refused.value.path == path


def test_plain_yaml_numbers_are_taken_an_int_for_a_float_too() -> None:
    agent = AgentSpec.from_yaml(
        "id: a\nversion: 2\nmodel: {name: gpt, temperature: 1, max_tokens: 800}\nnum_history_runs: 3\n"
    )
    assert (agent.version, agent.model.temperature, agent.model.max_tokens, agent.num_history_runs) == (
        2,
        1.0,
        800,
        3,
    )
    assert AgentSpec.from_yaml("id: a\nmodel: {name: gpt, temperature: 0.5}\n").model.temperature == 0.5
    team = TeamSpec.from_yaml(
        "id: t\nmodel: gpt\nmembers: [a]\nnum_team_history_runs: 0\nnum_history_runs: 2\n"
    )
    assert (team.num_team_history_runs, team.num_history_runs) == (0, 2)
    workflow = WorkflowSpec.from_yaml(
        "id: w\nsteps: [{type: loop, steps: [{type: agent, agent: a}], max_iterations: 5}]\n"
    )
    assert workflow.steps[0].max_iterations == 5  # type: ignore[union-attr]


_MINIMAL: dict[type[SpecBase], dict[str, Any]] = {
    AgentSpec: {"id": "a", "model": "gpt"},
    TeamSpec: {"id": "t", "model": "gpt", "members": ["a"]},
    WorkflowSpec: {"id": "w", "steps": [{"type": "agent", "agent": "a"}]},
}
_BOOLEAN_FIELDS = [
    (model, name)
    for model in _MINIMAL
    for name, field in model.model_fields.items()
    if field.annotation in (bool, bool | None)
]


def test_the_boolean_fields_are_the_ones_agno_switches_on() -> None:
    # the list the next test runs over: found from the models, so a new switch is checked too
    assert {name for _, name in _BOOLEAN_FIELDS} == {
        "markdown",
        "add_history_to_context",
        "enable_session_summaries",
        "add_session_summary_to_context",
        "enable_agentic_memory",
        "update_memory_on_run",
        "add_memories_to_context",
        "add_team_history_to_members",
        "share_member_interactions",
        "determine_input_for_members",
    }


@pytest.mark.parametrize("value", ["yes", "true", "off", 1, 0])
@pytest.mark.parametrize(("model", "name"), _BOOLEAN_FIELDS, ids=lambda x: getattr(x, "__name__", x))
def test_a_text_or_number_for_a_boolean_is_refused_naming_its_path(
    model: type[SpecBase], name: str, value: object
) -> None:
    # as the execute body's stream: "yes", "off", 1 and 0 were read as booleans (the JSON schema an
    # editor checks a spec with refused them already)
    with pytest.raises(
        SpecValidationError,
        match=rf"at {name}: Input should be a valid boolean \(got {re.escape(repr(value))}\)",
    ) as refused:
        model.from_dict({**_MINIMAL[model], name: value})
    assert refused.value.path == name
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**_MINIMAL[model], name: value}, model.json_schema())


def test_yaml_and_json_booleans_are_taken() -> None:
    # PyYAML reads YAML 1.1's yes / no / on / off as booleans before the spec sees them
    agent = AgentSpec.from_yaml(
        "id: a\nmodel: gpt\nmarkdown: yes\nadd_history_to_context: true\n"
        "enable_session_summaries: on\nadd_memories_to_context: no\nadd_session_summary_to_context: null\n"
    )
    assert (
        agent.markdown,
        agent.add_history_to_context,
        agent.enable_session_summaries,
        agent.add_memories_to_context,
        agent.add_session_summary_to_context,
    ) == (True, True, True, False, None)
    team = TeamSpec.from_yaml(
        "id: t\nmodel: gpt\nmembers: [a]\nmarkdown: true\ndetermine_input_for_members: off\n"
    )
    assert (team.markdown, team.determine_input_for_members) == (True, False)
    assert AgentSpec.from_json('{"id": "a", "model": "gpt", "markdown": true}').markdown is True
    assert AgentSpec.from_dict(agent.to_document()) == agent  # a stored spec reads back


def test_an_invalid_id_shaped_like_a_key_is_masked_in_the_spec_s_name_too() -> None:
    # the value was masked, but the error named the spec by it: "agent 'sk-…!' at id: …"
    with pytest.raises(SpecValidationError) as refused:
        AgentSpec.from_dict({"id": "sk-CANARY123456789abcdef!", "model": "gpt"})
    assert "CANARY" not in str(refused.value)
    assert str(refused.value).startswith("agent ********** at id: String should match pattern")


# -- keys written out in a spec's text and metadata -------------------------------------------------

KEY = "sk-proj-CANARY0spec0text0000000000000001"


@pytest.mark.parametrize(
    ("model", "document", "field", "where"),
    [
        (AgentSpec, {"instructions": f"Call the billing API with {KEY}."}, "instructions", "instructions"),
        (AgentSpec, {"instructions": ["Be brief.", f"key: {KEY}"]}, "instructions", "instructions[1]"),
        (
            AgentSpec,
            {"expected_output": "Rows from postgresql://report:CANARY0pw@db.internal/sales"},
            "expected_output",
            "expected_output",
        ),
        (TeamSpec, {"instructions": f"Search with token={KEY}"}, "instructions", "instructions"),
        (WorkflowSpec, {"description": f"Posts to Slack as xoxb-{KEY[8:]}"}, "description", "description"),
        (
            AgentSpec,
            {"metadata": {"api_key": "tvly-CANARY0search0key0000000000000001"}},
            "metadata",
            "metadata.api_key",
        ),
        (
            AgentSpec,
            {"metadata": {"owner": {"token": "0123456789abcdef0123456789abcdef"}}},
            "metadata",
            "metadata.owner.token",
        ),
        (TeamSpec, {"metadata": {"notes": f"billing uses {KEY}"}}, "metadata", "metadata.notes"),
        (
            WorkflowSpec,
            {"metadata": {"links": ["https://a.example", "https://u:CANARY0pw@b.example"]}},
            "metadata",
            "metadata.links[1]",
        ),
        (
            AgentSpec,
            {"metadata": {"endpoint": "https://api.example.com/v1?key=CANARY0query0value"}},
            "metadata",
            "metadata.endpoint",
        ),
    ],
)
def test_a_key_written_in_a_specs_text_or_metadata_is_refused_without_showing_it(
    model: type[SpecBase], document: dict[str, Any], field: str, where: str
) -> None:
    """A spec's text and metadata were stored as written: a key pasted into an agent's instructions
    or its metadata went to the YAML files, the SQL store and the REST API's answers."""
    base: dict[str, Any] = {"id": "s", "model": "gpt", "members": ["a"], "steps": [{"agent": "a"}]}
    allowed = set(model.model_fields)
    with pytest.raises(SpecValidationError) as caught:
        model.from_dict({key: value for key, value in base.items() if key in allowed} | document)
    assert caught.value.path == field
    assert f"{where} holds what looks like a credential written out" in str(caught.value)
    for secret in (KEY, KEY[8:], "CANARY0pw", "CANARY0query0value", "CANARY0search0key", "0123456789abcdef0"):
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)


@pytest.mark.parametrize(
    "document",
    [
        # prose: words, ids and links that are no keys
        {"instructions": "Prefer scikit-learn and sk-learn-compatible estimators."},
        {"instructions": "The fix is commit 3f9a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c; cite it."},
        {"instructions": "See https://docs.google.com/document/d/1aBcD3fGhIjKlMnOpQrStUvWxYz0123456789/edit"},
        {"instructions": ["Reset links look like https://app.example.com/reset?token={token}."]},
        {"instructions": "Join on the pk_customer_identifier column. Never show a key (sk-…)."},
        {"expected_output": "A DSN such as postgresql://user@db.internal/sales, without a password."},
        {"description": "Answers about API keys, tokens and passwords without ever asking for one."},
        # metadata: references, and key-shaped values under names that are no credential's
        {"metadata": {"api_key": "secret:tavily:api_key", "bot_token": "os.environ/SLACK_BOT_TOKEN"}},
        {"metadata": {"index": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "sort_key": "created_at desc"}},
        {"metadata": {"docs": "https://api.example.com/v1?api-version=2024-06-01", "api_key": ""}},
    ],
)
def test_text_and_metadata_that_hold_no_key_are_kept(document: dict[str, Any]) -> None:
    spec = AgentSpec.from_dict({"id": "a", "model": "gpt", **document})
    for field, value in document.items():
        written = getattr(spec, field)
        assert (list(written) if isinstance(written, tuple) else written) == value
