"""mock_llm_router: every deployment answers from its mock reply, never from the network."""

from __future__ import annotations

import asyncio

import pytest

from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.testing import FakeOpenAI, mock_llm_router, mock_router_config


async def test_an_empty_reply_is_refused_not_sent_to_the_provider(fake: FakeOpenAI) -> None:
    # litellm mocks only a truthy mock_response: a deployment with "" would call the real API.
    with pytest.raises(ConfigurationError, match=r"replies\['gpt'\]\[1\] is empty: .*FakeOpenAI"):
        await mock_llm_router({"gpt": ["a", ""]})
    with pytest.raises(ConfigurationError, match=r"replies\['gpt'\] is empty"):
        await mock_llm_router({"gpt": ""})
    assert fake.requests == []


async def test_each_reply_is_answered_from_the_mock(fake: FakeOpenAI) -> None:
    router = await mock_llm_router({"gpt": "Hello", "claude": ("A",)}, num_retries=0)
    try:
        for model, expected in (("gpt", "Hello"), ("claude", "A")):
            reply = await router.acompletion(model=model, messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == expected
    finally:
        await router.aclose()
    assert fake.requests == []


@pytest.mark.parametrize(
    ("replies", "message"),
    [
        ({"gpt": None}, r"replies\['gpt'\] must be a str or a non-empty list of str, got None"),
        ({"gpt": 5}, r"replies\['gpt'\] must be a str or a non-empty list of str, got 5"),
        ({"gpt": b"hi"}, r"replies\['gpt'\] must be a str or a non-empty list of str, got b'hi'"),
        ({"gpt": "a", "claude": []}, r"replies\['claude'\] must be a str or a non-empty list .*, got \[\]"),
        ({"gpt": ["a", None]}, r"replies\['gpt'\]\[1\] must be a str, got None"),
    ],
)
def test_replies_that_cannot_be_mocked_are_refused(replies: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        mock_router_config(replies)  # type: ignore[arg-type]


async def test_a_delay_keeps_each_call_waiting_without_blocking_the_loop(fake: FakeOpenAI) -> None:
    # For tests of what happens while a model is answering (a double text, a cancellation).
    messages = [{"role": "user", "content": "hi"}]
    slow = await mock_llm_router({"gpt": "Slow"}, delay=60, num_retries=0)
    fast = await mock_llm_router({"gpt": "Fast"}, delay=0.01, num_retries=0)
    try:
        waiting = asyncio.ensure_future(slow.acompletion(model="gpt", messages=messages))
        reply = await fast.acompletion(model="gpt", messages=messages)  # the loop runs meanwhile
        assert reply.choices[0].message.content == "Fast"
        assert not waiting.done()  # started first, still waiting out its delay
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        await slow.aclose()
        await fast.aclose()
    assert fake.requests == []


@pytest.mark.parametrize("delay", [0, -1, float("nan"), float("inf"), "1", True])
def test_a_delay_that_is_no_number_of_seconds_is_refused(delay: object) -> None:
    with pytest.raises(ConfigurationError, match="delay must be a finite number of seconds > 0"):
        mock_router_config({"gpt": "Hello"}, delay=delay)  # type: ignore[arg-type]


def test_a_model_list_among_the_settings_is_refused_not_put_in_place_of_the_replies() -> None:
    """``model_list`` is made from ``replies``: one in ``**settings`` replaced every mocked
    deployment without a word (the replies were dropped)."""
    own = [{"model_name": "other", "litellm_params": {"model": "openai/x", "mock_response": "mine"}}]
    with pytest.raises(ConfigurationError, match=r"model_list.*replies"):
        mock_router_config({"gpt": "Hello!"}, model_list=own)
