"""The operation routes: request cancellation, dead letters, routing rules and ``explain``, LLM
deployments (references only, never keys) and refresh, and ``/health``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Final

from pydantic import ValidationError

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import redact_json, redact_text
from dynamic_agents.agents.runtime import AgentRuntime
from dynamic_agents.agents.specs import SpecKind, SpecStatus
from dynamic_agents.api._bodies import RulesBody
from dynamic_agents.events import AgentRequestEvent
from dynamic_agents.events._errors import event_error
from dynamic_agents.exceptions import ConfigurationError, DeliveryError, RequeueError
from dynamic_agents.llm.config import HEADER_PARAMS, SECRET_PARAMS
from dynamic_agents.operations import DeadLetters
from dynamic_agents.routing import EventRouter, RoutingRule
from dynamic_agents.secrets.references import error_with_value, masked_settings
from dynamic_agents.transports import Transport

try:
    from fastapi import APIRouter, HTTPException, Query, Response
    from fastapi.responses import JSONResponse
    from starlette.convertors import StringConvertor, register_url_convertor
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


class _RequestIdConvertor(StringConvertor):
    """A request id is any printable ASCII, ``/`` included (sent escaped as ``%2F``, which the
    server unescapes before routing); a character no id may hold is the coordinator's 422, not an
    unmatched route's 404."""

    regex = "[\\s\\S]+"


logger = get_logger("api")


# Starlette's convertor registry is process-wide: the name is the library's own.
register_url_convertor("dynamic_agents_request_id", _RequestIdConvertor())


HEALTH_CHECK_SECONDS: Final = 5
"""How long ``/health`` gives each check: one that takes longer counts as failing."""

PREVIEW_CHARS: Final = 1000
"""How much of each field of a dead letter that did not decode the list shows."""
PREVIEW_NAME_CHARS: Final = 100
PREVIEW_FIELDS: Final = 50
"""How many of its fields the list shows (the others are counted)."""
MORE_FIELDS: Final = "…"
"""The key under which the list says how many fields it did not show."""


def _preview(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """The fields of an entry that did not decode, for a person to see why: names and values as
    text (bytes that are no UTF-8 replaced), anything shaped like a key or a registered secret
    masked (the entry may hold anything), then cut — a value to :data:`PREVIEW_CHARS` with its
    size in bytes, a name to :data:`PREVIEW_NAME_CHARS` — and at most :data:`PREVIEW_FIELDS`
    fields, the rest counted under :data:`MORE_FIELDS`."""
    shown = {}
    for name, value in list(fields.items())[:PREVIEW_FIELDS]:
        text = _masked(value, PREVIEW_CHARS)
        if len(text) > PREVIEW_CHARS or len(value) > _read_of(PREVIEW_CHARS):
            text = f"{text[:PREVIEW_CHARS]}… ({len(value)} bytes)"
        shown[_masked(name, PREVIEW_NAME_CHARS)[:PREVIEW_NAME_CHARS]] = text
    if len(fields) > PREVIEW_FIELDS:
        shown[MORE_FIELDS] = f"{len(fields) - PREVIEW_FIELDS} more fields not shown"
    return shown


def _read_of(shown: int) -> int:
    """How many bytes of a value are masked to show ``shown`` characters of it: room for a
    secret across the cut, and for characters of up to 4 bytes."""
    return 4 * shown + 256


def _masked(data: bytes, shown: int) -> str:
    """The start of ``data`` as text, masked before it is cut to ``shown`` characters (a secret
    across the cut would otherwise lose its match and show its start); only what can be shown is
    masked, so a huge value costs no more than a short one."""
    return redact_text(data[: _read_of(shown)].decode("utf-8", errors="replace"))


def _public_params(params: Mapping[str, Any]) -> Any:
    """litellm params as configured, for listing (see :func:`masked_settings`): references as
    written; a credential written into the config itself masked (``api_key: sk-…``, anything under
    such a key, every header value, a URL's password), and any known secret value redacted."""
    return masked_settings(params, _lists_a_credential, redact=True)


def _lists_a_credential(key: object, parent: object) -> bool:
    """Stricter than a repr: every header value is taken for a credential."""
    return key in SECRET_PARAMS or parent in HEADER_PARAMS


def add_operation_routes(  # noqa: PLR0915 - one route per statement group; kept together for reading
    api: APIRouter,
    runtime: AgentRuntime,
    *,
    transport: Transport | None,
    event_router: EventRouter | None,
    llm_router: Any,
    health_checks: Mapping[str, Callable[[], Awaitable[bool]]] | None,
) -> None:
    """The routes beside the specs' on ``api``; those of a part the API was created without
    answer 404 saying so."""

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
                "reason": redact_text(letter.reason),  # these may quote the entry's values
                "kind": redact_text(letter.kind),  # the reason, or its start
                "origin_stream": letter.origin_stream,
                "origin_entry_id": letter.origin_entry_id,
                "delivery_count": letter.delivery_count,
                "dead_at": letter.dead_at.isoformat(),
                "request_id": letter.request_id,
                "response_id": letter.response_id,
                "request": None
                if letter.request is None
                else redact_json(letter.request.model_dump(mode="json")),
                "decode_error": redact_text(letter.decode_error) if letter.decode_error else None,
                "fields": _preview(letter.fields) if letter.request is None else None,
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
        parsed = []
        for index, rule in enumerate(body.rules):
            try:
                parsed.append(RoutingRule.model_validate(rule))
            except ValidationError as error:
                raise HTTPException(422, _rule_error(index, error)) from None
        try:
            routing.replace_rules(parsed)
        except (ValueError, ConfigurationError) as error:
            raise HTTPException(422, str(error)) from None
        return [rule.model_dump(mode="json") for rule in routing.rules]

    @api.post("/routing/explain", tags=["routing"])
    async def explain(event: dict[str, Any]) -> dict[str, Any]:
        try:
            request = AgentRequestEvent.model_validate(event)
        except ValidationError as error:  # each field, its value masked: not pydantic's own dump
            raise HTTPException(422, str(event_error(AgentRequestEvent, error))) from None
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

    async def checked(name: str, check: Callable[[], Awaitable[bool]]) -> bool:
        # Not wait_for: on Python 3.11 it returns a check's result that ends as the request is
        # cancelled (a client gone, a shutdown), and the cancellation is lost.
        deadline = asyncio.timeout(HEALTH_CHECK_SECONDS)
        try:
            async with deadline:
                return bool(await check())
        except Exception as error:  # a failing dependency is a health result, not an API error
            # the answer says only false (the text may say more than a caller should read)
            failure = f"{type(error).__name__}: {redact_text(str(error))}"
            logger.warning(
                "health check %r %s",
                name,
                f"took longer than {HEALTH_CHECK_SECONDS} s" if deadline.expired() else f"failed: {failure}",
            )
            return False

    @api.get("/health", tags=["health"])
    async def health() -> JSONResponse:
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
        # at once: one after another, a few slow dependencies took the sum of their times
        passed = await asyncio.gather(*(checked(name, check) for name, check in named.items()))
        checks = dict(zip(named, passed, strict=True))
        healthy = all(checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", "checks": checks}, status_code=200 if healthy else 503
        )


def _rule_error(index: int, error: ValidationError) -> str:
    """A rule of ``PUT /routing/rules`` that does not validate: where (``rules[1].source``), what
    is wrong and the value found, masked as errors mask it (not pydantic's own dump, which quotes
    it whole)."""
    details = error.errors(include_url=False)
    first = details[0]
    path = f"rules[{index}]" + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
    )
    names = [part for part in first["loc"] if isinstance(part, str)]
    message = error_with_value(first, name=names[-1] if names else None)
    others = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{path}: {message}{others}"
