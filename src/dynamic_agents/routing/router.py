"""``EventRouter``: which agent, team or workflow answers an event.

Order: explicit ids in the event (``agent_id``, then ``team_id``, then ``workflow_id``); then rules
by priority (ties: declaration order); then the event source's default; then the global default;
otherwise :class:`NoRouteError`.

Rules are indexed by source and by one exact-match field each (channel id, user id or a metadata
value), so an event only meets the rules that could match it, in priority order, lazily merged: rules
of other sources cost nothing. Content patterns run last, on the first ``max_content_chars``
characters, with a timeout.
"""

from __future__ import annotations

import functools
import heapq
import inspect
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from dynamic_agents._logging import get_logger
from dynamic_agents._validation import check_count, check_seconds, shown
from dynamic_agents.events import AgentRequestEvent, Target, TargetType
from dynamic_agents.events._types import source_name
from dynamic_agents.exceptions import ConfigurationError, NoRouteError, RoutingConfigError
from dynamic_agents.routing.patterns import SafePattern
from dynamic_agents.routing.rules import RoutingRule, metadata_matches

__all__ = ["EventRouter", "Explanation", "RouteDecision", "RuleCheck"]

logger = get_logger("routing")

DEFAULT_MAX_CONTENT_CHARS: Final = 4096
DEFAULT_PATTERN_TIMEOUT: Final = 0.05
_EXPLICIT: Final = (
    ("agent_id", TargetType.AGENT),
    ("team_id", TargetType.TEAM),
    ("workflow_id", TargetType.WORKFLOW),
)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The chosen target, the rule that chose it (if any) and why."""

    target: Target
    rule: str | None
    reason: str

    @property
    def target_type(self) -> TargetType:
        return self.target.type

    @property
    def target_id(self) -> str:
        return self.target.id


@dataclass(frozen=True, slots=True)
class RuleCheck:
    rule: str
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """Every rule, in the order tried, with why it matched or not; then the decision (or error)."""

    checks: tuple[RuleCheck, ...]
    decision: RouteDecision | None
    error: str | None = None

    def __str__(self) -> str:
        lines = [f"{'✓' if c.matched else '✗'} {c.rule}: {c.reason}" for c in self.checks]
        lines.append(
            f"→ {self.decision.target.type}:{self.decision.target.id} ({self.decision.reason})"
            if self.decision
            else f"→ no route: {self.error}"
        )
        return "\n".join(lines)


class _CompiledRule:
    __slots__ = ("content", "order", "rule", "sort_key", "source_id_pattern")

    def __init__(self, rule: RoutingRule, order: int, timeout: float) -> None:
        self.rule = rule
        self.order = order
        self.sort_key = (-rule.priority, order)
        self.content = SafePattern(rule.content_pattern, timeout) if rule.content_pattern else None
        self.source_id_pattern = (
            SafePattern(rule.source_id_pattern, timeout) if rule.source_id_pattern else None
        )

    def mismatch(self, event: AgentRequestEvent, content: str) -> str | None:  # noqa: PLR0911
        """``None`` when every condition holds, else the first that does not (cheapest first)."""
        rule = self.rule
        if rule.source is not None and rule.source != event.source:
            return f"source is {event.source!r}, not {rule.source!r}"
        if rule.source_ids is not None and event.source_id not in rule.source_ids:
            return f"channel {event.source_id!r} is not among the rule's {_count(rule.source_ids, 'channel')}"
        if rule.user_ids is not None and event.user_id not in rule.user_ids:
            return f"user {event.user_id!r} is not among the rule's {_count(rule.user_ids, 'user')}"
        if rule.metadata_match and not metadata_matches(rule.metadata_match, event):
            return f"metadata does not match {dict(rule.metadata_match)!r}"
        if self.source_id_pattern is not None and not self.source_id_pattern.search(event.source_id):
            return f"channel {event.source_id!r} does not match {rule.source_id_pattern!r}"
        if self.content is not None and not self.content.search(content):
            return f"content does not match {rule.content_pattern!r}"
        return None


def _by_priority(rule: _CompiledRule) -> tuple[int, int]:
    return rule.sort_key


@dataclass(slots=True)
class _Bucket:
    """The rules of one source (or of every source), indexed by one exact-match field each."""

    by_source_id: dict[str, list[_CompiledRule]] = field(default_factory=lambda: defaultdict(list))
    by_user_id: dict[str, list[_CompiledRule]] = field(default_factory=lambda: defaultdict(list))
    # keyed by (key, is a boolean, value): True == 1 and hash alike, but only match their own kind
    by_metadata: dict[tuple[str, bool, Hashable], list[_CompiledRule]] = field(
        default_factory=lambda: defaultdict(list)
    )
    metadata_keys: set[str] = field(default_factory=set)
    scan: list[_CompiledRule] = field(default_factory=list)

    def add(self, compiled: _CompiledRule) -> None:
        rule = compiled.rule
        if rule.source_ids:
            for source_id in rule.source_ids:
                self.by_source_id[source_id].append(compiled)
        elif rule.user_ids:
            for user_id in rule.user_ids:
                self.by_user_id[user_id].append(compiled)
        elif rule.metadata_match:
            key, wanted = next(iter(rule.metadata_match.items()))
            self.metadata_keys.add(key)
            for value in wanted if isinstance(wanted, tuple) else (wanted,):
                rules = self.by_metadata[key, type(value) is bool, value]
                # 1 and 1.0 are one entry: the rule once. Only its own values can have put it
                # there, just now: look at the last, not through the list (quadratic in a guild's rules)
                if not rules or rules[-1] is not compiled:
                    rules.append(compiled)
        else:
            self.scan.append(compiled)

    def sort(self) -> None:
        """Put every list in priority order (``add`` appends in declaration order)."""
        for index in (self.by_source_id, self.by_user_id, self.by_metadata):
            for rules in index.values():
                rules.sort(key=_by_priority)
        self.scan.sort(key=_by_priority)

    def candidates(self, event: AgentRequestEvent) -> Iterator[list[_CompiledRule]]:
        if found := self.by_source_id.get(event.source_id):
            yield found
        if found := self.by_user_id.get(event.user_id):
            yield found
        for key in self.metadata_keys:
            value = event.metadata.get(key)
            if isinstance(value, Hashable) and (
                found := self.by_metadata.get((key, type(value) is bool, value))
            ):
                yield found
        if self.scan:
            yield self.scan


@dataclass(frozen=True, slots=True, eq=False)
class _RuleIndex:
    """A router's rules and their indexes, built whole and never changed: a router swaps in a
    new one with a single assignment (see :meth:`EventRouter.replace_rules`)."""

    rules: tuple[RoutingRule, ...]
    compiled: tuple[_CompiledRule, ...]
    by_source: dict[str, _Bucket]
    any_source: _Bucket

    @classmethod
    def build(cls, rules: Iterable[RoutingRule], pattern_timeout: float) -> _RuleIndex:
        rules = _checked_rules(rules)
        # counted by hash: names.count(name) per rule compared every pair (29 s for 40,000 rules)
        duplicates = sorted(name for name, uses in Counter(rule.name for rule in rules).items() if uses > 1)
        if duplicates:
            raise RoutingConfigError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        compiled = tuple(_CompiledRule(rule, n, pattern_timeout) for n, rule in enumerate(rules))
        by_source: dict[str, _Bucket] = {}
        any_source = _Bucket()
        for one in compiled:
            source = one.rule.source
            bucket = any_source if source is None else by_source.setdefault(source, _Bucket())
            bucket.add(one)
        for bucket in (*by_source.values(), any_source):
            bucket.sort()
        return cls(rules, compiled, by_source, any_source)

    def candidates(self, event: AgentRequestEvent) -> Iterator[_CompiledRule]:
        lists: list[list[_CompiledRule]] = []
        bucket = self.by_source.get(event.source)
        if bucket is not None:
            lists.extend(bucket.candidates(event))
        lists.extend(self.any_source.candidates(event))
        if len(lists) == 1:
            return iter(lists[0])
        return heapq.merge(*lists, key=_by_priority)


class EventRouter:
    """Routes request events to targets; see the module documentation for the order."""

    def __init__(
        self,
        rules: Iterable[RoutingRule] = (),
        *,
        source_defaults: Mapping[str, Target] | None = None,
        default: Target | None = None,
        max_content_chars: int = DEFAULT_MAX_CONTENT_CHARS,
        pattern_timeout: float = DEFAULT_PATTERN_TIMEOUT,
    ) -> None:
        # how many characters of the content patterns see, and how long one pattern may run
        max_content_chars = check_count("max_content_chars", max_content_chars)
        pattern_timeout = check_seconds("pattern_timeout", pattern_timeout)
        self._index = _RuleIndex.build(rules, pattern_timeout)
        self.source_defaults = _by_source({} if source_defaults is None else source_defaults)
        if default is not None and not isinstance(default, Target):
            raise ConfigurationError(
                f"default must be a Target or None, {_a_target_for(default)}, got {shown(default)}"
            )
        self.default = default
        self.max_content_chars = max_content_chars
        self._pattern_timeout = pattern_timeout

    @property
    def rules(self) -> tuple[RoutingRule, ...]:
        """The rules, in declaration order (:meth:`replace_rules` changes them)."""
        return self._index.rules

    def __repr__(self) -> str:
        return f"EventRouter({len(self.rules)} rules, {len(self.source_defaults)} source defaults)"

    def replace_rules(self, rules: Iterable[RoutingRule]) -> None:
        """Swap in new rules (validated and indexed first; this router keeps its defaults), so
        whoever holds this router — a worker, say — routes by them from the next event on.

        The swap is one assignment, and :meth:`route` and :meth:`explain` read the rules once
        per call: a call running meanwhile, on this thread's event loop or another thread,
        decides wholly by the old rules or wholly by the new ones, never by a mix. Invalid
        rules raise and leave the old ones in place. Two ``replace_rules`` at once: the last
        one to finish wins."""
        self._index = _RuleIndex.build(rules, self._pattern_timeout)

    def route(self, event: AgentRequestEvent) -> RouteDecision:
        """The target for ``event``; :class:`NoRouteError` when nothing applies."""
        explicit = _explicit(event)
        if explicit is not None:
            return explicit
        content = event.content[: self.max_content_chars]
        for compiled in self._index.candidates(event):
            if compiled.mismatch(event, content) is None:
                return RouteDecision(compiled.rule.target, compiled.rule.name, f"rule {compiled.rule.name!r}")
        return self._fallback(event)

    def explain(self, event: AgentRequestEvent) -> Explanation:
        """Every rule in priority order with why it matches or not, and the decision."""
        content = event.content[: self.max_content_chars]
        checks: list[RuleCheck] = []
        decision = _explicit(event)
        if decision is not None:
            return Explanation((), decision)
        for compiled in sorted(self._index.compiled, key=_by_priority):
            reason = compiled.mismatch(event, content)
            checks.append(RuleCheck(compiled.rule.name, reason is None, reason or "every condition holds"))
            if reason is None and decision is None:
                decision = RouteDecision(
                    compiled.rule.target, compiled.rule.name, f"rule {compiled.rule.name!r}"
                )
        if decision is not None:
            return Explanation(tuple(checks), decision)
        try:
            return Explanation(tuple(checks), self._fallback(event))
        except NoRouteError as error:
            return Explanation(tuple(checks), None, str(error))

    def targets(self) -> set[Target]:
        """Every target a decision can name (rules and defaults; not explicit ids in events)."""
        found = {rule.target for rule in self.rules} | set(self.source_defaults.values())
        if self.default is not None:
            found.add(self.default)
        return found

    async def check_targets(self, exists: Callable[[Target], bool | Awaitable[bool]]) -> None:
        """Raise :class:`RoutingConfigError` naming every target ``exists`` does not know (for
        instance, an agent id missing from the spec store)."""
        missing = []
        for target in sorted(self.targets(), key=lambda t: (t.type, t.id)):
            known = exists(target)
            if inspect.isawaitable(known):
                known = await known
            if not known:
                missing.append(f"{target.type.value} {target.id!r}")
        if missing:
            raise RoutingConfigError(f"unknown routing targets: {', '.join(missing)}")

    def _fallback(self, event: AgentRequestEvent) -> RouteDecision:
        default = self.source_defaults.get(event.source)
        if default is not None:
            return RouteDecision(default, None, f"default for source {event.source!r}")
        if self.default is not None:
            return RouteDecision(self.default, None, "global default")
        raise NoRouteError(
            f"no route for {event.source}:{event.source_id} (request {event.id}): no rule matched and "
            f"no default is configured for source {event.source!r} or globally"
        )


def _checked_rules(rules: Iterable[RoutingRule]) -> tuple[RoutingRule, ...]:
    """``rules`` as a tuple, or a :class:`ConfigurationError` naming what is not a rule: a string
    was read letter by letter and a mapping by its keys, each failing with a bare
    ``AttributeError`` (a rule as a dict too)."""
    hint = "(RoutingRule(...), or RoutingRule.model_validate(mapping) for a rule as data)"
    if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, Iterable):
        raise ConfigurationError(f"rules must be an iterable of RoutingRule {hint}, got {shown(rules)}")
    checked = tuple(rules)
    for index, rule in enumerate(checked):
        if not isinstance(rule, RoutingRule):
            raise ConfigurationError(f"rules[{index}] must be a RoutingRule {hint}, got {shown(rule)}")
    return checked


def _a_target_for(value: object) -> str:
    """How to write ``value`` as a :class:`Target`: an agent id as text as that agent (unless
    :func:`shown` would mask it), a mapping through ``model_validate``, else an example."""
    if isinstance(value, str) and shown(value) == repr(value):
        return f"Target(type=TargetType.AGENT, id={value!r}) for an agent of that id"
    if isinstance(value, Mapping):
        return "Target.model_validate(mapping) for a target as data"
    return "such as Target(type=TargetType.AGENT, id='assistant')"


def _by_source(defaults: Mapping[str, Target]) -> dict[str, Target]:
    """Defaults keyed by the source as events read it (stripped, in lower case); a target that is
    no :class:`Target` (an agent id as text) is refused here, not met by the first decision."""
    if not isinstance(defaults, Mapping):
        raise ConfigurationError(
            f"source_defaults must be a mapping of sources to Targets, got {shown(defaults)}"
        )
    keyed: dict[str, Target] = {}
    written: dict[str, str] = {}
    for source, target in defaults.items():
        if not isinstance(target, Target):
            raise ConfigurationError(
                f"source_defaults[{source!r}] must be a Target, {_a_target_for(target)}, got {shown(target)}"
            )
        try:
            key = source_name(source, what="source_defaults key")
        except ValueError as error:
            raise RoutingConfigError(str(error)) from None
        if key in written:
            raise RoutingConfigError(
                f"source_defaults gives {written[key]!r} and {source!r}: {written[key]!r} and "
                f"{source!r} are one source (sources are read stripped and in lower case)"
            )
        written[key] = source
        keyed[key] = target
    return keyed


def _explicit(event: AgentRequestEvent) -> RouteDecision | None:
    for attribute, kind in _EXPLICIT:
        target_id = getattr(event, attribute)
        if target_id:
            return _explicit_decision(attribute, kind, target_id)
    return None


@functools.lru_cache(maxsize=1024)
def _explicit_decision(attribute: str, kind: TargetType, target_id: str) -> RouteDecision:
    """One decision per explicit target (both are immutable): most requests name one of a few."""
    return RouteDecision(Target(type=kind, id=target_id), None, f"explicit {attribute} in the event")


def _count(items: Collection[object], noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "s")
