"""Reading YAML, for every YAML reader of the library (routing config, specs, spec stores, router
config): PyYAML's safe loader, libyaml's where PyYAML has it (:data:`LOADERS`), with what it lets
through refused as a ``yaml.YAMLError`` at its line: a scalar it reads but cannot build
(``2001-02-30``, an int of 5,000 digits, ``!!int abc``: a bare ``ValueError``), aliases that
stand for more than :data:`MAX_ALIASED_VALUES` copies (an alias bomb: the loader shares them, but
``repr``, a validator or a JSON dump walk every copy), an alias inside what it stands for, a
mapping key written twice (the reader keeps the last), and nesting deeper than the reader
recurses; and a character YAML does not allow named, escaped, at its line and column
(:class:`CharacterError`), where PyYAML's reader gives only an offset."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, Protocol

import yaml

from dynamic_agents._validation import shown

__all__ = [
    "LOADERS",
    "MAX_ALIASED_VALUES",
    "AliasError",
    "CharacterError",
    "DocumentError",
    "PureLoader",
    "RepeatedKeyError",
    "YamlLoader",
    "YamlPath",
    "new_loader",
    "safe_load",
    "walk_document",
    "yaml_problem",
]

YamlPath = tuple[str | int, ...]

MAX_ALIASED_VALUES: Final = 1_000_000
"""How many values aliases may add to a document: nine levels of nine aliases stand for 387
million ("billion laughs")."""


class YamlLoader(Protocol):
    """What the readers use of a loader: compose the one document, build it, let go."""

    def get_single_node(self) -> yaml.Node | None: ...

    def construct_document(self, node: yaml.Node) -> Any: ...

    def dispose(self) -> None: ...


class _ScalarsAsYamlErrors(yaml.constructor.SafeConstructor):
    """A scalar the safe constructor reads but cannot build, a YAML error at the scalar's line
    (the value masked, as :func:`~dynamic_agents._validation.shown` masks one)."""

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


class PureLoader(_ScalarsAsYamlErrors, yaml.SafeLoader):
    """PyYAML's safe loader in Python: where PyYAML was built without libyaml."""

    def __init__(self, stream: str) -> None:
        _refuse_unprintable(stream)  # before the reader's own check, which says less
        super().__init__(stream)


_READER_NAME: Final = "<unicode string>"  # what PyYAML's reader calls a text it is given
_LINE_BREAK: Final = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # as PyYAML's reader counts lines


class CharacterError(yaml.MarkedYAMLError):
    """A character YAML does not allow (a control character, a lone surrogate, U+FFFE, U+FFFF):
    the character escaped, at its line and column (counted in characters)."""


def _refuse_unprintable(text: str) -> None:
    """The characters YAML does not allow, refused as a :class:`CharacterError` naming the
    character and where it is. PyYAML's reader refuses them with a ``ReaderError``, which has no
    ``problem`` nor line (only an offset); libyaml refuses the same, but counts the offset in
    bytes, and a lone surrogate (text that was never UTF-8) failed its encoding to UTF-8 as a bare
    ``UnicodeEncodeError``."""
    match = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if match is not None:
        index = match.start()
        line, line_start = 0, 0
        for line_break in _LINE_BREAK.finditer(text, 0, index):
            line, line_start = line + 1, line_break.end()
        column = index - line_start
        raise CharacterError(
            problem=f"character {match.group()!a} at column {column + 1} is not allowed in YAML",
            problem_mark=yaml.Mark(
                _READER_NAME, index, line, column, None, 0
            ),  # no snippet: it may hold a key
        )


_LIBYAML_MAX_NESTING: Final = 1000


def _limits_nesting(loader: Callable[[str], YamlLoader]) -> bool:
    """Whether libyaml refuses deep nesting itself (1,000 levels, a YAML error at the line). Its
    composer recurses in C, where no ``RecursionError`` stops it: without that limit a document
    nested deep enough would overflow the C stack (a crash), so only the pure loader is used."""
    depth = _LIBYAML_MAX_NESTING + 1
    probe = loader("[" * depth + "]" * depth)
    try:
        probe.get_single_node()
    except yaml.YAMLError:
        return True
    finally:
        probe.dispose()
    return False


LOADERS: tuple[Callable[[str], YamlLoader], ...] = (PureLoader,)
"""The loaders this installation has, the one every reader uses first: libyaml's, when PyYAML
has it, reads a 700 KB routing file's YAML ~4.5 times faster than the pure one (0.7 s of CPU
against 3.1 s)."""

if yaml.__with_libyaml__:

    class LibyamlLoader(_ScalarsAsYamlErrors, yaml.CSafeLoader):
        """PyYAML's safe loader on libyaml: the same constructor, resolver and errors (without
        the quoted line, which :func:`yaml_problem` leaves out anyway)."""

        def __init__(self, stream: str) -> None:
            _refuse_unprintable(stream)
            super().__init__(stream)

    if _limits_nesting(LibyamlLoader):
        LOADERS = (LibyamlLoader, PureLoader)

_loader: Callable[[str], YamlLoader] = LOADERS[0]  # the tests switch it to run on each loader


def new_loader(text: str) -> YamlLoader:
    """A loader for ``text``: the first of :data:`LOADERS`. A :class:`CharacterError` for a
    character YAML does not allow."""
    return _loader(text)


class DocumentError(yaml.constructor.ConstructorError):
    """A composed document refused (:func:`walk_document`) at ``node``; ``path`` is where, in it."""

    def __init__(self, problem: str, node: yaml.Node, path: YamlPath) -> None:
        super().__init__(None, None, problem, node.start_mark)
        self.path = path
        self.line: int = node.start_mark.line + 1


class AliasError(DocumentError):
    """Aliases refused: an alias inside what it stands for, or too many copies."""


class RepeatedKeyError(DocumentError):
    """A mapping key written twice, at the second."""


_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


def _refuse_repeated_keys(mapping: yaml.MappingNode, path: YamlPath) -> None:
    """A YAML reader keeps the last of two equal keys, so the first (an interface and its rules,
    a deployment's key) would be lost without a word. Checked on the composed document, before
    construction folds merge keys (``<<: *base``) in, where overriding a merged key is intended."""
    first: dict[tuple[str, str], int] = {}
    for key, _ in mapping.value:
        if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
            written = (key.tag, key.value)
            if written in first:
                raise RepeatedKeyError(
                    f"key {key.value!r} is given twice (first at line {first[written]}); "
                    "a YAML reader would keep only the last",
                    key,
                    (*path, str(key.value)),
                )
            first[written] = key.start_mark.line + 1


def walk_document(node: yaml.Node, visit: Callable[[yaml.Node, YamlPath], None] | None = None) -> None:
    """Walk a composed document, calling ``visit`` with every value's node and path (an alias's
    too, at each path it stands at), each anchored node walked once; :class:`AliasError` for an
    alias inside what it stands for, or aliases adding more than :data:`MAX_ALIASED_VALUES`;
    :class:`RepeatedKeyError` for a mapping key written twice."""
    sizes: dict[int, int] = {}  # by anchored node: how many values it stands for, all inside it
    inside: set[int] = set()  # the nodes being walked: meeting one again is an alias to itself

    def walk(current: yaml.Node, path: YamlPath) -> tuple[int, int]:
        """How many values ``current`` stands for, and how many of them aliases add."""
        if visit is not None:
            visit(current, path)
        if id(current) in inside:
            raise AliasError(
                "an alias refers to itself: it stands for a value it is inside of", current, path
            )
        if id(current) in sizes:  # met again: an alias, all it stands for is a copy
            return sizes[id(current)], sizes[id(current)]
        inside.add(id(current))
        children: list[tuple[yaml.Node, YamlPath]] = []
        size, added = 1, 0
        if isinstance(current, yaml.MappingNode):
            _refuse_repeated_keys(current, path)
            children = [(value, (*path, str(key.value))) for key, value in current.value]
            size += len(children)  # the keys
        elif isinstance(current, yaml.SequenceNode):
            children = [(item, (*path, index)) for index, item in enumerate(current.value)]
        for child, child_path in children:
            child_size, child_added = walk(child, child_path)
            size += child_size
            added += child_added
        if added > MAX_ALIASED_VALUES:
            raise AliasError(
                f"aliases make this value stand for {size:,} values, {added:,} of them copies "
                f"(at most {MAX_ALIASED_VALUES:,}): whatever reads it would walk every copy "
                "(an alias bomb); write the values out or reuse fewer",
                current,
                path,
            )
        inside.discard(id(current))
        sizes[id(current)] = size
        return size, added

    walk(node, ())


def safe_load(text: str) -> Any:
    """``yaml.safe_load``, with what this module refuses a ``yaml.YAMLError`` (``None`` for an
    empty document)."""
    loader = new_loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        walk_document(node)
        return loader.construct_document(node)
    except RecursionError:  # the composer recurses once per level of nesting
        raise yaml.MarkedYAMLError(
            problem="nested too deeply for the YAML reader (lists or mappings inside each other)"
        ) from None
    finally:
        loader.dispose()


def yaml_problem(error: yaml.YAMLError) -> str:
    """``not valid YAML at line 3: <problem>``: the line and the problem only. PyYAML's own
    message quotes the line it stopped at, which may hold a key."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or type(error).__name__
    return f"not valid YAML{where}: {problem}"
