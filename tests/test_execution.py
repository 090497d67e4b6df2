"""``ExecutionResult.to_response``: every field of a result reaches the response event."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dynamic_agents._redaction import MASK, redact_text
from dynamic_agents.events import AgentRequestEvent, AgentResponseEvent, ResponseStatus, Target, TargetType
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.execution import ExecutionResult, FunctionExecutor, TokenUsage
from dynamic_agents.secrets import SecretValue

CANARY = "sk-canary-to-response-5f1c9a"
SecretValue(CANARY)  # registered with the process-wide redactor, as every resolved secret is

REQUEST = AgentRequestEvent(source="slack", source_id="C1", user_id="u", content="hi")
TARGET = Target(type=TargetType.AGENT, id="helper")
texts = st.text(max_size=20)
metadata = st.dictionaries(st.sampled_from(["target_type", "run_id", "x"]), texts, max_size=3)
results = st.builds(
    ExecutionResult,
    status=st.sampled_from(ResponseStatus),
    content=texts,
    structured_data=st.none() | st.dictionaries(texts, texts, max_size=2),
    error_message=st.none() | texts | st.just(f"401: bad key {CANARY}"),
    tokens=st.none() | st.builds(TokenUsage, total_tokens=st.integers(0, 10**6)),
    duration_ms=st.integers(0, 10**7),
    images=st.lists(texts, max_size=2).map(tuple),
    files=st.lists(st.dictionaries(texts, texts, max_size=2), max_size=2).map(tuple),
    run_id=st.none() | texts,
    target_name=st.none() | texts,
    metadata=metadata,
)
targets = st.none() | st.builds(Target, type=st.sampled_from(TargetType), id=st.just("helper"))


@given(results, targets)
def test_every_field_of_a_result_reaches_the_response(result: ExecutionResult, target: Target | None) -> None:
    response = result.to_response(REQUEST, target)
    expected_type = "structured" if result.structured_data is not None else "text"
    expected_metadata = dict(result.metadata)
    if target is not None:
        expected_metadata.setdefault("target_type", target.type.value)
    if result.run_id is not None:
        expected_metadata.setdefault("run_id", result.run_id)
    assert (response.request_id, response.session_id) == (REQUEST.id, REQUEST.session_id)
    assert response.status == result.status
    assert response.content == result.content
    assert response.content_type == (expected_type if result.ok else "error")
    assert response.structured_data == result.structured_data
    assert response.agent_id == (target.id if target is not None else None)
    assert response.agent_name == result.target_name
    assert response.execution_time_ms == result.duration_ms
    assert response.tokens_used == (result.tokens.total_tokens if result.tokens is not None else None)
    assert (response.images, response.files) == (list(result.images), list(result.files))
    assert response.metadata == expected_metadata
    assert list(response.metadata) == list(expected_metadata)  # in this order on the wire
    assert ("metadata" in response.model_fields_set) == bool(expected_metadata)
    # (masked as redact_text masks it: tested on its own below)
    assert response.error_message == (redact_text(result.error_message) if result.error_message else None)
    assert CANARY not in (response.error_message or "")
    # What is left out because it equals the default reads back the same from the wire.
    assert AgentResponseEvent.model_validate_json(response.model_dump_json()) == response


def test_an_error_message_echoing_a_secret_is_masked_on_the_wire() -> None:
    result = ExecutionResult(ResponseStatus.ERROR, error_message=f"AuthenticationError: key {CANARY}")
    assert CANARY not in result.to_response(REQUEST).model_dump_json()


URL_PASSWORD = "CANARYpw0url0000001"
UNREGISTERED_KEY = "sk-proj-CANARY0never0registered0000001"


@pytest.mark.parametrize(
    "message",
    [
        f"OperationalError: could not connect to postgresql://app:{URL_PASSWORD}@10.0.0.5:5432/db",
        f"HTTPError: GET https://api.example.com/v1/search?q=x&api_key={URL_PASSWORD} failed",
        f"AuthenticationError: Incorrect API key provided: {UNREGISTERED_KEY}.",
        f"ValueError: bad config key={UNREGISTERED_KEY}",
    ],
)
def test_an_error_message_quoting_an_unregistered_credential_is_masked(message: str) -> None:
    """A host's exception may quote a connection URL or a key nobody registered with the redactor:
    the reply goes to a chat user, so a URL's password, credential query values and key-shaped
    words are masked, and the rest of the message is kept."""
    response = ExecutionResult(ResponseStatus.ERROR, error_message=message).to_response(REQUEST)
    shown = response.error_message or ""
    assert URL_PASSWORD not in shown
    assert UNREGISTERED_KEY not in shown
    assert MASK in shown
    assert shown.split(":")[0] == message.split(":", maxsplit=1)[0]  # the exception's type, still there


def test_ordinary_error_text_is_left_as_it_is() -> None:
    message = "RuntimeError: tool 'get_weather' failed for request 6f1c2a9e-0b7d-4c1e-9a55-3b2f1d0e8c7a"
    assert redact_text(message) == message


async def test_a_timeout_raised_inside_the_function_is_an_error_not_the_requests_timeout() -> None:
    """A function's own timeout (a tool's HTTP call, say) is its failure, named as such: only the
    request's ``timeout`` running out answers ``timeout``, with that timeout in the message."""
    target = Target(type=TargetType.AGENT, id="helper")

    async def slow_tool(target: Target, request: AgentRequestEvent) -> str:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)
        return "never"

    def sync_tool(target: Target, request: AgentRequestEvent) -> str:
        raise TimeoutError("the database did not answer")

    for handler, timeout in ((slow_tool, 120.0), (sync_tool, None)):
        result = await FunctionExecutor(handler).execute(target, REQUEST, timeout=timeout)
        assert result.status == ResponseStatus.ERROR, handler
        assert (result.error_message or "").startswith("TimeoutError"), result.error_message

    async def forever(target: Target, request: AgentRequestEvent) -> str:
        await asyncio.Event().wait()
        return "never"

    timed_out = await FunctionExecutor(forever).execute(target, REQUEST, timeout=0.01)
    assert (timed_out.status, timed_out.error_message) == (ResponseStatus.TIMEOUT, "timed out after 0.01s")


async def test_a_function_returning_neither_text_nor_a_result_is_an_error_naming_what_it_returned() -> None:
    """A forgotten ``return`` (``None``) or a dict is not an answer: an error result, not an empty
    ``completed`` reply or a response that cannot be built."""
    target = Target(type=TargetType.AGENT, id="helper")

    async def forgot_to_return(target: Target, request: AgentRequestEvent) -> str:
        return None  # type: ignore[return-value]

    result = await FunctionExecutor(forgot_to_return).execute(target, REQUEST)
    assert result.status == ResponseStatus.ERROR
    assert "forgot_to_return returned NoneType" in (result.error_message or "")


@pytest.mark.parametrize("timeout", ["5", -1, 0, float("nan"), -math.inf, True])
async def test_a_bad_timeout_is_refused_before_the_function_runs(timeout: object) -> None:
    """``"5"`` used to reach ``asyncio.timeout`` (a ``TypeError`` result and an un-awaited
    coroutine), ``-1`` to "time out after -1s": both are a ConfigurationError, the handler never called."""
    calls: list[str] = []

    async def answer(target: Target, request: AgentRequestEvent) -> str:
        calls.append(request.content)
        return "hi"

    with pytest.raises(ConfigurationError, match=r"^timeout must be .*, got "):
        await FunctionExecutor(answer).execute(TARGET, REQUEST, timeout=timeout)  # type: ignore[arg-type]
    assert calls == []


async def test_no_limit_and_a_whole_number_are_valid_timeouts() -> None:
    async def answer(target: Target, request: AgentRequestEvent) -> str:
        return "hi"

    for timeout in (None, math.inf, 5):
        result = await FunctionExecutor(answer).execute(TARGET, REQUEST, timeout=timeout)
        assert (result.status, result.content) == (ResponseStatus.COMPLETED, "hi"), timeout


async def test_the_timeout_bounds_an_async_function_only_a_plain_one_runs_to_its_end() -> None:
    """docs/worker.md: a plain function cannot be interrupted, so its answer stands however long it
    took; the same work awaited in an async function is cut short."""

    def plain(target: Target, request: AgentRequestEvent) -> str:
        time.sleep(0.05)  # the work itself, not a wait for a condition: it outlasts the timeout
        return "done"

    async def awaiting(target: Target, request: AgentRequestEvent) -> str:
        await asyncio.Event().wait()
        return "never"

    finished = await FunctionExecutor(plain).execute(TARGET, REQUEST, timeout=0.01)
    assert (finished.status, finished.content) == (ResponseStatus.COMPLETED, "done")
    cut = await FunctionExecutor(awaiting).execute(TARGET, REQUEST, timeout=0.01)
    assert cut.status == ResponseStatus.TIMEOUT


async def test_on_delta_gets_a_returned_string_once_and_never_a_returned_result() -> None:
    """A string is streamed as one delta; a result the function built is returned as it is (the
    function chose its status and content, which may be an error's), with no delta."""
    deltas: list[str] = []

    async def record(content: str) -> None:
        deltas.append(content)

    async def text(target: Target, request: AgentRequestEvent) -> str:
        return "the answer"

    async def built(target: Target, request: AgentRequestEvent) -> ExecutionResult:
        return ExecutionResult(ResponseStatus.COMPLETED, content="built")

    await FunctionExecutor(text).execute(TARGET, REQUEST, on_delta=record)
    result = await FunctionExecutor(built).execute(TARGET, REQUEST, on_delta=record)
    assert (deltas, result.content) == (["the answer"], "built")


def test_a_status_that_is_not_a_response_status_is_refused_when_the_result_is_built() -> None:
    """``"done"`` used to fail only in ``to_response``, which the worker answered as a reply that
    could not be sent: a ConfigurationError at construction names the field, the value and the valid ones."""
    for status in ("done", 200, None, "COMPLETED"):
        with pytest.raises(ConfigurationError) as caught:
            ExecutionResult(status)  # type: ignore[arg-type]
        message = str(caught.value)
        assert message.startswith("status must be one of 'completed', 'error'"), message
        hint = "; did you mean 'completed'?" if status == "COMPLETED" else ""
        assert message.endswith(f"got {status!r}{hint}"), message


def test_a_status_given_as_its_text_becomes_the_member() -> None:
    result = ExecutionResult("timeout", error_message="slow")  # type: ignore[arg-type]
    assert type(result.status) is ResponseStatus
    assert result.status is ResponseStatus.TIMEOUT
    assert result.to_response(REQUEST).status is ResponseStatus.TIMEOUT


@pytest.mark.parametrize(
    "result",
    [
        ExecutionResult(ResponseStatus.COMPLETED, metadata={"x": object()}),  # type: ignore[dict-item]
        ExecutionResult(ResponseStatus.COMPLETED, run_id=object()),  # type: ignore[arg-type]
    ],
)
def test_an_executors_metadata_is_validated_with_the_target_type_added(result: ExecutionResult) -> None:
    """Only the target's type, our own text, joins the metadata unvalidated: what an executor put
    there (a value, a run id) is still refused if it is not JSON."""
    with pytest.raises(ValidationError, match="metadata"):
        result.to_response(REQUEST, TARGET)
    plain = ExecutionResult(ResponseStatus.COMPLETED)
    assert plain.to_response(REQUEST, TARGET).metadata == {"target_type": "agent"}
