from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import random
import re
import string
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from dynamic_agents.exceptions import (
    ConfigurationError,
    IdentityForbiddenError,
    IdentityRateLimitedError,
    IdentityUnavailableError,
    SecretNotFoundError,
    SecretReferenceError,
    SecretsUnavailableError,
)
from dynamic_agents.secrets import (
    ChainSource,
    EnvironmentSource,
    IdentityClient,
    IdentitySource,
    SecretChange,
    SecretKey,
    SecretsManager,
    SecretSource,
    SecretValue,
    StaticSource,
    parse_reference,
)
from dynamic_agents.testing import InMemoryIdentityService
from tests.support.waiting import wait_until

URL = "http://identity.test.localhost"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingSource(SecretSource):
    """Wraps a StaticSource; counts fetches, can fail, can hold answers until released."""

    def __repr__(self) -> str:
        return "<CountingSource>"

    def __init__(self, static: StaticSource) -> None:
        self.static = static
        self.fetches: list[SecretKey] = []
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
        self.fetches.append(key)
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return await self.static.fetch(key)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source() -> CountingSource:
    return CountingSource(
        StaticSource(
            {"openai": {"api_key": "sk-system-000001", "org_id": "org-000001"}},
            users={"alice": {"openai": {"api_key": "sk-alice-0000001"}}},
            named={("openai", "team-a"): {"api_key": "sk-team-a-000001"}},
        )
    )


@pytest.fixture
def manager(source: CountingSource, clock: Clock) -> SecretsManager:
    return SecretsManager(source, ttl=300, negative_ttl=30, stale_grace=60, error_retry=5, clock=clock)


async def test_get_returns_a_masked_value(manager: SecretsManager) -> None:
    value = await manager.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-system-000001"
    assert repr(value) == "SecretValue('**********')"
    assert str(value) == f"{value}" == "**********"


async def test_a_secret_value_cannot_be_pickled() -> None:
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(SecretValue("sk-never-on-disk"))


def test_a_secret_value_that_is_not_valid_text_is_a_configuration_error_without_the_value() -> None:
    # a lone surrogate (bytes that were not UTF-8, decoded with surrogateescape) made the redactor's
    # percent-encoding raise a UnicodeEncodeError whose .object was the secret
    canary = "sk-CANARY-\udcff-0123456789"
    with pytest.raises(ConfigurationError) as caught:
        SecretValue(canary)
    assert str(caught.value) == (
        "a SecretValue holds text, and this one has a lone surrogate at position 10 (bytes that "
        "are not UTF-8?): it cannot be sent anywhere"
    )
    assert caught.value.__context__ is None
    assert canary not in repr(caught.value.args)


@pytest.mark.parametrize("mapped", [True, False])
async def test_an_environment_variable_that_is_not_utf8_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, mapped: bool
) -> None:
    canary = b"sk-CANARY-\xff-0123456789".decode("utf-8", "surrogateescape")  # as os.environ reads it
    variable = "OPENAI_API_KEY" if mapped else "CANARY_NOT_UTF8"
    monkeypatch.setenv(variable, canary)
    manager = SecretsManager(EnvironmentSource())
    with pytest.raises(ConfigurationError) as caught:
        await manager.resolve(f"os.environ/{variable}")
    assert str(caught.value) == (
        f"environment variable {variable!r} holds bytes that are not UTF-8 (at position 10): set "
        "it to the secret as UTF-8 text"
    )
    assert caught.value.__context__ is None
    await manager.aclose()


async def test_hits_do_not_fetch_until_the_ttl_runs_out(
    manager: SecretsManager, source: CountingSource, clock: Clock
) -> None:
    for _ in range(3):
        await manager.get("openai", "api_key")
    await manager.get("openai", "org_id")  # same secret, another field: same entry
    assert len(source.fetches) == 1
    assert manager.stats.hits == 3
    clock.now += 301
    await manager.get("openai", "api_key")
    assert len(source.fetches) == 2


async def test_missing_secrets_are_remembered_briefly(
    manager: SecretsManager, source: CountingSource, clock: Clock
) -> None:
    assert await manager.get("groq", "api_key") is None
    assert await manager.get("groq", "api_key") is None
    assert len(source.fetches) == 1
    clock.now += 31
    source.static.set(SecretKey("groq"), {"api_key": "gsk-created-later"})
    value = await manager.get("groq", "api_key")
    assert value is not None
    assert value.reveal() == "gsk-created-later"


async def test_missing_field_is_none_and_require_raises(manager: SecretsManager) -> None:
    assert await manager.get("openai", "nope") is None
    with pytest.raises(SecretNotFoundError, match="'nope'"):
        await manager.require("openai", "nope")


async def test_concurrent_misses_share_one_fetch(manager: SecretsManager, source: CountingSource) -> None:
    source.gate = asyncio.Event()
    gets = [asyncio.create_task(manager.get("openai", "api_key")) for _ in range(1000)]
    await wait_until(lambda: len(source.fetches) == 1, what="the first fetch to start")
    source.gate.set()
    values = await asyncio.gather(*gets)
    assert {v.reveal() for v in values if v is not None} == {"sk-system-000001"}
    assert len(source.fetches) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(
    manager: SecretsManager, source: CountingSource
) -> None:
    source.gate = asyncio.Event()
    first = asyncio.create_task(manager.get("openai", "api_key"))
    second = asyncio.create_task(manager.get("openai", "api_key"))
    await wait_until(lambda: len(source.fetches) == 1)
    first.cancel()
    source.gate.set()
    value = await second
    assert value is not None
    assert len(source.fetches) == 1


async def test_closing_ends_waiting_gets_with_an_error_not_a_cancellation(
    manager: SecretsManager, source: CountingSource
) -> None:
    # The callers were not cancelled: a CancelledError would make them (and their task groups)
    # believe they were, and stop instead of handling an unavailable secret.
    source.gate = asyncio.Event()
    waiting = asyncio.create_task(manager.get("openai", "api_key"))
    await wait_until(lambda: len(source.fetches) == 1, what="the fetch to start")
    await manager.aclose()
    with pytest.raises(SecretsUnavailableError, match="closed"):
        await waiting
    assert not waiting.cancelled()


async def test_a_cancelled_caller_is_still_cancelled_when_the_fetch_is_too(
    manager: SecretsManager, source: CountingSource
) -> None:
    source.gate = asyncio.Event()
    waiting = asyncio.create_task(manager.get("openai", "api_key"))
    await wait_until(lambda: len(source.fetches) == 1, what="the fetch to start")
    waiting.cancel()
    await manager.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_stale_values_are_served_within_grace_then_refused(
    manager: SecretsManager, source: CountingSource, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    await manager.get("openai", "api_key")
    source.failure = IdentityUnavailableError("GET /api/v1/secrets answered 500", status=500)
    clock.now += 300 + 30  # expired, 30 s into a 60 s grace
    with caplog.at_level(logging.WARNING, logger="dynamic_agents"):
        value = await manager.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-system-000001"
    assert manager.stats.stale_served == 1
    assert "serving the cached value" in caplog.text
    assert "sk-system-000001" not in caplog.text
    fetches = len(source.fetches)
    await manager.get("openai", "api_key")  # within error_retry: no new attempt
    assert len(source.fetches) == fetches

    clock.now += 31  # grace over
    with pytest.raises(SecretsUnavailableError, match="nothing usable is cached"):
        await manager.get("openai", "api_key")

    source.failure = None  # Identity is back
    value = await manager.get("openai", "api_key")
    assert value is not None


async def test_nothing_cached_and_source_down_raises(manager: SecretsManager, source: CountingSource) -> None:
    source.failure = IdentityUnavailableError("down", status=503)
    with pytest.raises(SecretsUnavailableError):
        await manager.get("openai", "api_key")


async def test_a_refusal_evicts_instead_of_serving_stale(
    manager: SecretsManager, source: CountingSource, clock: Clock
) -> None:
    await manager.get("openai", "api_key", "alice")
    source.failure = IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)
    clock.now += 301
    with pytest.raises(IdentityForbiddenError):
        await manager.get("openai", "api_key", "alice")
    source.failure = IdentityUnavailableError("down", status=503)
    with pytest.raises(SecretsUnavailableError):  # nothing stale left to serve
        await manager.get("openai", "api_key", "alice")


async def test_users_never_get_each_others_or_the_system_secret(
    manager: SecretsManager, source: CountingSource
) -> None:
    alice = await manager.get("openai", "api_key", "alice")
    assert alice is not None
    assert alice.reveal() == "sk-alice-0000001"
    assert await manager.get("openai", "api_key", "bob") is None
    assert await manager.get("openai", "org_id", "alice") is None  # not the system's org id
    system = await manager.get("openai", "api_key")
    assert system is not None
    assert system.reveal() == "sk-system-000001"
    assert {key.user_id for key in source.fetches} == {"alice", "bob", None}


async def test_user_fallback_to_the_system_secret_when_configured(source: CountingSource) -> None:
    manager = SecretsManager(source, user_fallback_to_system=True)
    bob = await manager.get("openai", "api_key", "bob")
    assert bob is not None
    assert bob.reveal() == "sk-system-000001"
    alice = await manager.get("openai", "api_key", "alice")
    assert alice is not None
    assert alice.reveal() == "sk-alice-0000001"


async def test_a_user_id_that_is_no_str_is_refused_not_answered_with_the_systems_key() -> None:
    # an int id (a Discord user's) listed the user's secrets, whose "12345" never equalled 12345: no
    # secret, so get() returned None, or with user_fallback_to_system the system's key: the wrong
    # account paid for the user's calls
    service = InMemoryIdentityService(tokens={"service-token": None})
    service.add_secret("main", "openai", {"api_key": "sk-system-0000001"})
    service.add_secret("mine", "openai", {"api_key": "sk-user-12345-001"}, user_id="12345")
    client = IdentityClient(URL, token="service-token", transport=service.mock_transport())
    manager = SecretsManager(IdentitySource(client), user_fallback_to_system=True)
    with pytest.raises(ConfigurationError) as refused:
        await manager.get("openai", "api_key", 12345)  # type: ignore[arg-type]
    assert str(refused.value) == (
        "SecretsManager.get()'s user_id must be a user's id (a non-empty str) or None (the system's), "
        "got 12345 (an int)"
    )
    with pytest.raises(ConfigurationError, match=r"^SecretsManager.warm_up\(\)'s user_id must be "):
        await manager.warm_up(["openai"], user_id=12345)  # type: ignore[arg-type]
    assert service.count() == 0
    user = await manager.get("openai", "api_key", "12345")
    assert user is not None
    assert user.reveal() == "sk-user-12345-001"
    await manager.aclose()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("openai", None), "field must be a field name (a non-empty str), got None"),
        (("openai", ""), "field must be a field name (a non-empty str), got ''"),
        (("openai", ["api_key"]), "field must be a field name (a non-empty str), got a list"),
        ((None, "api_key"), "provider must be a provider name (a non-empty str), got None"),
        (("", "api_key"), "provider must be a provider name (a non-empty str), got ''"),
        (
            ("openai", "api_key", ["alice"]),
            "user_id must be a user's id (a non-empty str) or None (the system's), got a list",
        ),
        (
            ("openai", "api_key", ""),
            "user_id must be a user's id (a non-empty str) or None (the system's), got ''",
        ),
    ],
)
async def test_a_lookup_that_names_nothing_is_refused_not_answered_none(
    manager: SecretsManager, source: CountingSource, arguments: tuple[Any, ...], message: str
) -> None:
    # each was None (no such secret), a fetch of every provider's secrets, or a bare error
    await manager.get("openai", "api_key")  # cached: a field asked of it is checked too
    with pytest.raises(ConfigurationError) as refused:
        await manager.get(*arguments)
    assert str(refused.value) == f"SecretsManager.get()'s {message}"
    with pytest.raises(ConfigurationError, match=r"^SecretsManager.get\(\)'s name must be "):
        await manager.get("openai", "api_key", name="")
    assert len(source.fetches) == 1


@pytest.mark.parametrize("chained", [False, True])
async def test_a_sources_error_quoting_a_secret_is_masked_in_the_errors_raised(chained: bool) -> None:
    # a source's error text may quote what it was sent: ChainSource masked it in its log line, but
    # its own SecretsUnavailableError, and the manager's around it, carried it in clear
    canary = SecretValue("tok-CANARY-vault-0123456789")
    unregistered = "sk-proj-CANARYunregistered0123456789"  # shaped like a key: masked as logged

    class Vault(SecretSource):
        async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
            raise SecretsUnavailableError(f"vault refused the token {canary.reveal()} ({unregistered})")

    source: SecretSource = ChainSource(Vault(), EnvironmentSource(environ={})) if chained else Vault()
    manager = SecretsManager(source)
    with pytest.raises(SecretsUnavailableError) as caught:
        await manager.get("openai", "api_key")
    assert "vault refused the token ********** (**********)" in str(caught.value)
    assert canary.reveal() not in str(caught.value)
    if chained:
        with pytest.raises(SecretsUnavailableError) as direct:
            await source.fetch(SecretKey("openai"))
        assert str(direct.value).endswith(": vault refused the token ********** (**********)")
    await manager.aclose()


async def test_named_secrets(manager: SecretsManager) -> None:
    value = await manager.get("openai", "api_key", name="team-a")
    assert value is not None
    assert value.reveal() == "sk-team-a-000001"


async def test_references(manager: SecretsManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIN_SETTING", "from-the-environment")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cases = {
        "secret:openai:api_key": "sk-system-000001",
        "secret:openai/team-a:api_key": "sk-team-a-000001",
        "os.environ/OPENAI_API_KEY": "sk-system-000001",  # mapped: read from the secret sources
        "os.environ/PLAIN_SETTING": "from-the-environment",  # unmapped: the environment
        "https://api.example.com/v1": "https://api.example.com/v1",  # a plain value
    }
    for reference, expected in cases.items():
        assert (await manager.resolve(reference)).reveal() == expected, reference
    alice = await manager.resolve("secret:openai:api_key", user_id="alice")
    assert alice.reveal() == "sk-alice-0000001"


@pytest.mark.parametrize(
    "reference",
    [
        "secret:openai",
        "secret:OpenAI:api_key",
        "secret::x",
        "os.environ/",
        "os.environ/1X",
        # a reference in another case, or after a space: not a plain value sent as the API key
        "Secret:openai:api_key",
        "SECRET:openai:api_key",
        "OS.ENVIRON/OPENAI_API_KEY",
        " os.environ/OPENAI_API_KEY",
        "\tsecret:openai:api_key",
    ],
)
async def test_malformed_references_are_refused(manager: SecretsManager, reference: str) -> None:
    with pytest.raises(SecretReferenceError, match="malformed"):
        await manager.resolve(reference)


@pytest.mark.parametrize(
    ("reference", "shown"),
    [  # a line of a .env file, pasted after the prefix
        ("os.environ/OPENAI_API_KEY=sk-proj-Xq7Tsecretvalue", "'os.environ/OPENAI_API_KEY…'"),
        ("secret:openai:api_key=sk-proj-Xq7Tsecretvalue", "'secret:openai:api_key…'"),
        ("secret:openai:api_key sk-proj-Xq7Tsecretvalue", "'secret:openai:api_key…'"),
        ("os.environ/OPENAI_API_KEY\tsk-proj-Xq7Tsecretvalue", "'os.environ/OPENAI_API_KEY…'"),
        # a key in place of a reference's parts, or after a whole reference
        ("secret:sk-proj-xq7tsecretvalue", "'secret:…'"),
        ("secret:openai:api_key:sk-proj-Xq7Tsecretvalue", "'secret:openai:api_key…'"),
        ("secret:openai/sk-proj-Xq7Tsecretvalue", "'secret:…'"),
    ],
)
async def test_a_malformed_reference_is_not_echoed_past_its_reference_part(
    manager: SecretsManager, reference: str, shown: str
) -> None:
    with pytest.raises(SecretReferenceError, match="malformed") as caught:
        await manager.resolve(reference)
    assert "xq7tsecretvalue" not in str(caught.value).lower()
    assert shown in str(caught.value)


async def test_missing_references_raise(manager: SecretsManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_THING", raising=False)
    with pytest.raises(SecretNotFoundError, match="UNSET_THING"):
        await manager.resolve("os.environ/UNSET_THING")
    with pytest.raises(SecretNotFoundError):
        await manager.resolve("secret:anthropic:api_key")


async def test_environment_fallback_when_identity_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-00001")
    identity = CountingSource(StaticSource())
    identity.failure = IdentityUnavailableError("down", status=503)
    manager = SecretsManager(ChainSource(identity, EnvironmentSource()))
    assert (await manager.resolve("os.environ/OPENAI_API_KEY")).reveal() == "sk-from-env-00001"
    without_fallback = SecretsManager(identity)
    with pytest.raises(SecretsUnavailableError):
        await without_fallback.resolve("os.environ/OPENAI_API_KEY")


def _chain_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.getMessage().startswith("secret source ")
    ]


def _stale_records(caplog: pytest.LogCaptureFixture, key: str = "openai (system)") -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.getMessage().startswith((f"secret {key} ", f"secret {key}:"))
    ]


async def test_serving_stale_is_warned_of_once_per_key_until_fetched_again(
    manager: SecretsManager, source: CountingSource, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # a WARNING at every retry (every error_retry: ~120 per key over a 600 s grace)
    await manager.get("openai", "api_key")
    await manager.get("openai", "api_key", "alice")
    source.failure = IdentityUnavailableError("GET /api/v1/secrets answered 503", status=503)
    clock.now += 300  # expired: 60 s of grace
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        for _ in range(4):
            assert await manager.get("openai", "api_key") is not None
            clock.now += 5  # error_retry: asked again
        source.failure = IdentityRateLimitedError("GET /api/v1/secrets answered 429", status=429)
        for _ in range(2):
            assert await manager.get("openai", "api_key") is not None
            clock.now += 5
        assert await manager.get("openai", "api_key", "alice") is not None  # a key of its own
        source.failure = None
        source.static.set(SecretKey("openai"), {"api_key": "sk-rotated-000001"})
        value = await manager.get("openai", "api_key")
        assert value is not None
        assert value.reveal() == "sk-rotated-000001"
        clock.now += 300
        source.failure = IdentityUnavailableError("down again", status=503)
        assert await manager.get("openai", "api_key") is not None  # a new outage: told again
    assert len(source.fetches) == 2 + 4 + 2 + 1 + 1 + 1
    assert [(level, message.split(";")[0]) for level, message in _stale_records(caplog)] == [
        ("WARNING", "secret openai (system) could not be fetched (IdentityUnavailableError)"),
        ("DEBUG", "secret openai (system) could not be fetched again (IdentityUnavailableError)"),
        ("DEBUG", "secret openai (system) could not be fetched again (IdentityUnavailableError)"),
        ("DEBUG", "secret openai (system) could not be fetched again (IdentityUnavailableError)"),
        ("WARNING", "secret openai (system) could not be fetched (IdentityRateLimitedError)"),
        ("DEBUG", "secret openai (system) could not be fetched again (IdentityRateLimitedError)"),
        ("INFO", "secret openai (system) fetched again after IdentityRateLimitedError"),
        ("WARNING", "secret openai (system) could not be fetched (IdentityUnavailableError)"),
    ]
    assert _stale_records(caplog)[0][1] == (
        "secret openai (system) could not be fetched (IdentityUnavailableError); serving the "
        "cached value, 60s of grace left; asked again in 5s (failing so again: at DEBUG)"
    )
    assert [level for level, _ in _stale_records(caplog, "openai (user 'alice')")] == ["WARNING"]
    assert "sk-system-000001" not in caplog.text
    assert "sk-rotated-000001" not in caplog.text


async def test_a_chain_tells_once_of_a_source_failing_while_a_later_one_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Identity down, the environment answering: the operator heard nothing of the outage
    canary = "sk-CANARY-chain-fallback-0001"
    service = InMemoryIdentityService(tokens={"service-token": None})
    service.add_secret("main", "openai", {"api_key": "sk-identity-000001"})
    client = IdentityClient(URL, token="service-token", transport=service.mock_transport(), retries=0)
    chain = ChainSource(IdentitySource(client), StaticSource({"openai": {"api_key": canary}}))
    service.down = True
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        for _ in range(3):
            values = await chain.fetch(SecretKey("openai"))
            assert values is not None
            assert values["api_key"].reveal() == canary
        service.down = False
        for _ in range(2):
            values = await chain.fetch(SecretKey("openai"))
            assert values is not None
            assert values["api_key"].reveal() == "sk-identity-000001"
    source = f"IdentitySource(IdentityClient('{URL}'))"
    failure = "IdentityUnavailableError: GET /api/v1/secrets answered 503: service unavailable"
    assert _chain_records(caplog) == [
        (
            "WARNING",
            f"secret source {source} failed for openai (system) ({failure}); the sources after it "
            "are asked while it fails",
        ),
        ("DEBUG", f"secret source {source} failed again for openai (system) ({failure})"),
        ("DEBUG", f"secret source {source} failed again for openai (system) ({failure})"),
        ("INFO", f"secret source {source} answers again (asked for openai (system))"),
    ]
    assert canary not in caplog.text
    await client.aclose()


async def test_a_chain_warns_again_of_a_source_failing_otherwise_and_masks_what_it_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = "sk-CANARY-in-an-error-000001"
    failing = CountingSource(StaticSource())
    chain = ChainSource(failing, StaticSource({"openai": {"api_key": "sk-fallback-000001"}}))
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        failing.failure = IdentityUnavailableError("identity is down")
        await chain.fetch(SecretKey("openai"))
        failing.failure = IdentityRateLimitedError(f"rate limited, the key {canary} said", status=429)
        await chain.fetch(SecretKey("openai"))
        with pytest.raises(SecretsUnavailableError):  # every key: it is the source that fails
            await chain.fetch(SecretKey("openai", "alice"))
        last = ChainSource(StaticSource(), failing)
        with pytest.raises(SecretsUnavailableError):  # no source after it: none is said to answer
            await last.fetch(SecretKey("openai"))
    assert [(level, message.split(" (")[0]) for level, message in _chain_records(caplog)] == [
        ("WARNING", "secret source <CountingSource> failed for openai"),
        ("WARNING", "secret source <CountingSource> failed for openai"),
        ("DEBUG", "secret source <CountingSource> failed again for openai"),
        ("WARNING", "secret source <CountingSource> failed for openai"),
    ]
    assert _chain_records(caplog)[-1][1].endswith("said)")
    assert "IdentityRateLimitedError: rate limited, the key ********** said" in caplog.text
    assert canary not in caplog.text


async def test_a_chain_does_not_ask_around_a_refusal_and_needs_a_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/secrets.md: a 403 (access revoked) ends the chain, the environment is not asked in its
    place; a chain of no source is a ConfigurationError."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-00002")
    identity = CountingSource(StaticSource())
    identity.failure = IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)
    with pytest.raises(IdentityForbiddenError):
        await ChainSource(identity, EnvironmentSource()).fetch(SecretKey("openai"))
    with pytest.raises(ConfigurationError, match=r"^ChainSource needs at least one source$"):
        ChainSource()


async def test_an_identity_source_closes_its_client_unless_told_it_does_not_own_it() -> None:
    service = InMemoryIdentityService(tokens={"service-token": None})
    owned = IdentityClient(URL, token="service-token", transport=service.mock_transport())
    shared = IdentityClient(URL, token="service-token", transport=service.mock_transport())
    await IdentitySource(owned).aclose()
    await IdentitySource(shared, owns_client=False).aclose()
    with pytest.raises(IdentityUnavailableError, match="the Identity client was closed"):
        await owned.list_providers()
    assert await shared.list_providers() is not None  # still open: its owner closes it
    await shared.aclose()


async def test_resolve_all_walks_nested_config(manager: SecretsManager) -> None:
    config = {
        "model": "gpt-4o",
        "api_key": "secret:openai:api_key",
        "headers": {"X-Org": "secret:openai:org_id"},
        "fallbacks": ["secret:openai/team-a:api_key", 3, None],
        "pair": ("plain", "secret:openai:api_key"),
    }
    resolved = await manager.resolve_all(config)
    assert resolved["model"] == "gpt-4o"
    assert resolved["api_key"].reveal() == "sk-system-000001"
    assert resolved["headers"]["X-Org"].reveal() == "org-000001"
    assert resolved["fallbacks"][0].reveal() == "sk-team-a-000001"
    assert resolved["fallbacks"][1:] == [3, None]
    assert resolved["pair"][0] == "plain"
    assert config["api_key"] == "secret:openai:api_key"  # the input is not changed


async def test_resolve_all_with_where_says_which_field_failed(manager: SecretsManager) -> None:
    config = {"api_key": "secret:openai:api_key", "extra": [{"token": "secret:slack:bot_token"}]}
    with pytest.raises(SecretNotFoundError) as caught:
        await manager.resolve_all(config, where="interfaces.slack.settings")
    assert str(caught.value).startswith("interfaces.slack.settings.extra[0].token: no secret field")
    assert caught.value.__context__ is None  # the located error stands in for the original
    with pytest.raises(SecretReferenceError, match=r"^settings\.url: malformed secret reference"):
        await manager.resolve_all({"url": "secret:Openai:api_key"}, where="settings")
    with pytest.raises(SecretNotFoundError) as unlocated:
        await manager.resolve_all(config)
    assert str(unlocated.value).startswith("no secret field")  # without where: as the manager says it


async def test_listeners_hear_about_rotation(
    manager: SecretsManager, source: CountingSource, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[SecretChange] = []
    heard_async: list[SecretChange] = []

    async def async_listener(change: SecretChange) -> None:
        heard_async.append(change)

    def broken(change: SecretChange) -> None:
        raise RuntimeError("listener bug")

    manager.on_change(heard.append)
    manager.on_change(broken)
    remove = manager.on_change(async_listener)
    await manager.get("openai", "api_key")
    source.static.set(SecretKey("openai"), {"api_key": "sk-rotated-000002", "org_id": "org-000001"})
    assert await manager.refresh("openai") == 1
    assert heard == heard_async == [SecretChange(SecretKey("openai"), frozenset({"api_key"}))]
    assert "listener bug" in caplog.text
    assert await manager.refresh() == 0  # unchanged: nobody is told
    remove()
    source.static.set(SecretKey("openai"), {"api_key": "sk-rotated-000003"})
    await manager.refresh()
    assert len(heard_async) == 1
    assert heard[-1].fields == {"api_key", "org_id"}
    value = await manager.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-rotated-000003"


async def test_keys_in_use_are_refreshed_ahead_of_expiry(source: CountingSource, clock: Clock) -> None:
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, clock=clock)
    await manager.get("openai", "api_key")
    await manager.get("openai", "api_key", name="team-a")
    clock.now += 10
    await manager.get("openai", "api_key")  # used since fetched; team-a is not
    clock.now += 75  # 15 s before expiry: inside the refresh window
    assert await manager.refresh_due() == 1
    assert [key.name for key in source.fetches] == [None, "team-a", None]
    fetches = len(source.fetches)
    await manager.get("openai", "api_key")
    assert len(source.fetches) == fetches  # refreshed: still fresh, a hit


async def test_keys_kept_fresh_are_refreshed_ahead_of_expiry_unread(
    source: CountingSource, clock: Clock
) -> None:
    """A holder of a resolved value (the LLM router's deployments) reads it once and never again:
    keep_fresh() counts it in use, so a rotation reaches the holder through on_change."""
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, clock=clock)
    changes: list[SecretChange] = []
    manager.on_change(changes.append)
    await manager.get("openai", "api_key")
    await manager.get("openai", "api_key", name="team-a")
    release = manager.keep_fresh("openai")
    manager.keep_fresh("openai")  # a second holder
    source.static.set(SecretKey("openai"), {"api_key": "sk-rotated-000009", "org_id": "org-000001"})
    clock.now += 85  # 15 s before expiry, and not read since it was fetched
    assert await manager.refresh_due() == 1  # the kept one, not team-a
    assert [(change.key.provider, change.key.name, change.fields) for change in changes] == [
        ("openai", None, frozenset({"api_key"}))
    ]
    release()
    release()  # once per holder: the other one still keeps it
    clock.now += 85
    assert await manager.refresh_due() == 1


async def test_a_key_no_holder_keeps_is_left_to_expire(source: CountingSource, clock: Clock) -> None:
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, clock=clock)
    await manager.get("openai", "api_key")
    manager.keep_fresh("openai")()
    clock.now += 85
    assert await manager.refresh_due() == 0


async def test_a_kept_key_lost_to_a_long_outage_is_fetched_again_and_its_change_told(
    source: CountingSource, clock: Clock
) -> None:
    """Past its stale grace the cache forgets a key; kept fresh, it is fetched again once the
    source answers, and a holder still told of a rotation meanwhile (compared with what it had)."""
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, stale_grace=60, clock=clock)
    changes: list[SecretChange] = []
    manager.on_change(changes.append)
    await manager.get("openai", "api_key")
    manager.keep_fresh("openai")
    source.failure = IdentityUnavailableError("identity is down")
    for _ in range(4):  # ahead of expiry, stale, then past the grace: forgotten
        clock.now += 45
        await manager.refresh_due()
    source.failure = None
    source.static.set(SecretKey("openai"), {"api_key": "sk-rotated-000010", "org_id": "org-000001"})
    clock.now += 45
    assert await manager.refresh_due() == 1
    assert [change.fields for change in changes] == [frozenset({"api_key"})]
    fetches = len(source.fetches)
    value = await manager.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-rotated-000010"
    assert len(source.fetches) == fetches  # cached again


def test_keep_fresh_takes_a_provider_name(manager: SecretsManager) -> None:
    with pytest.raises(ConfigurationError, match="provider"):
        manager.keep_fresh("")  # nothing could be fetched under it
    with pytest.raises(ConfigurationError, match="name"):
        manager.keep_fresh("openai", name=5)  # type: ignore[arg-type]


async def test_refresh_ahead_is_at_most_half_the_ttl(source: CountingSource, clock: Clock) -> None:
    """docs/secrets.md: a ``refresh_ahead`` longer than half of ``ttl`` is half of it (else a key
    would be refreshed as soon as it is used), and ``refresh_interval`` defaults to half of that,
    at least 0.5 s."""
    manager = SecretsManager(source, ttl=10, refresh_ahead=30, clock=clock)
    assert (manager.refresh_ahead, manager.refresh_interval) == (5.0, 2.5)
    await manager.get("openai", "api_key")
    clock.now += 1
    await manager.get("openai", "api_key")  # used since fetched
    clock.now += 3  # 6 s before expiry: not yet due
    assert await manager.refresh_due() == 0
    clock.now += 1  # 5 s before expiry
    assert await manager.refresh_due() == 1
    assert SecretsManager(source, refresh_ahead=0.4).refresh_interval == 0.5


async def test_the_background_refresher_lives_with_the_manager(source: CountingSource, clock: Clock) -> None:
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, refresh_interval=0.01, clock=clock)
    async with manager:
        await manager.get("openai", "api_key")
        clock.now += 1
        await manager.get("openai", "api_key")
        clock.now += 85
        await wait_until(lambda: len(source.fetches) == 2, what="the background refresh")
        refresher = manager._refresher
        assert refresher is not None
    assert refresher.done()


async def test_invalidate(manager: SecretsManager, source: CountingSource) -> None:
    await manager.get("openai", "api_key")
    await manager.get("openai", "api_key", "alice")
    assert manager.invalidate("openai", user_id="alice") == 1
    await manager.get("openai", "api_key")
    assert len(source.fetches) == 2
    assert manager.invalidate() == 1  # the system entry; alice's is gone already


async def test_warm_up_loads_at_start(manager: SecretsManager, source: CountingSource) -> None:
    await manager.warm_up(["openai", "groq"])
    assert [key.provider for key in source.fetches] == ["openai", "groq"]
    await manager.get("openai", "api_key")
    assert manager.stats.hits == 1


async def test_warm_up_fetches_only_what_is_not_fresh_in_the_cache(
    manager: SecretsManager, source: CountingSource, clock: Clock
) -> None:
    """warm_up fills the cache: a key already cached and fresh is not fetched again (it was, every
    time); a missing key, or one past its ttl, is."""
    await manager.warm_up(["openai"])
    await manager.get("openai", "api_key", "alice")
    await manager.warm_up(["openai", "groq"])
    await manager.warm_up(["openai", "groq"], user_id="alice")
    assert [(key.provider, key.user_id) for key in source.fetches] == [
        ("openai", None),
        ("openai", "alice"),
        ("groq", None),
        ("groq", "alice"),
    ]
    clock.now += 301  # openai's ttl (300) has run out; groq's "no such secret" (30) long before
    source.fetches.clear()
    await manager.warm_up(["openai", "groq"])
    assert [(key.provider, key.user_id) for key in source.fetches] == [("openai", None), ("groq", None)]
    await manager.get("openai", "api_key")
    assert len(source.fetches) == 2  # fetched again by warm_up: fresh


async def test_max_size_bounds_the_cache(source: CountingSource) -> None:
    manager = SecretsManager(source, max_size=2)
    for user in ("a", "b", "c"):
        await manager.get("openai", "api_key", user)
    assert len(manager._cache) == 2


def test_environment_source_reads_mapped_and_prefixed_names() -> None:
    source = EnvironmentSource(
        environ={
            "OPENAI_API_KEY": "sk-env-0000001",
            "MISTRAL_API_KEY": "mk-env-0000001",
            "AZURE_API_BASE": "https://x",
        }
    )
    openai = asyncio.run(source.fetch(SecretKey("openai")))
    assert openai is not None
    assert openai["api_key"].reveal() == "sk-env-0000001"
    mistral = asyncio.run(source.fetch(SecretKey("mistral")))
    assert mistral is not None
    assert mistral["api_key"].reveal() == "mk-env-0000001"
    azure = asyncio.run(source.fetch(SecretKey("azure_openai")))
    assert azure is not None
    assert azure["endpoint"].reveal() == "https://x"
    assert asyncio.run(source.fetch(SecretKey("openai", "alice"))) is None


def test_reprs_show_no_values(manager: SecretsManager) -> None:
    asyncio.run(manager.get("openai", "api_key"))
    for shown in (repr(manager), repr(manager.source), str(manager.stats)):
        assert "sk-system" not in shown


async def test_invalidate_during_an_inflight_fetch_is_not_undone() -> None:
    class ReadsThenWaits(SecretSource):
        """Reads its answer at once (what the source holds when asked), then waits on the gate."""

        def __init__(self, static: StaticSource) -> None:
            self.static = static
            self.gate = asyncio.Event()
            self.started = asyncio.Event()

        async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
            answer = await self.static.fetch(key)
            self.started.set()
            await self.gate.wait()
            return answer

    static = StaticSource({"openai": {"api_key": "sk-old-value-0001"}})
    source = ReadsThenWaits(static)
    manager = SecretsManager(source)
    first = asyncio.create_task(manager.get("openai", "api_key"))
    await source.started.wait()  # the fetch has read the old value and waits on the gate
    static.set(SecretKey("openai"), {"api_key": "sk-new-value-0002"})  # rotated...
    assert manager.invalidate("openai") == 0  # ...and the host tells the manager to forget
    second = asyncio.create_task(manager.get("openai", "api_key"))  # must not join the old fetch
    await asyncio.sleep(0)
    source.gate.set()
    await first  # asked before the rotation: may see the old value
    value = await second
    assert value is not None
    assert value.reveal() == "sk-new-value-0002"
    value = await manager.get("openai", "api_key")  # the old fetch wrote nothing over it
    assert value is not None
    assert value.reveal() == "sk-new-value-0002"


async def test_a_negative_answer_is_not_served_stale_while_the_source_fails(clock: Clock) -> None:
    source = CountingSource(StaticSource({}))
    manager = SecretsManager(source, ttl=300, negative_ttl=30, stale_grace=600, clock=clock)
    assert await manager.get("openai", "api_key") is None  # "no such secret", believed 30 s
    clock.now += 120  # long past negative_ttl: the secret may well exist by now
    source.failure = SecretsUnavailableError("identity down")
    with pytest.raises(SecretsUnavailableError):
        await manager.get("openai", "api_key")


async def test_refresh_carries_on_past_a_key_that_fails(source: CountingSource) -> None:
    manager = SecretsManager(source)
    await manager.get("openai", "api_key", "alice")
    await manager.get("openai", "api_key")

    class RefusesAlice(SecretSource):
        async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
            if key.user_id == "alice":
                raise IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)
            return {"api_key": SecretValue("sk-system-rotated-02")}

    manager.source = RefusesAlice()
    # alice's 403 is logged (her value dropped: a change); the system's key still refreshed
    assert await manager.refresh() == 2
    value = await manager.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-system-rotated-02"


async def test_refresh_can_be_narrowed_to_the_systems_keys(source: CountingSource) -> None:
    manager = SecretsManager(source)
    await manager.get("openai", "api_key", "alice")
    await manager.get("openai", "api_key")
    source.fetches.clear()
    await manager.refresh("openai", user_id=None)
    assert source.fetches == [SecretKey("openai")]


def test_from_identity_with_env_fallback_accepts_env_mapping_none() -> None:
    manager = SecretsManager.from_identity(
        "http://127.0.0.1:8000", "tok-123456", env_fallback=True, env_mapping=None
    )
    assert isinstance(manager.source, ChainSource)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("refresh_interval", 0),
        ("refresh_interval", -1),
        ("refresh_interval", float("inf")),
        ("refresh_interval", float("nan")),
        ("error_retry", -5),
        ("error_retry", float("nan")),
        ("error_retry", float("inf")),
        ("ttl", 0),
        ("ttl", -1),
        ("ttl", float("nan")),
        ("ttl", "300"),
        ("ttl", float("-inf")),
        ("negative_ttl", -1),
        ("negative_ttl", float("nan")),
        ("stale_grace", -1),
        ("stale_grace", float("nan")),
        ("refresh_ahead", -0.5),
        ("refresh_ahead", float("nan")),
        ("refresh_ahead", float("inf")),
        ("max_size", 0),
        ("max_size", -3),
        ("max_size", 2.5),
        ("max_size", True),
        ("max_size", float("inf")),
    ],
)
def test_bad_timing_settings_are_refused_naming_the_field(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"^{setting} must be .*, got {re.escape(repr(value))}$"):
        SecretsManager(StaticSource({}), **{setting: value})


async def test_infinite_ttl_and_stale_grace_mean_forever(source: CountingSource, clock: Clock) -> None:
    manager = SecretsManager(source, ttl=math.inf, negative_ttl=math.inf, stale_grace=math.inf, clock=clock)
    assert await manager.get("openai", "api_key") is not None
    assert await manager.get("groq", "api_key") is None
    clock.now += 10**9
    assert await manager.get("openai", "api_key") is not None
    assert await manager.get("groq", "api_key") is None
    assert len(source.fetches) == 2  # fresh forever: neither fetched again
    await manager.refresh("openai")  # a forced refresh still fetches
    assert len(source.fetches) == 3

    graceful = SecretsManager(source, ttl=300, stale_grace=math.inf, clock=clock)
    await graceful.get("openai", "api_key")
    source.failure = IdentityUnavailableError("down", status=503)
    clock.now += 10**9  # long expired, and the sources fail: still served
    value = await graceful.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-system-000001"
    assert graceful.stats.stale_served == 1


async def test_settings_whose_zero_has_a_meaning_accept_it(source: CountingSource, clock: Clock) -> None:
    manager = SecretsManager(
        source, negative_ttl=0, stale_grace=0, refresh_ahead=0, error_retry=0, clock=clock
    )
    assert await manager.get("mistral", "api_key") is None
    assert await manager.get("mistral", "api_key") is None  # "no such secret" is not cached
    assert [key.provider for key in source.fetches] == ["mistral", "mistral"]
    assert await manager.get("openai", "api_key") is not None
    assert SecretsManager(source, max_size=1024.0).get  # a whole float is a whole number


async def test_a_closed_manager_raises_a_typed_error(manager: SecretsManager) -> None:
    assert await manager.get("openai", "api_key") is not None
    await manager.aclose()
    attempts = (
        lambda: manager.get("openai", "api_key"),  # cached
        lambda: manager.get("anthropic", "api_key"),  # not cached
        lambda: manager.resolve("secret:openai:api_key"),
        lambda: manager.warm_up(["groq"]),
        manager.refresh,  # it logged a warning per key and returned 0
        manager.refresh_due,
    )
    for attempt in attempts:
        with pytest.raises(SecretsUnavailableError, match="the secrets manager was closed"):
            await attempt()
    with pytest.raises(SecretsUnavailableError, match="closed"):
        manager.start()


async def test_a_manager_over_a_closed_identity_client_raises_a_typed_error() -> None:
    service = InMemoryIdentityService(tokens={"service-token": None})
    service.add_secret("main", "openai", {"api_key": "sk-closed-client-0001"})
    client = IdentityClient(URL, token="service-token", transport=service.mock_transport())
    await client.aclose()
    manager = SecretsManager(IdentitySource(client))
    with pytest.raises(SecretsUnavailableError, match="closed"):
        await manager.get("openai", "api_key")
    assert service.count() == 0


async def test_a_long_retry_after_serves_the_cached_value_at_once(clock: Clock) -> None:
    service = InMemoryIdentityService(tokens={"service-token": None})
    service.add_secret("main", "openai", {"api_key": "sk-rate-limited-0001"})
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = IdentityClient(URL, token="service-token", transport=service.mock_transport(), sleep=sleep)
    manager = SecretsManager(IdentitySource(client), ttl=300, stale_grace=600, error_retry=5, clock=clock)
    assert await manager.get("openai", "api_key") is not None
    clock.now += 301
    service.reset_requests()
    service.fail_next(429, retry_after=120, times=None)  # over the client's cap of 60 s
    value = await manager.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-rate-limited-0001"
    assert manager.stats.stale_served == 1
    assert service.count() == 1
    assert sleeps == []
    clock.now += 60  # past error_retry, within the server's Retry-After: not asked again
    assert await manager.get("openai", "api_key") == value
    assert service.count() == 1
    clock.now += 61
    service.clear_faults()
    assert await manager.get("openai", "api_key") == value
    assert service.count() == 3  # list and values: asked again once the Retry-After was over
    await manager.aclose()


def _random_token(length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(random.SystemRandom().choice(alphabet) for _ in range(length))


def _key_canaries() -> dict[str, str]:
    """Keys pasted where a reference wants a name (fresh each run: no fixed value to match)."""
    return {
        "groq": "gsk_" + _random_token(40),
        "openai": "sk-proj-" + _random_token(40),
        "slack": "xoxb-" + _random_token(12, string.digits) + "-" + _random_token(24),
        "bare": _random_token(40),
        "hex": _random_token(32, "0123456789abcdef"),
    }


def _assert_nowhere(canary: str, error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    assert canary not in str(error)
    assert canary not in repr(error)
    assert all(canary not in str(arg) for arg in error.args)
    assert canary not in caplog.text
    assert all(canary not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("kind", ["groq", "openai", "slack", "bare", "hex"])
async def test_a_key_pasted_as_a_references_name_is_masked_in_errors_and_logs(
    manager: SecretsManager, source: CountingSource, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    canary = _key_canaries()[kind]
    references = [f"secret:openai:{canary}", f"secret:openai/{canary}:api_key"]
    if re.fullmatch("[A-Za-z_][A-Za-z0-9_]*", canary):  # else malformed there (masked already)
        references.append(f"os.environ/{canary}")
    if canary.islower() and "_" not in canary:
        references.append(f"secret:{canary}:api_key")  # a provider is lower case
    caplog.set_level(logging.DEBUG, logger="dynamic_agents")
    for reference in references:
        with pytest.raises(SecretNotFoundError) as caught:
            await manager.resolve(reference)
        _assert_nowhere(canary, caught.value, caplog)
        assert "**********" in str(caught.value), reference
        parsed = parse_reference(reference)
        assert canary not in repr(parsed)
        assert canary not in str(parsed)

    # The stale-or-fail path and the refresh log quote the key too.
    source.failure = IdentityUnavailableError("GET /api/v1/secrets answered 503", status=503)
    manager.invalidate()  # "no such secret" was cached above
    with pytest.raises(SecretsUnavailableError) as unavailable:
        await manager.resolve(f"secret:openai/{canary}:api_key")
    _assert_nowhere(canary, unavailable.value, caplog)
    chained = SecretsManager(ChainSource(source, StaticSource()))
    with pytest.raises(SecretsUnavailableError) as unavailable:
        await chained.resolve(f"secret:openai/{canary}:api_key")
    _assert_nowhere(canary, unavailable.value, caplog)
    assert canary not in repr(SecretKey("openai", "alice", canary))
    assert canary not in str(SecretChange(SecretKey("openai", None, canary), frozenset({"api_key"})))


@pytest.mark.parametrize(
    ("reference", "shown"),
    [
        ("os.environ/UNSET_OPENAI_API_KEY", "'UNSET_OPENAI_API_KEY'"),
        ("os.environ/MY_SERVICE_TOKEN_V2", "'MY_SERVICE_TOKEN_V2'"),
        ("os.environ/AZURE_OPENAI_DEPLOYMENT_API_KEY_PRODUCTION_2024", "AZURE_OPENAI_DEPLOYMENT_API"),
        ("secret:openai:api_key_v2", "'api_key_v2'"),
        ("secret:openai/team-b:api_key", "openai/team-b"),
        ("secret:openai/550e8400-e29b-41d4-a716-446655440000:api_key", "550e8400-e29b-41d4-a716"),
        ("secret:azure_openai:deployment_endpoint", "'deployment_endpoint'"),
    ],
)
async def test_ordinary_names_in_references_stay_readable(
    manager: SecretsManager, monkeypatch: pytest.MonkeyPatch, reference: str, shown: str
) -> None:
    monkeypatch.delenv(reference.removeprefix("os.environ/"), raising=False)
    with pytest.raises(SecretNotFoundError) as caught:
        await manager.resolve(reference)
    assert shown in str(caught.value)
    assert "**********" not in str(caught.value)


@pytest.mark.parametrize("kind", ["groq", "bare"])
async def test_a_malformed_reference_with_a_key_for_its_name_hides_the_key(
    manager: SecretsManager, kind: str
) -> None:
    canary = _key_canaries()[kind]
    for reference in (f"os.environ/{canary}=x", f"secret:openai:{canary} x", f"secret:openai/{canary}"):
        with pytest.raises(SecretReferenceError, match="malformed") as caught:
            await manager.resolve(reference)
        assert canary not in str(caught.value)
        assert "not shown" in str(caught.value)


async def test_the_refresh_ahead_does_not_ask_a_failing_source_before_it_may(clock: Clock) -> None:
    service = InMemoryIdentityService(tokens={"service-token": None})
    service.add_secret("main", "openai", {"api_key": "sk-rate-limited-0002"})

    async def sleep(seconds: float) -> None:
        pass

    client = IdentityClient(URL, token="service-token", transport=service.mock_transport(), sleep=sleep)
    manager = SecretsManager(
        IdentitySource(client), ttl=300, stale_grace=600, error_retry=5, refresh_ahead=30, clock=clock
    )
    await manager.get("openai", "api_key")
    clock.now += 10
    await manager.get("openai", "api_key")  # in use: refreshed ahead of expiry
    clock.now += 291
    service.reset_requests()
    service.fail_next(429, retry_after=120, times=None)
    assert await manager.get("openai", "api_key") is not None  # served stale, Retry-After 120 s
    assert service.count() == 1
    clock.now += 91  # within the refresh-ahead window of the 120 s, not past them
    assert await manager.refresh_due() == 0
    assert service.count() == 1  # the server said when to come back: not asked before then
    clock.now += 30
    service.clear_faults()
    assert await manager.refresh_due() == 1
    assert service.count() == 3
    await manager.aclose()


async def test_the_refresh_ahead_waits_error_retry_after_a_failure(
    source: CountingSource, clock: Clock
) -> None:
    manager = SecretsManager(source, ttl=100, stale_grace=600, refresh_ahead=20, error_retry=5, clock=clock)
    await manager.get("openai", "api_key")
    clock.now += 1
    await manager.get("openai", "api_key")
    clock.now += 100
    source.failure = IdentityUnavailableError("down")
    assert await manager.get("openai", "api_key") is not None  # served stale
    assert len(source.fetches) == 2
    clock.now += 1
    assert await manager.refresh_due() == 0  # error_retry (5 s) not over yet
    assert len(source.fetches) == 2
    clock.now += 4
    assert await manager.refresh_due() == 1
    assert len(source.fetches) == 3


async def test_a_failing_token_provider_serves_the_cached_value(clock: Clock) -> None:
    service = InMemoryIdentityService(tokens={"service-token": None})
    service.add_secret("main", "openai", {"api_key": "sk-token-issuer-0001"})
    issued: list[str] = []

    def provider() -> str:
        if issued:
            raise RuntimeError("token issuer down")
        issued.append("service-token")
        return "service-token"

    client = IdentityClient(URL, token=provider, transport=service.mock_transport())
    manager = SecretsManager(IdentitySource(client), ttl=300, stale_grace=600, clock=clock)
    value = await manager.get("openai", "api_key")
    service.revoke_token("service-token")  # expired: the next request is a 401, then a new token
    clock.now += 301
    assert await manager.get("openai", "api_key") == value  # within stale_grace: served
    assert manager.stats.stale_served == 1
    clock.now += 700
    with pytest.raises(SecretsUnavailableError, match="token provider failed"):
        await manager.get("openai", "api_key")
    await manager.aclose()


@pytest.mark.parametrize(
    ("settings", "error"),
    [({"ttl": -1}, ConfigurationError), ({"no_such_setting": 1}, ConfigurationError)],
)
def test_from_identity_with_bad_settings_leaves_no_http_client_open(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, object], error: type[Exception]
) -> None:
    created: list[httpx.AsyncClient] = []

    class RecordedClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(httpx, "AsyncClient", RecordedClient)
    with pytest.raises(error):
        SecretsManager.from_identity("http://127.0.0.1:8000", "tok-123456", **settings)
    assert [client for client in created if not client.is_closed] == []


async def test_a_key_read_only_while_served_stale_is_refreshed_ahead_of_expiry(
    source: CountingSource, clock: Clock
) -> None:
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, stale_grace=600, error_retry=5, clock=clock)
    await manager.get("openai", "api_key")  # fetched; not read again while fresh
    clock.now += 101
    source.failure = IdentityUnavailableError("GET /api/v1/secrets answered 503", status=503)
    assert await manager.get("openai", "api_key") is not None  # served stale: a use all the same
    assert manager.stats.stale_served == 1
    source.failure = None  # the source is back
    clock.now += 5  # error_retry has passed
    fetches = len(source.fetches)
    assert await manager.refresh_due() == 1
    assert len(source.fetches) == fetches + 1
    await manager.get("openai", "api_key")
    assert len(source.fetches) == fetches + 1  # refreshed in the background: the read is a hit


@pytest.mark.parametrize(
    ("env_mapping", "problem"),
    [
        ({"MY_KEY": "openai"}, r"env_mapping\['MY_KEY'\] must be a \(provider, field\) pair, got 'openai'"),
        ({"MY_KEY": ("openai",)}, r"env_mapping\['MY_KEY'\] must be a \(provider, field\) pair"),
        ({"MY_KEY": ("openai", "api_key", "x")}, r"env_mapping\['MY_KEY'\] must be a \(provider, field\)"),
        ({"MY_KEY": ("openai", "")}, r"env_mapping\['MY_KEY'\] must be a \(provider, field\) pair"),
        ({"MY_KEY": (1, 2)}, r"env_mapping\['MY_KEY'\] must be a \(provider, field\) pair"),
        ({"MY KEY": ("openai", "api_key")}, r"env_mapping key 'MY KEY' is not a variable name"),
        ({5: ("openai", "api_key")}, r"env_mapping key 5 is not a variable name"),
        ([("MY_KEY", ("openai", "api_key"))], r"env_mapping must be a mapping of variable names"),
        ({"MY_KEY": "sk-CANARY123456789abcdef"}, r"pair, got \*\*\*\*\*\*\*\*\*\*$"),
    ],
)
def test_a_malformed_env_mapping_is_refused_when_the_manager_is_made(env_mapping: Any, problem: str) -> None:
    # it was taken as given, and each reference to the variable then failed with a bare
    # TypeError or AttributeError ("require() takes from 3 to 4 positional arguments but 8 were given")
    with pytest.raises(ConfigurationError, match=problem):
        SecretsManager(StaticSource({}), env_mapping=env_mapping)
    with pytest.raises(ConfigurationError, match=problem):
        SecretsManager.from_env(env_mapping=env_mapping)


def test_an_env_mapping_pair_given_as_a_list_is_taken() -> None:
    # as YAML and JSON give it
    manager = SecretsManager(StaticSource({}), env_mapping={"MY_KEY": ["openai", "api_key"]})
    assert manager.env_mapping["MY_KEY"] == ("openai", "api_key")


@pytest.mark.parametrize("source", [None, "sk-CANARY123456789abcdef", {"openai": {"api_key": "k"}}, []])
def test_a_source_that_is_no_secret_source_is_refused_when_the_manager_is_made(source: Any) -> None:
    # it was taken, and the first lookup failed with a bare AttributeError ("no attribute 'fetch'")
    with pytest.raises(ConfigurationError, match=r"^source must be a SecretSource \(") as refused:
        SecretsManager(source)
    assert "CANARY" not in str(refused.value)


def test_a_refused_source_is_named_by_its_type_with_its_article() -> None:
    with pytest.raises(ConfigurationError, match=r"^source must be a SecretSource .*, got an object$"):
        SecretsManager(object())  # type: ignore[arg-type]


async def test_a_key_whose_refresh_fails_unexpectedly_does_not_stop_the_others(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    class Buggy(SecretSource):
        def __init__(self) -> None:
            self.fetches: list[str] = []
            self.broken = False

        async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
            self.fetches.append(key.provider)
            if self.broken and key.provider == "anthropic":
                raise RuntimeError("a bug in the source")
            return {"api_key": SecretValue(f"sk-{key.provider}-{len(self.fetches):016d}")}

    source = Buggy()
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, error_retry=5, clock=clock)
    for provider in ("anthropic", "openai"):
        await manager.get(provider, "api_key")
    clock.now += 1
    for provider in ("anthropic", "openai"):
        await manager.get(provider, "api_key")  # both in use: refreshed ahead of expiry
    clock.now += 85
    source.broken = True
    # anthropic's failure ended the pass, every pass: openai was never refreshed ahead of expiry,
    # and anthropic was asked again at every pass (every refresh_interval), an ERROR each time
    with caplog.at_level(logging.ERROR, "dynamic_agents"):
        assert await manager.refresh_due() == 2
    assert source.fetches[2:] == ["anthropic", "openai"]
    assert "RuntimeError: a bug in the source" in caplog.text
    clock.now += 1
    assert await manager.refresh_due() == 0  # anthropic waits error_retry, like after an outage
    assert source.fetches[2:] == ["anthropic", "openai"]
    clock.now += 4
    source.broken = False
    assert await manager.refresh_due() == 1
    assert source.fetches[2:] == ["anthropic", "openai", "anthropic"]


async def test_refresh_fetches_again_rather_than_join_a_fetch_begun_before_a_rotation(clock: Clock) -> None:
    class ReadsThenWaits(SecretSource):
        """Reads its answer at once; the first fetch after ``hold`` then waits on the gate."""

        def __init__(self, static: StaticSource) -> None:
            self.static = static
            self.gate = asyncio.Event()
            self.fetches = 0
            self.hold: int | None = None

        async def fetch(self, key: SecretKey) -> Mapping[str, SecretValue] | None:
            self.fetches += 1
            answer = await self.static.fetch(key)
            if self.fetches == self.hold:
                await self.gate.wait()
            return answer

    static = StaticSource({"openai": {"api_key": "sk-old-value-0001"}})
    source = ReadsThenWaits(static)
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, clock=clock)
    await manager.get("openai", "api_key")
    clock.now += 1
    await manager.get("openai", "api_key")  # in use: refreshed ahead of expiry
    clock.now += 85
    source.hold = 2
    ahead = asyncio.create_task(manager.refresh_due())  # reads the old value, answers later
    await wait_until(lambda: source.fetches == 2, what="the refresh ahead to fetch")
    static.set(SecretKey("openai"), {"api_key": "sk-new-value-0002"})  # rotated: told, the host
    refreshing = asyncio.create_task(manager.refresh("openai"))  # refreshes (a 401 made it, say)
    # it joined the fetch begun before the rotation: the old value, "nothing changed", cached
    await wait_until(lambda: source.fetches == 3, within=2, what="refresh() to fetch again")
    assert await refreshing == 1
    source.gate.set()
    assert await ahead == 1
    value = await manager.get("openai", "api_key")  # the older fetch wrote nothing over it
    assert value is not None
    assert value.reveal() == "sk-new-value-0002"


@pytest.mark.parametrize(
    "client", [None, "https://svc:CANARY-pass-000001@identity.example.com", StaticSource()]
)
async def test_an_identity_source_over_no_identity_client_is_refused_when_made(client: Any) -> None:
    # it was taken, and every lookup failed with a bare AttributeError ("no attribute 'iter_secrets'")
    with pytest.raises(ConfigurationError, match=r"^IdentitySource needs an IdentityClient") as refused:
        IdentitySource(client)
    assert "CANARY" not in str(refused.value)


async def test_a_chain_of_something_that_is_no_source_is_refused_when_made() -> None:
    # it was taken, and every lookup failed with a bare AttributeError ("no attribute 'fetch'")
    client = IdentityClient(URL, token="service-token")
    with pytest.raises(
        ConfigurationError, match=r"^ChainSource's source 1 must be a SecretSource.* IdentityClient"
    ):
        ChainSource(EnvironmentSource(), client)  # type: ignore[arg-type]
    await client.aclose()
    with pytest.raises(ConfigurationError, match=r"^ChainSource's source 0 .*, got \*{10}$") as refused:
        ChainSource("sk-CANARY123456789abcdef")  # type: ignore[arg-type]
    assert "CANARY" not in str(refused.value)


async def test_warm_up_refuses_one_provider_given_as_a_str(
    manager: SecretsManager, source: CountingSource
) -> None:
    # a str is iterable: warm_up("openai") fetched providers "o", "p", "e", "n", "a" and "i"
    with pytest.raises(ConfigurationError, match=r"^warm_up\(\) takes provider names, .*\['openai'\]"):
        await manager.warm_up("openai")
    assert source.fetches == []


async def test_a_secret_the_service_says_is_gone_is_not_served_stale(clock: Clock) -> None:
    # a 410 was a request error, an outage to the manager: the deleted secret served for stale_grace
    service = InMemoryIdentityService(tokens={"service-token": None})
    service.add_secret("main", "openai", {"api_key": "sk-deleted-soon-0001"})
    client = IdentityClient(URL, token="service-token", transport=service.mock_transport())
    async with SecretsManager(IdentitySource(client), ttl=300, stale_grace=600, clock=clock) as manager:
        assert await manager.get("openai", "api_key") is not None
        clock.now += 301
        service.fail_next(410, path="/api/v1/secrets/{id}/values", times=None)
        assert await manager.get("openai", "api_key") is None
        assert manager.stats.stale_served == 0


async def test_a_mapped_environment_reference_that_is_missing_names_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the variable set, the secret sources without it: the error spoke of "field 'api_key' for
    # anthropic (system)" only, never of the reference, nor why the environment was not read
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-CANARY-0123456789abcdef")
    manager = SecretsManager(StaticSource({}))
    with pytest.raises(
        SecretNotFoundError,
        match=r"^os\.environ/ANTHROPIC_API_KEY stands for anthropic / api_key in the secret sources "
        r"\(env_mapping\), not the environment: no secret field 'api_key' for anthropic \(system\)",
    ) as caught:
        await manager.resolve("os.environ/ANTHROPIC_API_KEY")
    assert "CANARY" not in str(caught.value)
    with pytest.raises(
        SecretNotFoundError, match=r"^settings\.key: os\.environ/ANTHROPIC_API_KEY stands for"
    ):
        await manager.resolve_all({"key": "os.environ/ANTHROPIC_API_KEY"}, where="settings")


async def test_a_failed_refresh_ahead_of_expiry_leaves_the_value_fresh_as_long_as_it_was(
    source: CountingSource, clock: Clock
) -> None:
    # it cut the freshness to error_retry: 5 s after the failed refresh, 15 s before the value
    # expired, every get() fetched in the caller's path (waiting out an Identity that hangs),
    # which the refresh ahead is there to spare; and it counted as a value served stale
    manager = SecretsManager(source, ttl=100, stale_grace=600, refresh_ahead=20, error_retry=5, clock=clock)
    await manager.get("openai", "api_key")
    clock.now += 1
    await manager.get("openai", "api_key")  # in use
    clock.now += 84  # 15 s before expiry
    source.failure = IdentityUnavailableError("down")
    assert await manager.refresh_due() == 1
    assert len(source.fetches) == 2
    clock.now += 6  # past error_retry, 9 s before expiry
    assert await manager.get("openai", "api_key") is not None
    assert len(source.fetches) == 2  # still fresh: a hit
    assert manager.stats.stale_served == 0
    assert await manager.refresh_due() == 1  # the refresh ahead tries again, past error_retry
    assert len(source.fetches) == 3


@pytest.mark.parametrize("flag", ["false", "no", 0, None])
def test_manager_flags_that_are_no_boolean_are_refused(flag: object) -> None:
    # "false" was true: a user without a secret of their own got the system's; the environment
    # answered for Identity
    with pytest.raises(ConfigurationError, match=r"^user_fallback_to_system must be True or False, got "):
        SecretsManager(StaticSource({}), user_fallback_to_system=flag)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"^env_fallback must be True or False, got "):
        SecretsManager.from_identity(URL, "service-token", env_fallback=flag)  # type: ignore[arg-type]


async def test_a_retry_after_with_nothing_cached_is_honoured_for_that_secret(
    source: CountingSource, clock: Clock
) -> None:
    # With nothing cached, every get() asked the rate-limited service again at once, whatever
    # its Retry-After said (with a value cached, the manager already waits it out)
    manager = SecretsManager(source, clock=clock)
    source.failure = IdentityRateLimitedError("429", status=429, retry_after=120)
    with pytest.raises(SecretsUnavailableError, match=r"cannot be fetched and nothing usable is cached"):
        await manager.get("openai", "api_key")
    clock.now += 60
    with pytest.raises(SecretsUnavailableError, match=r"asked not to be asked again for 60s .*429"):
        await manager.get("openai", "api_key")
    assert len(source.fetches) == 1  # not asked before the time it gave
    with pytest.raises(SecretsUnavailableError, match=r"nothing usable is cached: 429$"):
        await manager.get("openai", "api_key", "alice")  # another secret: asked
    assert len(source.fetches) == 2
    source.failure = None
    clock.now += 61
    value = await manager.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-system-000001"
    assert len(source.fetches) == 3
    await manager.aclose()


async def test_a_fetch_that_succeeds_lets_go_of_the_retry_after_it_was_told(
    source: CountingSource, clock: Clock
) -> None:
    # Once the source has answered (refresh() asks whatever Retry-After said), its old
    # Retry-After must not hold back a later fetch: here the value expired, no grace to serve it
    manager = SecretsManager(source, clock=clock, ttl=100, negative_ttl=30, stale_grace=0)
    assert await manager.get("mistral", "api_key") is None  # no such secret yet: cached as such
    clock.now += 31
    source.failure = IdentityRateLimitedError("429", status=429, retry_after=120)
    with pytest.raises(SecretsUnavailableError):
        await manager.get("mistral", "api_key")  # held until 151
    source.failure = None
    source.static.set(SecretKey("mistral"), {"api_key": "sk-mistral-000001"})
    assert await manager.refresh("mistral") == 1
    clock.now += 101  # expired, still within the 120 s the 429 asked for
    value = await manager.get("mistral", "api_key")
    assert value is not None
    assert value.reveal() == "sk-mistral-000001"
    assert len(source.fetches) == 4
    await manager.aclose()


async def test_invalidate_lets_a_get_ask_at_once_whatever_retry_after_said(
    source: CountingSource, clock: Clock
) -> None:
    manager = SecretsManager(source, clock=clock)
    source.failure = IdentityRateLimitedError("429", status=429, retry_after=120)
    with pytest.raises(SecretsUnavailableError):
        await manager.get("openai", "api_key")
    source.failure = None
    manager.invalidate("anthropic")  # another provider's: still held
    with pytest.raises(SecretsUnavailableError, match=r"asked not to be asked again"):
        await manager.get("openai", "api_key")
    manager.invalidate("openai")  # an operator's: not held back
    assert await manager.get("openai", "api_key") is not None
    assert len(source.fetches) == 2
    await manager.aclose()


async def test_retry_afters_are_kept_for_as_many_secrets_as_the_cache_holds(
    source: CountingSource, clock: Clock
) -> None:
    manager = SecretsManager(source, clock=clock, max_size=2)
    source.failure = IdentityRateLimitedError("429", status=429, retry_after=120)
    for user in ("u1", "u2", "u3"):
        with pytest.raises(SecretsUnavailableError):
            await manager.get("openai", "api_key", user)
    assert len(source.fetches) == 3
    with pytest.raises(SecretsUnavailableError, match=r"asked not to be asked again"):
        await manager.get("openai", "api_key", "u3")  # held
    assert len(source.fetches) == 3
    with pytest.raises(SecretsUnavailableError, match=r"nothing usable is cached: 429$"):
        await manager.get("openai", "api_key", "u1")  # the oldest, let go for u3: asked
    assert len(source.fetches) == 4
    await manager.aclose()


async def expired_while_the_source_hangs(
    source: CountingSource, clock: Clock, stale_wait: float
) -> tuple[SecretsManager, SecretValue | None, asyncio.Event]:
    """A manager whose openai key was fetched, is now past its ttl (within its grace), and whose
    source holds every fetch until the event returned is set; the key as first fetched."""
    manager = SecretsManager(source, clock=clock, ttl=100, stale_grace=600, stale_wait=stale_wait)
    first = await manager.get("openai", "api_key")
    clock.now += 150  # expired, within the grace
    source.gate = asyncio.Event()  # the source hangs
    return manager, first, source.gate


async def test_an_expired_value_is_served_while_a_slow_fetch_goes_on(
    source: CountingSource, clock: Clock
) -> None:
    # A get past ttl waited for the whole fetch, against a hung Identity about 40 s (timeout x
    # attempts and backoff), though a value within stale_grace was there to serve
    manager, first, release = await expired_while_the_source_hangs(source, clock, stale_wait=0)
    source.static.set(SecretKey("openai"), {"api_key": "sk-rotated-00001"})
    served = await manager.get("openai", "api_key")
    assert served == first  # at once, the cached value
    assert manager.stats.stale_served == 1
    assert len(source.fetches) == 2  # the fetch goes on meanwhile, one for every caller
    await manager.get("openai", "api_key")
    assert len(source.fetches) == 2
    release.set()

    async def rotated() -> bool:  # its value cached when it came
        value = await manager.get("openai", "api_key")
        return value is not None and value.reveal() == "sk-rotated-00001"

    await wait_until(rotated)
    assert len(source.fetches) == 2
    await manager.aclose()


async def test_gets_served_while_a_slow_fetch_goes_on_are_warned_of_once(
    source: CountingSource, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # every get served during a hung fetch (about 40 s against a hung Identity) was a WARNING
    manager, _, release = await expired_while_the_source_hangs(source, clock, stale_wait=0)
    source.static.set(SecretKey("openai"), {"api_key": "sk-rotated-00001"})
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        for _ in range(3):
            assert await manager.get("openai", "api_key") is not None
        assert manager.stats.stale_served == 3
        release.set()

        async def rotated() -> bool:
            value = await manager.get("openai", "api_key")
            return value is not None and value.reveal() == "sk-rotated-00001"

        await wait_until(rotated)
    assert [(level, message.split(";")[0]) for level, message in _stale_records(caplog)] == [
        ("WARNING", "secret openai (system): the fetch takes longer than stale_wait (0s)"),
        ("DEBUG", "secret openai (system): the fetch takes longer than stale_wait (0s)"),
        ("DEBUG", "secret openai (system): the fetch takes longer than stale_wait (0s)"),
        ("INFO", "secret openai (system) fetched again after a fetch slower than stale_wait"),
    ]
    await manager.aclose()


async def test_stale_wait_inf_waits_for_the_fetch(source: CountingSource, clock: Clock) -> None:
    manager, _, release = await expired_while_the_source_hangs(source, clock, stale_wait=math.inf)
    source.static.set(SecretKey("openai"), {"api_key": "sk-rotated-00001"})
    getting = asyncio.create_task(manager.get("openai", "api_key"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not getting.done()  # waiting for the fetch
    release.set()
    value = await getting
    assert value is not None
    assert value.reveal() == "sk-rotated-00001"
    assert manager.stats.stale_served == 0
    await manager.aclose()


async def test_a_fetch_that_fails_after_its_callers_were_served_stale_is_not_left_unretrieved(
    source: CountingSource, clock: Clock
) -> None:
    unhandled: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: unhandled.append(context["message"])
    )
    manager, _, release = await expired_while_the_source_hangs(source, clock, stale_wait=0)
    source.failure = IdentityForbiddenError("revoked", status=403)
    assert await manager.get("openai", "api_key") is not None  # served stale meanwhile
    release.set()  # the fetch fails, nobody waiting for it
    for _ in range(20):
        await asyncio.sleep(0)
    source.failure, source.gate = IdentityUnavailableError("down"), None  # let the first go
    gc.collect()
    assert unhandled == []  # not "Task exception was never retrieved"
    with pytest.raises(SecretsUnavailableError):  # a 403 is an answer: the value was dropped
        await manager.get("openai", "api_key")
    await manager.aclose()


async def test_stale_wait_is_waited_once_for_a_fetch_not_by_every_get(
    source: CountingSource, clock: Clock
) -> None:
    # each get during a hung fetch waited stale_wait again (1 s a get against a hung Identity)
    manager, first, release = await expired_while_the_source_hangs(source, clock, stale_wait=300)
    waiting = asyncio.create_task(manager.get("openai", "api_key"))  # waits up to stale_wait
    await wait_until(lambda: len(source.fetches) == 2, what="the fetch to start")
    clock.now += 301  # the fetch has taken longer than stale_wait (still within the grace)
    assert await manager.get("openai", "api_key") == first  # at once, served stale
    assert not waiting.done()
    release.set()
    assert await waiting is not None
    await manager.aclose()


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (
            {"system": "sk-CANARY123456789abcdef"},
            r"^StaticSource's system must be a mapping of .*, got \*{10}$",
        ),
        (
            {"system": [("openai", {"api_key": "k"})]},
            r"^StaticSource's system must be a mapping .*, got a list$",
        ),
        (
            {"system": {"openai": "sk-CANARY123456789abcdef"}},
            r"^StaticSource's system\['openai'\] must .*, got \*{10}$",
        ),
        (
            {"system": {"openai": {"api_key": 123}}},
            r"^StaticSource's system\['openai'\]\['api_key'\] must be a str or a SecretValue, got 123$",
        ),
        (
            {"users": {"alice": "openai"}},
            r"^StaticSource's users\['alice'\] must be a mapping of .*, got 'openai'$",
        ),
        (
            {"users": {"alice": {"openai": None}}},
            r"^StaticSource's users\['alice'\]\['openai'\] must .*, got None$",
        ),
        (
            {"named": {"openai": {"api_key": "k"}}},
            r"^StaticSource's named key 'openai' must be a \(provider, name\) pair",
        ),
        ({"named": ["openai"]}, r"^StaticSource's named must be a mapping of .*, got a list$"),
    ],
)
def test_a_static_source_given_no_mappings_is_refused_naming_the_argument(
    arguments: dict[str, Any], problem: str
) -> None:
    # it raised a bare AttributeError ("'str' object has no attribute 'items'"), or a TypeError
    with pytest.raises(ConfigurationError, match=problem) as refused:
        StaticSource(**arguments)
    assert "CANARY" not in str(refused.value)


async def test_a_static_source_takes_secret_values_too() -> None:
    source = StaticSource({"openai": {"api_key": SecretValue("sk-given-masked-0001")}})
    with pytest.raises(ConfigurationError, match=r"^StaticSource.set\(\)'s key must be a SecretKey"):
        source.set("openai", {"api_key": "sk-x"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"^StaticSource.set\(\)'s values must be a mapping"):
        source.set(SecretKey("openai"), "sk-x")  # type: ignore[arg-type]
    assert await source.fetch(SecretKey("openai")) == {"api_key": SecretValue("sk-given-masked-0001")}


@pytest.mark.parametrize("clock", [1000.0, "time.monotonic", None])
def test_a_clock_that_is_not_callable_is_refused_when_the_manager_is_made(clock: object) -> None:
    # it was taken, and the first get (even the manager's repr) failed with a bare TypeError
    with pytest.raises(ConfigurationError, match=r"^clock must be a callable returning seconds .*, got "):
        SecretsManager(StaticSource({}), clock=clock)  # type: ignore[arg-type]


@pytest.mark.parametrize("flag", ["false", 0, None])
async def test_owns_client_that_is_no_boolean_is_refused(flag: object) -> None:
    # "false" was true: the source closed a client its caller still used
    client = IdentityClient(URL, token="service-token")
    with pytest.raises(ConfigurationError, match=r"^owns_client must be True or False, got "):
        IdentitySource(client, owns_client=flag)  # type: ignore[arg-type]
    await client.aclose()


@pytest.mark.parametrize("environ", ["OPENAI_API_KEY=sk-x", [("OPENAI_API_KEY", "sk-x")]])
def test_an_environment_source_over_no_mapping_is_refused_when_made(environ: object) -> None:
    # it was taken, and every lookup failed with a bare AttributeError ("no attribute 'items'")
    with pytest.raises(ConfigurationError, match=r"^EnvironmentSource's environ must be a mapping .*, got "):
        EnvironmentSource(environ=environ)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (
            "timeout=5",
            r"^client_options must be a mapping of IdentityClient's keyword arguments .*, got 'timeout=5'$",
        ),
        ({"token": "other-token"}, r"^client_options cannot hold 'token': .*from_identity\(\)"),
        (
            {"timout": 5},
            r"^client_options has 'timout', which IdentityClient does not take: it takes .*'timeout'",
        ),
    ],
)
def test_client_options_that_identity_client_cannot_take_are_refused(options: object, problem: str) -> None:
    # a bare TypeError ("argument after ** must be a mapping", "got multiple values for keyword
    # argument 'token'", "got an unexpected keyword argument 'timout'")
    with pytest.raises(ConfigurationError, match=problem):
        SecretsManager.from_identity(URL, "service-token", client_options=options)  # type: ignore[arg-type]


_TAKES = r"it takes 'ttl', 'negative_ttl', .*'clock'$"


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            {"tll": 60},
            r"^from_identity\(\) has the setting 'tll', .* not take \(did you mean 'ttl'\?\): " + _TAKES,
        ),
        (
            {"timeout": 5},
            r"^from_identity\(\) .*'timeout', .*: an IdentityClient option goes in client_options=",
        ),
        (
            {"source": StaticSource({})},
            r"^from_identity\(\) has the setting 'source', which SecretsManager does not",
        ),
    ],
)
def test_settings_that_the_manager_cannot_take_are_refused_naming_them(
    settings: dict[str, Any], problem: str
) -> None:
    # a bare TypeError: "SecretsManager.__init__() got an unexpected keyword argument 'tll'"
    with pytest.raises(ConfigurationError, match=problem):
        SecretsManager.from_identity(URL, "service-token", **settings)


def test_from_env_refuses_a_setting_the_manager_cannot_take_naming_it() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^from_env\(\) has the setting 'stale_grase', .*'stale_grace'"
    ):
        SecretsManager.from_env(stale_grase=60)


async def test_a_refusal_of_a_cached_secret_tells_the_listeners_it_is_gone(
    manager: SecretsManager, source: CountingSource, clock: Clock
) -> None:
    # the value was dropped without a notice: the LLM router, which swaps keys on notices, kept
    # sending a key the service no longer lets us read
    heard: list[SecretChange] = []
    manager.on_change(heard.append)
    await manager.get("openai", "api_key", "alice")
    await manager.get("openai", "api_key")
    source.failure = IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)
    assert await manager.refresh("openai", user_id="alice") == 1  # what it serves changed
    assert heard == [SecretChange(SecretKey("openai", "alice"), frozenset({"api_key"}))]
    with pytest.raises(IdentityForbiddenError):  # nothing cached any more: refused, not told again
        await manager.get("openai", "api_key", "alice")
    assert len(heard) == 1
    clock.now += 301  # the system's secret, read past its ttl (by a get, not a refresh)
    with pytest.raises(IdentityForbiddenError):
        await manager.get("openai", "api_key")
    assert heard[1:] == [SecretChange(SecretKey("openai"), frozenset({"api_key", "org_id"}))]
    source.failure = None  # allowed again: told so, as when a deleted secret is created again
    assert await manager.get("openai", "api_key") is not None
    assert heard[2:] == [SecretChange(SecretKey("openai"), frozenset({"api_key", "org_id"}))]


async def test_a_listener_told_of_a_refusal_that_reads_the_key_is_refused_too(
    manager: SecretsManager, source: CountingSource, clock: Clock
) -> None:
    # the LLM router re-resolves its deployment on a notice: the read joined the refused fetch,
    # which was waiting for the listener, and neither ever ended (the get that started it was
    # served the refused value stale, after stale_wait)
    refused: list[BaseException] = []

    async def reread(change: SecretChange) -> None:
        try:
            await manager.get(change.key.provider, "api_key", change.key.user_id)
        except IdentityForbiddenError as error:
            refused.append(error)

    await manager.get("openai", "api_key")
    manager.on_change(reread)
    source.failure = IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)
    clock.now += 301
    with pytest.raises(IdentityForbiddenError):
        await asyncio.wait_for(manager.get("openai", "api_key"), timeout=10)
    assert len(refused) == 1
    assert len(source.fetches) == 3  # the first, the refused one, and the listener's own
    assert manager._inflight == {}


def two_keys_due(source: CountingSource, clock: Clock) -> SecretsManager:
    """A manager whose openai and groq system secrets are in use, rotated in the source, and due
    for the refresh ahead of expiry."""
    source.static.set(SecretKey("groq"), {"api_key": "gsk-groq-v1-00000001"})
    return SecretsManager(source, ttl=100, refresh_ahead=20, clock=clock)


async def use_then_rotate(manager: SecretsManager, source: CountingSource, clock: Clock) -> None:
    for provider in ("openai", "groq"):
        await manager.get(provider, "api_key")
    clock.now += 10
    for provider in ("openai", "groq"):
        await manager.get(provider, "api_key")  # used since fetched
    source.static.set(SecretKey("openai"), {"api_key": "sk-openai-v2-000002"})
    source.static.set(SecretKey("groq"), {"api_key": "gsk-groq-v2-00000002"})
    clock.now += 75  # 15 s before expiry: both due
    source.fetches.clear()


async def test_a_listener_may_run_the_refresh_ahead_itself(source: CountingSource, clock: Clock) -> None:
    # it worked, but the outer pass fetched again what the listener's pass had just refreshed
    manager = two_keys_due(source, clock)
    passes: list[int] = []

    async def refresh_the_rest(change: SecretChange) -> None:
        passes.append(await manager.refresh_due())

    manager.on_change(refresh_the_rest)
    await use_then_rotate(manager, source, clock)
    outer = await asyncio.wait_for(manager.refresh_due(), timeout=10)
    assert [key.provider for key in source.fetches] == ["openai", "groq"]  # each once
    assert outer + sum(passes) == 2 == manager.stats.refreshes
    for provider, version in (("openai", "sk-openai-v2-000002"), ("groq", "gsk-groq-v2-00000002")):
        value = await manager.get(provider, "api_key")
        assert value is not None
        assert value.reveal() == version


async def test_a_listener_may_close_the_manager(source: CountingSource, clock: Clock) -> None:
    # aclose() cancelled and waited for the fetch it was called from: that fetch, and the
    # refresh waiting for it, never ended, and the source was never closed
    closed: list[bool] = []

    class Closing(CountingSource):
        async def aclose(self) -> None:
            closed.append(True)

    source = Closing(source.static)
    manager = two_keys_due(source, clock)

    async def close_on_change(change: SecretChange) -> None:
        await manager.aclose()

    manager.on_change(close_on_change)
    async with manager:
        await use_then_rotate(manager, source, clock)
        assert await asyncio.wait_for(manager.refresh_due(), timeout=10) == 1  # then it stopped
        assert closed == [True]
        assert [key.provider for key in source.fetches] == ["openai"]
        assert manager._inflight == {}
        assert manager._refresher is None
        with pytest.raises(SecretsUnavailableError, match="the secrets manager was closed"):
            await manager.get("groq", "api_key")
    assert closed == [True, True]  # async with closes it again: harmless


# -- a kept key that keeps failing is asked less and less often, and said once ---------------------


async def _passes(manager: SecretsManager, source: CountingSource, clock: Clock, until: float) -> list[float]:
    """Run a refresh pass every second until ``until``; the times the source was asked."""
    asked: list[float] = []
    while clock.now < until:
        clock.now += 1
        before = len(source.fetches)
        await manager.refresh_due()
        asked += [clock.now] * (len(source.fetches) - before)
    return asked


def _gaps(times: list[float]) -> list[float]:
    return [after - before for before, after in itertools.pairwise(times)]


def _kept_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.getMessage().startswith("keeping openai (system) fresh")
    ]


@pytest.mark.parametrize(
    ("failure", "kind", "told"),
    [
        # the value dropped (every field it had), then back
        (
            IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403),
            "IdentityForbiddenError",
            [{"api_key", "org_id"}, {"api_key"}],
        ),
        # past the stale grace: back, rotated meanwhile (compared with the value last seen)
        (IdentityUnavailableError("identity is down"), "SecretsUnavailableError", [{"api_key", "org_id"}]),
    ],
)
async def test_a_kept_key_that_keeps_failing_backs_off_and_warns_once(
    source: CountingSource,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
    kind: str,
    told: list[set[str]],
) -> None:
    # a 403 leaves a "no such secret" already expired, and a key past its stale grace is one the
    # cache forgot: both were due at every pass (every refresh_interval), with a WARNING each
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, stale_grace=0, error_retry=5, clock=clock)
    changes: list[SecretChange] = []
    manager.on_change(changes.append)
    await manager.get("openai", "api_key")
    manager.keep_fresh("openai")
    clock.now += 100  # expired: the first pass asks
    source.failure = failure
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        asked = await _passes(manager, source, clock, until=clock.now + 600)
        assert _gaps(asked) == [5, 10, 20, 40, 80, 100, 100, 100, 100]  # error_retry doubled, to ttl
        records = _kept_records(caplog)
        assert [level for level, _ in records] == ["WARNING"] + ["DEBUG"] * 9
        assert records[0][1].startswith(f"keeping openai (system) fresh failed: {kind}; asked again in 5s")
        caplog.clear()
        source.failure = None
        source.static.set(SecretKey("openai"), {"api_key": "sk-back-again-0001"})
        asked = await _passes(manager, source, clock, until=clock.now + 100)
    assert asked
    assert _kept_records(caplog)[0] == (
        "INFO",
        "keeping openai (system) fresh: fetched again after 10 failed refreshes",
    )
    value = await manager.get("openai", "api_key")
    assert value is not None
    assert value.reveal() == "sk-back-again-0001"
    assert [set(change.fields) for change in changes] == told


async def test_a_kept_key_whose_secret_was_deleted_is_asked_less_and_less_often(
    source: CountingSource, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    manager = SecretsManager(source, ttl=100, negative_ttl=30, refresh_ahead=20, error_retry=5, clock=clock)
    await manager.get("openai", "api_key")
    manager.keep_fresh("openai")
    source.static.remove(SecretKey("openai"))
    clock.now += 80  # due ahead of expiry
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        asked = await _passes(manager, source, clock, until=clock.now + 400)
    # "no such secret" is believed negative_ttl (due refresh_ahead before: 10 s), then backs off
    assert _gaps(asked) == [10, 10, 20, 40, 80, 100, 100]
    records = _kept_records(caplog)
    assert [level for level, _ in records] == ["WARNING"] + ["DEBUG"] * 7
    assert records[0][1].startswith("keeping openai (system) fresh failed: no such secret;")


async def test_a_kept_key_failing_differently_is_warned_of_again(
    source: CountingSource, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    manager = SecretsManager(source, ttl=100, refresh_ahead=20, stale_grace=0, error_retry=5, clock=clock)
    await manager.get("openai", "api_key")
    manager.keep_fresh("openai")
    clock.now += 100
    source.failure = IdentityUnavailableError("identity is down")
    with caplog.at_level(logging.DEBUG, logger="dynamic_agents"):
        await _passes(manager, source, clock, until=clock.now + 20)
        source.failure = IdentityForbiddenError("GET /api/v1/secrets answered 403", status=403)
        await _passes(manager, source, clock, until=clock.now + 20)
    assert [(level, message.split(";")[0]) for level, message in _kept_records(caplog)] == [
        ("WARNING", "keeping openai (system) fresh failed: SecretsUnavailableError"),
        ("DEBUG", "keeping openai (system) fresh failed again (2 times): SecretsUnavailableError"),
        ("DEBUG", "keeping openai (system) fresh failed again (3 times): SecretsUnavailableError"),
        ("WARNING", "keeping openai (system) fresh failed: IdentityForbiddenError"),
    ]
