r"""YAML with the line of every value, and pydantic's errors as :class:`RoutingConfigError`\ s
naming the file, the line and the path (``discord.routing.rules[1].content_pattern``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import yaml
from pydantic import ValidationError

from dynamic_agents._validation import shown
from dynamic_agents.exceptions import RoutingConfigError
from dynamic_agents.secrets.references import error_with_value

__all__ = ["YamlPath", "config_error", "format_path", "load_yaml"]

YamlPath = tuple[str | int, ...]

MAX_ALIASED_VALUES: Final = 1_000_000
"""How many values aliases may add to a document: nine levels of nine aliases stand for 387
million ("billion laughs"). The loader shares them, but ``repr``, ``resolve_settings`` or a JSON
dump walk every copy."""


def load_yaml(text: str, source: str) -> tuple[Any, dict[YamlPath, int]]:
    """The data, and the 1-based line of every mapping value and sequence item by path."""
    try:
        loader = _Loader(text)  # the reader refuses control characters here already
    except yaml.YAMLError as error:
        raise _yaml_error(error, source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        _refuse_repeated_keys(node, source)
        data = loader.construct_document(node)
    except yaml.YAMLError as error:
        raise _yaml_error(error, source) from None
    except RecursionError:  # the composer recurses once per level of nesting
        raise RoutingConfigError(
            "nested too deeply for the YAML reader (lists or mappings inside each other)", source=source
        ) from None
    finally:
        loader.dispose()
    lines: dict[YamlPath, int] = {}
    # an alias is the anchored node itself: walk it once, not per alias; keep how many values it
    # stands for (itself and all inside it, every alias counted whole)
    sizes: dict[int, int] = {}
    inside: set[int] = set()  # the nodes being walked: meeting one again is an alias to itself

    def walk(current: yaml.Node, path: YamlPath) -> tuple[int, int]:
        """How many values ``current`` stands for, and how many of them aliases add."""
        lines[path] = current.start_mark.line + 1
        if id(current) in inside:
            raise RoutingConfigError(
                "an alias refers to itself: it stands for a value it is inside of",
                source=source,
                line=lines[path],
                path=format_path(path),
            )
        if id(current) in sizes:  # met again: an alias, all it stands for is a copy
            return sizes[id(current)], sizes[id(current)]
        inside.add(id(current))
        children: list[tuple[yaml.Node, YamlPath]] = []
        size, added = 1, 0
        if isinstance(current, yaml.MappingNode):
            children = [(value, (*path, str(key.value))) for key, value in current.value]
            size += len(children)  # the keys
        elif isinstance(current, yaml.SequenceNode):
            children = [(item, (*path, index)) for index, item in enumerate(current.value)]
        for child, child_path in children:
            child_size, child_added = walk(child, child_path)
            size += child_size
            added += child_added
        if added > MAX_ALIASED_VALUES:
            raise RoutingConfigError(
                f"aliases make this value stand for {size:,} values, {added:,} of them copies "
                f"(at most {MAX_ALIASED_VALUES:,}): whatever reads it would walk every copy "
                "(an alias bomb); write the values out or reuse fewer",
                source=source,
                line=lines[path],
                path=format_path(path),
            )
        inside.discard(id(current))
        sizes[id(current)] = size
        return size, added

    walk(node, ())
    return data, lines


class _Loader(yaml.SafeLoader):
    """The safe loader, with a scalar it reads but cannot build (``2001-02-30``, an int of 5,000
    digits, ``!!int abc``) a YAML error at the scalar's line: it raised a bare ``ValueError``."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as error:
            value = str(node.value) if isinstance(node, yaml.ScalarNode) else ""
            detail = "" if value and value in str(error) else f": {error}"  # the value shown masked
            kind = str(node.tag).rpartition(":")[2]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown(value)} as {kind}{detail}", node.start_mark
            ) from None


def _yaml_error(error: yaml.YAMLError, source: str) -> RoutingConfigError:
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    return RoutingConfigError(f"not valid YAML: {getattr(error, 'problem', error)}", source=source, line=line)


def _refuse_repeated_keys(node: yaml.Node, source: str) -> None:
    """Refuse a mapping key written twice: a YAML reader keeps only the last, so the first (an
    interface and all its rules, say) would be lost without a word. Runs before construction,
    which folds merge keys (``<<: *base``) in, where overriding a merged key is intended."""
    walked: set[int] = set()

    def walk(current: yaml.Node, path: YamlPath) -> None:
        if id(current) in walked:
            return
        walked.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if key in first:
                        raise RoutingConfigError(
                            f"key {key_node.value!r} is given twice (first at line {first[key]}); "
                            "a YAML reader would keep only the last",
                            source=source,
                            line=line,
                            path=format_path((*path, key_node.value)),
                        )
                    first[key] = line
                walk(value_node, (*path, str(key_node.value)))
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, (*path, index))

    walk(node, ())


_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


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
