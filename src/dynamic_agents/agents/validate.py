"""Cross-reference checks of specs against the registry, the models and each other.

Each problem is a :class:`SpecValidationError` naming the spec and the path inside it: an unknown
tool, schema or function (listing the registered ones), an unknown model, a member or step naming a
spec that does not exist or is disabled, a team that contains itself or holds teams too deep, a tool
that needs human confirmation.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dynamic_agents._validation import shown
from dynamic_agents.agents.registry import RegisteredTool, ToolRegistry
from dynamic_agents.agents.specs import (
    AgentSpec,
    AgentStep,
    ConditionStep,
    FunctionStep,
    LoopStep,
    RouterStep,
    SpecBase,
    SpecKind,
    StepSpec,
    TeamSpec,
    TeamStep,
    WorkflowSpec,
)
from dynamic_agents.exceptions import SpecValidationError

__all__ = ["check_offered_once", "check_spec", "disabled", "tool_names_offered"]

Lookup = Callable[[SpecKind, str], Awaitable[SpecBase | None]]


async def check_spec(
    spec: SpecBase,
    registry: ToolRegistry,
    lookup: Lookup,
    *,
    model_names: frozenset[str] | None,
    resolves_secrets: bool = False,
) -> None:
    """Raise :class:`SpecValidationError` for the first problem found in ``spec``;
    ``resolves_secrets``: whether secret references in tool parameters can be resolved."""
    try:
        if isinstance(spec, AgentSpec):
            _check_agent(spec, registry, model_names, resolves_secrets)
        elif isinstance(spec, TeamSpec):
            await _check_team(spec, lookup, model_names)
        elif isinstance(spec, WorkflowSpec):
            for index, step in enumerate(spec.steps):
                await _check_step(step, registry, lookup, f"steps[{index}]")
    except SpecValidationError as error:
        if error.spec:
            raise
        raise SpecValidationError(error.detail, spec=spec.ref, path=error.path) from None


def _check_model(name: str, model_names: frozenset[str] | None) -> None:
    if model_names is not None and name not in model_names:
        raise SpecValidationError(
            f"unknown model {shown(name)}; the router has: {', '.join(sorted(model_names))}",
            path="model.name",
        )


def _check_agent(
    spec: AgentSpec, registry: ToolRegistry, model_names: frozenset[str] | None, resolves_secrets: bool
) -> None:
    _check_model(spec.model.name, model_names)
    offered: dict[str, int] = {}
    for index, ref in enumerate(spec.tools):
        try:
            tool = registry.get_tool(ref.name)
        except SpecValidationError as error:
            raise SpecValidationError(error.detail, path=f"tools[{index}].name") from None
        if tool.requires_confirmation:
            raise SpecValidationError(
                f"tool {ref.name!r} requires human confirmation or input (agno pauses the run for it), "
                "which this library cannot pause for yet",
                path=f"tools[{index}].name",
            )
        if ref.parameters and not tool.factory:
            raise SpecValidationError(
                f"tool {ref.name!r} takes no parameters (it is a function, not a toolkit factory)",
                path=f"tools[{index}].parameters",
            )
        if tool.factory:
            _check_factory_parameters(tool, ref.parameters, f"tools[{index}].parameters")
            if ref.has_references and not resolves_secrets:
                raise SpecValidationError(
                    f"tool {ref.name!r} has secret references in its parameters, and this runtime has "
                    "no secrets manager to resolve them (AgentRuntime(..., secrets=SecretsManager(…)))",
                    path=f"tools[{index}].parameters",
                )
        else:  # a factory's tools are known only when it runs: the builder checks those
            check_offered_once(offered, tool_names_offered(tool.name, tool.target), spec, index)
    if spec.output_schema is not None:
        try:
            registry.get_schema(spec.output_schema)
        except SpecValidationError as error:
            raise SpecValidationError(error.detail, path="output_schema") from None


def tool_names_offered(name: str, built: Any) -> list[str]:
    """The names the model is offered for a tool registered as ``name`` and built as ``built``:
    an agno Toolkit's own tools, else the registered name (the builder gives it to the tool)."""
    functions = getattr(built, "functions", None)
    if isinstance(functions, dict):
        return list(dict.fromkeys([*functions, *(getattr(built, "async_functions", None) or {})]))
    return [name]


def check_offered_once(offered: dict[str, int], names: list[str], spec: AgentSpec, index: int) -> None:
    """Record the names ``spec.tools[index]`` offers; two tools offering one name are an error,
    since agno keeps the first and drops the other."""
    for offered_name in names:
        first = offered.setdefault(offered_name, index)
        if first != index:
            raise SpecValidationError(
                f"tools[{first}] ({spec.tools[first].name!r}) and tools[{index}] "
                f"({spec.tools[index].name!r}) both offer the model a tool named {offered_name!r}: "
                "agno would keep the first and drop the other",
                spec=spec.ref,
                path=f"tools[{index}].name",
            )


def _check_factory_parameters(tool: RegisteredTool, parameters: Mapping[str, Any], path: str) -> None:
    """The factory must accept the spec's parameters: a wrong name is an error at load, not a
    ``TypeError`` on every run. Only names are shown (a value may be a secret)."""
    try:
        signature = inspect.signature(tool.target)
    except (TypeError, ValueError):  # no signature to check against (some builtins)
        return
    try:
        signature.bind(**parameters)
    except TypeError as error:
        takes = ", ".join(signature.parameters) or "none"
        raise SpecValidationError(
            f"tool {tool.name!r} cannot be built with these parameters: {error}; it takes: {takes}",
            path=path,
        ) from None


def disabled(spec: SpecBase) -> SpecValidationError:
    """The error of running a disabled spec: ``agent 'a' at status: it is disabled (…)``."""
    return SpecValidationError("it is disabled (status 'active' runs it)", spec=spec.ref, path="status")


async def _check_target(kind: SpecKind, target_id: str, lookup: Lookup, path: str) -> SpecBase:
    target = await lookup(kind, target_id)
    if target is None:
        # shown as the registry shows an unknown tool: masked when it is a key pasted in the wrong place
        raise SpecValidationError(f"unknown {kind.value} {shown(target_id)}", path=path)
    if not target.active:
        raise SpecValidationError(f"{kind.value} {target_id!r} is disabled", path=path)
    return target


async def _check_team(spec: TeamSpec, lookup: Lookup, model_names: frozenset[str] | None) -> None:
    _check_model(spec.model.name, model_names)
    listed: dict[tuple[SpecKind, str], int] = {}
    for index, member in enumerate(spec.members):
        # twice, a member ran twice in a broadcast (its cost and its tools' side effects)
        first = listed.setdefault((member.kind, member.id), index)
        if first != index:
            raise SpecValidationError(
                f"{member.kind.value} {shown(member.id)} is members[{first}] already",
                path=f"members[{index}]",
            )
        await _check_target(member.kind, member.id, lookup, f"members[{index}]")
    await _check_no_cycle(spec, lookup)


MAX_TEAM_DEPTH = 10
"""How many levels of teams a team may hold, itself the first: one built and run deeper (a
member's member's …) recursed past Python's limit (a bare ``RecursionError`` out of ``execute``)."""


async def _check_no_cycle(spec: TeamSpec, lookup: Lookup) -> None:
    """A team may not contain itself, directly or through member teams, nor hold teams more than
    :data:`MAX_TEAM_DEPTH` levels deep. Each team is read and searched once: a team reached again
    by another path holds no cycle (one through it would have been found the first time), and its
    depth is known (else a team reached by many paths was read once per path)."""
    levels: dict[str, int] = {}  # the levels of teams each searched team holds, itself included

    def too_deep(chain: tuple[str, ...], member: str, below: int, path: str) -> SpecValidationError:
        more = f", which holds {below - 1} more levels" if below > 1 else ""
        nested = " -> ".join((*chain, member))
        return SpecValidationError(f"teams nested more than {MAX_TEAM_DEPTH} deep: {nested}{more}", path=path)

    async def visit(team: TeamSpec, chain: tuple[str, ...], path: str) -> int:
        deepest = 0
        for index, member in enumerate(team.members):
            if member.kind is not SpecKind.TEAM:
                continue
            member_path = f"{path}members[{index}]" if path else f"members[{index}]"
            if member.id in chain:
                cycle = " -> ".join((*chain, member.id))
                raise SpecValidationError(f"member cycle: {cycle}", path=member_path)
            if len(chain) >= MAX_TEAM_DEPTH:  # refused before going deeper
                raise too_deep(chain, member.id, 1, member_path)
            below = levels.get(member.id)
            if below is None:
                nested = spec if member.id == spec.id else await lookup(SpecKind.TEAM, member.id)
                below = (
                    await visit(nested, (*chain, member.id), f"{member_path}.")
                    if isinstance(nested, TeamSpec)
                    else 1
                )
                levels[member.id] = below
            elif len(chain) + below > MAX_TEAM_DEPTH:  # searched before, less deep than here
                raise too_deep(chain, member.id, below, member_path)
            deepest = max(deepest, below)
        return deepest + 1

    await visit(spec, (spec.id,), "")


async def _check_step(step: StepSpec, registry: ToolRegistry, lookup: Lookup, path: str) -> None:
    def function(name: str, where: str) -> None:
        try:
            registry.get_function(name)
        except SpecValidationError as error:
            raise SpecValidationError(error.detail, path=f"{path}.{where}") from None

    if isinstance(step, AgentStep):
        await _check_target(SpecKind.AGENT, step.agent, lookup, f"{path}.agent")
    elif isinstance(step, TeamStep):
        await _check_target(SpecKind.TEAM, step.team, lookup, f"{path}.team")
    elif isinstance(step, FunctionStep):
        function(step.function, "function")
    elif isinstance(step, ConditionStep):
        function(step.evaluator, "evaluator")
    elif isinstance(step, LoopStep) and step.end_condition is not None:
        function(step.end_condition, "end_condition")
    elif isinstance(step, RouterStep):
        function(step.selector, "selector")
    children = {"steps": getattr(step, "steps", ()), "choices": getattr(step, "choices", ())}
    for field_name, nested in children.items():
        for index, child in enumerate(nested):
            await _check_step(child, registry, lookup, f"{path}.{field_name}[{index}]")
