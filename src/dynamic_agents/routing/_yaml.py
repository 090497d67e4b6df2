r"""YAML with the line of every value, and pydantic's errors as :class:`RoutingConfigError`\ s
naming the file, the line and the path (``discord.routing.rules[1].content_pattern``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import yaml
from pydantic import ValidationError

from dynamic_agents._yaml import (
    DocumentError,
    YamlPath,
    new_loader,
    safe_load,
    walk_document,
)
from dynamic_agents.exceptions import RoutingConfigError
from dynamic_agents.secrets.references import error_with_value

__all__ = ["YamlPath", "config_error", "format_path", "load_yaml"]


def load_yaml(text: str, source: str) -> tuple[Any, dict[YamlPath, int]]:
    """The data, and the 1-based line of every mapping value and sequence item by path. Read with
    :mod:`dynamic_agents._yaml`'s loader, its refusals (an alias bomb…) a :class:`RoutingConfigError`."""
    try:
        loader = new_loader(text)  # control characters are refused here already
    except yaml.YAMLError as error:
        raise _yaml_error(error, source) from None
    lines: dict[YamlPath, int] = {}

    def record_line(current: yaml.Node, path: YamlPath) -> None:
        lines[path] = current.start_mark.line + 1
        _refuse_an_integer_not_in_decimal(current, source, path)
        _refuse_a_condition_without_a_value(current, source, path)
        _refuse_a_yaml_11_boolean(current, source, path)

    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        walk_document(node, record_line)  # before anything walks what aliases stand for
        data = loader.construct_document(node)
    except DocumentError as error:  # aliases, a key written twice
        raise RoutingConfigError(
            str(error.problem), source=source, line=error.line, path=format_path(error.path)
        ) from None
    except yaml.YAMLError as error:
        raise _yaml_error(error, source) from None
    except RecursionError:  # the composer recurses once per level of nesting
        raise RoutingConfigError(
            "nested too deeply for the YAML reader (lists or mappings inside each other)", source=source
        ) from None
    finally:
        loader.dispose()
    return data, lines


def _yaml_error(error: yaml.YAMLError, source: str) -> RoutingConfigError:
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    return RoutingConfigError(f"not valid YAML: {getattr(error, 'problem', error)}", source=source, line=line)


_INT_TAG: Final = "tag:yaml.org,2002:int"
_DECIMAL: Final = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_OCTAL_OR_BASE_60: Final = re.compile(r"[-+]?(?:0[0-7_]+|.*:.*)")


def _refuse_an_integer_not_in_decimal(node: yaml.Node, source: str, path: YamlPath) -> None:
    """An unquoted integer in another form than decimal: YAML 1.1 reads ``0123456`` as octal
    (42798), ``1:30`` as base 60 (90), ``0x1f``, ``0b101`` and ``1_000`` too. A channel, user or
    guild id so written became another id, and its rule never matched the one meant; so did one
    written with a ``+`` (a phone number, ``+15551234567``), an id taken as the number's text
    without it (a ``priority`` may have one). In an interface's ``session`` (``ttl``, seconds),
    octal and base 60 only: ``ttl: 0600`` was 384 seconds. Not in an interface's own settings,
    which may mean an octal number (``mode: 0644``)."""
    if not (isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG):
        return
    in_rules = any(path[i : i + 2] == ("routing", "rules") for i in range(len(path) - 2))
    if in_rules:
        signed = node.value.startswith("+") and path[-1:] != ("priority",)
        if _DECIMAL.fullmatch(node.value) and not signed:
            return
    elif path[1:2] != ("session",) or not _OCTAL_OR_BASE_60.fullmatch(node.value):
        return
    try:
        number = safe_load(node.value)  # an int only when written as one, not tagged !!int
    except yaml.YAMLError:  # the constructor refuses it, masked
        return
    if isinstance(number, int) and not isinstance(number, bool):
        raise _node_error(
            f"{node.value} is read by YAML as the number {number} (a leading 0 is octal, ':' counts "
            f"in base 60, an id is the number's text without a '+'): "
            + (f"quote it ('{node.value}') for text, or " if in_rules else "")
            + "write the number in decimal",
            node,
            source,
            path,
        )


def _node_error(message: str, node: yaml.Node, source: str, path: YamlPath) -> RoutingConfigError:
    """A :class:`RoutingConfigError` naming the line of ``node`` and its ``path``."""
    return RoutingConfigError(message, source=source, line=node.start_mark.line + 1, path=format_path(path))


_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_BOOLEAN: Final = frozenset({"true", "false"})
"""How a boolean is written in JSON and YAML 1.2 (in any case); YAML 1.1 adds yes, no, on, off."""


def _refuse_a_yaml_11_boolean(node: yaml.Node, source: str, path: YamlPath) -> None:
    """A value of a rule's ``metadata_match`` written ``yes``, ``no``, ``on`` or ``off`` unquoted,
    which YAML 1.1 reads as a boolean: ``{lang: no}`` (Norwegian) wanted ``False`` and never
    matched the ``"no"`` an event sends. Elsewhere in a rule a boolean is refused anyway."""
    if not (isinstance(node, yaml.ScalarNode) and node.tag == _BOOL_TAG) or node.value.lower() in _BOOLEAN:
        return
    if not any(
        path[i : i + 2] == ("routing", "rules") and path[i + 3 : i + 4] == ("metadata_match",)
        for i in range(len(path) - 4)
    ):
        return
    value = node.value.lower() in {"yes", "on"}
    raise _node_error(
        f"{node.value} is read by YAML as the boolean {value} (YAML 1.1 reads yes, no, on and off "
        f"as booleans): quote it ('{node.value}') for text, or write {str(value).lower()}",
        node,
        source,
        path,
    )


_NULL_TAG: Final = "tag:yaml.org,2002:null"
_CONDITIONS: Final = frozenset(
    {"channel_ids", "source_ids", "user_ids", "source", "source_id_pattern", "content_pattern"}
)
"""A rule's conditions where a null meant "left out" (``user_id`` and ``guild_ids`` refuse one)."""


def _refuse_a_condition_without_a_value(node: yaml.Node, source: str, path: YamlPath) -> None:
    """``channel_ids:`` with nothing after it (a list not filled in) is YAML's null, which a rule
    takes as the condition left out: it matched every channel of its source, silently. So is a
    ``metadata_match`` value with nothing after it (``guild_id:``), which matched every event
    without the key; ``null`` written out means that."""
    if not (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG):
        return
    if len(path) >= 6 and path[-5:-3] == ("routing", "rules") and path[-2] == "metadata_match":
        if node.value:  # null or ~, written out
            return
        raise _node_error(
            f"{path[-1]} has no value (nothing after it, which YAML reads as null: it matches every "
            f"event without {path[-1]!r}): give it one, or write null to mean that",
            node,
            source,
            path,
        )
    if len(path) < 4 or path[-4:-2] != ("routing", "rules") or path[-1] not in _CONDITIONS:
        return
    written = f"YAML reads {node.value!r} as" if node.value else "nothing after it, which YAML reads as"
    raise _node_error(
        f"{path[-1]} has no value ({written} null): give it one, or leave the key out to match any",
        node,
        source,
        path,
    )


def config_error(error: ValidationError, source: str, lines: Mapping[YamlPath, int]) -> RoutingConfigError:
    first = error.errors(include_url=False)[0]
    location: YamlPath = tuple(first["loc"])
    if location[:1] == ("interfaces",):
        location = location[1:]
    # pydantic adds the model name for union members and "[key]" for nested dicts: keep real keys.
    path = _known_prefix(location, lines) if lines else location
    # the value found, masked under a credential's name or when shaped like a key
    names = [part for part in location if isinstance(part, str) and not _union_label(part)]
    message = error_with_value(first, name=names[-1] if names else None)
    others = len(error.errors()) - 1
    if others:
        message += f" (and {others} more error{'s' if others > 1 else ''})"
    return RoutingConfigError(message, source=source, line=lines.get(path), path=format_path(location))


def _union_label(part: str) -> bool:
    """A location part pydantic adds for a union member (``str``, ``tuple[...]``), not a key."""
    return part in {"str", "int", "float", "bool", "none"} or "[" in part


def _known_prefix(location: YamlPath, lines: Mapping[YamlPath, int]) -> YamlPath:
    for end in range(len(location), -1, -1):
        if location[:end] in lines:
            return location[:end]
    return ()


def format_path(location: YamlPath) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
