"""``create_api_router``: the REST admin and execute API, as a FastAPI router hosts mount.

Routes under ``/api/v1`` (see ``docs/api.md``): agents / teams / workflows CRUD and execute (JSON, or
server-sent events of content deltas), request cancellation, dead-letter operations, routing rules
and ``explain``, LLM deployments (references only, never keys) and refresh, and ``/health``.

Authentication is required: pass a bearer-token verifier, or ``NO_AUTH`` explicitly for local use.

The parts live beside this module: ``_route`` (the route class: caller and body size checked
before the body is read), ``_bodies``, ``_idempotency``, ``_streaming``, ``_spec_routes`` and
``_operation_routes``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from typing import Annotated, Any, Final

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import MASK, redact_text
from dynamic_agents._validation import a_type, check_callable, check_count, check_seconds, shown
from dynamic_agents.agents.runtime import AgentRuntime
from dynamic_agents.api._bodies import DEFAULT_MAX_BODY_SIZE
from dynamic_agents.api._idempotency import DEFAULT_IDEMPOTENCY_MAX_KEYS, Idempotency
from dynamic_agents.api._operation_routes import add_operation_routes
from dynamic_agents.api._route import CALLER, ApiRoute
from dynamic_agents.api._spec_routes import add_spec_routes
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.routing import EventRouter
from dynamic_agents.transports import Transport
from dynamic_agents.transports.base import check_transport

try:
    from fastapi import APIRouter, Depends, Header, HTTPException, Request
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


__all__ = ["NO_AUTH", "TokenVerifier", "create_api_router"]

logger = get_logger("api")

TokenVerifier = Callable[[str], bool | Awaitable[bool]]
"""Returns whether a bearer token may use the API."""


class _NoAuth(Enum):
    NO_AUTH = "no-auth"


NO_AUTH: Final = _NoAuth.NO_AUTH
"""Pass as ``auth`` to serve the API without authentication (local use only)."""


def create_api_router(
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
    # one of the wrong type was taken, and the first route using it failed with a bare
    # AttributeError (a 500): refused here as AgentClient, AgentWorker and DeadLetters refuse it
    transport = check_transport(transport) if transport is not None else None
    # as a transport was: taken, and the first route using one of the wrong type failed with a bare
    # AttributeError (a 500; an un-awaited build_router(...) never awaited at all)
    if not isinstance(runtime, AgentRuntime):
        raise ConfigurationError(
            f"runtime must be an AgentRuntime (AgentRuntime(store, tools, models)), got {shown(runtime)}"
        )
    if event_router is not None and not isinstance(event_router, EventRouter):
        raise ConfigurationError(
            "event_router must be an EventRouter (RoutingConfig.from_file(…).router()), "
            f"got {shown(event_router)}"
        )
    if llm_router is not None and not (
        hasattr(llm_router, "config") and callable(getattr(llm_router, "refresh", None))
    ):  # duck-typed, as the parameter is: importing the LLM stack to check would cost seconds
        raise ConfigurationError(
            f"llm_router must be an LLMRouter (await build_router(config, secrets)), got {shown(llm_router)}"
        )
    _check_health_checks(health_checks)

    async def check(authorization: str | None) -> str:
        """The caller: a digest of its bearer token (``""`` without authentication)."""
        if auth is NO_AUTH:
            return ""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.lstrip(" ")  # one or more spaces after the scheme (RFC 7235)
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        try:
            verdict = auth(token)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as error:  # its backend down (a JWKS or introspection endpoint): retry
            text = redact_text(str(error).replace(token, MASK))  # (it may quote the token)
            logger.warning("the auth verifier failed: %s: %s", type(error).__name__, text)
            raise HTTPException(
                503,
                "the token could not be checked: authentication is unavailable",
                headers={"Retry-After": "1"},
            ) from None
        if not verdict:
            raise HTTPException(401, "the token was refused", headers={"WWW-Authenticate": "Bearer"})
        return hashlib.sha256(token.encode()).hexdigest()

    async def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
        """The caller, as its route checked it before reading the body (checked here for a route
        that did not: the header is declared for the OpenAPI schema too)."""
        caller = getattr(request.state, CALLER, None)
        return caller if isinstance(caller, str) else await check(authorization)

    class Route(ApiRoute):
        authorise = staticmethod(check)
        largest_body = max_body_size

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(authorised)], route_class=Route)
    add_spec_routes(api, runtime, Idempotency(idempotency_ttl, idempotency_max_keys), authorised)
    add_operation_routes(
        api,
        runtime,
        transport=transport,
        event_router=event_router,
        llm_router=llm_router,
        health_checks=health_checks,
    )

    # The fixed paths (/health, /dead-letters, /routing/rules, /llm/deployments) must be matched
    # before the /{kind_name}/... templates declared first, which would take them for unknown kinds.
    api.routes.sort(key=lambda route: "{kind_name}" in getattr(route, "path", ""))
    return api


def _check_health_checks(checks: object) -> None:
    """Named async checks, or ``None``: a check that is not callable (a coroutine, ``ping()`` for
    ``ping``) failed at every request as a check that raised, unsaid, and a list failed every
    ``/health`` with a 500."""
    if checks is None:
        return
    if not isinstance(checks, Mapping):
        raise ConfigurationError(
            f"health_checks must be a mapping of names to async checks, got {a_type(checks)}"
        )
    for name, check in checks.items():
        if not isinstance(name, str):
            raise ConfigurationError(
                f"health_checks must be a mapping of names to async checks, got a name {shown(name)}"
            )
        check_callable(f"health_checks[{name!r}]", check, "an async callable returning a bool")
