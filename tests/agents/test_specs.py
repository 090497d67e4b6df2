"""Spec documents: what a bad one is told."""

from __future__ import annotations

from typing import Any

import pytest

from dynamic_agents.agents import AgentSpec, WorkflowSpec
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
