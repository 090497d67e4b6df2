"""``AgentsHTTPClient``: call the REST API from another service (httpx)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final, Self
from urllib.parse import quote

import httpx

from dynamic_agents._redaction import MASK, REDACTOR, masked_url, redact_json, redact_text
from dynamic_agents._validation import a_type, check_base_url, check_seconds, shown, unsendable_token
from dynamic_agents.exceptions import ApiError, ApiUnavailableError, ConfigurationError

__all__ = ["AgentsHTTPClient", "ApiError"]  # ApiError lives in dynamic_agents.exceptions


class AgentsHTTPClient:
    """``await client.execute("agents", "support", "hi", session_id="s1")``, mirroring the design
    document's ``call_agent`` example. ``transport`` serves an app in process (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | None = 120.0,
    ) -> None:
        check_base_url("base_url", base_url)
        _check_token(token)
        timeout = check_seconds("timeout", timeout, optional=True)
        if token:  # masked wherever the library shows text: an error body echoing it, a log line
            REDACTOR.register(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, transport=transport, timeout=timeout
        )

    def __repr__(self) -> str:
        return f"AgentsHTTPClient({masked_url(str(self._http.base_url))!r})"

    async def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **options)
        except httpx.TransportError as error:
            raise self._unavailable(error) from error

    def _unavailable(self, error: httpx.TransportError) -> ApiUnavailableError:
        """httpx's network error or timeout as the library's (an ``except DynamicAgentsError``
        missed it): where, what happened, and httpx's text (masked)."""
        where = masked_url(str(self._http.base_url), register=False)
        timed_out = isinstance(error, httpx.TimeoutException)
        happened = "did not answer in time" if timed_out else "could not be reached"
        return ApiUnavailableError(
            f"the agents API at {where} {happened} ({type(error).__name__}: {redact_text(str(error))})"
        )

    async def _json(self, response: httpx.Response) -> Any:
        # A redirect is no answer either: httpx does not follow it (nor send the token after it),
        # and its empty body was taken for the API's (None; a stream without an event)
        if not response.is_success:
            detail: Any
            try:
                body = response.json()
            except (ValueError, RecursionError):  # json.loads recurses per level of nesting
                detail = response.reason_phrase
                if response.is_redirect:  # where the base URL should point (an https:// one)
                    detail += f" to {masked_url(response.headers['location'], register=False)}"
            else:  # the API's {"detail": …}, or whatever JSON a gateway in front of it sent
                detail = body["detail"] if isinstance(body, dict) and "detail" in body else body
                try:  # a gateway's may echo what it was sent: the token
                    detail = redact_json(detail)
                except RecursionError:  # nested nearly as deep as json.loads reads
                    detail = response.reason_phrase
            raise ApiError(response.status_code, detail)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as error:  # not the API's answer: a web app's page at the base URL
            kind = response.headers.get("content-type", "no content type")
            raise ApiError(response.status_code, f"the answer is no JSON ({kind})") from error
        except RecursionError:  # no ValueError: json.loads recurses per level of nesting
            raise ApiError(response.status_code, "the answer's JSON is nested too deeply") from None

    async def _object(self, response: httpx.Response) -> dict[str, Any]:
        """The answer of a call that returns a spec or a result: a JSON object, else an
        ``ApiError`` (another JSON API at the base URL), not a list or a str typed as a dict."""
        data = await self._json(response)
        if isinstance(data, dict):
            return data
        got = "no body" if not response.content else "null" if data is None else a_type(data)
        raise ApiError(response.status_code, f"the answer is no JSON object ({got})")

    async def execute(
        self,
        kind: str,
        spec_id: str,
        text: str,
        *,
        session_id: str,
        user_id: str | None = None,
        session_state: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """The run's ``ExecutionResult`` as JSON. ``timeout`` is the run's (the API allows up to
        3600 s); the call waits that long and a margin when it is longer than the client's own."""
        return await self._object(
            await self._send(
                "POST",
                _path(kind, spec_id, "execute"),
                json=_execute_body(text, session_id, user_id, session_state, timeout),
                headers=_idempotency(idempotency_key),
                timeout=self._call_timeout(timeout),
            )
        )

    async def stream(
        self,
        kind: str,
        spec_id: str,
        text: str,
        *,
        session_id: str,
        user_id: str | None = None,
        session_state: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``("delta", {"content": …})`` events, then ``("result", {...})``, or ``("error", {...})``
        for a run that could not give a result (see the API's docs); options as :meth:`execute`.
        An answer that ends without either (cut short, or no event stream) is an ``ApiError``."""
        body = {**_execute_body(text, session_id, user_id, session_state, timeout), "stream": True}
        try:
            async with self._http.stream(
                "POST",
                _path(kind, spec_id, "execute"),
                json=body,
                headers=_idempotency(idempotency_key),
                timeout=self._call_timeout(timeout),
            ) as response:
                if not response.is_success:
                    await response.aread()
                    await self._json(response)
                event, ended = "", False
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        ended = event in _LAST_EVENTS
                        yield event, _event_data(response.status_code, event, line.removeprefix("data: "))
                if not ended:  # a stream cut short, or a 200 that is no stream (a web app's page)
                    kind = response.headers.get("content-type", "no content type")
                    shape = "" if kind.startswith("text/event-stream") else f" ({kind}, not an event stream)"
                    raise ApiError(response.status_code, f"the answer ended without a result event{shape}")
        except httpx.TransportError as error:  # connecting, or the stream cut mid-way
            raise self._unavailable(error) from error

    def _call_timeout(self, run_timeout: float | None) -> httpx.Timeout:
        """The client's timeout, its read extended to the run's and a margin when that is longer
        (connecting, writing and the pool keep theirs: an API that is down fails as soon)."""
        timeout = self._http.timeout
        if run_timeout is None or timeout.read is None or timeout.read >= run_timeout + _RUN_MARGIN:
            return timeout
        return httpx.Timeout(
            connect=timeout.connect, read=run_timeout + _RUN_MARGIN, write=timeout.write, pool=timeout.pool
        )

    async def create(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._object(await self._send("POST", _path(kind), json=spec))

    async def get(self, kind: str, spec_id: str) -> dict[str, Any]:
        return await self._object(await self._send("GET", _path(kind, spec_id)))

    async def cancel(self, request_id: str) -> None:
        await self._json(await self._send("POST", _path("requests", request_id, "cancel")))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_LAST_EVENTS = frozenset({"result", "error"})
"""The events a stream ends with: one, after its deltas."""

_RUN_MARGIN = 30.0
"""Seconds a call waits past its run's timeout: the API's own work before and after the run."""


def _execute_body(
    text: str,
    session_id: str,
    user_id: str | None,
    session_state: Mapping[str, Any] | None,
    timeout: float | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"input": text, "session_id": session_id, "user_id": user_id}
    if session_state:
        body["session_state"] = dict(session_state)
    if timeout is not None:
        body["timeout"] = timeout
    return body


def _event_data(status: int, event: str, data: str) -> dict[str, Any]:
    """An event's data, a JSON object: else an ``ApiError`` (a proxy mangling the stream, a server
    that is not the API), not a bare ``JSONDecodeError`` or ``RecursionError`` an ``except ApiError``
    misses, nor a list typed as a dict."""
    try:
        value = json.loads(data)
    except ValueError:
        raise ApiError(status, f"an event's data is no JSON (event {shown(event)})") from None
    except RecursionError:  # no ValueError: json.loads recurses per level of nesting
        raise ApiError(status, f"an event's data is nested too deeply (event {shown(event)})") from None
    if not isinstance(value, dict):
        got = "null" if value is None else a_type(value)
        raise ApiError(status, f"an event's data is no JSON object (event {shown(event)}, {got})")
    return value


def _idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


def _path(*segments: str) -> str:
    """An API path from its segments, each escaped whole: ``?``, ``#``, ``/`` or ``%`` in an id stay
    part of that id, and so does an id of ``.`` or ``..`` (a dot segment, which httpx resolves:
    ``cancel("..")`` posted to ``/api/v1/cancel``), its dots escaped."""
    return "/api/v1/" + "/".join(
        _DOT_SEGMENTS.get(segment) or quote(segment, safe="") for segment in segments
    )


_DOT_SEGMENTS: Final = {".": "%2E", "..": "%2E%2E"}


def _check_token(token: object) -> None:
    """A token of spaces was sent as ``Bearer    ``; one with a newline (pasted from a file) was
    refused by httpx on every request, a non-ASCII one by httpx here with the header in clear in
    the error (:func:`unsendable_token`); one of another type was sent as its ``str()``."""
    if token is None or (isinstance(token, str) and token.strip() and not unsendable_token(token)):
        return
    if not isinstance(token, str):
        got = shown(token)
    elif not token.strip():  # a blank one is no secret
        got = repr(token)
    else:  # one with a control character, a space or non-ASCII may be a real token
        got = MASK
    raise ConfigurationError(f"token must be a str (the API's bearer token) or None, got {got}")
