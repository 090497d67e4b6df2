"""``AgentRuntime``: specs from a store, built into agno objects, executed with persisted sessions.

The runtime caches each validated spec and reads it from the store again at most every
``max_staleness`` seconds before executing, so a spec changed by another process is used within
that bound. Every run gets a freshly built agno object.

Sessions: agno shares history by ``session_id`` across agents, so two bots answering one channel
would read each other's history. The runtime gives agno ``"{kind}:{id}:{session_id}"``: each
target keeps its own history per conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from pydantic import BaseModel, JsonValue

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import redact_text
from dynamic_agents._validation import check_seconds
from dynamic_agents.agents.build import Builder, ModelProvider, media_from_attachments, member_name
from dynamic_agents.agents.registry import ToolRegistry
from dynamic_agents.agents.specs import AgentSpec, SpecBase, SpecKind, SpecStatus, TeamSpec, WorkflowSpec
from dynamic_agents.agents.stores import SpecStore
from dynamic_agents.agents.validate import check_spec, disabled
from dynamic_agents.events import AgentRequestEvent, Attachment, ResponseStatus, Target, TargetType
from dynamic_agents.exceptions import SpecNotFoundError, SpecValidationError
from dynamic_agents.execution import DeltaCallback, ExecutionResult, TokenUsage
from dynamic_agents.secrets.manager import SecretsManager, reveal_all

__all__ = ["AgentRuntime", "AgnoExecutor", "agno_session_id"]

logger = get_logger("agents")


def agno_session_id(kind: SpecKind, spec_id: str, session_id: str) -> str:
    """The session id agno sees for one target's conversation."""
    return f"{kind.value}:{spec_id}:{session_id}"


@dataclass(slots=True)
class _Cached:
    spec: SpecBase
    checked_at: float


class AgentRuntime:
    """Specs, registry, models and the session db, put together to execute agents, teams and
    workflows. ``agents``, ``teams`` and ``workflows`` are the per-kind managers."""

    def __init__(
        self,
        store: SpecStore,
        registry: ToolRegistry,
        models: ModelProvider,
        *,
        db: Any = None,
        secrets: SecretsManager | None = None,
        max_staleness: float = 5.0,
        cancel_grace: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from dynamic_agents.agents.managers import AgentManager, TeamManager, WorkflowManager

        self.store = store
        self.registry = registry
        self.models = models
        self.db = db
        self.secrets = secrets
        # NaN would compare false with every age and grace period: refused, as negatives are
        self.max_staleness = check_seconds("max_staleness", max_staleness, zero=True, forever=True)
        self.cancel_grace = check_seconds("cancel_grace", cancel_grace, zero=True)
        self._clock = clock
        self._builder = Builder(registry, models, db)
        self._cache: dict[tuple[SpecKind, str], _Cached] = {}
        self.agents = AgentManager(self)
        self.teams = TeamManager(self)
        self.workflows = WorkflowManager(self)

    def __repr__(self) -> str:
        return f"AgentRuntime(store={type(self.store).__name__}, cached={len(self._cache)})"

    async def aclose(self) -> None:
        """Close the session db and the spec store (the store even when closing the db fails).

        An async db's ``close()`` is awaited; a sync one's runs in a thread, off the event loop
        (closing a pool or a socket can block)."""
        try:
            close = getattr(self.db, "close", None)
            if close is not None:
                await _off_the_loop(close)
        finally:
            await self.store.aclose()

    async def __aenter__(self) -> AgentRuntime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- specs --------------------------------------------------------------------------------------

    async def validate(self, spec: SpecBase) -> None:
        """Check ``spec``'s references (tools, schemas, functions, models, members, steps)."""
        await check_spec(
            spec,
            self.registry,
            self.store.get,
            model_names=self.models.model_names(),
            resolves_secrets=self.secrets is not None,
        )

    async def current(self, kind: SpecKind, spec_id: str) -> SpecBase:
        """The spec as stored now (at most ``max_staleness`` seconds old)."""
        kind = SpecKind.of(kind)  # "agent" as well: a str would pass as a key, not as a kind
        key = (kind, spec_id)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and now - cached.checked_at < self.max_staleness:
            return cached.spec
        # The whole spec is compared, not only its version: a spec deleted and created again
        # starts over at version 1, and a hand-edited file may keep its version.
        spec = await self.store.get(kind, spec_id)
        if spec is None:
            self._cache.pop(key, None)
            raise SpecNotFoundError(f"no {kind.value} {spec_id!r}")
        if cached is not None and spec == cached.spec:
            cached.checked_at = now
            return cached.spec
        await self.validate(spec)
        self._cache[key] = _Cached(spec, now)
        if cached is not None:
            logger.info("%s changed: version %d -> %d", spec.ref, cached.spec.version, spec.version)
        return spec

    async def serves(self, target: Target) -> bool:
        """Whether a request routed to ``target`` can run here: a spec of its kind and id is stored
        and active. A stored spec whose references no longer hold raises its
        :class:`SpecValidationError` (saying what is wrong). Made for
        ``await router.check_targets(runtime.serves)`` at start-up."""
        try:
            spec = await self.current(_kind_of(target), target.id)
        except SpecNotFoundError:
            return False
        return spec.status is SpecStatus.ACTIVE

    def forget(self, kind: SpecKind, spec_id: str) -> None:
        self._cache.pop((SpecKind.of(kind), spec_id), None)

    # -- building -----------------------------------------------------------------------------------

    async def build(self, kind: SpecKind, spec_id: str, *, user_id: str | None = None) -> Any:
        """A fresh agno object for the spec (members and steps built fresh too)."""
        spec = await self.current(kind, spec_id)  # which reads kind as SpecKind.of does
        if not spec.active:
            raise disabled(spec)

        async def resolve(member_kind: SpecKind, member_id: str) -> Any:
            return await self.build(member_kind, member_id, user_id=user_id)

        if isinstance(spec, AgentSpec):
            parameters = await self._tool_parameters(spec)
            return self._builder.agent(spec, user_id=user_id, tool_parameters=parameters)
        try:
            if isinstance(spec, TeamSpec):
                return await self._builder.team(spec, resolve, user_id=user_id)
            if isinstance(spec, WorkflowSpec):
                return await self._builder.workflow(spec, resolve)
        except (SpecNotFoundError, SpecValidationError):
            # A member or step deleted or disabled since this spec was cached: the error names it
            # at its path in this spec, as loading this spec afresh does, not as a missing target.
            await self.validate(spec)
            raise
        raise SpecValidationError(f"no builder for {spec.ref}")

    async def _tool_parameters(self, spec: AgentSpec) -> list[dict[str, Any]] | None:
        """The tools' parameters with their secret references resolved (the system's secrets, from
        the manager's cache: a rotated key reaches the next run), or ``None`` if there are none."""
        if self.secrets is None or not any(ref.has_references for ref in spec.tools):
            return None
        resolved = []
        for index, ref in enumerate(spec.tools):
            where = f"{spec.ref}, tools[{index}].parameters"
            resolved.append(reveal_all(await self.secrets.resolve_all(ref.parameters, where=where)))
        return resolved

    # -- running ------------------------------------------------------------------------------------

    async def execute(
        self,
        kind: SpecKind,
        spec_id: str,
        input: str,
        *,
        session_id: str,
        user_id: str | None = None,
        session_state: dict[str, Any] | None = None,
        attachments: Sequence[Attachment] = (),
        timeout: float | None = None,
        on_delta: DeltaCallback | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Run the target once. Failures of the run are results (status ``error`` / ``timeout``);
        an unknown or disabled target raises. ``timeout``: seconds > 0 (``math.inf`` or ``None``:
        no limit), else a :class:`ConfigurationError` before anything runs. A blank ``user_id``
        runs as no user (``None``)."""
        kind = SpecKind.of(kind)  # "workflow" as a str would not be run as a workflow
        # Checked first: asyncio.timeout("5") raised only once the run was started, which then
        # went on in the background; NaN and negatives "timed out" at once.
        timeout = check_seconds("timeout", timeout, forever=True, optional=True)
        if user_id is not None and not user_id.strip():
            # No user (AgentClient.build_request gives "" to an event without one): as a user id,
            # agno kept every such run's memories under one user, and the LLM router looked up
            # that "user's" own keys on every call
            user_id = None
        started = time.monotonic()
        # One deadline for all the request waits on: the spec store's read and the secrets of the
        # build, and the session db's read before the run (outside it, a store, a secrets source
        # or a db that did not answer held a request with a timeout for ever)
        ends = None if timeout is None else asyncio.get_running_loop().time() + timeout
        building: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout_at(ends) as building:
                target = await self.build(kind, spec_id, user_id=user_id)
        except TimeoutError:
            if building is None or not building.expired():
                raise  # the store's or the secrets source's own
            return ExecutionResult(
                ResponseStatus.TIMEOUT,
                error_message=f"{kind.value} {spec_id!r} timed out after {timeout}s",
                duration_ms=_ms_since(started),
                target_name=spec_id,
            )
        run_kwargs: dict[str, Any] = {
            "session_id": agno_session_id(kind, spec_id, session_id),
            "user_id": user_id,
            **media_from_attachments(attachments).run_kwargs(),
        }
        if session_state:
            run_kwargs["session_state"] = dict(session_state)
        if metadata:
            run_kwargs["metadata"] = dict(metadata)
        run_id = str(uuid.uuid4())  # the id _stop_run asks agno to cancel: workflows need it too
        run_kwargs["run_id"] = run_id
        if kind is not SpecKind.WORKFLOW:
            try:
                async with asyncio.timeout_at(ends):
                    await self._hand_over_interrupted_turn(kind, run_kwargs)
            except TimeoutError:  # _interrupted_turn's own errors are None: this is the deadline
                return ExecutionResult(
                    ResponseStatus.TIMEOUT,
                    error_message=f"{kind.value} {spec_id!r} timed out after {timeout}s",
                    duration_ms=_ms_since(started),
                    target_name=getattr(target, "name", spec_id),
                )
        member_errors: list[tuple[str, str]] = []  # (member, error) of the members' failed runs

        async def run() -> Any:
            if on_delta is not None and kind is not SpecKind.WORKFLOW:
                return await _run_streaming(target, input, run_kwargs, on_delta, member_errors)
            return await target.arun(input, **run_kwargs)

        inner = asyncio.get_running_loop().create_task(run())
        deadline: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout_at(ends) as deadline:
                output = await asyncio.shield(inner)
        except TimeoutError:
            if deadline is None or not deadline.expired():
                raise  # the run's own (agno's, a tool's), not the request's deadline
            await self._stop_run(inner, run_id)
            return ExecutionResult(
                ResponseStatus.TIMEOUT,
                error_message=f"{kind.value} {spec_id!r} timed out after {timeout}s",
                duration_ms=_ms_since(started),
                run_id=run_id,
                target_name=getattr(target, "name", spec_id),
            )
        except asyncio.CancelledError:
            await self._stop_run(inner, run_id)
            raise
        except _DeltaCallbackError as failed:  # the caller's callback: a failure of the run, as any other
            error = failed.__cause__
            return ExecutionResult(
                ResponseStatus.ERROR,
                error_message=redact_text(f"on_delta failed: {type(error).__name__}: {error}"),
                duration_ms=_ms_since(started),
                run_id=run_id,
                target_name=getattr(target, "name", spec_id),
            )
        if getattr(target, "respond_directly", False) is not True:
            # a coordinating leader was told of its members' failures, and answered itself; a
            # route team's reply is its member's (not streamed, the builder's post-hook failed
            # the team's run for them: streamed, agno gives the hook no member responses)
            member_errors.clear()
        result = _result(output, started, getattr(target, "name", spec_id), member_errors)
        return await self._flag_unkept(result, run_id, ends, f"{kind.value} {spec_id!r}", session_id)

    async def _hand_over_interrupted_turn(self, kind: SpecKind, run_kwargs: dict[str, Any]) -> None:
        interrupted = await self._interrupted_turn(kind, run_kwargs["session_id"])
        if interrupted is not None:  # agno leaves cancelled runs out of the history: hand it over
            run_kwargs["dependencies"] = {"interrupted_turn": interrupted}
            run_kwargs["add_dependencies_to_context"] = True

    async def _flag_unkept(
        self, result: ExecutionResult, run_id: str, ends: float | None, target: str, session_id: str
    ) -> ExecutionResult:
        """``result``, with ``session_saved`` false in its metadata and a warning logged, if the
        session db does not hold the run ``run_id``, read back by ``ends`` (the request's deadline:
        the answer is ready, and a db that hangs must not hold it back)."""
        try:
            async with asyncio.timeout_at(ends):
                kept = await self._kept(run_id)
            problem = "the turn is not in the session db"
        except TimeoutError:
            kept, problem = False, "the session db did not answer within the request's timeout"
        if kept:
            return result
        from dynamic_agents.agents.sessions import describe_db

        logger.warning(
            "%s, session %r: %s (%s): later runs may not see this turn, and it may have been "
            "answered without the conversation's history (agno logs the db's errors on its "
            "logger 'agno')",
            target,
            session_id,
            problem,
            describe_db(self.db),
        )
        return replace(result, metadata={**result.metadata, "session_saved": False})

    async def _kept(self, run_id: str) -> bool:
        """Whether the session db holds the run ``run_id`` now that it is over. agno logs a failed
        read or write of its session db and goes on (a PostgreSQL that is down, a SQLite file
        that cannot be written): the run answers without the history and the turn is forgotten.
        ``True`` without a db, and with one that cannot read a run back by its id (an agno
        adapter without a runs table, whose ``get_run`` is its base class's)."""
        get_run = getattr(self.db, "get_run", None)
        if get_run is None:
            return True
        from agno.db.base import AsyncBaseDb, BaseDb

        if getattr(type(self.db), "get_run", None) in (BaseDb.get_run, AsyncBaseDb.get_run):
            return True
        try:  # agno's dbs return None on a failed read; another db may raise
            stored = await _off_the_loop(get_run, run_id=run_id, deserialize=False)
        except Exception:
            return False
        return stored is not None

    async def _interrupted_turn(self, kind: SpecKind, session_id: str) -> dict[str, str] | None:
        """The session's last run, when it was cancelled (an interrupt): its message and partial
        reply, for the next run to see. Read from the session db, so it works across workers."""
        if self.db is None:
            return None
        try:  # AsyncSqliteDb, AsyncPostgresDb awaited; InMemoryDb, SqliteDb, PostgresDb in a thread
            session = await _off_the_loop(self.db.get_session, session_id=session_id, session_type=kind.value)
        except Exception:  # a missing table on first use, a db hiccup: no context, not a failed run
            return None
        runs = getattr(session, "runs", None) or []
        if not runs or str(getattr(runs[-1].status, "value", runs[-1].status)).upper() != "CANCELLED":
            return None
        messages = [m for m in runs[-1].messages or [] if getattr(m, "content", None)]
        asked = next((str(m.content) for m in messages if m.role == "user"), "")
        partial = "\n".join(str(m.content) for m in messages if m.role == "assistant")
        return {"message": asked, "partial_reply": partial} if asked or partial else None

    async def _stop_run(self, inner: asyncio.Task[Any], run_id: str) -> None:
        """Stop a run the way agno keeps what it did: ask agno to cancel it (it stops at its next
        checkpoint and stores the run, partial output included, as cancelled); cancel the task
        outright only if it does not stop within ``cancel_grace`` (a slow tool, say), and leave it
        to end in the background if it does not end within ``cancel_grace`` of that either."""
        from agno.run.cancel import acancel_run

        try:
            with contextlib.suppress(Exception):
                await acancel_run(run_id)
            done, _ = await asyncio.wait([inner], timeout=self.cancel_grace)
        except asyncio.CancelledError:
            # Cancelled again while waiting (a shutdown, the caller's own deadline): nobody is left
            # to stop the run, which would go on in the background. Stop it now.
            inner.cancel()
            inner.add_done_callback(_retrieve)  # what it raises while stopping is not worth a warning
            raise
        if not done:
            inner.cancel()
            done, _ = await asyncio.wait([inner], timeout=self.cancel_grace)
            if not done:
                # a tool that caught the cancellation and went on: waiting held the request past
                # its timeout (and its session) until the run ended on its own, if ever
                logger.warning(
                    "run %s did not stop when cancelled (a tool catching CancelledError?): left to "
                    "end in the background",
                    run_id,
                )
                inner.add_done_callback(_retrieve)
                return
        if inner.done() and not inner.cancelled():
            inner.exception()  # retrieved: a failure while stopping is not worth a warning


class _DeltaCallbackError(Exception):
    """``on_delta`` raised (the exception is the ``__cause__``)."""


async def _run_streaming(
    target: Any,
    input: str,
    run_kwargs: dict[str, Any],
    on_delta: DeltaCallback,
    member_errors: list[tuple[str, str]],
) -> Any:
    """The run's output, streaming its content to ``on_delta``; the errors of members' runs are
    added to ``member_errors`` (a stored team run does not keep its members' responses)."""
    final = None
    stream = target.arun(input, stream=True, stream_events=True, **run_kwargs)
    try:
        async for event in stream:
            name = getattr(event, "event", "")
            if getattr(event, "run_id", None) != run_kwargs["run_id"]:
                # a team member's own run: its work, not the team's reply; its failure is noted
                if name in {"RunError", "TeamRunError"}:
                    member_errors.append((member_name(event), str(getattr(event, "content", None) or "")))
                continue
            if name in {"RunContent", "TeamRunContent"} and isinstance(getattr(event, "content", None), str):
                if event.content:
                    try:
                        await on_delta(event.content)
                    except Exception as error:
                        raise _DeltaCallbackError from error
            elif name in {
                "RunCompleted",
                "TeamRunCompleted",
                "RunError",
                "TeamRunError",
                "RunCancelled",
                "TeamRunCancelled",
            }:
                final = event
    finally:
        # Left early (on_delta failed): agno's run ends now (stored as cancelled, no longer
        # tracked), not whenever the garbage collector finalises its generator.
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    if getattr(target, "db", None) is None:
        return final  # without a db there is no stored run to read back
    last = await target.aget_last_run_output(session_id=run_kwargs["session_id"])
    # another run than this one: the session's previous turn, when the db failed to save this one
    return last if getattr(last, "run_id", None) == run_kwargs["run_id"] else final


async def _off_the_loop(function: Callable[..., Any], /, **kwargs: Any) -> Any:
    """Call a session db's method without blocking the event loop: an async one awaited, a plain
    one (a blocking query, a pool's dispose) in a thread, and an awaitable it hands back awaited."""
    if inspect.iscoroutinefunction(function):
        return await function(**kwargs)
    result = await asyncio.to_thread(function, **kwargs)
    return await result if inspect.isawaitable(result) else result


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _failed_steps(results: Any) -> Any:
    """(name, error) of every failed step, nested ones (parallel, loops) included."""
    for result in results:
        if isinstance(result, list):
            yield from _failed_steps(result)
            continue
        if getattr(result, "success", True) is False:
            yield getattr(result, "step_name", None) or "?", getattr(result, "error", None) or "failed"
        yield from _failed_steps(getattr(result, "steps", None) or ())


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


_STATUS = {"COMPLETED": ResponseStatus.COMPLETED, "CANCELLED": ResponseStatus.CANCELLED}
_FINAL_EVENT_STATUS: Final = {  # a streamed run without a db ends with its final event, which has no status
    "RunError": "ERROR",
    "TeamRunError": "ERROR",
    "RunCancelled": "CANCELLED",
    "TeamRunCancelled": "CANCELLED",
}


def _result(
    output: Any, started: float, name: str, member_errors: Sequence[tuple[str, str]] = ()
) -> ExecutionResult:
    """The result of a run's ``output``; ``member_errors``, (member, error) of the failed member
    runs whose replies are the team's (a route team's), make it an ``error``."""
    status_name = str(getattr(getattr(output, "status", None), "value", getattr(output, "status", "")) or "")
    if not status_name:
        status_name = _FINAL_EVENT_STATUS.get(str(getattr(output, "event", "")), "")
    status = _STATUS.get(
        status_name.upper(), ResponseStatus.ERROR if status_name else ResponseStatus.COMPLETED
    )
    content = getattr(output, "content", None)
    structured: dict[str, JsonValue] | None = None
    if isinstance(content, BaseModel):
        structured = content.model_dump(mode="json")
        text = json.dumps(structured, ensure_ascii=False)
    elif isinstance(content, dict):
        structured = json.loads(json.dumps(content, default=str))
        text = json.dumps(structured, ensure_ascii=False)
    else:
        text = "" if content is None else str(content)
    error_message = None
    failed = list(_failed_steps(getattr(output, "step_results", None) or ()))
    if failed and status is ResponseStatus.COMPLETED:  # agno goes on after a failed step
        status = ResponseStatus.ERROR
        text = "; ".join(f"step {name!r} failed: {error}" for name, error in failed)
    if member_errors and status is ResponseStatus.COMPLETED:
        status = ResponseStatus.ERROR
        text = "; ".join(
            f"member {member!r} failed: {error}" for member, error in dict.fromkeys(member_errors)
        )
    if status_name.upper() == "PAUSED":  # what it asks is kept: it is all the user can be told
        asked = f": {text}" if text else ""
        error_message = f"the run paused for human input, which is not supported{asked}"
        text = ""
    elif status is ResponseStatus.ERROR:
        error_message = text or f"the run ended with status {status_name or 'unknown'}"
        text = ""
    if error_message is not None:  # a model's, a tool's or a step's exception may quote a key
        error_message = redact_text(error_message)
    metrics = getattr(output, "metrics", None)
    tokens = None
    if metrics is not None and getattr(metrics, "total_tokens", None) is not None:
        tokens = TokenUsage(
            input_tokens=metrics.input_tokens or 0,
            output_tokens=metrics.output_tokens or 0,
            total_tokens=metrics.total_tokens or 0,
        )
    images = tuple(
        str(image.url) for image in getattr(output, "images", None) or () if getattr(image, "url", None)
    )
    files = tuple(
        {"url": str(file.url), "name": str(getattr(file, "filename", "") or "")}
        for file in getattr(output, "files", None) or ()
        if getattr(file, "url", None)
    )
    return ExecutionResult(
        status=status,
        content=text,
        structured_data=structured,
        error_message=error_message,
        tokens=tokens,
        cost=getattr(metrics, "cost", None) if metrics is not None else None,
        duration_ms=_ms_since(started),
        images=images,
        files=files,
        run_id=getattr(output, "run_id", None),
        target_name=name,
    )


class AgnoExecutor:
    """The :class:`~dynamic_agents.execution.Executor` of routed requests on an :class:`AgentRuntime`:
    the request's content, user, ``session_state`` and attachments reach the run."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    def __repr__(self) -> str:
        return f"AgnoExecutor({self.runtime!r})"

    async def execute(
        self,
        target: Target,
        request: AgentRequestEvent,
        *,
        timeout: float | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> ExecutionResult:
        return await self.runtime.execute(
            _kind_of(target),
            target.id,
            request.content,
            session_id=request.session_id,
            user_id=request.user_id,
            session_state=request.session_state or None,
            attachments=request.attachments,
            timeout=timeout,
            on_delta=on_delta,
            metadata={"request_id": request.id, "user_name": request.user_name, "source": request.source},
        )


_KINDS: Final = {
    TargetType.AGENT: SpecKind.AGENT,
    TargetType.TEAM: SpecKind.TEAM,
    TargetType.WORKFLOW: SpecKind.WORKFLOW,
}


def _kind_of(target: Target) -> SpecKind:
    """The kind of spec a routing target names."""
    return _KINDS[target.type]
