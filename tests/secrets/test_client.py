"""IdentityClient against the in-memory service: every endpoint, every error, retries, tokens."""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import httpx
import pytest

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
    SecretsUnavailableError,
)
from dynamic_agents.secrets import (
    ChainSource,
    EnvironmentSource,
    IdentityClient,
    IdentitySource,
    SecretKey,
    SecretsManager,
    SecretValue,
)
from dynamic_agents.testing import InMemoryIdentityService

URL = "http://identity.test.localhost"
SECRETS = "/api/v1/secrets"


class Sleeps:
    """Records backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def service() -> InMemoryIdentityService:
    return InMemoryIdentityService(tokens={"service-token": None, "alice-token": "alice"})


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(service: InMemoryIdentityService, sleeps: Sleeps) -> AsyncIterator[IdentityClient]:
    async with IdentityClient(
        "http://127.0.0.1:8000", token="service-token", transport=service.mock_transport(), sleep=sleeps
    ) as client:
        yield client


async def test_create_get_values_update_delete(client: IdentityClient) -> None:
    created = await client.create_secret(
        "main", "openai", {"api_key": "sk-create-000001"}, description="the main key"
    )
    assert (created.name, created.provider, created.user_id, created.status) == (
        "main",
        "openai",
        None,
        "active",
    )
    assert created.fields == ("api_key",)
    assert created.created_at is not None
    assert created.created_at.tzinfo is UTC
    assert (await client.get_secret(created.id)).id == created.id

    values = await client.get_values(created.id)
    assert isinstance(values.values["api_key"], SecretValue)
    assert values.values["api_key"].reveal() == "sk-create-000001"
    assert "sk-create" not in repr(values)

    updated = await client.update_secret(
        created.id, name="renamed", values={"api_key": "sk-rotated-00001"}, status="disabled"
    )
    assert (updated.name, updated.status) == ("renamed", "disabled")
    assert (await client.get_values(created.id)).values["api_key"].reveal() == "sk-rotated-00001"

    await client.delete_secret(created.id)
    with pytest.raises(IdentityNotFoundError) as caught:
        await client.get_secret(created.id)
    assert caught.value.status == 404


async def test_list_pages_and_iterates_every_page(
    client: IdentityClient, service: InMemoryIdentityService
) -> None:
    for n in range(7):
        service.add_secret(f"key-{n}", "groq", {"api_key": f"gsk-000000{n}"})
    service.add_secret("other", "openai", {"api_key": "sk-other-000001"})
    page = await client.list_secrets(provider="groq", page=2, page_size=3)
    assert (page.total, page.page, page.page_size) == (7, 2, 3)
    assert [item.name for item in page.items] == ["key-3", "key-4", "key-5"]
    names = [item.name async for item in client.iter_secrets(provider="groq", page_size=3)]
    assert names == [f"key-{n}" for n in range(7)]
    assert service.count("GET", SECRETS) == 4  # one page above, then three


async def test_providers_and_schema(client: IdentityClient) -> None:
    providers = {provider.name: provider for provider in await client.list_providers()}
    assert set(providers["azure_openai"].fields) == {"api_key", "endpoint", "api_version"}
    schema = await client.provider_schema("openai")
    assert schema["type"] == "object"
    assert "api_key" in schema["required"]  # type: ignore[operator]
    with pytest.raises(IdentityNotFoundError):
        await client.provider_schema("nonexistent")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("create_unknown_provider", IdentityNotFoundError),  # the contract's 404
        ("create_missing_required_field", IdentityRequestError),
        ("create_duplicate", IdentityConflictError),
        ("get_unknown", IdentityNotFoundError),
    ],
)
async def test_error_statuses_are_typed(
    client: IdentityClient, call: str, error: type[IdentityError]
) -> None:
    await client.create_secret("dup", "anthropic", {"api_key": "sk-ant-0000001"})
    calls = {
        "create_unknown_provider": lambda: client.create_secret("x", "nope", {"api_key": "k-000001"}),
        "create_missing_required_field": lambda: client.create_secret("x", "openai", {"org_id": "o"}),
        "create_duplicate": lambda: client.create_secret("dup", "anthropic", {"api_key": "sk-ant-0000002"}),
        "get_unknown": lambda: client.get_secret("no-such-id"),
    }
    with pytest.raises(error) as caught:
        await calls[call]()
    assert caught.value.status in {404, 409, 422}
    assert str(caught.value).startswith(("POST /api/v1/secrets answered", "GET /api/v1/secrets/"))


async def test_forbidden_for_another_users_secret(service: InMemoryIdentityService) -> None:
    bobs = service.add_secret("bob-key", "openai", {"api_key": "sk-bob-00000001"}, user_id="bob")
    async with IdentityClient(URL, token="alice-token", transport=service.mock_transport()) as alice:
        with pytest.raises(IdentityForbiddenError):
            await alice.get_values(bobs)


async def test_a_bad_static_token_is_an_auth_error(service: InMemoryIdentityService) -> None:
    async with IdentityClient(URL, token="wrong", transport=service.mock_transport()) as client:
        with pytest.raises(IdentityAuthError) as caught:
            await client.list_providers()
    assert caught.value.status == 401
    assert service.count() == 1  # a string token cannot be refreshed: no retry


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_an_expired_token_is_refreshed_once(
    service: InMemoryIdentityService, asynchronous: bool
) -> None:
    issued = iter(["old-token", "new-token"])
    service.add_token("old-token", None)

    def sync_provider() -> str:
        return next(issued)

    async def async_provider() -> str:
        return next(issued)

    provider = async_provider if asynchronous else sync_provider
    async with IdentityClient(URL, token=provider, transport=service.mock_transport()) as client:
        await client.list_providers()
        service.revoke_token("old-token")
        service.add_token("new-token", None)
        await client.list_providers()
        await client.list_providers()
    assert [request.token for request in service.requests] == [
        "old-token",
        "old-token",
        "new-token",
        "new-token",
    ]


async def test_refresh_happens_only_once(service: InMemoryIdentityService) -> None:
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return "never-valid"

    async with IdentityClient(URL, token=provider, transport=service.mock_transport()) as client:
        with pytest.raises(IdentityAuthError):
            await client.list_providers()
    assert calls == 2
    assert service.count() == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("refreshable", [False, True])
async def test_a_refused_service_token_is_an_error_logged_once_while_stale_values_are_served(
    service: InMemoryIdentityService, caplog: pytest.LogCaptureFixture, refreshable: bool
) -> None:
    # a 401 was served stale under the WARNING of any outage ("could not be fetched
    # (IdentityAuthError)"), once per key: nothing told the operator the token itself was refused
    caplog.set_level(logging.DEBUG, logger="dynamic_agents")
    canary = "tok-CANARY-401-0123456789"
    service.add_token(canary, None)
    service.add_secret("main", "openai", {"api_key": "sk-openai-401-000001"})
    service.add_secret("main", "anthropic", {"api_key": "sk-anthropic-401-0001"})
    clock = Clock()
    token: Any = (lambda: canary) if refreshable else canary
    client = IdentityClient(URL, token=token, transport=service.mock_transport())
    manager = SecretsManager(IdentitySource(client), ttl=300, stale_grace=600, error_retry=5, clock=clock)
    cached = {provider: await manager.get(provider, "api_key") for provider in ("openai", "anthropic")}
    service.revoke_token(canary)
    clock.now += 301
    for _ in range(2):  # stale-if-error still holds: the values are served
        for provider in ("openai", "anthropic"):
            assert await manager.get(provider, "api_key") == cached[provider]
        clock.now += 6
    with pytest.raises(SecretsUnavailableError) as unavailable:
        await manager.get("google", "api_key")
    assert isinstance(unavailable.value.__cause__, IdentityAuthError)
    refused = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(refused) == 1, [r.getMessage() for r in refused]  # once, not per key or request
    message = refused[0].getMessage()
    assert message.startswith(f"GET {SECRETS} answered 401")
    assert "the Identity service refuses the client's token" in message
    assert ("a fresh one from the token provider too" in message) is refreshable
    service.add_token(canary, None)  # fixed: said, and a later refusal is an error again
    assert await manager.get("google", "api_key") is None
    assert "the Identity service accepts the client's token again" in caplog.text
    service.revoke_token(canary)
    clock.now += 301
    await manager.get("openai", "api_key")
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 2
    assert canary not in caplog.text
    await manager.aclose()


async def test_5xx_is_retried_with_backoff(
    client: IdentityClient, service: InMemoryIdentityService, sleeps: Sleeps
) -> None:
    service.fail_next(503, times=2)
    assert await client.list_providers()
    assert service.count("GET", "/api/v1/providers") == 3
    assert len(sleeps.delays) == 2
    assert all(0 <= delay <= 5.0 for delay in sleeps.delays)


async def test_retry_after_is_honoured(
    client: IdentityClient, service: InMemoryIdentityService, sleeps: Sleeps
) -> None:
    service.fail_next(429, retry_after=7)
    assert await client.list_providers()
    assert sleeps.delays == [7.0]


async def test_retries_run_out(client: IdentityClient, service: InMemoryIdentityService) -> None:
    service.fail_next(429, times=None, retry_after=1)
    with pytest.raises(IdentityRateLimitedError):
        await client.list_providers()
    service.clear_faults()
    service.down = True
    with pytest.raises(IdentityUnavailableError) as caught:
        await client.list_providers()
    assert caught.value.status == 503
    assert service.count("GET", "/api/v1/providers") == 8  # 4 attempts each


async def test_a_post_is_not_repeated_after_a_server_error(
    client: IdentityClient, service: InMemoryIdentityService
) -> None:
    service.fail_next(500)
    with pytest.raises(IdentityUnavailableError):
        await client.create_secret("once", "groq", {"api_key": "gsk-once-00001"})
    assert service.count("POST", SECRETS) == 1


async def test_network_errors_are_retried_then_typed(sleeps: Sleeps) -> None:
    attempts = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError("connection refused", request=request)

    async with IdentityClient(
        URL, token="t-000001", transport=httpx.MockTransport(refuse), retries=2, sleep=sleeps
    ) as client:
        with pytest.raises(IdentityUnavailableError, match="ConnectError"):
            await client.list_providers()
    assert attempts == 3


async def test_error_messages_never_carry_values_or_raw_bodies() -> None:
    canary = "canary-in-error-body-0001"

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"detail": f"bad value {canary}", "echo": canary})

    async with IdentityClient(URL, token="t-000001", transport=httpx.MockTransport(echo)) as client:
        with pytest.raises(IdentityRequestError) as caught:
            await client.create_secret("x", "openai", {"api_key": canary})
    assert canary not in str(caught.value)
    assert "bad value **********" in str(caught.value)


async def test_a_status_of_null_is_taken_as_missing_that_is_active() -> None:
    # the contract tolerates a missing status (active); a service writing missing fields as null
    # failed every list ("invalid SecretMetadata fields: status"): no secret could be read
    item = {"id": "s1", "name": "main", "provider": "openai", "status": None, "fields": None}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/values"):
            return httpx.Response(200, json={"id": "s1", "values": {"api_key": "sk-null-status-0001"}})
        return httpx.Response(200, json={"items": [item], "total": 1, "page": 1, "page_size": 100})

    async with IdentityClient(URL, token="t-000001", transport=httpx.MockTransport(answer)) as client:
        (listed,) = (await client.list_secrets()).items
        assert (listed.status, listed.active) == ("active", True)
        values = await IdentitySource(client, owns_client=False).fetch(SecretKey("openai"))
    assert values is not None
    assert values["api_key"].reveal() == "sk-null-status-0001"


async def test_responses_that_break_the_contract_are_typed() -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>oops</html>")

    async with IdentityClient(URL, token="t-000001", transport=httpx.MockTransport(garbage)) as client:
        with pytest.raises(IdentityError, match="not JSON"):
            await client.list_secrets()


@pytest.mark.parametrize(
    ("path", "body", "why"),
    [
        (SECRETS, {"items": ["main"], "total": 1}, "a SecretMetadata must be a JSON object, got a string"),
        (SECRETS, [None], "a SecretMetadata must be a JSON object, got null"),
        ("/api/v1/providers", {"items": [["openai"]]}, "a ProviderInfo must be a JSON object, got an array"),
        (f"{SECRETS}/s1", 42, "a SecretMetadata must be a JSON object, got a number"),
    ],
)
async def test_an_item_that_is_no_object_is_an_error_saying_so(path: str, body: object, why: str) -> None:
    # its message named no field: "unexpected response (invalid SecretMetadata fields: )"
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json=body))
    async with IdentityClient(URL, token="t-000001", transport=transport) as client:
        call = {
            SECRETS: client.list_secrets,
            "/api/v1/providers": client.list_providers,
            f"{SECRETS}/s1": lambda: client.get_secret("s1"),
        }[path]
        with pytest.raises(IdentityError) as caught:
            await call()
    assert str(caught.value) == f"GET {path}: unexpected response ({why})"


@pytest.mark.parametrize("bad", ["", ".", "..", 42, None])
@pytest.mark.parametrize(
    "call", ["get_secret", "get_values", "update_secret", "delete_secret", "provider_schema"]
)
async def test_an_id_or_name_that_is_no_path_segment_is_refused_before_any_request(
    client: IdentityClient, service: InMemoryIdentityService, call: str, bad: object
) -> None:
    # "." and ".." are dot segments, which httpx resolves: delete_secret(".") sent DELETE
    # /api/v1/secrets (the collection), get_values("..") GET /api/v1/values; "" the collection
    # too; an int or None a bare TypeError from quote() ("quote_from_bytes() expected bytes")
    calls = {
        "get_secret": lambda: client.get_secret(bad),  # type: ignore[arg-type]
        "get_values": lambda: client.get_values(bad),  # type: ignore[arg-type]
        "update_secret": lambda: client.update_secret(bad, status="disabled"),  # type: ignore[arg-type]
        "delete_secret": lambda: client.delete_secret(bad),  # type: ignore[arg-type]
        "provider_schema": lambda: client.provider_schema(bad),  # type: ignore[arg-type]
    }
    what = "provider name" if call == "provider_schema" else "secret id"
    with pytest.raises(ConfigurationError) as refused:
        await calls[call]()
    assert str(refused.value) == (
        f"{call}() takes a {what}: a non-empty str other than '.' and '..', got {bad!r}"
    )
    assert service.count() == 0


@pytest.mark.parametrize("bad", ["", ".", ".."])
async def test_a_listed_secret_whose_id_is_no_path_segment_is_an_unexpected_response(bad: str) -> None:
    # its values were then read from GET /api/v1/secrets/../values, that is GET /api/v1/values
    item = {"id": bad, "name": "main", "provider": "openai", "user_id": None, "status": "active"}
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json={"items": [item], "total": 1}))
    async with IdentityClient(URL, token="t-000001", transport=transport) as client:
        with pytest.raises(IdentityError) as caught:
            await IdentitySource(client, owns_client=False).fetch(SecretKey("openai"))
    assert str(caught.value) == "GET /api/v1/secrets: unexpected response (invalid SecretMetadata fields: id)"


_DEEP = b"[" * 100_000 + b"]" * 100_000  # JSON, nested deeper than json.loads recurses


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (
            200,
            _DEEP,
            IdentityError,
            "GET /api/v1/secrets: unexpected response (the body's JSON is nested too deeply)",
        ),
        (400, b'{"detail": ' + _DEEP + b"}", IdentityRequestError, "GET /api/v1/secrets answered 400"),
        (
            400,
            b'{"detail": ' + b"[" * 900 + b"]" * 900 + b"}",
            IdentityRequestError,
            "GET /api/v1/secrets answered 400",
        ),
    ],
)
async def test_json_nested_too_deeply_is_a_typed_error_not_a_recursion_error(
    status: int, body: bytes, error: type[IdentityError], message: str
) -> None:
    # json.loads raises RecursionError (no ValueError) past the recursion limit: it escaped the client
    # untyped, from a success's body and from an error's detail alike (and so did the detail's masking
    # of one just short of that limit)
    transport = httpx.MockTransport(lambda _: httpx.Response(status, content=body))
    async with IdentityClient(URL, token="t-000001", transport=transport, retries=0) as client:
        with pytest.raises(error) as caught:
            await client.list_secrets()
    assert str(caught.value) == message
    assert type(caught.value) is error


async def test_tolerated_variations(client: IdentityClient, service: InMemoryIdentityService) -> None:
    service.add_secret("a", "openai", {"api_key": "sk-tolerate-001"})
    service.bare_list = True
    service.omit_optional = True
    service.naive_timestamps = True
    page = await client.list_secrets(provider="openai")
    (item,) = page.items
    assert (item.status, item.fields, item.active) == ("active", None, True)
    assert item.created_at is not None
    assert item.created_at.tzinfo is UTC
    assert [i.name async for i in client.iter_secrets(provider="openai")] == ["a"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://identity.example.com", True),
        ("http://localhost:8000", True),
        ("http://127.0.0.1:8000", True),
        ("http://[::1]:8000", True),
        ("http://identity.example.com", False),
        ("http://10.0.0.5:8000", False),
        ("HTTP://identity.example.com", False),  # a scheme in capitals is http all the same
        ("ftp://identity.example.com", False),
    ],
)
async def test_plain_http_only_to_loopback(url: str, allowed: bool) -> None:
    if allowed:
        await IdentityClient(url, token="t").aclose()
    else:
        with pytest.raises(ConfigurationError):
            IdentityClient(url, token="t")


@pytest.mark.parametrize(
    "url",
    [
        None,
        5,
        b"https://identity.example.com",
        "https://identity.example.com/\n",
        "https://ident ity.example.com",
        " https://identity.example.com",
    ],
)
def test_an_identity_url_that_is_no_url_text_is_a_configuration_error(url: object) -> None:
    # None and bytes were a bare TypeError or AttributeError from urllib, a newline httpx's
    # InvalidURL, and a space inside the host was taken (every request then failed)
    with pytest.raises(ConfigurationError, match=r"^Identity URL must be an http\(s\) URL"):
        IdentityClient(url, token="t")  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["", "   ", "\n", SecretValue("")])
def test_an_empty_identity_token_is_refused_when_the_client_is_made(token: object) -> None:
    # sent as "Bearer ", every request came back 401 (an IdentityAuthError, after a retry)
    with pytest.raises(ConfigurationError, match=r"^token is empty: "):
        IdentityClient("https://identity.example.com", token=token)  # type: ignore[arg-type]


async def test_plain_http_elsewhere_when_explicitly_allowed() -> None:
    await IdentityClient("http://identity.internal", token="t", allow_insecure_http=True).aclose()


async def test_update_needs_something_to_change(client: IdentityClient) -> None:
    with pytest.raises(ConfigurationError):
        await client.update_secret("id")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, IdentityRequestError),
        (401, IdentityAuthError),
        (403, IdentityForbiddenError),
        (404, IdentityNotFoundError),
        (409, IdentityConflictError),
        (410, IdentityNotFoundError),  # gone: deleted, as a 404 says (it was a bad request)
        (422, IdentityRequestError),
        (429, IdentityRateLimitedError),
        (500, IdentityUnavailableError),
        (502, IdentityUnavailableError),
        (418, IdentityRequestError),
    ],
)
async def test_every_status_maps_to_its_error(
    client: IdentityClient, service: InMemoryIdentityService, status: int, error: type[IdentityError]
) -> None:
    service.fail_next(status, times=None, path="/api/v1/secrets/{id}")  # not the probe of a 404's
    with pytest.raises(error) as caught:
        await client.get_secret("any")
    assert caught.value.status == status
    assert str(caught.value).startswith(f"GET /api/v1/secrets/any answered {status}")


async def test_a_structured_error_detail_that_echoes_a_secret_is_redacted() -> None:
    canary = r"p@ss\w0rd-CANARY-77"  # a backslash: the detail's repr would escape it

    def handler(request: httpx.Request) -> httpx.Response:
        # FastAPI-style 422: detail is a list of errors that echo the input
        detail = [{"loc": ["body", "values"], "msg": "bad field", "input": {"password": canary}}]
        return httpx.Response(422, json={"detail": detail})

    async with IdentityClient(
        "http://127.0.0.1:8000", token="tok-123456", transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(IdentityRequestError) as caught:
            await client.create_secret("db", "postgres", {"password": canary})
    assert "w0rd-CANARY-77" not in str(caught.value)
    assert "bad field" in str(caught.value)


def test_a_password_in_the_identity_url_is_masked() -> None:
    from dynamic_agents.secrets import SecretsManager

    password = "CANARY-url-pass-123"
    with pytest.raises(ConfigurationError) as caught:
        IdentityClient(f"http://svc:{password}@identity.example.com", token="tok-123456")
    assert password not in str(caught.value)
    assert "svc:**********@identity.example.com" in str(caught.value)
    url = f"https://svc:{password}@identity.example.com"
    with pytest.raises(ConfigurationError) as caught:  # refused: see below
        IdentityClient(url, token="tok-123456")
    assert password not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        SecretsManager.from_identity(url, "tok-123456")
    assert password not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        IdentityClient(f"https://svc:{password}@identity.example.com:port", token="tok-123456")
    assert password not in str(caught.value)


@pytest.mark.parametrize("error_type", [httpx.ConnectTimeout, httpx.PoolTimeout])
async def test_a_post_that_never_left_is_retried(
    sleeps: Sleeps, error_type: type[httpx.TransportError]
) -> None:
    # A connect or pool timeout means the request was never sent: repeating it cannot create twice.
    attempts = 0

    def slow_then_created(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise error_type("timed out", request=request)
        return httpx.Response(201, json={"id": "s1", "name": "n", "provider": "groq"})

    async with IdentityClient(
        URL, token="t-000001", transport=httpx.MockTransport(slow_then_created), sleep=sleeps
    ) as client:
        created = await client.create_secret("n", "groq", {"api_key": "gsk-retried-0001"})
    assert created.id == "s1"
    assert attempts == 2


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_an_error_not_a_success(status: int) -> None:
    # Redirects are not followed (the token would go along); a DELETE answered 3xx deleted nothing.
    def moved(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Location": "https://elsewhere.example/api/v1/secrets/s1"})

    async with IdentityClient(URL, token="t-000001", transport=httpx.MockTransport(moved)) as client:
        with pytest.raises(IdentityError, match=f"answered {status}") as caught:
            await client.delete_secret("s1")
    assert caught.value.status == status


async def test_a_body_that_cannot_be_decoded_is_typed() -> None:
    def bad_gzip(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")

    async with IdentityClient(URL, token="t-000001", transport=httpx.MockTransport(bad_gzip)) as client:
        with pytest.raises(IdentityError, match="DecodingError"):
            await client.list_providers()


async def test_concurrent_401s_ask_the_provider_for_one_fresh_token() -> None:
    # Five requests sent with the same expired token: one refresh serves them all (asking the
    # provider five times would be a stampede on the token issuer, each token replacing the last).
    issued = iter(["old-token", "new-token", "newer-token", "newest-token", "too-many-tokens", "x" * 9])
    calls = 0
    arrived = asyncio.Event()
    old_requests = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return next(issued)

    async def expiring(request: httpx.Request) -> httpx.Response:
        nonlocal old_requests
        if request.headers["Authorization"] == "Bearer old-token":
            old_requests += 1
            if old_requests == 5:
                arrived.set()
            await arrived.wait()
            return httpx.Response(401, json={"detail": "token expired"})
        return httpx.Response(200, json={"items": []})

    async with IdentityClient(URL, token=provider, transport=httpx.MockTransport(expiring)) as client:
        await asyncio.gather(*(client.list_providers() for _ in range(5)))
    assert calls == 2  # the first token, then one fresh one


async def test_a_closed_client_raises_a_typed_error(service: InMemoryIdentityService) -> None:
    client = IdentityClient(URL, token="service-token", transport=service.mock_transport())
    await client.aclose()
    with pytest.raises(IdentityUnavailableError, match="closed") as caught:
        await client.list_providers()
    assert caught.value.status is None
    assert "GET /api/v1/providers" in str(caught.value)
    assert service.count() == 0


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", float("nan")),
        ("timeout", float("inf")),
        ("timeout", "10"),
        ("retries", -1),
        ("retries", 2.5),
        ("retries", True),
        ("retries", float("inf")),
        ("backoff_base", -0.1),
        ("backoff_base", float("nan")),
        ("backoff_base", float("inf")),
        ("backoff_cap", -1),
        ("backoff_cap", float("nan")),
        ("backoff_cap", float("inf")),
        ("max_retry_after", -1),
        ("max_retry_after", float("nan")),
        ("max_retry_after", float("inf")),
    ],
)
def test_bad_numeric_settings_are_refused_naming_the_field(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"^{setting} must be .*, got {re.escape(repr(value))}$"):
        IdentityClient(URL, token="t-000001", **{setting: value})  # type: ignore[arg-type]


async def test_zero_retries_backoff_and_retry_after_cap_are_accepted(
    service: InMemoryIdentityService, sleeps: Sleeps
) -> None:
    async with IdentityClient(
        URL,
        token="service-token",
        transport=service.mock_transport(),
        retries=0,
        backoff_base=0,
        backoff_cap=0,
        max_retry_after=0,
        sleep=sleeps,
    ) as client:
        service.fail_next(503)
        with pytest.raises(IdentityUnavailableError):
            await client.list_providers()
        assert service.count() == 1
        assert await client.list_providers()
    assert sleeps.delays == []


def test_a_bad_page_size_is_refused_naming_the_field() -> None:
    client = IdentityClient(URL, token="t-000001")
    for value in (0, -1, 2.5):
        with pytest.raises(ConfigurationError, match=f"^page_size must be .*, got {value!r}$"):
            IdentitySource(client, page_size=value)  # type: ignore[arg-type]


async def test_a_retry_after_over_the_cap_is_raised_at_once(
    client: IdentityClient, service: InMemoryIdentityService, sleeps: Sleeps
) -> None:
    service.fail_next(429, retry_after=120)  # the client's max_retry_after is 60
    with pytest.raises(IdentityRateLimitedError, match="Retry-After 120") as caught:
        await client.list_providers()
    assert caught.value.retry_after == 120.0
    assert caught.value.status == 429
    assert service.count() == 1
    assert sleeps.delays == []


async def test_a_5xx_retry_after_over_the_cap_is_raised_at_once(
    client: IdentityClient, service: InMemoryIdentityService, sleeps: Sleeps
) -> None:
    # a 503 for a maintenance window (Retry-After 3600) was retried after the cap, 60 s, three
    # times: a get with nothing cached waited three minutes to be refused, as a 429 is no longer
    service.fail_next(503, times=None, retry_after=3600)
    with pytest.raises(IdentityUnavailableError) as caught:
        await client.list_providers()
    assert str(caught.value) == (
        "GET /api/v1/providers answered 503 with Retry-After 3600s, over max_retry_after (60s): not retried"
    )
    assert type(caught.value) is IdentityUnavailableError
    assert caught.value.status == 503
    assert service.count() == 1
    assert sleeps.delays == []
    service.clear_faults()
    service.fail_next(503, retry_after=30)  # within the cap: waited out, as before
    assert await client.list_providers()
    assert sleeps.delays == [30.0]


async def test_a_retry_after_within_the_cap_is_still_waited_out(
    service: InMemoryIdentityService, sleeps: Sleeps
) -> None:
    async with IdentityClient(
        URL, token="service-token", transport=service.mock_transport(), max_retry_after=10, sleep=sleeps
    ) as client:
        service.fail_next(429, retry_after=10)
        assert await client.list_providers()
        service.fail_next(429, times=None, retry_after=2)
        with pytest.raises(IdentityRateLimitedError) as caught:
            await client.list_providers()
    assert sleeps.delays == [10.0, 2.0, 2.0, 2.0]
    assert caught.value.retry_after == 2.0


@pytest.mark.parametrize("token", [None, 123, b"service-token"])
def test_a_token_of_the_wrong_type_is_refused_naming_the_setting(token: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"token must be a str.*not {type(token).__name__}$"):
        IdentityClient(token=token)  # type: ignore[arg-type]


@pytest.mark.parametrize("returned", [None, b"service-token", 42])
async def test_a_token_provider_returning_no_str_is_a_configuration_error(
    service: InMemoryIdentityService, returned: object
) -> None:
    async def provider() -> object:
        return returned

    async with IdentityClient(token=provider, transport=service.mock_transport()) as client:  # type: ignore[arg-type]
        with pytest.raises(
            ConfigurationError, match=rf"Identity token provider returned {type(returned).__name__}"
        ) as caught:
            await client.list_secrets()
    assert "service-token" not in str(caught.value)
    assert service.count() == 0


@pytest.mark.parametrize("returned", ["", "   ", SecretValue("")])
async def test_a_token_provider_returning_an_empty_token_is_a_configuration_error(
    service: InMemoryIdentityService, returned: str | SecretValue
) -> None:
    # a token read from a file not written yet: sent as "Bearer ", twice (the 401's refresh asked
    # the provider again), then an IdentityAuthError as if the service had refused a token; a fixed
    # empty token is refused when the client is made
    async with IdentityClient(token=lambda: returned, transport=service.mock_transport()) as client:
        with pytest.raises(ConfigurationError) as caught:
            await client.list_secrets()
    assert str(caught.value) == (
        "the Identity token provider returned an empty token: it must return the service's bearer token"
    )
    assert service.count() == 0


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_failing_token_provider_is_a_typed_error(
    service: InMemoryIdentityService, asynchronous: bool
) -> None:
    def fail() -> str:
        raise RuntimeError("token issuer down: client_secret=cs-0123456789abcdef")

    async def fail_async() -> str:
        fail()
        return ""

    provider = fail_async if asynchronous else fail
    async with IdentityClient(URL, token=provider, transport=service.mock_transport()) as client:
        with pytest.raises(IdentityUnavailableError, match="token provider failed") as caught:
            await client.list_secrets()
    assert "RuntimeError" in str(caught.value)
    # nor in its traceback, as a logger.exception would write it (the cause's text is not chained)
    assert "cs-0123456789abcdef" not in "".join(traceback.format_exception(caught.value))
    assert service.count() == 0


def _metadata(secret_id: str) -> dict[str, object]:
    return {"id": secret_id, "name": secret_id, "provider": "openai", "user_id": None}


@pytest.mark.parametrize(
    ("ids", "page_size", "requests"),
    [
        (["a", "b"], 2, 2),  # a full page, the same every time: stops at the repeat
        (["a"], 100, 2),  # a short page, total 10**9: not trusted as the last, stops at the repeat
    ],
)
async def test_iter_secrets_stops_when_the_service_ignores_the_page(
    ids: list[str], page_size: int, requests: int
) -> None:
    asked: list[str | None] = []

    def ignores_page(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("page"))
        if len(asked) > 5:  # the bug: the same page for ever (up to total)
            raise RuntimeError("iter_secrets kept asking")
        body = {"items": [_metadata(i) for i in ids], "total": 10**9, "page": 1, "page_size": page_size}
        return httpx.Response(200, json=body)

    transport = httpx.MockTransport(ignores_page)
    async with IdentityClient(URL, token="t-000001", transport=transport) as client:
        found = [item.id async for item in client.iter_secrets(provider="openai", page_size=page_size)]
    assert found == ids
    assert asked == [str(n) for n in range(1, requests + 1)]


@pytest.mark.parametrize("reported", [100, 1000, 0, None])
async def test_iter_secrets_follows_total_not_the_reported_page_size(reported: int | None) -> None:
    """A service that serves 2 a page but reports a larger (or no, or a nonsense) ``page_size``:
    the first page looked short and iter_secrets stopped there, losing the rest silently. The
    contract guarantees ``total``: pages are followed until that many are seen (or one is empty)."""
    ids = [f"s{n}" for n in range(5)]
    asked: list[str | None] = []

    def capped(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("page"))
        page = int(request.url.params["page"])
        body: dict[str, object] = {
            "items": [_metadata(i) for i in ids[(page - 1) * 2 : page * 2]],
            "total": len(ids),
            "page": page,
        }
        if reported is not None:
            body["page_size"] = reported
        return httpx.Response(200, json=body)

    transport = httpx.MockTransport(capped)
    async with IdentityClient(URL, token="t-000001", transport=transport) as client:
        found = [item.id async for item in client.iter_secrets(provider="openai", page_size=100)]
    assert found == ids
    assert asked == ["1", "2", "3"]


@pytest.mark.parametrize(
    "url",
    [
        "https://identity.example.com/?token=CANARY-query-token-0001",
        "https://identity.example.com?tenant=a",
        "https://identity.example.com/?",
    ],
)
def test_an_identity_url_with_a_query_is_refused(url: str) -> None:
    # httpx puts each request's path after the base URL's query: the paths of the API went into the
    # query string (GET /?token=…/api/v1/secrets/…/values, logged so by httpx at INFO with the
    # token), or were lost (the list went to GET /?provider=…): a 404 there read as "no secret"
    with pytest.raises(ConfigurationError, match=r"^Identity URL .* has a query string") as caught:
        IdentityClient(url, token="service-token")
    assert "CANARY-query-token-0001" not in str(caught.value)


@pytest.mark.parametrize(
    "token",
    ["tok-CANARY-0123456789\n", " tok-CANARY-0123456789", "tok-CANARY 0123456789", "tök-CANARY-0123456789"],
)
def test_a_token_that_cannot_be_sent_in_a_header_is_refused_when_the_client_is_made(token: str) -> None:
    # a token read from a file keeps its line break: h11 refused the header with an error quoting
    # it ("Illegal header value b'Bearer tok-…\\n'"), chained to the IdentityUnavailableError, so
    # every traceback of the failure printed the token (escaped: the redactor missed it too)
    with pytest.raises(ConfigurationError, match=r"^token holds a space, a line break") as caught:
        IdentityClient("https://identity.example.com", token=token)
    assert "CANARY" not in "".join(traceback.format_exception(caught.value))


async def test_a_token_provider_returning_a_token_that_cannot_be_sent_is_refused_unsent() -> None:
    canary = "tok-CANARY-0123456789"
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1000))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with IdentityClient(
            f"http://127.0.0.1:{port}", token=lambda: f"{canary}\n", retries=0
        ) as client:
            with pytest.raises(
                ConfigurationError, match=r"token provider returned a token that holds"
            ) as caught:
                await client.list_secrets()
    finally:
        server.close()
        await server.wait_closed()
    assert canary not in "".join(traceback.format_exception(caught.value))
    assert received == []


@pytest.mark.parametrize(
    "transport", [httpx.HTTPTransport(), "http://127.0.0.1:8000", InMemoryIdentityService()]
)
def test_a_transport_that_is_no_async_transport_is_refused_when_the_client_is_made(transport: object) -> None:
    # taken, every request failed with a bare AttributeError ("no attribute 'handle_async_request'")
    with pytest.raises(ConfigurationError, match=r"^transport must be an httpx\.AsyncBaseTransport"):
        IdentityClient(URL, token="service-token", transport=transport)  # type: ignore[arg-type]


def _chain(error: BaseException) -> list[BaseException]:
    """The exceptions a traceback shows (and an error reporter walks): causes and unsuppressed
    contexts."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


@pytest.mark.parametrize("failure", ["network", "undecodable"])
async def test_an_httpx_error_carrying_the_token_is_not_chained(failure: str) -> None:
    # its .request held the Authorization header in clear, and its traceback the frames whose
    # locals did (an error reporter capturing local variables sends them)
    token = "tok-CANARY-chained-0123456789"

    def answer(request: httpx.Request) -> httpx.Response:
        if failure == "network":
            raise httpx.ConnectError("All connection attempts failed", request=request)
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")

    client = IdentityClient(URL, token=token, transport=httpx.MockTransport(answer), retries=0)
    manager = SecretsManager(IdentitySource(client))
    with pytest.raises(SecretsUnavailableError) as caught:
        await manager.get("openai", "api_key")
    await manager.aclose()
    chain = _chain(caught.value)
    assert [type(error) for error in chain][1:] in ([IdentityUnavailableError], [IdentityError])
    assert not any(isinstance(error, httpx.HTTPError) for error in chain)
    said = "All connection attempts failed" if failure == "network" else "DecodingError"
    assert said in str(chain[1])  # what went wrong is still said


async def test_secret_values_that_are_not_valid_text_are_an_identity_error_naming_the_field() -> None:
    # "\ud800" in JSON decodes to a lone surrogate: SecretValue's registration raised a bare
    # UnicodeEncodeError out of the client, its .object the secret
    body = (
        b'{"id": "s1", "name": "main", "provider": "openai", "values": {"api_key": "sk-CANARY-\\ud800-0123"}}'
    )
    client = IdentityClient(
        URL, token="t-000001", transport=httpx.MockTransport(lambda _: httpx.Response(200, content=body))
    )
    with pytest.raises(IdentityError) as caught:
        await client.get_values("s1")
    await client.aclose()
    assert str(caught.value) == (
        "GET /api/v1/secrets/s1/values: unexpected response (values['api_key'] is not valid text: "
        "a lone surrogate at position 10)"
    )
    assert caught.value.__context__ is None


@pytest.mark.parametrize("lost", ["timeout", "502"])
async def test_a_delete_retried_after_its_answer_was_lost_is_done_not_not_found(
    service: InMemoryIdentityService, sleeps: Sleeps, lost: str
) -> None:
    # the first DELETE deleted the secret but its answer was lost; the retry got 404, raised as
    # IdentityNotFoundError: the caller was told the secret did not exist, after its own delete
    secret_id = service.add_secret("main", "openai", {"api_key": "sk-to-delete-0001"})
    answers = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal answers
        answers += 1
        response = await service.handle(request)
        if answers == 1:
            if lost == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            return httpx.Response(502, json={"detail": "bad gateway"})
        return response

    async with IdentityClient(
        URL, token="service-token", transport=httpx.MockTransport(answer), sleep=sleeps
    ) as client:
        await client.delete_secret(secret_id)
        assert answers == 2
        with pytest.raises(IdentityNotFoundError):  # a delete that was never done is still refused
            await client.delete_secret(secret_id)


async def test_a_delete_whose_first_attempt_never_left_still_says_not_found(
    service: InMemoryIdentityService, sleeps: Sleeps
) -> None:
    attempts = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return await service.handle(request)

    async with IdentityClient(
        URL, token="service-token", transport=httpx.MockTransport(answer), sleep=sleeps
    ) as client:
        with pytest.raises(IdentityNotFoundError):
            await client.delete_secret("no-such-secret")
    assert attempts == 3  # two DELETEs, then the GET /api/v1/providers that says the 404 is one


@pytest.mark.parametrize("flag", ["false", "no", 0, None])
def test_allow_insecure_http_that_is_no_boolean_is_refused(flag: object) -> None:
    # "false" (from the environment, a YAML string) was true: plain http to any host allowed
    with pytest.raises(ConfigurationError, match=r"^allow_insecure_http must be True or False, got "):
        IdentityClient("http://identity.internal", token="t-000001", allow_insecure_http=flag)  # type: ignore[arg-type]


async def test_a_token_provider_that_hangs_is_an_outage_after_the_timeout(
    service: InMemoryIdentityService,
) -> None:
    # the timeout bounded httpx's attempt, not the token: a token issuer that never answered hung
    # every request (and a SecretsManager's reads, its cached value never served) for good
    async def hangs() -> str:
        await asyncio.Event().wait()
        return "never"

    async with IdentityClient(URL, token=hangs, transport=service.mock_transport(), timeout=0.01) as client:
        with pytest.raises(IdentityUnavailableError, match=r"token provider failed \(TimeoutError\)"):
            await asyncio.wait_for(client.list_secrets(), 10)
    assert service.count() == 0


async def test_a_request_cancelled_as_its_token_arrives_stays_cancelled(
    service: InMemoryIdentityService,
) -> None:
    # asyncio.wait_for on Python 3.11 returns the result of an awaitable that completes in the
    # same loop iteration as the cancellation of its caller: the cancellation was dropped, and the
    # request went on (a shutdown's cancel of a secrets lookup did not stop it)
    issued: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asked = asyncio.Event()

    async def provider() -> str:
        asked.set()
        return await issued

    async with IdentityClient(URL, token=provider, transport=service.mock_transport()) as client:
        listing = asyncio.create_task(client.list_secrets())
        await asked.wait()
        await asyncio.sleep(0)  # the provider is awaiting the token now
        issued.set_result("tok-000001")
        listing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listing
    assert service.count() == 0


@pytest.mark.parametrize("userinfo", ["svc:CANARY-url-pass-123@", "svc@", ":CANARY-url-pass-123@"])
async def test_credentials_in_the_identity_url_are_refused(userinfo: str) -> None:
    # httpx sends them as Basic auth, in place of the bearer token: every request was a 401
    with pytest.raises(
        ConfigurationError, match=r"^Identity URL .* holds credentials: httpx would send them"
    ) as caught:
        IdentityClient(f"https://{userinfo}identity.example.com", token="tok-123456")
    assert "CANARY-url-pass-123" not in str(caught.value)


async def test_a_client_closed_while_its_token_was_asked_for_raises_a_typed_error(
    service: InMemoryIdentityService,
) -> None:
    # closed between the check and the request: httpx's bare RuntimeError ("the client has been
    # closed") escaped, which a SecretsManager does not take for an outage
    asked, release = asyncio.Event(), asyncio.Event()

    async def token() -> str:
        asked.set()
        await release.wait()
        return "service-token"

    client = IdentityClient(URL, token=token, transport=service.mock_transport())
    listing = asyncio.create_task(client.list_providers())
    await asked.wait()
    await client.aclose()
    release.set()
    with pytest.raises(IdentityUnavailableError, match="the Identity client was closed"):
        await listing
    assert service.count() == 0


async def test_timeout_bounds_a_whole_attempt_against_a_server_that_trickles_its_answer() -> None:
    # httpx's timeout bounds each read, not the answer: a server sending a byte now and then held
    # the request (and the manager's reads with it) for as long as it went on, here for ever
    handlers: list[asyncio.Task[Any]] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        try:
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with IdentityClient(
            f"http://127.0.0.1:{port}", token="t-000001", timeout=0.5, retries=1
        ) as client:
            with pytest.raises(IdentityUnavailableError, match=r"Identity unreachable \(ReadTimeout: "):
                await asyncio.wait_for(client.get_values("s1"), 30)  # a guard: it ran for ever
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@pytest.mark.parametrize("sleep", [1.0, "asyncio.sleep"])
def test_a_sleep_that_is_not_callable_is_refused_when_the_client_is_made(sleep: object) -> None:
    # it was taken, and the first retry (during an outage, when a cached value should be served)
    # failed with a bare TypeError ("'float' object is not callable")
    with pytest.raises(
        ConfigurationError, match=r"^sleep must be a callable .*, got (1\.0|'asyncio\.sleep')$"
    ):
        IdentityClient(URL, token="t-000001", sleep=sleep)  # type: ignore[arg-type]


# -- a wrong base_url is no "no such secret" ----------------------------------------------------


@pytest.mark.parametrize(
    ("base", "hint"), [("/identity", ""), ("/api/v1", " (drop the /api/v1: the client adds it)")]
)
async def test_a_wrong_base_url_is_an_error_naming_the_path_not_a_missing_secret(
    service: InMemoryIdentityService, caplog: pytest.LogCaptureFixture, base: str, hint: str
) -> None:
    # every path under a wrong prefix answers 404: the list's 404 ("unknown provider") made every
    # secret read as missing, get() returned None and nothing was logged
    canary = "tok-CANARY-url-0123456789"
    service.add_token(canary, None)
    service.add_secret("main", "openai", {"api_key": "sk-present-0000001"})
    client = IdentityClient(f"{URL}{base}", token=canary, transport=service.mock_transport())
    async with SecretsManager(IdentitySource(client)) as manager:
        with pytest.raises(IdentityURLError) as caught:
            await IdentitySource(client, owns_client=False).fetch(SecretKey("openai"))
        with pytest.raises(SecretsUnavailableError, match="base_url") as unavailable:
            await manager.get("openai", "api_key")
    message = str(caught.value)
    assert message.startswith(
        f"GET {base}{SECRETS} answered 404, and so did GET {base}/api/v1/providers: "
        f"the Identity API is not at base_url '{URL}{base}'{hint}"
    )
    assert "check base_url" in message
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.status == 404
    assert [r.levelname for r in caplog.records if "base_url" in r.getMessage()] == ["ERROR"]  # once
    for text in (
        message,
        "".join(traceback.format_exception(unavailable.value)),
        caplog.text,
    ):
        assert canary not in text


async def test_list_providers_answering_404_is_a_wrong_base_url(service: InMemoryIdentityService) -> None:
    async with IdentityClient(
        f"{URL}/identity", token="service-token", transport=service.mock_transport()
    ) as client:
        with pytest.raises(IdentityURLError, match=r"^GET /identity/api/v1/providers answered 404: "):
            await client.list_providers()
    assert service.count("GET") == 1


@pytest.mark.parametrize("probe", [None, 403])
async def test_an_unknown_provider_at_the_right_url_is_still_no_such_secret_asked_once_per_client(
    service: InMemoryIdentityService, probe: int | None
) -> None:
    service.fail_next(404, times=None, path=SECRETS, method="GET")  # a service that 404s the provider
    if probe is not None:  # a token that may not list providers: the path is served all the same
        service.fail_next(probe, times=None, path="/api/v1/providers")
    async with IdentityClient(URL, token="service-token", transport=service.mock_transport()) as client:
        source = IdentitySource(client)
        assert await source.fetch(SecretKey("nope")) is None
        assert await source.fetch(SecretKey("nope")) is None
        assert await source.fetch(SecretKey("other")) is None
        assert service.count("GET", SECRETS) == 3
        assert service.count("GET", "/api/v1/providers") == 1  # once per client, not per lookup
    async with IdentityClient(URL, token="service-token", transport=service.mock_transport()) as other:
        assert await IdentitySource(other).fetch(SecretKey("nope")) is None
    assert service.count("GET", "/api/v1/providers") == 2  # and again for a new client


async def test_the_in_memory_services_404_for_an_unknown_provider_is_no_such_secret(
    service: InMemoryIdentityService,
) -> None:
    # the fake answers the contract's 404 (it answered 200 and no items): the source still reads
    # it as "no such secret", after one probe, and a chain goes on to the environment
    async with IdentityClient(URL, token="service-token", transport=service.mock_transport()) as client:
        with pytest.raises(
            IdentityNotFoundError, match=r"^GET /api/v1/secrets answered 404: unknown provider"
        ):
            await client.list_secrets(provider="mistral")
        environment = EnvironmentSource(environ={"MISTRAL_API_KEY": "mk-env-0000001"})
        chain = ChainSource(IdentitySource(client, owns_client=False), environment)
        values = await chain.fetch(SecretKey("mistral"))
        assert values is not None
        assert values["api_key"].reveal() == "mk-env-0000001"
        assert await IdentitySource(client, owns_client=False).fetch(SecretKey("other")) is None
    assert service.count("GET", SECRETS) == 3
    assert service.count("GET", "/api/v1/providers") == 1


async def test_a_client_that_had_an_answer_does_not_probe_on_a_404(service: InMemoryIdentityService) -> None:
    async with IdentityClient(URL, token="service-token", transport=service.mock_transport()) as client:
        await client.list_secrets()
        with pytest.raises(IdentityNotFoundError):
            await client.get_secret("gone")
    assert service.count("GET", "/api/v1/providers") == 0


async def test_a_probe_that_fails_is_an_outage_and_is_asked_again(
    service: InMemoryIdentityService, sleeps: Sleeps
) -> None:
    # whether the secret exists is not known: a "no such secret" would drop what a manager serves
    service.fail_next(404, times=None, path=SECRETS, method="GET")
    service.fail_next(503, times=4, path="/api/v1/providers")  # the first attempt and 3 retries
    async with IdentityClient(
        URL, token="service-token", transport=service.mock_transport(), sleep=sleeps
    ) as client:
        source = IdentitySource(client)
        with pytest.raises(IdentityUnavailableError, match=r"^GET /api/v1/providers answered 503"):
            await source.fetch(SecretKey("nope"))
        assert await source.fetch(SecretKey("nope")) is None  # asked again: it answers now
        assert await source.fetch(SecretKey("nope")) is None
    assert service.count("GET", "/api/v1/providers") == 5


async def test_concurrent_404s_probe_once(service: InMemoryIdentityService) -> None:
    service.fail_next(404, times=None, path=SECRETS, method="GET")
    async with IdentityClient(URL, token="service-token", transport=service.mock_transport()) as client:
        source = IdentitySource(client)
        found = await asyncio.gather(*(source.fetch(SecretKey(f"p{n}")) for n in range(10)))
    assert found == [None] * 10
    assert service.count("GET", "/api/v1/providers") == 1
