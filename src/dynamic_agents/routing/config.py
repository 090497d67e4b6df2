"""Interface routing configuration, in the design document's YAML shape::

    discord:
      token: "secret:discord:bot_token"     # any other setting; secret references resolve later
      routing:
        default_agent: "discord-assistant"  # or default_team / default_workflow
        rules:
          - name: "Admin Channel"
            channel_ids: ["123456789"]
            agent_id: "admin-agent"
          - name: "Support Guild"
            guild_ids: ["987654321"]
            team_id: "support-team"
      session:
        prefix: "discord"
        ttl: 3600

A file holds one or more interfaces; a rule under an interface applies to that source. Errors name
the file, the line and the path (``discord.routing.rules[1].content_pattern``).
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dynamic_agents._redaction import names_a_credential
from dynamic_agents._validation import MAX_SECONDS, shown
from dynamic_agents.events import Target, TargetType
from dynamic_agents.events._types import source_name
from dynamic_agents.exceptions import RoutingConfigError
from dynamic_agents.routing._yaml import YamlPath, config_error, format_path, load_yaml
from dynamic_agents.routing.router import EventRouter
from dynamic_agents.routing.rules import ConfigTarget, RoutingRule
from dynamic_agents.secrets.references import masked_settings

if TYPE_CHECKING:
    from dynamic_agents.secrets import SecretsManager

__all__ = ["InterfaceConfig", "InterfaceRouting", "RoutingConfig", "SessionSettings"]


_ROUTING_KEYS: Final = frozenset({"rules", "default", *(f"default_{kind.value}" for kind in TargetType)})
"""The keys of ``routing:``, which are no settings of the interface."""
_INTERFACE_FIELDS: Final = ["routing", "session"]


def _default_target(data: Any) -> Any:
    """``default_agent`` / ``default_team`` / ``default_workflow`` → ``default``."""
    if not isinstance(data, Mapping):
        return data
    data = dict(data)
    given = [kind for kind in TargetType if data.get(f"default_{kind.value}") is not None]
    if len(given) > 1:
        raise ValueError(f"give one default, not {', '.join('default_' + k.value for k in given)}")
    if given and data.get("default") is not None:
        raise ValueError(f"give one default, not default_{given[0].value} and default")
    if given:
        data["default"] = {"type": given[0], "id": data.pop(f"default_{given[0].value}")}
    return data


class SessionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str | None = None
    # strict, as RouterConfig's numbers: text ("3600") and a boolean (YAML's yes) are refused (lax,
    # they were read as numbers, yes as one second); an int is still a float. Finite and at most
    # MAX_SECONDS, as every duration the library takes.
    ttl: float | None = Field(default=None, gt=0, le=MAX_SECONDS, allow_inf_nan=False, strict=True)

    @field_validator("prefix")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        """The prefix becomes part of session ids, and of Redis key names built from them; a
        blank one is surely a mistake (left out, the source is used)."""
        if value is not None and not value.strip():
            raise ValueError(
                f"session prefix {shown(value)} is blank: session ids are '{{prefix}}:{{channel}}' "
                "(give a name such as 'discord', or leave prefix out to use the source)"
            )
        if value is not None and any(unicodedata.category(char) == "Cc" for char in value):
            raise ValueError(
                f"session prefix {shown(value)} has a control character: it becomes part of session "
                "ids and key names (use letters, digits and punctuation)"
            )
        return value


class InterfaceRouting(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ConfigTarget | None = None
    rules: tuple[RoutingRule, ...] = ()

    _defaults = model_validator(mode="before")(_default_target)


class InterfaceConfig(BaseModel):
    """One interface: its routing, its session settings, and any other settings (kept as given)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    routing: InterfaceRouting = InterfaceRouting()
    session: SessionSettings = SessionSettings()

    @model_validator(mode="before")
    @classmethod
    def _no_misplaced_keys(cls, data: Any) -> Any:
        """See :func:`_misplaced_key`."""
        problem = _misplaced_key(data)
        if problem is not None:
            raise ValueError(problem[1])
        return data

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The other settings masked where they may hold a credential: a bot token pasted in
        place of a reference must not reach a log line through ``repr``."""
        extra = self.model_extra or {}
        for name, value in super().__repr_args__():
            yield name, (_masked(value, secret=names_a_credential(name)) if name in extra else value)

    @property
    def settings(self) -> dict[str, Any]:
        """The other settings (``token``, …), secret references unresolved."""
        return dict(self.model_extra or {})

    async def resolve_settings(
        self, secrets: SecretsManager, *, user_id: str | None = None
    ) -> dict[str, Any]:
        """The other settings with every secret reference resolved (``SecretValue``\\ s); one that
        cannot be resolved raises its :class:`SecretsError` naming the setting (``token: …``)."""
        resolved: dict[str, Any] = await secrets.resolve_all(self.settings, user_id=user_id, where="")
        return resolved


class RoutingConfig(BaseModel):
    """Interfaces by source name, and an optional global default target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interfaces: dict[str, InterfaceConfig] = Field(default_factory=dict)
    default: ConfigTarget | None = None

    @field_validator("interfaces")
    @classmethod
    def _scope_rules(cls, interfaces: dict[str, InterfaceConfig]) -> dict[str, InterfaceConfig]:
        """A rule under an interface applies to that source."""
        scoped = {}
        written: dict[str, str] = {}
        for name, interface in interfaces.items():
            source = _source(name)
            if source in written:
                raise ValueError(_given_twice(written[source], name))
            written[source] = name
            for index, rule in enumerate(interface.routing.rules):
                if rule.source is not None and rule.source != source:
                    raise ValueError(
                        f"{name}.routing.rules[{index}].source: " + _foreign_source(rule.source, source)
                    )
            rules = tuple(
                rule if rule.source is not None else rule.model_copy(update={"source": source})
                for rule in interface.routing.rules
            )
            routing = interface.routing.model_copy(update={"rules": rules})
            scoped[source] = interface.model_copy(update={"routing": routing})
        return scoped

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Self:
        """Interfaces as top-level keys; ``default_agent`` / ``default_team`` /
        ``default_workflow`` (or ``default: {type: agent, id: …}``) at the top level set the
        global default."""
        return cls._validate(data, source, {})

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<yaml>") -> Self:
        data, lines = load_yaml(text, source)
        return cls._validate(data, source, lines)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        return cls.from_yaml(_read(path), source=str(path))

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> Self:
        """One config from several files (``config/interfaces/*.yaml``); an interface or a global
        default given twice is an error."""
        if isinstance(paths, str | Path):  # a str would be read character by character
            raise TypeError(
                f"from_files takes an iterable of paths, got the path {str(paths)!r}: pass "
                "[path], or use from_file"
            )
        merged: dict[str, tuple[InterfaceConfig, str]] = {}
        default: tuple[Target, str] | None = None
        rule_names: dict[str, str] = {}
        for path in paths:
            source = str(path)
            data, lines = load_yaml(_read(path), source)
            config = cls._validate(data, source, lines)
            keys = _written_keys(lines)
            for name, interface in config.interfaces.items():
                if name in merged:
                    raise RoutingConfigError(
                        f"interface {name!r} is configured twice (first in {merged[name][1]})",
                        source=source,
                        line=lines.get((keys.get(name, name),)),
                        path=name,
                    )
                merged[name] = (interface, _place(source, lines.get((keys.get(name, name),))))
            _check_rule_names(config.interfaces, rule_names, source, lines)
            if config.default is not None:
                key = next((k for k in keys.values() if _names_the_default(k)), None)
                line = lines.get((key,)) if key is not None else None
                if default is not None:
                    raise RoutingConfigError(
                        f"a second global default (the first in {default[1]})",
                        source=source,
                        line=line,
                        path="" if key is None else str(key),
                    )
                default = (config.default, _place(source, line))
        return cls(
            interfaces={name: interface for name, (interface, _) in merged.items()},
            default=default[0] if default is not None else None,
        )

    @classmethod
    def _validate(cls, data: Any, source: str, lines: Mapping[YamlPath, int]) -> Self:
        if not isinstance(data, Mapping):
            raise RoutingConfigError(
                f"expected a mapping of interface names to settings, got {type(data).__name__}", source=source
            )
        interfaces = {k: v for k, v in data.items() if not _names_the_default(k)}
        written: dict[str, object] = {}
        for name, settings in interfaces.items():
            try:
                key = _source(str(name))
            except ValueError as error:
                problem = str(error)
            else:
                problem = _given_twice(written[key], name) if key in written else ""
                written[key] = name
            if problem:
                raise RoutingConfigError(problem, source=source, line=lines.get((str(name),)), path=str(name))
            misplaced = _misplaced_key(settings)
            if misplaced is not None:
                where = (str(name), misplaced[0])
                raise RoutingConfigError(
                    misplaced[1], source=source, line=lines.get(where), path=".".join(where)
                )
            stray = _stray_rule_source(key, settings)
            if stray is not None:
                rule_path: YamlPath = (str(name), "routing", "rules", stray[0], "source")
                raise RoutingConfigError(
                    stray[1], source=source, line=lines.get(rule_path), path=format_path(rule_path)
                )
        try:
            top = _default_target({k: v for k, v in data.items() if _names_the_default(k)})
            config = cls.model_validate({"interfaces": interfaces, **top})
        except ValidationError as error:
            raise config_error(error, source, lines) from None
        except ValueError as error:  # from a before-validator outside pydantic's wrapping
            raise RoutingConfigError(str(error), source=source) from None
        _check_rule_names(config.interfaces, {}, source, lines)
        return config

    # -- use --------------------------------------------------------------------------------------

    def router(self, **options: Any) -> EventRouter:
        """An :class:`EventRouter` with every interface's rules and defaults."""
        return EventRouter(
            [rule for interface in self.interfaces.values() for rule in interface.routing.rules],
            source_defaults={
                name: interface.routing.default
                for name, interface in self.interfaces.items()
                if interface.routing.default is not None
            },
            default=self.default,
            **options,
        )


def _read(path: str | Path) -> str:
    """The text of a config file; one that is not UTF-8 is a :class:`RoutingConfigError` naming the
    file and the line (a bare ``UnicodeDecodeError`` named neither)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RoutingConfigError(
            f"not UTF-8 text ({error.reason} at byte {error.start}): save the file as UTF-8",
            source=str(path),
            line=data.count(b"\n", 0, error.start) + 1,
        ) from None


def _misplaced_key(interface: Any) -> tuple[str, str] | None:
    """A key of an interface's settings that is surely a mistake, and what is wrong with it: a
    routing key at the interface level (``rules``, ``default_agent``) or a misspelt ``routing`` /
    ``session`` would be kept as a setting, and the interface would route nothing."""
    if not isinstance(interface, Mapping):
        return None
    for key in interface:
        name = str(key)
        if name in _ROUTING_KEYS:
            return name, f"{name!r} belongs under 'routing:' (here it would be kept as a setting)"
        if name not in _INTERFACE_FIELDS:
            close = difflib.get_close_matches(name.lower(), _INTERFACE_FIELDS, n=1, cutoff=0.75)
            if close:
                return name, (
                    f"{name!r} is not {close[0]!r}: a misspelling would be kept as a setting and "
                    f"{close[0]!r} left at its default (name other settings apart from it)"
                )
    return None


def _stray_rule_source(interface: str, settings: Any) -> tuple[int, str] | None:
    """The index of a rule written under ``interface`` whose ``source`` names another platform,
    and what is wrong with it (a ``source`` no event can have is left to the rule's validation)."""
    routing = settings.get("routing") if isinstance(settings, Mapping) else None
    rules = routing.get("rules") if isinstance(routing, Mapping) else None
    if not isinstance(rules, list | tuple):
        return None
    for index, rule in enumerate(rules):
        written = rule.get("source") if isinstance(rule, Mapping) else None
        if isinstance(written, str):
            try:
                other = source_name(written)
            except ValueError:
                continue
            if other != interface:
                return index, _foreign_source(other, interface)
    return None


def _foreign_source(rule_source: str, interface: str) -> str:
    # a platform name in shape can be a key pasted in the wrong place: shown() masks one
    return (
        f"source {shown(rule_source)} is not the interface's {interface!r}: a rule under an interface "
        "applies to its source (leave 'source' out, or move the rule under that source's interface)"
    )


def _names_the_default(key: object) -> bool:
    """A top-level key that sets the global default, not an interface: ``default_agent``,
    ``default_team``, ``default_workflow``, or ``default`` with a target, as under ``routing``."""
    return str(key) == "default" or str(key).startswith("default_")


def _source(name: str) -> str:
    """An interface's name as the source its events have (stripped, in lower case)."""
    return source_name(name, what="interface")


def _given_twice(first: object, second: object) -> str:
    return (
        f"interface {second!r} is given twice: {first!r} and {second!r} are one interface "
        "(sources are read in lower case)"
    )


def _masked(value: Any, *, secret: bool) -> Any:
    """A copy of a setting for ``repr`` (see :func:`masked_settings`): masked under a
    credential-named key, and wherever it is shaped like a key (a bot token pasted as a setting)."""
    return masked_settings(
        value, lambda key, _parent: names_a_credential(key), key_shaped=True, secret=secret
    )


def _check_rule_names(
    interfaces: Mapping[str, InterfaceConfig],
    seen: dict[str, str],
    source: str,
    lines: Mapping[YamlPath, int],
) -> None:
    """Refuse a rule name used twice (the router names the rule behind each decision); ``seen``
    maps the names met so far to where they were."""
    keys = _written_keys(lines)
    for interface_name, interface in interfaces.items():
        key = keys.get(interface_name, interface_name)
        for index, rule in enumerate(interface.routing.rules):
            path = f"{interface_name}.routing.rules[{index}].name"
            line = lines.get((key, "routing", "rules", index, "name"))
            if rule.name in seen:
                raise RoutingConfigError(
                    f"rule name {rule.name!r} is already used at {seen[rule.name]}: rule names must "
                    "be unique, across interfaces too",
                    source=source,
                    line=line,
                    path=path,
                )
            seen[rule.name] = f"{_place(source, line)} at {path}"


def _written_keys(lines: Mapping[YamlPath, int]) -> dict[str, str | int]:
    """The top-level keys as written in the file, by the name the config reads them as."""
    return {str(path[0]).strip().lower(): path[0] for path in lines if path}


def _place(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source
