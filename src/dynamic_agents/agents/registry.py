"""``ToolRegistry``: the only code a spec can reach, by name.

Specs name tools, agno toolkits, output schemas and workflow functions; the host registers them
here. An unknown name is a validation error listing the known ones. Nothing a spec says can import a
module or run a file.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from dynamic_agents._validation import a_type, check_choice, shown
from dynamic_agents.exceptions import ConfigurationError, SpecValidationError

__all__ = ["RegisteredTool", "ToolRegistry"]

F = TypeVar("F", bound=Callable[..., Any])
V = TypeVar("V")
Kind = Literal["tool", "schema", "function"]


class _Kind(StrEnum):  # Kind's values, for the check of a kind given at run time
    TOOL = "tool"
    SCHEMA = "schema"
    FUNCTION = "function"


TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""The function names model APIs accept (OpenAI's and Anthropic's rule): the model sees this name."""

PAUSING_FLAGS = ("requires_confirmation", "requires_user_input", "external_execution")
"""agno tool flags that pause a run until someone answers it."""

PAUSING_TOOLKIT_LISTS = ("requires_confirmation_tools", "external_execution_required_tools")
"""An agno Toolkit's lists of its tools that pause a run."""


def _is_agno_function(target: object) -> bool:
    """Whether ``target`` is an agno ``Function`` (what ``@tool`` makes: not callable itself)."""
    try:
        from agno.tools.function import Function
    except ImportError:  # agno is an extra: without it, nothing is one
        return False
    return isinstance(target, Function)


APPROVAL_MARK = "_agno_approval_type"
"""What agno's ``@approval`` sets on a plain function (``@tool`` reads it to pause the run)."""


def _pauses(function: Any) -> bool:
    # @approval marks a plain function only: a function renamed for the model reaches agno as a
    # Function made without the mark, which ran with no approval asked
    return getattr(function, APPROVAL_MARK, None) is not None or any(
        bool(getattr(function, flag, False)) for flag in PAUSING_FLAGS
    )


@dataclass(frozen=True, slots=True)
class RegisteredTool:
    """A tool by name: a plain function (or agno tool object), or a toolkit factory called with
    the spec's parameters."""

    name: str
    target: Any
    factory: bool = False
    requires_confirmation: bool = False

    def build(self, parameters: Mapping[str, Any]) -> Any:
        if self.factory:
            # a copy for each build: a factory keeping a dict or list it is given and changing it
            # (adding its own header) changed the cached spec's parameters for every later run
            return self.target(**copy.deepcopy(dict(parameters)))
        if parameters:
            raise SpecValidationError(
                f"tool {self.name!r} takes no parameters (register a toolkit factory to configure it)"
            )
        return self.target


class ToolRegistry:
    """Registered tools, toolkits, output schemas and workflow functions, by name::

    registry = ToolRegistry()

    @registry.tool
    def get_weather(city: str) -> str: ...

    registry.toolkit("search", lambda max_results=5: DuckDuckGoTools(max_results=max_results))
    registry.schema("Ticket", Ticket)        # a pydantic model
    registry.function("is_urgent", is_urgent)  # workflow steps, evaluators, selectors
    """

    def __init__(self) -> None:
        self._tools: dict[str, RegisteredTool] = {}
        self._schemas: dict[str, type[BaseModel]] = {}
        self._functions: dict[str, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        return (
            f"ToolRegistry({len(self._tools)} tools, {len(self._schemas)} schemas, "
            f"{len(self._functions)} functions)"
        )

    # -- registering --------------------------------------------------------------------------------

    def tool(self, function: F) -> F:
        """Register a function (or an agno tool) under its name; usable as a decorator."""
        self.add_tool(function)
        return function

    def add_tool(
        self, function: Any, *, name: str | None = None, requires_confirmation: bool = False
    ) -> None:
        """Register a function or agno tool, optionally under another name.

        ``requires_confirmation`` marks a tool that needs a human's approval (agno's
        ``@tool(requires_confirmation=True)``, ``requires_user_input`` and ``external_execution``,
        which pause the run too, are detected, in an agno ``Toolkit`` too): specs that use it are
        refused at load, since no pause/resume flow exists yet.
        """
        is_toolkit = isinstance(getattr(function, "functions", None), dict)  # its tools keep their names
        # the kinds agno takes as a tool (a dict: a provider's built-in tool, passed through); 5 was
        # registered, and every spec naming it failed to build
        agno_takes = callable(function) or is_toolkit or isinstance(function, dict)
        if not (agno_takes or _is_agno_function(function)):
            named = f"tool {name!r}" if isinstance(name, str) and name else "a tool"
            raise ConfigurationError(
                f"{named} must be a function, an agno tool (@tool) or Toolkit, or a dict (a provider's "
                f"built-in tool, with name=…), got {shown(function)}"
            )
        tool_name = str(name or getattr(function, "name", None) or getattr(function, "__name__", ""))
        if tool_name and not is_toolkit and not TOOL_NAME.fullmatch(tool_name):
            raise ConfigurationError(
                f"tool name {tool_name!r} is not one a model can call: use 1 to 64 letters, digits, "
                "'_' and '-' (pass name=… to register it under another)"
            )
        confirm = requires_confirmation or _pauses(function)
        if is_toolkit:  # an agno Toolkit: its lists of such tools, and its tools' own flags
            functions = [
                *function.functions.values(),
                *(getattr(function, "async_functions", None) or {}).values(),
            ]
            confirm = (
                confirm
                or any(getattr(function, listed, None) for listed in PAUSING_TOOLKIT_LISTS)
                or any(_pauses(member) for member in functions)
            )
        self._add_tool(RegisteredTool(tool_name, function, requires_confirmation=confirm))

    def toolkit(self, name: str, factory: Callable[..., Any], *, requires_confirmation: bool = False) -> None:
        """Register a factory building an agno Toolkit (or tool) from a spec's ``parameters``
        (a built Toolkit is registered with :meth:`add_tool`)."""
        if not callable(factory):  # else every spec naming it fails to build, blaming its parameters
            raise ConfigurationError(
                f"toolkit {name!r} must be a callable building the toolkit from a spec's parameters "
                f"(a class or function), got {a_type(factory)}: register a built Toolkit "
                "with add_tool()"
            )
        self._add_tool(
            RegisteredTool(name, factory, factory=True, requires_confirmation=requires_confirmation)
        )

    def schema(self, name: str, model: type[BaseModel]) -> None:
        """Register a pydantic model specs may name as ``output_schema``."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigurationError(f"schema {name!r} must be a pydantic model class, got {model!r}")
        self._check_new("schema", name, self._schemas)
        self._schemas[name] = model

    def function(self, name: str, function: Callable[..., Any]) -> None:
        """Register a workflow step function, condition evaluator, loop end condition or router
        selector."""
        if not callable(function):
            raise ConfigurationError(f"function {name!r} must be callable, got {shown(function)}")
        self._check_new("function", name, self._functions)
        self._functions[name] = function

    def _add_tool(self, tool: RegisteredTool) -> None:
        self._check_new("tool", tool.name, self._tools)
        self._tools[tool.name] = tool

    @staticmethod
    def _check_new(kind: str, name: str, registered: Mapping[str, object]) -> None:
        if not name:
            raise ConfigurationError(f"a {kind} needs a name")
        if name in registered:
            raise ConfigurationError(f"{kind} {name!r} is already registered")

    # -- looking up ---------------------------------------------------------------------------------

    def names(self, kind: Kind) -> list[str]:
        registries: dict[str, Mapping[str, object]] = {
            "tool": self._tools,
            "schema": self._schemas,
            "function": self._functions,
        }
        return sorted(registries[check_choice("kind", kind, _Kind).value])

    def get_tool(self, name: str) -> RegisteredTool:
        return self._lookup("tool", name, self._tools)

    def get_schema(self, name: str) -> type[BaseModel]:
        return self._lookup("schema", name, self._schemas)

    def get_function(self, name: str) -> Callable[..., Any]:
        return self._lookup("function", name, self._functions)

    def _lookup(self, kind: Kind, name: str, registered: Mapping[str, V]) -> V:
        try:
            return registered[name]
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            raise SpecValidationError(f"unknown {kind} {shown(name)}; registered: {known}") from None
