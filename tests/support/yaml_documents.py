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
