"""``AgentSpec``: an agno Agent as data."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator

from dynamic_agents._validation import NotBoolean
from dynamic_agents.agents.specs.base import SpecBase, SpecKind, credential_written_out, json_strings
from dynamic_agents.exceptions import SecretReferenceError
from dynamic_agents.secrets.references import parse_reference

__all__ = ["AgentSpec", "ModelSettings", "ToolRef"]


class ModelSettings(BaseModel):
    """Which router model group answers, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="A model group of the LLM router (model_list.model_name)")
    # strict, each number of a spec: text ("0.5") is refused, as RouterConfig refuses it (lax, it was
    # read as a number; the JSON schema an editor checks a spec with refused it); an int is a float
    temperature: Annotated[float | None, NotBoolean] = Field(default=None, ge=0, le=2, strict=True)
    max_tokens: Annotated[int | None, NotBoolean] = Field(default=None, gt=0, strict=True)
    tags: tuple[str, ...] = Field(default=(), description="Sent as request metadata for tag routing")

    @classmethod
    def coerce(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value


class ToolRef(BaseModel):
    """A registered tool by name; ``parameters`` go to a registered toolkit factory.

    A parameter that is a credential is written as a secret reference (``secret:tavily:api_key``,
    ``os.environ/TAVILY_API_KEY``), at any depth: the runtime resolves it (its ``secrets``
    manager) each time it builds the tool, and the spec — in a store, on disk, in an API response —
    holds only the reference. A malformed reference is refused, and so is a value shaped like a
    key (a word of it: ``Bearer sk-…``) under a name that says it is a credential
    (``api_key: tvly-…``), and a URL with a password or a credential query value under any name
    (``dsn: postgresql://u:pw@h/db``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _references_not_keys(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for path, text in json_strings(value, "parameters"):
            try:
                reference = parse_reference(text)
            except SecretReferenceError as error:
                raise ValueError(f"{path}: {error}") from None
            if reference is None and credential_written_out(path, text):
                raise ValueError(
                    f"{path} holds what looks like a credential written out (not shown): store it as "
                    "a secret and write its reference instead, 'secret:<provider>:<field>' or "
                    "'os.environ/<NAME>'"
                )
        return value

    @property
    def has_references(self) -> bool:
        """Whether a parameter is a secret reference (the builder needs a secrets manager)."""
        return any(
            parse_reference(text) is not None for _, text in json_strings(self.parameters, "parameters")
        )


class AgentSpec(SpecBase):
    """An agent: model, instructions, tools, output schema, and agno 3's history and memory switches."""

    kind: ClassVar[SpecKind] = SpecKind.AGENT

    model: ModelSettings
    instructions: str | tuple[str, ...] | None = None
    expected_output: str | None = None
    # strict, each boolean of a spec: JSON's true / false, YAML's true / yes / on … (PyYAML reads them
    # as booleans) only; the text "yes" or "off" and the numbers 1 and 0 were booleans too (lax)
    markdown: bool = Field(default=False, strict=True)
    tools: tuple[ToolRef, ...] = ()
    output_schema: str | None = Field(default=None, description="A schema registered in the ToolRegistry")

    add_history_to_context: bool = Field(default=False, strict=True)
    num_history_runs: Annotated[int | None, NotBoolean] = Field(default=None, ge=0, strict=True)
    num_history_messages: Annotated[int | None, NotBoolean] = Field(default=None, ge=0, strict=True)
    enable_session_summaries: bool = Field(default=False, strict=True)
    add_session_summary_to_context: bool | None = Field(default=None, strict=True)
    enable_agentic_memory: bool = Field(default=False, strict=True)
    update_memory_on_run: bool = Field(default=False, strict=True)
    add_memories_to_context: bool | None = Field(default=None, strict=True)

    @field_validator("model", mode="before", json_schema_input_type=str | ModelSettings)
    @classmethod
    def _model_by_name(cls, value: object) -> object:
        return ModelSettings.coerce(value)

    @field_validator("num_history_messages")
    @classmethod
    def _one_history_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        runs = info.data.get("num_history_runs")
        if value is not None and runs is not None:  # agno would keep the runs and drop this
            raise ValueError(
                f"num_history_messages ({value}) and num_history_runs ({runs}) cannot both be set: "
                "set one of them"
            )
        return value

    @field_validator("tools", mode="before", json_schema_input_type=tuple[str | ToolRef, ...])
    @classmethod
    def _tools_by_name(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value
