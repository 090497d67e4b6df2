"""The tool registry: the names specs use are the names the model sees."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from agno.run import RunContext
from agno.tools import Toolkit, tool

from dynamic_agents.agents import AgentRuntime, AgentSpec, InMemorySpecStore, ToolRegistry
from dynamic_agents.events import ResponseStatus
from dynamic_agents.exceptions import ConfigurationError, SpecValidationError
from dynamic_agents.secrets import SecretsManager, StaticSource
from dynamic_agents.testing import ScriptedModels, ToolCall


def search_in(corpus: str) -> Callable[[str], str]:
    def search(query: str) -> str:
        """Search a corpus."""
        return f"{corpus}: {query}"

    return search


async def test_tools_registered_under_other_names_reach_the_model_by_those_names() -> None:
    # Two closures share the function name "search": registered as web_search and news_search,
    # they are two tools, not one (agno keeps the first of two tools with the same name).
    tools = ToolRegistry()
    tools.add_tool(search_in("web"), name="web_search")
    tools.add_tool(search_in("news"), name="news_search")
    models = ScriptedModels({"gpt": [ToolCall("news_search", {"query": "rain"}), "It rains."]})
    async with AgentRuntime(InMemorySpecStore(), tools, models) as runtime:
        await runtime.agents.create(AgentSpec(id="a", model="gpt", tools=("web_search", "news_search")))
        result = await runtime.agents.execute("a", "News?", session_id="s")
    assert result.status == ResponseStatus.COMPLETED
    calls = models.models["gpt"].calls
    assert sorted(calls[0].tools) == ["news_search", "web_search"]
    assert calls[1].messages[-1]["content"] == "news: rain"


async def test_an_aliased_tool_still_gets_the_run_context() -> None:
    seen: list[object] = []

    async def lookup(run_context: RunContext, key: str) -> str:
        """Look a key up."""
        seen.append((run_context.metadata or {}).get("request_id"))
        return key.upper()

    tools = ToolRegistry()
    tools.add_tool(lookup, name="find")
    models = ScriptedModels({"gpt": [ToolCall("find", {"key": "k"}), "Found."]})
    async with AgentRuntime(InMemorySpecStore(), tools, models) as runtime:
        await runtime.agents.create(AgentSpec(id="a", model="gpt", tools=("find",)))
        result = await runtime.execute(
            AgentSpec.kind, "a", "Find k", session_id="s", metadata={"request_id": "r1"}
        )
    assert result.status == ResponseStatus.COMPLETED
    assert models.models["gpt"].calls[0].tools == ["find"]
    assert models.models["gpt"].calls[1].messages[-1]["content"] == "K"
    assert seen == ["r1"]


async def test_an_agno_tool_registered_under_another_name_is_called_by_it() -> None:
    @tool
    def ping(host: str) -> str:
        """Ping a host."""
        return f"pong from {host}"

    tools = ToolRegistry()
    tools.add_tool(ping, name="check_host")
    models = ScriptedModels({"gpt": [ToolCall("check_host", {"host": "db"}), "Up."]})
    async with AgentRuntime(InMemorySpecStore(), tools, models) as runtime:
        await runtime.agents.create(AgentSpec(id="a", model="gpt", tools=("check_host",)))
        result = await runtime.agents.execute("a", "Is db up?", session_id="s")
    assert result.status == ResponseStatus.COMPLETED
    assert models.models["gpt"].calls[0].tools == ["check_host"]
    assert models.models["gpt"].calls[1].messages[-1]["content"] == "pong from db"


@pytest.mark.parametrize("name", ["web search", "search.web", "<lambda>", "x" * 65])
def test_tool_names_the_model_apis_refuse_are_refused_at_registration(name: str) -> None:
    tools = ToolRegistry()
    with pytest.raises(ConfigurationError) as caught:
        tools.add_tool(lambda: "ok", name=name if name != "<lambda>" else None)
    assert repr(name) in str(caught.value)
    assert "letters, digits, '_' and '-'" in str(caught.value)
    assert tools.names("tool") == []


def test_toolkit_names_are_only_registry_keys() -> None:
    tools = ToolRegistry()
    tools.toolkit("search.web", lambda: [])  # its tools keep their own names
    assert tools.names("tool") == ["search.web"]


@pytest.mark.parametrize("factory", [None, "DuckDuckGoTools", Toolkit(name="built", tools=[])])
def test_a_toolkit_factory_that_cannot_be_called_is_refused_at_registration(factory: Any) -> None:
    """It was accepted, and every spec naming it then failed to build with "could not be built
    from its parameters: its factory raised TypeError", blaming the spec's parameters."""
    tools = ToolRegistry()
    with pytest.raises(ConfigurationError, match=r"^toolkit 'search' must be a callable") as caught:
        tools.toolkit("search", factory)
    assert type(factory).__name__ in str(caught.value)
    assert tools.names("tool") == []


def test_a_toolkit_factory_refusal_names_its_type_with_its_article() -> None:
    with pytest.raises(ConfigurationError, match=r"got an int: register a built Toolkit"):
        ToolRegistry().toolkit("search", 1)


def test_an_agno_toolkit_instance_keeps_any_registry_name() -> None:
    tools = ToolRegistry()
    tools.add_tool(Toolkit(name="My Tools", tools=[search_in("web")]))
    assert tools.names("tool") == ["My Tools"]


def _delete_everything(confirm: str) -> str:
    """Delete everything."""
    return "gone"


@pytest.mark.parametrize(
    "toolkit",
    [
        lambda: Toolkit(
            name="ops", tools=[_delete_everything], requires_confirmation_tools=["_delete_everything"]
        ),
        lambda: Toolkit(
            name="ops", tools=[_delete_everything], external_execution_required_tools=["_delete_everything"]
        ),
        lambda: Toolkit(name="ops", tools=[tool(requires_user_input=True)(_delete_everything)]),
    ],
)
async def test_a_toolkit_instance_with_tools_that_pause_the_run_is_refused(
    toolkit: Callable[[], Toolkit],
) -> None:
    tools = ToolRegistry()
    tools.add_tool(toolkit())
    async with AgentRuntime(InMemorySpecStore(), tools, ScriptedModels({"gpt": []})) as runtime:
        with pytest.raises(SpecValidationError, match="requires human confirmation") as caught:
            await runtime.agents.create(AgentSpec(id="a", model="gpt", tools=("ops",)))
    assert caught.value.path == "tools[0].name"


def _get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


async def test_two_tools_of_a_spec_giving_the_model_one_name_are_refused() -> None:
    # agno would keep the first and drop the second with a warning: the model could never call it
    tools = ToolRegistry()
    tools.add_tool(_get_weather, name="get_weather")
    tools.add_tool(Toolkit(name="weather_kit", tools=[search_in("web")]))  # offers "search"
    tools.add_tool(search_in("news"), name="search")
    tools.toolkit("search_kit", lambda: Toolkit(name="kit", tools=[search_in("web")]))
    models = ScriptedModels({"gpt": ["unused"]})
    async with AgentRuntime(InMemorySpecStore(), tools, models) as runtime:
        with pytest.raises(SpecValidationError) as at_load:
            await runtime.agents.create(
                AgentSpec(id="a", model="gpt", tools=("get_weather", "weather_kit", "search"))
            )
        assert at_load.value.path == "tools[2].name"
        assert "'search'" in at_load.value.detail
        assert "tools[1]" in at_load.value.detail

        # a factory's tools are known only when it runs: the clash is named then
        await runtime.agents.create(AgentSpec(id="b", model="gpt", tools=("search", "search_kit")))
        with pytest.raises(SpecValidationError) as at_build:
            await runtime.agents.execute("b", "hi", session_id="s")
        assert (at_build.value.spec, at_build.value.path) == ("agent 'b'", "tools[1].name")
    assert models.models["gpt"].calls == []


async def test_a_toolkit_factory_refusing_a_spec_parameter_value_names_the_tool_not_the_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = "sk-canary-factory-value-0001"

    def search_kit(api_key: str) -> Toolkit:
        raise ValueError(f"bad key {api_key}")  # a host factory's message may repeat the value

    tools = ToolRegistry()
    tools.toolkit("search_kit", search_kit)
    models = ScriptedModels({"gpt": ["unused"]})
    secrets = SecretsManager(StaticSource({"search": {"api_key": canary}}))
    async with AgentRuntime(InMemorySpecStore(), tools, models, secrets=secrets) as runtime:
        parameters = {"api_key": "secret:search:api_key"}  # the factory gets the value
        spec = AgentSpec.from_dict(
            {"id": "a", "model": "gpt", "tools": [{"name": "search_kit", "parameters": parameters}]}
        )
        await runtime.agents.create(spec)  # the names fit the factory: only running it tells
        with pytest.raises(SpecValidationError) as caught:
            await runtime.agents.execute("a", "hi", session_id="s")
    assert (caught.value.spec, caught.value.path) == ("agent 'a'", "tools[0].parameters")
    assert "'search_kit'" in caught.value.detail
    assert "ValueError" in caught.value.detail
    assert canary not in str(caught.value)
    assert canary not in repr(caught.value)
    assert canary not in caplog.text


@pytest.mark.parametrize(("kind", "hint"), [("tools", "; did you mean 'tool'?"), ("widget", ""), (None, "")])
def test_names_of_an_unknown_kind_is_refused_naming_the_kinds(kind: Any, hint: str) -> None:
    # a bare KeyError: 'tools'
    refusal = rf"^kind must be one of 'tool', 'schema', 'function', got {kind!r}{re.escape(hint)}$"
    with pytest.raises(ConfigurationError, match=refusal):
        ToolRegistry().names(kind)


@pytest.mark.parametrize(
    ("target", "name", "shown"),
    [
        (5, None, "5"),
        (None, "lookup", "None"),
        ("get_weather", None, "'get_weather'"),  # its name given for the function
        ("sk-proj-" + "a1B2c3D4" * 5, "search", "**********"),  # a key pasted in its place
        ([_get_weather], "weather", "a list"),
    ],
)
def test_a_tool_that_is_no_callable_nor_agno_tool_is_refused_at_registration(
    target: Any, name: str | None, shown: str
) -> None:
    """5 was registered, and every spec naming it failed to build (or handed agno a number)."""
    tools = ToolRegistry()
    with pytest.raises(ConfigurationError, match=r"must be a function, an agno tool") as caught:
        tools.add_tool(target, name=name)
    assert str(caught.value).endswith(f"got {shown}")
    assert "sk-proj-" not in str(caught.value)
    if name is not None:
        assert f"tool {name!r}" in str(caught.value)
    assert tools.names("tool") == []


def test_every_kind_of_tool_agno_takes_is_registered() -> None:
    tools = ToolRegistry()
    tools.add_tool(_get_weather)
    tools.add_tool(tool(name="forecast")(_get_weather))  # an agno Function: not callable itself
    tools.add_tool(Toolkit(name="kit", tools=[search_in("web")]))
    tools.add_tool({"type": "web_search_preview"}, name="web_search")  # a provider's built-in tool
    assert tools.names("tool") == ["_get_weather", "forecast", "kit", "web_search"]


async def test_a_toolkit_factory_that_changes_its_parameters_changes_no_other_run() -> None:
    # A toolkit keeping the headers it is given and adding to them (its own auth header, say)
    # changed the cached spec's parameters: the next run's factory got them changed, and each
    # run added to one shared dict.
    seen: list[dict[str, Any]] = []

    def api_kit(headers: dict[str, str], scopes: list[str]) -> Callable[[str], str]:
        seen.append({"headers": dict(headers), "scopes": list(scopes)})
        headers["X-Run"] = str(len(seen))  # a toolkit setting its own per-run header
        scopes.append("extra")

        def lookup(query: str) -> str:
            """Look something up."""
            return query

        return lookup

    tools = ToolRegistry()
    tools.toolkit("api", api_kit)
    parameters = {"headers": {"X-Team": "search"}, "scopes": ["read"]}
    spec = AgentSpec.from_dict(
        {"id": "a", "model": "gpt", "tools": [{"name": "api", "parameters": parameters}]}
    )
    async with AgentRuntime(InMemorySpecStore(), tools, ScriptedModels({"gpt": ["one", "two"]})) as runtime:
        await runtime.agents.create(spec)
        for _ in range(2):  # within max_staleness: both runs build from the cached spec
            assert (await runtime.agents.execute("a", "hi", session_id="s")).ok
        cached = await runtime.current(AgentSpec.kind, "a")
    assert seen == [parameters, parameters]
    assert cached.tools[0].parameters == parameters


async def test_an_agno_tool_a_factory_makes_keeps_its_name_when_the_registry_key_is_none_a_model_takes() -> (
    None
):
    # a toolkit's registry key may be any text ("search.web"); the agno tool its factory made was
    # renamed to it, a function name model APIs refuse (every request to the provider failed)
    tools = ToolRegistry()
    tools.toolkit("search.web", lambda: tool(search_in("web")))
    tools.toolkit("news_search", lambda: tool(search_in("news")))  # a name a model takes: given
    models = ScriptedModels({"gpt": ["done"]})
    async with AgentRuntime(InMemorySpecStore(), tools, models) as runtime:
        await runtime.agents.create(AgentSpec(id="a", model="gpt", tools=["search.web", "news_search"]))
        assert (await runtime.agents.execute("a", "hi", session_id="s")).ok
    assert sorted(models.models["gpt"].calls[0].tools) == ["news_search", "search"]
