"""Specs into agno objects: a fresh Agent / Team / Workflow for every run.

agno objects carry per-run state, so one object is never shared between concurrent runs; building
from a validated spec is cheap (agno's own server deep-copies an agent per request instead). Every
object gets ``telemetry=False``, the session db, and a model from the :class:`ModelProvider`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

try:
    from agno.agent import Agent
    from agno.exceptions import AgentRunException, OutputCheckError, RunCancelledException
    from agno.media import Audio, File, Image, Video
    from agno.team import Team
    from agno.tools import Toolkit
    from agno.tools.function import Function
    from agno.workflow import Condition, Loop, Parallel, Router, Step, Workflow
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("agno agents (AgentRuntime, its builders and executor)", "agents") from error

from dynamic_agents._logging import AGNO_LOGGERS
from dynamic_agents._redaction import protect_loggers, redact_text
from dynamic_agents.agents.registry import APPROVAL_MARK, TOOL_NAME, ToolRegistry
from dynamic_agents.agents.specs import (
    AgentSpec,
    AgentStep,
    ConditionStep,
    FunctionStep,
    LoopStep,
    ModelSettings,
    ParallelStep,
    RouterStep,
    SpecKind,
    StepSpec,
    TeamSpec,
    TeamStep,
    ToolRef,
    WorkflowSpec,
)
from dynamic_agents.agents.validate import check_offered_once, tool_names_offered
from dynamic_agents.events import Attachment
from dynamic_agents.exceptions import EventValidationError, FieldError, SpecValidationError

__all__ = ["Builder", "Media", "ModelProvider", "RouterModels", "media_from_attachments", "member_name"]

# agno logs a failed tool's message and traceback (which may quote the key its toolkit was built
# with) on loggers that do not propagate: masked here, whatever models the runtime uses (the LLM
# router's agno models protect them too)
protect_loggers(*AGNO_LOGGERS)


class ModelProvider(Protocol):
    """Gives the agno model for a spec's model settings (and the user running it)."""

    def model(self, settings: ModelSettings, *, user_id: str | None) -> Any: ...

    def model_names(self) -> frozenset[str] | None:
        """The model names it knows (checked when specs load), or ``None`` to accept any."""
        ...


class RouterModels:
    """Models calling through an :class:`~dynamic_agents.llm.LLMRouter` (with the user's key)."""

    def __init__(self, router: Any) -> None:
        from dynamic_agents.llm import agno_model

        self.router = router
        self._agno_model = agno_model

    def model(self, settings: ModelSettings, *, user_id: str | None) -> Any:
        return self._agno_model(
            self.router,
            settings.name,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            tags=settings.tags or None,
            user_id=user_id,
        )

    def model_names(self) -> frozenset[str] | None:
        names: frozenset[str] = self.router.config.model_names
        return names


@dataclass(slots=True)
class Media:
    """Request attachments as agno media."""

    images: list[Any] = field(default_factory=list)
    audio: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    files: list[Any] = field(default_factory=list)

    def run_kwargs(self) -> dict[str, list[Any]]:
        kwargs = {"images": self.images, "audio": self.audio, "videos": self.videos, "files": self.files}
        return {name: items for name, items in kwargs.items() if items}


_MEDIA_KINDS: Final = ("image", "audio", "video")
_FILE_MIME_TYPES: Final = frozenset(File.valid_mime_types())


def media_from_attachments(attachments: Sequence[Attachment]) -> Media:
    """Images, audio, video and files by URL or inline bytes (``data_base64``): by ``kind`` when it
    is ``image``, ``audio`` or ``video`` (in any case), else by an ``image/``, ``audio/`` or
    ``video/`` ``content_type`` (in any case, as MIME types are), else a file. The content type
    goes along as the mime type, in lower case and without parameters, unless it is of another
    family than a media kind that won over it, or a file's type agno does not take."""
    media = Media()
    for index, attachment in enumerate(attachments):
        kind = attachment.kind.strip().lower()  # a free string: "Image" is an image
        mime = _mime_essence(attachment.content_type)
        source: dict[str, Any] = {}
        if attachment.url:
            source["url"] = attachment.url
        elif attachment.data_base64:
            source["content"] = _decode_base64(attachment.data_base64, f"attachments[{index}].data_base64")
        else:
            continue  # nothing to send
        family, slash, _ = mime.partition("/")
        if not slash:
            family = mime = ""  # no MIME type: nothing to go by, nothing to send
        if kind in _MEDIA_KINDS:
            # a media kind wins over a content type that disagrees with it, which is then not
            # sent: a provider may refuse audio said to be image/png
            if family != kind:
                mime = ""
        else:
            # "file" (the default) or a platform's own kind says nothing of the media, so the
            # content type does
            kind = family if family in _MEDIA_KINDS else "file"
        if kind == "image":
            media.images.append(Image(mime_type=mime or None, **source))
        elif kind == "audio":
            media.audio.append(Audio(mime_type=mime or None, **source))
        elif kind == "video":
            media.videos.append(Video(mime_type=mime or None, **source))
        else:
            # agno's File takes only the types it lists and raises for any other (the run
            # failed on application/octet-stream): it goes without one, agno guessing by name
            mime = mime if mime in _FILE_MIME_TYPES else ""
            media.files.append(File(mime_type=mime or None, filename=attachment.filename, **source))
    return media


def _mime_essence(content_type: str | None) -> str:
    """``type/subtype`` in lower case (MIME types are case-insensitive, RFC 2045), without
    parameters (``; charset=utf-8``); ``""`` for none."""
    return (content_type or "").partition(";")[0].strip().lower()


def _decode_base64(data: str, location: str) -> bytes:
    """Strictly (line breaks aside): a lenient decode drops what is not base64 and hands the
    model corrupted bytes."""
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        error = FieldError(location, "not valid base64 (standard alphabet, padded)")
        raise EventValidationError("AgentRequestEvent", (error,)) from None


Resolve = Callable[[SpecKind, str], Awaitable[Any]]
"""Builds the agno object of another spec (a team's member, a workflow step's agent)."""


class Builder:
    """Builds agno objects from validated specs."""

    def __init__(self, registry: ToolRegistry, models: ModelProvider, db: Any = None) -> None:
        self.registry = registry
        self.models = models
        self.db = db

    def agent(
        self,
        spec: AgentSpec,
        *,
        user_id: str | None = None,
        tool_parameters: Sequence[Mapping[str, Any]] | None = None,
    ) -> Any:
        """A fresh agno ``Agent``; ``tool_parameters``, one per tool, stand in for the spec's
        parameters (:class:`AgentRuntime` gives them with secret references resolved)."""
        options: dict[str, Any] = {
            "add_history_to_context": spec.add_history_to_context,
            "enable_session_summaries": spec.enable_session_summaries,
            "enable_agentic_memory": spec.enable_agentic_memory,
            "update_memory_on_run": spec.update_memory_on_run,
        }
        for name in (
            "num_history_runs",
            "num_history_messages",
            "add_session_summary_to_context",
            "add_memories_to_context",
        ):
            if getattr(spec, name) is not None:
                options[name] = getattr(spec, name)
        return Agent(
            **self._common(spec, user_id),
            tools=self._tools(spec, tool_parameters) or None,
            output_schema=self.registry.get_schema(spec.output_schema) if spec.output_schema else None,
            **options,
        )

    def _tools(self, spec: AgentSpec, parameters: Sequence[Mapping[str, Any]] | None) -> list[Any]:
        tools: list[Any] = []
        offered: dict[str, int] = {}
        for index, ref in enumerate(spec.tools):
            try:
                tool = self._tool(ref, ref.parameters if parameters is None else parameters[index])
            except SpecValidationError:
                raise
            except Exception as error:  # the host's toolkit factory refused the spec's values
                raise SpecValidationError(
                    f"tool {ref.name!r} could not be built from its parameters: its factory raised "
                    f"{type(error).__name__} (its message is left out: it may repeat a value)",
                    spec=spec.ref,
                    path=f"tools[{index}].parameters",
                ) from None
            if isinstance(tool, Function):  # a registered one renamed, or one a factory made
                names = [tool.name]
            elif isinstance(tool, Toolkit) or not callable(tool):
                names = tool_names_offered(ref.name, tool)
            else:
                names = [str(getattr(tool, "__name__", ref.name))]
            check_offered_once(offered, names, spec, index)
            tools.append(_masking_errors(tool))
        return tools

    def _tool(self, ref: ToolRef, parameters: Mapping[str, Any]) -> Any:
        """The tool a spec names, under the name it is registered by: that is the name the model
        sees and calls (two closures both named ``search``, registered as ``web_search`` and
        ``news_search``, would otherwise reach agno as one name, and agno keeps only the first)."""
        registered = self.registry.get_tool(ref.name)
        tool = registered.build(parameters)
        if isinstance(tool, Function):
            if tool.name == registered.name or not TOOL_NAME.fullmatch(registered.name):
                # a toolkit's registry key may be any text ("search.web"): a model API refuses
                # such a function name, so a factory's agno tool keeps its own then
                return tool
            renamed = tool.model_copy()  # agno's own override: shallow, the callables shared
            renamed.name = registered.name
            return renamed
        if registered.factory or isinstance(tool, Toolkit) or not callable(tool):
            return tool
        if getattr(tool, "__name__", None) == registered.name:
            return tool
        return Function.from_callable(tool, name=registered.name)

    async def team(self, spec: TeamSpec, resolve: Resolve, *, user_id: str | None = None) -> Any:
        members = [await resolve(member.kind, member.id) for member in spec.members]
        options: dict[str, Any] = {}
        if spec.num_history_runs is not None:
            options["num_history_runs"] = spec.num_history_runs
        if spec.mode == "route":
            options["post_hooks"] = [_fail_with_a_failed_member]
        return Team(
            **self._common(spec, user_id),
            members=members,
            mode=spec.mode,
            add_history_to_context=spec.add_history_to_context,
            add_team_history_to_members=spec.add_team_history_to_members,
            num_team_history_runs=spec.num_team_history_runs,
            share_member_interactions=spec.share_member_interactions,
            determine_input_for_members=spec.determine_input_for_members,
            **options,
        )

    def _common(self, spec: AgentSpec | TeamSpec, user_id: str | None) -> dict[str, Any]:
        """The arguments an agno ``Agent`` and ``Team`` take alike."""
        return {
            "id": spec.id,
            "name": spec.name or spec.id,
            "description": spec.description,
            "model": self.models.model(spec.model, user_id=user_id),
            "instructions": list(spec.instructions)
            if isinstance(spec.instructions, tuple)
            else spec.instructions,
            "expected_output": spec.expected_output,
            "markdown": spec.markdown,
            "db": self.db,
            "telemetry": False,
        }

    async def workflow(self, spec: WorkflowSpec, resolve: Resolve) -> Any:
        return Workflow(
            id=spec.id,
            name=spec.name or spec.id,
            description=spec.description,
            steps=await self._steps(spec.steps, resolve, "steps"),
            db=self.db,
            telemetry=False,
        )

    async def _steps(self, steps: Sequence[StepSpec], resolve: Resolve, path: str) -> list[Any]:
        return [await self._step(step, resolve, f"{path}[{n}]") for n, step in enumerate(steps)]

    async def _step(self, step: StepSpec, resolve: Resolve, path: str) -> Any:  # noqa: PLR0911 - one branch per kind
        name = step.name
        if isinstance(step, AgentStep):
            return Step(name=name or step.agent, agent=await resolve(SpecKind.AGENT, step.agent))
        if isinstance(step, TeamStep):
            return Step(name=name or step.team, team=await resolve(SpecKind.TEAM, step.team))
        if isinstance(step, FunctionStep):
            return Step(name=name or step.function, executor=self.registry.get_function(step.function))
        if isinstance(step, ParallelStep):
            steps = await self._steps(step.steps, resolve, f"{path}.steps")
            return Parallel(*steps, name=name or "parallel")
        if isinstance(step, ConditionStep):
            return Condition(
                name=name or step.evaluator,
                evaluator=self.registry.get_function(step.evaluator),
                steps=await self._steps(step.steps, resolve, f"{path}.steps"),
            )
        if isinstance(step, LoopStep):
            return Loop(
                name=name or "loop",
                steps=await self._steps(step.steps, resolve, f"{path}.steps"),
                max_iterations=step.max_iterations,
                end_condition=self.registry.get_function(step.end_condition) if step.end_condition else None,
            )
        if isinstance(step, RouterStep):
            return Router(
                name=name or step.selector,
                selector=self.registry.get_function(step.selector),
                choices=await self._steps(step.choices, resolve, f"{path}.choices"),
            )
        raise SpecValidationError(f"unknown step type {type(step).__name__}", path=path)


class _ToolError(Exception):
    """A tool's exception as the model is told it (the original is its ``__cause__``)."""


def _masking_errors(tool: Any) -> Any:
    """``tool`` with :func:`_tell_tool_error` around each of its functions, outermost (their own
    hooks kept): agno hands a failed tool's exception text to the model as the tool's result and
    stores it with the run, and a provider's refusal may quote the key the tool was built with.
    A Toolkit is copied (its functions with the hook), never changed: one registered with
    ``add_tool`` serves every run. Left as they are: a provider's built-in tool (a dict), a
    Toolkit that connects first (its functions are made then), and a function marked by agno's
    ``@approval`` (the registry refuses it; agno reads the mark on the function itself)."""
    if isinstance(tool, Function):
        masked = tool.model_copy()  # shallow, as agno's own per-run copies
        masked.tool_hooks = [_tell_tool_error, *(tool.tool_hooks or ())]
        return masked
    if isinstance(tool, Toolkit):
        if tool.requires_connect:
            return tool
        kit = copy.copy(tool)
        kit.functions = {name: _masking_errors(f) for name, f in tool.functions.items()}
        kit.async_functions = {name: _masking_errors(f) for name, f in tool.async_functions.items()}
        return kit
    if callable(tool) and hasattr(tool, "__name__") and getattr(tool, APPROVAL_MARK, None) is None:
        return _masking_errors(Function.from_callable(tool))
    return tool


def _told(error: BaseException) -> _ToolError:
    """What the model is told of a tool's exception (agno tells it ``str(error)``): its type, which
    is all a ``TimeoutError`` says (the model was told ``""``, as if the tool had answered
    nothing) and what a ``KeyError`` means, and its text with secrets masked."""
    text = redact_text(str(error))
    return _ToolError(f"{type(error).__name__}: {text}" if text else type(error).__name__)


def _tell_tool_error(function_call: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """An agno tool hook: the tool's exception goes on as :func:`_told` (agno's own signals to
    stop, retry or cancel the run go on as they are). Sync, so agno still runs a sync tool in a
    thread; an async tool's call is awaited by agno, through :func:`_told_awaited`."""
    try:
        result = function_call(**arguments)
    except (AgentRunException, RunCancelledException):
        raise
    except Exception as error:
        raise _told(error) from error
    return _told_awaited(result) if inspect.isawaitable(result) else result


async def _told_awaited(result: Awaitable[Any]) -> Any:
    try:
        return await result
    except (AgentRunException, RunCancelledException):
        raise
    except asyncio.CancelledError as error:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the run is being stopped
        # a future cancelled under the tool (a client closing its pool), not the run: it went
        # through agno and out of execute as if the caller had been cancelled
        raise _told(error) from error
    except Exception as error:
        raise _told(error) from error


def _failed_members(output: Any) -> list[tuple[str, str]]:
    """(member id, error) of each member run of a team's ``output`` that ended in an error."""
    return [
        (member_name(member), str(getattr(member, "content", None) or ""))
        for member in getattr(output, "member_responses", None) or ()
        if str(getattr(getattr(member, "status", None), "value", None)).upper() == "ERROR"
    ]


def member_name(run: Any) -> str:
    """The agent or team id of a member's run output (or event)."""
    return str(getattr(run, "agent_id", None) or getattr(run, "team_id", None) or "?")


def _fail_with_a_failed_member(run_output: Any) -> None:
    """A route team's post-hook: the member's reply is the team's, so a member whose run failed
    fails the team's run, which agno reports completed with the error text as its reply (and a
    workflow step or an enclosing team took it as an answer). agno makes the run an error for an
    ``OutputCheckError``. A streamed run has no member responses here: the runtime sees the
    members' error events instead."""
    failed = _failed_members(run_output)
    if failed:
        message = "; ".join(f"member {member!r} failed: {error}" for member, error in dict.fromkeys(failed))
        run_output.content = message
        raise OutputCheckError(message)
