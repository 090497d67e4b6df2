"""The in-memory A8N Identity service speaks the contract: endpoints, errors, RBAC, paging, faults."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from dynamic_agents.exceptions import (
    ConfigurationError,
    IdentityConflictError,
    IdentityNotFoundError,
    IdentityRequestError,
)
from dynamic_agents.testing.identity import InMemoryIdentityService, RecordedRequest

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SECRET = "sk-SECRET-value"
SERVICE = {"Authorization": "Bearer service-token"}
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
KNOWN = "anthropic, azure_openai, discord, google, groq, openai, slack"
METADATA_KEYS = {
    "id",
    "name",
    "provider",
    "user_id",
    "status",
    "fields",
    "created_at",
    "updated_at",
    "description",
}


@pytest.fixture
def service() -> InMemoryIdentityService:
    ticks = itertools.count()
    return InMemoryIdentityService(
        tokens={"service-token": None, "alice-token": "alice", "bob-token": "bob"},
        clock=lambda: T0 + timedelta(seconds=next(ticks)),
    )


@pytest.fixture
async def client(service: InMemoryIdentityService) -> AsyncIterator[httpx.AsyncClient]:
    transport = service.mock_transport()
    async with httpx.AsyncClient(transport=transport, base_url="http://identity.test", headers=SERVICE) as c:
        yield c


def seed(service: InMemoryIdentityService) -> dict[str, str]:
    return {
        "system": service.add_secret("default", "openai", {"api_key": "sk-system"}),
        "alice": service.add_secret("mine", "openai", {"api_key": "sk-alice"}, user_id="alice"),
        "bob": service.add_secret("mine", "discord", {"bot_token": "b"}, user_id="bob"),
    }


async def test_secret_lifecycle_over_http(client: httpx.AsyncClient) -> None:
    body = {"name": "main", "provider": "openai", "values": {"org_id": "org", "api_key": SECRET}}
    created = await client.post("/api/v1/secrets", json={**body, "description": "prod"})
    assert created.status_code == 201
    meta = created.json()
    assert set(meta) == METADATA_KEYS
    assert meta | {"id": "x"} == {
        "id": "x",
        "name": "main",
        "provider": "openai",
        "user_id": None,
        "status": "active",
        "fields": ["api_key", "org_id"],
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
        "description": "prod",
    }
    url = f"/api/v1/secrets/{meta['id']}"
    assert (await client.get(url)).json() == meta
    values = (await client.get(f"{url}/values")).json()
    assert values == {"id": meta["id"], "name": "main", "provider": "openai", "values": body["values"]}

    patch = {"name": "renamed", "values": {"api_key": "sk-new"}, "status": "disabled", "description": None}
    patched = (await client.patch(url, json=patch)).json()
    assert patched["name"] == "renamed"
    assert patched["status"] == "disabled"
    assert patched["description"] is None
    assert patched["created_at"] == meta["created_at"] < patched["updated_at"]
    assert (await client.get(f"{url}/values")).json()["values"] == {"api_key": "sk-new", "org_id": "org"}

    deleted = await client.delete(url)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (await client.get(url)).status_code == 404


async def test_providers_and_their_schemas(client: httpx.AsyncClient) -> None:
    providers = (await client.get("/api/v1/providers")).json()["items"]
    by_name = {item["name"]: item["fields"] for item in providers}
    assert by_name["openai"] == ["api_key", "org_id"]
    assert set(by_name) == {"openai", "anthropic", "azure_openai", "discord", "groq", "slack", "google"}
    schema = (await client.get("/api/v1/providers/azure_openai/schema")).json()
    assert schema["type"] == "object"
    assert schema["properties"] == {f: {"type": "string"} for f in ("api_key", "endpoint", "api_version")}
    assert schema["required"] == ["api_key"]
    slack = (await client.get("/api/v1/providers/slack/schema")).json()
    assert slack["required"] == ["bot_token"]


async def test_custom_providers_replace_the_defaults() -> None:
    service = InMemoryIdentityService(providers={"acme": ["token", "region"]})
    transport = service.mock_transport()
    async with httpx.AsyncClient(transport=transport, base_url="http://identity.test", headers=SERVICE) as c:
        items = (await c.get("/api/v1/providers")).json()["items"]
        assert items == [{"name": "acme", "display_name": "Acme", "fields": ["token", "region"]}]
        assert (await c.get("/api/v1/providers/acme/schema")).json()["required"] == []


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"name": "x", "values": {"api_key": "sk-SECRET-value"', 400),
        (b"\xff\xfe", 400),
        (b"", 400),
        (json.dumps(["sk-SECRET-value"]).encode(), 422),
        (json.dumps({"provider": "openai", "values": {"api_key": SECRET}}).encode(), 422),
        (json.dumps({"name": "", "provider": "openai", "values": {"api_key": SECRET}}).encode(), 422),
        (json.dumps({"name": "x", "provider": "openai", "values": [SECRET]}).encode(), 422),
        (
            json.dumps(
                {"name": "x", "provider": "openai", "values": {"api_key": SECRET, "org_id": 7}}
            ).encode(),
            422,
        ),
        # the contract's 404 for an unknown provider
        (json.dumps({"name": "x", "provider": "nope", "values": {"api_key": SECRET}}).encode(), 404),
        (json.dumps({"name": "x", "provider": "openai", "values": {"org_id": SECRET}}).encode(), 422),
        (
            json.dumps(
                {"name": "x", "provider": "openai", "values": {"api_key": SECRET, "k": SECRET}}
            ).encode(),
            422,
        ),
        (
            json.dumps(
                {"name": "x", "provider": "openai", "values": {"api_key": SECRET}, "user_id": 3}
            ).encode(),
            422,
        ),
    ],
)
async def test_invalid_create_bodies_are_refused_without_echoing_values(
    client: httpx.AsyncClient, service: InMemoryIdentityService, content: bytes, status: int
) -> None:
    response = await client.post("/api/v1/secrets", content=content)
    assert response.status_code == status
    assert isinstance(response.json()["detail"], str)
    assert SECRET not in response.text
    assert service.count("POST") == 1
    assert (await client.get("/api/v1/secrets")).json()["total"] == 0


@pytest.mark.parametrize(
    ("patch", "status"),
    [
        ({"status": "paused"}, 422),
        ({"values": {"nope": SECRET}}, 422),
        ({"values": {"api_key": 1}}, 422),
        ({"name": 5}, 422),
        ({"description": 5}, 422),
        ({"name": "taken"}, 409),
        ({"name": "taken", "values": {"api_key": SECRET}}, 409),
    ],
)
async def test_invalid_patches_change_nothing(
    client: httpx.AsyncClient, service: InMemoryIdentityService, patch: dict[str, Any], status: int
) -> None:
    secret_id = service.add_secret("mine", "openai", {"api_key": "sk-old"})
    service.add_secret("taken", "openai", {"api_key": "sk-other"})
    before = (await client.get(f"/api/v1/secrets/{secret_id}")).json()
    response = await client.patch(f"/api/v1/secrets/{secret_id}", json=patch)
    assert response.status_code == status
    assert SECRET not in response.text
    assert (await client.get(f"/api/v1/secrets/{secret_id}")).json() == before
    assert service.secret_values(secret_id) == {"api_key": "sk-old"}
    malformed = await client.patch(f"/api/v1/secrets/{secret_id}", content=b"{")
    assert malformed.status_code == 400


async def test_a_bad_status_is_named_in_the_error(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    secret_id = service.add_secret("mine", "openai", {"api_key": "sk-old"})
    response = await client.patch(f"/api/v1/secrets/{secret_id}", json={"status": "paused"})
    assert (response.status_code, response.json()) == (
        422,
        {"detail": "status must be one of ['active', 'disabled'], got 'paused'"},
    )
    long = await client.patch(f"/api/v1/secrets/{secret_id}", json={"status": "x" * 1000})
    assert len(long.json()["detail"]) < 120  # a huge value is cut short
    with pytest.raises(IdentityRequestError, match=r"got 'paused'$"):
        service.add_secret("x", "groq", {"api_key": "k"}, status="paused")


@pytest.mark.parametrize("headers", [SERVICE, ALICE])
async def test_an_empty_user_id_is_refused_on_create(
    client: httpx.AsyncClient, service: InMemoryIdentityService, headers: dict[str, str]
) -> None:
    """``user_id: ""`` used to create a secret owned by a user named "" (with the service token),
    one nobody's token can reach: a 422 naming the field, before any permission check."""
    body = {"name": "x", "provider": "openai", "values": {"api_key": SECRET}, "user_id": ""}
    response = await client.post("/api/v1/secrets", json=body, headers=headers)
    assert (response.status_code, response.json()) == (
        422,
        {"detail": "user_id must be a non-empty string or null, got ''"},
    )
    with pytest.raises(IdentityRequestError, match="user_id must be a non-empty string or null"):
        service.add_secret("x", "openai", {"api_key": "k"}, user_id="")
    assert (await client.get("/api/v1/secrets")).json()["total"] == 0


@pytest.mark.parametrize("headers", [SERVICE, ALICE])
async def test_an_empty_user_id_is_refused_on_list(
    client: httpx.AsyncClient, service: InMemoryIdentityService, headers: dict[str, str]
) -> None:
    """``?user_id=`` listed the secrets of a user named "" (none: create refuses that owner) with
    the service token, and was a 403 with a user's: a 422 naming the parameter, as on create."""
    seed(service)
    response = await client.get("/api/v1/secrets", params={"user_id": ""}, headers=headers)
    assert (response.status_code, response.json()) == (
        422,
        {"detail": "user_id must be a non-empty string or left out, got ''"},
    )


@pytest.mark.parametrize("headers", [SERVICE, ALICE])
@pytest.mark.parametrize("bare_list", [False, True])
async def test_listing_an_unknown_provider_is_a_404(
    client: httpx.AsyncClient, service: InMemoryIdentityService, headers: dict[str, str], bare_list: bool
) -> None:
    """The contract: ``404`` for an unknown provider. The list answered ``200`` and no items, so a
    client's handling of that 404 (``IdentitySource``: no such secret) went untested against it."""
    seed(service)
    service.bare_list = bare_list
    response = await client.get("/api/v1/secrets", params={"provider": "nope"}, headers=headers)
    assert (response.status_code, response.json()) == (
        404,
        {"detail": f"unknown provider 'nope'; known: {KNOWN}"},
    )
    known = await client.get("/api/v1/secrets", params={"provider": "groq"}, headers=headers)
    assert known.status_code == 200  # a known provider with no secret: an empty list, as before


@pytest.mark.parametrize("headers", [SERVICE, ALICE])
async def test_creating_a_secret_of_an_unknown_provider_is_a_404(
    client: httpx.AsyncClient, service: InMemoryIdentityService, headers: dict[str, str]
) -> None:
    """The contract's ``404`` for an unknown provider, which a create was answered ``422``; a
    malformed ``provider`` is still a bad request."""
    body = {"name": "x", "provider": "nope", "values": {"api_key": SECRET}}
    response = await client.post("/api/v1/secrets", json=body, headers=headers)
    assert (response.status_code, response.json()) == (
        404,
        {"detail": f"unknown provider 'nope'; known: {KNOWN}"},
    )
    malformed = await client.post("/api/v1/secrets", json={**body, "provider": 5}, headers=headers)
    assert malformed.status_code == 422
    with pytest.raises(IdentityNotFoundError):
        service.find_secret("x", "nope")


async def test_names_are_unique_per_provider_and_owner(client: httpx.AsyncClient) -> None:
    body = {"name": "main", "provider": "openai", "values": {"api_key": SECRET}}
    assert (await client.post("/api/v1/secrets", json=body)).status_code == 201
    duplicate = await client.post("/api/v1/secrets", json=body)
    assert duplicate.status_code == 409
    # it read "the service already has a 'openai' secret named 'main'"
    assert duplicate.json() == {
        "detail": "the service already has a secret named 'main' for provider 'openai'"
    }
    assert SECRET not in duplicate.text
    other_provider = {**body, "provider": "groq"}
    other_owner = {**body, "user_id": "alice"}
    for ok in (other_provider, other_owner):
        assert (await client.post("/api/v1/secrets", json=ok)).status_code == 201


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer unknown"}, {"Authorization": "Basic c2VydmljZQ=="}]
)
async def test_missing_or_unknown_tokens_get_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    client.headers.pop("Authorization")
    response = await client.get("/api/v1/secrets", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_revoked_tokens_get_401_and_new_tokens_work(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    service.revoke_token("service-token")
    assert (await client.get("/api/v1/providers")).status_code == 401
    service.add_token("fresh", None)
    assert (
        await client.get("/api/v1/providers", headers={"Authorization": "Bearer fresh"})
    ).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/secrets/missing"),
        ("GET", "/api/v1/secrets/missing/values"),
        ("PATCH", "/api/v1/secrets/missing"),
        ("DELETE", "/api/v1/secrets/missing"),
        ("GET", "/api/v1/providers/nope/schema"),
        ("GET", "/api/v1/nothing"),
        ("GET", "/api/v1/secrets/"),
    ],
)
async def test_unknown_things_get_404(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path, json={"status": "active"} if method == "PATCH" else None)
    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/v1/secrets", "GET, POST"),
        ("POST", "/api/v1/secrets/some-id/values", "GET"),
        ("PUT", "/api/v1/secrets/some-id", "GET, PATCH, DELETE"),
        ("POST", "/api/v1/providers", "GET"),
    ],
)
async def test_wrong_methods_get_405(client: httpx.AsyncClient, method: str, path: str, allow: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow


async def test_the_service_token_sees_every_secret(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    ids = seed(service)
    everything = (await client.get("/api/v1/secrets")).json()
    assert [item["id"] for item in everything["items"]] == list(ids.values())
    alices = (await client.get("/api/v1/secrets", params={"user_id": "alice"})).json()["items"]
    assert [item["id"] for item in alices] == [ids["alice"]]
    assert (await client.get(f"/api/v1/secrets/{ids['bob']}/values")).json()["values"] == {"bot_token": "b"}


async def test_a_user_token_sees_only_its_own_secrets(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    ids = seed(service)
    listed = (await client.get("/api/v1/secrets", headers=ALICE)).json()["items"]
    assert [item["id"] for item in listed] == [ids["alice"]]
    own = await client.get("/api/v1/secrets", params={"user_id": "alice"}, headers=ALICE)
    assert own.json()["total"] == 1
    assert (await client.get("/api/v1/secrets", params={"user_id": "bob"}, headers=ALICE)).status_code == 403
    assert (await client.get(f"/api/v1/secrets/{ids['alice']}/values", headers=ALICE)).status_code == 200
    created = await client.post(
        "/api/v1/secrets", json={"name": "x", "provider": "groq", "values": {"api_key": "k"}}, headers=ALICE
    )
    assert created.json()["user_id"] == "alice"


@pytest.mark.parametrize("owner", ["bob", "system"])
@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("GET", "/values"), ("PATCH", ""), ("DELETE", "")]
)
async def test_a_user_token_cannot_touch_others_secrets(
    client: httpx.AsyncClient, service: InMemoryIdentityService, owner: str, method: str, suffix: str
) -> None:
    ids = seed(service)
    url = f"/api/v1/secrets/{ids[owner]}{suffix}"
    body = {"status": "disabled"} if method == "PATCH" else None
    response = await client.request(method, url, json=body, headers=ALICE)
    assert response.status_code == 403
    assert (await client.get(f"/api/v1/secrets/{ids[owner]}")).json()["status"] == "active"


async def test_a_user_token_cannot_create_for_someone_else(client: httpx.AsyncClient) -> None:
    body = {"name": "x", "provider": "groq", "values": {"api_key": "k"}, "user_id": "bob"}
    assert (await client.post("/api/v1/secrets", json=body, headers=ALICE)).status_code == 403
    assert (await client.get("/api/v1/secrets")).json()["total"] == 0


async def test_paging_covers_every_secret_once(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    ids = [service.add_secret(f"s{i}", "groq", {"api_key": "k"}) for i in range(7)]
    service.add_secret("other", "anthropic", {"api_key": "k"})
    pages = [
        (
            await client.get("/api/v1/secrets", params={"provider": "groq", "page": page, "page_size": 3})
        ).json()
        for page in (1, 2, 3, 4)
    ]
    assert [len(p["items"]) for p in pages] == [3, 3, 1, 0]
    assert {(p["total"], p["page_size"]) for p in pages} == {(7, 3)}
    assert [p["page"] for p in pages] == [1, 2, 3, 4]
    assert [item["id"] for p in pages for item in p["items"]] == ids
    default = (await client.get("/api/v1/secrets")).json()
    assert (default["total"], default["page"], default["page_size"]) == (8, 1, 50)


async def test_ties_on_created_at_keep_creation_order() -> None:
    service = InMemoryIdentityService(clock=lambda: T0)
    ids = [service.add_secret(f"s{i}", "groq", {"api_key": "k"}) for i in range(12)]
    async with httpx.AsyncClient(
        transport=service.mock_transport(), base_url="http://x", headers=SERVICE
    ) as c:
        assert [item["id"] for item in (await c.get("/api/v1/secrets")).json()["items"]] == ids


@pytest.mark.parametrize(
    "params",
    [
        {"page": "0"},
        {"page": "x"},
        {"page_size": "0"},
        {"page_size": "101"},
        {"page_size": ""},
        # int() takes these, a strict query parser does not: digits only
        {"page": "1_0"},
        {"page": " 2"},
        {"page": "+2"},
        {"page_size": "\u0661\u0660"},  # Arabic-Indic "10"
    ],
)
async def test_bad_paging_parameters_get_422(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    assert (await client.get("/api/v1/secrets", params=params)).status_code == 422


async def test_tolerance_switches(client: httpx.AsyncClient, service: InMemoryIdentityService) -> None:
    ids = [service.add_secret(f"s{i}", "groq", {"api_key": "k"}) for i in range(3)]
    service.bare_list = True
    bare = (await client.get("/api/v1/secrets", params={"page_size": 1})).json()
    assert [item["id"] for item in bare] == ids
    service.omit_optional = True
    assert not {"status", "fields"} & set((await client.get(f"/api/v1/secrets/{ids[0]}")).json())
    assert all("status" not in item for item in (await client.get("/api/v1/secrets")).json())
    service.naive_timestamps = True
    meta = (await client.get(f"/api/v1/secrets/{ids[0]}")).json()
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is None
    assert datetime.fromisoformat(meta["updated_at"]) == T0.replace(tzinfo=None)


async def test_fail_next_answers_the_next_requests_then_recovers(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    service.fail_next(429, times=2, retry_after=1.5)
    for _ in range(2):
        failed = await client.get("/api/v1/providers")
        assert (failed.status_code, failed.json(), failed.headers["Retry-After"]) == (
            429,
            {"detail": "injected"},
            "1.5",
        )
    assert (await client.get("/api/v1/providers")).status_code == 200
    service.fail_next(503, retry_after=2)
    assert (await client.get("/api/v1/providers")).headers["Retry-After"] == "2"


async def test_fail_next_can_target_a_path_and_last_until_cleared(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    secret_id = service.add_secret("main", "openai", {"api_key": "k"})
    service.fail_next(500, times=None, path="/api/v1/secrets/{id}/values")
    for _ in range(3):
        response = await client.get(f"/api/v1/secrets/{secret_id}/values")
        assert response.status_code == 500
        assert "Retry-After" not in response.headers
    assert (await client.get(f"/api/v1/secrets/{secret_id}")).status_code == 200
    service.clear_faults()
    assert (await client.get(f"/api/v1/secrets/{secret_id}/values")).status_code == 200


async def test_an_injected_401_comes_before_authentication(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    service.fail_next(401, method="GET")
    assert (await client.post("/api/v1/secrets", content=b"{")).status_code == 400
    assert (await client.get("/api/v1/providers")).status_code == 401
    assert (await client.get("/api/v1/providers")).status_code == 200


@pytest.mark.parametrize(("status", "times"), [(200, 1), (503, 0), (600, 1)])
def test_fail_next_refuses_nonsense(service: InMemoryIdentityService, status: int, times: int) -> None:
    with pytest.raises(ValueError, match="fail_next"):
        service.fail_next(status, times=times)


@pytest.mark.parametrize("retry_after", [-1, float("nan"), float("inf"), "2", True])
def test_fail_next_refuses_a_retry_after_that_is_no_number_of_seconds(
    service: InMemoryIdentityService, retry_after: object
) -> None:
    """As HTTPErrorStep does: -1 used to send ``Retry-After: -1``, NaN ``Retry-After: nan``."""
    with pytest.raises(ConfigurationError, match=r"^fail_next retry_after must be .*>= 0 .*, got "):
        service.fail_next(429, retry_after=retry_after)  # type: ignore[arg-type]
    service.fail_next(429, retry_after=0)  # "retry at once" is a valid answer


async def test_down_answers_503_to_everything(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    service.down = True
    for path in ("/api/v1/providers", "/api/v1/secrets", "/nowhere"):
        assert (await client.get(path)).status_code == 503
    service.down = False
    assert (await client.get("/api/v1/providers")).status_code == 200


async def test_delay_holds_every_answer(client: httpx.AsyncClient, service: InMemoryIdentityService) -> None:
    service.delay = 0.2
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.get("/api/v1/providers"), timeout=service.delay / 2)
    assert (await client.get("/api/v1/providers")).status_code == 200


async def test_requests_are_recorded_and_counted(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    ids = seed(service)
    await client.get("/api/v1/secrets", params={"provider": "openai", "page": 1})
    await client.get(f"/api/v1/secrets/{ids['alice']}/values", headers=ALICE)
    await client.get(f"/api/v1/secrets/{ids['bob']}/values", headers=BOB)
    await client.get(f"/api/v1/secrets/{ids['bob']}")
    await client.get("/api/v1/providers", headers={"Authorization": "Bearer who"})
    assert service.requests[0] == RecordedRequest(
        "GET", "/api/v1/secrets", {"provider": "openai", "page": "1"}, None, "service-token"
    )
    assert [r.user_id for r in service.requests] == [None, "alice", "bob", None, None]
    assert service.count() == 5
    assert service.count("get", "/api/v1/secrets/{id}/values") == 2
    assert service.count("GET", "/api/v1/secrets/{id}") == 1
    assert service.count(path=f"/api/v1/secrets/{ids['bob']}") == 1
    assert service.count("POST") == 0
    assert service.requests[-1].token == "who"
    assert "service-token" not in repr(service.requests[0])
    service.reset_requests()
    assert service.count() == 0


def test_seeding_refuses_what_the_service_would(service: InMemoryIdentityService) -> None:
    secret_id = service.add_secret("main", "openai", {"api_key": SECRET})
    with pytest.raises(IdentityConflictError):
        service.add_secret("main", "openai", {"api_key": "other"})
    with pytest.raises(IdentityNotFoundError, match="unknown provider") as unknown:
        service.add_secret("x", "nope", {"api_key": "k"})
    assert unknown.value.status == 404
    with pytest.raises(IdentityRequestError, match="requires"):
        service.add_secret("x", "discord", {"application_id": "a"})
    with pytest.raises(IdentityRequestError, match="status"):
        service.add_secret("x", "groq", {"api_key": "k"}, status="paused")
    with pytest.raises(IdentityNotFoundError):
        service.set_values("missing", {"api_key": "k"})
    with pytest.raises(IdentityRequestError) as refused:
        service.set_values(secret_id, {"api_key": 5})  # type: ignore[dict-item]
    assert SECRET not in str(refused.value)
    assert service.secret_values(secret_id) == {"api_key": SECRET}
    assert SECRET not in repr(service)


CANARY_1, CANARY_2 = "sk-CANARY0fake0identity0000001", "sk-CANARY0fake0identity0000002"


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        ({"name": 123}, "name is required and must be a non-empty string, got 123"),
        ({"name": ""}, "name is required and must be a non-empty string, got ''"),
        ({"provider": ["openai"]}, "provider is required and must be a non-empty string, got a list"),
        ({"description": [CANARY_1]}, "description must be a string or null, got a list"),
        ({"status": CANARY_2}, "status must be one of ['active', 'disabled'], got **********"),
        ({"description": 5}, "description must be a string or null, got 5"),
    ],
)
def test_seeding_checks_the_types_the_service_checks(
    service: InMemoryIdentityService, arguments: dict[str, object], detail: str
) -> None:
    """``add_secret(name=123)`` used to store a secret the HTTP side would have refused (and whose
    metadata then held a number): the same 422 as a POST, as an IdentityRequestError."""
    given: dict[str, Any] = {"name": "x", "provider": "openai", **arguments}
    with pytest.raises(IdentityRequestError) as caught:
        service.add_secret(given.pop("name"), given.pop("provider"), {"api_key": "k"}, **given)
    assert (str(caught.value), caught.value.status) == (detail, 422)
    assert service.count() == 0
    with pytest.raises(IdentityNotFoundError):
        service.find_secret("x", "openai")


async def test_rotation_and_status_bump_updated_at(
    client: httpx.AsyncClient, service: InMemoryIdentityService
) -> None:
    older = service.add_secret("a", "openai", {"api_key": "one"})
    newer = service.add_secret("b", "openai", {"api_key": "two"})
    service.set_values(older, {"api_key": "rotated"})
    items = (await client.get("/api/v1/secrets", params={"provider": "openai"})).json()["items"]
    latest = max(items, key=lambda item: datetime.fromisoformat(item["updated_at"]))
    assert latest["id"] == older
    service.set_status(newer, "disabled")
    assert (await client.get(f"/api/v1/secrets/{newer}")).json()["status"] == "disabled"
    service.remove_secret(newer)
    assert (await client.get(f"/api/v1/secrets/{newer}")).status_code == 404


async def test_served_as_an_asgi_app(service: InMemoryIdentityService) -> None:
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://identity.test", headers=SERVICE
    ) as client:
        body = {"name": "main", "provider": "anthropic", "values": {"api_key": SECRET}}
        created = await client.post("/api/v1/secrets", json=body)
        assert created.status_code == 201
        listed = (await client.get("/api/v1/secrets", params={"provider": "anthropic"})).json()
        assert [item["id"] for item in listed["items"]] == [created.json()["id"]]
        deleted = await client.delete(f"/api/v1/secrets/{created.json()['id']}")
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert (await client.get("/api/v1/secrets", headers={"Authorization": "Bearer x"})).status_code == 401
    assert service.count("POST", "/api/v1/secrets") == 1


async def test_the_asgi_lifespan_is_answered(service: InMemoryIdentityService) -> None:
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return next(incoming)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await service({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
