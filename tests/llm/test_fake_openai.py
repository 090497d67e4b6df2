"""FakeOpenAI itself: it answers what the OpenAI API answers, and nothing it does not implement."""

from __future__ import annotations

import json

import httpx
import litellm
import pytest

from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.testing import FakeOpenAI, HTTPErrorStep, ToolCall

KEY = "sk-fake-openai-test-0001"


async def test_chat_completions_are_answered(fake: FakeOpenAI) -> None:
    reply = await litellm.acompletion(
        model="openai/gpt-4o-mini",
        api_base=fake.api_base,
        api_key=KEY,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert reply.choices[0].message.content == "ok"
    assert fake.requests[0].url == f"{fake.api_base}/chat/completions"


async def test_an_api_base_without_v1_gets_404_as_from_openai(fake: FakeOpenAI) -> None:
    # The real API has no /chat/completions at its root: a deployment with this api_base fails in
    # production, so it must fail in tests too.
    with pytest.raises(litellm.BadRequestError, match=r"Invalid URL \(POST /chat/completions\)"):
        await litellm.acompletion(
            model="openai/gpt-4o-mini",
            api_base="http://fake-openai.localhost",
            api_key=KEY,
            messages=[{"role": "user", "content": "hi"}],
            num_retries=0,
        )
    assert fake.requests[0].url == "http://fake-openai.localhost/chat/completions"


async def test_endpoints_it_does_not_implement_get_404_not_a_chat_completion() -> None:
    fake = FakeOpenAI(["scripted reply"])
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        embeddings = await client.post("/embeddings", json={"model": "e", "input": ["x"]})
        listing = await client.get("/chat/completions")
    assert embeddings.status_code == 404
    assert embeddings.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"
    assert listing.status_code == 404
    assert listing.json()["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"
    assert [request.url for request in fake.requests] == [
        f"{fake.api_base}/embeddings",
        f"{fake.api_base}/chat/completions",
    ]
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        chat = await client.post(
            "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert chat.json()["choices"][0]["message"]["content"] == "scripted reply"  # no step was used up


@pytest.mark.parametrize("step", [123, None, [], ["text in a list"], {"content": "hi"}])
def test_a_step_that_is_no_reply_is_refused_when_the_script_is_given(step: object) -> None:
    # Refused up front, naming the step: at call time it would surface as some litellm error
    # (or, for an empty list, as an empty reply).
    with pytest.raises(ConfigurationError, match=r"FakeOpenAI script step 1 is .*: expected a str"):
        FakeOpenAI(["fine", step])  # type: ignore[list-item]


def test_steps_of_every_kind_are_accepted() -> None:
    call = ToolCall("get_weather", {"city": "Paris"})
    fake = FakeOpenAI(["text", call, [call, call], (call,), HTTPErrorStep(500)])
    assert "5 steps left" in repr(fake)


@pytest.mark.parametrize("status", [200, 302, 99, 600])
def test_an_http_error_step_must_be_an_error_status(status: int) -> None:
    # A 200 carrying an error body would reach litellm as a malformed completion, not as an error.
    with pytest.raises(
        ConfigurationError, match=rf"HTTPErrorStep status must be an error status \(400-599\), got {status}"
    ):
        HTTPErrorStep(status)


async def test_an_error_step_can_carry_retry_after() -> None:
    """A 429 with ``Retry-After``, as OpenAI sends it, for tests of a caller's backoff."""
    fake = FakeOpenAI([HTTPErrorStep(429, "Rate limit reached", retry_after=2), HTTPErrorStep(500)])
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        limited = await client.post(
            "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
        failed = await client.post(
            "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
    assert limited.json()["error"]["message"] == "Rate limit reached"
    assert "retry-after" not in failed.headers
    with pytest.raises(ConfigurationError, match="retry_after must be"):
        HTTPErrorStep(429, retry_after=-1)


@pytest.mark.parametrize("step", [123, None, [], {"content": "hi"}])
async def test_a_handler_step_that_is_no_reply_is_refused_naming_it(step: object) -> None:
    # Checked as script steps are: it used to fail deep inside the fake (AttributeError: 'dict'
    # object has no attribute 'id') or, for an empty list, answer an empty reply.
    fake = FakeOpenAI(handler=lambda request: step)  # type: ignore[arg-type, return-value]
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        with pytest.raises(ConfigurationError, match=r"FakeOpenAI handler returned .*: expected a str"):
            await client.post(
                "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            )


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b"\xff"])
async def test_a_body_that_is_not_a_json_object_gets_400_as_from_openai(content: bytes) -> None:
    fake = FakeOpenAI(["scripted reply"])
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        response = await client.post("/chat/completions", content=content)
        assert response.status_code == 400
        assert "could not parse the JSON body" in response.json()["error"]["message"]
        assert fake.requests[0].body == {}
        chat = await client.post(
            "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert chat.json()["choices"][0]["message"]["content"] == "scripted reply"  # no step was used up


def stream_chunks(response: httpx.Response) -> list[dict[str, object]]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("stream_options", [None, {}, {"include_usage": False}])
async def test_a_stream_carries_no_usage_chunk_unless_asked_for(stream_options: object) -> None:
    """OpenAI sends the usage chunk (no choices, ``usage`` set) only for ``stream_options:
    {"include_usage": true}``: code reading usage from a stream that does not ask for it gets none
    in production, so it must get none here (the fake always sent it)."""
    fake = FakeOpenAI(["Hello", "Hello"])
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if stream_options is not None:
        body["stream_options"] = stream_options
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        plain = stream_chunks(await client.post("/chat/completions", json=body))
        asked = stream_chunks(
            await client.post("/chat/completions", json={**body, "stream_options": {"include_usage": True}})
        )
    assert all(chunk.get("usage") is None and chunk["choices"] for chunk in plain)
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in plain) == "Hello"  # type: ignore[index]
    assert asked[-1]["choices"] == []
    assert asked[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


HI = {"role": "user", "content": "hi"}
CALL = {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
OTHER_CALL = {**CALL, "id": "call_b"}
ASKED = {"role": "assistant", "content": None, "tool_calls": [CALL, OTHER_CALL]}


def answer(call_id: str) -> dict[str, str]:
    return {"role": "tool", "tool_call_id": call_id, "content": "42"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [HI]}, "you must provide a model parameter"),
        ({"model": "", "messages": [HI]}, "you must provide a model parameter"),
        ({"model": "m"}, "Missing required parameter: 'messages'."),
        ({"model": "m", "messages": []}, "Invalid 'messages': empty array."),
        ({"model": "m", "messages": "hi"}, "Invalid type for 'messages'"),
        ({"model": "m", "messages": [HI, ASKED, answer("call_a")]}, "did not have response messages: call_b"),
        ({"model": "m", "messages": [HI, ASKED, HI]}, "did not have response messages: call_a, call_b"),
        ({"model": "m", "messages": [HI, ASKED]}, "did not have response messages: call_a, call_b"),
        ({"model": "m", "messages": [HI, answer("call_a")]}, "must be a response to a preceeding message"),
        (
            {"model": "m", "messages": [HI, ASKED, {**answer("call_a"), "tool_call_id": ["call_a"]}]},
            "preceeding",
        ),
        (
            {"model": "m", "messages": [HI, ASKED, answer("call_a"), answer("call_b"), HI, answer("call_a")]},
            "must be a response to a preceeding message",
        ),
        (
            {"model": "m", "messages": [HI, ASKED, answer("call_a"), answer("call_x"), answer("call_b")]},
            "must be a response to a preceeding message",
        ),
    ],
)
async def test_a_request_openai_refuses_gets_its_400_and_uses_no_step(
    body: dict[str, object], message: str
) -> None:
    """OpenAI refuses a chat completion without a model or messages, and a conversation whose tool
    calls and tool results do not pair up (an agent loop that drops or invents a tool result): the
    fake answered it, so such a bug passed its tests and failed in production."""
    fake = FakeOpenAI(["scripted reply"])
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        refused = await client.post("/chat/completions", json=body)
        assert refused.status_code == 400
        assert message in refused.json()["error"]["message"]
        paired = [HI, ASKED, answer("call_b"), answer("call_a"), HI]  # in any order
        chat = await client.post("/chat/completions", json={"model": "m", "messages": paired})
    assert chat.json()["choices"][0]["message"]["content"] == "scripted reply"  # no step was used up


@pytest.mark.parametrize(
    ("message", "refusal"),
    [
        ("hi", "Invalid type for 'messages[1]': expected an object, but got a string instead."),
        ({"content": "hi"}, "Missing required parameter: 'messages[1].role'."),
        (
            {"role": "bot", "content": "hi"},
            "Invalid value: 'bot'. Supported values are: 'system', 'assistant'",
        ),
        ({"role": "User", "content": "hi"}, "Invalid value: 'User'."),
    ],
)
async def test_a_message_openai_cannot_read_gets_its_400(message: object, refusal: str) -> None:
    """A message that is no object, or has no role or one OpenAI does not know (a typo, a
    framework's own role name): OpenAI refuses the request, so must the fake."""
    fake = FakeOpenAI(["scripted reply"])
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        refused = await client.post("/chat/completions", json={"model": "m", "messages": [HI, message]})
        assert refused.status_code == 400
        assert refusal in refused.json()["error"]["message"]
        roles = ["system", "developer", "user", "assistant"]
        every_role = [{"role": role, "content": "hi"} for role in roles]
        chat = await client.post("/chat/completions", json={"model": "m", "messages": every_role})
    assert chat.json()["choices"][0]["message"]["content"] == "scripted reply"  # no step was used up


async def test_litellm_raises_bad_request_for_a_tool_call_left_unanswered(fake: FakeOpenAI) -> None:
    with pytest.raises(litellm.BadRequestError, match="call_b"):
        await litellm.acompletion(
            model="openai/gpt-4o-mini",
            api_base=fake.api_base,
            api_key=KEY,
            messages=[HI, ASKED, answer("call_a")],
            num_retries=0,
        )


async def test_a_streamed_tool_call_comes_in_pieces_as_from_openai() -> None:
    """OpenAI streams a tool call as a first delta with its ``id``, ``type`` and name (arguments
    ``""``), then deltas carrying only its ``index`` and a piece of the arguments: code that
    parses each delta's arguments on its own, or expects the id on every delta, must fail here as
    it fails in production (the fake sent each call whole in one delta)."""
    calls = [ToolCall("get_weather", {"city": "Paris", "unit": "C"}), ToolCall("get_time", {"tz": "CET"})]
    fake = FakeOpenAI([calls])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.api_base) as client:
        chunks = stream_chunks(await client.post("/chat/completions", json=body))
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]  # type: ignore[index]
    pieces: dict[int, list[dict[str, object]]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", []):
            pieces.setdefault(call["index"], []).append(call)
    assert sorted(pieces) == [0, 1]
    for index, call in enumerate(calls):
        first, *rest = pieces[index]
        assert isinstance(first["id"], str)
        assert first["id"].startswith("call_")
        assert first["type"] == "function"
        assert first["function"] == {"name": call.name, "arguments": ""}
        assert len(rest) >= 2
        assert all(
            set(piece) == {"index", "function"} and set(piece["function"]) == {"arguments"} for piece in rest
        )  # type: ignore[arg-type]
        arguments = "".join(piece["function"]["arguments"] for piece in rest)  # type: ignore[index]
        assert json.loads(arguments) == call.arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]


async def test_litellm_assembles_a_streamed_tool_call() -> None:
    fake = FakeOpenAI([ToolCall("get_weather", {"city": "Paris"}, id="call_w")])
    with fake.installed():
        stream = await litellm.acompletion(
            model="openai/gpt-4o-mini",
            api_base=fake.api_base,
            api_key=KEY,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    reply = litellm.stream_chunk_builder(chunks)
    (call,) = reply.choices[0].message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_w",
        "get_weather",
        {"city": "Paris"},
    )


def test_installing_without_litellm_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """``installed()`` imports litellm (the extra ``agents``): without it, the library's typed
    error saying what to install, not a bare ``ImportError``."""
    import sys

    from dynamic_agents.exceptions import MissingDependencyError

    monkeypatch.setitem(sys.modules, "litellm", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"dynamic-agents\[agents\]"), FakeOpenAI().installed():
        pass
