"""What every spec has: kind, id, version, status, tags; and how spec documents are read."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, ValidationInfo, field_validator

from dynamic_agents._redaction import looks_like_a_key, masked_url, names_a_credential, text_holds_a_key
from dynamic_agents._validation import NotBoolean, check_choice, shown, with_article
from dynamic_agents._yaml import safe_load, yaml_problem
from dynamic_agents.exceptions import SecretReferenceError, SpecValidationError
from dynamic_agents.secrets.references import error_with_value, parse_reference

__all__ = ["SpecBase", "SpecKind", "SpecStatus", "spec_error"]


class SpecKind(StrEnum):
    AGENT = "agent"
    TEAM = "team"
    WORKFLOW = "workflow"

    @classmethod
    def of(cls, value: object) -> SpecKind:
        """``value`` as a kind (``"agent"`` is :attr:`AGENT`), else a :class:`ConfigurationError`
        naming it and the valid kinds."""
        return check_choice("kind", value, cls)


class SpecStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"

    @classmethod
    def of(cls, value: object) -> SpecStatus:
        """``value`` as a status (``"active"`` is :attr:`ACTIVE`), else a
        :class:`ConfigurationError` naming it and the valid statuses."""
        return check_choice("status", value, cls)


class SpecBase(BaseModel):
    """Fields common to agent, team and workflow specs.

    ``version`` is the stored revision: stores set it (1 on create, +1 on each update) and refuse an
    update from a stale one. Specs are data: they name tools, schemas and functions registered in
    a ``ToolRegistry`` and can never import or run code of their own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: ClassVar[SpecKind]
    step_types: ClassVar[tuple[str, ...]] = ()
    """The ``type`` values of the spec's steps (a workflow's), for the error of a step without one."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    name: str | None = None
    description: str | None = None
    version: Annotated[int, NotBoolean] = Field(default=1, ge=1, strict=True)
    status: SpecStatus = SpecStatus.ACTIVE
    tags: tuple[str, ...] = ()
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("description", "instructions", "expected_output", check_fields=False)
    @classmethod
    def _no_key_in_text(cls, value: str | tuple[str, ...] | None, info: ValidationInfo) -> object:
        texts = (value,) if isinstance(value, str) else value or ()
        for index, text in enumerate(texts):
            if text_holds_a_key(text):
                where = info.field_name if isinstance(value, str) else f"{info.field_name}[{index}]"
                raise ValueError(
                    f"{where} holds what looks like a credential written out (not shown): a spec "
                    "keeps no secrets (it is stored, listed and shown as written); give a tool its "
                    "key as a secret reference in its parameters, 'secret:<provider>:<field>'"
                )
        return value

    @field_validator("metadata")
    @classmethod
    def _no_key_in_metadata(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for path, text in json_strings(value, "metadata"):
            if _is_reference(text):
                continue
            if credential_written_out(path, text) or text_holds_a_key(text):
                raise ValueError(
                    f"{path} holds what looks like a credential written out (not shown): a spec "
                    "keeps no secrets (it is stored, listed and shown as written); write where it "
                    "is kept instead, 'secret:<provider>:<field>' or 'os.environ/<NAME>'"
                )
        return value

    @property
    def ref(self) -> str:
        """``agent 'support'``: how messages name this spec."""
        return f"{self.kind.value} {self.id!r}"

    @property
    def active(self) -> bool:
        return self.status == SpecStatus.ACTIVE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Validate a spec; errors are :class:`SpecValidationError` naming the path inside it."""
        if not isinstance(data, Mapping):  # a JSON body or a YAML document can be anything
            raise SpecValidationError(f"{cls._a_spec()} must be a mapping, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("kind", cls.kind.value)
        if kind != cls.kind.value:
            raise SpecValidationError(f"kind is {shown(kind)}, expected {cls.kind.value!r}", path="kind")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise spec_error(cls, data, error) from None

    @classmethod
    def _a_spec(cls) -> str:
        return f"{with_article(cls.kind.value)} spec"

    @classmethod
    def from_yaml(cls, text: str) -> Self:
        try:
            data = safe_load(text)  # an alias bomb, a bad date… a YAMLError too
        except yaml.YAMLError as error:
            raise SpecValidationError(yaml_problem(error)) from None
        if not isinstance(data, Mapping):
            raise SpecValidationError(f"{cls._a_spec()} must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise SpecValidationError(f"not valid JSON: {error}") from None
        if not isinstance(data, Mapping):
            raise SpecValidationError(f"{cls._a_spec()} must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)

    def to_document(self) -> dict[str, Any]:
        """The spec as plain JSON-able data (what stores write), with its kind."""
        return {"kind": self.kind.value, **self.model_dump(mode="json", exclude_defaults=False)}

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON Schema of the spec, for editors (``yaml-language-server`` and the like): it accepts
        the ``kind`` the stores write and the shorthand forms (``model: gpt-4o``, tools and members
        by name)."""
        schema = cls.model_json_schema()
        kind = {"const": cls.kind.value, "default": cls.kind.value, "title": "Kind"}
        schema["properties"] = {"kind": kind, **schema.get("properties", {})}
        return schema


def spec_error(model: type[SpecBase], data: Mapping[str, Any], error: ValidationError) -> SpecValidationError:
    """The first of pydantic's errors, at its path in the document, with the value found there
    (:func:`~dynamic_agents.secrets.references.shown_value`: a credential masked)."""
    first = error.errors(include_url=False)[0]
    path = _document_path(first["loc"], data)
    spec_id = data.get("id")
    spec = f"{model.kind.value} {shown(spec_id)}" if isinstance(spec_id, str) else f"{model.kind.value} spec"
    if first["type"] == "union_tag_not_found" and model.step_types:
        message = "a step needs a type: one of " + ", ".join(map(repr, model.step_types))
    else:
        message = error_with_value(first, name=path.rsplit(".", 1)[-1])
    # a list whose item failed is also "too short" when it needs items: the same failure, not another
    others = sum(
        not (detail["type"] == "too_short" and first["loc"][: len(detail["loc"])] == detail["loc"])
        for detail in error.errors(include_url=False)[1:]
    )
    if others:
        message += f" (and {others} more)"
    return SpecValidationError(message, spec=spec, path=path)


_UNION_MEMBER_LABELS = frozenset({"str", "int", "float", "bool", "none", "list", "tuple", "dict"})


def _document_path(loc: tuple[int | str, ...], data: Any) -> str:
    """``loc`` as a path inside the document (``steps[0].agent``). pydantic's ``loc`` also holds
    the member of a union it tried — a step's tag (``steps.0.agent.agent``), a type
    (``instructions.str``) — which is no key of the document: those are left out."""
    path = ""
    current: Any = data
    tag_skipped = False
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            current = (
                current[part]
                if isinstance(current, list | tuple) and -len(current) <= part < len(current)
                else None
            )
            tag_skipped = False
            continue
        if isinstance(current, Mapping):
            if not tag_skipped and current.get("type") == part:  # a discriminated union's tag
                tag_skipped = True
                continue
            if part not in current and (part in _UNION_MEMBER_LABELS or not part.isidentifier()):
                continue  # a plain union's member (`str`, `tuple[str, ...]`)
        elif current is not None:
            continue  # a scalar or list has no keys: a union member's label
        path += f".{part}" if path else part
        current = current.get(part) if isinstance(current, Mapping) else None
        tag_skipped = False
    return path


def json_strings(value: JsonValue, path: str) -> Iterator[tuple[str, str]]:
    """The strings in a JSON value, each with its path (``parameters.headers.Authorization``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from json_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_strings(item, f"{path}[{index}]")


def credential_written_out(path: str, text: str) -> bool:
    """Whether ``text``, found at ``path`` in a spec's JSON data (a tool's parameters, its
    metadata), is a credential written out: a value shaped like a key (a word of it) under a key
    named like a credential (``api_key: tvly-…``, ``Authorization: Bearer sk-…``), or a URL with
    a password or a credential query value under any name (``dsn: postgresql://u:pw@h/db``)."""
    name = path.rsplit(".", 1)[-1].split("[", 1)[0]
    words = text.split()
    return (names_a_credential(name) and any(map(looks_like_a_key, words))) or any(
        "://" in word and masked_url(word, register=False) != word for word in words
    )


def _is_reference(text: str) -> bool:
    """Whether ``text`` is a well-formed secret reference (one that does not parse is text)."""
    try:
        return parse_reference(text) is not None
    except SecretReferenceError:
        return False
