"""Regular expressions from configuration, made safe to run on user content.

Patterns are compiled once with the ``regex`` engine, which can be interrupted: every match runs with
a timeout (channel ids too: on a REST or webhook interface they are any text up to 256 characters),
and content is matched on a bounded prefix. Patterns with a nested unbounded quantifier — ``(a+)+``,
``(\\w*)*``, the classic catastrophic-backtracking shape — are refused at load, before any content
reaches them, as are calls to a group or to the whole pattern (``(?1)``, ``(?R)``), which hide
that shape or recurse.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import regex

from dynamic_agents._logging import get_logger
from dynamic_agents._validation import check_seconds, shown

__all__ = ["SafePattern", "UnsafePatternError", "check_pattern"]

logger = get_logger("routing")

# The stdlib's own regex parser, used only to inspect a pattern's structure (it has no type stubs;
# the public aliases sre_parse / sre_constants warn on import since Python 3.11).
sre_parse: Any = importlib.import_module("re._parser")
sre_constants: Any = importlib.import_module("re._constants")

_UNBOUNDED: Final = sre_constants.MAXREPEAT
_REPEATS: Final = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT}


class UnsafePatternError(ValueError):
    """A pattern that can backtrack catastrophically, or that does not compile."""


def _has_unbounded_repeat(items: Any) -> bool:
    for op, argument in items:
        if op in _REPEATS:
            _low, high, sub = argument
            if high == _UNBOUNDED or _has_unbounded_repeat(sub):
                return True
        elif _nested(op, argument, _has_unbounded_repeat):
            return True
    return False


def _nested_unbounded(items: Any) -> bool:
    for op, argument in items:
        if op in _REPEATS:
            _low, high, sub = argument
            if high == _UNBOUNDED and _has_unbounded_repeat(sub):
                return True
            if _nested_unbounded(sub):
                return True
        elif _nested(op, argument, _nested_unbounded):
            return True
    return False


def _nested(op: Any, argument: Any, check: Any) -> bool:
    """Apply ``check`` to the sub-patterns of a group, branch or assertion."""
    if op is sre_constants.SUBPATTERN:
        return bool(check(argument[-1]))
    if op is sre_constants.BRANCH:
        return any(check(branch) for branch in argument[1])
    if op in {sre_constants.ASSERT, sre_constants.ASSERT_NOT, sre_constants.ATOMIC_GROUP}:
        return bool(check(argument[-1] if isinstance(argument, tuple) else argument))
    return False


_REGEX_ONLY_ESCAPE: Final = re.compile(r"\\\\|\\[pP](?:\{[^{}]*\}|[A-Za-z])|\\X")
"""An escaped backslash (kept), or an escape only the ``regex`` engine knows: ``\\p{L}``,
``\\PL``, ``\\X`` (a grapheme)."""


def _for_the_stdlib(match: re.Match[str]) -> str:
    """A stand-in the stdlib parser reads, matching one character like the escape it replaces: the
    check looks at the pattern's structure, which the stand-in keeps."""
    return match[0] if match[0] == "\\\\" else "\\w"


def check_pattern(pattern: str) -> None:
    """Raise :class:`UnsafePatternError` for a pattern that does not compile, nests unbounded
    quantifiers (``(a+)+``), calls a group or itself (``(?1)``, ``(?R)``), or nests groups too
    deeply for the compiler and the checks, which recurse once per group."""
    try:
        _check(pattern)
    except RecursionError:
        raise UnsafePatternError(
            f"pattern {shown(pattern)} nests groups too deeply to be compiled and checked (hundreds "
            "of groups inside each other): write it with fewer levels"
        ) from None


def _check(pattern: str) -> None:
    # (?V1) reads a "[" in a class as a nested set, version 0 (the default) as a character; (?x)
    # skips spaces and # comments: where either may apply, the text is read each way, so that
    # no reading hides a part
    readings = (False, True)
    verbose_readings = readings if _VERBOSE_FLAG.search(pattern) else (False,)
    classes = readings if "[" in pattern else (False,)
    added = max(
        _added_copies(pattern, nested_sets=sets, verbose=verbose)
        for sets in classes
        for verbose in verbose_readings
    )
    if added > MAX_EXPANDED:  # before compiling it, which is what takes the memory
        raise UnsafePatternError(
            f"pattern {shown(pattern)} repeats its parts {added:,} more times when compiled (at most "
            f"{MAX_EXPANDED:,}): the regex engine writes a counted repeat out ('a{{1000}}' as 1,000 "
            "a's), nested counts multiplying; use smaller counts, or '+' and '*'"
        )
    try:
        regex.compile(pattern)
    except (regex.error, ValueError) as error:  # a count of over 4,300 digits: int() refuses it
        raise UnsafePatternError(f"pattern {shown(pattern)} does not compile: {error}") from None
    call = next((found for sets in readings if (found := _call(pattern, nested_sets=sets))), None)
    if call is not None:
        raise UnsafePatternError(
            f"pattern {shown(pattern)} calls a group or the whole pattern ({call}), which can repeat "
            "an unbounded quantifier without end or recurse without consuming anything: the check "
            "cannot bound it; write the group out instead of calling it"
        )
    try:
        parsed = sre_parse.parse(_REGEX_ONLY_ESCAPE.sub(_for_the_stdlib, pattern))
    except re.error:  # syntax only the regex engine knows (\m, (?V1), a flag mid-pattern…)
        nested = any(
            _nested_unbounded_in_text(pattern, nested_sets=sets, verbose=verbose)
            for sets in readings
            for verbose in verbose_readings
        )
    else:
        nested = _nested_unbounded(parsed)
    if nested:
        raise UnsafePatternError(
            f"pattern {shown(pattern)} nests an unbounded quantifier inside another (like '(a+)+'), which "
            "can take exponential time on crafted input; rewrite it without the nesting (e.g. 'a+')"
        )


MAX_EXPANDED: Final = 100_000
"""How many copies of a pattern's parts its counted repeats may add: the ``regex`` engine writes
``a{n}`` (and the ``n`` of ``a{n,}``) out ``n`` times when it compiles it, nested counts
multiplying (``a{10000000}`` took 2.6 GB and 9 s, ``(?:a{3000}){3000}`` 2.3 GB and 13 s; this
many, about 40 MB and 0.1 s to 1 s)."""


_VERBOSE_FLAG: Final = re.compile(r"\(\?[a-zA-Z0-9-]*x")
"""A flag group that may turn on ``(?x)`` (``(?x)``, ``(?ix:…)``): only then are spaces and ``#``
comments read as nothing (without it a pattern is read only as it is)."""


def _added_copies(pattern: str, *, nested_sets: bool, verbose: bool) -> int:
    """How many parts (a character, escape, class or group each) the counted repeats of
    ``pattern`` add to it when written out, about: each part counts the least count of the
    quantifier after it, less the one written. ``verbose`` reads it as ``(?x)`` does."""
    # per open group (the whole pattern first): the parts of what it holds so far, written out
    # and as written
    sizes: list[tuple[int, int]] = [(0, 0)]
    for kind, quantifier in _parts(pattern, nested_sets=nested_sets, verbose=verbose):
        if kind == "open":
            sizes.append((0, 0))
            continue
        part = (1, 1)
        if kind == "close":
            inner = sizes.pop()
            part = (max(inner[0], 1), max(inner[1], 1))
        count = _least_count(quantifier)
        written_out, written = sizes[-1]
        sizes[-1] = (written_out + part[0] * count, written + part[1])
    return sum(out for out, _ in sizes) - sum(written for _, written in sizes)


def _parts(pattern: str, *, nested_sets: bool, verbose: bool) -> Iterator[tuple[str, re.Match[str] | None]]:
    """``pattern`` read part by part, as the ``regex`` engine reads its structure: ``("open",
    None)`` for a group's ``(``; then for each part, a group's ``)`` (``"close"``) or an escape, a
    character class (sets nested in it with ``nested_sets``) or any other character (``"atom"``),
    the quantifier after it (a :data:`_QUANTIFIER` match; ``None`` without one, ``{}`` being
    text). Comments (``verbose``: spaces and ``#`` comments too, as ``(?x)`` reads them) are
    skipped, also between a part and its quantifier."""
    depth, index, end = 0, 0, len(pattern)
    while index < end:
        if _ignored(pattern, index, verbose=verbose):
            index = _after_ignored(pattern, index, verbose=verbose)
            continue
        char, kind = pattern[index], "atom"
        if char == "(":
            depth += 1
            index += 1
            yield "open", None
            continue
        if char == "\\":
            index = _after_escape(pattern, index)
        elif char == "[":
            index = _after_class(pattern, index, nested_sets=nested_sets)
        else:
            if char == ")" and depth:
                depth -= 1
                kind = "close"
            index += 1
        index = _after_ignored(pattern, index, verbose=verbose)
        found = _QUANTIFIER.match(pattern, index)
        if found is not None and found[0][0] == "{" and not (found[1] or found[2] or found[3]):
            found = None  # "{}" is text
        if found is not None:
            index = found.end()
        yield kind, found


def _ignored(pattern: str, index: int, *, verbose: bool) -> bool:
    """Whether a comment starts at ``index`` (``(?#…)``; with ``verbose``, a space or ``#…``)."""
    if pattern.startswith("(?#", index):
        return True
    return verbose and index < len(pattern) and (pattern[index].isspace() or pattern[index] == "#")


def _after_ignored(pattern: str, index: int, *, verbose: bool) -> int:
    """The index after the comments and (with ``verbose``) spaces at ``index``: a quantifier
    after them applies to what is before them."""
    while _ignored(pattern, index, verbose=verbose):
        if pattern.startswith("(?#", index):
            close = pattern.find(")", index)
        elif pattern[index] == "#":
            close = pattern.find("\n", index)
        else:
            close = index
        index = len(pattern) if close < 0 else close + 1
    return index


def _least_count(quantifier: re.Match[str] | None) -> int:
    """The least count of ``quantifier`` (at least 1: what ``*`` or ``{0,n}`` repeats is written
    out once all the same); 1 without one."""
    if quantifier is None:
        return 1
    kind = quantifier[0][0]
    # int() refuses over 4,300 digits: 18 of them, without leading zeros, are past any limit
    least = 1 if kind == "+" else 0 if kind in "*?" else int((quantifier[1] or "0").lstrip("0")[:18] or 0)
    return max(least, 1)


_CALL: Final = re.compile(r"\(\?(?:R|[-+]?\d+|&\w+|P>\w+)\)")
"""A call to a group (``(?1)``, ``(?-1)``, ``(?&name)``, ``(?P>name)``) or to the whole
pattern (``(?R)``, ``(?0)``): ``regex`` syntax the stdlib parser does not know."""


def _call(pattern: str, *, nested_sets: bool) -> str | None:
    """The first call to a group or to the whole pattern, outside escapes, character classes and
    comments."""
    index, end = 0, len(pattern)
    while index < end:
        char = pattern[index]
        if char == "\\":
            index = _after_escape(pattern, index)
        elif char == "[":
            index = _after_class(pattern, index, nested_sets=nested_sets)
        elif _ignored(pattern, index, verbose=False):  # a comment, to the first ")"
            index = _after_ignored(pattern, index, verbose=False)
        elif (found := _CALL.match(pattern, index)) is not None:
            return found[0]
        else:
            index += 1
    return None


def _nested_unbounded_in_text(pattern: str, *, nested_sets: bool, verbose: bool) -> bool:
    """:func:`_nested_unbounded` read from the text itself (:func:`_parts`), for a pattern that
    compiles with the ``regex`` engine but that the stdlib parser refuses."""
    unbounded = [False]  # per open group (the whole pattern first): holds an unbounded quantifier
    for kind, quantifier in _parts(pattern, nested_sets=nested_sets, verbose=verbose):
        if kind == "open":
            unbounded.append(False)
            continue
        repeat = _is_unbounded(quantifier)
        if kind == "close":
            inner = unbounded.pop()
            if repeat and inner:
                return True
            repeat = repeat or inner
        unbounded[-1] = unbounded[-1] or repeat
    return False


_QUANTIFIER: Final = re.compile(r"(?:[*+?]|\{(\d*)(,?)(\d*)\})[?+]?")


def _is_unbounded(quantifier: re.Match[str] | None) -> bool:
    """Whether ``quantifier`` repeats without bound (``*``, ``+``, ``{n,}``)."""
    if quantifier is None:
        return False
    kind = quantifier[0][0]
    return kind in "*+" or (kind == "{" and quantifier[2] == "," and not quantifier[3])


def _after_escape(pattern: str, index: int) -> int:
    """The index after the escape at ``index`` (``\\p{L}``, ``\\N{…}``, ``\\g<1>`` whole)."""
    index += 2
    if index < len(pattern) and pattern[index] in "{<" and pattern[index - 1] in "pPNgLkxuU":
        close = pattern.find("}" if pattern[index] == "{" else ">", index)
        if close >= 0:
            return close + 1
    return index


def _after_class(pattern: str, index: int, *, nested_sets: bool) -> int:
    """The index after the character class opening at ``index``: with ``nested_sets``, a ``[``
    in it opens a set, as ``(?V1)`` reads it; without, it is a character, as version 0 reads it."""
    depth, index = 1, index + 1
    if pattern.startswith("^", index):
        index += 1
    if pattern.startswith("]", index):  # a "]" first is a character
        index += 1
    while index < len(pattern) and depth:
        char = pattern[index]
        if char == "\\":
            index = _after_escape(pattern, index)
            continue
        if char == "[" and not pattern.startswith("[:", index):
            depth += 1 if nested_sets else 0
        elif char == "[":  # a POSIX class, [:alpha:]
            close = pattern.find(":]", index + 2)
            index = index + 1 if close < 0 else close + 2
            continue
        elif char == "]":
            depth -= 1
        index += 1
    return index


@dataclass(frozen=True, slots=True)
class SafePattern:
    """A checked, compiled pattern searched with a timeout (seconds, finite, > 0; else a
    :class:`ConfigurationError`); a timeout counts as no match."""

    pattern: str
    timeout: float = 0.05
    compiled: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # 0 or inf made every search time out (no match); a negative or NaN one left it unbounded
        object.__setattr__(self, "timeout", check_seconds("timeout", self.timeout))
        check_pattern(self.pattern)
        object.__setattr__(self, "compiled", regex.compile(self.pattern))

    def search(self, text: str) -> bool:
        try:
            return self.compiled.search(text, timeout=self.timeout) is not None
        except TimeoutError:
            logger.warning(
                "pattern %r timed out after %ss on %d characters: treated as no match",
                self.pattern,
                self.timeout,
                len(text),
            )
            return False
