"""Property-based API testing: schemathesis generates requests from the app's own OpenAPI document
(``app.openapi()``) for every operation, and no response may be a server error.

A case on a ``/{kind_name}`` route is sent twice: as generated (its kind and ids are mostly random,
so it exercises the 404 and 422 paths), and pinned to a stored spec (``/agents/bot``, ``/teams/crew``,
…) so that the generated query strings, headers and bodies reach the handlers behind those checks.
The valid bearer token is put on every case; without it, every case would stop at the 401. The app
has every optional dependency (transport with a dead letter, event router, LLM router), so every
route runs its handler. ~25 examples per operation, derandomised: a run takes a few seconds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from dynamic_agents.agents import AgentRuntime
from dynamic_agents.events import StreamNames
from dynamic_agents.exceptions import SpecNotFoundError
from dynamic_agents.testing import InMemoryServer, InMemoryTransport, ScriptedModels, mock_llm_router
from tests.api.support import TOKEN, dead_letter, event_router, make_app, make_runtime

SPECS: dict[str, dict[str, Any]] = {
    "agents": {"id": "bot", "model": "gpt"},
    "teams": {"id": "crew", "members": ["bot"], "model": "gpt"},
    "workflows": {"id": "flow", "steps": [{"type": "agent", "agent": "bot"}]},
}
_kinds = itertools.cycle(SPECS)


async def _seed(runtime: AgentRuntime) -> None:
    """Put the pinned specs back (a generated DELETE or PUT may have removed or changed them)."""
    for kind, document in SPECS.items():
        manager = getattr(runtime, kind)
        spec = manager.model.from_dict(document)
        try:
            current = await manager.get(spec.id)
        except SpecNotFoundError:
            await manager.create(spec)
            continue
        if current.model_dump(exclude={"version"}) != spec.model_dump(exclude={"version"}):
            await manager.update(spec, expected_version=current.version)


def _build_app() -> tuple[Any, AgentRuntime, Any]:
    # a few replies; once they are used up runs end as error results, which is fine here
    runtime = make_runtime(ScriptedModels({"gpt": ["one", "two", "three"]}, chunk_size=2))
    transport = InMemoryTransport(InMemoryServer(), names=StreamNames("fuzz"))
    llm = asyncio.run(mock_llm_router({"gpt": "mocked"}))
    asyncio.run(_seed(runtime))
    asyncio.run(dead_letter(transport))
    return make_app(runtime, transport=transport, event_router=event_router(), llm_router=llm), runtime, llm


# Built at import: the schema is needed to collect the tests. (``schemathesis.pytest.from_fixture``
# would build it lazily, but schemathesis 4.32's lazy loader reads ``request.node._nodeid``, which
# pytest 9 no longer has.)
APP, RUNTIME, LLM = _build_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _close_the_llm_router() -> Iterator[None]:
    yield
    asyncio.run(LLM.aclose())


def _authorised(case: Any) -> None:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = {**headers, "Authorization": f"Bearer {TOKEN}"}


def _pinned(case: Any) -> bool:
    parameters = case.path_parameters or {}
    if "kind_name" not in parameters:
        return False
    kind = next(_kinds)
    case.path_parameters = {**parameters, "kind_name": kind}
    if "spec_id" in parameters:
        case.path_parameters["spec_id"] = SPECS[kind]["id"]
    return True


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_generated_request_is_a_server_error(case: Any) -> None:
    _authorised(case)
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.text

    if _pinned(case):
        asyncio.run(_seed(RUNTIME))
        response = case.call()
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text
