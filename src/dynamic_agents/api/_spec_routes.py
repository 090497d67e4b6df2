"""The spec routes: agents / teams / workflows CRUD, and execute (JSON, or server-sent events)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Final

from dynamic_agents._redaction import redact_text
from dynamic_agents.agents.managers import SpecManager
from dynamic_agents.agents.runtime import AgentRuntime
from dynamic_agents.agents.specs import SPEC_MODELS, SpecBase, SpecKind, SpecStatus
from dynamic_agents.agents.validate import disabled
from dynamic_agents.api._bodies import ExecuteBody, result_json
from dynamic_agents.api._idempotency import Idempotency
from dynamic_agents.api._streaming import RunStream, end_streamed, replayed, streamed_run
from dynamic_agents.exceptions import SpecConflictError, SpecNotFoundError, SpecValidationError
from dynamic_agents.execution import ExecutionResult

try:
    from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response
    from fastapi.responses import StreamingResponse
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


_KINDS: Final = {"agents": SpecKind.AGENT, "teams": SpecKind.TEAM, "workflows": SpecKind.WORKFLOW}

MAX_VERSION: Final = 2**31 - 1
"""The highest version a spec store keeps (``SqlSpecStore``'s column is a 32-bit integer): a larger
``expected_version`` reached the database and failed there, a 500; it is a 422 naming it."""


def _spec_error(error: Exception) -> HTTPException:
    """The HTTP error for a store's or manager's error; its message masked (it quotes the id a
    caller gave, a key pasted in place of one too)."""
    message = redact_text(str(error))
    if isinstance(error, SpecNotFoundError):
        return HTTPException(404, message)
    if isinstance(error, SpecConflictError):
        return HTTPException(409, {"detail": message, "current_version": error.current})
    if isinstance(error, SpecValidationError):
        return HTTPException(422, {"detail": message, "path": error.path})
    raise error


def add_spec_routes(  # noqa: PLR0915 - one route per statement group; kept together for reading
    api: APIRouter,
    runtime: AgentRuntime,
    idempotency: Idempotency,
    authorised: Callable[..., Awaitable[str]],
) -> None:
    """The routes under ``/{kind_name}`` on ``api``; ``authorised`` gives an execute its caller."""
    streamed_runs: set[asyncio.Task[ExecutionResult]] = set()

    def manager(kind_name: str) -> SpecManager[Any]:
        kind = _KINDS.get(kind_name)
        if kind is None:
            unknown = redact_text(f"unknown kind {kind_name!r}")
            raise HTTPException(404, f"{unknown}; use agents, teams or workflows")
        managers: dict[SpecKind, SpecManager[Any]] = {
            SpecKind.AGENT: runtime.agents,
            SpecKind.TEAM: runtime.teams,
            SpecKind.WORKFLOW: runtime.workflows,
        }
        return managers[kind]

    def parse_spec(kind_name: str, body: dict[str, Any]) -> SpecBase:
        try:
            return SPEC_MODELS[_KINDS[kind_name]].from_dict(body)
        except SpecValidationError as error:
            raise _spec_error(error) from None

    # -- specs --------------------------------------------------------------------------------------

    @api.get("/{kind_name}", tags=["specs"])
    async def list_specs(
        kind_name: str, tag: str | None = None, status: SpecStatus | None = None
    ) -> list[dict[str, Any]]:
        managed = manager(kind_name)
        try:
            specs = await managed.list(tag=tag, status=status)
        except SpecValidationError as error:  # one stored no longer validates: named, as execute does
            raise _spec_error(error) from None
        return [spec.to_document() for spec in specs]

    @api.post("/{kind_name}", status_code=201, tags=["specs"])
    async def create_spec(kind_name: str, body: dict[str, Any]) -> dict[str, Any]:
        managed = manager(kind_name)
        try:
            created: SpecBase = await managed.create(parse_spec(kind_name, body))
            return created.to_document()
        except (SpecValidationError, SpecConflictError) as error:
            raise _spec_error(error) from None

    @api.get("/{kind_name}/{spec_id}", tags=["specs"])
    async def get_spec(kind_name: str, spec_id: str) -> dict[str, Any]:
        try:
            found: SpecBase = await manager(kind_name).get(spec_id)
            return found.to_document()
        except (SpecNotFoundError, SpecValidationError) as error:  # stored, but no longer valid: a 422
            raise _spec_error(error) from None

    @api.put("/{kind_name}/{spec_id}", tags=["specs"])
    async def update_spec(
        kind_name: str,
        spec_id: str,
        body: dict[str, Any],
        # the update writes expected_version + 1
        expected_version: Annotated[int, Query(ge=1, le=MAX_VERSION - 1)],
    ) -> dict[str, Any]:
        managed = manager(kind_name)  # an unknown kind is a 404, before the body is parsed
        spec = parse_spec(kind_name, {**body, "id": spec_id})
        try:
            updated: SpecBase = await managed.update(spec, expected_version=expected_version)
            return updated.to_document()
        except (SpecValidationError, SpecConflictError, SpecNotFoundError) as error:
            raise _spec_error(error) from None

    @api.delete("/{kind_name}/{spec_id}", status_code=204, tags=["specs"])
    async def delete_spec(
        kind_name: str,
        spec_id: str,
        expected_version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
    ) -> Response:
        try:
            deleted = await manager(kind_name).delete(spec_id, expected_version=expected_version)
        except (SpecConflictError, SpecValidationError) as error:  # a stored version it cannot read
            raise _spec_error(error) from None
        if not deleted:
            raise HTTPException(404, redact_text(f"no {kind_name[:-1]} {spec_id!r}"))
        return Response(status_code=204)

    # -- execute ------------------------------------------------------------------------------------

    @api.post("/{kind_name}/{spec_id}/execute", tags=["execute"], response_model=None)
    async def execute(
        kind_name: str,
        spec_id: str,
        body: ExecuteBody,
        idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
        # A default, not Annotated: the annotation would name a local. Run once per request.
        caller: str = Depends(authorised),
    ) -> dict[str, Any] | StreamingResponse:
        managed = manager(kind_name)
        cache_key = (caller, kind_name, spec_id, idempotency_key) if idempotency_key else None
        if cache_key is not None:
            stored = idempotency.begin(cache_key, body)
            if stored is not None:
                if body.stream:  # answered as asked: the stored result as the stream's result event
                    return StreamingResponse(replayed(stored), media_type="text/event-stream")
                return stored
        result: ExecutionResult | None = None
        streaming = False
        try:
            # Validated (and cached for the run) before answering: once a stream has started, a
            # disabled or broken spec could no longer be reported as a 422.
            try:
                spec = await runtime.current(managed.kind, spec_id)
            except (SpecNotFoundError, SpecValidationError) as error:
                raise _spec_error(error) from None
            if not spec.active:
                raise _spec_error(disabled(spec))
            options: dict[str, Any] = {
                "session_id": body.session_id,
                "user_id": body.user_id,
                "session_state": dict(body.session_state) or None,
                "timeout": body.timeout,
            }
            if body.stream:
                # The run starts here, not when the response is first read: the key is released
                # when it ends, even if the client never reads the stream.
                deltas: asyncio.Queue[str | None] = asyncio.Queue()
                run = asyncio.get_running_loop().create_task(
                    streamed_run(managed, spec_id, body.input, options, deltas)
                )
                streamed_runs.add(run)  # held until done: a stream never read still holds its run
                run.add_done_callback(streamed_runs.discard)
                if cache_key is not None:
                    run.add_done_callback(partial(end_streamed, idempotency, cache_key))
                streaming = True
                return RunStream(run, deltas, target=f"{kind_name}/{spec_id}")
            try:
                result = await managed.execute(spec_id, body.input, **options)
            except (SpecValidationError, SpecNotFoundError) as error:  # changed or deleted since the check
                raise _spec_error(error) from None
            return result_json(result)
        finally:
            if cache_key is not None and not streaming:
                idempotency.end(cache_key, result)
