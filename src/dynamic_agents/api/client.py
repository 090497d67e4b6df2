"""``AgentsHTTPClient``: call the REST API from another service (httpx)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Self
from urllib.parse import quote

import httpx

from dynamic_agents.exceptions import ApiError

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
        timeout: float = 120.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, transport=transport, timeout=timeout
        )

    def __repr__(self) -> str:
        return f"AgentsHTTPClient({str(self._http.base_url)!r})"

    async def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            detail: Any
            try:
                body = response.json()
            except ValueError:
                detail = response.reason_phrase
            else:  # the API's {"detail": …}, or whatever JSON a gateway in front of it sent
                detail = body["detail"] if isinstance(body, dict) and "detail" in body else body
            raise ApiError(response.status_code, detail)
        return response.json() if response.content else None

    async def execute(
        self,
        kind: str,
        spec_id: str,
        text: str,
        *,
        session_id: str,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"input": text, "session_id": session_id, "user_id": user_id}
        result: dict[str, Any] = await self._json(
            await self._http.post(_path(kind, spec_id, "execute"), json=body, headers=headers)
        )
        return result

    async def stream(
        self, kind: str, spec_id: str, text: str, *, session_id: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``("delta", {"content": …})`` events, then ``("result", {...})``, or ``("error", {...})``
        for a run that could not give a result (see the API's docs)."""
        body = {"input": text, "session_id": session_id, "stream": True}
        async with self._http.stream("POST", _path(kind, spec_id, "execute"), json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                await self._json(response)
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    yield event, json.loads(line.removeprefix("data: "))

    async def create(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._json(await self._http.post(_path(kind), json=spec))
        return created

    async def get(self, kind: str, spec_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._json(await self._http.get(_path(kind, spec_id)))
        return found

    async def cancel(self, request_id: str) -> None:
        await self._json(await self._http.post(_path("requests", request_id, "cancel")))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _path(*segments: str) -> str:
    """An API path from its segments, each escaped whole: ``?``, ``#``, ``/`` or ``%`` in an id stay
    part of that id."""
    return "/api/v1/" + "/".join(quote(segment, safe="") for segment in segments)
