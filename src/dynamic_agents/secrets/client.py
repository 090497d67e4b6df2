"""HTTP client for the A8N Identity service (every endpoint of its contract).

Retries 429 (honouring ``Retry-After``), 5xx and network errors with capped exponential backoff and
jitter; a ``Retry-After`` over ``max_retry_after`` is raised at once (a 429 as
:class:`IdentityRateLimitedError`, with ``retry_after``); refreshes the token once on 401 (a 401
that outlasts it is logged once as an ERROR until the token is accepted again). Errors
are typed (see :mod:`dynamic_agents.exceptions`) and their messages carry the method, path and
status, never a secret value or a raw response body.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Self, TypeAlias, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, JsonValue, ValidationError

from dynamic_agents._logging import get_logger
from dynamic_agents._redaction import REDACTOR, masked_url, redact_json, redact_text
from dynamic_agents._validation import (
    LONE_SURROGATE,
    a_type,
    check_base_url,
    check_callable,
    check_count,
    check_flag,
    check_seconds,
    shown,
    unsendable_token,
)
from dynamic_agents.events._types import UtcDatetime
from dynamic_agents.exceptions import (
    ConfigurationError,
    IdentityAuthError,
    IdentityConflictError,
    IdentityError,
    IdentityForbiddenError,
    IdentityNotFoundError,
    IdentityRateLimitedError,
    IdentityRequestError,
    IdentityUnavailableError,
    IdentityURLError,
)
from dynamic_agents.secrets.values import SecretValue

__all__ = [
    "IdentityClient",
    "ProviderInfo",
    "SecretMetadata",
    "SecretPage",
    "SecretValues",
    "TokenProvider",
]

logger = get_logger("secrets")

M = TypeVar("M", bound=BaseModel)

TokenProvider: TypeAlias = str | SecretValue | Callable[[], str | SecretValue | Awaitable[str | SecretValue]]
"""A bearer token, or a (sync or async) callable returning the current one."""

DEFAULT_URL: Final = "http://localhost:8000"
API: Final = "/api/v1"
PROVIDERS: Final = f"{API}/providers"  # always served: the contract gives it no 404
_IDEMPOTENT: Final = frozenset({"GET", "PATCH", "DELETE", "PUT", "HEAD"})
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_DETAIL_LIMIT: Final = 200
_ERRORS: Final[Mapping[int, type[IdentityError]]] = {
    400: IdentityRequestError,
    401: IdentityAuthError,
    403: IdentityForbiddenError,
    404: IdentityNotFoundError,
    409: IdentityConflictError,
    410: IdentityNotFoundError,  # gone: deleted (not in the contract, which says 404; never an outage)
    422: IdentityRequestError,
}


def _path_segment(value: str) -> str:
    if value in {"", ".", ".."}:  # never the secret's path: "." would be the collection's
        raise ValueError("a secret id is a non-empty str other than '.' and '..'")
    return value


_SecretId: TypeAlias = Annotated[str, AfterValidator(_path_segment)]
_Status: TypeAlias = Annotated[str, BeforeValidator(lambda status: "active" if status is None else status)]
"""A missing ``status`` is ``active`` (the contract's "Tolerate"), and so is one written as null."""


class SecretMetadata(BaseModel):
    """What the service says about a secret, never its values. Tolerant of older services: a
    missing (or null) ``status`` means active, missing ``fields`` means unknown, naive timestamps
    are UTC."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: _SecretId
    name: str
    provider: str
    user_id: str | None = None
    status: _Status = "active"
    fields: tuple[str, ...] | None = None
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime | None = None
    description: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def last_change(self) -> datetime | None:
        return self.updated_at or self.created_at


class ProviderInfo(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    display_name: str | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SecretPage:
    items: tuple[SecretMetadata, ...]
    total: int
    page: int
    page_size: int


@dataclass(frozen=True, slots=True)
class SecretValues:
    """A secret's decrypted values, each a masked :class:`SecretValue`."""

    id: str
    name: str
    provider: str
    values: Mapping[str, SecretValue]


class IdentityClient:
    """Async client of the A8N Identity REST API.

    ``transport`` lets tests serve the API in process (``httpx.MockTransport``,
    ``httpx.ASGITransport``). Plain ``http://`` is refused except to a loopback host, unless
    ``allow_insecure_http=True``. ``retries`` counts attempts after the first, for 429, 5xx and
    network errors (a ``POST`` is retried only when it cannot have reached the service).
    ``timeout`` (seconds, > 0) bounds each attempt; ``backoff_base`` / ``backoff_cap`` shape the
    jittered exponential backoff and ``max_retry_after`` caps a server's ``Retry-After`` (seconds,
    >= 0; 0 turns the backoff, or honouring ``Retry-After``, off). Each must be finite: a bad value
    is a :class:`ConfigurationError` naming it.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: TokenProvider,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        max_retry_after: float = 60.0,
        allow_insecure_http: bool = False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # "false" would be true: plain http to any host
        _check_url(base_url, check_flag("allow_insecure_http", allow_insecure_http))
        if not isinstance(token, str | SecretValue) and not callable(token):
            raise ConfigurationError(
                f"token must be a str, a SecretValue or a callable returning one, not {type(token).__name__}"
            )
        if not callable(token):
            plain = token.reveal() if isinstance(token, SecretValue) else token
            if not plain.strip():  # sent as "Bearer ", every request would come back 401
                raise ConfigurationError("token is empty: give the Identity service's bearer token")
            if unsendable_token(plain):
                raise ConfigurationError(f"token holds {_UNSENDABLE}")
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            # else every request fails with a bare AttributeError (no 'handle_async_request')
            raise ConfigurationError(
                "transport must be an httpx.AsyncBaseTransport (httpx.AsyncHTTPTransport, "
                f"httpx.MockTransport, httpx.ASGITransport(app)) or None, got {shown(transport)}"
            )
        timeout = check_seconds("timeout", timeout)
        retries = check_count("retries", retries, minimum=0)
        backoff_base = check_seconds("backoff_base", backoff_base, zero=True)  # 0: no backoff
        backoff_cap = check_seconds("backoff_cap", backoff_cap, zero=True)
        max_retry_after = check_seconds("max_retry_after", max_retry_after, zero=True)
        check_callable("sleep", sleep, "a callable taking seconds and returning an awaitable (asyncio.sleep)")
        self.base_url = masked_url(base_url.rstrip("/"))
        """The service's URL, a password in it masked (the client itself uses the real one)."""
        self._token_provider = token
        self._token: SecretValue | None = None
        self._token_lock = asyncio.Lock()
        self._timeout = timeout
        self._retries = retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        # Whether the API was found at base_url (an answer of 2xx, or a probe of PROVIDERS): a 404
        # is then "no such secret or provider", not a wrong base_url. Only a found API is
        # remembered: an all-404 answer (a proxy being reconfigured) may pass.
        self._api_found = False
        self._api_probe = asyncio.Lock()
        self._url_error_logged = False
        # Whether a 401 survived the token refresh and was logged as an ERROR: once until a request
        # is answered again, as a wrong base_url is (a stale value served, or a ChainSource
        # falling back to the environment, hides a refused token otherwise)
        self._token_refused = False
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), transport=transport, timeout=timeout, follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"IdentityClient({self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- endpoints --------------------------------------------------------------------------------

    async def create_secret(
        self,
        name: str,
        provider: str,
        values: Mapping[str, str | SecretValue],
        *,
        user_id: str | None = None,
        description: str | None = None,
    ) -> SecretMetadata:
        body: dict[str, Any] = {"name": name, "provider": provider, "values": _plain(values)}
        if user_id is not None:
            body["user_id"] = user_id
        if description is not None:
            body["description"] = description
        response = await self._request("POST", f"{API}/secrets", json=body)
        return _parse(SecretMetadata, response)

    async def list_secrets(
        self,
        *,
        provider: str | None = None,
        user_id: str | None = None,
        page: int = 1,
        page_size: int = 100,
    ) -> SecretPage:
        params = {"provider": provider, "user_id": user_id, "page": page, "page_size": page_size}
        response = await self._request(
            "GET", f"{API}/secrets", params={k: v for k, v in params.items() if v is not None}
        )
        data = _json(response)
        if isinstance(data, list):  # older services answer a bare array, unpaged
            items = tuple(_validate(SecretMetadata, item, response) for item in data)
            return SecretPage(items, total=len(items), page=1, page_size=max(len(items), 1))
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise _bad_response(response, "expected an object with 'items'")
        items = tuple(_validate(SecretMetadata, item, response) for item in data["items"])
        return SecretPage(
            items,
            total=_int_field(data, "total", len(items)),
            page=_int_field(data, "page", page),
            page_size=_int_field(data, "page_size", page_size),
        )

    async def iter_secrets(
        self, *, provider: str | None = None, user_id: str | None = None, page_size: int = 100
    ) -> AsyncIterator[SecretMetadata]:
        """Every matching secret, following the pages: until ``total`` are seen, a page is empty,
        or a page repeats the one before (a service that ignores ``page`` would otherwise be asked
        for the same page until its ``total``). ``total`` is what the contract guarantees; the
        ``page_size`` a service reports is not trusted (one reporting more than it serves made a
        full page look like the last)."""
        page, seen = 1, 0
        previous: tuple[str, ...] = ()
        while True:
            result = await self.list_secrets(
                provider=provider, user_id=user_id, page=page, page_size=page_size
            )
            ids = tuple(item.id for item in result.items)
            if ids and ids == previous:
                logger.warning(
                    "GET %s/secrets answered page %d with the secrets of page %d: it ignores 'page'; "
                    "stopped there",
                    API,
                    page,
                    page - 1,
                )
                return
            for item in result.items:
                yield item
            seen += len(result.items)
            if not result.items or seen >= result.total:
                return
            previous = ids
            page += 1

    async def get_secret(self, secret_id: str) -> SecretMetadata:
        return _parse(SecretMetadata, await self._request("GET", _secret_path("get_secret", secret_id)))

    async def get_values(self, secret_id: str) -> SecretValues:
        response = await self._request("GET", f"{_secret_path('get_values', secret_id)}/values")
        data = _json(response)
        values = data.get("values") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(values, dict):
            raise _bad_response(response, "expected an object with 'values'")
        if not all(isinstance(v, str) for v in values.values()):
            raise _bad_response(response, "secret values must be strings")
        for field, value in values.items():
            if (surrogate := LONE_SURROGATE.search(value)) is not None:  # "\ud800" in the JSON
                raise _bad_response(
                    response,
                    f"values[{field!r}] is not valid text: a lone surrogate at position {surrogate.start()}",
                )
        return SecretValues(
            id=str(data.get("id", secret_id)),
            name=str(data.get("name", "")),
            provider=str(data.get("provider", "")),
            values={str(field): SecretValue(value) for field, value in values.items()},
        )

    async def update_secret(
        self,
        secret_id: str,
        *,
        name: str | None = None,
        values: Mapping[str, str | SecretValue] | None = None,
        status: str | None = None,
        description: str | None = None,
    ) -> SecretMetadata:
        path = _secret_path("update_secret", secret_id)
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if values is not None:
            body["values"] = _plain(values)
        if status is not None:
            body["status"] = status
        if description is not None:
            body["description"] = description
        if not body:
            raise ConfigurationError("update_secret needs at least one of name, values, status, description")
        return _parse(SecretMetadata, await self._request("PATCH", path, json=body))

    async def delete_secret(self, secret_id: str) -> None:
        await self._request("DELETE", _secret_path("delete_secret", secret_id))

    async def list_providers(self) -> list[ProviderInfo]:
        response = await self._request("GET", PROVIDERS)
        data = _json(response)
        items = data.get("items") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise _bad_response(response, "expected an object with 'items'")
        return [_validate(ProviderInfo, item, response) for item in items]

    async def provider_schema(self, name: str) -> dict[str, JsonValue]:
        segment = _segment("provider_schema", "provider name", name)
        response = await self._request("GET", f"{API}/providers/{segment}/schema")
        data = _json(response)
        if not isinstance(data, dict):
            raise _bad_response(response, "expected a JSON Schema object")
        return data

    # -- transport --------------------------------------------------------------------------------

    async def _current_token(self, where: str, *, refused: SecretValue | None = None) -> SecretValue:
        """The token to send: asked of the provider when there is none yet, or when ``refused`` (the
        one a 401 answered) is still the current one. Requests refused together ask once: a
        stampede on the token issuer could have each new token replace the one before. A provider
        that fails is an :class:`IdentityUnavailableError` for the request ``where`` (its text,
        which may quote a credential of the token issuer, is not shown)."""
        if self._token is not None and (refused is None or self._token is not refused):
            return self._token
        async with self._token_lock:
            if self._token is None or (refused is not None and self._token is refused):
                provider = self._token_provider
                token: str | SecretValue | Awaitable[str | SecretValue]
                try:
                    token = provider() if callable(provider) else provider
                    if inspect.isawaitable(token):
                        # bounded like an attempt: an issuer that never answers would hang every
                        # request. Not wait_for: on Python 3.11 it drops a cancellation that comes
                        # with the token.
                        async with asyncio.timeout(self._timeout):
                            token = await token
                except IdentityError:
                    raise
                except Exception as error:  # a typed error: the manager serves what it has cached
                    raise IdentityUnavailableError(
                        f"{where}: the Identity token provider failed ({type(error).__name__}), "
                        "so no request was sent"
                    ) from None  # not chained: a traceback would print the cause's text
                if not isinstance(token, str | SecretValue):  # never shown: it may be a token anyway
                    raise ConfigurationError(
                        f"the Identity token provider returned {type(token).__name__}; it must return "
                        "the bearer token as a str or a SecretValue"
                    )
                plain = token.reveal() if isinstance(token, SecretValue) else token
                if not plain.strip():  # sent as "Bearer ": a 401, as if the service refused a token
                    raise ConfigurationError(
                        "the Identity token provider returned an empty token: it must return the "
                        "service's bearer token"
                    )
                if unsendable_token(plain):
                    raise ConfigurationError(
                        f"the Identity token provider returned a token that holds {_UNSENDABLE}"
                    )
                self._token = token if isinstance(token, SecretValue) else SecretValue(token)
            return self._token

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self._backoff_cap, self._backoff_base * 2**attempt))  # noqa: S311

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        attempt, refreshed = 0, False
        maybe_done = False  # an attempt may have reached the service, its answer lost
        while True:
            if self._http.is_closed:  # httpx would raise a bare RuntimeError
                raise IdentityUnavailableError(f"{method} {path}: the Identity client was closed")
            token = await self._current_token(f"{method} {path}")
            if self._http.is_closed:  # closed while the token was asked for
                raise IdentityUnavailableError(f"{method} {path}: the Identity client was closed")
            try:
                response = await self._attempt(method, path, params, json, token)
            except httpx.DecodingError as error:  # not a TransportError, but must not escape untyped
                raise IdentityError(
                    f"{method} {path}: unexpected response (the body cannot be decoded: "
                    f"DecodingError{_said(error)})"
                ) from None  # not chained: see below
            except httpx.TransportError as error:
                # A POST that may have reached the service is not repeated (no double create); one
                # that never got a connection (refused, connect or pool timeout) was never sent.
                retryable = method in _IDEMPOTENT or isinstance(error, _NOT_SENT)
                if retryable and attempt < self._retries:
                    await self._wait(method, path, attempt, type(error).__name__)
                    attempt += 1
                    maybe_done = maybe_done or not isinstance(error, _NOT_SENT)
                    continue
                # Not chained: an httpx error holds the request, its Authorization header in clear,
                # and its traceback the frames whose locals hold it (for an error reporter to send).
                raise IdentityUnavailableError(
                    f"{method} {path}: Identity unreachable ({type(error).__name__}{_said(error)})"
                ) from None
            status = response.status_code
            if status < 300:  # a 3xx is no answer: redirects are not followed (see _error_for)
                self._answered(method, path, status)
                return response
            if method == "DELETE" and status in {404, 410} and maybe_done:
                # the retry of a delete that an earlier attempt did: done, not "no such secret"
                logger.debug("%s %s answered %d after a lost answer: taken as done", method, path, status)
                return response
            if status == 401 and not refreshed and callable(self._token_provider):
                refreshed = True
                await self._current_token(f"{method} {path}", refused=token)
                continue
            retry_after = _retry_after(response)
            retryable = status == 429 or (status >= 500 and method in _IDEMPOTENT)
            if retryable and retry_after is not None and retry_after > self._max_retry_after:
                # Waiting only the cap would be refused again (rate limited, or a 503 for a
                # maintenance window): the caller (the manager serving a cached value) is better
                # told now.
                raise self._not_retried(method, path, status, retry_after)
            if retryable and attempt < self._retries:
                await self._wait(method, path, attempt, f"HTTP {status}", retry_after)
                attempt += 1
                maybe_done = maybe_done or status >= 500
                continue
            if status == 404 and not self._api_found:
                await self._find_api(method, response)
            self._log_refusal(method, path, status, refreshed)
            raise _error_for(method, path, response, retry_after)

    def _not_retried(self, method: str, path: str, status: int, retry_after: float) -> IdentityError:
        message = (
            f"{method} {path} answered {status} with Retry-After {retry_after:g}s, over "
            f"max_retry_after ({self._max_retry_after:g}s): not retried"
        )
        if status == 429:
            return IdentityRateLimitedError(message, status=status, retry_after=retry_after)
        return IdentityUnavailableError(message, status=status)

    def _answered(self, method: str, path: str, status: int) -> None:
        self._api_found = True
        if self._token_refused:
            self._token_refused = False
            logger.info(
                "%s %s answered %d: the Identity service accepts the client's token again",
                method,
                path,
                status,
            )

    def _log_refusal(self, method: str, path: str, status: int, refreshed: bool) -> None:
        """Log a 401 that no token refresh got past: an ERROR the first time (the token is wrong,
        expired or revoked: no outage that passes by itself), then DEBUG until it is accepted again."""
        if status != 401:
            return
        fresh = " with a fresh one from the token provider too" if refreshed else ""
        message = (
            "%s %s answered 401%s: the Identity service refuses the client's token (wrong, expired "
            "or revoked); no secret can be fetched until it is replaced"
        )
        log = logger.debug if self._token_refused else logger.error
        self._token_refused = True
        log(message, method, path, fresh)

    async def _find_api(self, method: str, response: httpx.Response) -> None:
        """Return if the API is at ``base_url`` (the 404 of ``response`` is then "no such secret
        or provider"), else raise :class:`IdentityURLError`: asked once per client, by a ``GET``
        of :data:`PROVIDERS`, which the contract gives no 404. A probe that fails otherwise (5xx,
        a timeout, 429) raises its own error and is asked again next time: whether the secret
        exists is not known, and "no such secret" would drop a value a manager can serve stale."""
        asked = response.request.url.path
        probed = f"{self._http.base_url.path.rstrip('/')}{PROVIDERS}"
        if method == "GET" and asked == probed:  # the probe itself, or list_providers()
            raise self._url_error(f"GET {asked} answered 404")
        async with self._api_probe:  # concurrent 404s probe once
            if self._api_found:
                return
            try:
                await self._request("GET", PROVIDERS)
            except IdentityURLError:
                found = False
            except (IdentityForbiddenError, IdentityRequestError):
                found = True  # served, though refused (a token that may not list providers)
            else:
                found = True
            self._api_found = found
        if not found:
            raise self._url_error(f"{method} {asked} answered 404, and so did GET {probed}")
        logger.debug("%s %s answered 404 from the Identity API: no such secret or provider", method, asked)

    def _url_error(self, what: str) -> IdentityURLError:
        prefix = self._http.base_url.path.rstrip("/")
        hint = " (drop the /api/v1: the client adds it)" if prefix.endswith(API) else ""
        error = IdentityURLError(
            f"{what}: the Identity API is not at base_url {self.base_url!r}{hint} (the service "
            f"always answers GET {PROVIDERS}); check base_url: the service's root URL, without /api/v1",
            status=404,
        )
        if not self._url_error_logged:  # once: a ChainSource falling back to the environment hides it
            self._url_error_logged = True
            logger.error("%s", error)
        return error

    async def _attempt(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        json: Mapping[str, Any] | None,
        token: SecretValue,
    ) -> httpx.Response:
        """One request, bounded by ``timeout`` as a whole: httpx bounds each read, so a server
        sending a byte now and then held it for as long as it went on."""
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                return await self._http.request(
                    method,
                    path,
                    params=params,
                    json=json,
                    headers={"Authorization": f"Bearer {token.reveal()}"},
                )
        except TimeoutError:
            if not deadline.expired():  # not ours: a transport's own
                raise
            # as httpx's own: retried where a read timeout is, never a sent POST
            raise httpx.ReadTimeout(f"no whole answer within {self._timeout:g}s") from None

    async def _wait(
        self, method: str, path: str, attempt: int, why: str, retry_after: float | None = None
    ) -> None:
        delay = self._backoff(attempt)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self._max_retry_after)
        logger.debug("%s %s: %s, retrying in %.2fs", method, path, why, delay)
        await self._sleep(delay)


def _check_url(base_url: object, allow_insecure_http: bool) -> None:
    url = check_base_url("Identity URL", base_url)
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname or ""):
        raise ConfigurationError(
            f"Identity URL {masked_url(url)!r} uses plain http to a non-loopback host: tokens "
            "and secrets would cross the network unencrypted; use https, or pass allow_insecure_http=True"
        )


_UNSENDABLE: Final = (
    "a space, a line break or a character that is not printable ASCII (a line break read with it "
    "from a file?): a bearer token cannot go in a header with it; strip it"
)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret_path(call: str, secret_id: str) -> str:
    return f"{API}/secrets/{_segment(call, 'secret id', secret_id)}"


def _segment(call: str, what: str, value: object) -> str:
    """``value`` quoted as one path segment, or a :class:`ConfigurationError` naming it: ``.`` and
    ``..`` are dot segments, which httpx resolves (``delete_secret(".")`` would delete
    ``/api/v1/secrets``, the collection), and ``""`` names the collection too."""
    if not isinstance(value, str) or value in {"", ".", ".."}:
        raise ConfigurationError(
            f"{call}() takes a {what}: a non-empty str other than '.' and '..', got {shown(value)}"
        )
    return quote(value, safe="")


def _plain(values: Mapping[str, str | SecretValue]) -> dict[str, str]:
    plain = {}
    for field, value in values.items():
        secret = value if isinstance(value, SecretValue) else SecretValue(value)  # registers it
        plain[field] = secret.reveal()
    return plain


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` in seconds, or ``None`` (absent, an HTTP date, not a finite number)."""
    header = response.headers.get("Retry-After")
    try:
        seconds = float(header) if header is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def _said(error: httpx.HTTPError) -> str:
    """What an httpx error says (``: All connection attempts failed``), redacted (a proxy URL's
    password, say) and shortened, or nothing: its text stands in for the error, not chained."""
    text = redact_text(str(error))
    if len(text) > _DETAIL_LIMIT:
        text = f"{text[: _DETAIL_LIMIT - 3]}..."
    return f": {text}" if text else ""


def _error_for(
    method: str, path: str, response: httpx.Response, retry_after: float | None = None
) -> IdentityError:
    status = response.status_code
    if status < 400:
        # Following a redirect would send the token elsewhere; treating it as success would report a
        # DELETE or PATCH done that never reached the service.
        location = masked_url(REDACTOR.redact(response.headers.get("Location", "")))
        return IdentityError(
            f"{method} {path} answered {status}, a redirect to {location!r}: redirects are not "
            "followed (the token would go along); point base_url at the service itself",
            status=status,
        )
    detail = _detail(response)
    suffix = f": {detail}" if detail else ""
    message = f"{method} {path} answered {status}{suffix}"
    if status == 429:
        return IdentityRateLimitedError(message, status=status, retry_after=retry_after)
    error_type = _ERRORS.get(status, IdentityUnavailableError if status >= 500 else IdentityRequestError)
    return error_type(message, status=status)


def _detail(response: httpx.Response) -> str:
    """The body's ``detail``, shortened and with every known secret value masked (none for a body
    that is not JSON, or nested too deeply to read, mask or format)."""
    try:
        data = response.json()
        detail = data.get("detail") if isinstance(data, dict) else None
        if detail is None:
            return ""
        # Strings are masked before a structured detail is formatted: its repr escapes them
        # (a backslash doubled), and an escaped secret would no longer match.
        text = REDACTOR.redact(detail if isinstance(detail, str) else str(redact_json(detail)))
    except (ValueError, RecursionError):  # json.loads, and each step after, recurse per level
        return ""
    return text if len(text) <= _DETAIL_LIMIT else f"{text[: _DETAIL_LIMIT - 3]}..."


def _json(response: httpx.Response) -> object:
    try:
        data: object = response.json()
    except ValueError:
        raise _bad_response(response, "the body is not JSON") from None
    except RecursionError:  # no ValueError: json.loads recurses per level
        raise _bad_response(response, "the body's JSON is nested too deeply") from None
    return data


def _bad_response(response: httpx.Response, why: str) -> IdentityError:
    request = response.request
    return IdentityError(
        f"{request.method} {request.url.path}: unexpected response ({why})", status=response.status_code
    )


def _validate(model: type[M], data: object, response: httpx.Response) -> M:
    if not isinstance(data, dict):  # else pydantic's one error has no field to name
        raise _bad_response(response, f"a {model.__name__} must be a JSON object, got {_json_kind(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in error.errors(include_url=False))
        raise _bad_response(response, f"invalid {model.__name__} fields: {fields}") from None


def _json_kind(data: object) -> str:
    """What decoded JSON is, in JSON's words: ``a string``, ``null``, ``an array``."""
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    kinds = {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}
    return kinds.get(type(data), a_type(data))


def _parse(model: type[M], response: httpx.Response) -> M:
    return _validate(model, _json(response), response)


def _int_field(data: Mapping[str, object], name: str, default: int) -> int:
    value = data.get(name, default)
    return value if isinstance(value, int) else default
