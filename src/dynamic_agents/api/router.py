"""``create_api_router``: the REST admin and execute API, as a FastAPI router hosts mount.

Routes under ``/api/v1`` (see ``docs/api.md``): agents / teams / workflows CRUD and execute (JSON, or
server-sent events of content deltas), request cancellation, dead-letter operations, routing rules
and ``explain``, LLM deployments (references only, never keys) and refresh, and ``/health``.

Authentication is required: pass a bearer-token verifier, or ``NO_AUTH`` explicitly for local use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from enum import Enum
from functools import partial
from typing import Annotated, Any, Final

from cachetools import TTLCache
from pydantic import BaseModel, Field, JsonValue

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import REDACTOR
from dynamic_agents._validation import check_count, check_seconds
from dynamic_agents.agents.managers import SpecManager
from dynamic_agents.agents.runtime import AgentRuntime
from dynamic_agents.agents.specs import SPEC_MODELS, SpecBase, SpecKind, SpecStatus
from dynamic_agents.events import AgentRequestEvent
from dynamic_agents.exceptions import (
    ConfigurationError,
    DeliveryError,
    RequeueError,
    SpecConflictError,
    SpecNotFoundError,
    SpecValidationError,
    TransportError,
)
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.llm.config import HEADER_PARAMS, SECRET_PARAMS
from dynamic_agents.operations import DeadLetters
from dynamic_agents.routing import EventRouter, RoutingRule
from dynamic_agents.secrets.references import masked_settings
from dynamic_agents.transports import Transport

try:
    from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
    from fastapi.responses import JSONResponse, StreamingResponse
    from fastapi.routing import APIRoute
    from starlette.convertors import StringConvertor, register_url_convertor
    from starlette.types import Message, Receive, Scope, Send
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


class _RequestIdConvertor(StringConvertor):
    """A request id is any printable ASCII, ``/`` included (sent escaped as ``%2F``, which the
    server unescapes before routing); a character no id may hold is the coordinator's 422, not an
    unmatched route's 404."""

    regex = "[\\s\\S]+"


# Starlette's convertor registry is process-wide: the name is the library's own.
register_url_convertor("dynamic_agents_request_id", _RequestIdConvertor())


logger = get_logger("api")


_CALLER: Final = "dynamic_agents_caller"
"""Where a route keeps its caller (see :func:`create_api_router`) in ``request.state``."""


class _Route(APIRoute):
    """Every route of the API: the transport failing (Redis away) is a 503 saying so, not a 500.

    ``authorise`` (set on the subclass :func:`create_api_router` makes) checks the bearer token
    before the handler reads the body: FastAPI parses a JSON body before it runs any dependency,
    so an unauthenticated caller would get a 422 about its body, and have it parsed, first.
    ``largest_body`` (``max_body_size``) is enforced there too, before a byte of the body is read."""

    authorise: Callable[[str | None], Awaitable[str]] | None = None
    # Not ``max_body_size``: FastAPI's own route attribute (a Starlette limit answering in plain text).
    largest_body: int | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            if self.authorise is not None:
                setattr(request.state, _CALLER, await self.authorise(request.headers.get("authorization")))
            if (limit := self.largest_body) is not None:
                declared = request.headers.get("content-length", "")
                if declared.isascii() and declared.isdigit() and int(declared) > limit:  # not "²"
                    return JSONResponse({"detail": _too_large(limit, declared)}, status_code=413)
                # A body sent without a length (chunked) is counted as it arrives.
                request = Request(request.scope, _limited(request.receive, limit))
            try:
                return await handler(request)
            except TransportError as error:  # a DeliveryError (an unknown entry) is each route's own
                logger.warning("%s %s: %s", request.method, request.url.path, error)
                detail = f"the message transport is unavailable: {REDACTOR.redact(str(error))}"
                return JSONResponse({"detail": detail}, status_code=503)

        return answer


def _too_large(limit: int, declared: str | None = None) -> str:
    size = f" ({declared} bytes)" if declared is not None else ""
    return f"the request body{size} is larger than the API's limit of {limit} bytes (max_body_size)"


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive``, answering 413 once the body has grown past ``limit`` bytes: the rest of it is
    never read (FastAPI passes an ``HTTPException`` raised while it reads the body through)."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, _too_large(limit))
        return message

    return limited


__all__ = ["NO_AUTH", "TokenVerifier", "create_api_router"]

TokenVerifier = Callable[[str], bool | Awaitable[bool]]
"""Returns whether a bearer token may use the API."""


class _NoAuth(Enum):
    NO_AUTH = "no-auth"


NO_AUTH: Final = _NoAuth.NO_AUTH
"""Pass as ``auth`` to serve the API without authentication (local use only)."""

_KINDS: Final = {"agents": SpecKind.AGENT, "teams": SpecKind.TEAM, "workflows": SpecKind.WORKFLOW}


class ExecuteBody(BaseModel):
    input: str
    session_id: str = Field(min_length=1, max_length=512)
    user_id: str | None = None
    session_state: dict[str, JsonValue] = Field(default_factory=dict)
    stream: bool = False
    timeout: float | None = Field(default=None, gt=0, le=3600)


class RulesBody(BaseModel):
    rules: list[dict[str, JsonValue]]


_IdempotencyScope = tuple[str, str, str, str]
"""caller, kind, spec id and ``Idempotency-Key``: a key is scoped to its caller (the bearer token,
as a digest) and its target, so two callers that happen to pick one key never share a result."""


DEFAULT_IDEMPOTENCY_MAX_KEYS: Final = 10_000
"""How many stored results are kept by default (the newest): past it, a key is forgotten before
its TTL."""

DEFAULT_MAX_BODY_SIZE: Final = 1024 * 1024
"""The largest request body the API reads by default, in bytes (1 MiB)."""

_RETRY_RUNNING: Final = "1"
"""``Retry-After`` (seconds) of the 409 for a retry that arrives while its first request runs."""


class _Idempotency:
    """``Idempotency-Key`` of execute calls, per process (the IETF draft's semantics): the first
    request with a key runs and its result is kept ``ttl`` seconds for retries; the same key with
    another body is a 422, and a retry while the first request still runs is a 409 (it would run
    the agent twice). A key is held from the check to the end of its run, with no await between the
    check and the hold."""

    def __init__(self, ttl: float, max_keys: int) -> None:
        self._results: TTLCache[_IdempotencyScope, tuple[str, dict[str, Any]]] = TTLCache(
            maxsize=max_keys, ttl=ttl
        )
        self._running: dict[_IdempotencyScope, str] = {}

    def begin(self, key: _IdempotencyScope, body: ExecuteBody) -> dict[str, Any] | None:
        """The stored result of this request, or ``None`` after holding ``key`` for its run."""
        fingerprint = _fingerprint(body)
        running, stored = self._running.get(key), self._results.get(key)
        first = running if running is not None else stored[0] if stored is not None else None
        if first is not None and first != fingerprint:  # the key's first request was another one
            raise HTTPException(
                422,
                f"Idempotency-Key {key[-1]!r} was used for another request (a different "
                "body); send a new key for a new request",
            )
        if running is not None:
            raise HTTPException(
                409,
                f"a request with Idempotency-Key {key[-1]!r} is still running; retry when it has finished",
                headers={"Retry-After": _RETRY_RUNNING},
            )
        if stored is not None:
            return stored[1]
        self._running[key] = fingerprint
        return None

    def end(self, key: _IdempotencyScope, result: ExecutionResult | None) -> None:
        """Release ``key``; keep ``result`` for retries when the run completed. A model error or a
        timeout is a result too, but a failed run: kept, it would answer the very retry the key is
        for."""
        fingerprint = self._running.pop(key)
        if result is not None and result.ok:
            self._results[key] = (fingerprint, _result_json(result))


def _fingerprint(body: ExecuteBody) -> str:
    """What makes two execute bodies the same request: all but ``stream`` (how the answer is sent),
    whatever the order of their keys, and numbers compared as JSON does (``1`` and ``1.0`` are one
    number: a client that serialises the body again may write either)."""
    canonical = json.dumps(_same_numbers(body.model_dump(mode="json", exclude={"stream"})), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_numbers(value: Any) -> Any:
    """``value`` with every whole float written as an int (``1.0`` → ``1``), at any depth."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _same_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_same_numbers(item) for item in value]
    return value


def _result_json(result: ExecutionResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["status"] = result.status.value
    return data


def _public_params(params: Mapping[str, Any]) -> Any:
    """litellm params as configured, for listing (see :func:`masked_settings`): references as
    written; a credential written into the config itself masked (``api_key: sk-…``, anything under
    such a key, every header value, a URL's password), and any known secret value redacted."""
    return masked_settings(params, _lists_a_credential, redact=True)


def _lists_a_credential(key: object, parent: object) -> bool:
    """Stricter than a repr: every header value is taken for a credential."""
    return key in SECRET_PARAMS or parent in HEADER_PARAMS


def _spec_error(error: Exception) -> HTTPException:
    if isinstance(error, SpecNotFoundError):
        return HTTPException(404, str(error))
    if isinstance(error, SpecConflictError):
        return HTTPException(409, {"detail": str(error), "current_version": error.current})
    if isinstance(error, SpecValidationError):
        return HTTPException(422, {"detail": str(error), "path": error.path})
    raise error


def create_api_router(  # noqa: PLR0915 - one route per statement group; kept together for reading
    *,
    runtime: AgentRuntime,
    auth: TokenVerifier | _NoAuth,
    transport: Transport | None = None,
    event_router: EventRouter | None = None,
    llm_router: Any = None,
    health_checks: Mapping[str, Callable[[], Awaitable[bool]]] | None = None,
    idempotency_ttl: float = 3600.0,
    idempotency_max_keys: int = DEFAULT_IDEMPOTENCY_MAX_KEYS,
    max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
) -> APIRouter:
    """The API as an ``APIRouter`` (prefix ``/api/v1``): ``app.include_router(...)``.

    ``transport`` enables cancellation and dead-letter routes, ``event_router`` the routing routes,
    ``llm_router`` the LLM routes; ``health_checks`` adds named checks to ``/health``.
    ``idempotency_ttl`` is how long an ``Idempotency-Key``'s result is kept, for the
    ``idempotency_max_keys`` newest keys (default 10 000; an older key is forgotten sooner: its
    retry runs again). Results are kept per process, so the count bounds the memory they take.
    ``max_body_size`` is the largest request body read, in bytes (default 1 MiB; ``None``: no
    limit): a larger one is a 413, before it is parsed — at once when its ``Content-Length`` says
    so, else as soon as it grows past the limit, without reading the rest.
    """
    if auth is not NO_AUTH and not callable(auth):
        raise ConfigurationError("auth must be a bearer-token verifier, or NO_AUTH for local use")
    # NaN, 0 or less would keep no result, silently: every retry would run again
    idempotency_ttl = check_seconds("idempotency_ttl", idempotency_ttl, forever=True)
    idempotency_max_keys = check_count("idempotency_max_keys", idempotency_max_keys)
    max_body_size = check_count("max_body_size", max_body_size, optional=True)

    async def check(authorization: str | None) -> str:
        """The caller: a digest of its bearer token (``""`` without authentication)."""
        if auth is NO_AUTH:
            return ""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        verdict = auth(token)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if not verdict:
            raise HTTPException(401, "the token was refused", headers={"WWW-Authenticate": "Bearer"})
        return hashlib.sha256(token.encode()).hexdigest()

    async def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
        """The caller, as its route checked it before reading the body (checked here for a route
        that did not: the header is declared for the OpenAPI schema too)."""
        caller = getattr(request.state, _CALLER, None)
        return caller if isinstance(caller, str) else await check(authorization)

    class Route(_Route):
        authorise = staticmethod(check)
        largest_body = max_body_size

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(authorised)], route_class=Route)
    idempotency = _Idempotency(idempotency_ttl, idempotency_max_keys)
    streamed_runs: set[asyncio.Task[ExecutionResult]] = set()

    def manager(kind_name: str) -> SpecManager[Any]:
        kind = _KINDS.get(kind_name)
        if kind is None:
            raise HTTPException(404, f"unknown kind {kind_name!r}; use agents, teams or workflows")
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
        specs = await manager(kind_name).list(tag=tag, status=status)
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
        except SpecNotFoundError as error:
            raise _spec_error(error) from None

    @api.put("/{kind_name}/{spec_id}", tags=["specs"])
    async def update_spec(
        kind_name: str, spec_id: str, body: dict[str, Any], expected_version: Annotated[int, Query(ge=1)]
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
        kind_name: str, spec_id: str, expected_version: Annotated[int | None, Query(ge=1)] = None
    ) -> Response:
        try:
            deleted = await manager(kind_name).delete(spec_id, expected_version=expected_version)
        except SpecConflictError as error:
            raise _spec_error(error) from None
        if not deleted:
            raise HTTPException(404, f"no {kind_name[:-1]} {spec_id!r}")
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
                    return StreamingResponse(_replayed(stored), media_type="text/event-stream")
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
                raise _spec_error(
                    SpecValidationError(f"{spec.ref} is disabled", spec=spec.ref, path="status")
                )
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
                    _streamed_run(managed, spec_id, body.input, options, deltas)
                )
                streamed_runs.add(run)  # held until done: a stream never read still holds its run
                run.add_done_callback(streamed_runs.discard)
                if cache_key is not None:
                    run.add_done_callback(partial(_end_streamed, idempotency, cache_key))
                streaming = True
                return _RunStream(run, deltas, target=f"{kind_name}/{spec_id}")
            try:
                result = await managed.execute(spec_id, body.input, **options)
            except (SpecValidationError, SpecNotFoundError) as error:  # changed or deleted since the check
                raise _spec_error(error) from None
            return _result_json(result)
        finally:
            if cache_key is not None and not streaming:
                idempotency.end(cache_key, result)

    # -- requests and dead letters ------------------------------------------------------------------

    def needs_transport() -> Transport:
        if transport is None:
            raise HTTPException(404, "this API was created without a transport")
        return transport

    @api.post("/requests/{request_id:dynamic_agents_request_id}/cancel", status_code=202, tags=["requests"])
    async def cancel(request_id: str) -> dict[str, str]:
        coordinator = needs_transport().coordinator()
        try:
            await coordinator.request_cancel(request_id)
        except ConfigurationError as error:  # an id that cannot be part of a key name
            raise HTTPException(422, str(error)) from None
        return {"request_id": request_id, "status": "cancellation requested"}

    @api.get("/dead-letters", tags=["dead letters"])
    async def dead_letters(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, after: Annotated[str, Query(max_length=64)] = "0-0"
    ) -> list[dict[str, Any]]:
        try:
            letters = await DeadLetters(needs_transport()).list(limit=limit, after=after)
        except ConfigurationError as error:  # an ``after`` that is no entry id
            raise HTTPException(422, str(error)) from None
        return [
            {
                "id": letter.id,
                "reason": letter.reason,
                "kind": letter.kind,
                "origin_stream": letter.origin_stream,
                "origin_entry_id": letter.origin_entry_id,
                "delivery_count": letter.delivery_count,
                "dead_at": letter.dead_at.isoformat(),
                "request": letter.request.model_dump(mode="json") if letter.request is not None else None,
                "decode_error": letter.decode_error,
            }
            for letter in letters
        ]

    @api.post("/dead-letters/{entry_id}/requeue", tags=["dead letters"])
    async def requeue(entry_id: str) -> dict[str, str]:
        try:
            new_id = await DeadLetters(needs_transport()).requeue(entry_id)
        except RequeueError as error:  # it exists, but cannot go back: retrying will not help
            raise HTTPException(409, str(error)) from None
        except DeliveryError as error:
            raise HTTPException(404, str(error)) from None
        return {"requeued_as": new_id}

    @api.delete("/dead-letters/{entry_id}", status_code=204, tags=["dead letters"])
    async def purge(entry_id: str) -> Response:
        try:
            await DeadLetters(needs_transport()).purge(entry_id)
        except (DeliveryError, ConfigurationError) as error:
            raise HTTPException(404, str(error)) from None
        return Response(status_code=204)

    # -- routing ------------------------------------------------------------------------------------

    def needs_routing() -> EventRouter:
        if event_router is None:
            raise HTTPException(404, "this API was created without an event router")
        return event_router

    @api.get("/routing/rules", tags=["routing"])
    async def rules() -> list[dict[str, Any]]:
        return [rule.model_dump(mode="json") for rule in needs_routing().rules]

    @api.put("/routing/rules", tags=["routing"])
    async def replace_rules(body: RulesBody) -> list[dict[str, Any]]:
        routing = needs_routing()
        try:
            parsed = [RoutingRule.model_validate(rule) for rule in body.rules]
            routing.replace_rules(parsed)
        except (ValueError, ConfigurationError) as error:
            raise HTTPException(422, str(error)) from None
        return [rule.model_dump(mode="json") for rule in routing.rules]

    @api.post("/routing/explain", tags=["routing"])
    async def explain(event: dict[str, Any]) -> dict[str, Any]:
        try:
            request = AgentRequestEvent.model_validate(event)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        explanation = needs_routing().explain(request)
        decision = explanation.decision
        return {
            "checks": [dataclasses.asdict(check) for check in explanation.checks],
            "decision": None
            if decision is None
            else {
                "target": decision.target.model_dump(mode="json"),
                "rule": decision.rule,
                "reason": decision.reason,
            },
            "error": explanation.error,
        }

    # -- LLM router ---------------------------------------------------------------------------------

    @api.get("/llm/deployments", tags=["llm"])
    async def deployments() -> list[dict[str, Any]]:
        if llm_router is None:
            raise HTTPException(404, "this API was created without an LLM router")
        return [
            {
                "id": deployment.deployment_id,
                "model_name": deployment.model_name,
                "litellm_params": _public_params(deployment.litellm_params),  # references, never keys
            }
            for deployment in llm_router.config.model_list
        ]

    @api.post("/llm/refresh", tags=["llm"])
    async def refresh() -> dict[str, int]:
        if llm_router is None:
            raise HTTPException(404, "this API was created without an LLM router")
        return {"rotated": await llm_router.refresh()}

    # -- health -------------------------------------------------------------------------------------

    @api.get("/health", tags=["health"])
    async def health() -> JSONResponse:
        checks: dict[str, bool] = {}

        async def store_ok() -> bool:
            await runtime.store.list(SpecKind.AGENT, status=SpecStatus.DISABLED)
            return True

        async def transport_ok() -> bool:
            assert transport is not None
            await transport.last_entry_id(transport.names.requests)
            return True

        named: dict[str, Callable[[], Awaitable[bool]]] = {"store": store_ok}
        if transport is not None:
            named["transport"] = transport_ok
        named.update(health_checks or {})
        for name, check in named.items():
            try:
                checks[name] = bool(await asyncio.wait_for(check(), 5))
            except Exception:  # a failing dependency is a health result, not an API error
                checks[name] = False
        healthy = all(checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", "checks": checks}, status_code=200 if healthy else 503
        )

    # The fixed paths (/health, /dead-letters, /routing/rules, /llm/deployments) must be matched
    # before the /{kind_name}/... templates declared above, which would take them for unknown kinds.
    api.routes.sort(key=lambda route: "{kind_name}" in getattr(route, "path", ""))
    return api


async def _replayed(payload: dict[str, Any]) -> AsyncIterator[bytes]:
    yield _sse("result", payload)


def _sse(event: str, payload: dict[str, Any]) -> bytes:
    """One server-sent event: ``delta``, ``result`` or ``error``, its data as JSON."""
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode()


async def _streamed_run(
    managed: SpecManager[Any],
    spec_id: str,
    text: str,
    options: dict[str, Any],
    deltas: asyncio.Queue[str | None],
) -> ExecutionResult:
    """The run behind a stream: its deltas into ``deltas``, then ``None``."""
    try:
        return await managed.execute(spec_id, text, on_delta=deltas.put, **options)
    finally:
        deltas.put_nowait(None)


def _end_streamed(
    idempotency: _Idempotency, key: _IdempotencyScope, run: asyncio.Task[ExecutionResult]
) -> None:
    """Release a streamed run's key, keeping its result when it gave one."""
    failed = run.cancelled() or run.exception() is not None
    idempotency.end(key, None if failed else run.result())


class _RunStream(StreamingResponse):
    """A streamed run's server-sent events. The run started with the request, so it is stopped when
    the response ends before it does, however it ends: the client gone before the first byte
    (Starlette then never reads the stream), mid-stream, or the server's send failing. A failure
    the stream did not get to report is logged."""

    def __init__(
        self, run: asyncio.Task[ExecutionResult], deltas: asyncio.Queue[str | None], *, target: str
    ) -> None:
        self.run, self.target = run, target
        # Whether the stream got to the run's outcome: then the client (or the server) has it.
        self.reported = False
        super().__init__(self._events(deltas), media_type="text/event-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.reported:
                self.run.cancel()
                self.run.add_done_callback(self._log_failure)

    def _log_failure(self, run: asyncio.Task[ExecutionResult]) -> None:
        # Looked at by the key's release too, which hushes asyncio's "never retrieved": said here.
        error = None if run.cancelled() else run.exception()
        if error is not None and not isinstance(error, SpecValidationError | SpecNotFoundError):
            logger.error(
                "the streamed run of %s failed after its client had gone", self.target, exc_info=error
            )

    async def _events(self, deltas: asyncio.Queue[str | None]) -> AsyncIterator[bytes]:
        """``delta`` events while the run streams, then one ``result`` event."""
        try:
            while (delta := await deltas.get()) is not None:
                yield _sse("delta", {"content": delta})
            self.reported = True  # the run is done (``None`` is its last act): its outcome is ours
            result = await self.run
        except asyncio.CancelledError:  # cut mid-stream: stopped at once, before the response unwinds
            self.run.cancel()
            raise
        except (SpecValidationError, SpecNotFoundError) as error:  # changed or deleted after the check
            detail = {"detail": str(error), "path": getattr(error, "path", "")}
            yield _sse("error", detail)
            return
        except Exception as error:  # what a 500 is without a stream: its type said, its text logged
            logger.exception("the streamed run of %s failed", self.target)
            yield _sse("error", {"detail": f"the run failed ({type(error).__name__})", "status": 500})
            return
        yield _sse("result", _result_json(result))
