"""Splitting replies for chat platforms: limits, exact rejoining, balanced fences, cut preferences."""

from __future__ import annotations

import doctest
import itertools

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from dynamic_agents.client import splitting
from dynamic_agents.client.splitting import (
    DEFAULT_LIMIT,
    MIN_LIMIT,
    PLATFORM_LIMITS,
    MessageChunk,
    join_chunks,
    split_message,
    split_message_parts,
)
from dynamic_agents.exceptions import ConfigurationError

FENCE = "```"


def is_fence_line(line: str) -> bool:
    return line.strip().startswith(FENCE)


def fence_lines(text: str) -> int:
    return sum(is_fence_line(line) for line in text.split("\n"))


def input_open_at(text: str, p: int) -> bool:
    """Whether ``text[p]`` is inside a fenced block of the input (a fence line toggles after its ```)."""
    inside = False
    line_start = 0
    for line in text.split("\n"):
        if line_start > p:
            break
        if is_fence_line(line):
            mark = line_start + len(line) - len(line.lstrip())
            if p >= mark + len(FENCE):
                inside = not inside
        line_start += len(line) + 1
    return inside


def check_chunks(text: str, limit: int, chunks: list[MessageChunk]) -> None:
    """The properties every split has, whatever the input."""
    assert join_chunks(chunks) == text
    assert (chunks == []) == (text == "")
    position = 0
    for chunk in chunks:
        assert len(chunk.text) <= limit
        assert chunk.start == position < chunk.end
        assert chunk.original == text[chunk.start : chunk.end]
        assert chunk.text == chunk.added_prefix + chunk.original + chunk.added_suffix
        assert fence_lines(chunk.text) % 2 == 0, chunk.text
        assert chunk.added_prefix in {"", FENCE + "\n"} or (
            chunk.added_prefix.startswith(FENCE) and chunk.added_prefix.endswith("\n")
        )
        assert chunk.added_suffix in {"", FENCE, "\n" + FENCE}
        if chunk.added_suffix == FENCE:
            assert chunk.original.endswith("\n")
        # A chunk reopens a block exactly when the input is inside one where the chunk starts.
        assert bool(chunk.added_prefix) == input_open_at(text, chunk.start)
        position = chunk.end
    assert position == len(text)
    if FENCE not in text:
        assert all(not chunk.added_prefix and not chunk.added_suffix for chunk in chunks)


# Inputs: fence lines of every shape, backtick runs, long unbroken runs, blank-line runs, any unicode.
languages = st.sampled_from(["", "python", "js", "c++", " py", "python title=x.py", "a`b", "çà", "x" * 40])
fence = st.builds(
    lambda indent, ticks, language: indent + "`" * ticks + language,
    st.sampled_from(["", " ", "   ", "\t"]),
    st.integers(3, 6),
    languages,
)
pieces = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=" \n`ab\u00a0\u0301\u200d\U0001f1eb\U0001f1f7", max_size=30),
    fence.map(lambda line: f"\n{line}\n"),
    fence,
    st.sampled_from(["\n", "\n\n", "\n\n\n\n\n", " ", "   ", "\r\n", "\r\n\r\n", "\t"]),
    st.integers(1, 150).map(lambda k: "x" * k),
    st.integers(1, 150).map(lambda k: "`" * k),
    st.integers(1, 150).map(lambda k: " " * k),
    st.integers(1, 60).map(lambda k: "\n" * k),
    st.lists(st.sampled_from(["word", "a", "longerword", "é", "😀", "👍🏽"]), max_size=20).map(" ".join),
)
texts = st.lists(pieces, max_size=25).map("".join)
limits = st.integers(MIN_LIMIT, 120)


@given(text=texts, limit=limits)
def test_chunks_fit_rejoin_and_balance_fences(text: str, limit: int) -> None:
    chunks = split_message_parts(text, limit=limit)
    check_chunks(text, limit, chunks)
    assert split_message(text, limit=limit) == [chunk.text for chunk in chunks if chunk.text.strip()]


@given(text=st.text(), limit=limits)
def test_any_unicode_text(text: str, limit: int) -> None:
    check_chunks(text, limit, split_message_parts(text, limit=limit))


@given(text=st.lists(fence, max_size=30).map("\n".join), limit=limits)
def test_text_that_is_only_fences(text: str, limit: int) -> None:
    check_chunks(text, limit, split_message_parts(text, limit=limit))


@given(
    code=st.lists(
        st.sampled_from(["x = 1", "``", "`` `` ``", "s = '```'", "  ```inner", "````", "", "print(x)"]),
        max_size=40,
    ),
    language=languages,
    limit=limits,
)
def test_fenced_blocks_with_backtick_runs_inside(code: list[str], language: str, limit: int) -> None:
    text = "Intro.\n\n" + "\n".join([FENCE + language, *code, FENCE]) + "\nOutro."
    check_chunks(text, limit, split_message_parts(text, limit=limit))


spaced = " ".join

# Well-behaved replies: words, blank lines and fence lines at line starts, no stray backticks.
tame_lines = st.one_of(
    st.lists(st.sampled_from(["alpha", "beta", "γάμμα", "x", "0", "😀"]), min_size=1, max_size=12).map(
        spaced
    ),
    st.just(""),
    st.sampled_from(["```", "```python", "  ```js", "````"]),
)


@given(lines=st.lists(tame_lines, max_size=40), limit=st.integers(24, 200))
def test_code_stays_code_and_prose_stays_prose(lines: list[str], limit: int) -> None:
    """Every line renders in its chunk as it does in the input: inside a code block or outside one."""
    text = "\n".join(lines)
    chunks = split_message_parts(text, limit=limit)
    check_chunks(text, limit, chunks)
    for previous, chunk in itertools.pairwise(chunks):
        assert bool(previous.added_suffix) == bool(chunk.added_prefix)
    for chunk in chunks:
        local = bool(chunk.added_prefix)
        position = chunk.start
        for line in chunk.original.split("\n"):
            if line.strip():
                assert local == input_open_at(text, position), (chunk, line)
            if is_fence_line(line):
                local = not local
            position += len(line) + 1
        assert local == bool(chunk.added_suffix)


def test_the_preference_is_paragraph_then_line_then_space_then_hard_cut() -> None:
    paragraph = "One two.\n\nThree four\nfive six seven eight"
    assert split_message(paragraph, limit=32) == ["One two.\n\n", "Three four\nfive six seven eight"]
    line = "One two.\nThree four five six seven"
    assert split_message(line, limit=30) == ["One two.\n", "Three four five six seven"]
    space = "One two three four five six seven eight"
    assert split_message(space, limit=20) == ["One two three four ", "five six seven eight"]
    hard = "x" * 45
    assert split_message(hard, limit=20) == ["x" * 20, "x" * 20, "x" * 5]


def test_the_furthest_cut_of_the_best_kind_wins() -> None:
    text = "a b\n\nc d\n\ne f g h i j k l m n o p"
    assert split_message(text, limit=16) == ["a b\n\nc d\n\n", "e f g h i j k l ", "m n o p"]


def test_boundary_whitespace_stays_with_the_chunk_before_the_cut() -> None:
    text = "First.   \n\n\n\nSecond paragraph here."
    assert split_message(text, limit=20) == ["First.   \n\n\n\n", "Second paragraph ", "here."]


def test_platform_limits_and_the_discord_default() -> None:
    assert dict(PLATFORM_LIMITS) == {"discord": 2000, "telegram": 4096, "whatsapp": 4096, "slack": 4000}
    assert DEFAULT_LIMIT == 2000
    text = "x" * 4500
    assert [len(chunk) for chunk in split_message(text)] == [2000, 2000, 500]
    assert [len(chunk) for chunk in split_message(text, platform="discord")] == [2000, 2000, 500]
    assert [len(chunk) for chunk in split_message(text, platform="Discord")] == [2000, 2000, 500]
    assert [len(chunk) for chunk in split_message(text, platform="telegram")] == [4096, 404]
    assert [len(chunk) for chunk in split_message(text, platform="slack")] == [4000, 500]
    assert [len(chunk) for chunk in split_message(text, platform="slack", limit=5000)] == [4500]
    with pytest.raises(TypeError):
        PLATFORM_LIMITS["discord"] = 4000  # type: ignore[index]


def test_a_discord_reply_with_code_keeps_every_message_a_valid_block() -> None:
    body = "\n".join(f"line_{i} = {i}  # some code" for i in range(150))
    reply = f"Here you go:\n\n```python\n{body}\n```\n\nDone."
    chunks = split_message_parts(reply, platform="discord")
    check_chunks(reply, 2000, chunks)
    # The paragraph break is the preferred cut, even this early: the code starts a message.
    assert chunks[0].text == "Here you go:\n\n"
    assert chunks[1].text.startswith("```python\nline_0 = 0")
    assert len(chunks) > 3
    for chunk in chunks[2:]:
        assert chunk.text.startswith("```python\n")
    for chunk in chunks[1:-1]:
        assert chunk.text.endswith("\n```")
        assert chunk.original.endswith("some code\n")  # cut at line ends
    assert chunks[-1].text.endswith("```\n\nDone.")


@pytest.mark.parametrize(
    ("limit", "platform", "message"),
    [
        (None, "matrix", "platform 'matrix' has no known message limit"),
        (15, None, "limit 15 is too small: at least 16"),
        (0, None, "limit 0 is too small"),
        (True, None, "limit must be an int"),
        (20.0, None, "limit must be an int"),
    ],
)
def test_bad_settings_are_configuration_errors(limit: object, platform: str | None, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        split_message("text", limit=limit, platform=platform)  # type: ignore[arg-type]
    assert split_message("text", limit=MIN_LIMIT) == ["text"]


def test_an_explicit_limit_wins_over_the_platform() -> None:
    assert split_message("a b c d e f g h i j", limit=16, platform="telegram") == ["a b c d e f g h ", "i j"]
    # with a limit the platform is not looked up: one not listed may be given its own
    assert split_message("text", limit=16, platform="matrix") == ["text"]


def test_empty_and_blank_text() -> None:
    assert split_message("") == []
    assert split_message_parts("") == []
    assert join_chunks([]) == ""
    assert split_message(" \n\n \t") == []
    assert split_message_parts(" \n\n \t") == [MessageChunk(" \n\n \t", 0, 5)]
    with pytest.raises(TypeError):
        split_message(None)  # type: ignore[arg-type]


def test_join_chunks_refuses_the_texts_split_message_returns_with_a_type_error() -> None:
    # an AttributeError ('str' object has no attribute 'original'): the texts carry the added
    # fence markers and leave blank chunks out, so they cannot give the input back
    refused = r"^join_chunks takes the MessageChunk objects of split_message_parts, got a"
    for chunks in (split_message("word " * 20, limit=16), "text", [None]):
        with pytest.raises(TypeError, match=refused):
            join_chunks(chunks)  # type: ignore[arg-type]


def test_a_block_is_closed_and_reopened_with_its_language() -> None:
    text = "```python\nfirst = 1\nsecond = 2\nthird = 3\n```\nafter"
    assert split_message_parts(text, limit=30) == [
        MessageChunk("```python\nfirst = 1\n```", 0, 20, "", "```"),
        MessageChunk("```python\nsecond = 2\n```", 20, 31, "```python\n", "```"),
        MessageChunk("```python\nthird = 3\n```\nafter", 31, 50, "```python\n", ""),
    ]
    # Cut inside a line, the closing fence goes on a line of its own.
    assert split_message("```\nsome code that is long\n```\nafter", limit=24) == [
        "```\nsome code that \n```",
        "```\nis long\n```\nafter",
    ]


@pytest.mark.parametrize("platform", ["slack", "WhatsApp"])
def test_on_platforms_that_show_a_language_as_code_a_block_is_reopened_bare(platform: str) -> None:
    """Slack and WhatsApp render "```python" as a block whose first line of code is "python": each
    message after the first showed a line of "python" the reply never had there. Discord and
    Telegram read the language, so it is kept there."""
    text = "```python\n" + "print('hello world')\n" * 400 + "```\nafter"
    parts = split_message_parts(text, platform=platform)
    check_chunks(text, PLATFORM_LIMITS[platform.lower()], parts)
    assert len(parts) > 1
    assert parts[0].text.startswith("```python\n")  # the reply's own opening fence, as it was
    assert {chunk.added_prefix for chunk in parts[1:]} == {"```\n"}
    assert split_message(text, platform=platform, limit=100)[1].startswith("```\nprint")
    for reading in ("discord", "telegram"):
        assert split_message(text, platform=reading)[1].startswith("```python\nprint")


def test_an_unclosed_block_at_the_end_is_closed() -> None:
    assert split_message("```sh\nrm -rf build", limit=100) == ["```sh\nrm -rf build\n```"]
    assert split_message("text\n```", limit=100) == ["text\n```\n```"]


def test_a_long_language_tag_is_dropped_from_the_reopening_fence() -> None:
    text = "```" + "l" * 30 + "\n" + "code line\n" * 10 + "```"
    chunks = split_message_parts(text, limit=40)
    check_chunks(text, 40, chunks)
    assert {chunk.added_prefix for chunk in chunks[1:]} == {"```\n"}
    assert split_message_parts("```a`b\n" + "code\n" * 10, limit=16)[1].added_prefix == "```\n"


def test_no_cut_leaves_an_empty_code_block() -> None:
    # Not after the opening fence: "Some prose before.\n```python\n```" would fit.
    text = "Some prose before.\n```python\nprint('a long line of code')\n```"
    assert split_message(text, limit=48) == [
        "Some prose before.\n",
        "```python\nprint('a long line of code')\n```",
    ]
    # Not before the closing fence: "```\nsome code that is long\n```" fits, then "```\n   ```\nafter".
    text = "```\nsome code that is long\n   ```\nafter"
    assert split_message(text, limit=30) == ["```\nsome code that is \n```", "```\nlong\n   ```\nafter"]
    # The same with prose before the block: only fence lines count when looking for the next fence.
    assert split_message("Intro\n" + text, limit=30) == [
        "Intro\n",
        "```\nsome code that is \n```",
        "```\nlong\n   ```\nafter",
    ]
    # Where the closing fence fits without its newline, the cut goes just before the newline.
    text = "```\nsome code that is long\n```\nafter"
    assert split_message(text, limit=30) == ["```\nsome code that is long\n```", "\nafter"]


@pytest.mark.parametrize("mark", ["\u0301", "\u20dd", "\ufe0f"])  # acute, enclosing circle, VS16
def test_a_cut_at_a_space_keeps_a_combining_mark_on_it(mark: str) -> None:
    # The space is the mark's base: "dddd " then "\u0301eeee" started a chunk with a lone accent.
    text = f"aaaa bbbb cccc dddd {mark}eeee ffff gggg"
    for limit in range(MIN_LIMIT, len(text)):
        chunks = split_message(text, limit=limit)
        assert "".join(chunks) == text
        assert not any(chunk.startswith(mark) for chunk in chunks), (limit, chunks)


def test_hard_cuts_keep_combined_characters_together() -> None:
    accented = "e\u0301" * 20  # e + combining acute accent
    assert all(chunk[0] != "\u0301" for chunk in split_message(accented, limit=17))
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 6  # ZWJ sequences of 5 code points
    chunks = split_message(family, limit=16)
    assert all(len(chunk) % 5 == 0 for chunk in chunks)
    flags = "\U0001f1eb\U0001f1f7" * 10
    assert all(len(chunk) % 2 == 0 for chunk in split_message(flags, limit=17))
    assert split_message("a" * 15 + "\r\nb", limit=16) == ["a" * 15, "\r\nb"]
    # A lone CR is whitespace like any other: the furthest hard cut after it is taken.
    assert split_message("a" * 15 + "\r\r" + "b" * 10, limit=16) == ["a" * 15 + "\r", "\r" + "b" * 10]


def test_a_long_run_of_flags_is_split_in_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a cut splits a flag depends on how many regional indicators come before it in the
    run; counting them back from each cut made a reply of flags quadratic (14 s for 400,000)."""
    looked_at = 0
    is_indicator = splitting._is_regional_indicator

    def counting(character: str) -> bool:
        nonlocal looked_at
        looked_at += 1
        return is_indicator(character)

    monkeypatch.setattr(splitting, "_is_regional_indicator", counting)
    flags = "\U0001f1eb\U0001f1f7" * 20_000
    chunks = split_message(flags, limit=1999)  # odd: every window ends inside a flag
    assert all(len(chunk) % 2 == 0 for chunk in chunks)
    assert sum(map(len, chunks)) == len(flags)
    assert looked_at <= 3 * 40_000  # characters in the text


def test_hard_cuts_keep_hangul_jamo_and_indic_conjuncts_together() -> None:
    """Decomposed Hangul (NFD text: a syllable as 2-3 jamo) and Indic conjuncts (consonant, virama,
    consonant: "क्ष") are one grapheme cluster each; a hard cut between their parts garbles them."""
    syllable = "\u1100\u1161\u11a8"  # 각 as leading, vowel and trailing jamo
    assert all(len(chunk) % 3 == 0 for chunk in split_message(syllable * 12, limit=17))
    assert all(len(chunk) % 2 == 0 for chunk in split_message("\u1100\u1161" * 12, limit=17))
    conjunct = "\u0915\u094d\u0937\u093f"  # क्षि: ka, virama, ssa, vowel sign i
    assert all(len(chunk) % 4 == 0 for chunk in split_message(conjunct * 10, limit=18))
    assert all(len(chunk) % 4 == 0 for chunk in split_message("\u0915\u094d\u200d\u0937" * 10, limit=18))


def test_a_markdown_link_that_fits_in_a_chunk_is_not_cut() -> None:
    """A cut at a space inside a link's text leaves "[the" and "guide](url)" as plain text."""
    text = "Read the docs at [the guide](https://d.io/g) ok"
    assert split_message(text, limit=30) == ["Read the docs at ", "[the guide](https://d.io/g) ok"]
    # One longer than a chunk is still cut at its spaces.
    long_link = "[a b c d e f g h i j k l m n o p](https://x.io)"
    assert split_message(long_link, limit=20) == ["[a b c d e f g h i ", "j k l m n o ", "p](https://x.io)"]


def test_an_inline_code_span_that_fits_in_a_chunk_is_not_cut() -> None:
    """A cut at a space inside `` `pip install x` `` leaves a lone backtick in each chunk: both
    render wrong (the second chunk's backtick opens a span that runs on)."""
    text = "Then run `pip install dynamic-agents` now"
    assert split_message(text, limit=30) == ["Then run ", "`pip install dynamic-agents` ", "now"]
    double = "Type ``a `tick` inside`` here"
    assert split_message(double, limit=20) == ["Type ", "``a `tick` inside`` ", "here"]
    # A span longer than a chunk is still cut at its spaces.
    long_span = "`a b c d e f g h i j k l m n o p`"
    assert split_message(long_span, limit=16) == ["`a b c d e f g ", "h i j k l m n o ", "p`"]


def test_no_break_spaces_are_not_cut_at() -> None:
    text = "aaaa bbbb\u00a0cccc\u00a0dddd"
    assert split_message(text, limit=16) == ["aaaa ", "bbbb\u00a0cccc\u00a0dddd"]


def test_the_module_examples_run() -> None:
    assert doctest.testmod(splitting, raise_on_error=True).attempted > 0


@pytest.mark.parametrize(
    "modifier",
    [
        "\U0001f3fb",  # skin tone modifiers, the lightest ...
        "\U0001f3ff",  # ... and the darkest (category Sk, not a combining mark)
        "\U000e0020",  # tag characters (subdivision flags), the first ...
        "\U000e007f",  # ... and the cancel tag (category Cf)
    ],
)
def test_hard_cuts_keep_skin_tones_and_tags_with_their_character(modifier: str) -> None:
    text = ("\U0001f44d" + modifier) * 20
    chunks = split_message(text, limit=17)
    assert "".join(chunks) == text
    assert all(len(chunk) % 2 == 0 and chunk[0] != modifier for chunk in chunks)


@pytest.mark.parametrize(
    "cluster",
    [
        "\u115f\u11a7",  # the last leading jamo, the last vowel jamo
        "\ua97c\ud7c6",  # the same in the extended blocks
        "\u1100\ud7b0",  # leading, the first extended vowel
        "\uac00\u11ff",  # the first LV syllable, the last trailing jamo
        "\uac00\ud7fb",  # ... the last extended trailing jamo
        "\uac00\u1161",  # an LV syllable takes a vowel jamo
        "\uac01\u11a8",  # an LVT syllable takes a trailing jamo
        "\ud7a3\u11a8",  # the last syllable (LVT) too
        "\U0001f1e6\U0001f1ff",  # a flag of the first and last regional indicators (AZ)
    ],
)
def test_hard_cuts_keep_hangul_syllables_and_flags_together_at_their_ranges_ends(cluster: str) -> None:
    text = cluster * 12
    chunks = split_message(text, limit=17)
    assert "".join(chunks) == text
    assert all(len(chunk) % 2 == 0 for chunk in chunks)


def test_flags_pair_up_from_the_start_of_their_run_not_of_the_text() -> None:
    flags = "\U0001f1eb\U0001f1f7" * 10
    chunks = split_message("x" + flags, limit=17)
    assert chunks == ["x" + flags[:16], flags[16:]]


def test_a_link_whose_text_is_code_is_kept_whole_like_any_link() -> None:
    """The link and the code span in its text overlap; merged, a cut anywhere inside the link
    (after the code span too) is avoided, with or without other spans before it."""
    assert split_message("See [`pip` docs](d.io) now", limit=20) == ["See ", "[`pip` docs](d.io) ", "now"]
    text = "Use `x` or [`pip` docs](d.io) now"
    assert split_message(text, limit=20) == ["Use `x` or ", "[`pip` docs](d.io) ", "now"]
    text = "Use `x` or `y` or [`pip` docs](d.io) now"
    assert split_message(text, limit=20) == ["Use `x` or `y` or ", "[`pip` docs](d.io) ", "now"]
    # Merging them leaves the spans before them alone.
    text = "Then run `pip install dynamic-agents` now, see [`pip` docs](d.io)"
    assert split_message(text, limit=30) == [
        "Then run ",
        "`pip install dynamic-agents` ",
        "now, see [`pip` docs](d.io)",
    ]


def test_a_link_inside_a_code_block_is_code_and_cut_like_code() -> None:
    """Brackets and parentheses in a code block render as code, not as a link: a cut at the space
    in "[the guide]" is as good as any other there. Taken for a link, every cut in the line was
    avoided and the first chunk was an empty block."""
    text = "```md\n[the guide](https://d.io/g)\n```"
    assert split_message(text, limit=32) == ["```md\n[the \n```", "```md\nguide](https://d.io/g)\n```"]


def test_a_cut_between_or_just_after_adjacent_links_is_clean() -> None:
    assert split_message("[one](u)[twotwo](v)", limit=16) == ["[one](u)", "[twotwo](v)"]
    assert split_message("[one](u)[two](v)x", limit=16) == ["[one](u)[two](v)", "x"]


def test_a_cut_that_breaks_a_fence_line_is_the_last_resort() -> None:
    """Cutting before the mid-line "```" would make the next chunk start with a fence line the
    input does not have (a code block out of nothing): a cut inside the link is the lesser evil."""
    assert split_message("[see docs](url) ```x", limit=16) == ["[see ", "docs](url) ```x"]


def test_an_unclosed_block_is_cut_at_its_last_space() -> None:
    assert split_message("```\nreturn a + b", limit=19) == ["```\nreturn a + \n```", "```\nb\n```"]


def test_the_reopening_fence_takes_the_first_word_of_the_info_string() -> None:
    text = "```python title=x.py\n" + "code line\n" * 4 + "```"
    chunks = split_message_parts(text, limit=30)
    check_chunks(text, 30, chunks)
    assert {chunk.added_prefix for chunk in chunks[1:]} == {"```python\n"}


def test_the_language_is_kept_while_the_two_markers_take_at_most_half_the_limit() -> None:
    # "```py\n" and "\n```" take 10 characters: half of 20, more than half of 19.
    text = "```py\n" + "code line\n" * 4 + "```"
    assert {chunk.added_prefix for chunk in split_message_parts(text, limit=20)[1:]} == {"```py\n"}
    assert {chunk.added_prefix for chunk in split_message_parts(text, limit=19)[1:]} == {"```\n"}


def test_leading_blank_lines_do_not_make_a_chunk_of_their_own() -> None:
    assert split_message_parts("\n\nHello world, this is long", limit=16)[0].original == "\n\nHello world, "


def test_a_fence_line_after_a_long_indent_keeps_its_backticks_together() -> None:
    """Only a whitespace-only chunk or a cut inside the backticks fits before the fence: the
    whitespace-only chunk is the lesser evil."""
    text = " " * 14 + "```python\nprint(1)\n```"
    chunks = split_message_parts(text, limit=16)
    check_chunks(text, 16, chunks)
    assert chunks[0].original == " " * 14
    assert chunks[1].text.startswith("```python\n")


def test_trailing_spaces_after_a_closing_fence_do_not_move_the_cut() -> None:
    """A cut between the closing fence and the spaces after it cuts nothing off the fence line."""
    assert split_message_parts("```\nprint(1)\n```   ", limit=16)[0].text == "```\nprint(1)\n```"


def test_text_after_a_closing_fence_is_cut_like_prose() -> None:
    """The closing fence stays whole in the first chunk and the block is not split: the text
    after it on its line is outside the block. Rated like an opening fence's language (cut off,
    it became a code line), every cut there was avoided: the only tidy one left was inside the
    code line, and "print(1" and ")" were sent as two blocks."""
    text = "```\nprint(1)\n``` prints one"
    assert split_message(text, limit=24) == ["```\nprint(1)\n``` prints ", "one"]
    assert split_message(text, limit=17) == ["```\nprint(1)\n``` ", "prints one"]
    assert split_message(text, limit=16) == ["```\nprint(1)\n```", " prints one"]


def test_the_end_of_a_closing_fences_backticks_is_a_boundary_between_words() -> None:
    """The text after a closing fence is prose: where a word follows the backticks, or spaces
    longer than the window, a cut right after them keeps the block whole, rather than one inside
    the code line before it."""
    assert split_message("```\nfoo bar\n```js", limit=16) == ["```\nfoo bar\n```", "js"]
    assert split_message("```\nfoo bar\n````js", limit=17) == ["```\nfoo bar\n````", "js"]
    text = "```\nfoo bar\n```" + " " * 10 + "x"
    assert split_message(text, limit=20) == ["```\nfoo bar\n```", " " * 10 + "x"]
    # Not between a backtick and the accent on it.
    text = "```\nfoo bar\n```\u0301js"
    assert split_message(text, limit=16) == ["```\nfoo \n```", "```\nbar\n```\u0301js"]


def test_where_a_chunk_reads_the_inputs_opening_fence_as_a_closing_one_its_language_is_kept() -> None:
    """A run of backticks longer than a chunk is cut into chunks that start with a fence line the
    input lacks; in the fourth, "```python" closes such a block, though in the input it opens one.
    Cut after "```pytho" (as text after a closing fence may be), the next chunk would reopen the
    input's block with "n" as a line of code."""
    text = "See " + "`" * 19 + "\n```python\ncode\n```"
    chunks = split_message_parts(text, limit=16)
    check_chunks(text, 16, chunks)
    assert [chunk.text for chunk in chunks[3:]] == ["```````\n```", "```python\nco\n```", "```\nde\n```"]


@pytest.mark.parametrize(
    "neighbour", ["\ufdff", "\ufe10", "\U0001f3fa", "\U0001f400", "\U000e001f", "\U000e0080"]
)
def test_hard_cuts_are_taken_before_the_characters_just_outside_the_combining_ranges(neighbour: str) -> None:
    """The neighbours of the variation selectors, skin tones and tag characters stand alone."""
    assert split_message("x" * 16 + neighbour + "x", limit=16) == ["x" * 16, neighbour + "x"]


def test_a_lone_regional_indicator_is_a_character_of_its_own() -> None:
    indicator = "\U0001f1eb"
    assert split_message("x" * 15 + indicator + "x" * 5, limit=16) == ["x" * 15 + indicator, "x" * 5]


def test_a_window_ending_just_after_a_newline_cuts_after_it() -> None:
    assert split_message("a" * 15 + "\nb", limit=16) == ["a" * 15 + "\n", "b"]


def test_a_block_with_a_one_character_line_is_not_empty() -> None:
    chunks = split_message("```\nx\n" + "y" * 20 + "\n```", limit=16)
    assert chunks[0] == "```\nx\n```"


def test_an_unclosed_block_ending_in_spaces_that_fits_only_without_its_closing_fence() -> None:
    assert split_message("```\nsome code  ", limit=16) == ["```\nsome \n```", "```\ncode  \n```"]


# Each end of the Hangul jamo and syllable ranges and of the regional indicators, with the code
# point just outside it (a letter of another script, a punctuation mark, or an unassigned one).
RANGE_ENDS = (
    "\u10ff\u1100\u115f\u1160\u11a7\u11a8\u11ff\u1200"  # leading, vowel, trailing jamo
    "\ua95f\ua960\ua97c\ua97d"  # extended leading jamo
    "\uabff\uac00\uac01\ud7a3\ud7a4"  # syllables: the first LV and LVT, the last
    "\ud7af\ud7b0\ud7c6\ud7c7\ud7ca\ud7cb\ud7fb\ud7fc"  # extended vowel and trailing jamo
    "\U0001f1e5\U0001f1e6\U0001f1ff\U0001f200"  # regional indicators A and Z
)


def one_cluster(characters: str) -> bool:
    return len(regex.findall(r"\X", characters)) == 1


def test_hard_cuts_keep_together_exactly_what_unicode_segments_as_one_character() -> None:
    """For every pair of characters at the ends of the Hangul and regional-indicator ranges, the
    window's last cut falls between them exactly when Unicode's grapheme rules (``regex``'s ``\\X``)
    put a boundary there; otherwise the chunk ends before the pair."""
    wrong = []
    for first, second in itertools.product(RANGE_ENDS, repeat=2):
        text = "x" * 15 + first + second + "x"
        if one_cluster(first + second):
            expected = ["x" * 15, first + second + "x"]
        else:
            expected = ["x" * 15 + first, second + "x"]
        if split_message(text, limit=16) != expected:
            wrong.append(f"U+{ord(first):04X} U+{ord(second):04X}")
    assert wrong == []


@given(text=st.text(alphabet=RANGE_ENDS + "x", max_size=80), limit=limits)
def test_hard_cuts_fall_at_the_last_grapheme_boundary_that_fits(text: str, limit: int) -> None:
    """Text without spaces, lines or markup is cut only by hard cuts: each at the furthest
    boundary between grapheme clusters within the limit, or at the limit when a cluster is longer."""
    chunks = split_message_parts(text, limit=limit)
    check_chunks(text, limit, chunks)
    assert "".join(split_message(text, limit=limit)) == text
    boundaries = set(itertools.accumulate(len(cluster) for cluster in regex.findall(r"\X", text)))
    for chunk in chunks[:-1]:
        fitting = [b for b in boundaries if chunk.start < b <= chunk.start + limit]
        assert chunk.end == max(fitting, default=chunk.start + limit)


def test_a_reply_that_starts_with_a_fence_and_an_info_string_keeps_it_in_its_first_chunk() -> None:
    text = '```python title="main.py"\n' + "".join(f"line_{i} = {i}\n" for i in range(6)) + "```"
    chunks = split_message_parts(text, limit=40)
    check_chunks(text, 40, chunks)
    assert [chunk.text for chunk in chunks] == [
        '```python title="main.py"\nline_0 = 0\n```',
        "```python\nline_1 = 1\nline_2 = 2\n```",
        "```python\nline_3 = 3\nline_4 = 4\n```",
        "```python\nline_5 = 5\n```",
    ]
    assert chunks[0].added_prefix == ""


def test_a_fence_at_the_start_can_be_the_whole_first_chunk() -> None:
    """The block does not fit after its fence line, and no cut inside its one code line fits
    with the closing marker: the empty block is the least bad chunk (the line stays whole)."""
    assert split_message("```language\ncode\n```", limit=16) == ["```language\n```", "```\ncode\n```"]
    # A reply that is only an opening fence is closed like any unclosed block.
    assert split_message("```python", limit=16) == ["```python\n```"]
    assert split_message("```python\n", limit=16) == ["```python\n```"]


def test_a_fence_line_at_the_start_longer_than_the_limit_is_cut_after_its_backticks() -> None:
    """Only a cut in its info string fits: the rest of the info string becomes a code line."""
    text = "```" + "x" * 30 + "\ncode\n```"
    chunks = split_message_parts(text, limit=16)
    check_chunks(text, 16, chunks)
    assert [chunk.text for chunk in chunks] == [
        "```xxxxxxxxx\n```",
        "```\nxxxxxxxx\n```",
        "```\nxxxxxxxx\n```",
        "```\nxxxxx\n```",
        "```\ncode\n```",
    ]
    # Followed by a run of backticks (every later cut would start a chunk with a fence line),
    # the cut still keeps the opening fence's backticks together.
    text = "``` " + "`" * 30
    chunks = split_message_parts(text, limit=16)
    check_chunks(text, 16, chunks)
    assert chunks[0].text == "``` \n```"


def test_tilde_fences_are_not_code_blocks_here() -> None:
    """``~~~`` fences are CommonMark's, not the chat platforms': a reply in one is split as text."""
    assert split_message("~~~python\nprint(1)\nprint(2)\n~~~", limit=16) == [
        "~~~python\n",
        "print(1)\n",
        "print(2)\n~~~",
    ]


def test_with_no_clean_cut_a_leading_blank_line_is_cut_off_before_anything_else() -> None:
    """The window has only untidy cuts (code indented past the limit); the first in order of
    preference wins: the paragraph end after the blank first line, a blank chunk that
    ``split_message`` leaves out, before the line end that would send it with an empty block."""
    text = "\n```\n" + " " * 12 + "return x\n```"
    chunks = split_message_parts(text, limit=16)
    check_chunks(text, 16, chunks)
    assert chunks[0].original == "\n"
    assert split_message(text, limit=16)[0] == "```\n```"


@pytest.mark.parametrize("indent", [" ", "  ", "   "])
def test_a_cut_in_the_indent_of_a_fence_line_of_up_to_three_spaces_leaves_it_a_fence(indent: str) -> None:
    """CommonMark reads a line indented by 1 to 3 spaces as a fence line, and the rest after a
    cut in that indent (with fewer) still is one: a blank chunk before the fence line is better
    than one that cuts its language off (its end then became a code line of the next chunk)."""
    text = indent + "```languages\ncode\n```"
    chunks = split_message_parts(text, limit=16)
    check_chunks(text, 16, chunks)
    assert chunks[0].original == indent
    assert split_message(text, limit=16) == ["```languages\n```", "```\ncode\n```"]


@pytest.mark.parametrize(
    ("indent", "texts"),
    [
        ("    ", ["    ```langu\n```", "```\nages\n```", "```\ncode\n```"]),
        ("\t", ["\t```language\n```", "```\ns\ncode\n```"]),
        ("\u3000", ["\u3000```language\n```", "```\ns\ncode\n```"]),
    ],
)
def test_a_cut_in_an_indent_that_commonmark_does_not_read_as_a_fence_is_a_last_resort(
    indent: str, texts: list[str]
) -> None:
    """Four spaces (or a tab) make the line indented code for CommonMark, another space makes it
    text: a cut leaving at most 3 spaces would turn it into a fence line the input lacks."""
    text = indent + "```languages\ncode\n```"
    check_chunks(text, 16, split_message_parts(text, limit=16))
    assert split_message(text, limit=16) == texts


def test_a_cut_after_a_fence_lines_backticks_is_not_taken_for_one_in_its_indent() -> None:
    """Cut before the second "```", the next chunk would start with a fence line the input lacks
    (and "y" would render as code): a cut inside the code line is taken instead."""
    assert split_message("```\nx = 1\n``` ``` y", limit=16) == ["```\nx = \n```", "```\n1\n``` ``` y"]
