r"""Splitting a reply into messages a chat platform accepts, keeping code blocks intact.

>>> from dynamic_agents.client.splitting import join_chunks, split_message, split_message_parts
>>> reply = "First paragraph.\n\n```python\nprint('hello')\nprint('world')\n```\n"
>>> split_message(reply, limit=32)
['First paragraph.\n\n', "```python\nprint('hello')\n```", "```python\nprint('world')\n```\n"]
>>> parts = split_message_parts(reply, limit=32)
>>> [(part.added_prefix, part.added_suffix) for part in parts]
[('', ''), ('', '```'), ('```python\n', '')]
>>> join_chunks(parts) == reply
True

:func:`split_message` gives the texts to send (``platform="discord"`` sets the limit, or pass
``limit=``); :func:`split_message_parts` gives :class:`MessageChunk` objects that also say which
slice of the input each one carries and which fence markers were added; :func:`join_chunks` undoes
the split. Everything here is a pure function of its arguments.

Where a chunk ends
    At the furthest cut that keeps the chunk within the limit, preferring, in this order: the end of
    a paragraph (after one or more blank lines), the end of a line (after its newline, else just
    before it), a space between words (or the end of a closing fence's backticks, as the rest of its
    line is prose), then any character (not between a character and the accents, joiners or
    selectors that belong to it, when possible). Boundary whitespace stays at the **end** of the
    chunk before the cut, so each later chunk starts with the next paragraph, line or word.
    The preference is strict: a paragraph break anywhere in the window wins over a later line break,
    even if the chunk comes out short. A cut inside a markdown link (``[text](url)`` on one line) or
    an inline code span (`` `code` `` on one line), outside code blocks, is avoided whenever another
    cut fits: its halves would render as plain text.

Code fences
    A *fence line* is a line (text between "\n" characters) whose content, stripped of whitespace,
    starts with three backticks. Fence lines alternately open and close a block, as chat platforms
    render them. A chunk that ends inside a block gets a closing fence added at its end ("```",
    after a newline), and the next chunk gets the block reopened at its start ("```python" and a
    newline: the first word of the opening fence's info string, or a bare "```" when that word holds
    a backtick, the two markers would take more than half the limit, or ``platform`` is Slack or
    WhatsApp, which show a language as the block's first line of code). A text that ends inside an
    unclosed block has it closed as well (a reply cut off by a token limit often does), so every
    chunk has an even number of fence lines and renders on its own. The limit includes the added
    markers. Cuts that would leave an empty code block (just after an opening fence or just before a
    closing one), cut an opening fence line's language off, or leave a chunk of whitespace only are
    avoided whenever another cut fits; a cut that splits a fence line's backticks or starts a chunk
    with a fence line the input lacks, more so. Text after a closing fence on its line is prose,
    cut like any. A cut in the indent of a fence line indented by 1 to 3 spaces is not one of the
    latter: the next chunk starts with the same fence, less indented (CommonMark reads both as
    fences; 4 spaces, or a tab, make the line indented code).

    Not modelled: triple backticks in the middle of a line (inline "```code```" after other text),
    which some platforms render as a block too; tilde fences ("~~~"), which are CommonMark's, not
    the chat platforms' (a reply in one is split as text); and a fence with a language always
    toggles (it closes an open block, as on chat platforms, unlike CommonMark).

Only a pathological input (a run of whitespace, or of backticks, about as long as a chunk) can force
a chunk that is whitespace only or a cut that creates or hides a fence line. Such chunks still
respect the limit, have balanced fences and rejoin exactly, and the block state is right again from
the next chunk on; only the rendering of the two chunks around the cut may differ from the
original's (and only there can a chunk reopen a block the previous one did not close).

Lengths are Python string lengths (code points), as the limits in :data:`PLATFORM_LIMITS` are given
in characters; a platform counting UTF-16 code units (where most emoji count twice) needs a smaller
``limit`` for emoji-heavy text.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from dynamic_agents._validation import a_type, shown
from dynamic_agents.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_LIMIT",
    "MIN_LIMIT",
    "PLATFORM_LIMITS",
    "MessageChunk",
    "join_chunks",
    "split_message",
    "split_message_parts",
]

PLATFORM_LIMITS: Final[Mapping[str, int]] = MappingProxyType(
    {"discord": 2000, "slack": 4000, "telegram": 4096, "whatsapp": 4096}
)
"""Characters per message, by platform slug (read-only).

Discord: 2,000 for bots. Telegram: 4,096 (``sendMessage`` text, after entity parsing). WhatsApp:
4,096 (Cloud API text body). Slack: 4,000 is Slack's *recommended* size for ``text``; its hard limit
is larger (it truncates text over 40,000 characters), so a host that wants longer Slack messages can
pass ``limit=`` explicitly.
"""

_SHOWS_LANGUAGE_AS_CODE: Final = frozenset({"slack", "whatsapp"})
"""Platforms whose code blocks take no language: "```python" shows "python" as the first line of
code, so a block is reopened there with a bare fence."""

DEFAULT_LIMIT: Final = min(PLATFORM_LIMITS.values())
"""Used when neither ``limit`` nor ``platform`` is given: 2,000 (Discord's), safe on every platform above."""

MIN_LIMIT: Final = 16
"""The smallest ``limit`` accepted. The fence markers take up to 8 characters of a chunk (a reopening
fence and newline at the start, a newline and closing fence at the end); 16 keeps at least half of
every chunk for the text itself, and language tags are dropped from reopening fences before that."""

_FENCE: Final = "```"
_CLOSE_LENGTH: Final = len("\n" + _FENCE)
_NO_BREAK_SPACES: Final = frozenset("\u00a0\u2007\u202f")
_ZWJ: Final = "\u200d"
_LINK: Final = re.compile(r"\[[^\[\]\n]+\]\([^()\s]+\)")
"""A markdown link, ``[text](url)``, on one line."""
_CODE_SPAN: Final = re.compile(r"(?<!`)(`{1,2})(?!`)(?:(?!\1)[^\n])+?(?<!`)\1(?!`)")
"""An inline code span on one line: `` `code` ``, or ``` ``code with a ` inside`` ```."""
_INDIC_LINKERS: Final = frozenset("\u094d\u09cd\u0acd\u0b4d\u0c4d\u0d4d")
"""Viramas that join the consonants around them into one conjunct (Unicode's InCB=Linker)."""
# How bad a cut is, best first.
_CLEAN: Final = 0
_UNTIDY: Final = 1
_BREAKS_FENCE: Final = 2


@dataclass(frozen=True, slots=True)
class MessageChunk:
    r"""One message of a split reply.

    ``text`` is what to send: ``added_prefix + original + added_suffix``, where ``original`` is
    ``input[start:end]``. The added parts are empty or fence markers. ``added_prefix`` reopens the
    code block the input is inside at ``start``, which the previous chunk closed ("```python\n");
    ``added_suffix`` closes one this chunk ends inside ("```" when ``original`` ends with a newline,
    else "\n```").
    """

    text: str
    start: int
    end: int
    added_prefix: str = ""
    added_suffix: str = ""

    @property
    def original(self) -> str:
        """The slice of the input this chunk carries: ``text`` without the added markers."""
        return self.text[len(self.added_prefix) : len(self.text) - len(self.added_suffix)]


def split_message(text: str, *, limit: int | None = None, platform: str | None = None) -> list[str]:
    """The messages to send for ``text``: each at most ``limit`` characters, code blocks balanced.

    ``platform`` is a key of :data:`PLATFORM_LIMITS` (case-insensitive); an explicit ``limit`` wins
    over it (the platform is then not looked up, so a platform not listed can be given its own
    limit); with neither, :data:`DEFAULT_LIMIT`. Chunks that are whitespace only are left out, as
    platforms refuse or drop empty messages: an empty or blank ``text`` gives ``[]``. Raises
    :class:`~dynamic_agents.exceptions.ConfigurationError` for an unknown platform or a ``limit``
    below :data:`MIN_LIMIT`.
    """
    return [
        chunk.text
        for chunk in split_message_parts(text, limit=limit, platform=platform)
        if chunk.text.strip()
    ]


def split_message_parts(
    text: str, *, limit: int | None = None, platform: str | None = None
) -> list[MessageChunk]:
    """Like :func:`split_message`, as :class:`MessageChunk` objects, and lossless.

    ``join_chunks(split_message_parts(text, ...)) == text`` always; the chunks' ``start``/``end``
    cover the input in order without gaps. Nothing is left out here: ``""`` gives ``[]`` and a blank
    text gives one (blank) chunk per window.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    size = _resolve_limit(limit, platform)
    if not text:
        return []
    languages = not (isinstance(platform, str) and platform.lower() in _SHOWS_LANGUAGE_AS_CODE)
    return _Splitter(text, size, languages=languages).split()


def join_chunks(chunks: Iterable[MessageChunk]) -> str:
    """The text the chunks were split from: their texts without the fence markers the split added.

    ``chunks`` are :class:`MessageChunk` objects (:func:`split_message_parts`); anything else, such
    as the texts :func:`split_message` returns (markers added, blank chunks left out: they do not
    join back), is a :class:`TypeError`.
    """
    originals = []
    for chunk in chunks:
        if not isinstance(chunk, MessageChunk):
            raise TypeError(
                "join_chunks takes the MessageChunk objects of split_message_parts, got "
                f"{a_type(chunk)} (split_message's texts do not join back)"
            )
        originals.append(chunk.original)
    return "".join(originals)


def _resolve_limit(limit: int | None, platform: str | None) -> int:
    if limit is None:
        if platform is None:
            return DEFAULT_LIMIT
        try:
            return PLATFORM_LIMITS[platform.lower()]
        except (KeyError, AttributeError):
            known = ", ".join(sorted(PLATFORM_LIMITS))
            raise ConfigurationError(
                f"platform {shown(platform)} has no known message limit: use one of {known}, or pass limit="
            ) from None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ConfigurationError(f"limit must be an int, got {shown(limit)}")
    if limit < MIN_LIMIT:
        raise ConfigurationError(
            f"limit {limit} is too small: at least {MIN_LIMIT} characters, room for the code-fence markers"
        )
    return limit


class _Splitter:
    """One split of one text. Positions are indices into the text; a cut at ``p`` ends a chunk
    before ``text[p]``. "Original" state is the input's own fence state; "local" is what a chunk's
    own text renders as (it includes the added opening marker)."""

    def __init__(self, text: str, limit: int, *, languages: bool = True) -> None:
        self.text = text
        self.limit = limit
        self.languages = languages  # whether a reopening fence may carry the block's language
        self.n = n = len(text)
        # nonspace[i]: the first index >= i of a non-whitespace character (n when there is none).
        nonspace = [n] * (n + 1)
        for i in range(n - 1, -1, -1):
            nonspace[i] = nonspace[i + 1] if text[i].isspace() else i
        self.nonspace = nonspace
        # The input's lines: start, end (the "\n" or n) and mark (where a fence line's ``` is, or -1).
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.marks: list[int] = []
        position = 0
        while True:
            end = text.find("\n", position)
            end = n if end < 0 else end
            self.starts.append(position)
            self.ends.append(end)
            self.marks.append(self.fence_mark(position, end))
            if end == n:
                break
            position = end + 1
        # open_before[k]: the language of the block line k starts inside, or None outside one; the
        # extra last entry is the state at the end of the text.
        self.open_before: list[str | None] = []
        language: str | None = None
        for mark, end in zip(self.marks, self.ends, strict=True):
            self.open_before.append(language)
            if mark >= 0:
                language = self._language(mark, end) if language is None else None
        self.open_before.append(language)
        self.fence_marks = [mark for mark in self.marks if mark >= 0]
        # Links and inline code spans outside fenced blocks (inside one, brackets and backticks
        # are code), merged where they overlap (a link whose text is code): a cut inside one is
        # untidy.
        spans = [m.span() for m in _LINK.finditer(text) if self.open_at(m.start()) is None]
        spans += [m.span() for m in _CODE_SPAN.finditer(text) if self.open_at(m.start()) is None]
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self.span_starts = [start for start, _ in merged]
        self.span_ends = [end for _, end in merged]
        self._indicator_runs: list[int] | None = None
        # Where the backticks of a fence that closes a block end, with more text on the line: the
        # rest is prose, so a cut there is a boundary between words, as a space would be.
        self.closing_fence_ends: set[int] = set()
        for mark, state in zip(self.marks, self.open_before[:-1], strict=True):
            if mark >= 0 and state is not None:
                after = mark + len(_FENCE)
                while after < n and text[after] == "`":
                    after += 1
                if after < n and not self.splits_character(after):
                    self.closing_fence_ends.add(after)

    def split(self) -> list[MessageChunk]:
        chunks: list[MessageChunk] = []
        start, prefix = 0, ""
        while start < self.n:
            end, suffix = _Window(self, start, prefix).cut()
            chunks.append(MessageChunk(prefix + self.text[start:end] + suffix, start, end, prefix, suffix))
            language = self.open_at(end) if end < self.n else None
            prefix = "" if language is None else self._reopen(language)
            start = end
        return chunks

    def open_at(self, p: int) -> str | None:
        """The input's state just before ``text[p]``: the open block's language, or None."""
        k = bisect_right(self.starts, p) - 1
        if self.marks[k] >= 0 and p >= self.marks[k] + len(_FENCE):
            return self.open_before[k + 1]
        return self.open_before[k]

    def inside_span(self, p: int) -> bool:
        """Whether a cut at ``p`` falls inside a markdown link (``[text](url)``) or an inline
        code span (`` `code` ``) outside code blocks."""
        i = bisect_right(self.span_starts, p) - 1
        return i >= 0 and self.span_starts[i] < p < self.span_ends[i]

    def next_fence(self, p: int) -> int:
        """Where the first fence line at or after ``p`` has its backticks (n when there is none)."""
        i = bisect_left(self.fence_marks, p)
        return self.fence_marks[i] if i < len(self.fence_marks) else self.n

    def splits_character(self, p: int) -> bool:
        """Whether a cut at ``p`` separates a character from what combines with it (roughly, a
        grapheme cluster: accents, joiners, variation selectors, skin tones, flags, CR LF, Indic
        conjuncts, decomposed Hangul syllables)."""
        before, after = self.text[p - 1], self.text[p]
        code = ord(after)
        if (before == "\r" and after == "\n") or _ZWJ in (before, after):
            return True
        if unicodedata.category(after) in {"Mn", "Mc", "Me"}:
            return True
        if 0xFE00 <= code <= 0xFE0F or 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:
            return True
        # a conjunct (consonant, virama, consonant: "क्ष"), or one Hangul syllable
        if (before in _INDIC_LINKERS and unicodedata.category(after) == "Lo") or _hangul_joins(before, after):
            return True
        if _is_regional_indicator(before) and _is_regional_indicator(after):
            return self._indicators_before(p) % 2 == 1  # flags pair up from the run's start
        return False

    def _indicators_before(self, p: int) -> int:
        """How many regional indicators run up to ``text[p - 1]``. Counted once for the whole
        text, on first use: counting back from each cut made a long run of flags quadratic."""
        if self._indicator_runs is None:
            runs = [0] * (self.n + 1)
            for i, character in enumerate(self.text):
                runs[i + 1] = runs[i] + 1 if _is_regional_indicator(character) else 0
            self._indicator_runs = runs
        return self._indicator_runs[p]

    def commonmark_fence(self, mark: int) -> bool:
        """Whether CommonMark, too, reads the fence line with its backticks at ``mark`` as one: it
        is indented by at most 3 spaces (4, or a tab, make it indented code; other whitespace,
        text)."""
        indent = self.text[self.starts[bisect_right(self.starts, mark) - 1] : mark]
        return len(indent) <= 3 and not indent.strip(" ")

    def fence_mark(self, begin: int, end: int) -> int:
        """Where the backticks of the fence line ``text[begin:end]`` are, or -1 if it is not one."""
        q = self.nonspace[begin]
        return q if q < end and self.text.startswith(_FENCE, q) else -1

    def _language(self, mark: int, end: int) -> str:
        i = mark
        while i < end and self.text[i] == "`":
            i += 1
        words = self.text[i:end].split()
        return words[0] if words else ""

    def _reopen(self, language: str) -> str:
        marker = f"{_FENCE}{language}\n"
        too_long = len(marker) + _CLOSE_LENGTH > self.limit // 2
        if not self.languages or "`" in language or not language.isprintable() or too_long:
            return _FENCE + "\n"
        return marker


class _Window:
    """The candidate cuts for the chunk that starts at ``start`` (after ``prefix``)."""

    def __init__(self, splitter: _Splitter, start: int, prefix: str) -> None:
        self.s = splitter
        self.text = splitter.text
        self.start = start
        self.prefix = prefix
        self.last = min(splitter.n, start + splitter.limit - len(prefix))
        # The chunk's lines up to the window's end: where each begins in the input (the first one at
        # ``start``, possibly mid-line), ends, its fence mark, and the local state before it: where
        # the content of the open block starts, or None outside a block.
        self.begins: list[int] = []
        self.ends: list[int] = []
        self.marks: list[int] = []
        self.open_from: list[int | None] = []
        open_from = start if prefix else None
        k = bisect_right(splitter.starts, start) - 1
        while k < len(splitter.starts) and splitter.starts[k] <= self.last:
            begin = max(splitter.starts[k], start)
            # The first line can be the rest of one the previous chunk ended in.
            same = begin == splitter.starts[k]
            mark = splitter.marks[k] if same else splitter.fence_mark(begin, splitter.ends[k])
            self.begins.append(begin)
            self.ends.append(splitter.ends[k])
            self.marks.append(mark)
            self.open_from.append(open_from)
            if mark >= 0:
                open_from = splitter.ends[k] + 1 if open_from is None else None
            k += 1

    def cut(self) -> tuple[int, str]:
        """The end of the chunk and the closing marker to add (``""`` when none)."""
        n = self.s.n
        if self.last == n and self._fits(n):
            return n, self._suffix(n)
        # Failing a clean cut, the first one (in order of preference) that is only untidy, else the
        # first one that changes how a fence line renders.
        fallbacks: dict[int, int] = {}
        for p in self._candidates():
            if not self._fits(p):
                continue
            flaw = self._flaw(p)
            if flaw == _CLEAN:
                return p, self._suffix(p)
            fallbacks.setdefault(flaw, p)
        # The last candidates are every position down to start + 1, which always fits (MIN_LIMIT).
        p = fallbacks[min(fallbacks)]
        return p, self._suffix(p)

    def _candidates(self) -> Iterator[int]:
        text, nonspace = self.text, self.s.nonspace
        # Paragraph ends: the start of a line that follows a blank one.
        for j in range(len(self.begins) - 1, 0, -1):
            if nonspace[self.begins[j - 1]] >= self.ends[j - 1]:
                yield self.begins[j]
        # Line ends: after the newline, else before it (the newline then starts the next chunk).
        for j in range(len(self.begins) - 1, -1, -1):
            if j + 1 < len(self.begins):
                yield self.begins[j + 1]
            end = self.ends[j]
            if end > self.start + 1 and text[end - 1] == "\r":
                end -= 1
            if self.start < end <= self.last and end < self.s.n:
                yield end
        positions = range(self.last, self.start, -1)
        for p in positions:
            before = text[p - 1]
            if (
                p < self.s.n
                and before != "\n"
                and before.isspace()
                and before not in _NO_BREAK_SPACES
                and not text[p].isspace()
                and not self.s.splits_character(p)  # a space can carry a mark (" \u0301")
            ) or p in self.s.closing_fence_ends:
                yield p
        for p in positions:
            if p == self.s.n or not self.s.splits_character(p):
                yield p
        yield from positions

    def _line(self, p: int) -> tuple[int, bool]:
        """The chunk line ``p`` falls in, and whether ``p`` is that line's start."""
        j = bisect_right(self.begins, p) - 1
        return j, j > 0 and p == self.begins[j]

    def _local_open(self, p: int) -> int | None:
        """Local state at a cut at ``p``: where the open block's content starts, or None."""
        j, at_line_start = self._line(p)
        state = self.open_from[j]
        mark = self.marks[j]
        if not at_line_start and mark >= 0 and p >= mark + len(_FENCE):
            return p if state is None else None  # the chunk ends in this fence line
        return state

    def _suffix(self, p: int) -> str:
        if self._local_open(p) is None:
            return ""
        return _FENCE if self.text[p - 1] == "\n" else "\n" + _FENCE

    def _fits(self, p: int) -> bool:
        return len(self.prefix) + (p - self.start) + len(self._suffix(p)) <= self.s.limit

    def _flaw(self, p: int) -> int:
        """How bad a cut at ``p`` is: clean; untidy (a blank chunk, an empty code block, an opening
        fence's language cut off, a cut inside a markdown link); or breaking a fence line (creating
        one the input does not have, or splitting one's backticks)."""
        j, at_line_start = self._line(p)
        if not at_line_start:
            flaw = self._fence_line_flaw(j, p)
            if flaw != _CLEAN:
                return flaw
        nonspace = self.s.nonspace
        local = self._local_open(p)
        untidy = (
            nonspace[self.start] >= p  # the chunk is whitespace only
            or (local is not None and nonspace[min(local, self.s.n)] >= p)  # it ends with an empty block
            or (self.s.open_at(p) is not None and nonspace[p] >= self.s.next_fence(p))  # the next starts so
            or self.s.inside_span(p)  # "[the" and "guide](url)" render as plain text, "`a" and "b`" too
        )
        return _UNTIDY if untidy else _CLEAN

    def _fence_line_flaw(self, j: int, p: int) -> int:
        """The flaw of a cut at ``p``, inside chunk line ``j``, as far as fence lines go."""
        mark, end = self.marks[j], self.ends[j]
        if 0 <= mark < p < mark + len(_FENCE):
            return _BREAKS_FENCE  # neither half of the fence line is one any more
        q = self.s.nonspace[p]
        if p <= mark and self.s.commonmark_fence(mark):
            return _CLEAN  # in its indent: the next chunk starts with the same fence, less indented
        if q < end and self.text.startswith(_FENCE, q):
            return _BREAKS_FENCE  # the next chunk would start with a fence line the input lacks
        if 0 <= mark < p and q < end and self.s.open_at(mark) is None:
            # The language of a fence opening a block in the input would be cut off (the next chunk
            # reopens the block, the rest of the language its first line); after a closing fence,
            # the rest of the line is prose and cut like prose.
            return _UNTIDY
        return _CLEAN


def _hangul_kind(character: str) -> str:
    """The Hangul syllable type of a character: L, V, T (jamo), LV, LVT (syllables), or ""."""
    code = ord(character)
    if 0x1100 <= code <= 0x115F or 0xA960 <= code <= 0xA97C:
        return "L"
    if 0x1160 <= code <= 0x11A7 or 0xD7B0 <= code <= 0xD7C6:
        return "V"
    if 0x11A8 <= code <= 0x11FF or 0xD7CB <= code <= 0xD7FB:
        return "T"
    if 0xAC00 <= code <= 0xD7A3:
        return "LV" if (code - 0xAC00) % 28 == 0 else "LVT"
    return ""


def _hangul_joins(before: str, after: str) -> bool:
    """Whether two characters belong to one Hangul syllable (Unicode's rules GB6 to GB8)."""
    first, second = _hangul_kind(before), _hangul_kind(after)
    if first == "L":
        return second in {"L", "V", "LV", "LVT"}
    if first in {"LV", "V"}:
        return second in {"V", "T"}
    return first in {"LVT", "T"} and second == "T"


def _is_regional_indicator(character: str) -> bool:
    return 0x1F1E6 <= ord(character) <= 0x1F1FF
