"""The route class of every API route: the caller checked and the body's size limited before the
body is read, a JSON body holding what is no text refused, the transport or the spec store
failing answered as a 503, and a request that does not validate as a 422 that shows its values
as errors do."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import REDACTOR
from dynamic_agents.api._bodies import limited_receive, lone_surrogate, non_finite_number, too_large
from dynamic_agents.exceptions import SpecStoreUnavailableError, TransportError
from dynamic_agents.secrets.references import shown_value

try:
    from fastapi import HTTPException, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    from dynamic_agents.exceptions import MissingDependencyError

    raise MissingDependencyError("the REST API", "api") from error


logger = get_logger("api")


MAX_SHOWN_ERRORS: Final = 50
"""How many errors a 422 shows; the others are counted in one more entry, ``too_many_errors``."""

CALLER: Final = "dynamic_agents_caller"
"""Where a route keeps its caller (see :func:`create_api_router`) in ``request.state``."""


class ApiRoute(APIRoute):
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
                setattr(request.state, CALLER, await self.authorise(request.headers.get("authorization")))
            receive = request.receive
            if (limit := self.largest_body) is not None:
                declared = request.headers.get("content-length", "")
                if declared.isascii() and declared.isdigit() and int(declared) > limit:  # not "²"
                    return JSONResponse({"detail": too_large(limit, declared)}, status_code=413)
                # A body sent without a length (chunked) is counted as it arrives.
                receive = limited_receive(receive, limit)
            request = _TextOnlyRequest(request.scope, receive)
            try:
                return await handler(request)
            except RequestValidationError as error:
                # FastAPI's own 422 quotes each bad value back, a key pasted in the wrong place
                # with it, and fails to write a NaN or an infinity there (a 500): the same
                # answer, with the values as errors show them
                # Its first errors only: a body of a megabyte may hold 90,000 (unknown keys), each
                # costly to show (9 MB answered, the event loop held for seconds)
                found = error.errors()
                errors = [_public_error(each) for each in found[:MAX_SHOWN_ERRORS]]
                if len(found) > MAX_SHOWN_ERRORS:
                    errors.append(_more_errors(len(found) - MAX_SHOWN_ERRORS))
                return JSONResponse({"detail": errors}, status_code=422)
            except TransportError as error:  # a DeliveryError (an unknown entry) is each route's own
                logger.warning("%s %s: %s", request.method, request.url.path, error)
                detail = f"the message transport is unavailable: {REDACTOR.redact(str(error))}"
                return JSONResponse({"detail": detail}, status_code=503)
            except SpecStoreUnavailableError as error:  # the database away: worth a retry, as above
                logger.warning("%s %s: %s", request.method, request.url.path, error)
                detail = f"the spec store is unavailable: {REDACTOR.redact(str(error))}"
                return JSONResponse({"detail": detail}, status_code=503)

        return answer


class _TextOnlyRequest(Request):
    """A request whose JSON body holds text only: a lone surrogate (``"\\ud800"``, which Python's
    reader takes) is a 422 naming where it is, not a spec stored that no response can then write
    (a 500 for its kind's list) nor a 422 failing to quote it back. So is a number JSON has not
    (``NaN``, ``Infinity``, ``1e400``), which a spec's answer showed as ``null``."""

    async def json(self) -> Any:
        value = await super().json()
        body = await self.body()
        found = lone_surrogate(body, value)
        if found is None:
            _refuse_non_finite(body, value)
            return value
        location, surrogate = found
        names = [
            _public_name(p.encode("utf-8", "backslashreplace").decode() if isinstance(p, str) else p)
            for p in location
        ]
        raise HTTPException(
            422,
            [
                {
                    "type": "string_unicode",
                    "loc": ["body", *names],
                    "msg": f"Input should be Unicode text: {ascii(surrogate)[1:-1]} is a lone surrogate, "
                    "half of a pair and no character; send the character itself, or both halves of its pair",
                }
            ],
        )


def _refuse_non_finite(body: bytes, value: Any) -> None:
    found = non_finite_number(body, value)
    if found is None:
        return
    location, number = found
    shown = "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"
    raise HTTPException(
        422,
        [
            {
                "type": "finite_number",
                "loc": ["body", *(_public_name(part) for part in location)],
                "msg": f"Input should be a finite number: {shown} is no JSON number",
            }
        ],
    )


def _public_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """One of FastAPI's validation errors as a 422 may show it: ``type``, ``loc``, ``msg``, the
    ``ctx`` values that are plain (the bounds: ``{"le": 3600.0}``), and the ``input`` as
    :func:`~dynamic_agents.secrets.references.shown_value` shows it (as given when it is plain;
    masked under a credential's name or when shaped like a key, cut when long, ``'nan'`` for a
    number JSON has not; left out when it is a list or an object). The ``loc``'s names are shown
    the same way: an unknown key is one the caller wrote (a key pasted as a field's name)."""
    location = list(error.get("loc", ()))
    public: dict[str, Any] = {
        "type": error["type"],
        "loc": [_public_name(part) for part in location],
        "msg": error["msg"],
    }
    if error["type"] != "missing":
        value = error.get("input")
        shown = shown_value(value, name=location[-1] if location else None)
        if shown is not None:
            plain = (
                value is None
                or isinstance(value, bool | int)
                or (isinstance(value, float) and math.isfinite(value))
                or (isinstance(value, str) and shown == repr(value))
            )
            public["input"] = value if plain else shown
    context = {
        name: value
        for name, value in (error.get("ctx") or {}).items()
        if isinstance(value, str | int) or (isinstance(value, float) and math.isfinite(value))
    }
    if context:
        public["ctx"] = context
    return public


def _more_errors(count: int) -> dict[str, Any]:
    return {
        "type": "too_many_errors",
        "loc": [],
        "msg": f"{count} more errors not shown (the first {MAX_SHOWN_ERRORS} are)",
    }


def _public_name(part: object) -> object:
    """A part of a 422's ``loc``: a name as given when :func:`shown_value` shows it whole (``strem``),
    else as it shows it (masked, or cut); an index as it is."""
    if not isinstance(part, str):
        return part
    shown = shown_value(part)
    return part if shown == repr(part) else shown
