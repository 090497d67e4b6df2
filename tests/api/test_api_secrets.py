"""No API response ever carries a secret value: a canary secret is the API key of every LLM
deployment, and every route is called — successes, errors, streams, LLM listing and refresh, health
— with the canary searched for in every body and header."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from dynamic_agents.agents import AgentRuntime, InMemorySpecStore, RouterModels, ToolRegistry
from dynamic_agents.events import StreamNames
from dynamic_agents.llm import RouterConfig, build_router
from dynamic_agents.secrets import SecretKey, SecretsManager, SecretValue, StaticSource
from dynamic_agents.testing import InMemoryServer, InMemoryTransport, mock_llm_router
from tests.api.support import AUTH, client_for, dead_letter, event_router, make_app

V1 = "/api/v1"
EXECUTE = {"input": "hi", "session_id": "s1"}
EVENT = {"source": "discord", "source_id": "c1", "user_id": "u1", "content": "hello"}


@dataclass
class Leaky:
    app: FastAPI
    canary: str
    rotated: str
    source: StaticSource
    client: httpx.AsyncClient
    transport: InMemoryTransport
    responses: list[httpx.Response]

    async def send(self, method: str, path: str, body: Any = None, **options: Any) -> httpx.Response:
        response = await self.client.request(method, path, json=body, **options)
        self.responses.append(response)
        return response


@pytest.fixture
async def leaky() -> AsyncIterator[Leaky]:
    canary = f"canary-{uuid.uuid4().hex}"
    rotated = f"canary-rotated-{uuid.uuid4().hex}"
    SecretValue(canary)  # registered with the process-wide redactor, as every secret value is
    source = StaticSource({"mock": {"api_key": canary}})
    secrets = SecretsManager(source)
    router = await mock_llm_router(
        {"gpt": "a reply", "broken": ["litellm.InternalServerError", "litellm.RateLimitError"]},
        secrets=secrets,
        num_retries=0,
    )
    runtime = AgentRuntime(InMemorySpecStore(), ToolRegistry(), RouterModels(router))
    transport = InMemoryTransport(InMemoryServer(), names=StreamNames("leaky"))

    async def failing_check() -> bool:
        raise ConnectionError(f"could not log in with {canary}")

    app = make_app(
        runtime,
        transport=transport,
        event_router=event_router(),
        llm_router=router,
        health_checks={"vault": failing_check},
    )
    async with client_for(app, AUTH) as client:
        yield Leaky(app, canary, rotated, source, client, transport, [])
    await router.aclose()
    await secrets.aclose()


async def test_the_canary_is_really_the_deployments_key(leaky: Leaky) -> None:
    source_value = await leaky.source.fetch(SecretKey("mock"))
    assert source_value is not None
    assert source_value["api_key"].reveal() == leaky.canary


async def test_no_response_carries_the_secret(leaky: Leaky) -> None:
    send = leaky.send
    agent = {"id": "bot", "model": "gpt", "instructions": "Be helpful."}
    broken = {"id": "fragile", "model": "broken"}

    # specs: create, conflict, invalid, read, list, update, stale update, delete
    assert (await send("POST", f"{V1}/agents", agent)).status_code == 201
    assert (await send("POST", f"{V1}/agents", broken)).status_code == 201
    assert (await send("POST", f"{V1}/agents", agent)).status_code == 409
    assert (await send("POST", f"{V1}/agents", {"id": "x", "model": "unknown"})).status_code == 422
    assert (await send("POST", f"{V1}/gadgets", agent)).status_code == 404
    assert (await send("GET", f"{V1}/agents")).status_code == 200
    assert (await send("GET", f"{V1}/agents/bot")).status_code == 200
    assert (await send("GET", f"{V1}/agents/ghost")).status_code == 404
    assert (await send("PUT", f"{V1}/agents/bot?expected_version=1", agent)).status_code == 200
    assert (await send("PUT", f"{V1}/agents/bot?expected_version=1", agent)).status_code == 409
    assert (
        await send("POST", f"{V1}/teams", {"id": "crew", "members": ["bot"], "model": "gpt"})
    ).status_code == 201
    assert (await send("DELETE", f"{V1}/teams/crew")).status_code == 204

    # execute: JSON, stream, idempotent replay, a model failing behind the router, bad bodies
    ok = await send("POST", f"{V1}/agents/bot/execute", EXECUTE, headers={"Idempotency-Key": "k"})
    assert ok.json()["content"] == "a reply"
    assert (
        await send("POST", f"{V1}/agents/bot/execute", EXECUTE, headers={"Idempotency-Key": "k"})
    ).json() == ok.json()
    streamed = await send("POST", f"{V1}/agents/bot/execute", {**EXECUTE, "stream": True})
    assert "event: result" in streamed.text
    for _ in range(2):  # both broken deployments: a 500 and a 429 from "the provider"
        failed = await send("POST", f"{V1}/agents/fragile/execute", EXECUTE)
        assert (failed.status_code, failed.json()["status"]) == (200, "error")
    failed_stream = await send("POST", f"{V1}/agents/fragile/execute", {**EXECUTE, "stream": True})
    assert "event: result" in failed_stream.text
    assert (await send("POST", f"{V1}/agents/bot/execute", {"input": "hi"})).status_code == 422
    assert (await send("POST", f"{V1}/agents/ghost/execute", EXECUTE)).status_code == 404

    # requests and dead letters
    assert (await send("POST", f"{V1}/requests/r1/cancel")).status_code == 202
    entry_id = await dead_letter(leaky.transport)
    other_id = await dead_letter(leaky.transport)
    assert (await send("GET", f"{V1}/dead-letters")).status_code == 200
    assert (await send("POST", f"{V1}/dead-letters/{entry_id}/requeue")).status_code == 200
    assert (await send("DELETE", f"{V1}/dead-letters/{other_id}")).status_code == 204
    assert (await send("DELETE", f"{V1}/dead-letters/{other_id}")).status_code == 404
    assert (await send("GET", f"{V1}/dead-letters?limit=0")).status_code == 422

    # routing
    assert (await send("GET", f"{V1}/routing/rules")).status_code == 200
    rules = {"rules": [{"name": "r", "source": "discord", "agent_id": "bot"}]}
    assert (await send("PUT", f"{V1}/routing/rules", rules)).status_code == 200
    assert (await send("PUT", f"{V1}/routing/rules", {"rules": [{"name": "r"}]})).status_code == 422
    assert (await send("POST", f"{V1}/routing/explain", EVENT)).status_code == 200
    assert (await send("POST", f"{V1}/routing/explain", {"source": "discord"})).status_code == 422

    # LLM: listing, refresh, then a rotation to another secret and refresh again
    deployments = await send("GET", f"{V1}/llm/deployments")
    assert deployments.status_code == 200
    assert {d["litellm_params"]["api_key"] for d in deployments.json()} == {"secret:mock:api_key"}
    assert (await send("POST", f"{V1}/llm/refresh")).json() == {"rotated": 0}
    leaky.source.set(SecretKey("mock"), {"api_key": leaky.rotated})
    assert (await send("POST", f"{V1}/llm/refresh")).json() == {"rotated": 3}
    assert (await send("GET", f"{V1}/llm/deployments")).status_code == 200
    assert (
        await send("POST", f"{V1}/agents/bot/execute", {**EXECUTE, "session_id": "s2"})
    ).status_code == 200

    # health: the failing check's exception text names the canary
    health = await send("GET", f"{V1}/health")
    assert (health.status_code, health.json()["checks"]["vault"]) == (503, False)

    # authentication failures
    for headers in ({"Authorization": ""}, {"Authorization": f"Bearer {leaky.canary}"}):
        assert (await send("GET", f"{V1}/llm/deployments", headers=headers)).status_code == 401

    # every declared route was called, and every kind of answer came back
    templates = sorted(leaky.app.openapi()["paths"], key=lambda template: template.count("{"))
    called = {route_of(templates, r.request.method, r.request.url.path) for r in leaky.responses}
    declared = {f"{method.upper()} {t}" for t, ops in leaky.app.openapi()["paths"].items() for method in ops}
    assert called == declared
    assert {r.status_code for r in leaky.responses} == {200, 201, 202, 204, 401, 404, 409, 422, 503}

    for response in leaky.responses:
        request = f"{response.request.method} {response.request.url}"
        for secret in (leaky.canary, leaky.rotated):
            assert secret not in response.text, request
            assert secret.encode() not in response.content, request
            for name, value in response.headers.items():
                assert secret not in name, request
                assert secret not in value, request


def route_of(templates: list[str], method: str, path: str) -> str:
    """The route a request reached: the first template it fits, fixed paths before templated ones."""
    for template in templates:
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return f"{method} {template}"
    raise AssertionError(f"no route for {method} {path}")


async def listed_deployments(config: RouterConfig, secrets: SecretsManager) -> httpx.Response:
    """``GET /llm/deployments`` of an API serving a router built from ``config``."""
    router = await build_router(config, secrets)
    try:
        app = make_app(
            AgentRuntime(InMemorySpecStore(), ToolRegistry(), RouterModels(router)), llm_router=router
        )
        async with client_for(app, AUTH) as client:
            return await client.get(f"{V1}/llm/deployments")
    finally:
        await router.aclose()


async def test_a_key_written_into_the_config_is_not_listed() -> None:
    canary = f"canary-literal-{uuid.uuid4().hex}"
    SecretValue(canary)
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "gpt",
                    "litellm_params": {"model": "openai/mock", "api_key": canary, "mock_response": "hi"},
                }
            ]
        }
    )
    secrets = SecretsManager(StaticSource({}))
    response = await listed_deployments(config, secrets)
    assert response.status_code == 200
    assert canary not in response.text


async def test_credentials_in_a_url_or_a_header_of_the_config_are_not_listed() -> None:
    """Credentials written into ``litellm_params`` other than as ``api_key``: a proxy's password in
    ``api_base``, an ``Authorization`` header in ``extra_headers``. Nothing registered them."""
    password = f"canary-url-{uuid.uuid4().hex}"
    header = f"canary-header-{uuid.uuid4().hex}"
    params = {
        "model": "openai/mock",
        "api_key": "secret:mock:api_key",
        "mock_response": "hi",
        "api_base": f"https://proxy-user:{password}@llm-proxy.test/v1",
        "extra_headers": {"Authorization": f"Bearer {header}", "X-Team": "secret:mock:team"},
    }
    config = RouterConfig.from_dict({"model_list": [{"model_name": "gpt", "litellm_params": params}]})
    secrets = SecretsManager(StaticSource({"mock": {"api_key": "mock-key-value", "team": "t1"}}))
    response = await listed_deployments(config, secrets)
    assert response.status_code == 200
    assert password not in response.text
    assert header not in response.text
    (listed,) = response.json()
    assert listed["litellm_params"]["api_base"] == "https://proxy-user:**********@llm-proxy.test/v1"
    assert listed["litellm_params"]["extra_headers"] == {
        "Authorization": "**********",
        "X-Team": "secret:mock:team",  # a reference: listed as it is
    }


async def test_credentials_in_an_api_base_query_string_are_not_listed() -> None:
    """A key in ``api_base``'s query string (Google's ``?key=``, an Azure SAS ``sig``): masked in the
    listing; ordinary parameters stay readable."""
    key, sig = f"canary-query-key-{uuid.uuid4().hex}", f"canary-query-sig-{uuid.uuid4().hex}"
    params = {
        "model": "openai/mock",
        "api_key": "secret:mock:api_key",
        "mock_response": "hi",
        "api_base": f"https://llm-proxy.test/v1?key={key}&api-version=2024-06-01&sig={sig}",
    }
    config = RouterConfig.from_dict({"model_list": [{"model_name": "gpt", "litellm_params": params}]})
    secrets = SecretsManager(StaticSource({"mock": {"api_key": "mock-key-value"}}))
    response = await listed_deployments(config, secrets)
    assert response.status_code == 200
    assert key not in response.text
    assert sig not in response.text
    (listed,) = response.json()
    assert listed["litellm_params"]["api_base"] == (
        "https://llm-proxy.test/v1?key=**********&api-version=2024-06-01&sig=**********"
    )
