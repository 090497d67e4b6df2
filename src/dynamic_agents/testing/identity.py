"""An in-memory A8N Identity service: the whole HTTP contract in process, for tests.

:class:`InMemoryIdentityService` keeps secrets in plain dicts and answers the A8N Identity contract
(endpoints, status codes, RBAC, paging) with one request handler behind two adapters: ``handle`` for
``httpx.MockTransport`` (``service.mock_transport()``) and ``__call__``, a bare ASGI 3 app for
``httpx.ASGITransport(app=service)`` or uvicorn. Tests seed and rotate secrets without HTTP, read
what was asked (``requests``, ``count()``), inject faults (``fail_next()``, ``down``, ``delay``) and
turn on the variations a client must tolerate (``bare_list``, ``omit_optional``, ``naive_timestamps``).

State changes happen without an ``await`` between check and write, so concurrent requests never see
half an update. Seeding refuses what the service would, with the errors an ``IdentityClient`` raises
(``IdentityRequestError`` for 422, ``IdentityNotFoundError``, ``IdentityConflictError``). Error
details name fields, never secret values.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx

from dynamic_agents._validation import a_type, check_seconds
from dynamic_agents.exceptions import (
    ConfigurationError,
    IdentityConflictError,
    IdentityNotFoundError,
    IdentityRequestError,
)
from dynamic_agents.secrets.references import shown_value

__all__ = ["DEFAULT_IDENTITY_PROVIDERS", "InMemoryIdentityService", "RecordedRequest"]

DEFAULT_IDENTITY_PROVIDERS: Mapping[str, tuple[str, ...]] = {
    "openai": ("api_key", "org_id"),
    "anthropic": ("api_key",),
    "azure_openai": ("api_key", "endpoint", "api_version"),
    "discord": ("bot_token", "application_id"),
    "groq": ("api_key",),
    "slack": ("bot_token", "app_token"),
    "google": ("api_key",),
}
_DISPLAY_NAMES = {"openai": "OpenAI", "azure_openai": "Azure OpenAI"}
_REQUIRED_FIELDS = frozenset({"api_key", "bot_token"})
_STATUSES = ("active", "disabled")
_MAX_PAGE_SIZE = 100

Message = MutableMapping[str, Any]  # ASGI scopes and messages are open-ended dicts
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as received. ``user_id``: the user its token acts for; ``None`` for the service
    token and for a missing or unknown one (``token`` tells them apart)."""

    method: str
    path: str
    query: dict[str, str]
    user_id: str | None
    token: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class _Secret:
    id: str
    name: str
    provider: str
    user_id: str | None
    status: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    values: dict[str, str] = field(repr=False)


@dataclass(slots=True)
class _Fault:
    status: int
    remaining: int | None
    headers: dict[str, str]
    method: str | None
    path: re.Pattern[str] | None

    def matches(self, method: str, path: str) -> bool:
        return self.method in (None, method) and (self.path is None or self.path.fullmatch(path) is not None)


@dataclass(frozen=True, slots=True)
class _Call:
    caller: str | None  # the user the token acts for; None is the service itself
    params: dict[str, str]
    query: dict[str, str]
    body: bytes


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})


Handler = Callable[[_Call], tuple[int, object]]


class InMemoryIdentityService:
    """The A8N Identity service in memory: serve it to httpx, seed it, break it, inspect it.

    ``tokens`` maps each bearer token to the user it acts for (``None``: the service token, which sees
    everything); ``providers`` maps provider names to their fields (``api_key`` and ``bot_token`` are
    required where present); ``clock`` returns the UTC time stamped on ``created_at``/``updated_at``.
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, str | None] | None = None,
        providers: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._tokens: dict[str, str | None] = dict({"service-token": None} if tokens is None else tokens)
        chosen = DEFAULT_IDENTITY_PROVIDERS if providers is None else providers
        if any(isinstance(fields, str) for fields in chosen.values()):
            raise ConfigurationError("providers maps each name to a list of field names, not to a string")
        self._providers = {name: tuple(fields) for name, fields in chosen.items()}
        self._clock = clock or (lambda: datetime.now(UTC))
        self._secrets: dict[str, _Secret] = {}
        self._created = 0
        self._faults: list[_Fault] = []
        self.requests: list[RecordedRequest] = []
        self.down = False
        self.delay = 0.0
        self.bare_list = False
        self.omit_optional = False
        self.naive_timestamps = False
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (_pattern("/api/v1/secrets"), {"GET": self._list, "POST": self._create}),
            (
                _pattern("/api/v1/secrets/{id}"),
                {"GET": self._get, "PATCH": self._patch, "DELETE": self._delete},
            ),
            (_pattern("/api/v1/secrets/{id}/values"), {"GET": self._values}),
            (_pattern("/api/v1/providers"), {"GET": self._list_providers}),
            (_pattern("/api/v1/providers/{name}/schema"), {"GET": self._schema}),
        ]

    def __repr__(self) -> str:
        return f"InMemoryIdentityService(secrets={len(self._secrets)}, tokens={len(self._tokens)})"

    # -- seeding and rotation, without HTTP ------------------------------------------------------

    def add_secret(
        self,
        name: str,
        provider: str,
        values: Mapping[str, str],
        *,
        user_id: str | None = None,
        status: str = "active",
        description: str | None = None,
    ) -> str:
        """Store a secret as ``POST /api/v1/secrets`` would (refusing what it would refuse, with the
        error a client gets: an IdentityRequestError for a ``name`` that is not a non-empty string,
        an IdentityNotFoundError for an unknown provider); return its id."""
        with _as_client_errors():
            # the body checks a POST gets: add_secret(name=123) stored what the service refuses
            fields = {"name": name, "provider": provider, "description": description}
            name, provider = _string(fields, "name"), _string(fields, "provider")
            description = _optional_string(fields, "description")
            checked_status = _status(status)
            secret = self._insert(name, provider, _values(dict(values)), _owner(user_id), description)
            secret.status = checked_status
            return secret.id

    def set_values(self, secret_id: str, values: Mapping[str, str]) -> None:
        """Replace the given fields (a rotation) and bump ``updated_at``."""
        with _as_client_errors():
            self._update(self._secret(secret_id), {"values": dict(values)})

    def set_status(self, secret_id: str, status: str) -> None:
        with _as_client_errors():
            self._update(self._secret(secret_id), {"status": status})

    def remove_secret(self, secret_id: str) -> None:
        with _as_client_errors():
            del self._secrets[self._secret(secret_id).id]

    def find_secret(self, name: str, provider: str, *, user_id: str | None = None) -> str:
        """The id of the secret with that name, provider and owner."""
        for secret in self._secrets.values():
            if (secret.name, secret.provider, secret.user_id) == (name, provider, user_id):
                return secret.id
        raise IdentityNotFoundError(f"no secret {name!r} of {provider!r} for {user_id!r}", status=404)

    def secret_values(self, secret_id: str) -> dict[str, str]:
        """A copy of a secret's stored values, for assertions."""
        with _as_client_errors():
            return dict(self._secret(secret_id).values)

    def add_token(self, token: str, user_id: str | None) -> None:
        self._tokens[token] = user_id

    def revoke_token(self, token: str) -> None:
        """Forget a token: requests carrying it get ``401``, as an expired token would."""
        self._tokens.pop(token, None)

    # -- faults and recording --------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        times: int | None = 1,
        retry_after: float | None = None,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (``times=None``: until
        :meth:`clear_faults`). ``path`` is exact or a template (``/api/v1/secrets/{id}``); faults
        come before routing and authentication, oldest first. ``retry_after``: seconds >= 0 for a
        ``Retry-After`` header (``None``: none), else a ConfigurationError."""
        if not 400 <= status <= 599:
            raise ConfigurationError(f"fail_next status must be an error status (400-599), got {status}")
        if times is not None and times < 1:
            raise ConfigurationError(f"fail_next times must be >= 1 or None, got {times}")
        # checked as HTTPErrorStep checks it: -1 or NaN made a Retry-After no server sends
        retry_after = check_seconds("fail_next retry_after", retry_after, zero=True, optional=True)
        pattern = None if path is None else _pattern(path)
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:.6g}"}  # "2", "0.5"
        self._faults.append(_Fault(status, times, headers, method and method.upper(), pattern))

    def clear_faults(self) -> None:
        """Drop pending :meth:`fail_next` faults, reset ``down`` and ``delay`` (tolerance switches stay)."""
        self._faults.clear()
        self.down, self.delay = False, 0.0

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests received, by method and by exact path or template (``/api/v1/secrets/{id}``)."""
        pattern = None if path is None else _pattern(path)
        return sum(
            1
            for request in self.requests
            if (method is None or method.upper() == request.method)
            and (pattern is None or pattern.fullmatch(request.path))
        )

    def reset_requests(self) -> None:
        self.requests.clear()

    # -- HTTP adapters ---------------------------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer an httpx request: ``httpx.MockTransport(service.handle)``, for an ``AsyncClient``."""
        body = await request.aread()
        auth = request.headers.get("authorization")
        status, headers, content = await self._respond(
            request.method, request.url.path, request.url.query.decode(), auth, body
        )
        return httpx.Response(status, headers=headers, content=content)

    def mock_transport(self) -> httpx.MockTransport:
        """A transport for ``httpx.AsyncClient(transport=...)`` (async clients only)."""
        return httpx.MockTransport(self.handle)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        """The ASGI 3 app: ``httpx.ASGITransport(app=service)`` or ``uvicorn.run(service)``."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":  # that is, lifespan.startup
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            raise ConfigurationError(f"InMemoryIdentityService serves http, not {scope['type']!r}")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        query, auth = scope.get("query_string", b"").decode("latin-1"), headers.get("authorization")
        status, reply, content = await self._respond(scope["method"], scope["path"], query, auth, bytes(body))
        if status != 204:
            reply["content-length"] = str(len(content))
        raw = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in reply.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    # -- the request handler both adapters share -------------------------------------------------

    async def _respond(
        self, method: str, path: str, query_string: str, authorization: str | None, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        method = method.upper()
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        scheme, _, token = (authorization or "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        self.requests.append(
            RecordedRequest(method, path, query, self._tokens.get(bearer) if bearer else None, bearer)
        )
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        headers: dict[str, str] = {}
        try:
            status, payload = self._dispatch(method, path, query, bearer, body)
        except _HTTPError as error:
            status, payload, headers = error.status, {"detail": error.detail}, error.headers
        if status == 204:
            return status, headers, b""
        return status, {"content-type": "application/json", **headers}, json.dumps(payload).encode()

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], token: str | None, body: bytes
    ) -> tuple[int, object]:
        if self.down:
            raise _HTTPError(503, "service unavailable")
        for fault in self._faults:
            if fault.matches(method, path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                raise _HTTPError(fault.status, "injected", fault.headers)
        for pattern, handlers in self._routes:
            if (match := pattern.fullmatch(path)) is None:
                continue
            if method not in handlers:
                raise _HTTPError(405, f"method {method} not allowed", {"Allow": ", ".join(handlers)})
            if token is None or token not in self._tokens:
                raise _HTTPError(401, "missing, unknown or expired token", {"WWW-Authenticate": "Bearer"})
            return handlers[method](_Call(self._tokens[token], match.groupdict(), query, body))
        raise _HTTPError(404, f"no such path {path!r}")

    # -- endpoints -------------------------------------------------------------------------------

    def _create(self, call: _Call) -> tuple[int, object]:
        data = _json_object(call.body)
        user_id = _owner(data.get("user_id"))
        if call.caller is not None and user_id not in (None, call.caller):
            raise _HTTPError(403, "a user token may only create its own secrets")
        name, provider = _string(data, "name"), _string(data, "provider")
        description = _optional_string(data, "description")
        owner = call.caller if user_id is None else user_id
        return 201, self._metadata(
            self._insert(name, provider, _values(data.get("values")), owner, description)
        )

    def _list(self, call: _Call) -> tuple[int, object]:
        page = _int_param(call.query, "page", 1, None)
        page_size = _int_param(call.query, "page_size", 50, _MAX_PAGE_SIZE)
        user_id, provider = call.query.get("user_id"), call.query.get("provider")
        if user_id == "":  # no secret is owned by "": it would list nothing, silently
            raise _HTTPError(422, "user_id must be a non-empty string or left out, got ''")
        if call.caller is not None:
            if user_id not in (None, call.caller):
                raise _HTTPError(403, "a user token may only list its own secrets")
            user_id = call.caller
        if provider is not None:
            self._fields_of(provider)  # the contract's 404: an unknown provider is no empty list
        found = [
            self._metadata(secret)
            for secret in sorted(self._secrets.values(), key=lambda s: (s.created_at, s.id))
            if user_id in (None, secret.user_id) and provider in (None, secret.provider)
        ]
        if self.bare_list:  # like an unpaginated service: the whole list, paging ignored
            return 200, found
        items = found[(page - 1) * page_size : page * page_size]
        return 200, {"items": items, "total": len(found), "page": page, "page_size": page_size}

    def _get(self, call: _Call) -> tuple[int, object]:
        return 200, self._metadata(self._owned(call))

    def _values(self, call: _Call) -> tuple[int, object]:
        secret = self._owned(call)
        return 200, {
            "id": secret.id,
            "name": secret.name,
            "provider": secret.provider,
            "values": secret.values,
        }

    def _patch(self, call: _Call) -> tuple[int, object]:
        secret = self._owned(call)
        return 200, self._metadata(self._update(secret, _json_object(call.body)))

    def _delete(self, call: _Call) -> tuple[int, object]:
        del self._secrets[self._owned(call).id]
        return 204, None

    def _list_providers(self, call: _Call) -> tuple[int, object]:
        return 200, {
            "items": [
                {"name": name, "display_name": _display_name(name), "fields": list(fields)}
                for name, fields in self._providers.items()
            ]
        }

    def _schema(self, call: _Call) -> tuple[int, object]:
        name = call.params["name"]
        fields = self._fields_of(name)
        return 200, {
            "title": _display_name(name),
            "type": "object",
            "properties": {field_name: {"type": "string"} for field_name in fields},
            "required": [field_name for field_name in fields if field_name in _REQUIRED_FIELDS],
            "additionalProperties": False,
        }

    # -- storage ---------------------------------------------------------------------------------

    def _insert(
        self, name: str, provider: str, values: dict[str, str], user_id: str | None, description: str | None
    ) -> _Secret:
        if not name:
            raise _HTTPError(422, "name must be a non-empty string")
        self._check_fields(provider, values, partial=False)
        self._check_unique(name, provider, user_id)
        self._created += 1
        secret_id = str(uuid.UUID(int=self._created))  # sorts in creation order: ties on created_at keep it
        now = self._now()
        secret = _Secret(secret_id, name, provider, user_id, "active", description, now, now, values)
        self._secrets[secret_id] = secret
        return secret

    def _update(self, secret: _Secret, data: Mapping[str, object]) -> _Secret:
        """Apply a PATCH body: check every change first, then make them all at once."""
        name = _string(data, "name") if "name" in data else secret.name
        if name != secret.name:
            self._check_unique(name, secret.provider, secret.user_id)
        values = secret.values
        if "values" in data:
            update = _values(data["values"])
            self._check_fields(secret.provider, update, partial=True)
            values = {**values, **update}
        status = _status(data["status"]) if "status" in data else secret.status
        description = _optional_string(data, "description") if "description" in data else secret.description
        secret.name, secret.values, secret.status, secret.description = name, values, status, description
        if data.keys() & {"name", "values", "status", "description"}:
            secret.updated_at = self._now()
        return secret

    def _check_fields(self, provider: str, values: Mapping[str, str], *, partial: bool) -> None:
        known = self._fields_of(provider)
        if unknown := sorted(set(values) - set(known)):
            raise _HTTPError(
                422, f"unknown fields {unknown} for {provider!r}, whose fields are {list(known)}"
            )
        missing = [name for name in known if name in _REQUIRED_FIELDS and name not in values]
        if missing and not partial:
            raise _HTTPError(422, f"provider {provider!r} requires the fields {missing}")

    def _fields_of(self, provider: str) -> tuple[str, ...]:
        """A provider's fields, or the contract's ``404`` for an unknown provider."""
        if (fields := self._providers.get(provider)) is None:
            raise _HTTPError(
                404, f"unknown provider {provider!r}; known: {', '.join(sorted(self._providers))}"
            )
        return fields

    def _check_unique(self, name: str, provider: str, user_id: str | None) -> None:
        if any((s.name, s.provider, s.user_id) == (name, provider, user_id) for s in self._secrets.values()):
            owner = "the service" if user_id is None else f"user {user_id!r}"
            raise _HTTPError(409, f"{owner} already has a secret named {name!r} for provider {provider!r}")

    def _secret(self, secret_id: str) -> _Secret:
        if (secret := self._secrets.get(secret_id)) is None:
            raise _HTTPError(404, f"no secret with id {secret_id!r}")
        return secret

    def _owned(self, call: _Call) -> _Secret:
        secret = self._secret(call.params["id"])
        if call.caller is not None and secret.user_id != call.caller:
            raise _HTTPError(403, "this secret belongs to someone else")
        return secret

    def _now(self) -> datetime:
        moment = self._clock()  # naive results are taken as UTC
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def _metadata(self, secret: _Secret) -> dict[str, object]:
        data: dict[str, object] = {
            "id": secret.id,
            "name": secret.name,
            "provider": secret.provider,
            "user_id": secret.user_id,
            "status": secret.status,
            "fields": sorted(secret.values),
            "created_at": self._timestamp(secret.created_at),
            "updated_at": self._timestamp(secret.updated_at),
            "description": secret.description,
        }
        if self.omit_optional:
            del data["status"], data["fields"]
        return data

    def _timestamp(self, moment: datetime) -> str:
        return (moment.replace(tzinfo=None) if self.naive_timestamps else moment).isoformat()


@functools.lru_cache(maxsize=256)
def _pattern(template: str) -> re.Pattern[str]:
    """``/a/{id}/b`` -> a regex in which each ``{name}`` matches one path segment."""
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts)))


def _display_name(provider: str) -> str:
    return _DISPLAY_NAMES.get(provider, provider.replace("_", " ").title())


def _json_object(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except ValueError:  # also bytes that are not UTF-8
        raise _HTTPError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _HTTPError(422, "the request body must be a JSON object")
    return data


def _string(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _HTTPError(422, f"{key} is required and must be a non-empty string, got {_shown(value, key)}")
    return value


def _optional_string(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _HTTPError(422, f"{key} must be a string or null, got {_shown(value, key)}")


def _owner(raw: object) -> str | None:
    """A create's ``user_id``: ``""`` would own a secret no token acts for."""
    if raw is None or (isinstance(raw, str) and raw):
        return raw
    raise _HTTPError(422, f"user_id must be a non-empty string or null, got {_shown(raw, 'user_id')}")


def _values(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _HTTPError(422, "values is required and must be an object mapping field names to strings")
    for key, value in raw.items():
        if not isinstance(value, str):  # name the field, never the value
            raise _HTTPError(422, f"values[{key!r}] must be a string")
    return dict(raw)


def _status(raw: object) -> str:
    if raw not in _STATUSES:
        raise _HTTPError(422, f"status must be one of {list(_STATUSES)}, got {_shown(raw, 'status')}")
    return str(raw)


def _shown(raw: object, field: str) -> str:
    """``raw`` for an error detail, as the library's own errors show a value (``shown_value``: a
    key-shaped string masked, a long one cut); a list or an object only by its type."""
    return shown_value(raw, name=field) or a_type(raw)


def _int_param(query: Mapping[str, str], name: str, default: int, high: int | None) -> int:
    if (raw := query.get(name)) is None:
        return default
    # digits only: int() also takes "1_0", " 2", "+2" and non-ASCII digits, which a query is not
    try:
        value = int(raw) if raw.isascii() and raw.isdigit() else 0
    except ValueError:  # more digits than int() converts
        value = 0
    if value < 1 or (high is not None and value > high):
        bounds = "an integer >= 1" if high is None else f"an integer from 1 to {high}"
        raise _HTTPError(422, f"{name} must be {bounds}, got {raw[:20]!r}")
    return value


@contextmanager
def _as_client_errors() -> Iterator[None]:
    try:
        yield
    except _HTTPError as error:
        kind = {404: IdentityNotFoundError, 409: IdentityConflictError}.get(
            error.status, IdentityRequestError
        )
        raise kind(error.detail, status=error.status) from None
