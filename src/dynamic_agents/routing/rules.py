"""Routing rules: conditions on an event, and the target they pick."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Self, TypeGuard

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from dynamic_agents._validation import shown
from dynamic_agents.events import AgentRequestEvent, Target, TargetType
from dynamic_agents.events._types import CHANNEL_ID_PATTERN, source_name
from dynamic_agents.routing.patterns import SafePattern, UnsafePatternError

__all__ = ["ConfigTarget", "MetadataValue", "RoutingRule"]

MetadataValue = str | int | float | bool | None


def _only_type_and_id(value: Any) -> Any:
    """In configuration a target is a type and an id; another key (``priority`` nested one level
    too deep, say) would be ignored by the wire model, silently."""
    if isinstance(value, Mapping):
        unknown = sorted(str(key) for key in value if key not in {"type", "id"})
        if unknown:
            raise ValueError(f"a target has only 'type' and 'id'; unknown: {', '.join(map(repr, unknown))}")
    return value


_CHANNEL_ID: Final = re.compile(CHANNEL_ID_PATTERN)

ConfigTarget = Annotated[Target, BeforeValidator(_only_type_and_id)]
"""A :class:`Target` read from configuration: unknown keys are refused, not ignored."""


class RoutingRule(BaseModel):
    """A rule: every condition given must hold (conditions left out match anything).

    ======================  =================================================================
    ``source``              the event's platform (``discord``)
    ``source_ids``          the channel / conversation id is one of these (YAML: ``channel_ids``;
                            an integer is taken as its text)
    ``source_id_pattern``   a regular expression searched in the channel id
    ``user_ids``            the user is one of these (``user_id`` for one; an integer as its text)
    ``content_pattern``     a regular expression searched in the content (bounded, with a timeout)
    ``metadata_match``      each key's value equals the one given, or is one of a list (an
                            integer also as text; YAML: ``guild_ids`` is
                            ``metadata_match: {guild_id: [...]}``, digits also as a number)
    ======================  =================================================================

    Higher ``priority`` is tried first; among equals, the order of declaration.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    # strict: text ("10", a JSON body's too) and a float are refused (lax, they were read as an int)
    priority: int = Field(default=0, strict=True)
    source: str | None = None
    source_ids: frozenset[str] | None = Field(default=None, alias="channel_ids")
    source_id_pattern: str | None = None
    user_ids: frozenset[str] | None = None
    content_pattern: str | None = None
    metadata_match: Mapping[str, MetadataValue | tuple[MetadataValue, ...]] = Field(default_factory=dict)
    target: ConfigTarget

    @model_validator(mode="before")
    @classmethod
    def _read_shorthands(cls, data: Any) -> Any:
        """Accept the seed's forms: ``agent_id`` / ``team_id`` / ``workflow_id``, ``target_type`` +
        ``target_id``, ``user_id``, ``guild_ids``; channel and user ids as text."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        targets = [kind for kind in TargetType if data.get(f"{kind.value}_id") is not None]
        if "target" not in data:
            if len(targets) > 1:
                raise ValueError(
                    f"give one of agent_id, team_id, workflow_id (got {', '.join(t.value for t in targets)})"
                )
            if targets:
                data["target"] = {"type": targets[0], "id": data.pop(f"{targets[0].value}_id")}
            elif "target_type" in data or "target_id" in data:
                data["target"] = {"type": data.pop("target_type", None), "id": data.pop("target_id", None)}
        for key in ("channel_ids", "source_ids", "user_ids"):
            if key in data:
                data[key] = _id_texts(data[key], key, data.get("name"))
        if "user_id" in data:
            if "user_ids" in data:
                raise ValueError("give user_id (one user) or user_ids (a list), not both")
            data["user_ids"] = [_id_text(data.pop("user_id"), "user_id", data.get("name"))]
        if "guild_ids" in data:
            metadata = dict(data.get("metadata_match") or {})
            if "guild_id" in metadata:
                raise ValueError("give guild_ids or metadata_match.guild_id, not both")
            metadata["guild_id"] = _guild_ids(data.pop("guild_ids"), data.get("name"))
            data["metadata_match"] = metadata
        return data

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():  # a decision and explain() name the rule: this names none
            raise ValueError(f"name {value!r} is only whitespace: give the rule a name it can be told by")
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML's "yes" / "on": pydantic would take it as 1
            raise ValueError(f"priority must be an integer (higher is tried first), got {value!r}")  # noqa: TRY004 (pydantic reports ValueError only)
        return value

    @field_validator("metadata_match", mode="before")
    @classmethod
    def _lists_to_tuples(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: tuple(v) if isinstance(v, list | set | frozenset) else v for k, v in value.items()}
        return value

    @field_validator("metadata_match", mode="after")
    @classmethod
    def _freeze_metadata_match(
        cls, value: Mapping[str, MetadataValue | tuple[MetadataValue, ...]]
    ) -> Mapping[str, MetadataValue | tuple[MetadataValue, ...]]:
        """Read-only, as the rest of the rule: a router indexes it when built. An integer also
        accepts its text (see :func:`_with_text_forms`), here once rather than per event."""
        for key, wanted in value.items():
            if wanted == ():
                raise ValueError(
                    f"the accepted values of {key!r} are an empty list: no event can meet it "
                    "(leave the key out to accept any value)"
                )
            for one in wanted if isinstance(wanted, tuple) else (wanted,):
                if isinstance(one, float) and not math.isfinite(one):
                    # NaN equals nothing; the rule's JSON wrote either as null (a missing key)
                    raise ValueError(
                        f"{key!r} holds {one}, which is no JSON number an event can send "
                        "(NaN equals no value, not even itself)"
                    )
        return _FrozenDict({key: _with_text_forms(wanted) for key, wanted in value.items()})

    @field_validator("source_ids", "user_ids")
    @classmethod
    def _not_empty(cls, value: frozenset[str] | None) -> frozenset[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list: no event can meet it (leave the condition out to match any)")
        return value

    @field_validator("source_id_pattern", "content_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                SafePattern(value)
            except UnsafePatternError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("source")
    @classmethod
    def _lower_source(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return source_name(value)  # as events read it

    @model_validator(mode="after")
    def _has_a_condition(self) -> Self:
        if not (
            self.source
            or self.source_ids
            or self.source_id_pattern
            or self.user_ids
            or self.content_pattern
            or self.metadata_match
        ):
            raise ValueError(f"rule {self.name!r} has no condition: it would match every event")
        return self


class _FrozenDict(dict[str, Any]):
    """A dict that refuses changes (still a dict for pydantic's serializer), hashable."""

    __slots__ = ()

    def _refuse(self, *_args: object, **_kwargs: object) -> Any:
        raise TypeError("a RoutingRule's metadata_match cannot be changed: build a new rule")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[type[_FrozenDict], tuple[dict[str, Any]]]:
        return type(self), (dict(self),)


def _guild_ids(ids: Any, rule: object) -> list[int | str]:
    """Guild ids as text and as numbers: platforms send either (``"987654321"`` or ``987654321``),
    and YAML reads an unquoted id as a number; one written either way matches both.

    A guild id is a snowflake: an integer (not negative) or its digits as text. Anything else is
    refused naming ``rule``: a boolean (YAML reads an unquoted ``yes`` or ``on`` as ``True``, and
    as ``True == 1`` it would also hide the id ``1`` from the list), a float (``1.5``, or
    ``9.87654321e+8``: equal to an id, yet none), ``None`` (it matched every event without a
    guild), a name; each was taken as the value wanted, and the rule never matched a guild."""
    items = list(ids) if isinstance(ids, list | tuple | set | frozenset) else [ids]
    both: dict[int | str, None] = {}  # in order, once each (a list's `in` made long lists quadratic)
    for item in items:
        forms: list[int | str]
        if _an_id_number(item):
            forms = [item, str(item)]
        elif isinstance(item, str) and item.isascii() and item.isdigit():
            forms = [item, int(item)]
        else:
            valid = "a guild id is an integer or its digits as text (987654321 or '987654321')"
            raise ValueError(_not_an_id(item, "guild_ids", rule, valid))
        both.update(dict.fromkeys(forms))
    return list(both)


def _id_texts(ids: Any, key: str, rule: object) -> Any:
    """Channel or user ids as text, the form an event's ``source_id`` and ``user_id`` have: an
    integer (YAML reads an id written unquoted as one, ``123456789``) becomes its text, as
    ``guild_ids`` takes one; one id alone too, as ``guild_ids`` does. ``None`` leaves it out."""
    if ids is None:
        return None
    items = list(ids) if isinstance(ids, list | tuple | set | frozenset) else [ids]
    return [_id_text(item, key, rule) for item in items]


def _id_text(value: object, key: str, rule: object) -> str:
    """A channel or user id: text as it is, an integer as its text (negative too: Telegram's group
    chats are ``-1001234567890``); anything else (a float, a boolean, ``None``, a date…) refused
    naming ``rule`` and ``key``, as is a channel id no event can have (empty, say)."""
    channel = key in {"channel_ids", "source_ids"}
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        if channel and not _CHANNEL_ID.fullmatch(value):
            raise ValueError(
                f"{f'rule {rule!r}: ' if isinstance(rule, str) else ''}{key} holds {shown(value)}, "
                "which no event's channel id can be (1 to 256 characters, no control characters): "
                "no event would match it"
            )
        return value
    noun = "channel" if channel else "user"
    example = "'C024BE91L'" if channel else "'U024BE7LH'"
    valid = f"a {noun} id is text or an integer: {example}, 123456789 or '123456789'"
    raise ValueError(_not_an_id(value, key, rule, valid))


def _an_id_number(value: object) -> TypeGuard[int]:
    """An integer an id can be (a snowflake): not a boolean (``True == 1``), not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _not_an_id(value: object, key: str, rule: object, valid: str) -> str:
    boolean = isinstance(value, bool)
    return (
        f"{f'rule {rule!r}: ' if isinstance(rule, str) else ''}{key} holds "
        f"{f'the boolean {value!r}' if boolean else shown(value)}: {valid}"
        + (" (YAML reads an unquoted yes, no, on or off as a boolean)" if boolean else "")
    )


def _with_text_forms(
    wanted: MetadataValue | tuple[MetadataValue, ...],
) -> MetadataValue | tuple[MetadataValue, ...]:
    """An integer (not a boolean) accepted as a number and as its decimal text: platforms send ids
    either way (``987654321`` or ``"987654321"``) and YAML reads one written unquoted as a number,
    as ``guild_ids`` does. Text stays text: a quoted value was written as one."""
    values = wanted if isinstance(wanted, tuple) else (wanted,)
    given = {value for value in values if isinstance(value, str)}  # a set: a long list stays linear
    texts = [
        str(value)
        for value in values
        if isinstance(value, int) and not isinstance(value, bool) and str(value) not in given
    ]
    if not texts:
        return wanted
    return (*values, *dict.fromkeys(texts))


def metadata_matches(
    expected: Mapping[str, MetadataValue | tuple[MetadataValue, ...]], event: AgentRequestEvent
) -> bool:
    """Each key's value equals the one wanted (or one of a list), a boolean only a boolean:
    Python's ``True == 1`` would let ``{admin: true}`` match an ``admin`` of ``1``."""
    for key, wanted in expected.items():
        actual = event.metadata.get(key)
        if isinstance(wanted, tuple):
            if actual not in wanted:
                return False
            # the first equal value (C speed) is of the right kind but where a boolean meets a
            # number: only then look through them all (an integer's text form made most tuples)
            if (
                isinstance(actual, int | float)
                and (type(wanted[wanted.index(actual)]) is bool) != (type(actual) is bool)
                and not any(_same_value(actual, w) for w in wanted)
            ):
                return False
        elif not _same_value(actual, wanted):
            return False
    return True


def _same_value(actual: object, wanted: object) -> bool:
    """``actual == wanted``, except that a boolean equals only a boolean (JSON tells them apart)."""
    return actual == wanted and (type(actual) is bool) == (type(wanted) is bool)
