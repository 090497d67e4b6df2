"""mock_llm_router: every deployment answers from its mock reply, never from the network."""

from __future__ import annotations

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
