"""ScriptedModel drives real agno agents and teams offline, one scripted reply per model request."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from agno.agent import Agent
from agno.exceptions import ModelProviderError
from agno.models.message import Message
from agno.run.base import RunStatus
from agno.team import Team

from dynamic_agents.testing.agno import RecordedCall, ScriptedModel, ToolCall


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def get_time(city: str) -> str:
    """The local time in a city."""
    return f"Noon in {city}"


def weather_script() -> list[Any]:
    return [ToolCall("get_weather", {"city": "Paris"}), "It is sunny in Paris."]


def weather_agent(model: ScriptedModel, **options: Any) -> Agent:
    return Agent(model=model, tools=[get_weather], telemetry=False, **options)


def assert_answered_from_the_tool(model: ScriptedModel) -> None:
    assert len(model.calls) == 2
    assert model.remaining == 0
    tool_message = model.calls[1].messages[-1]
    assert tool_message == {
        "role": "tool",
        "content": "Sunny in Paris",
        "tool_call_id": "call_1",
        "tool_name": "get_weather",
    }


async def test_arun_calls_the_tool_then_answers() -> None:
    model = ScriptedModel(weather_script())

    output = await weather_agent(model).arun("Weather in Paris?", session_id="arun")

    assert output.status == RunStatus.completed
    assert output.content == "It is sunny in Paris."
    assert [(tool.tool_name, tool.tool_args, tool.result) for tool in output.tools] == [
        ("get_weather", {"city": "Paris"}, "Sunny in Paris")
    ]
    assert_answered_from_the_tool(model)
    assert (output.metrics.input_tokens, output.metrics.output_tokens) == (2, 2)


def test_sync_run_calls_the_tool_then_answers() -> None:
    model = ScriptedModel(weather_script())

    output = weather_agent(model).run("Weather in Paris?", session_id="run")

    assert output.status == RunStatus.completed
    assert output.content == "It is sunny in Paris."
    assert_answered_from_the_tool(model)


async def test_arun_stream_events_ends_with_the_final_content() -> None:
    model = ScriptedModel(weather_script())

    events = [
        event
        async for event in weather_agent(model).arun(
            "Weather in Paris?", session_id="stream", stream=True, stream_events=True
        )
    ]

    names = [event.event for event in events]
    assert names[0] == "RunStarted"
    assert "ToolCallStarted" in names
    assert "ToolCallCompleted" in names
    assert names[-1] == "RunCompleted"
    assert events[-1].content == "It is sunny in Paris."
    assert all(call.stream for call in model.calls)
    assert_answered_from_the_tool(model)


def test_sync_stream_splits_text_into_chunks() -> None:
    model = ScriptedModel(["It is sunny."], chunk_size=5)

    events = list(Agent(model=model, telemetry=False).run("Weather?", session_id="chunks", stream=True))

    assert [event.content for event in events if event.event == "RunContent"] == ["It is", " sunn", "y."]


async def test_chunked_stream_reports_usage_once() -> None:
    model = ScriptedModel(["It is sunny."], chunk_size=2)

    events = [
        event
        async for event in Agent(model=model, telemetry=False).arun(
            "Weather?", session_id="usage", stream=True, stream_events=True
        )
    ]

    assert events[-1].content == "It is sunny."
    assert (events[-1].metrics.input_tokens, events[-1].metrics.output_tokens) == (1, 1)


async def test_an_exception_step_gives_an_error_run() -> None:
    model = ScriptedModel([RuntimeError("provider down"), "never reached"])

    output = await Agent(model=model, telemetry=False).arun("Hello", session_id="error")

    assert output.status == RunStatus.error
    assert output.content == "provider down"
    assert len(model.calls) == 1  # a failing request is recorded too
    assert model.remaining == 1


async def test_a_provider_error_is_retried_with_the_next_step() -> None:
    model = ScriptedModel(
        [ModelProviderError("overloaded", status_code=503), "Recovered."], retries=1, delay_between_retries=0
    )

    output = await Agent(model=model, telemetry=False).arun("Hello", session_id="retry")

    assert output.status == RunStatus.completed
    assert output.content == "Recovered."
    assert len(model.calls) == 2


async def test_running_out_of_script_is_an_error_run_that_says_so() -> None:
    model = ScriptedModel([ToolCall("get_weather", {"city": "Paris"})])

    output = await weather_agent(model).arun("Weather in Paris?", session_id="exhausted")

    assert output.status == RunStatus.error
    assert "ran out of script: it was given 1 step and this is model call 2" in output.content


def test_running_out_of_script_raises_assertion_error() -> None:
    model = ScriptedModel(["only"])
    model.invoke(messages=[])

    with pytest.raises(AssertionError, match=r"'scripted' ran out of script: it was given 1 step "):
        model.invoke(messages=[])


async def test_every_entry_point_takes_the_next_step() -> None:
    model = ScriptedModel(["one", "two", ToolCall("get_time", {"city": "Oslo"}, id="t-1"), "four"])

    first = model.invoke(messages=[])
    second = await model.ainvoke(messages=[])
    third = list(model.invoke_stream(messages=[]))
    fourth = [delta async for delta in model.ainvoke_stream(messages=[])]

    assert (first.content, second.content, fourth[0].content) == ("one", "two", "four")
    assert third[0].tool_calls == [
        {"id": "t-1", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}}
    ]
    assert [call.stream for call in model.calls] == [False, False, True, True]


async def test_a_list_step_calls_several_tools() -> None:
    model = ScriptedModel(
        [[ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_time", {"city": "Paris"})], "Sunny noon."]
    )
    agent = Agent(model=model, tools=[get_weather, get_time], telemetry=False)

    output = await agent.arun("Weather and time in Paris?", session_id="several")

    assert output.content == "Sunny noon."
    assert sorted(tool.result for tool in output.tools) == ["Noon in Paris", "Sunny in Paris"]
    tool_messages = [message for message in model.calls[1].messages if message["role"] == "tool"]
    assert sorted((m["tool_call_id"], m["content"]) for m in tool_messages) == [
        ("call_1", "Sunny in Paris"),
        ("call_2", "Noon in Paris"),
    ]


async def test_calls_record_messages_tools_and_options() -> None:
    model = ScriptedModel(weather_script())

    await weather_agent(model, instructions="Answer briefly.").arun("Weather in Paris?", session_id="calls")

    first, second = model.calls
    assert isinstance(first, RecordedCall)
    assert [message["role"] for message in first.messages] == ["system", "user"]
    assert "Answer briefly." in first.messages[0]["content"]
    assert first.messages[1] == {"role": "user", "content": "Weather in Paris?"}
    assert first.tools == ["get_weather"]
    assert first.tool_choice is None
    assert first.response_format is None
    assert "compress_tool_results" in first.kwargs
    assert [message["role"] for message in second.messages] == ["system", "user", "assistant", "tool"]
    assert second.messages[2]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_recorded_call_is_a_snapshot() -> None:
    model = ScriptedModel(["ok"])
    message = Message(role="user", content="before")

    model.invoke(messages=[message])
    message.content = "after"

    assert model.calls[0].messages == [{"role": "user", "content": "before"}]


async def test_deepcopy_shares_the_script_and_the_calls() -> None:
    model = ScriptedModel(["first", "second", "third"])

    duplicate = copy.deepcopy(model)
    output = await Agent(model=duplicate, telemetry=False).arun("Hi", session_id="copy")
    second = model.invoke(messages=[])

    assert duplicate is not model
    assert output.content == "first"
    assert second.content == "second"
    assert model.remaining == duplicate.remaining == 1
    assert duplicate.calls is model.calls
    assert len(model.calls) == 2


async def test_a_coordinating_team_delegates_to_a_member() -> None:
    leader = ScriptedModel(
        [
            ToolCall("delegate_task_to_member", {"member_id": "researcher", "task": "Find the weather."}),
            "The team says: sunny.",
        ]
    )
    researcher = ScriptedModel(["Sunny, says the researcher."])
    writer = ScriptedModel([])
    team = Team(
        members=[
            Agent(id="researcher", model=researcher, telemetry=False),
            Agent(id="writer", model=writer, telemetry=False),
        ],
        model=leader,
        mode="coordinate",
        telemetry=False,
    )

    output = await team.arun("What is the weather?", session_id="team")

    assert output.status == RunStatus.completed
    assert output.content == "The team says: sunny."
    assert [member.content for member in output.member_responses] == ["Sunny, says the researcher."]
    assert "delegate_task_to_member" in leader.calls[0].tools
    assert "Find the weather." in str(researcher.calls[0].messages)
    assert "Sunny, says the researcher." in str(leader.calls[1].messages[-1]["content"])
    assert (leader.remaining, researcher.remaining, writer.calls) == (0, 0, [])


@pytest.mark.parametrize(
    ("script", "match"),
    [
        ([{"role": "assistant"}], r"step 0 is \{'role': 'assistant'\}"),
        (["ok", []], r"step 1 is \[\]: expected a str, a ToolCall"),
        ([[ToolCall("a"), "b"]], r"step 0 is"),
    ],
)
def test_an_invalid_step_is_refused(script: list[Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        ScriptedModel(script)


@pytest.mark.parametrize(("chunk_size", "shown"), [(2.5, "2.5"), ("3", "'3'"), (True, "True")])
def test_a_chunk_size_that_is_no_int_is_refused_up_front(chunk_size: object, shown: str) -> None:
    """``2.5`` and ``"3"`` passed (or failed with a bare ``TypeError`` from ``<``) and broke the
    first streamed reply with ``slice indices must be integers``; ``True`` streamed 1 character
    at a time. Each is refused when the model is made, naming the option and the value."""
    with pytest.raises(
        ValueError, match=f"chunk_size must be a positive int or None, got {re.escape(shown)}$"
    ):
        ScriptedModel(["It is sunny."], chunk_size=chunk_size)  # type: ignore[arg-type]


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError, match="chunk_size must be a positive int or None, got 0"):
        ScriptedModel(["ok"], chunk_size=0)
    with pytest.raises(TypeError, match=r"ToolCall\('save'\)\.arguments must be JSON-serialisable"):
        ToolCall("save", {"when": object()})
    with pytest.raises(ValueError, match=r"ToolCall\.name must be a non-empty string"):
        ToolCall("")


def test_repr_shows_progress() -> None:
    model = ScriptedModel(["a", "b"], id="weather-bot")
    model.invoke(messages=[])

    assert repr(model) == "ScriptedModel(id='weather-bot', remaining=1, calls=1)"


def test_scripted_models_refuse_an_unknown_model_name_like_the_router_models() -> None:
    from dynamic_agents.agents.specs.agent import ModelSettings
    from dynamic_agents.exceptions import ConfigurationError
    from dynamic_agents.testing import ScriptedModels

    models = ScriptedModels({"gpt": ["hi"], "claude": ["hello"]})
    with pytest.raises(
        ConfigurationError, match=r"model 'gtp' is not a scripted model; known: \['claude', 'gpt'\]"
    ):
        models.model(ModelSettings(name="gtp"), user_id=None)
