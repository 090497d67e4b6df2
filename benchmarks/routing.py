"""Latency of ``EventRouter.route`` with 10,000 rules, at 10 / 1,000 / 10,000, its worst case, and isolation.

Run from the repository root::

    python benchmarks/routing.py                     # 10,000 rules, 20,000 decisions, 3 repetitions
    python benchmarks/routing.py --decisions 50000 --repetitions 5 --json out.json
    python benchmarks/routing.py --scaling-sizes 10,100,1000,10000   # '' skips the scaling part

Everything runs in this one process; the rule set and the events are generated from ``--seed``.

1. **Realistic rule set.** ``--rules`` rules (10,000) over four sources (discord 30 %, slack 30 %,
   whatsapp 20 %, telegram 20 %), of which ``--content-rules`` (1,000) have a ``content_pattern``:

   * exact rules: channel rules (``channel_ids``, 1-3 ids), user rules (``user_ids``, 1-2 ids) and,
     on discord and slack, group rules (``guild_ids`` / ``metadata_match: {workspace_id: ...}``);
   * content rules: 64 % scoped to a channel (``channel_ids``), 21 % to a guild / workspace
     (metadata), 15 % to the source only (the ``scan`` list every event of that source meets);
     patterns are commands (``^/word\\b``, ``^!word\\b`` on discord), case-insensitive keyword
     lists and ticket-like ids;
   * priorities: user rules 10, scoped content rules 5 (a command in a channel beats the channel's
     rule), channel and group rules 0, source-only content rules 0 declared last (as in the
     design's ``discord.yaml``).

   Events (``--decisions``, each built once, in random order): 35 % on a channel with a rule, 10 %
   from a user with a rule, 15 % in a guild / workspace with a rule (channel kind on whatsapp and
   telegram), 15 % whose content triggers one content rule, 25 % matching nothing (they fall to the
   source default after trying every content pattern in reach). Each event is built to hit one rule
   (or none); every decision is checked against it, and a sample against ``router.explain`` (which
   tries every rule without the index); a wrong decision exits with status 1. Each decision is timed
   alone with ``time.perf_counter_ns``; the table gives the median of the repetitions of p50 / p90
   / p99, overall and per kind, and how many content patterns ``route`` tried (from ``explain``).

2. **Scaling.** The same generator (``build_world``) at each of ``--scaling-sizes`` rule counts
   (10, 1,000, 10,000), with ``--content-rules`` / ``--rules`` of them content rules (10 %: 1, 100,
   1,000; at least 1). Rules are split between sources, then kinds, then content scopes, by the
   shares above (``split``: rounded, the last part takes the rest; when a part would get 0 and the
   total has one for each, each gets 1 and the rest is split by the shares). So 10 rules are 4
   channel, 3 user, 2 group (discord, slack) and 1 content rule (telegram, channel-scoped): no
   source-only content rule, hence no ``scan`` list; 1,000 rules are 486 / 306 / 108 and 100 content
   (64 / 20 / 16 source-only); 10,000 are the set above (reused, not rebuilt). Each size routes
   ``--scaling-decisions`` (10,000) events from ``make_cases`` with the same seed, so the same kind
   mix (a kind a source has no rule for, in a small set, is drawn from a source that has one).
   ``--scaling-repetitions`` (5) rounds, each routing every size in turn (smallest first), so noise
   hits them alike; every decision is checked (and 2 per kind against ``explain``), timed alone. The
   table gives the median over rounds of p50 / p90 / p99, the content patterns ``route`` searched
   (counted on every event in an untimed pass, ``SafePattern.search`` wrapped in a counter) and
   the p50 over the smallest size's p50.

3. **Worst case.** A discord event matching nothing, in the channel and guild with the most content
   rules: it tries every content pattern in reach. Then the extreme the acceptance allows: the same
   exact rules (9,000) plus all 1,000 content rules unscoped on one source, and a message matching
   none of them (~200 characters, then 4,096: ``max_content_chars``).

4. **Isolation.** A source ``teams`` with 10 rules, routed by a router holding only those 10 rules
   and by one holding them plus the 10,000 others; batches of ``--isolation-decisions`` decisions
   alternate between the two (A B, B A, ...) for ``--isolation-repetitions`` rounds. The check: the
   medians of the per-decision time differ by less than 10 % (otherwise exit status 1). The two
   routers must also return the same decisions.

The overall median must be under 50 µs (the issue's target); otherwise the script exits with status
1 after printing every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import _common
import pydantic
import regex

from dynamic_agents import __version__ as library_version
from dynamic_agents.events import AgentRequestEvent, Target, TargetType
from dynamic_agents.routing import EventRouter, RouteDecision, RoutingRule, SafePattern

SOURCES: Final = ("discord", "slack", "whatsapp", "telegram")
SOURCE_SHARE: Final = {"discord": 0.3, "slack": 0.3, "whatsapp": 0.2, "telegram": 0.2}
GROUP_KEY: Final = {"discord": "guild_id", "slack": "workspace_id"}  # sources with a group metadata
EVENT_SOURCE_SHARE: Final = {"discord": 0.35, "slack": 0.35, "whatsapp": 0.15, "telegram": 0.15}
KINDS: Final = ("channel", "user", "group", "content", "no match")
KIND_SHARE: Final = {"channel": 0.35, "user": 0.10, "group": 0.15, "content": 0.15, "no match": 0.25}
USER_PRIORITY: Final = 10
SCOPED_CONTENT_PRIORITY: Final = 5
TARGET_MEDIAN_US: Final = 50.0
ISOLATION_LIMIT: Final = 0.10
ISOLATION_SOURCE: Final = "teams"
EXPLAIN_PER_KIND: Final = 40
SCALING_EXPLAIN_PER_KIND: Final = 2  # explain tries every rule: ~70 ms a call at 10,000 rules
LONG_CONTENT_CHARS: Final = 4096
_TEXT: Final = (
    "the could you please have look at this build when minute thanks team again today tomorrow "
    "deploy release staging config error log question help about meeting notes agent summary "
    "thread update status check issue with my account order payment photo link what why how "
    "where is are we they it not yet done here there some more than one two new old page"
)
WORDS: Final = tuple(_TEXT.split())  # message text: never a word a pattern looks for
_SYLLABLES: Final = "ka ze vo ri lu qa xe mo ti pu zo ne fa gi yu wa ko be"
SYLLABLES: Final = tuple(_SYLLABLES.split())  # made-up words (4 syllables) for the patterns


class BenchmarkError(Exception):
    """A check failed: the figures would not mean what they claim."""


# -- the rule set ---------------------------------------------------------------------------------


@dataclass
class ContentRule:
    name: str
    source: str
    scope: str  # "channel", "group" or "source"
    scope_ids: list[str]
    trigger: str  # text that makes the pattern match (and no other)
    command: bool  # the trigger must open the message


@dataclass
class SourceWorld:
    """One source's rules and the ids events can use, by what rules they meet."""

    source: str
    group_key: str | None
    channel_rule: dict[str, str] = field(default_factory=dict)  # channel id → rule name
    user_rule: dict[str, str] = field(default_factory=dict)
    group_rule: dict[str, str] = field(default_factory=dict)
    channel_content: dict[str, list[str]] = field(default_factory=dict)  # → content rule names
    group_content: dict[str, list[str]] = field(default_factory=dict)
    content: list[ContentRule] = field(default_factory=list)
    free_channels: list[str] = field(default_factory=list)  # no exact rule (content rules maybe)
    free_users: list[str] = field(default_factory=list)
    free_groups: list[str] = field(default_factory=list)  # no group rule (content rules maybe)
    all_groups: list[str] = field(default_factory=list)
    default: Target = field(default_factory=lambda: Target(type=TargetType.AGENT, id="default"))


@dataclass
class World:
    rules: list[RoutingRule]
    exact: list[RoutingRule]
    content_rules: list[RoutingRule]
    sources: dict[str, SourceWorld]
    patterns: dict[str, int]  # pattern kind → count

    def defaults(self) -> dict[str, Target]:
        return {name: world.default for name, world in self.sources.items()}


class Ids:
    """Unique, platform-looking identifiers."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: set[str] = set()

    def _unique(self, make: Callable[[], str]) -> str:
        while True:
            value = make()
            if value not in self.seen:
                self.seen.add(value)
                return value

    def channel(self, source: str) -> str:
        rng = self.rng
        makers: dict[str, Callable[[], str]] = {
            "discord": lambda: str(rng.randrange(10**17, 10**18)),
            "slack": lambda: "C" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=10)),
            "whatsapp": lambda: f"{rng.randrange(10**10, 10**12)}-{rng.randrange(10**9, 10**10)}@g.us",
            "telegram": lambda: str(-rng.randrange(10**12, 10**13)),
            "teams": lambda: f"19:{rng.getrandbits(64):016x}@thread.tacv2",
        }
        return self._unique(makers[source])

    def user(self, source: str) -> str:
        rng = self.rng
        makers: dict[str, Callable[[], str]] = {
            "discord": lambda: str(rng.randrange(10**17, 10**18)),
            "slack": lambda: "U" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=10)),
            "whatsapp": lambda: str(rng.randrange(10**10, 10**12)),
            "telegram": lambda: str(rng.randrange(10**8, 10**10)),
            "teams": lambda: f"29:{rng.getrandbits(64):016x}",
        }
        return self._unique(makers[source])

    def group(self, source: str) -> str:
        rng = self.rng
        if source == "slack":
            return self._unique(lambda: "T" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=9)))
        return self._unique(lambda: str(rng.randrange(10**17, 10**18)))

    def word(self) -> str:
        """A made-up word (never one of WORDS) for a pattern to look for."""
        return self._unique(lambda: "".join(self.rng.choices(SYLLABLES, k=4)))


def split(total: int, shares: Sequence[float]) -> list[int]:
    """``total`` split by ``shares``; the last part takes the rounding. When that leaves a part at 0
    but ``total`` has one for each (a small rule set), each part gets 1 and the rest is split by
    ``shares`` (``split(3, [0.5, 0.3, 0.2])`` is ``[1, 1, 1]``, not ``[2, 1, 0]``)."""
    parts = [round(total * share) for share in shares[:-1]]
    parts.append(total - sum(parts))
    if min(parts) < 1 <= total // len(shares):
        return [1 + part for part in split(total - len(shares), shares)]
    return parts


def content_pattern(ids: Ids, source: str, kind: str) -> tuple[str, str, bool]:
    """A pattern of ``kind``, a text that matches it (and no other pattern), and whether that text
    must open the message."""
    if kind == "command":
        word = ids.word()
        prefix = "!" if source == "discord" else "/"
        return rf"^{prefix}{word}\b", f"{prefix}{word}", True
    if kind == "keywords":
        words = [ids.word() for _ in range(3)]
        return rf"(?i)\b(?:{'|'.join(words)})\b", ids.rng.choice(words).upper(), False
    word = ids.word()
    return rf"(?i)\b{word}[-#]?\d{{3,6}}\b", f"{word}-{ids.rng.randrange(1000, 99999)}", False


def build_world(total: int, content_total: int, seed: int) -> World:
    rng = random.Random(seed)
    ids = Ids(rng)
    exact: list[RoutingRule] = []
    scoped: list[RoutingRule] = []
    unscoped: list[RoutingRule] = []
    pattern_kinds = {"command": 0, "keywords": 0, "ticket id": 0}
    sources: dict[str, SourceWorld] = {}
    rule_totals = split(total, [SOURCE_SHARE[s] for s in SOURCES])
    content_totals = split(content_total, [SOURCE_SHARE[s] for s in SOURCES])
    for source, rules_here, content_here in zip(SOURCES, rule_totals, content_totals, strict=True):
        world = SourceWorld(source, GROUP_KEY.get(source))
        world.default = Target(type=TargetType.AGENT, id=f"{source}-assistant")
        sources[source] = world
        exact_here = rules_here - content_here
        if world.group_key:
            channels, users, groups = split(exact_here, [0.5, 0.3, 0.2])
            by_channel, by_group, by_source = split(content_here, [0.5, 0.35, 0.15])
        else:
            (channels, users), groups = split(exact_here, [0.6, 0.4]), 0
            (by_channel, by_source), by_group = split(content_here, [0.85, 0.15]), 0

        def target(kind: str, n: int, source: str = source) -> dict[str, str]:
            key = "team_id" if kind == "team" else "agent_id"
            return {key: f"{source}-{kind}-{n % 97}"}

        for n in range(channels):
            channel_ids = [ids.channel(source) for _ in range(rng.choice((1, 1, 2, 3)))]
            name = f"{source}-channel-{n}"
            exact.append(
                RoutingRule.model_validate(
                    {"name": name, "source": source, "channel_ids": channel_ids, **target("agent", n)}
                )
            )
            world.channel_rule.update(dict.fromkeys(channel_ids, name))
        for n in range(users):
            user_ids = [ids.user(source) for _ in range(rng.choice((1, 1, 2)))]
            name = f"{source}-user-{n}"
            exact.append(
                RoutingRule.model_validate(
                    {
                        "name": name,
                        "source": source,
                        "user_ids": user_ids,
                        "priority": USER_PRIORITY,
                        **target("team", n),
                    }
                )
            )
            world.user_rule.update(dict.fromkeys(user_ids, name))
        for n in range(groups):
            group = ids.group(source)
            name = f"{source}-group-{n}"
            conditions: dict[str, Any] = (
                {"guild_ids": [group]} if source == "discord" else {"metadata_match": {"workspace_id": group}}
            )
            exact.append(
                RoutingRule.model_validate(
                    {"name": name, "source": source, **conditions, **target("team", n)}
                )
            )
            world.group_rule[group] = name
        # Ids without an exact rule: events that meet only content rules, or nothing.
        world.free_channels = [ids.channel(source) for _ in range(max(200, channels // 2))]
        world.free_users = [ids.user(source) for _ in range(max(500, users))]
        if world.group_key:
            world.free_groups = [ids.group(source) for _ in range(max(100, groups // 2))]
        world.all_groups = [*world.group_rule, *world.free_groups]
        ruled_channels = list(world.channel_rule)
        for n in range(by_channel + by_group + by_source):
            kind = rng.choices(("command", "keywords", "ticket id"), weights=(0.4, 0.4, 0.2))[0]
            pattern_kinds[kind] += 1
            pattern, trigger, command = content_pattern(ids, source, kind)
            name = f"{source}-content-{n}"
            rule: dict[str, Any] = {"name": name, "source": source, "content_pattern": pattern}
            if n < by_channel:  # a channel with an exact rule (70 %) or one without
                pool = (
                    ruled_channels
                    if ruled_channels and (rng.random() < 0.7 or not world.free_channels)
                    else world.free_channels
                )
                scope, scope_ids = "channel", [rng.choice(pool)]
                rule |= {"channel_ids": scope_ids, "priority": SCOPED_CONTENT_PRIORITY}
                world.channel_content.setdefault(scope_ids[0], []).append(name)
            elif n < by_channel + by_group:  # a guild / workspace with a group rule (50 %) or without
                scope, scope_ids = "group", [rng.choice(world.all_groups)]
                rule |= {
                    "metadata_match": {world.group_key: scope_ids[0]},
                    "priority": SCOPED_CONTENT_PRIORITY,
                }
                world.group_content.setdefault(scope_ids[0], []).append(name)
            else:
                scope, scope_ids = "source", []
            world.content.append(ContentRule(name, source, scope, scope_ids, trigger, command))
            compiled = RoutingRule.model_validate(rule | target("agent", n))
            (unscoped if scope == "source" else scoped).append(compiled)
    # Declaration order: exact rules, scoped content rules, then source-only content rules last.
    content_rules = [*scoped, *unscoped]
    return World([*exact, *content_rules], exact, content_rules, sources, pattern_kinds)


# -- events ---------------------------------------------------------------------------------------


@dataclass
class Case:
    kind: str
    event: AgentRequestEvent
    expected: str | None  # the rule that must decide; None: the source default


def filler(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:chars].rstrip()


def with_trigger(rng: random.Random, rule: ContentRule, chars: int) -> str:
    text = filler(rng, chars)
    if rule.command:
        return f"{rule.trigger} {text}"
    words = text.split(" ")
    words.insert(rng.randrange(len(words) + 1), rule.trigger)
    return " ".join(words)


def make_event(
    source: str, channel: str, user: str, content: str, group: tuple[str, str] | None
) -> AgentRequestEvent:
    metadata: dict[str, Any] = {"message_type": "text"}
    if group is not None:
        metadata[group[0]] = group[1]
    return AgentRequestEvent(
        source=source, source_id=channel, user_id=user, content=content, metadata=metadata
    )


def make_case(world: SourceWorld, kind: str, rng: random.Random, chars: int) -> Case:
    """An event of ``kind`` built so exactly one rule decides it (or none, for ``no match``)."""
    key = world.group_key
    rule_groups = list(world.group_rule)
    groups_without_rule = world.free_groups
    user = rng.choice(world.free_users)
    text = filler(rng, chars)

    def group(pool: Sequence[str]) -> tuple[str, str] | None:
        return (key, rng.choice(pool)) if key else None

    if kind == "group" and not key:
        kind = "channel"
    if kind == "channel":
        channel = rng.choice(list(world.channel_rule))
        event = make_event(world.source, channel, user, text, group(world.all_groups))
        return Case(kind, event, world.channel_rule[channel])
    if kind == "user":
        user = rng.choice(list(world.user_rule))
        channel = rng.choice([*world.channel_rule, *world.free_channels])
        event = make_event(world.source, channel, user, text, group(world.all_groups))
        return Case(kind, event, world.user_rule[user])
    if kind == "group":
        chosen = rng.choice(rule_groups)
        channel = rng.choice(world.free_channels)
        event = make_event(world.source, channel, user, text, (key, chosen) if key else None)
        return Case(kind, event, world.group_rule[chosen])
    if kind == "content":
        rule = rng.choice(world.content)
        content = with_trigger(rng, rule, chars)
        if rule.scope == "channel":
            event = make_event(world.source, rule.scope_ids[0], user, content, group(world.all_groups))
        elif rule.scope == "group":
            channel = rng.choice([*world.channel_rule, *world.free_channels])
            event = make_event(
                world.source, channel, user, content, (key, rule.scope_ids[0]) if key else None
            )
        else:  # no exact rule may catch it first: a channel and a group without one
            channel = rng.choice(world.free_channels)
            event = make_event(world.source, channel, user, content, group(groups_without_rule))
        return Case(kind, event, rule.name)
    channel = rng.choice(world.free_channels)
    return Case("no match", make_event(world.source, channel, user, text, group(groups_without_rule)), None)


def has_rules(world: SourceWorld, kind: str) -> bool:
    """Whether ``world`` can give an event of ``kind`` (``make_case`` turns ``group`` into
    ``channel`` on a source without groups)."""
    pools = {
        "channel": world.channel_rule,
        "user": world.user_rule,
        "group": world.group_rule if world.group_key else world.channel_rule,
        "content": world.content,
    }
    return kind not in pools or bool(pools[kind])


def event_source(world: World, source: str, kind: str, rng: random.Random) -> SourceWorld:
    """``source``, or, when it has no rule of ``kind`` (a small rule set: at 10 rules only telegram
    has a content rule), another source that has one, drawn by ``EVENT_SOURCE_SHARE``; so the mix of
    kinds stays that of ``KIND_SHARE`` at every size. Draws from ``rng`` only in that case."""
    if has_rules(world.sources[source], kind):
        return world.sources[source]
    others = [name for name in EVENT_SOURCE_SHARE if has_rules(world.sources[name], kind)]
    if not others:
        raise BenchmarkError(f"no source has a rule for a {kind!r} event ({len(world.rules)} rules)")
    return world.sources[rng.choices(others, weights=[EVENT_SOURCE_SHARE[n] for n in others])[0]]


def make_cases(world: World, n: int, seed: int, chars: int) -> list[Case]:
    rng = random.Random(seed + 1)
    sources = rng.choices(list(EVENT_SOURCE_SHARE), weights=list(EVENT_SOURCE_SHARE.values()), k=n)
    kinds = rng.choices(KINDS, weights=[KIND_SHARE[k] for k in KINDS], k=n)
    return [
        make_case(event_source(world, s, k, rng), k, rng, chars) for s, k in zip(sources, kinds, strict=True)
    ]


def check(router: EventRouter, cases: Iterable[Case], decisions: Iterable[RouteDecision], what: str) -> None:
    for case, decision in zip(cases, decisions, strict=True):
        if decision.rule != case.expected:
            event = case.event
            raise BenchmarkError(
                f"{what}: a {case.kind!r} event on {event.source}:{event.source_id} from {event.user_id} "
                f"was routed by {decision.rule!r} ({decision.reason}), expected {case.expected!r}"
            )
        if case.expected is None and decision.target != router.source_defaults[case.event.source]:
            raise BenchmarkError(f"{what}: a no-match event did not get its source default: {decision}")


def patterns_tried(router: EventRouter, event: AgentRequestEvent) -> tuple[int, str | None]:
    """How many content patterns ``route`` runs for ``event``, from ``explain`` (which tries every
    rule, in priority order, without the index), and the rule ``explain`` picks."""
    explanation = router.explain(event)
    decided = explanation.decision.rule if explanation.decision else None
    tried = 0
    for rule_check in explanation.checks:
        if rule_check.matched:
            rule = next(r for r in router.rules if r.name == rule_check.rule)
            tried += rule.content_pattern is not None
            break
        tried += rule_check.reason.startswith("content does not match")
    return tried, decided


# -- measurements ---------------------------------------------------------------------------------


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted samples, in µs."""
    index = min(len(sorted_ns) - 1, max(0, math.ceil(q / 100 * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1e3


@dataclass
class Latency:
    """µs per decision."""

    n: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[int]) -> Latency:
        ordered = sorted(samples)
        return cls(
            len(ordered),
            percentile(ordered, 50),
            percentile(ordered, 90),
            percentile(ordered, 99),
            ordered[-1] / 1e3,
        )

    @classmethod
    def median_of(cls, runs: Sequence[Latency]) -> Latency:
        return cls(
            runs[0].n,
            statistics.median(r.p50 for r in runs),
            statistics.median(r.p90 for r in runs),
            statistics.median(r.p99 for r in runs),
            statistics.median(r.max for r in runs),
        )


def time_decisions(
    router: EventRouter, events: Sequence[AgentRequestEvent]
) -> tuple[list[int], list[RouteDecision]]:
    route = router.route
    clock = time.perf_counter_ns
    samples: list[int] = []
    decisions: list[RouteDecision] = []
    gc.collect()
    for event in events:
        started = clock()
        decision = route(event)
        samples.append(clock() - started)
        decisions.append(decision)
    return samples, decisions


def timer_overhead() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        started = clock()
        samples.append(clock() - started)
    return statistics.median(samples)


@dataclass
class KindFigures:
    kind: str
    latency: Latency
    patterns_mean: float
    patterns_max: int
    explained: int


def measure_realistic(
    router: EventRouter, cases: Sequence[Case], repetitions: int, warmup: int
) -> tuple[Latency, list[KindFigures]]:
    events = [case.event for case in cases]
    _, decisions = time_decisions(router, events[:warmup])
    check(router, cases[:warmup], decisions, "warm-up")
    overall: list[Latency] = []
    per_kind: dict[str, list[Latency]] = {kind: [] for kind in KINDS}
    for repetition in range(1, repetitions + 1):
        samples, decisions = time_decisions(router, events)
        check(router, cases, decisions, f"repetition {repetition}")
        overall.append(Latency.of(samples))
        for kind in KINDS:
            mine = [s for s, c in zip(samples, cases, strict=True) if c.kind == kind]
            if mine:
                per_kind[kind].append(Latency.of(mine))
        print(
            f"  rep {repetition}: p50 {overall[-1].p50:.1f} µs, p90 {overall[-1].p90:.1f} µs, "
            f"p99 {overall[-1].p99:.1f} µs",
            flush=True,
        )
    figures = []
    for kind in KINDS:
        if not per_kind[kind]:
            continue
        sample = [c for c in cases if c.kind == kind][:EXPLAIN_PER_KIND]
        counts = []
        for case in sample:
            tried, decided = patterns_tried(router, case.event)
            if decided != case.expected:
                raise BenchmarkError(
                    f"explain picks {decided!r} for a {kind!r} event; route and the generator "
                    f"{case.expected!r}"
                )
            counts.append(tried)
        figures.append(
            KindFigures(
                kind, Latency.median_of(per_kind[kind]), statistics.fmean(counts), max(counts), len(counts)
            )
        )
    return Latency.median_of(overall), figures


@dataclass
class ScalingRow:
    rules: int
    content_rules: int
    composition: dict[str, int]  # rule kind → count
    decisions: int
    latency: Latency  # µs, median over the repetitions of each percentile
    p50_runs: list[float]  # p50 of each repetition, µs
    kind_p50: dict[str, float]  # µs, median over the repetitions of each kind's p50
    patterns_median: float  # content patterns route searched, over every event
    patterns_mean: float
    patterns_max: int
    explained: int  # events also checked against explain
    p50_ratio: float  # latency.p50 / that of the smallest size, same run


def composition(world: World) -> dict[str, int]:
    """How many rules of each kind (content rules by scope) ``world`` holds."""
    counts = {"channel": 0, "user": 0, "group": 0, "content: channel": 0, "content: group": 0}
    counts["content: source"] = 0
    for source in world.sources.values():
        counts["channel"] += len(set(source.channel_rule.values()))
        counts["user"] += len(set(source.user_rule.values()))
        counts["group"] += len(source.group_rule)
        for rule in source.content:
            counts[f"content: {rule.scope}"] += 1
    if sum(counts.values()) != len(world.rules):
        raise BenchmarkError(f"composition {counts} does not add up to {len(world.rules)} rules")
    return counts


def count_patterns(router: EventRouter, events: Sequence[AgentRequestEvent]) -> list[int]:
    """How many content patterns ``route`` searches for each event: an untimed pass with
    ``SafePattern.search`` (content patterns only) wrapped in a counter, then put back."""
    searched = 0
    search = SafePattern.search

    def counted(pattern: SafePattern, text: str) -> bool:
        nonlocal searched
        searched += 1
        return search(pattern, text)

    counts = []
    SafePattern.search = counted  # type: ignore[method-assign, assignment]
    try:
        for event in events:
            searched = 0
            router.route(event)
            counts.append(searched)
    finally:
        SafePattern.search = search  # type: ignore[method-assign]
    return counts


def measure_scaling(
    worlds: Sequence[tuple[World, EventRouter, list[Case]]], repetitions: int, warmup: int
) -> list[ScalingRow]:
    """Every world routes its events (each decision timed alone and checked), the sizes interleaved
    in each repetition (smallest first) so the machine's noise falls on all of them alike."""
    for world, router, cases in worlds:
        _, decisions = time_decisions(router, [case.event for case in cases[:warmup]])
        check(router, cases[:warmup], decisions, f"{len(world.rules):,} rules, warm-up")
    runs: list[list[Latency]] = [[] for _ in worlds]
    kind_runs: list[dict[str, list[float]]] = [{kind: [] for kind in KINDS} for _ in worlds]
    for repetition in range(1, repetitions + 1):
        for (world, router, cases), mine, by_kind in zip(worlds, runs, kind_runs, strict=True):
            samples, decisions = time_decisions(router, [case.event for case in cases])
            check(router, cases, decisions, f"{len(world.rules):,} rules, repetition {repetition}")
            mine.append(Latency.of(samples))
            for kind, p50s in by_kind.items():
                of_kind = [s for s, c in zip(samples, cases, strict=True) if c.kind == kind]
                if of_kind:
                    p50s.append(Latency.of(of_kind).p50)
        print(
            f"  rep {repetition}: p50 "
            + ", ".join(f"{run[-1].p50:.1f}" for run in runs)
            + " µs ("
            + " / ".join(f"{len(w.rules):,}" for w, _, _ in worlds)
            + " rules)",
            flush=True,
        )
    rows = []
    for (world, router, cases), mine, by_kind in zip(worlds, runs, kind_runs, strict=True):
        counts = count_patterns(router, [case.event for case in cases])
        sample = [
            (case, count)
            for kind in KINDS
            for case, count in [(c, n) for c, n in zip(cases, counts, strict=True) if c.kind == kind][
                :SCALING_EXPLAIN_PER_KIND
            ]
        ]
        for case, count in sample:  # the counter and the decision against explain
            tried, decided = patterns_tried(router, case.event)
            if decided != case.expected or tried != count:
                raise BenchmarkError(
                    f"{len(world.rules):,} rules: explain picks {decided!r} after {tried} patterns for a "
                    f"{case.kind!r} event; route and the generator {case.expected!r} after {count}"
                )
        latency = Latency.median_of(mine)
        rows.append(
            ScalingRow(
                len(world.rules),
                len(world.content_rules),
                composition(world),
                len(cases),
                latency,
                [run.p50 for run in mine],
                {kind: statistics.median(p50s) for kind, p50s in by_kind.items() if p50s},
                statistics.median(counts),
                statistics.fmean(counts),
                max(counts),
                len(sample),
                latency.p50 / statistics.median(run.p50 for run in runs[0]),
            )
        )
    return rows


@dataclass
class WorstCase:
    name: str
    rules: int
    content_chars: int
    patterns_tried: int
    latency: Latency


def measure_one(name: str, router: EventRouter, event: AgentRequestEvent, iterations: int) -> WorstCase:
    tried, decided = patterns_tried(router, event)
    if decided is not None or router.route(event).rule is not None:
        raise BenchmarkError(f"{name}: the worst-case event matched a rule ({decided!r})")
    samples, _ = time_decisions(router, [event] * iterations)
    return WorstCase(name, len(router.rules), len(event.content), tried, Latency.of(samples))


def measure_worst(world: World, router: EventRouter, seed: int, chars: int) -> list[WorstCase]:
    rng = random.Random(seed + 2)
    discord = world.sources["discord"]
    assert discord.group_key is not None
    # The channel without an exact rule that has the most content rules, the same for the guild.
    channel = max(discord.free_channels, key=lambda c: len(discord.channel_content.get(c, ())))
    guild = max(discord.free_groups, key=lambda g: len(discord.group_content.get(g, ())))
    user = discord.free_users[0]
    results = [
        measure_one(
            "realistic set: most patterns in reach",
            router,
            make_event("discord", channel, user, filler(rng, chars), (discord.group_key, guild)),
            2_000,
        )
    ]
    # The extreme: every content rule unscoped on one source (priority 0, declared last).
    unscoped = [
        rule.model_copy(update={"source": "discord", "source_ids": None, "metadata_match": {}, "priority": 0})
        for rule in world.content_rules
    ]
    extreme = EventRouter([*world.exact, *unscoped], source_defaults=world.defaults())
    channel, guild = discord.free_channels[1], discord.free_groups[1]
    for content, iterations in ((filler(rng, chars), 200), (filler(rng, LONG_CONTENT_CHARS), 20)):
        event = make_event("discord", channel, user, content, (discord.group_key, guild))
        name = f"all {len(unscoped):,} content rules unscoped on one source"
        results.append(measure_one(name, extreme, event, iterations))
    return results


@dataclass
class PatternCost:
    patterns: int
    content_chars: int
    timed_ns: float
    untimed_ns: float


def measure_pattern_cost(world: World, chars: int, seed: int) -> PatternCost:
    """Mean ns of one non-matching search, as ``route`` runs it (``SafePattern.search``, with the
    timeout) and without the timeout (``compiled.search``)."""
    text = filler(random.Random(seed + 3), chars)
    patterns = [SafePattern(rule.content_pattern) for rule in world.content_rules if rule.content_pattern]
    loops = 20

    def run(search: Callable[[SafePattern], object]) -> float:
        gc.collect()
        started = time.perf_counter_ns()
        for _ in range(loops):
            for pattern in patterns:
                search(pattern)
        return (time.perf_counter_ns() - started) / (loops * len(patterns))

    timed = min(run(lambda p: p.search(text)) for _ in range(3))
    untimed = min(run(lambda p: p.compiled.search(text)) for _ in range(3))
    return PatternCost(len(patterns), len(text), timed, untimed)


@dataclass
class Isolation:
    rules_alone: int
    rules_shared: int
    decisions: int
    repetitions: int
    alone_ns: list[float]
    shared_ns: list[float]
    alone_median_ns: float
    shared_median_ns: float
    alone_min_ns: float
    shared_min_ns: float
    difference: float  # (shared - alone) / alone, of the medians
    difference_of_mins: float


def teams_world(seed: int) -> tuple[list[RoutingRule], list[Case], Target]:
    """A source with 10 rules (4 channel, 2 user, 2 tenant, 2 content) and events for each, plus
    events matching nothing."""
    rng = random.Random(seed + 4)
    ids = Ids(rng)
    source = ISOLATION_SOURCE
    channels = [ids.channel(source) for _ in range(6)]
    users = [ids.user(source) for _ in range(6)]
    tenants = [f"tenant-{n}" for n in range(4)]
    command, ticket = f"/{ids.word()}", ids.word()

    def rule(name: str, **conditions: Any) -> RoutingRule:
        return RoutingRule.model_validate(
            {"name": name, "source": source, "agent_id": f"{name}-agent", **conditions}
        )

    rules = [
        *(rule(f"teams-channel-{n}", channel_ids=[channels[n]]) for n in range(4)),
        *(rule(f"teams-user-{n}", user_id=users[n], priority=USER_PRIORITY) for n in range(2)),
        *(rule(f"teams-tenant-{n}", metadata_match={"tenant_id": tenants[n]}) for n in range(2)),
        rule("teams-content-0", channel_ids=[channels[0]], content_pattern=rf"^{command}\b", priority=5),
        rule("teams-content-1", content_pattern=rf"(?i)\b{ticket}[-#]?\d{{3,6}}\b"),
    ]

    def event(channel: str, user: str, tenant: str, content: str) -> AgentRequestEvent:
        return make_event(source, channel, user, content, ("tenant_id", tenant))

    text = filler(rng, 200)
    free_channel, free_user, free_tenant = channels[5], users[5], tenants[3]
    cases = [
        *(
            Case("channel", event(channels[n], free_user, free_tenant, text), f"teams-channel-{n}")
            for n in range(4)
        ),
        *(
            Case("user", event(free_channel, users[n], free_tenant, text), f"teams-user-{n}")
            for n in range(2)
        ),
        *(
            Case("group", event(free_channel, free_user, tenants[n], text), f"teams-tenant-{n}")
            for n in range(2)
        ),
        Case("content", event(channels[0], free_user, free_tenant, f"{command} {text}"), "teams-content-0"),
        Case(
            "content", event(free_channel, free_user, free_tenant, f"{text} {ticket}-4821"), "teams-content-1"
        ),
        Case("no match", event(free_channel, free_user, free_tenant, text), None),
        Case("no match", event(channels[4], users[4], tenants[2], text), None),
    ]
    return rules, cases, Target(type=TargetType.AGENT, id="teams-assistant")


def measure_isolation(world: World, decisions: int, repetitions: int, seed: int) -> Isolation:
    rules, cases, default = teams_world(seed)
    alone = EventRouter(rules, source_defaults={ISOLATION_SOURCE: default})
    shared = EventRouter(
        [*world.rules, *rules], source_defaults={**world.defaults(), ISOLATION_SOURCE: default}
    )
    for router, what in ((alone, "teams alone"), (shared, "teams among the others")):
        check(router, cases, [router.route(case.event) for case in cases], what)
    rng = random.Random(seed + 5)
    events = [case.event for case in rng.choices(cases, k=decisions)]

    def batch(router: EventRouter) -> float:
        route = router.route
        gc.collect()
        started = time.perf_counter_ns()
        for event in events:
            route(event)
        return (time.perf_counter_ns() - started) / decisions

    batch(alone)  # warm-up
    batch(shared)
    alone_ns: list[float] = []
    shared_ns: list[float] = []
    for repetition in range(repetitions):
        if repetition % 2 == 0:
            alone_ns.append(batch(alone))
            shared_ns.append(batch(shared))
        else:
            shared_ns.append(batch(shared))
            alone_ns.append(batch(alone))
    alone_median, shared_median = statistics.median(alone_ns), statistics.median(shared_ns)
    return Isolation(
        len(alone.rules),
        len(shared.rules),
        decisions,
        repetitions,
        alone_ns,
        shared_ns,
        alone_median,
        shared_median,
        min(alone_ns),
        min(shared_ns),
        (shared_median - alone_median) / alone_median,
        (min(shared_ns) - min(alone_ns)) / min(alone_ns),
    )


# -- reporting ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return _common.machine(pydantic=pydantic.VERSION, regex=regex.__version__, dynamic_agents=library_version)


def latency_table(overall: Latency, kinds: Sequence[KindFigures]) -> str:
    header = (
        f"{'decision (µs)':<14} {'events':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8}  "
        f"{'patterns tried (mean / max)':>27}"
    )
    lines = [header, "-" * len(header)]
    for name, lat, tried in [
        ("all", overall, ""),
        *((k.kind, k.latency, f"{k.patterns_mean:.1f} / {k.patterns_max}") for k in kinds),
    ]:
        lines.append(
            f"{name:<14} {lat.n:>7,} {lat.p50:>7.1f} {lat.p90:>7.1f} {lat.p99:>7.1f} {lat.max:>8.1f}  "
            f"{tried:>27}"
        )
    return "\n".join(lines)


def scaling_table(rows: Sequence[ScalingRow]) -> str:
    header = (
        f"{'scaling: rules':<14} {'content':>8} {'p50 µs':>7} {'p90 µs':>7} {'p99 µs':>7}  "
        f"{'patterns tried (median / mean / max)':>36} {'p50 ratio':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lat = row.latency
        tried = f"{row.patterns_median:g} / {row.patterns_mean:.1f} / {row.patterns_max}"
        lines.append(
            f"{row.rules:<14,} {row.content_rules:>8,} {lat.p50:>7.1f} {lat.p90:>7.1f} {lat.p99:>7.1f}  "
            f"{tried:>36} {row.p50_ratio:>10.2f}"
        )
    return "\n".join(lines)


def worst_table(worst: Sequence[WorstCase]) -> str:
    header = f"{'worst case':<46} {'chars':>6} {'tried':>6} {'p50 µs':>9} {'p99 µs':>9} {'µs/pattern':>11}"
    rows = [
        f"{w.name:<46} {w.content_chars:>6,} {w.patterns_tried:>6,} {w.latency.p50:>9,.1f} "
        f"{w.latency.p99:>9,.1f} {w.latency.p50 / max(1, w.patterns_tried):>11.2f}"
        for w in worst
    ]
    return "\n".join([header, "-" * len(header), *rows])


def isolation_table(iso: Isolation) -> str:
    header = f"{'isolation (teams, 10 rules)':<34} {'rules':>7} {'median ns':>10} {'min ns':>8}"
    lines = [
        header,
        "-" * len(header),
        f"{'router with teams rules only':<34} {iso.rules_alone:>7,} {iso.alone_median_ns:>10,.0f} "
        f"{iso.alone_min_ns:>8,.0f}",
        f"{f'router with {iso.rules_shared - iso.rules_alone:,} other rules':<34} {iso.rules_shared:>7,} "
        f"{iso.shared_median_ns:>10,.0f} "
        f"{iso.shared_min_ns:>8,.0f}",
        f"{'difference':<34} {'':>7} {iso.difference:>+10.1%} {iso.difference_of_mins:>+8.1%}",
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Run every part, print the figures; return the ``--json`` report and the failed targets."""
    info = machine()
    print(
        f"{info['nproc']} CPU ({info['cpu']}), Python {info['python']}, pydantic {info['pydantic']}, "
        f"regex {info['regex']}",
        flush=True,
    )
    started = time.perf_counter()
    world = build_world(args.rules, args.content_rules, args.seed)
    router = EventRouter(world.rules, source_defaults=world.defaults())
    cases = make_cases(world, args.decisions, args.seed, args.chars)
    print(
        f"{len(world.rules):,} rules ({len(world.content_rules):,} with a content pattern: "
        f"{', '.join(f'{n} {k}' for k, n in world.patterns.items())}), {len(cases):,} events; "
        f"built in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    overhead = timer_overhead()
    print(f"realistic set: {args.decisions:,} decisions x {args.repetitions} repetitions", flush=True)
    overall, kinds = measure_realistic(router, cases, args.repetitions, min(2_000, len(cases)))
    scaling = []
    if args.scaling_sizes:
        started = time.perf_counter()
        worlds = []
        for size in args.scaling_sizes:
            content = scaled_content_rules(size, args.rules, args.content_rules)
            if (size, content) == (args.rules, args.content_rules):  # the same generator, seed and sizes
                scaled_world, scaled_router = world, router
            else:
                scaled_world = build_world(size, content, args.seed)
                scaled_router = EventRouter(scaled_world.rules, source_defaults=scaled_world.defaults())
            scaled_cases = make_cases(scaled_world, args.scaling_decisions, args.seed, args.chars)
            worlds.append((scaled_world, scaled_router, scaled_cases))
        print(
            f"scaling: {' / '.join(f'{n:,}' for n in args.scaling_sizes)} rules, "
            f"{args.scaling_decisions:,} decisions each x {args.scaling_repetitions} repetitions "
            f"(built in {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        scaling = measure_scaling(worlds, args.scaling_repetitions, min(2_000, args.scaling_decisions))
        print(f"  scaling part: {time.perf_counter() - started:.1f} s", flush=True)
    print("worst cases", flush=True)
    worst = measure_worst(world, router, args.seed, args.chars)
    cost = measure_pattern_cost(world, args.chars, args.seed)
    print(f"isolation: {args.isolation_repetitions} x 2 batches of {args.isolation_decisions:,}", flush=True)
    iso = measure_isolation(world, args.isolation_decisions, args.isolation_repetitions, args.seed)

    print()
    print(latency_table(overall, kinds))
    print(
        f"(timer overhead {overhead:.0f} ns per sample, included; every decision checked, "
        f"{sum(k.explained for k in kinds)} also against explain)"
    )
    if scaling:
        print()
        print(scaling_table(scaling))
        print(
            "p50 by kind (µs, "
            + " / ".join(f"{row.rules:,}" for row in scaling)
            + " rules): "
            + ", ".join(
                f"{kind} " + " / ".join(f"{row.kind_p50.get(kind, math.nan):.1f}" for row in scaling)
                for kind in KINDS
            )
        )
        print(
            f"(median of {args.scaling_repetitions} repetitions, sizes interleaved; every decision "
            f"checked, {sum(row.explained for row in scaling)} also against explain; rule kinds: "
            + "; ".join(
                f"{row.rules:,}: " + ", ".join(f"{n} {kind}" for kind, n in row.composition.items())
                for row in scaling
            )
            + ")"
        )
    print()
    print(worst_table(worst))
    print(
        f"one non-matching content search ({cost.patterns:,} patterns, {cost.content_chars} chars): "
        f"{cost.timed_ns:,.0f} ns with the timeout (SafePattern.search), {cost.untimed_ns:,.0f} ns without"
    )
    print()
    print(isolation_table(iso))
    failed = []
    met_median = overall.p50 < TARGET_MEDIAN_US
    met_isolation = abs(iso.difference) < ISOLATION_LIMIT
    print()
    print(f"target: median decision < {TARGET_MEDIAN_US:g} µs: {'met' if met_median else 'NOT met'}")
    print(f"target: isolation difference < {ISOLATION_LIMIT:.0%}: {'met' if met_isolation else 'NOT met'}")
    if not met_median:
        failed.append(f"median decision {overall.p50:.1f} µs >= {TARGET_MEDIAN_US:g} µs")
    if not met_isolation:
        failed.append(f"isolation difference {iso.difference:+.1%} (limit {ISOLATION_LIMIT:.0%})")
    report = {
        "benchmark": "routing",
        "machine": info,
        "rules": len(world.rules),
        "content_rules": len(world.content_rules),
        "pattern_kinds": world.patterns,
        "decisions": args.decisions,
        "repetitions": args.repetitions,
        "seed": args.seed,
        "timer_overhead_ns": overhead,
        "overall": asdict(overall),
        "kinds": [asdict(k) for k in kinds],
        "worst": [asdict(w) for w in worst],
        "pattern_cost": asdict(cost),
        "isolation": asdict(iso),
        "scaling": {
            "sizes": args.scaling_sizes,
            "decisions": args.scaling_decisions,
            "repetitions": args.scaling_repetitions,
            "rows": [asdict(row) for row in scaling],
        },
        "target_median_us": TARGET_MEDIAN_US,
        "target_median_met": met_median,
        "isolation_limit": ISOLATION_LIMIT,
        "isolation_met": met_isolation,
    }
    return report, failed


def scaled_content_rules(size: int, rules: int, content_rules: int) -> int:
    """Content rules in a scaled rule set: the share of ``--content-rules`` in ``--rules``, at least 1."""
    return max(1, round(size * content_rules / rules))


def rule_counts(text: str) -> list[int]:
    """``--scaling-sizes``: comma-separated rule counts, each >= 10 (empty: skip the part)."""
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if sizes and sizes[0] < 10:
        raise argparse.ArgumentTypeError("each scaling size must be >= 10")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rules", type=int, default=10_000, help="rules in the realistic set (default 10000)"
    )
    parser.add_argument(
        "--content-rules", type=int, default=1_000, help="of which content rules (default 1000)"
    )
    parser.add_argument(
        "--decisions", type=int, default=20_000, help="timed decisions per repetition (default 20000)"
    )
    parser.add_argument("--repetitions", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--chars", type=int, default=200, help="characters of message text (default 200)")
    parser.add_argument(
        "--isolation-decisions",
        type=int,
        default=20_000,
        help="decisions per isolation batch (default 20000)",
    )
    parser.add_argument(
        "--isolation-repetitions", type=int, default=15, help="isolation rounds, each A and B (default 15)"
    )
    parser.add_argument(
        "--scaling-sizes",
        type=rule_counts,
        default=[10, 1_000, 10_000],
        metavar="N,N,...",
        help="rule counts of the scaling part (default 10,1000,10000; '' skips it)",
    )
    parser.add_argument(
        "--scaling-decisions", type=int, default=10_000, help="timed decisions per size (default 10000)"
    )
    parser.add_argument(
        "--scaling-repetitions",
        type=int,
        default=5,
        help="scaling repetitions, sizes interleaved (default 5)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the rule set and events (default 1)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    sizes = (
        args.decisions,
        args.repetitions,
        args.chars,
        args.isolation_decisions,
        args.isolation_repetitions,
        args.scaling_decisions,
        args.scaling_repetitions,
    )
    if min(sizes) < 1 or args.content_rules < 10 or args.rules - args.content_rules < 100:
        parser.error("sizes must be >= 1, --content-rules >= 10, --rules >= --content-rules + 100")
    try:
        report, failed = benchmark(args)
    except BenchmarkError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    for failure in failed:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
