"""The one YAML loader: libyaml's where PyYAML has it, read and refused like the pure one."""

from __future__ import annotations

import pytest
import yaml

from dynamic_agents._yaml import (
    LOADERS,
    PureLoader,
    _limits_nesting,
    new_loader,
    safe_load,
    yaml_problem,
)
from tests.support.yaml_documents import FORBIDDEN_CHARACTERS

# Everything the safe loader builds: anchors, a merge key, every scalar type, block and flow.
DOCUMENT = """\
base: &base {agent_id: a, priority: 5, ratio: 0.5, on: yes, off: no, none: ~}
rules:
  - <<: *base
    name: first
    channel_ids: ["123", 456, 0x1f, 1_000]
  - {<<: *base, name: second, priority: 7}
when: 2001-02-03
at: 2001-02-03T04:05:06.5Z
text: |
  two
  lines
folded: >
  one
  line
binary: !!binary aGVsbG8=
set: !!set {a, b}
pairs: !!omap [{a: 1}, {b: 2}]
infinity: .inf
unicode: "caf\\u00e9 \\U0001F600 ☃"
"""


def test_libyaml_is_the_loader_where_pyyaml_has_it() -> None:
    """PyYAML's Python reader took ~5 s for a 700 KB routing file; libyaml's, a fraction."""
    assert yaml.__with_libyaml__, "this PyYAML has no libyaml: every reader runs the pure loader"
    assert isinstance(new_loader("a: 1\n"), yaml.CSafeLoader)
    assert LOADERS[-1] is PureLoader  # the tests run on each


class _UnlimitedLoader:
    """A libyaml without its nesting limit: it composes any depth (recursing in C)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get_single_node(self) -> yaml.Node | None:
        return None

    def construct_document(self, node: yaml.Node) -> None:
        return None

    def dispose(self) -> None:
        pass


def test_a_libyaml_without_its_nesting_limit_is_not_used() -> None:
    assert _limits_nesting(LOADERS[0])
    assert not _limits_nesting(_UnlimitedLoader)


@pytest.mark.usefixtures("yaml_loader")
def test_each_loader_builds_the_same_document() -> None:
    expected = yaml.safe_load(DOCUMENT)  # PyYAML's own, in Python
    assert safe_load(DOCUMENT) == expected
    assert expected["rules"][0]["channel_ids"] == ["123", 456, 31, 1000]
    assert safe_load("") is None
    assert safe_load("# only a comment\n") is None


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: [unclosed\n", 3),
        ("a:\n  b: 1\n c: 2\n", 3),
        ("a:\n\tb: 1\n", 2),
        ('a: "\\q"\n', 1),
        ("a: 1\n---\nb: 2\n", 2),
        ("a: *undefined\n", 1),
        ("a: !unknown x\n", 1),
        ("a: !!python/object:os.system x\n", 1),
        ("a: 1\nwhen: 2001-02-30\n", 2),
        ("a: 1\nx: &x [*x]\n", 2),
    ],
)
def test_each_loader_refuses_the_same_documents_at_the_same_line(text: str, line: int) -> None:
    with pytest.raises(yaml.YAMLError) as caught:
        safe_load(text)
    assert yaml_problem(caught.value).startswith(f"not valid YAML at line {line}: ")


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [
        ("a: 1\nb: 2\na: 3\n", 3, "a", 1),
        ("outer:\n  x: 1\n  y: 2\n  x: 1\n", 4, "x", 2),
        ("list:\n  - {k: 1, k: 2}\n", 2, "k", 2),
        ("base: &b {a: 1, a: 2}\nuse: *b\n", 1, "a", 1),
    ],
)
def test_a_key_given_twice_is_refused_at_its_second_line(text: str, line: int, key: str, first: int) -> None:
    """YAML readers keep the last of two equal keys: a router config or a spec that said
    ``api_key`` twice used the second without a word (only routing files refused it)."""
    with pytest.raises(yaml.YAMLError) as caught:
        safe_load(text)
    assert yaml_problem(caught.value) == (
        f"not valid YAML at line {line}: key {key!r} is given twice (first at line {first}); "
        "a YAML reader would keep only the last"
    )


@pytest.mark.usefixtures("yaml_loader")
def test_a_merged_key_overridden_in_place_is_no_repeated_key() -> None:
    assert safe_load("base: &b {a: 1, b: 2}\nuse: {<<: *b, a: 3}\n")["use"] == {"a": 3, "b": 2}
    assert safe_load("a: {<<: [{x: 1}, {x: 2}], y: 0}\n")["a"] == {"x": 1, "y": 0}


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(("text", "problem", "position"), FORBIDDEN_CHARACTERS)
def test_a_character_yaml_does_not_allow_is_named_with_its_line_and_column_on_each_loader(
    text: str, problem: str, position: int
) -> None:
    """PyYAML's ``ReaderError`` has no ``problem`` nor mark: the readers said only "not valid
    YAML: ReaderError". The character (escaped), its line and column, on each loader alike
    (libyaml counted the position in bytes, and a lone surrogate failed its UTF-8 encoding)."""
    with pytest.raises(yaml.YAMLError) as caught:
        safe_load(text)
    assert yaml_problem(caught.value) == f"not valid YAML {problem}"
    mark = caught.value.problem_mark  # type: ignore[attr-defined]
    assert mark.index == position  # in characters
    assert str(caught.value).endswith(
        f'in "<unicode string>", line {mark.line + 1}, column {mark.column + 1}'
    )


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(
    "text",
    [
        "x: " + "[" * 1100 + "]" * 1100 + "\n",  # past libyaml's 1,000 levels: seconds, pure
        "- " * 1100 + "x\n",
        "".join(" " * n + f"k{n}:\n" for n in range(1100)) + " " * 1100 + "v\n",
    ],
)
def test_nesting_deeper_than_the_reader_takes_is_a_yaml_error(text: str) -> None:
    """The pure composer recurses in Python (a ``RecursionError``); libyaml's refuses 1,000
    levels itself (its composer recurses in C, where nothing would stop it)."""
    with pytest.raises(yaml.YAMLError, match=r"nested too deeply|exceeded maximum nesting depth"):
        safe_load(text)
