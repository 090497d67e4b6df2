"""YAML documents every YAML reader of the library must refuse with its own typed error."""

from __future__ import annotations


def alias_bomb(key: str = "bomb") -> str:
    """Nine levels of nine aliases under ``key``: 9**9 (387 million) values ("billion laughs")."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 10)]
    return f"{key}:\n" + "".join(f"  {line}\n" for line in lines)


UNREADABLE_SCALARS = (
    "when: 2001-02-30\n",  # a date that does not exist: a bare ValueError out of PyYAML
    "n: !!int abc\n",
    f"n: {'9' * 5000}\n",  # past int's 4,300 digits of str(): a ValueError
)
"""Documents with a scalar PyYAML reads but cannot build."""


FORBIDDEN_CHARACTERS = (
    ("discord: {}\n\x00\n", "at line 2: character '\\x00' at column 1 is not allowed in YAML", 12),
    ("a: 'é'\nb: '\x07'\n", "at line 2: character '\\x07' at column 5 is not allowed in YAML", 11),
    ("a: 1\r\nb: 2\rc: '\x1b'\n", "at line 3: character '\\x1b' at column 5 is not allowed in YAML", 15),
    ("a: '\ud800'\n", "at line 1: character '\\ud800' at column 5 is not allowed in YAML", 4),
    ("a: 1\n\u2028b: '\uffff'\n", "at line 3: character '\\uffff' at column 5 is not allowed in YAML", 10),
)
"""Documents with a character YAML does not allow, what :func:`yaml_problem` says of each (after
"not valid YAML "), and its position in characters: every YAML reader names it so."""
