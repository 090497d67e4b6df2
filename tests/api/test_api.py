"""The REST API through httpx's ASGI transport: every route, every status it answers, and the end
to end path REST execute -> agent (scripted model) -> JSON result / server-sent events."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from dynamic_agents.agents import (
    AgentRuntime,
    AgentSpec,
    InMemorySpecStore,
    RouterModels,
    SpecBase,
    SpecKind,
    SqlSpecStore,
    ToolRegistry,
    YamlDirectorySpecStore,
)
from dynamic_agents.api import NO_AUTH, AgentsHTTPClient, create_api_router
from dynamic_agents.api import _operation_routes as operation_routes
from dynamic_agents.api import client as client_module
from dynamic_agents.api._route import MAX_SHOWN_ERRORS
from dynamic_agents.events import AgentRequestEvent
from dynamic_agents.exceptions import (
    ApiError,
    ConfigurationError,
    DynamicAgentsError,
    SecretsUnavailableError,
)
from dynamic_agents.llm import RouterConfig, build_router
from dynamic_agents.operations import DeadLetters
from dynamic_agents.secrets import MASK, SecretKey, SecretsManager, SecretValue, StaticSource
from dynamic_agents.testing import InMemoryServer, InMemoryTransport, ScriptedModels, mock_llm_router
from dynamic_agents.transports import Subscription
from tests.api.support import (
    AUTH,
    BASE,
    TOKEN,
    Stack,
    StackFactory,
    client_for,
    dead_letter,
    event_router,
    make_app,
    make_runtime,
    request_event,
)

V1 = "/api/v1"
AGENT = {"id": "bot", "model": "gpt", "tags": ["support"]}
CANARY = "sk-CANARY123456789abcdef"
CANARY_LIST = [CANARY]
EXECUTE = {"input": "hi", "session_id": "s1"}
EVENT = {"source": "discord", "source_id": "c1", "user_id": "u1", "content": "hello"}

# One request per route the router declares (method, path, JSON body); a test checks the list is complete.
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", f"{V1}/agents", None),
    ("POST", f"{V1}/agents", AGENT),
    ("GET", f"{V1}/agents/bot", None),
    ("PUT", f"{V1}/agents/bot?expected_version=1", AGENT),
    ("DELETE", f"{V1}/agents/bot", None),
    ("POST", f"{V1}/agents/bot/execute", EXECUTE),
    ("POST", f"{V1}/requests/r1/cancel", None),
    ("GET", f"{V1}/dead-letters", None),
    ("POST", f"{V1}/dead-letters/1-0/requeue", None),
    ("DELETE", f"{V1}/dead-letters/1-0", None),
    ("GET", f"{V1}/routing/rules", None),
    ("PUT", f"{V1}/routing/rules", {"rules": []}),
    ("POST", f"{V1}/routing/explain", EVENT),
    ("GET", f"{V1}/llm/deployments", None),
    ("POST", f"{V1}/llm/refresh", None),
    ("GET", f"{V1}/health", None),
]
ROUTE_IDS = [f"{method} {path.removeprefix(V1)}" for method, path, _ in ROUTES]


async def call(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> httpx.Response:
    return await client.request(method, path, json=body)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_the_route_list_covers_every_declared_route() -> None:
    app = make_app(make_runtime(), auth=NO_AUTH)
    declared = {
        (method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations
    }
    listed = set()
    for method, path, _ in ROUTES:
        templated = (
            path.split("?")[0]
            .replace("/agents/bot", "/{kind_name}/{spec_id}")
            .replace("/agents", "/{kind_name}")
            .replace("/requests/r1", "/requests/{request_id}")
            .replace("/dead-letters/1-0", "/dead-letters/{entry_id}")
        )
        listed.add((method, templated))
    assert listed == declared


# -- configuration and authentication ---------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "a-token-not-a-verifier", 42])
def test_auth_must_be_a_verifier_or_no_auth(auth: Any) -> None:
    with pytest.raises(ConfigurationError, match="NO_AUTH"):
        create_api_router(runtime=make_runtime(), auth=auth)


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
def test_the_idempotency_ttl_must_be_positive(ttl: float) -> None:
    refused = r"idempotency_ttl must be a number of seconds \(math.inf: no limit\) > 0, got"
    with pytest.raises(ConfigurationError, match=refused) as caught:
        create_api_router(runtime=make_runtime(), auth=NO_AUTH, idempotency_ttl=ttl)
    assert repr(ttl) in str(caught.value)


@pytest.mark.parametrize("keys", [0, -1, 2.5, True, "10", None])
def test_the_idempotency_key_count_must_be_a_positive_whole_number(keys: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r"idempotency_max_keys must be a whole number > 0, got"
    ) as caught:
        create_api_router(runtime=make_runtime(), auth=NO_AUTH, idempotency_max_keys=keys)
    assert repr(keys) in str(caught.value)


async def _ping() -> bool:
    return True


@pytest.mark.parametrize(
    ("checks", "refused"),
    [
        ([_ping], r"^health_checks must be a mapping of names to async checks, got a list$"),
        ({1: _ping}, r"^health_checks must be a mapping of names to async checks, got a name 1$"),
        ({"db": True}, r"^health_checks\['db'\] must be an async callable returning a bool, got True$"),
    ],
)
def test_health_checks_that_are_no_named_checks_are_a_configuration_error(checks: Any, refused: str) -> None:
    """They were taken, and every ``/health`` answered 503 (a check not callable counted as failing,
    without a word) or 500 (a list of checks)."""
    with pytest.raises(ConfigurationError, match=refused):
        create_api_router(runtime=make_runtime(), auth=NO_AUTH, health_checks=checks)


def test_a_health_check_given_as_its_coroutine_is_a_configuration_error() -> None:
    """``{"db": ping()}`` for ``{"db": ping}``: the check failed at every request, never awaited."""
    called = _ping()
    try:
        with pytest.raises(ConfigurationError, match=r"^health_checks\['db'\] must be an async callable"):
            create_api_router(runtime=make_runtime(), auth=NO_AUTH, health_checks={"db": called})
    finally:
        called.close()


@pytest.mark.parametrize(
    "transport", ["redis://:a-password-0123@127.0.0.1:6379/0", InMemoryTransport().coordinator(), 42]
)
def test_a_transport_that_is_no_transport_is_a_configuration_error(transport: Any) -> None:
    # it was taken, and the first cancel or dead-letter route failed with a bare AttributeError (500)
    with pytest.raises(ConfigurationError, match=r"^transport must be a Transport .*, got ") as caught:
        create_api_router(runtime=make_runtime(), auth=NO_AUTH, transport=transport)
    assert "a-password-0123" not in str(caught.value)


@pytest.mark.parametrize("routing", ["routing.yaml", [{"name": "r", "source": "discord", "agent_id": "a"}]])
def test_an_event_router_that_is_no_event_router_is_a_configuration_error(routing: Any) -> None:
    # it was taken, and every routing route failed with a bare AttributeError (500)
    with pytest.raises(ConfigurationError, match=r"^event_router must be an EventRouter .*, got "):
        create_api_router(runtime=make_runtime(), auth=NO_AUTH, event_router=routing)


def test_a_runtime_that_is_no_runtime_is_a_configuration_error() -> None:
    # it was taken, and every route failed with a bare AttributeError (500; /health: degraded)
    with pytest.raises(
        ConfigurationError, match=r"^runtime must be an AgentRuntime .*, got an InMemorySpecStore"
    ):
        create_api_router(runtime=InMemorySpecStore(), auth=NO_AUTH)  # type: ignore[arg-type]


def test_an_llm_router_that_is_no_llm_router_is_a_configuration_error() -> None:
    """``llm_router=build_router(...)`` without its ``await``, or the router's config: both LLM
    routes failed with a bare AttributeError (500), the coroutine never awaited."""
    building = mock_llm_router({"gpt": "hello"})
    config = RouterConfig.from_dict(
        {"model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/m"}}]}
    )
    try:
        for wrong, got in [(building, "a coroutine"), (config, "a RouterConfig")]:
            with pytest.raises(ConfigurationError, match=rf"^llm_router must be an LLMRouter .*, got {got}$"):
                create_api_router(runtime=make_runtime(), auth=NO_AUTH, llm_router=wrong)
    finally:
        building.close()


def test_auth_cannot_be_left_out() -> None:
    with pytest.raises(TypeError, match="auth"):
        create_api_router(runtime=make_runtime())  # type: ignore[call-arg]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no header"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="wrong scheme"),
        pytest.param({"Authorization": "Bearer"}, id="no token"),
        pytest.param({"Authorization": "Bearer "}, id="empty token"),
        pytest.param({"Authorization": TOKEN}, id="bare token"),
    ],
)
async def test_every_route_needs_a_bearer_token(
    make_stack: StackFactory, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    stack = await make_stack(headers=headers)
    response = await call(stack.client, method, path, body)
    assert response.status_code == 401
    assert response.json() == {"detail": "a bearer token is required"}
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await stack.runtime.agents.list() == []  # nothing ran behind the refusal


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_refuses_a_wrong_token(
    make_stack: StackFactory, method: str, path: str, body: Any
) -> None:
    stack = await make_stack(headers={"Authorization": "Bearer not-the-token"})
    response = await call(stack.client, method, path, body)
    assert response.status_code == 401
    assert response.json() == {"detail": "the token was refused"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, body in ROUTES if body is not None])
@pytest.mark.parametrize("token", [None, "not-the-token"])
async def test_the_token_is_checked_before_the_body_is_read(
    make_stack: StackFactory, method: str, path: str, token: str | None
) -> None:
    """An unauthenticated caller learns nothing from the body it sent (no 422 about it), and the
    server parses no body for it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stack = await make_stack(headers=headers)
    response = await stack.client.request(
        method, path, content=b'{"not": json', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_the_scheme_is_case_insensitive(make_stack: StackFactory) -> None:
    stack = await make_stack(headers={"Authorization": f"bEaReR {TOKEN}"})
    assert (await stack.client.get(f"{V1}/agents")).status_code == 200


async def test_the_token_may_follow_more_than_one_space() -> None:
    """``Bearer  <token>``: RFC 7235 puts one or more spaces after the scheme; the verifier was
    given the token with the others in front, refused it, and the caller was told its token was."""
    seen: list[str] = []

    def verifier(token: str) -> bool:
        seen.append(token)
        return token == TOKEN

    app = make_app(make_runtime(), auth=verifier)
    async with client_for(app, {"Authorization": f"Bearer   {TOKEN}"}) as client:
        assert (await client.get(f"{V1}/agents")).status_code == 200
    assert seen == [TOKEN]


async def test_an_async_verifier_is_awaited() -> None:
    seen: list[str] = []

    async def verifier(token: str) -> bool:
        seen.append(token)
        return token == "async-token"

    app = make_app(make_runtime(), auth=verifier)
    async with client_for(app) as client:
        allowed = await client.get(f"{V1}/agents", headers={"Authorization": "Bearer async-token"})
        refused = await client.get(f"{V1}/agents", headers={"Authorization": "Bearer other"})
        missing = await client.get(f"{V1}/agents")
    assert allowed.status_code == 200
    assert (refused.status_code, refused.json()) == (401, {"detail": "the token was refused"})
    assert missing.status_code == 401
    assert seen == ["async-token", "other"]  # once per request; not asked without a token


@pytest.mark.parametrize("sync", [True, False])
async def test_a_verifier_that_fails_is_a_503_logged_without_the_token(
    sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """An auth backend that is down (a JWKS endpoint, an introspection call): the verifier's
    exception came out as a 500 and an ERROR traceback, whose text may quote the token it was
    checking; the caller could not tell it from a bug, and a retry is worth it."""
    token = "tok-CANARY-4d2e9a1b7c"

    def failing(given: str) -> bool:
        raise ConnectionError(f"introspection endpoint unreachable while checking {given}")

    async def failing_async(given: str) -> bool:
        return failing(given)

    app = make_app(make_runtime(), auth=failing if sync else failing_async)
    with caplog.at_level(logging.WARNING):
        async with client_for(app, {"Authorization": f"Bearer {token}"}) as client:
            response = await client.get(f"{V1}/agents")
    assert response.status_code == 503
    assert response.json() == {"detail": "the token could not be checked: authentication is unavailable"}
    assert response.headers["retry-after"] == "1"
    (record,) = [r for r in caplog.records if "verifier" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "ConnectionError: introspection endpoint unreachable" in record.getMessage()
    assert token not in caplog.text
    assert token not in response.text


async def test_no_auth_serves_without_a_header() -> None:
    app = make_app(make_runtime(), auth=NO_AUTH)
    async with client_for(app) as client:
        assert (await client.get(f"{V1}/agents")).json() == []
        assert (await client.post(f"{V1}/agents", json=AGENT)).status_code == 201
        assert (await client.get(f"{V1}/health")).status_code == 200
        # a header is ignored, whatever it holds
        assert (await client.get(f"{V1}/agents", headers={"Authorization": "Basic x"})).status_code == 200


# -- request body size ------------------------------------------------------------------------------

# Every route that takes a body, with one (the execute route asked for a stream too).
BODIES = [
    pytest.param("POST", f"{V1}/agents", AGENT, id="create"),
    pytest.param("PUT", f"{V1}/agents/bot?expected_version=1", AGENT, id="update"),
    pytest.param("POST", f"{V1}/agents/bot/execute", EXECUTE, id="execute"),
    pytest.param("POST", f"{V1}/agents/bot/execute", {**EXECUTE, "stream": True}, id="stream"),
    pytest.param("PUT", f"{V1}/routing/rules", {"rules": []}, id="rules"),
    pytest.param("POST", f"{V1}/routing/explain", EVENT, id="explain"),
]
TOO_LARGE = r"the request body .*is larger than the API's limit of {} bytes \(max_body_size\)"


class CountedBody:
    """A request body sent in ``size``-byte chunks (a JSON body, padded with spaces), counting how
    many chunks the server asked for."""

    def __init__(self, body: Any, chunks: int, size: int = 256) -> None:
        self.data = json.dumps(body).encode().ljust(chunks * size)
        self.size, self.pulled = size, 0

    async def __aiter__(self) -> Any:
        for start in range(0, len(self.data), self.size):
            self.pulled += 1
            yield self.data[start : start + self.size]


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "1024"])
def test_max_body_size_must_be_a_positive_whole_number_or_none(limit: Any) -> None:
    refused = r"max_body_size must be a whole number > 0 \(or None\), got"
    with pytest.raises(ConfigurationError, match=refused) as caught:
        create_api_router(runtime=make_runtime(), auth=NO_AUTH, max_body_size=limit)
    assert repr(limit) in str(caught.value)


@pytest.mark.parametrize(("method", "path", "body"), BODIES)
async def test_a_body_declared_larger_than_max_body_size_is_413_before_a_byte_is_read(
    make_stack: StackFactory, method: str, path: str, body: Any
) -> None:
    stack = await make_stack(max_body_size=1024)
    sent = CountedBody(body, chunks=5)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(sent.data))}
    response = await stack.client.request(method, path, content=sent, headers=headers)
    assert response.status_code == 413
    assert response.json().keys() == {"detail"}
    assert re.fullmatch(TOO_LARGE.format(1024), response.json()["detail"])
    assert "1280 bytes" in response.json()["detail"]  # the size it declared
    assert sent.pulled == 0
    assert await stack.runtime.agents.list() == []


@pytest.mark.parametrize(("method", "path", "body"), BODIES)
async def test_a_chunked_body_growing_past_max_body_size_is_413_without_reading_the_rest(
    make_stack: StackFactory, method: str, path: str, body: Any
) -> None:
    stack = await make_stack(max_body_size=1024)
    sent = CountedBody(body, chunks=1000)
    headers = {"Content-Type": "application/json"}
    response = await stack.client.request(method, path, content=sent, headers=headers)
    assert "content-length" not in response.request.headers  # sent chunked: no size declared
    assert response.status_code == 413
    assert re.fullmatch(TOO_LARGE.format(1024), response.json()["detail"])
    assert sent.pulled == 5  # 1280 bytes: the chunk that went past 1024, and no more
    assert await stack.runtime.agents.list() == []


async def test_a_body_of_exactly_max_body_size_is_served(make_stack: StackFactory) -> None:
    stack = await make_stack(max_body_size=1024)
    sent = CountedBody(AGENT, chunks=4)
    response = await stack.client.post(
        f"{V1}/agents", content=sent, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201


@pytest.mark.parametrize("declared", [True, False])
async def test_the_default_limit_is_one_mebibyte_and_none_lifts_it(
    make_stack: StackFactory, declared: bool
) -> None:
    def request(stack: Stack) -> Any:
        sent = CountedBody(AGENT, chunks=4097)  # 1 MiB and 256 bytes
        headers = {"Content-Type": "application/json"}
        if declared:
            headers["Content-Length"] = str(len(sent.data))
        return stack.client.post(f"{V1}/agents", content=sent, headers=headers)

    refused = await request(await make_stack())
    assert refused.status_code == 413
    assert re.fullmatch(TOO_LARGE.format(1024 * 1024), refused.json()["detail"])
    assert (await request(await make_stack(max_body_size=None))).status_code == 201


# -- specs ------------------------------------------------------------------------------------------


async def test_agent_crud(stack: Stack) -> None:
    client = stack.client
    created = await client.post(f"{V1}/agents", json=AGENT)
    assert created.status_code == 201
    document = created.json()
    assert (document["kind"], document["id"], document["version"], document["model"]["name"]) == (
        "agent",
        "bot",
        1,
        "gpt",
    )
    assert (await client.get(f"{V1}/agents/bot")).json() == document

    disabled = {"id": "quiet", "model": "gpt", "status": "disabled"}
    assert (await client.post(f"{V1}/agents", json=disabled)).status_code == 201
    assert [spec["id"] for spec in (await client.get(f"{V1}/agents")).json()] == ["bot", "quiet"]
    assert [spec["id"] for spec in (await client.get(f"{V1}/agents?tag=support")).json()] == ["bot"]
    assert [spec["id"] for spec in (await client.get(f"{V1}/agents?status=disabled")).json()] == ["quiet"]
    assert (await client.get(f"{V1}/agents?tag=nothing")).json() == []

    updated = await client.put(
        f"{V1}/agents/bot?expected_version=1", json={"model": "gpt", "instructions": "Be brief."}
    )
    assert updated.status_code == 200
    assert (updated.json()["version"], updated.json()["instructions"]) == (2, "Be brief.")
    assert (await client.get(f"{V1}/agents/bot")).json() == updated.json()

    deleted = await client.delete(f"{V1}/agents/bot?expected_version=2")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (await client.get(f"{V1}/agents/bot")).status_code == 404
    assert (await client.delete(f"{V1}/agents/quiet")).status_code == 204
    assert (await client.get(f"{V1}/agents")).json() == []


async def test_the_path_names_the_spec_on_update(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    updated = await stack.client.put(f"{V1}/agents/bot?expected_version=1", json={**AGENT, "id": "other"})
    assert updated.status_code == 200
    assert updated.json()["id"] == "bot"
    assert (await stack.client.get(f"{V1}/agents/other")).status_code == 404


async def test_teams_and_workflows(stack: Stack) -> None:
    client = stack.client
    assert (await client.post(f"{V1}/agents", json=AGENT)).status_code == 201
    team = await client.post(f"{V1}/teams", json={"id": "crew", "members": ["bot"], "model": "gpt"})
    assert (team.status_code, team.json()["kind"]) == (201, "team")
    flow = await client.post(
        f"{V1}/workflows", json={"id": "flow", "steps": [{"type": "agent", "agent": "bot"}]}
    )
    assert (flow.status_code, flow.json()["kind"]) == (201, "workflow")
    assert [spec["id"] for spec in (await client.get(f"{V1}/teams")).json()] == ["crew"]
    assert (await client.get(f"{V1}/workflows/flow")).json() == flow.json()
    # kinds are separate namespaces
    assert (await client.get(f"{V1}/teams/bot")).status_code == 404
    assert (await client.get(f"{V1}/agents/crew")).status_code == 404

    missing_member = await client.post(
        f"{V1}/teams", json={"id": "solo", "members": ["ghost"], "model": "gpt"}
    )
    assert missing_member.status_code == 422
    assert "ghost" in missing_member.json()["detail"]["detail"]


async def test_creating_twice_conflicts(stack: Stack) -> None:
    assert (await stack.client.post(f"{V1}/agents", json=AGENT)).status_code == 201
    again = await stack.client.post(f"{V1}/agents", json={**AGENT, "instructions": "other"})
    assert again.status_code == 409
    assert again.json()["detail"]["current_version"] == 1
    assert "already exists" in again.json()["detail"]["detail"]
    assert (await stack.client.get(f"{V1}/agents/bot")).json()["instructions"] is None


async def test_stale_versions_conflict(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    assert (await stack.client.put(f"{V1}/agents/bot?expected_version=1", json=AGENT)).status_code == 200

    stale = await stack.client.put(f"{V1}/agents/bot?expected_version=1", json={**AGENT, "name": "lost"})
    assert stale.status_code == 409
    assert stale.json()["detail"]["current_version"] == 2
    stale_delete = await stack.client.delete(f"{V1}/agents/bot?expected_version=1")
    assert (stale_delete.status_code, stale_delete.json()["detail"]["current_version"]) == (409, 2)
    assert (await stack.client.get(f"{V1}/agents/bot")).json()["version"] == 2


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"id": "bot"}, "model"),
        ({"id": "bad id!", "model": "gpt"}, "id"),
        ({"id": "bot", "model": "no-such-model"}, "model.name"),
        ({"id": "bot", "model": "gpt", "tools": ["no_such_tool"]}, "tools[0].name"),
        ({"id": "bot", "model": {"name": "gpt", "temperature": 9}}, "model.temperature"),
        ({"id": "bot", "model": "gpt", "surprise": True}, "surprise"),
        ({"kind": "team", "id": "bot", "model": "gpt"}, "kind"),
    ],
)
async def test_invalid_specs_are_422_with_the_path(stack: Stack, body: dict[str, Any], path: str) -> None:
    created = await stack.client.post(f"{V1}/agents", json=body)
    assert created.status_code == 422
    assert created.json()["detail"]["path"] == path
    assert created.json()["detail"]["detail"]

    await stack.client.post(f"{V1}/agents", json=AGENT)
    updated = await stack.client.put(f"{V1}/agents/bot?expected_version=1", json=body)
    if path == "id":  # on update the id comes from the URL
        assert updated.status_code == 200
        return
    assert updated.status_code == 422
    assert updated.json()["detail"]["path"] == path
    assert (await stack.client.get(f"{V1}/agents/bot")).json()["version"] == 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", f"{V1}/agents", ["not", "an", "object"]),
        ("POST", f"{V1}/agents", "text"),
        ("PUT", f"{V1}/agents/bot", AGENT),  # expected_version is required
        ("PUT", f"{V1}/agents/bot?expected_version=0", AGENT),
        ("PUT", f"{V1}/agents/bot?expected_version=one", AGENT),
        ("DELETE", f"{V1}/agents/bot?expected_version=0", None),
        ("GET", f"{V1}/agents?status=sleeping", None),
    ],
)
async def test_malformed_spec_requests_are_422(stack: Stack, method: str, path: str, body: Any) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await call(stack.client, method, path, body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)  # FastAPI's request validation


async def test_an_unknown_spec_or_kind_shaped_like_a_key_is_not_echoed_back(stack: Stack) -> None:
    """A key pasted in place of an id (a path is easy to get wrong) came back whole in the 404."""
    canary = "sk-proj-Zq8fJ3kLmN0pQrStUvWxYz1234567890abcd"
    client = stack.client
    answers = [
        await client.get(f"{V1}/agents/{canary}"),
        await client.put(f"{V1}/agents/{canary}?expected_version=1", json={**AGENT, "id": canary}),
        await client.delete(f"{V1}/agents/{canary}"),
        await client.delete(f"{V1}/agents/{canary}?expected_version=1"),
        await client.post(f"{V1}/agents/{canary}/execute", json=EXECUTE),
        await client.get(f"{V1}/{canary}"),
        await client.get(f"{V1}/{canary}/ghost"),
    ]
    assert [answer.status_code for answer in answers] == [404] * len(answers)
    for answer in answers:
        assert canary not in answer.text
        assert "*****" in answer.text


async def test_unknown_specs_are_404(stack: Stack) -> None:
    client = stack.client
    got = await client.get(f"{V1}/agents/ghost")
    assert (got.status_code, got.json()) == (404, {"detail": "no agent 'ghost'"})
    assert (await client.put(f"{V1}/agents/ghost?expected_version=1", json=AGENT)).status_code == 404
    deleted = await client.delete(f"{V1}/agents/ghost")
    assert (deleted.status_code, deleted.json()) == (404, {"detail": "no agent 'ghost'"})
    assert (await client.delete(f"{V1}/agents/ghost?expected_version=1")).status_code == 404
    assert (await client.post(f"{V1}/agents/ghost/execute", json=EXECUTE)).status_code == 404
    streamed = await client.post(f"{V1}/agents/ghost/execute", json={**EXECUTE, "stream": True})
    assert (streamed.status_code, streamed.headers["content-type"]) == (404, "application/json")


async def test_a_stored_spec_that_no_longer_validates_is_422_naming_it_where_it_is_read(
    tmp_path: Path,
) -> None:
    """A spec file edited by hand, or a row an older version stored under looser rules: reading it
    (the list of its kind, or itself) was a 500 saying nothing, as executing it is not; it is the
    422 execute answers, naming the spec and the field, and it can still be replaced or deleted."""
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "good.yaml").write_text("id: good\nmodel: gpt\n")
    (tmp_path / "agent" / "bad.yaml").write_text("id: bad\nmodel: gpt\nmarkdown: 'yes'\n")
    runtime = AgentRuntime(YamlDirectorySpecStore(tmp_path), ToolRegistry(), ScriptedModels({"gpt": []}))
    async with client_for(make_app(runtime), AUTH) as client:
        for path in ("/agents", "/agents/bad", "/agents?tag=support", "/agents/bad/execute"):
            if path.endswith("/execute"):
                response = await client.post(f"{V1}{path}", json=EXECUTE)
            else:
                response = await client.get(f"{V1}{path}")
            assert response.status_code == 422, path
            detail = response.json()["detail"]
            assert detail["path"] == "markdown"
            assert "agent 'bad' at markdown: Input should be a valid boolean" in detail["detail"]
        assert (await client.get(f"{V1}/agents/good")).status_code == 200
        repaired = await client.put(f"{V1}/agents/bad?expected_version=1", json={"model": "gpt"})
        assert repaired.status_code == 200
        listed = await client.get(f"{V1}/agents")
        assert [spec["id"] for spec in listed.json()] == ["bad", "good"]


@pytest.mark.parametrize("query", ["", "?expected_version=1"])
async def test_deleting_a_stored_spec_whose_version_cannot_be_read_is_422_naming_it(
    tmp_path: Path, query: str
) -> None:
    # the store reads the version a delete checks; one it cannot read was a 500 saying nothing
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "bad.yaml").write_text("id: bad\nmodel: gpt\nversion: x\n")
    runtime = AgentRuntime(YamlDirectorySpecStore(tmp_path), ToolRegistry(), ScriptedModels({"gpt": []}))
    async with client_for(make_app(runtime), AUTH) as client:
        response = await client.delete(f"{V1}/agents/bad{query}")
    assert response.status_code == 422
    assert response.json()["detail"]["path"] == "version"
    assert "bad.yaml: no valid version (got 'x')" in response.json()["detail"]["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"{V1}/gadgets", None),
        ("POST", f"{V1}/gadgets", AGENT),
        ("GET", f"{V1}/gadgets/bot", None),
        ("PUT", f"{V1}/gadgets/bot?expected_version=1", AGENT),
        ("DELETE", f"{V1}/gadgets/bot", None),
        ("POST", f"{V1}/gadgets/bot/execute", EXECUTE),
        ("GET", f"{V1}/agent", None),  # singular
    ],
)
async def test_unknown_kinds_are_404(stack: Stack, method: str, path: str, body: Any) -> None:
    response = await call(stack.client, method, path, body)
    assert response.status_code == 404
    assert "unknown kind" in response.json()["detail"]


# -- execute ----------------------------------------------------------------------------------------


async def test_execute_runs_the_agent_and_returns_the_result(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(
        f"{V1}/agents/bot/execute",
        json={**EXECUTE, "user_id": "u1", "session_state": {"plan": "pro"}, "timeout": 30},
    )
    assert response.status_code == 200
    result = response.json()
    assert (result["status"], result["content"], result["error_message"]) == (
        "completed",
        "first reply",
        None,
    )
    assert result["target_name"] == "bot"
    assert result["tokens"] == {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    assert result["run_id"]
    (sent,) = stack.models.models["gpt"].calls
    assert sent.messages[-1] == {"role": "user", "content": "hi"}


async def test_a_failing_model_is_an_error_result_not_an_http_error(make_stack: StackFactory) -> None:
    stack = await make_stack({"gpt": [RuntimeError("the provider fell over")]})
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE)
    assert response.status_code == 200
    assert response.json()["status"] == "error"
    assert "the provider fell over" in response.json()["error_message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_error_quoting_a_key_is_answered_masked(make_stack: StackFactory, stream: bool) -> None:
    """A provider's refusal may echo the key it was given; the reply a worker sends masks it in
    ``error_message`` (``ExecutionResult.to_response``), the API answered it whole, in the JSON and
    in the stream's ``result`` event."""
    shaped = f"sk-proj-{uuid.uuid4().hex}{uuid.uuid4().hex}"  # a key by its shape alone
    registered = f"canary-{uuid.uuid4().hex}"  # a secret the process holds
    SecretValue(registered)
    refusal = f"Incorrect API key provided: {shaped} (signed in as {registered})"
    stack = await make_stack({"gpt": [RuntimeError(refusal)]})
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "stream": stream})
    result = sse_events(response.text)[-1][1] if stream else response.json()
    assert result["status"] == "error"
    assert result["error_message"] == f"Incorrect API key provided: {MASK} (signed in as {MASK})"
    assert shaped not in response.text
    assert registered not in response.text


async def test_executing_a_disabled_spec_is_422(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json={**AGENT, "status": "disabled"})
    response = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE)
    assert response.status_code == 422
    assert response.json()["detail"]["path"] == "status"
    assert response.json()["detail"]["detail"].count("'bot'") == 1  # the spec named once
    assert stack.models.models["gpt"].calls == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": "hi"},
        {"session_id": "s1"},
        {"input": "hi", "session_id": ""},
        {"input": "hi", "session_id": "s" * 513},
        {"input": 42, "session_id": "s1"},
        {"input": "hi", "session_id": "s1", "timeout": 0},
        {"input": "hi", "session_id": "s1", "timeout": -1},
        {"input": "hi", "session_id": "s1", "timeout": 3601},
        {"input": "hi", "session_id": "s1", "stream": "maybe"},
        {"input": "hi", "session_id": "s1", "session_state": ["not", "a", "mapping"]},
        ["input", "hi"],
    ],
)
async def test_bad_execute_bodies_are_422(stack: Stack, body: Any) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(f"{V1}/agents/bot/execute", json=body)
    assert response.status_code == 422
    assert stack.models.models["gpt"].calls == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
async def test_a_body_with_a_number_json_has_not_is_422_naming_the_field(stack: Stack, number: str) -> None:
    # Python's JSON reader takes NaN: FastAPI's 422 quoted it back and failed to write it (a 500)
    await stack.client.post(f"{V1}/agents", json=AGENT)
    body = f'{{"input": "hi", "session_id": "s1", "timeout": {number}}}'
    response = await stack.client.post(
        f"{V1}/agents/bot/execute", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "timeout"]
    assert stack.models.models["gpt"].calls == []


@pytest.mark.parametrize(
    ("method", "path", "options"),
    [
        ("PUT", "/agents/bot?expected_version=sk-CANARY123456789abcdef", {"json": {"model": "gpt"}}),
        ("POST", "/agents/bot/execute", {"json": {"input": "hi", "session_id": "s1", "timeout": CANARY}}),
        ("POST", "/agents/bot/execute", {"json": {"input": CANARY_LIST, "session_id": "s1"}}),
        ("PUT", "/routing/rules", {"json": {"rules": CANARY}}),
    ],
)
async def test_a_422_does_not_quote_a_key_given_in_the_wrong_place(
    stack: Stack, method: str, path: str, options: dict[str, Any]
) -> None:
    # FastAPI's 422 quotes each bad value back: into logs and proxies, a key pasted there included
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.request(method, f"{V1}{path}", **options)
    assert response.status_code == 422
    assert "CANARY" not in response.text
    (error,) = response.json()["detail"]
    assert error["loc"][0] in {"query", "body"}
    assert error["msg"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"input": "hi", "session_id": "s1", "strem": True}, ["body", "strem"]),
        ({"input": "hi", "session_id": "s1", "timeout": True}, ["body", "timeout"]),
        ({"rules": [], "rule": []}, ["body", "rule"]),
    ],
)
async def test_a_misspelt_key_or_a_boolean_timeout_is_422_not_ignored(
    stack: Stack, body: dict[str, Any], location: list[str]
) -> None:
    # "strem": the reply came back whole, not streamed, without a word; "timeout": true ran with
    # a one-second timeout
    await stack.client.post(f"{V1}/agents", json=AGENT)
    path = "/routing/rules" if "rules" in body else "/agents/bot/execute"
    response = await stack.client.request("PUT" if "rules" in body else "POST", f"{V1}{path}", json=body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == location
    assert stack.models.models["gpt"].calls == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_id", "   "),
        ("session_id", "\t"),
        ("session_id", "s1\n"),
        ("session_id", "s\x001"),
        ("session_id", "s\x7f"),
        ("session_id", "s\x85"),
        ("stream", "yes"),
        ("stream", "true"),
        ("stream", 1),
        ("stream", 0),
        ("stream", "false"),
    ],
)
async def test_a_blank_session_id_or_a_stream_that_is_no_boolean_is_422_naming_the_field(
    stack: Stack, field: str, value: object
) -> None:
    # "   " (or one with a newline) was a session of its own; "stream": "yes" streamed, "false"
    # answered whole: lax pydantic reads such text, and 1 or 0, as a boolean
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, field: value})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert stack.models.models["gpt"].calls == []


@pytest.mark.parametrize(
    "session_id", [" support desk 1 ", "desk\u00a01", "\U0001f468\u200d\U0001f4bb", "\u3000a"]
)
async def test_a_session_id_with_spaces_inside_or_around_it_is_kept(stack: Stack, session_id: str) -> None:
    # a no-break space, an emoji's zero-width joiner: no control characters, taken as the events
    # take them over the streams (str.isprintable() refused them)
    await stack.client.post(f"{V1}/agents", json=AGENT)
    body = {**EXECUTE, "session_id": session_id, "stream": False}
    response = await stack.client.post(f"{V1}/agents/bot/execute", json=body)
    assert response.status_code == 200, response.text


async def test_a_422_shows_its_first_errors_and_counts_the_others(stack: Stack) -> None:
    # A body of a megabyte with 90,000 unknown keys was answered with every error, each shown as
    # errors show values: 9 MB, and the event loop held for seconds (every request waiting on it)
    await stack.client.post(f"{V1}/agents", json=AGENT)
    body = {**EXECUTE, **{f"k{index}": index for index in range(1000)}}
    response = await stack.client.post(f"{V1}/agents/bot/execute", json=body)
    assert response.status_code == 422
    *shown, rest = response.json()["detail"]
    assert len(shown) == MAX_SHOWN_ERRORS
    assert [error["loc"] for error in shown] == [["body", f"k{index}"] for index in range(MAX_SHOWN_ERRORS)]
    assert rest == {
        "type": "too_many_errors",
        "loc": [],
        "msg": f"{1000 - MAX_SHOWN_ERRORS} more errors not shown (the first {MAX_SHOWN_ERRORS} are)",
    }
    assert stack.models.models["gpt"].calls == []


async def test_a_422_with_as_many_errors_as_it_shows_shows_them_all(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    body = {**EXECUTE, **{f"k{index}": index for index in range(MAX_SHOWN_ERRORS)}}
    response = await stack.client.post(f"{V1}/agents/bot/execute", json=body)
    assert [error["type"] for error in response.json()["detail"]] == ["extra_forbidden"] * MAX_SHOWN_ERRORS


@pytest.mark.parametrize("path", ["/agents/bot/execute", "/routing/rules"])
async def test_a_422_masks_a_key_given_as_a_field_name(stack: Stack, path: str) -> None:
    # a key pasted where a field's name goes (extra="forbid"): the 422's loc echoed it as it was
    await stack.client.post(f"{V1}/agents", json=AGENT)
    key = f"sk-proj-{uuid.uuid4().hex}"
    body = {**({"rules": []} if path == "/routing/rules" else EXECUTE), key: "gpt"}
    method = "PUT" if path == "/routing/rules" else "POST"
    response = await stack.client.request(method, f"{V1}{path}", json=body)
    assert response.status_code == 422
    assert key not in response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", MASK]
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize("user_id", ["", "   ", "\t", "u1\n", "u\x001", "u\x7f", "u\x85", 5, "u" * 513])
async def test_a_blank_user_id_or_one_with_control_characters_is_422_naming_it(
    stack: Stack, user_id: object
) -> None:
    # as session_id: "   " was a user of its own (agno keys a user's memories by it), and a control
    # character went into the logs
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "user_id": user_id})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "user_id"]
    assert stack.models.models["gpt"].calls == []


@pytest.mark.parametrize("user_id", [None, " user 7 ", "user\u00a07", "\U0001f468\u200d\U0001f4bb"])
async def test_no_user_id_or_one_with_spaces_inside_or_around_it_is_taken(
    stack: Stack, user_id: str | None
) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "user_id": user_id})
    assert response.status_code == 200, response.text


LONE = "\\ud800"  # as JSON escapes it: a lone surrogate, half of a pair, no character


@pytest.mark.parametrize(
    ("method", "path", "body", "location"),
    [
        (
            "POST",
            "/agents",
            f'{{"id": "x", "model": "gpt", "instructions": "hi {LONE}"}}',
            ["body", "instructions"],
        ),
        (
            "PUT",
            "/agents/bot?expected_version=1",
            '{"model": "gpt", "tags": ["a", "\\udc00"]}',
            ["body", "tags", 1],
        ),
        ("POST", "/agents/bot/execute", f'{{"input": "hi", "session_id": "{LONE}"}}', ["body", "session_id"]),
        (
            "POST",
            "/agents/bot/execute",
            f'{{"input": "hi", "session_id": "s1", "session_state": {{"k{LONE}": [1, "x"]}}}}',
            ["body", "session_state", "k\\ud800"],
        ),
        ("POST", "/agents/bot/execute", b'{"input": "\xed\xa0\x80", "session_id": "s1"}', ["body", "input"]),
        (
            "PUT",
            "/routing/rules",
            f'{{"rules": [{{"name": "{LONE}", "source": "discord", "agent_id": "bot"}}]}}',
            ["body", "rules", 0, "name"],
        ),
        (
            "POST",
            "/routing/explain",
            json.dumps({**EVENT, "content": "?"}).replace('"?"', f'"{LONE}"'),
            ["body", "content"],
        ),
    ],
)
async def test_a_lone_surrogate_in_a_body_is_422_naming_where_and_changes_nothing(
    stack: Stack, method: str, path: str, body: str | bytes, location: list[object]
) -> None:
    # JSON may escape half of a surrogate pair alone ("\ud800", or send its bytes as CESU-8), and
    # Python's reader takes it; no UTF-8 text holds it: a spec holding one was stored, then its
    # 201 and every list of its kind after it failed to be written (500s); a 422 quoting it, too
    await stack.client.post(f"{V1}/agents", json=AGENT)
    rules = (await stack.client.get(f"{V1}/routing/rules")).json()
    response = await stack.client.request(
        method, f"{V1}{path}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert (error["type"], error["loc"]) == ("string_unicode", location)
    assert "surrogate" in error["msg"]
    assert "input" not in error
    assert (await stack.client.get(f"{V1}/agents/x")).status_code == 404
    listed = await stack.client.get(f"{V1}/agents")
    assert [agent["version"] for agent in listed.json()] == [1]
    assert (await stack.client.get(f"{V1}/routing/rules")).json() == rules
    assert stack.models.models["gpt"].calls == []


@pytest.mark.parametrize(
    ("method", "path", "body", "location", "number"),
    [
        (
            "POST",
            "/agents",
            '{"id": "x", "model": "gpt", "metadata": {"ratio": NaN}}',
            ["body", "metadata", "ratio"],
            "NaN",
        ),
        (
            "PUT",
            "/agents/bot?expected_version=1",
            '{"model": "gpt", "metadata": {"limits": [1, -Infinity]}}',
            ["body", "metadata", "limits", 1],
            "-Infinity",
        ),
        (
            "POST",
            "/agents/bot/execute",
            '{"input": "hi", "session_id": "s1", "session_state": {"budget": 1e400}}',
            ["body", "session_state", "budget"],
            "Infinity",
        ),
        (  # a long mantissa and a short exponent: 1e349
            "POST",
            "/agents/bot/execute",
            '{"input": "hi", "session_id": "s1", "session_state": {"budget": 1' + "0" * 250 + "e99}}",
            ["body", "session_state", "budget"],
            "Infinity",
        ),
        (
            "POST",
            "/routing/explain",
            json.dumps({**EVENT, "metadata": {"score": "?"}}).replace('"?"', "Infinity"),
            ["body", "metadata", "score"],
            "Infinity",
        ),
    ],
)
async def test_a_number_json_has_not_in_a_body_is_422_naming_where_and_changes_nothing(
    stack: Stack, method: str, path: str, body: str, location: list[object], number: str
) -> None:
    """``NaN`` and ``Infinity`` are no JSON (a number too large for a float, ``1e400``, reads as
    one), but Python's reader takes them: a spec's metadata holding one was stored, and answered
    with ``null`` in its place; a session state's went to the run."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.request(
        method, f"{V1}{path}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert (error["type"], error["loc"]) == ("finite_number", location)
    assert error["msg"] == f"Input should be a finite number: {number} is no JSON number"
    assert (await stack.client.get(f"{V1}/agents/x")).status_code == 404
    assert [agent["version"] for agent in (await stack.client.get(f"{V1}/agents")).json()] == [1]
    assert stack.models.models["gpt"].calls == []


async def test_nan_and_infinity_as_text_are_taken(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    body = {"input": "NaN, Infinity and 1e400", "session_id": "s1", "session_state": {"NaN": 1e300}}
    assert (await stack.client.post(f"{V1}/agents/bot/execute", json=body)).status_code == 200


async def test_a_character_escaped_as_its_surrogate_pair_is_taken(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    body = '{"input": "\\ud83d\\ude00", "session_id": "\\ud83d\\udcbb \\\\ud800"}'
    response = await stack.client.post(
        f"{V1}/agents/bot/execute", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    (call,) = stack.models.models["gpt"].calls
    assert call.messages[-1]["content"] == "\U0001f600"


async def test_an_overlong_idempotency_key_is_422(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(
        f"{V1}/agents/bot/execute", json=EXECUTE, headers={"Idempotency-Key": "k" * 257}
    )
    assert response.status_code == 422


async def test_streaming_sends_deltas_then_the_result(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    response = await stack.client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    *deltas, (last, result) = events
    assert last == "result"
    assert [name for name, _ in deltas] == ["delta"] * len(deltas)
    assert [data["content"] for _, data in deltas] == ["firs", "t re", "ply"]  # chunk_size=4
    assert (result["status"], result["content"]) == ("completed", "first reply")
    assert stack.models.models["gpt"].remaining == 1


async def test_the_client_streams_and_executes(stack: Stack) -> None:
    transport = httpx.ASGITransport(app=stack.app)
    async with AgentsHTTPClient(BASE, token=TOKEN, transport=transport) as api:
        created = await api.create("agents", AGENT)
        assert await api.get("agents", "bot") == created
        events = [event async for event in api.stream("agents", "bot", "hi", session_id="s1")]
        assert events[-1][0] == "result"
        assert "".join(data["content"] for name, data in events if name == "delta") == "first reply"
        result = await api.execute("agents", "bot", "again", session_id="s1")
        assert result["content"] == "second reply"
        with pytest.raises(ApiError) as missing:
            await api.execute("agents", "ghost", "hi", session_id="s1")
        assert (missing.value.status, missing.value.detail) == (404, "no agent 'ghost'")
        assert isinstance(missing.value, client_module.ApiError)  # the old import path still works
        assert isinstance(missing.value, DynamicAgentsError)
        assert str(missing.value) == "the agents API answered 404: no agent 'ghost'"
        with pytest.raises(ApiError) as conflict:
            await api.create("agents", AGENT)
        assert conflict.value.status == 409
        await api.cancel("r1")
    async with AgentsHTTPClient(BASE, token="wrong", transport=transport) as api:
        with pytest.raises(ApiError) as refused:
            await api.get("agents", "bot")
        assert refused.value.status == 401


@pytest.mark.parametrize("request_id", ["r?1", "r#1", "team/r1", "50%off", "r%3F1", "r+1", ".", ".."])
async def test_the_client_cancels_exactly_the_request_it_names(stack: Stack, request_id: str) -> None:
    """Request ids are any printable ASCII: ``?``, ``#``, ``/`` and ``%`` must reach the API as
    part of the id, not end the path (which would cancel ``r``, or no request at all)."""
    async with AgentsHTTPClient(BASE, token=TOKEN, transport=httpx.ASGITransport(app=stack.app)) as api:
        await api.cancel(request_id)
    candidates = [request_id, "r", "team", "50", "r%3F1", "r?1", "cancel"]
    flagged = await stack.transport.coordinator().cancelled(candidates)
    assert flagged == {request_id}


async def test_an_idempotency_key_returns_the_first_result_without_running_again(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    model = stack.models.models["gpt"]
    key = {"Idempotency-Key": "order-42"}
    first = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    again = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()  # the same run_id and duration: the stored result
    assert first.json()["content"] == "first reply"
    assert (len(model.calls), model.remaining) == (1, 1)

    other = await stack.client.post(
        f"{V1}/agents/bot/execute", json=EXECUTE, headers={"Idempotency-Key": "x"}
    )
    assert other.json()["content"] == "second reply"
    assert model.remaining == 0


async def test_an_idempotency_key_covers_a_streamed_run(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    key = {"Idempotency-Key": "stream-1"}
    streamed = await stack.client.post(
        f"{V1}/agents/bot/execute", json={**EXECUTE, "stream": True}, headers=key
    )
    _, result = sse_events(streamed.text)[-1]
    again = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    assert again.json() == result
    assert stack.models.models["gpt"].remaining == 1


async def test_a_streamed_retry_with_the_same_idempotency_key_is_answered_as_a_stream(stack: Stack) -> None:
    """A client that asked for server-sent events and retries with its key gets server-sent events:
    the stored result as the ``result`` event (no deltas: nothing runs), not a JSON body."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    key = {"Idempotency-Key": "stream-2"}
    body = {**EXECUTE, "stream": True}
    first = await stack.client.post(f"{V1}/agents/bot/execute", json=body, headers=key)
    again = await stack.client.post(f"{V1}/agents/bot/execute", json=body, headers=key)
    assert again.status_code == 200
    assert again.headers["content-type"].startswith("text/event-stream")
    assert sse_events(again.text) == [sse_events(first.text)[-1]]
    assert stack.models.models["gpt"].remaining == 1  # ran once


async def test_idempotency_keys_are_per_target(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json=AGENT)
    await stack.client.post(f"{V1}/agents", json={**AGENT, "id": "bot2"})
    key = {"Idempotency-Key": "same"}
    one = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    two = await stack.client.post(f"{V1}/agents/bot2/execute", json=EXECUTE, headers=key)
    assert (one.json()["content"], two.json()["content"]) == ("first reply", "second reply")


async def test_an_idempotency_retry_may_write_its_numbers_another_way(stack: Stack) -> None:
    """``1`` and ``1.0`` are one JSON number: a client that serialises the body again (JavaScript
    writes ``1.0`` as ``1``) is retrying, not sending another request."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    key = {"Idempotency-Key": "numbers"}
    body = {**EXECUTE, "session_state": {"cart": {"items": [2.0, 1.5]}, "step": 1.0}, "timeout": 30.0}
    first = await stack.client.post(f"{V1}/agents/bot/execute", json=body, headers=key)
    retried = {**EXECUTE, "session_state": {"step": 1, "cart": {"items": [2, 1.5]}}, "timeout": 30}
    again = await stack.client.post(f"{V1}/agents/bot/execute", json=retried, headers=key)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    changed = {**EXECUTE, "session_state": {"step": 1, "cart": {"items": [2, 1.25]}}, "timeout": 30}
    assert (await stack.client.post(f"{V1}/agents/bot/execute", json=changed, headers=key)).status_code == 422


async def test_idempotency_keys_are_per_caller(make_stack: StackFactory) -> None:
    """Two callers (two tokens) that happen to pick one key make two requests: neither gets the
    other's result. The token is checked once per request all the same."""
    checked: list[str] = []

    def verify_either(token: str) -> bool:
        checked.append(token)
        return token in {"token-of-a", "token-of-b"}

    stack = await make_stack(
        {"gpt": ["reply for a", "reply for b"]},
        auth=verify_either,
        headers={"Authorization": "Bearer token-of-a"},
    )
    await stack.client.post(f"{V1}/agents", json=AGENT)
    checked.clear()
    key = {"Idempotency-Key": "order-1"}
    b = {**key, "Authorization": "Bearer token-of-b"}
    first_a = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    first_b = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=b)
    again_a = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    assert first_a.status_code == 200, first_a.text
    assert (first_a.json()["content"], first_b.json()["content"]) == ("reply for a", "reply for b")
    assert again_a.json() == first_a.json()  # each caller's retry still gets its own result
    assert checked == ["token-of-a", "token-of-b", "token-of-a"]


async def test_an_idempotency_key_reused_for_another_request_is_422(stack: Stack) -> None:
    """The key names one request: the same key with another input (or session) is a client error,
    not the first request's result passed off as the answer to the second."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    key = {"Idempotency-Key": "order-7"}
    first = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    for other in ({**EXECUTE, "input": "something else"}, {**EXECUTE, "session_id": "s2"}):
        reused = await stack.client.post(f"{V1}/agents/bot/execute", json=other, headers=key)
        assert reused.status_code == 422
        assert reused.json()["detail"] == (
            "Idempotency-Key 'order-7' was used for another request (a different body); "
            "send a new key for a new request"
        )
    assert stack.models.models["gpt"].remaining == 1  # neither ran
    # the same body again, written in another key order and asking for a stream: still the same request
    same = {"session_id": "s1", "stream": True, "input": "hi"}
    again = await stack.client.post(f"{V1}/agents/bot/execute", json=same, headers=key)
    assert sse_events(again.text) == [("result", first.json())]


class HeldRuns:
    """Holds each agent run of ``stack`` at its start until ``gate`` is set; ``entered`` is set
    once one waits there."""

    def __init__(self, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate, self.entered = asyncio.Event(), asyncio.Event()
        execute = stack.runtime.agents.execute

        async def held(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            await self.gate.wait()
            return await execute(*args, **kwargs)

        monkeypatch.setattr(stack.runtime.agents, "execute", held)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_retry_while_the_first_request_runs_is_409_and_runs_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Two requests with one key at once must not both run (a doubled agent run, doubled side
    effects): the second is told the first is still running; once it is done, a retry gets its result."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    held = HeldRuns(stack, monkeypatch)
    key = {"Idempotency-Key": "once"}
    body = {**EXECUTE, "stream": stream}
    first = asyncio.create_task(stack.client.post(f"{V1}/agents/bot/execute", json=body, headers=key))
    await asyncio.wait_for(held.entered.wait(), 5)
    second = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    assert second.status_code == 409
    assert second.json()["detail"] == (
        "a request with Idempotency-Key 'once' is still running; retry when it has finished"
    )
    assert second.headers["Retry-After"] == "1"  # when to ask again
    other = await stack.client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "input": "x"}, headers=key)
    assert other.status_code == 422  # another body with the key: refused whether or not it runs
    held.gate.set()
    answered = await asyncio.wait_for(first, 5)
    result = sse_events(answered.text)[-1][1] if stream else answered.json()
    assert result["content"] == "first reply"
    retried = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    assert retried.json() == result
    assert stack.models.models["gpt"].remaining == 1  # one run in all


async def test_a_failed_request_frees_its_idempotency_key(stack: Stack) -> None:
    """A request refused before it ran (no such agent yet) stores nothing and holds nothing: the
    same key may be sent again and runs."""
    key = {"Idempotency-Key": "later"}
    missing = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    assert missing.status_code == 404
    await stack.client.post(f"{V1}/agents", json=AGENT)
    ran = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    assert (ran.status_code, ran.json()["content"]) == (200, "first reply")


async def test_a_stream_cut_short_frees_its_idempotency_key(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that goes away mid-stream cancels the run: nothing is stored and the key is free
    for the retry, which runs."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    held = HeldRuns(stack, monkeypatch)
    key = {"Idempotency-Key": "cut"}
    body = {**EXECUTE, "stream": True}
    leaving = asyncio.create_task(stack.client.post(f"{V1}/agents/bot/execute", json=body, headers=key))
    await asyncio.wait_for(held.entered.wait(), 5)
    leaving.cancel()  # the client goes away: the app's request is cancelled with it
    with pytest.raises(asyncio.CancelledError):
        await leaving
    held.gate.set()  # runs from here on go through
    ran = await retried_once_free(stack, key)
    assert (ran.status_code, ran.json()["content"]) == (200, "first reply")


async def retried_once_free(stack: Stack, key: dict[str, str]) -> httpx.Response:
    """``EXECUTE`` with ``key``, sent again while it answers 409: a cancelled run lets go of its key
    as it finishes stopping, which only the API's answer shows (so it is asked, within 5 s)."""

    async def retried() -> httpx.Response:
        while (  # noqa: ASYNC110 - no event to wait on: the condition is the API's answer
            response := await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
        ).status_code == 409:
            await asyncio.sleep(0.01)
        return response

    return await asyncio.wait_for(retried(), 5)


async def gone_before_the_first_byte(stack: Stack, key: str, started: asyncio.Event) -> None:
    """A streamed execute whose client goes once ``started`` is set, before it got any byte (the
    response's start never reaches it), as Starlette sees it under uvicorn (ASGI spec 2.3)."""
    body = json.dumps({**EXECUTE, "stream": True}).encode()
    incoming = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    path = f"{V1}/agents/bot/execute"
    headers = [(b"content-type", b"application/json"), (b"idempotency-key", key.encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in AUTH.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("api.test", 80),
    }
    await asyncio.wait_for(stack.app(scope, receive, send), 5)


async def test_a_client_gone_before_the_stream_starts_cancels_the_run(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streamed run starts in the handler now, before the response is sent; a client that goes
    away before the first byte (Starlette then never reads the stream) must still stop the run, as
    it did when the run started with the stream, and free the key."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    entered, stopped = asyncio.Event(), asyncio.Event()
    execute = stack.runtime.agents.execute

    async def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    monkeypatch.setattr(stack.runtime.agents, "execute", held)
    await gone_before_the_first_byte(stack, "gone", entered)
    await asyncio.wait_for(stopped.wait(), 5)
    monkeypatch.setattr(stack.runtime.agents, "execute", execute)
    ran = await retried_once_free(stack, {"Idempotency-Key": "gone"})
    assert (ran.status_code, ran.json()["content"]) == (200, "first reply")


async def test_a_streamed_run_failing_with_no_one_reading_is_logged(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream being read reports its run's failure (the server logs the response's error); one
    whose client has gone must not drop it: releasing the key looks at the run's exception, which
    hushes asyncio's own "never retrieved" report."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    entered = asyncio.Event()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        raise RuntimeError("the session db fell over")

    monkeypatch.setattr(stack.runtime.agents, "execute", broken)
    said = asyncio.Event()  # the run's done-callback logs it, after the response has ended

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.set()

    signal = Said()
    logging.getLogger("dynamic_agents.api").addHandler(signal)
    try:
        await gone_before_the_first_byte(stack, "lost", entered)
        await asyncio.wait_for(said.wait(), 5)
    finally:
        logging.getLogger("dynamic_agents.api").removeHandler(signal)
    (logged,) = [r for r in caplog.records if r.name == "dynamic_agents.api" and r.exc_info]
    assert (logged.levelname, str(logged.exc_info[1])) == ("ERROR", "the session db fell over")
    assert logged.getMessage() == "the streamed run of agents/bot failed after its client had gone"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_run_that_failed_frees_its_idempotency_key(make_stack: StackFactory, stream: bool) -> None:
    """A model error is an ``error`` result, not an exception; it is still a failed run, so it is
    not kept as the key's answer: the retry sent after it (the reason the client has a key) runs."""
    stack = await make_stack({"gpt": [RuntimeError("the provider fell over"), "second reply"]})
    await stack.client.post(f"{V1}/agents", json=AGENT)
    key = {"Idempotency-Key": "flaky"}
    body = {**EXECUTE, "stream": stream}
    failed = await stack.client.post(f"{V1}/agents/bot/execute", json=body, headers=key)
    assert (sse_events(failed.text)[-1][1] if stream else failed.json())["status"] == "error"
    retried = await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)
    assert (retried.json()["status"], retried.json()["content"]) == ("completed", "second reply")


async def test_past_idempotency_max_keys_the_oldest_key_is_forgotten(make_stack: StackFactory) -> None:
    stack = await make_stack({"gpt": ["one", "two", "three", "four"]}, idempotency_max_keys=2)
    await stack.client.post(f"{V1}/agents", json=AGENT)

    async def run(key: str) -> str:
        response = await stack.client.post(
            f"{V1}/agents/bot/execute", json=EXECUTE, headers={"Idempotency-Key": key}
        )
        content: str = response.json()["content"]
        return content

    assert [await run(key) for key in ("a", "b", "c")] == ["one", "two", "three"]
    assert await run("b") == "two"  # kept: one of the two newest
    assert await run("a") == "four"  # forgotten for "c": its retry runs again


async def test_idempotent_results_expire(make_stack: StackFactory) -> None:
    stack = await make_stack({"gpt": ["one", "two"]}, idempotency_ttl=0.001)
    await stack.client.post(f"{V1}/agents", json=AGENT)
    key = {"Idempotency-Key": "k"}
    assert (await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)).json()[
        "content"
    ] == "one"
    await asyncio.sleep(0.01)
    assert (await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)).json()[
        "content"
    ] == "two"


async def test_an_idempotency_ttl_of_math_inf_keeps_results_without_a_limit(make_stack: StackFactory) -> None:
    """docs/api.md: ``math.inf`` is no limit (only the key count bounds what is kept), not refused."""
    stack = await make_stack({"gpt": ["one", "two"]}, idempotency_ttl=math.inf)
    await stack.client.post(f"{V1}/agents", json=AGENT)
    key = {"Idempotency-Key": "k"}
    answers = [
        (await stack.client.post(f"{V1}/agents/bot/execute", json=EXECUTE, headers=key)).json()["content"]
        for _ in range(2)
    ]
    assert answers == ["one", "one"]


async def test_execute_through_the_llm_router() -> None:
    router = await mock_llm_router({"gpt": "routed reply"})
    try:
        runtime = AgentRuntime(InMemorySpecStore(), ToolRegistry(), RouterModels(router))
        app = make_app(runtime, llm_router=router)
        async with client_for(app, AUTH) as client:
            assert (await client.post(f"{V1}/agents", json=AGENT)).status_code == 201
            result = (await client.post(f"{V1}/agents/bot/execute", json=EXECUTE)).json()
            streamed = await client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "stream": True})
    finally:
        await router.aclose()
    assert (result["status"], result["content"]) == ("completed", "routed reply")
    events = sse_events(streamed.text)
    assert events[-1][0] == "result"
    assert events[-1][1]["content"] == "routed reply"
    assert "".join(data["content"] for name, data in events if name == "delta") == "routed reply"


# -- requests and dead letters ----------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["bad%1Fid", "%0A"])
async def test_cancelling_an_impossible_request_id_is_422(stack: Stack, request_id: str) -> None:
    response = await stack.client.post(f"{V1}/requests/{request_id}/cancel")
    assert response.status_code == 422


@pytest.mark.parametrize("request_id", [f"{CANARY}%0A", f"%09{CANARY}"])
async def test_an_impossible_request_id_is_refused_with_it_masked(stack: Stack, request_id: str) -> None:
    # a key pasted by mistake (with a stray newline) was quoted back whole in the 422
    response = await stack.client.post(f"{V1}/requests/{request_id}/cancel")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "CANARY" not in detail
    assert detail.startswith(f"request_id {MASK} cannot be part of a stream name"), detail
    with pytest.raises(ConfigurationError) as refused:
        await stack.transport.coordinator().request_cancel(f"{CANARY}\n")
    assert "CANARY" not in str(refused.value)


@pytest.mark.parametrize("request_id", ["req-1%20", "%20", "r%C3%A9q-1", "e" * 257])
async def test_cancelling_an_id_no_request_can_have_is_422_not_requested(
    stack: Stack, request_id: str
) -> None:
    # an id copied with a trailing space was answered 202 "cancellation requested", and the run
    # it meant went on: no request has such an id
    response = await stack.client.post(f"{V1}/requests/{request_id}/cancel")
    assert response.status_code == 422
    assert "no request's id" in response.json()["detail"]


async def test_cancel_flags_the_request(stack: Stack) -> None:
    response = await stack.client.post(f"{V1}/requests/req-1/cancel")
    assert response.status_code == 202
    assert response.json() == {"request_id": "req-1", "status": "cancellation requested"}
    assert await stack.transport.coordinator().cancelled(["req-1", "req-2"]) == {"req-1"}


async def test_dead_letters_list_requeue_and_purge(stack: Stack) -> None:
    client, transport = stack.client, stack.transport
    assert (await client.get(f"{V1}/dead-letters")).json() == []
    first = await dead_letter(transport, "poison: tool exploded", answered_with="error-reply-1")
    second = await dead_letter(transport, "manual")

    letters = (await client.get(f"{V1}/dead-letters")).json()
    assert [letter["id"] for letter in letters] == [first, second]
    letter = letters[0]
    assert (letter["reason"], letter["kind"], letter["origin_stream"], letter["delivery_count"]) == (
        "poison: tool exploded",
        "poison",
        transport.names.requests,
        1,
    )
    assert letter["request"]["content"] == "cursed"
    assert letter["decode_error"] is None
    assert letter["dead_at"]
    assert [item["response_id"] for item in letters] == ["error-reply-1", None]
    request_id = letter["request"]["id"]
    # the record's request id too: what to look for when the request does not decode here
    assert [item["request_id"] for item in letters] == [request_id, None]
    assert [item["id"] for item in (await client.get(f"{V1}/dead-letters?limit=1")).json()] == [first]
    assert await transport.coordinator().get_record(request_id) is not None

    last = await transport.last_entry_id(transport.names.requests)
    requeued = await client.post(f"{V1}/dead-letters/{first}/requeue")
    assert requeued.status_code == 200
    new_id = requeued.json()["requeued_as"]
    (entry,) = await transport.read_stream(transport.names.requests, AgentRequestEvent, after=last)
    assert (entry.entry_id, entry.event.content) == (new_id, "cursed")
    assert await transport.coordinator().get_record(request_id) is None  # so the requeued one runs

    purged = await client.delete(f"{V1}/dead-letters/{second}")
    assert (purged.status_code, purged.content) == (204, b"")
    assert (await client.get(f"{V1}/dead-letters")).json() == []


async def test_a_dead_letter_that_did_not_decode_shows_a_preview_of_its_fields(stack: Stack) -> None:
    """What an operator needs to see why an entry did not decode: its fields, as text, cut to
    a preview, with anything shaped like a key masked; a letter whose request decoded has none."""
    transport = stack.transport
    stream = transport.names.requests
    await transport.ensure_group(stream, "workers")
    canary = "sk-proj-" + "Q7w" * 12
    registered = SecretValue("registered-secret-" + "z9" * 10)  # a known secret, across the cut
    junk = {
        "__data__": b"not json: " + canary.encode(),
        "blob": b"\xff" + b"word " * 1000,
        "across": b"w " * 495 + registered.reveal().encode(),
        canary: b"a key as a field name",
        "name " * 60: b"a long name",
        **{f"f{n}": b"more" for n in range(60)},
    }
    await transport.publish_fields(stream, junk)
    # and an entry that is JSON, whose invalid field quotes the key
    bad = {"source": "discord", "source_id": "c", "user_id": {"k": canary}, "content": "hi"}
    await transport.publish_fields(stream, {"__data__": json.dumps(bad).encode()})
    deliveries = await transport.read(Subscription(stream, "workers", "w1", AgentRequestEvent, block=0), 2)
    assert all(delivery.settled for delivery in deliveries)  # dead-lettered by the transport as it read them
    await dead_letter(transport)  # one that decoded, for comparison

    response = await stack.client.get(f"{V1}/dead-letters")
    assert "Q7wQ7w" not in response.text
    assert "z9z9" not in response.text
    undecodable, invalid, decoded = response.json()
    assert undecodable["request"] is None
    assert undecodable["decode_error"]
    preview = undecodable["fields"]
    assert preview["__data__"] == f"not json: {MASK}"
    assert preview["blob"] == ("\ufffd" + "word " * 200)[:1000] + "… (5001 bytes)"
    assert preview["across"].startswith("w " * 495 + MASK[:10])
    assert preview[MASK] == "a key as a field name"
    assert preview[("name " * 60)[:100]] == "a long name"
    assert len(preview) == 51
    assert preview["…"] == f"{len(junk) - 50} more fields not shown"
    assert invalid["request"] is None
    assert "user_id" in invalid["decode_error"]
    assert MASK in invalid["decode_error"]
    assert "user_id" in invalid["reason"]
    assert decoded["fields"] is None


@pytest.mark.parametrize(
    "reason",
    [
        f"login refused with {CANARY}",  # no ':': the whole reason is its kind
        f"refused {CANARY}: by the provider",  # the kind is what comes before the ':'
        "registered secret-value-of-the-canary refused",
    ],
)
async def test_a_dead_letters_kind_is_masked_as_its_reason_is(stack: Stack, reason: str) -> None:
    """The kind is the reason, or its start: a key the reason quotes is in it too, and was listed
    unmasked beside the masked reason."""
    SecretValue("secret-value-of-the-canary")  # registered, as every secret value is
    await dead_letter(stack.transport, reason)
    response = await stack.client.get(f"{V1}/dead-letters")
    assert "CANARY" not in response.text
    assert "secret-value-of-the-canary" not in response.text
    (letter,) = response.json()
    assert MASK in letter["reason"]
    assert MASK in letter["kind"]


async def test_a_dead_letters_request_is_listed_with_secret_values_masked(stack: Stack) -> None:
    """A request that carried a secret the process knows (a user's key from Identity, put in its
    session state for a tool) was listed whole, while the same request, had it not decoded, had
    it masked in its ``fields``; requeueing it still sends it whole."""
    secret = f"canary-dead-letter-{uuid.uuid4().hex}"
    SecretValue(secret)  # registered with the process-wide redactor, as every secret value is
    event = request_event(f"my key is {secret}").model_copy(
        update={"session_state": {"github": {"token": secret}}, "metadata": {secret: [secret]}}
    )
    await stack.transport.publish(stack.transport.names.dead_letters, event)
    listed = await stack.client.get(f"{V1}/dead-letters")
    assert secret not in listed.text
    (letter,) = listed.json()
    assert letter["request"]["content"] == f"my key is {MASK}"
    assert letter["request"]["session_state"] == {"github": {"token": MASK}}
    assert letter["request"]["metadata"] == {MASK: [MASK]}
    assert letter["request"]["id"] == str(event.id)  # the rest as it is
    stored = await DeadLetters(stack.transport).get(letter["id"])
    assert stored.request is not None
    assert stored.request.session_state == {"github": {"token": secret}}


@pytest.mark.parametrize("entry_id", ["1-0", "0-0", "nope", "1-2-3", f"{2**64}-0"])
async def test_unknown_dead_letters_are_404(stack: Stack, entry_id: str) -> None:
    await dead_letter(stack.transport)
    requeued = await stack.client.post(f"{V1}/dead-letters/{entry_id}/requeue")
    purged = await stack.client.delete(f"{V1}/dead-letters/{entry_id}")
    assert (requeued.status_code, purged.status_code) == (404, 404)
    assert "no dead letter" in requeued.json()["detail"]
    assert len((await stack.client.get(f"{V1}/dead-letters")).json()) == 1


async def test_requeueing_a_dead_letter_without_an_origin_stream_is_409(stack: Stack) -> None:
    transport = stack.transport
    entry_id = await transport.publish(transport.names.dead_letters, request_event("by hand"))
    requeued = await stack.client.post(f"{V1}/dead-letters/{entry_id}/requeue")
    assert requeued.status_code == 409
    assert requeued.json() == {
        "detail": f"dead letter {entry_id!r} on {transport.names.dead_letters!r} cannot be requeued: it "
        "does not say which stream it came from (no dead_letter.stream field); purge it, or publish "
        "its request yourself"
    }
    assert [letter["id"] for letter in (await stack.client.get(f"{V1}/dead-letters")).json()] == [entry_id]
    assert (await stack.client.delete(f"{V1}/dead-letters/{entry_id}")).status_code == 204


async def test_a_dead_letter_already_purged_is_404(stack: Stack) -> None:
    entry_id = await dead_letter(stack.transport)
    assert (await stack.client.delete(f"{V1}/dead-letters/{entry_id}")).status_code == 204
    assert (await stack.client.delete(f"{V1}/dead-letters/{entry_id}")).status_code == 404
    assert (await stack.client.post(f"{V1}/dead-letters/{entry_id}/requeue")).status_code == 404


async def test_deleting_a_dead_letter_requeued_meanwhile_is_404(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_id = await dead_letter(stack.transport)
    read_entry = stack.transport.read_entry

    async def read_then_requeued_by_another(*args: Any, **kwargs: Any) -> Any:
        entry = await read_entry(*args, **kwargs)
        monkeypatch.undo()  # the other operator's requeue reads it unpatched
        await DeadLetters(stack.transport).requeue(entry_id)  # between the look-up and the delete
        return entry

    monkeypatch.setattr(stack.transport, "read_entry", read_then_requeued_by_another)
    purged = await stack.client.delete(f"{V1}/dead-letters/{entry_id}")
    assert purged.status_code == 404
    assert "requeued or purged meanwhile" in purged.json()["detail"]


async def test_dead_letters_page_on_after_the_last_id(stack: Stack) -> None:
    ids = [await dead_letter(stack.transport, f"poison: {n}") for n in range(5)]
    pages: list[list[str]] = []
    after = "0-0"
    for _ in range(len(ids)):  # bounded: a cursor that is ignored would page forever
        page = (await stack.client.get(f"{V1}/dead-letters", params={"limit": 2, "after": after})).json()
        if not page:
            break
        pages.append([letter["id"] for letter in page])
        after = pages[-1][-1]
    assert pages == [ids[:2], ids[2:4], ids[4:]]


@pytest.mark.parametrize("after", ["nope", "1-2-3", "-1-0"])
async def test_a_bad_dead_letter_cursor_is_422_naming_it(stack: Stack, after: str) -> None:
    response = await stack.client.get(f"{V1}/dead-letters", params={"after": after})
    assert response.status_code == 422
    assert repr(after) in response.json()["detail"]
    assert "1700000000000-0" in response.json()["detail"]


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "many"])
async def test_bad_dead_letter_limits_are_422(stack: Stack, limit: str) -> None:
    assert (await stack.client.get(f"{V1}/dead-letters?limit={limit}")).status_code == 422


# -- routing ----------------------------------------------------------------------------------------


async def test_routing_rules_read_replace_and_explain(stack: Stack) -> None:
    client = stack.client
    (rule,) = (await client.get(f"{V1}/routing/rules")).json()
    assert (rule["name"], rule["source"], rule["target"]) == (
        "support",
        "discord",
        {"type": "agent", "id": "bot"},
    )

    explained = (await client.post(f"{V1}/routing/explain", json=EVENT)).json()
    assert explained["decision"] == {
        "target": {"type": "agent", "id": "bot"},
        "rule": "support",
        "reason": "rule 'support'",
    }
    assert explained["checks"] == [{"rule": "support", "matched": True, "reason": "every condition holds"}]
    assert explained["error"] is None

    rules = [
        {"name": "urgent", "priority": 5, "content_pattern": "urgent", "team_id": "oncall"},
        {"name": "slack", "source": "slack", "agent_id": "slackbot"},
    ]
    replaced = await client.put(f"{V1}/routing/rules", json={"rules": rules})
    assert replaced.status_code == 200
    assert [item["name"] for item in replaced.json()] == ["urgent", "slack"]
    assert [item.name for item in stack.routing.rules] == ["urgent", "slack"]  # the live router changed
    assert (await client.get(f"{V1}/routing/rules")).json() == replaced.json()

    urgent = (await client.post(f"{V1}/routing/explain", json={**EVENT, "content": "urgent!"})).json()
    assert urgent["decision"]["target"] == {"type": "team", "id": "oncall"}
    fallback = (await client.post(f"{V1}/routing/explain", json=EVENT)).json()
    assert fallback["decision"]["target"] == {"type": "agent", "id": "fallback"}
    assert [check["matched"] for check in fallback["checks"]] == [False, False]
    explicit = (await client.post(f"{V1}/routing/explain", json={**EVENT, "workflow_id": "w"})).json()
    assert (explicit["checks"], explicit["decision"]["target"]) == ([], {"type": "workflow", "id": "w"})

    assert (await client.put(f"{V1}/routing/rules", json={"rules": []})).json() == []


@pytest.mark.parametrize(
    "body",
    [
        {"rules": [{"name": "no condition", "agent_id": "a"}]},
        {"rules": [{"name": "", "source": "discord", "agent_id": "a"}]},
        {"rules": [{"name": "no target", "source": "discord"}]},
        {"rules": [{"name": "two targets", "source": "discord", "agent_id": "a", "team_id": "t"}]},
        {"rules": [{"name": "unsafe", "content_pattern": "(a+)+$", "agent_id": "a"}]},
        {"rules": [{"name": "bad regex", "content_pattern": "(", "agent_id": "a"}]},
        {"rules": [{"name": "deep", "content_pattern": "(" * 1000 + "a" + ")" * 1000, "agent_id": "a"}]},
        {
            "rules": [
                {"name": "same", "source": "a", "agent_id": "a"},
                {"name": "same", "source": "b", "agent_id": "b"},
            ]
        },
        {"rules": [{"name": "extra", "source": "a", "agent_id": "a", "colour": "red"}]},
        {"rules": ["not a rule"]},
        {"rules": "none"},
        {},
    ],
)
async def test_bad_routing_rules_are_422_and_change_nothing(stack: Stack, body: Any) -> None:
    before = stack.routing.rules
    response = await stack.client.put(f"{V1}/routing/rules", json=body)
    assert response.status_code == 422
    assert stack.routing.rules == before


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"source": "discord"},
        {**EVENT, "content": 42},
        {**EVENT, "session_id": ""},
        {**EVENT, "attachments": "none"},
        ["not", "an", "event"],
    ],
)
async def test_bad_events_to_explain_are_422(stack: Stack, event: Any) -> None:
    response = await stack.client.post(f"{V1}/routing/explain", json=event)
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("rules", "detail"),
    [
        (
            [{"name": "ok", "source": "a", "agent_id": "a"}, {"name": "typo", "sorce": "b", "agent_id": "b"}],
            "rules[1].sorce: Extra inputs are not permitted (got 'b')",
        ),
        (
            [{"name": "bad", "content_pattern": "(" + CANARY, "agent_id": "a"}],
            "rules[0].content_pattern: pattern **********",
        ),
    ],
)
async def test_a_bad_routing_rule_is_422_naming_its_place_and_masking_its_value(
    stack: Stack, rules: list[dict[str, Any]], detail: str
) -> None:
    # the detail was pydantic's whole dump: "1 validation error for RoutingRule\n…", its
    # input_value quoted unmasked, a link to pydantic's docs, and no rule index
    response = await stack.client.put(f"{V1}/routing/rules", json={"rules": rules})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)
    assert "CANARY" not in response.text
    assert "pydantic" not in response.text


async def test_a_bad_event_to_explain_is_422_naming_each_field_and_masking_its_value(stack: Stack) -> None:
    response = await stack.client.post(f"{V1}/routing/explain", json={**EVENT, "content": [CANARY]})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("invalid AgentRequestEvent: content: Input should be")
    assert "CANARY" not in response.text
    assert "pydantic" not in response.text


# -- LLM router -------------------------------------------------------------------------------------


async def test_llm_deployments_and_refresh() -> None:
    source = StaticSource({"mock": {"api_key": "first-key-value"}})
    router = await mock_llm_router({"gpt": ["a", "b"], "claude": "c"}, secrets=SecretsManager(source))
    try:
        app = make_app(make_runtime(), llm_router=router)
        async with client_for(app, AUTH) as client:
            deployments = (await client.get(f"{V1}/llm/deployments")).json()
            unchanged = await client.post(f"{V1}/llm/refresh")
            source.set(SecretKey("mock"), {"api_key": "rotated-key-value"})
            rotated = await client.post(f"{V1}/llm/refresh")
            listed_after = (await client.get(f"{V1}/llm/deployments")).json()
    finally:
        await router.aclose()
    assert [(d["id"], d["model_name"]) for d in deployments] == [
        ("gpt-0", "gpt"),
        ("gpt-1", "gpt"),
        ("claude-0", "claude"),
    ]
    assert {d["litellm_params"]["api_key"] for d in deployments} == {"secret:mock:api_key"}
    assert (unchanged.status_code, unchanged.json()) == (200, {"rotated": 0})
    assert (rotated.status_code, rotated.json()) == (200, {"rotated": 3})
    assert listed_after == deployments  # still references


async def test_llm_deployments_mask_a_key_pasted_in_place_of_a_references_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key pasted where the reference wants a variable's name resolves (the variable exists),
    and must not be listed: it is a key, whatever it is called."""
    pasted = f"gsk_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    monkeypatch.setenv(pasted, "the-value-it-names")
    config = RouterConfig.from_dict(
        {
            "model_list": [
                {
                    "model_name": "gpt",
                    "litellm_params": {
                        "model": "openai/mock",
                        "api_key": f"os.environ/{pasted}",
                        "organization": "os.environ/OPENAI_ORG_ID_FOR_TEST",
                        "mock_response": "ok",
                    },
                }
            ]
        }
    )
    monkeypatch.setenv("OPENAI_ORG_ID_FOR_TEST", "org-1")
    router = await build_router(config, SecretsManager(StaticSource({})))
    try:
        async with client_for(make_app(make_runtime(), llm_router=router), AUTH) as client:
            response = await client.get(f"{V1}/llm/deployments")
    finally:
        await router.aclose()
    assert pasted not in response.text
    ((params),) = [deployment["litellm_params"] for deployment in response.json()]
    assert params["api_key"] == "os.environ/**********"
    assert params["organization"] == "os.environ/OPENAI_ORG_ID_FOR_TEST"  # a name: shown as written


# -- health -----------------------------------------------------------------------------------------


async def test_health_checks_the_store_and_the_transport(stack: Stack) -> None:
    response = await stack.client.get(f"{V1}/health")
    assert (response.status_code, response.json()) == (
        200,
        {"status": "ok", "checks": {"store": True, "transport": True}},
    )


async def test_health_without_a_transport_checks_the_store() -> None:
    app = make_app(make_runtime())
    async with client_for(app, AUTH) as client:
        response = await client.get(f"{V1}/health")
    assert response.json() == {"status": "ok", "checks": {"store": True}}


async def test_health_is_503_when_a_check_fails(make_stack: StackFactory) -> None:
    async def passing() -> bool:
        return True

    async def failing() -> bool:
        return False

    async def raising() -> bool:
        raise ConnectionError("the database is gone")

    stack = await make_stack(health_checks={"cache": passing, "db": failing, "queue": raising})
    response = await stack.client.get(f"{V1}/health")
    assert response.status_code == 503
    assert response.json() == {
        "status": "degraded",
        "checks": {"store": True, "transport": True, "cache": True, "db": False, "queue": False},
    }
    assert "the database is gone" not in response.text


async def test_a_health_request_cancelled_as_a_check_ends_is_cancelled(make_stack: StackFactory) -> None:
    """The request cancelled (its client gone, the server shutting down) in the step its check
    ends: Python 3.11's ``asyncio.wait_for`` returned the check's result and dropped the
    cancellation, and the request answered as if nothing had happened."""
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> bool:
        started.set()
        await release.wait()
        return True

    stack = await make_stack(health_checks={"slow": slow})
    request = asyncio.create_task(stack.client.get(f"{V1}/health"))
    await started.wait()
    release.set()  # the check ends...
    request.cancel()  # ...as the request is cancelled
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_a_health_check_that_raises_is_logged(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer only says ``false`` (the error's text may say more than a caller should read):
    the reason was nowhere, not even in the server's log."""

    async def raising() -> bool:
        raise ConnectionError(f"the database at 10.0.0.9 is gone ({CANARY})")

    stack = await make_stack(health_checks={"queue": raising})
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.api"):
        response = await stack.client.get(f"{V1}/health")
    assert response.json()["checks"]["queue"] is False
    (record,) = [record for record in caplog.records if "queue" in record.getMessage()]
    assert record.levelno == logging.WARNING
    assert "ConnectionError: the database at 10.0.0.9 is gone" in record.getMessage()
    assert CANARY not in caplog.text  # a key it quotes is masked, as in every log line


async def test_a_health_check_that_takes_too_long_fails_and_is_logged(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A check that never answers is cut at its time (5 s; shortened here) and counted failing;
    the others are still asked."""
    monkeypatch.setattr(operation_routes, "HEALTH_CHECK_SECONDS", 0.01)
    stopped = asyncio.Event()

    async def hanging() -> bool:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return True

    async def passing() -> bool:
        return True

    stack = await make_stack(health_checks={"hanging": hanging, "cache": passing})
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.api"):
        response = await stack.client.get(f"{V1}/health")
    assert response.status_code == 503
    assert response.json()["checks"] == {"store": True, "transport": True, "hanging": False, "cache": True}
    assert stopped.is_set()  # cancelled, not left running
    assert "health check 'hanging' took longer than 0.01 s" in caplog.messages


async def test_health_checks_run_at_once(make_stack: StackFactory) -> None:
    """One after another, each given 5 s, a /health with a few slow dependencies took their sum:
    past a load balancer's probe timeout. Here each check waits until every one has started,
    which only checks run at once get to."""
    started = [asyncio.Event() for _ in range(3)]

    def waiting_for_all(mine: asyncio.Event) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            mine.set()
            for each in started:
                await each.wait()
            return True

        return check

    stack = await make_stack(
        health_checks={f"dep{i}": waiting_for_all(event) for i, event in enumerate(started)}
    )
    response = await asyncio.wait_for(stack.client.get(f"{V1}/health"), 30)
    assert response.json()["checks"] == {
        "store": True,
        "transport": True,
        "dep0": True,
        "dep1": True,
        "dep2": True,
    }


async def test_health_is_503_when_the_transport_is_down(stack: Stack) -> None:
    await stack.transport.aclose()
    response = await stack.client.get(f"{V1}/health")
    assert response.status_code == 503
    assert response.json()["checks"] == {"store": True, "transport": False}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{V1}/dead-letters"),
        ("POST", f"{V1}/dead-letters/1-0/requeue"),
        ("DELETE", f"{V1}/dead-letters/1-0"),
    ],
)
async def test_a_transport_that_fails_is_a_503_not_a_500(stack: Stack, method: str, path: str) -> None:
    await stack.transport.aclose()  # every operation now fails with TransportError
    response = await stack.client.request(method, path)
    assert response.status_code == 503
    assert response.json()["detail"].startswith("the message transport is unavailable: ")


async def test_a_spec_store_that_cannot_be_reached_is_a_503_not_a_500() -> None:
    """The database away (a restart, a failover): a 503 a caller may retry, the store named with
    its password masked; it was a bare 500."""
    url = "postgresql://postgres:pw-CANARY@127.0.0.1:1/test"
    async with SqlSpecStore.from_url(url) as store:
        runtime = AgentRuntime(store, ToolRegistry(), ScriptedModels({"gpt": []}))
        async with client_for(make_app(runtime), AUTH) as client:
            answers = [
                await client.get(f"{V1}/agents"),
                await client.get(f"{V1}/agents/bot"),
                await client.post(f"{V1}/agents", json=AGENT),
                await client.post(f"{V1}/agents/bot/execute", json=EXECUTE),
            ]
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["detail"].startswith("the spec store is unavailable: SqlSpecStore (")
        assert "CANARY" not in answer.text


# -- routes whose dependency was not given ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "missing"),
    [
        ("POST", f"{V1}/requests/r1/cancel", None, "a transport"),
        ("GET", f"{V1}/dead-letters", None, "a transport"),
        ("POST", f"{V1}/dead-letters/1-0/requeue", None, "a transport"),
        ("DELETE", f"{V1}/dead-letters/1-0", None, "a transport"),
        ("GET", f"{V1}/routing/rules", None, "an event router"),
        ("PUT", f"{V1}/routing/rules", {"rules": []}, "an event router"),
        ("POST", f"{V1}/routing/explain", EVENT, "an event router"),
        ("GET", f"{V1}/llm/deployments", None, "an LLM router"),
        ("POST", f"{V1}/llm/refresh", None, "an LLM router"),
    ],
)
async def test_routes_without_their_dependency_are_404(
    method: str, path: str, body: Any, missing: str
) -> None:
    app = make_app(make_runtime())
    async with client_for(app, AUTH) as client:
        response = await call(client, method, path, body)
    assert response.status_code == 404
    assert response.json() == {"detail": f"this API was created without {missing}"}


# -- route order and streaming ----------------------------------------------------------------------


async def test_fixed_paths_are_served_by_their_own_routes() -> None:
    router = await mock_llm_router({"gpt": "x"})
    transport = InMemoryTransport(InMemoryServer())
    app = FastAPI()  # the router exactly as create_api_router returns it: no reordering
    app.include_router(
        create_api_router(
            runtime=make_runtime(),
            auth=NO_AUTH,
            transport=transport,
            event_router=event_router(),
            llm_router=router,
        )
    )
    entry_id = await dead_letter(transport)
    try:
        async with client_for(app) as client:
            statuses = [
                (await client.get(f"{V1}/health")).status_code,
                (await client.get(f"{V1}/dead-letters")).status_code,
                (await client.get(f"{V1}/routing/rules")).status_code,
                (await client.put(f"{V1}/routing/rules", json={"rules": []})).status_code,
                (await client.get(f"{V1}/llm/deployments")).status_code,
                (await client.delete(f"{V1}/dead-letters/{entry_id}")).status_code,
            ]
    finally:
        await router.aclose()
    assert statuses == [200, 200, 200, 200, 200, 204]


@pytest.mark.postgres
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_an_expected_version_past_the_sql_stores_integers_is_422_not_500(
    postgres_url: str, method: str
) -> None:
    """``?expected_version=2147483648`` (or any bigger number) reached the database, whose version
    column is a 32-bit integer: a bare ``DataError`` (integer out of range), a 500. An update's
    2147483647 too: it would write version 2147483648."""
    async with SqlSpecStore.from_url(postgres_url) as store:
        runtime = AgentRuntime(store, ToolRegistry(), ScriptedModels({"gpt": []}))
        async with client_for(make_app(runtime), AUTH) as client:
            assert (await client.post(f"{V1}/agents", json=AGENT)).status_code == 201
            answers = [
                await client.request(method, f"{V1}/agents/bot?expected_version={version}", json=AGENT)
                for version in ((2**31 - 1) if method == "PUT" else 2**31, 10**30)
            ]
            still = await client.get(f"{V1}/agents/bot")
    for answer in answers:
        assert answer.status_code == 422, answer.text
        (error,) = answer.json()["detail"]
        assert (error["loc"], error["type"]) == (["query", "expected_version"], "less_than_equal")
    assert still.json()["version"] == 1


async def test_streaming_a_disabled_spec_is_422(stack: Stack) -> None:
    await stack.client.post(f"{V1}/agents", json={**AGENT, "status": "disabled"})
    response = await stack.client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "stream": True})
    assert response.status_code == 422
    assert response.json()["detail"]["path"] == "status"


class _VanishingAfterFirstRead(InMemorySpecStore):
    """A store whose specs another process deletes right after the first read (the check)."""

    reads = 0

    async def get(self, kind: SpecKind, spec_id: str) -> SpecBase | None:
        self.reads += 1
        return await super().get(kind, spec_id) if self.reads == 1 else None


@pytest.mark.parametrize("stream", [False, True])
async def test_a_spec_deleted_between_the_check_and_the_run_is_a_404_not_a_500(stream: bool) -> None:
    """Another process deletes the spec while this request is being answered: the check in execute
    finds it, the run does not."""

    store = _VanishingAfterFirstRead()
    await store.create(AgentSpec.from_dict(AGENT))
    runtime = AgentRuntime(store, ToolRegistry(), ScriptedModels({"gpt": ["never"]}), max_staleness=0)
    async with client_for(make_app(runtime), AUTH) as client:
        response = await client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "stream": stream})
    await runtime.aclose()
    if stream:
        assert response.status_code == 200
        assert 'event: error\ndata: {"detail": "no agent \'bot\'"' in response.text
    else:
        assert (response.status_code, response.json()["detail"]) == (404, "no agent 'bot'")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_spec_error_after_the_check_masks_a_key_shaped_id(stream: bool) -> None:
    """The answer without a stream masks an id shaped like a key (one pasted in the wrong place);
    the stream's ``error`` event quoted it whole."""

    store = _VanishingAfterFirstRead()
    await store.create(AgentSpec.from_dict({**AGENT, "id": CANARY}))
    runtime = AgentRuntime(store, ToolRegistry(), ScriptedModels({"gpt": ["never"]}), max_staleness=0)
    async with client_for(make_app(runtime), AUTH) as client:
        response = await client.post(f"{V1}/agents/{CANARY}/execute", json={**EXECUTE, "stream": stream})
    await runtime.aclose()
    assert "CANARY" not in response.text
    assert f"no agent '{MASK}'" in response.text


async def test_a_stream_whose_run_fails_ends_with_an_error_event(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run failing after the stream began (the secrets service down while the agent is built,
    say) cut the stream off with neither ``result`` nor ``error``: the client saw a broken
    response. It ends with an ``error`` event naming the failure's type (its text is logged, not
    sent: it may say more than a caller should read), and the error is logged."""
    await stack.client.post(f"{V1}/agents", json=AGENT)
    canary = "CANARY0internal0detail01"

    async def failing(*args: Any, **kwargs: Any) -> Any:
        await kwargs["on_delta"]("partial ")
        raise SecretsUnavailableError(f"identity at 10.0.0.9 down ({canary})")

    monkeypatch.setattr(stack.runtime.agents, "execute", failing)
    response = await stack.client.post(f"{V1}/agents/bot/execute", json={**EXECUTE, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[0] == ("delta", {"content": "partial "})
    assert events[-1] == ("error", {"detail": "the run failed (SecretsUnavailableError)", "status": 500})
    assert canary not in response.text
    assert any(record.exc_info and canary in str(record.exc_info[1]) for record in caplog.records)


async def test_the_client_sends_every_execute_option_and_waits_for_a_long_run(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``execute`` could not send ``session_state`` or the run's ``timeout``, ``stream`` none of
    ``user_id``, ``session_state``, ``timeout`` or an ``Idempotency-Key``; and a run allowed 600 s
    was cut by the client's own 120 s read timeout. The run's timeout (and a margin) is now the
    call's when it is longer."""
    stack = await make_stack({"gpt": ["one", "two", "three"]})
    await stack.client.post(f"{V1}/agents", json=AGENT)
    asked: list[dict[str, Any]] = []
    execute = stack.runtime.agents.execute

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        asked.append({k: kwargs.get(k) for k in ("user_id", "session_state", "timeout")})
        return await execute(*args, **kwargs)

    monkeypatch.setattr(stack.runtime.agents, "execute", recorded)
    read_timeouts: list[Any] = []
    other_timeouts: set[tuple[Any, ...]] = set()
    app = httpx.ASGITransport(app=stack.app)

    class Recording(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            timeouts = request.extensions["timeout"]
            read_timeouts.append(timeouts["read"])
            other_timeouts.add((timeouts["connect"], timeouts["write"], timeouts["pool"]))
            return await app.handle_async_request(request)

    options: dict[str, Any] = {"user_id": "u7", "session_state": {"plan": "pro"}, "timeout": 600}
    async with AgentsHTTPClient(BASE, token=TOKEN, transport=Recording(), timeout=120) as api:
        plain = await api.execute("agents", "bot", "hi", session_id="s0")
        result = await api.execute("agents", "bot", "hi", session_id="s1", **options)
        streamed, again = [
            [
                event
                async for event in api.stream(
                    "agents", "bot", "hi", session_id="s2", idempotency_key="k", **options
                )
            ]
            for _ in range(2)
        ]
    assert (plain["content"], result["content"]) == ("one", "two")
    with_options = {"user_id": "u7", "session_state": {"plan": "pro"}, "timeout": 600.0}
    assert asked == [{"user_id": None, "session_state": None, "timeout": None}, with_options, with_options]
    assert streamed[-1] == ("result", again[-1][1])
    assert again[-1][1]["content"] == "three"
    assert again == [streamed[-1]]  # the retry got the stored result, and nothing ran again
    assert read_timeouts == [120.0, 630.0, 630.0, 630.0]
    assert other_timeouts == {(120.0, 120.0, 120.0)}  # only the wait for the answer is extended
