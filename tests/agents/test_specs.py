"""Spec documents: what a bad one is told."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from dynamic_agents.agents import AgentSpec, TeamSpec, WorkflowSpec
from dynamic_agents.agents.specs import SpecBase
from dynamic_agents.exceptions import SpecValidationError


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
