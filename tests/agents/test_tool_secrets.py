"""Secret references in toolkit parameters: the spec keeps the reference, the factory gets the
value, a key written out is refused, and no value reaches a spec, an error or a log."""

from __future__ import annotations

import asyncio
import logging
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agno.tools import Toolkit, tool

from dynamic_agents.agents import AgentRuntime, AgentSpec, InMemorySpecStore, ToolRegistry, session_db
from dynamic_agents.agents.stores import YamlDirectorySpecStore
from dynamic_agents.events import ResponseStatus
from dynamic_agents.exceptions import SecretNotFoundError, SpecValidationError
from dynamic_agents.secrets import SecretKey, SecretsManager, SecretValue, StaticSource
from dynamic_agents.testing import ScriptedModels, ToolCall

CANARY = "tvly-CANARY0search0key0000000000000001"
ROTATED = "tvly-CANARY0search0key0000000000000002"


class Built(list[dict[str, Any]]):
    """A toolkit factory that keeps the parameters it was called with."""

    def __call__(self, api_key: str, max_results: int = 5, headers: dict[str, str] | None = None) -> Any:
        self.append({"api_key": api_key, "max_results": max_results, "headers": headers})

        def web_search(query: str) -> str:
            """Search the web."""
            return f"results for {query}"

        return web_search


def yaml_text(directory: Path) -> str:
    return "".join(path.read_text() for path in directory.rglob("*.yaml"))


def spec(parameters: dict[str, Any]) -> AgentSpec:
    return AgentSpec.from_dict(
        {"id": "searcher", "model": "gpt", "tools": [{"name": "search", "parameters": parameters}]}
    )


@pytest.fixture
def source() -> StaticSource:
    return StaticSource({"tavily": {"api_key": CANARY}})


@pytest.fixture
def built() -> Built:
    return Built()


@pytest.fixture
async def runtime(source: StaticSource, built: Built) -> AsyncIterator[AgentRuntime]:
    registry = ToolRegistry()
    registry.toolkit("search", built)
    scripted = ScriptedModels({"gpt": [ToolCall("web_search", {"query": "q"}), "done"] * 3})
    secrets = SecretsManager(source)
    async with AgentRuntime(InMemorySpecStore(), registry, scripted, secrets=secrets) as rt:
        yield rt
    await secrets.aclose()


def test_a_reference_is_kept_as_written() -> None:
    parameters = {"api_key": "secret:tavily:api_key", "headers": {"X-Key": "os.environ/SEARCH_KEY"}}
    assert spec(parameters).tools[0].parameters == parameters
    assert spec(parameters).tools[0].has_references
    assert not spec({"max_results": 3}).tools[0].has_references


@pytest.mark.parametrize(
    ("parameters", "path"),
    [
        ({"api_key": CANARY}, "parameters.api_key"),
        ({"headers": {"Authorization": f"Bearer {CANARY}"}}, "parameters.headers.Authorization"),
        ({"tokens": ["fine", CANARY]}, "parameters.tokens[1]"),
        # a URL's password or credential query value, under any name: they were stored as written
        ({"dsn": f"postgresql://search:{CANARY}@db.internal/search"}, "parameters.dsn"),
        ({"endpoint": f"https://api.example.com/v1?key={CANARY}"}, "parameters.endpoint"),
        ({"mirrors": ["https://a.example", f"https://u:{CANARY}@b.example"]}, "parameters.mirrors[1]"),
    ],
)
def test_a_key_written_out_is_refused_without_showing_it(parameters: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecValidationError) as caught:
        spec(parameters)
    assert caught.value.path == "tools[0].parameters"
    assert f"{path} holds what looks like a credential written out" in str(caught.value)
    assert "secret:<provider>:<field>" in str(caught.value)  # what to write instead
    assert CANARY not in str(caught.value)
    assert CANARY not in repr(caught.value)


@pytest.mark.parametrize(
    "parameters",
    [
        {"api_key": ""},  # nothing written yet
        {"sort_key": "created_at desc"},  # a credential-ish name, but words
        {"index": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"},  # key-shaped, under a name that is no credential
        {"api_key_header": "X-Api-Key"},
        {"endpoint": "https://api.example.com/v1?api-version=2024-06-01"},  # a URL without a credential
        {"dsn": "postgresql://search@db.internal/search"},
    ],
)
def test_values_that_are_not_keys_are_accepted(parameters: dict[str, Any]) -> None:
    assert spec(parameters).tools[0].parameters == parameters


def test_a_malformed_reference_is_refused_with_its_path() -> None:
    with pytest.raises(SpecValidationError) as caught:
        spec({"auth": {"key": "secret:Tavily:api_key"}})
    assert caught.value.path == "tools[0].parameters"
    assert str(caught.value).count("parameters.auth.key: malformed secret reference") == 1


async def test_the_factory_gets_the_value_and_a_rotated_key_reaches_the_next_run(
    runtime: AgentRuntime, source: StaticSource, built: Built
) -> None:
    await runtime.agents.create(spec({"api_key": "secret:tavily:api_key", "max_results": 3}))
    result = await runtime.agents.execute("searcher", "find", session_id="s1")
    assert result.status is ResponseStatus.COMPLETED
    assert built == [{"api_key": CANARY, "max_results": 3, "headers": None}]

    source.set(SecretKey("tavily"), {"api_key": ROTATED})
    assert runtime.secrets is not None
    runtime.secrets.invalidate("tavily")  # what a change notification or the next refresh does
    await runtime.agents.execute("searcher", "again", session_id="s1")
    assert built[-1]["api_key"] == ROTATED
    stored = await runtime.agents.get("searcher")
    assert stored.tools[0].parameters["api_key"] == "secret:tavily:api_key"


async def test_nested_references_are_resolved(runtime: AgentRuntime, built: Built) -> None:
    headers = {"X-Key": "secret:tavily:api_key", "X-Team": "search"}
    await runtime.agents.create(spec({"api_key": "secret:tavily:api_key", "headers": headers}))
    await runtime.agents.execute("searcher", "find", session_id="s1")
    assert built[0]["headers"] == {"X-Key": CANARY, "X-Team": "search"}


async def test_a_missing_secret_names_the_spec_and_the_parameter(
    runtime: AgentRuntime, built: Built, caplog: pytest.LogCaptureFixture
) -> None:
    await runtime.agents.create(spec({"api_key": "secret:tavily:missing_field"}))
    with caplog.at_level(logging.DEBUG), pytest.raises(SecretNotFoundError) as caught:
        await runtime.agents.execute("searcher", "find", session_id="s1")
    assert str(caught.value).startswith("agent 'searcher', tools[0].parameters.api_key: no secret field")
    assert built == []  # the factory never ran with a missing key
    assert CANARY not in caplog.text  # nothing logged (DEBUG up) quotes the provider's other values


async def test_a_runtime_without_secrets_refuses_references_at_load(built: Built) -> None:
    registry = ToolRegistry()
    registry.toolkit("search", built)
    async with AgentRuntime(InMemorySpecStore(), registry, ScriptedModels({"gpt": ["hi"]})) as rt:
        with pytest.raises(SpecValidationError) as caught:
            await rt.agents.create(spec({"api_key": "secret:tavily:api_key"}))
    assert caught.value.path == "tools[0].parameters"
    assert "no secrets manager" in str(caught.value)


async def test_no_value_reaches_the_stored_file_the_spec_or_the_logs(
    tmp_path: Path, source: StaticSource, built: Built, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ToolRegistry()
    registry.toolkit("search", built)
    scripted = ScriptedModels({"gpt": [ToolCall("web_search", {"query": "q"}), "done"]})
    async with (
        SecretsManager(source) as secrets,
        AgentRuntime(YamlDirectorySpecStore(tmp_path), registry, scripted, secrets=secrets) as rt,
    ):
        with caplog.at_level(logging.DEBUG):
            await rt.agents.create(spec({"api_key": "secret:tavily:api_key"}))
            result = await rt.agents.execute("searcher", "find", session_id="s1")
        stored = await rt.agents.get("searcher")
    assert result.status is ResponseStatus.COMPLETED
    assert built[0]["api_key"] == CANARY  # it was resolved
    on_disk = yaml_text(tmp_path)
    assert "secret:tavily:api_key" in on_disk
    for text in (on_disk, repr(stored), str(stored), stored.model_dump_json(), caplog.text):
        assert CANARY not in text


_AGNO_LOGS_A_FAILED_TOOL = f"""
import asyncio
from dynamic_agents.agents import AgentRuntime, AgentSpec, InMemorySpecStore, ToolRegistry
from dynamic_agents.secrets import SecretsManager, StaticSource
from dynamic_agents.testing import ScriptedModels, ToolCall

def search_kit(api_key: str):
    def web_search(query: str) -> str:
        \"\"\"Search the web.\"\"\"
        raise RuntimeError("401 Unauthorized for key " + api_key)
    return web_search

async def main() -> None:
    registry = ToolRegistry()
    registry.toolkit("search", search_kit)
    models = ScriptedModels({{"gpt": [ToolCall("web_search", {{"query": "q"}}), "done"]}})
    async with (
        SecretsManager(StaticSource({{"tavily": {{"api_key": "{CANARY}"}}}})) as secrets,
        AgentRuntime(InMemorySpecStore(), registry, models, secrets=secrets) as runtime,
    ):
        tools = [{{"name": "search", "parameters": {{"api_key": "secret:tavily:api_key"}}}}]
        await runtime.agents.create(AgentSpec.from_dict({{"id": "a", "model": "gpt", "tools": tools}}))
        assert (await runtime.agents.execute("a", "find", session_id="s")).ok

asyncio.run(main())
"""


async def test_agnos_log_of_a_failed_tool_masks_the_secret_it_was_built_with() -> None:
    # agno logs a tool's exception (message and traceback) on its own loggers, which do not
    # propagate; they were masked only once dynamic_agents.llm.agno had been imported (a runtime
    # on RouterModels), not on a runtime with other models. A process of its own: nothing else
    # imported first.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _AGNO_LOGS_A_FAILED_TOOL, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    assert "Could not run function web_search" in output.decode()  # agno did log it
    assert CANARY not in output.decode()


def _refused(api_key: str) -> str:
    return f"401 Unauthorized for url 'https://api.search.example/v1?api_key={api_key}' ({api_key})"


def _failing_tool(kind: str, api_key: str) -> Any:
    """A tool named ``web_search`` of one kind agno takes, failing with a message quoting its key."""

    def web_search(query: str) -> str:
        """Search the web."""
        raise RuntimeError(_refused(api_key))

    async def web_search_async(query: str) -> str:
        """Search the web."""
        raise RuntimeError(_refused(api_key))

    web_search_async.__name__ = "web_search"
    if kind == "function":
        return web_search
    if kind == "async function":
        return web_search_async
    if kind == "agno tool":
        return tool(web_search)
    return Toolkit(name="search", tools=[web_search_async if "async" in kind else web_search])


TOOL_KINDS = ["function", "async function", "agno tool", "toolkit", "async toolkit"]


@pytest.mark.parametrize("factory", [True, False], ids=["factory", "registered"])
@pytest.mark.parametrize("kind", TOOL_KINDS)
async def test_a_failed_tools_error_reaches_the_model_and_the_session_db_without_its_secret(
    tmp_path: Path, source: StaticSource, kind: str, factory: bool
) -> None:
    # agno hands a tool's exception text to the model as the tool's result and stores it with
    # the run: a provider's refusal quoting the key went to the model provider and the session db
    registry = ToolRegistry()  # each under the name the model calls: web_search
    parameters: dict[str, Any] = {}
    if factory:
        registry.toolkit("web_search", lambda api_key: _failing_tool(kind, api_key))
        parameters = {"api_key": "secret:tavily:api_key"}
    else:
        registry.add_tool(_failing_tool(kind, SecretValue(CANARY).reveal()), name="web_search")
    scripted = ScriptedModels({"gpt": [ToolCall("web_search", {"query": "q"}), "done"]})
    async with (
        SecretsManager(source) as secrets,
        AgentRuntime(
            InMemorySpecStore(),
            registry,
            scripted,
            secrets=secrets,
            db=session_db(f"sqlite:///{tmp_path}/sessions.db"),
        ) as rt,
    ):
        tools = [{"name": "web_search", "parameters": parameters}]
        await rt.agents.create(AgentSpec.from_dict({"id": "searcher", "model": "gpt", "tools": tools}))
        result = await rt.agents.execute("searcher", "find", session_id="s1")
    assert result.status is ResponseStatus.COMPLETED  # the failure was the tool's result, not the run's
    told = [
        m["content"] for call in scripted.models["gpt"].calls for m in call.messages if m["role"] == "tool"
    ]
    assert len(told) == 1
    assert told[0].startswith(
        "RuntimeError: 401 Unauthorized for url 'https://api.search.example/v1?api_key="
    )
    assert CANARY not in told[0]
    assert CANARY.encode() not in (tmp_path / "sessions.db").read_bytes()


async def test_a_tools_own_hooks_still_run_around_it() -> None:
    called: list[str] = []

    def audit(function_name: str, function_call: Any, arguments: dict[str, Any]) -> Any:
        called.append(function_name)
        return function_call(**arguments)

    def lookup(query: str) -> str:
        """Look something up."""
        return f"found {query}"

    registry = ToolRegistry()
    registry.add_tool(tool(tool_hooks=[audit])(lookup))
    scripted = ScriptedModels({"gpt": [ToolCall("lookup", {"query": "q"}), "done"]})
    async with AgentRuntime(InMemorySpecStore(), registry, scripted) as rt:
        await rt.agents.create(AgentSpec(id="a", model="gpt", tools=["lookup"]))
        assert (await rt.agents.execute("a", "find", session_id="s1")).ok
    assert called == ["lookup"]
    assert scripted.models["gpt"].calls[1].messages[-1]["content"] == "found q"


async def test_a_tool_that_times_out_or_fails_without_words_tells_the_model_what_happened() -> None:
    # agno gives the model str(exception) only: a tool whose own deadline passed told it "" (as
    # if it had returned nothing), a missing key told it "'bob'"
    async def fetch(url: str) -> str:
        """Fetch a page."""
        async with asyncio.timeout(0):  # the tool's own deadline, past at its first wait
            await asyncio.Event().wait()
        return "never"

    def lookup(user: str) -> str:
        """Look a user up."""
        users: dict[str, str] = {}
        return users[user]

    registry = ToolRegistry()
    registry.tool(fetch)
    registry.tool(lookup)
    calls = [ToolCall("fetch", {"url": "https://example.com"}), ToolCall("lookup", {"user": "bob"})]
    scripted = ScriptedModels({"gpt": [calls, "done"]})
    async with AgentRuntime(InMemorySpecStore(), registry, scripted) as rt:
        await rt.agents.create(AgentSpec(id="a", model="gpt", tools=["fetch", "lookup"]))
        result = await rt.agents.execute("a", "go", session_id="s1")
    assert result.status is ResponseStatus.COMPLETED  # the tools' failures are their results
    told = {
        m["tool_name"]: m["content"] for m in scripted.models["gpt"].calls[1].messages if m["role"] == "tool"
    }
    assert told == {"fetch": "TimeoutError", "lookup": "KeyError: 'bob'"}


async def test_a_tool_whose_await_was_cancelled_under_it_fails_alone() -> None:
    # a future a library cancelled under the tool (the request was not cancelled): the
    # CancelledError went through agno and out of execute, as if the caller had been cancelled;
    # the worker then answered nothing
    async def fetch(url: str) -> str:
        """Fetch a page."""
        pending = asyncio.get_running_loop().create_future()
        pending.cancel()  # what a client closing its pool does to the calls waiting on it
        return str(await pending)

    registry = ToolRegistry()
    registry.tool(fetch)
    scripted = ScriptedModels({"gpt": [ToolCall("fetch", {"url": "https://example.com"}), "done"]})
    async with AgentRuntime(InMemorySpecStore(), registry, scripted) as rt:
        await rt.agents.create(AgentSpec(id="a", model="gpt", tools=["fetch"]))
        result = await rt.agents.execute("a", "go", session_id="s1", timeout=30)
    assert result.status is ResponseStatus.COMPLETED
    assert scripted.models["gpt"].calls[1].messages[-1]["content"] == "CancelledError"
