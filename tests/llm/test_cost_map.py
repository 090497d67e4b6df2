"""litellm's process-wide cost map: the entries a router's deployments and its calls' keys add to
``litellm.model_cost`` leave with the key that changed and with ``aclose()``.

litellm registers each deployment's pricing under its id, and for a call carrying a key of its own
(a user's key) a per-request deployment's under a hash of the params and that key
(``original_model_id``: the deployment's id), and removes none of them.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import hashlib
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import litellm
import pytest
from cachetools import Cache
from litellm.utils import _registered_pricing_fields

from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.llm import LLMRouter, RouterConfig, _litellm, build_router
from dynamic_agents.secrets import SecretKey, SecretsManager, StaticSource
from dynamic_agents.testing import FakeOpenAI
from tests.support.waiting import wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
INPUT_PRICE, OUTPUT_PRICE = 0.5, 1.0  # custom pricing: only the deployment's entries know it
OLD_KEY, NEW_KEY = "canary-cost-alice-old-01", "canary-cost-alice-new-02"


def config(deployment_id: str, prices_in: str = "litellm_params") -> RouterConfig:
    """Custom prices in the params, or in the model info (where only the deployment's cost-map
    entry carries them to the call's pricing)."""
    params: dict[str, Any] = {
        "model": "openai/gpt-4o-mini",
        "api_key": "secret:openai:api_key",
        "mock_response": "hi!",
    }
    model_info: dict[str, Any] = {"id": deployment_id}
    prices = {"input_cost_per_token": INPUT_PRICE, "output_cost_per_token": OUTPUT_PRICE}
    (params if prices_in == "litellm_params" else model_info).update(prices)
    deployment = {"model_name": "gpt", "litellm_params": params, "model_info": model_info}
    return RouterConfig.from_dict({"model_list": [deployment], "num_retries": 0})


def unique_id() -> str:
    return f"cost-test-{uuid.uuid4().hex[:12]}"


def alice_source() -> StaticSource:
    return StaticSource(
        {"openai": {"api_key": "canary-cost-system-01"}}, users={"alice": {"openai": {"api_key": OLD_KEY}}}
    )


def derived_from(deployment_id: str) -> set[str]:
    """The cost-map entries litellm added for per-call keys sent through this deployment."""
    return {
        name
        for name, entry in litellm.model_cost.items()
        if isinstance(entry, dict) and entry.get("original_model_id") == deployment_id
    }


def priced(response: Any) -> bool:
    """Whether litellm priced the response with the deployment's custom prices."""
    usage = response.usage
    expected = usage.prompt_tokens * INPUT_PRICE + usage.completion_tokens * OUTPUT_PRICE
    return bool(expected > 0 and response._hidden_params["response_cost"] == pytest.approx(expected))


def cached_clients(key: str) -> list[Any]:
    """litellm's cached SDK clients built for ``key``."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    cache = litellm.in_memory_llm_clients_cache
    return [client for name, client in cache.cache_dict.items() if f"hashed_api_key={digest}," in name]


async def alice_call(router: LLMRouter) -> tuple[Any, str]:
    """A call with alice's own key: its response and the id of the entry litellm priced it by."""
    response = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    entry = response._hidden_params["model_id"]
    assert litellm.model_cost[entry]["original_model_id"] == router.deployment_ids[0]
    return response, entry


async def test_closing_the_router_removes_its_entries_and_its_calls_keys_entries() -> None:
    deployment_id = unique_id()
    before = len(litellm.model_cost)
    router = await build_router(config(deployment_id), SecretsManager(alice_source()))
    await alice_call(router)
    await router.acompletion(model="gpt", messages=MESSAGES, api_key="canary-cost-per-call-03")
    assert deployment_id in litellm.model_cost
    assert len(derived_from(deployment_id)) == 2
    await router.aclose()
    assert deployment_id not in litellm.model_cost
    assert derived_from(deployment_id) == set()
    assert len(litellm.model_cost) == before
    assert not {deployment_id, *derived_from(deployment_id)} & set(_registered_pricing_fields())


async def test_routers_built_from_one_config_share_entries_until_the_last_one_closes() -> None:
    deployment_id = unique_id()
    secrets = SecretsManager(alice_source())
    first = await build_router(config(deployment_id), secrets)
    second = await build_router(config(deployment_id), secrets)
    assert first.deployment_ids == second.deployment_ids == [deployment_id]  # stable ids: one entry
    try:
        _, entry = await alice_call(first)
        response, same = await alice_call(second)
        assert same == entry  # the same key through the same deployment: one entry too
        await first.aclose()
        assert deployment_id in litellm.model_cost
        assert entry in litellm.model_cost
        response, _ = await alice_call(second)
        assert priced(response)
    finally:
        await first.aclose()
        await second.aclose()
    assert deployment_id not in litellm.model_cost
    assert entry not in litellm.model_cost


async def test_a_users_rotated_key_leaves_the_cost_map_and_her_next_call_is_priced() -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(config(unique_id()), secrets, follow_changes=False)
    try:
        response, old_entry = await alice_call(router)
        assert priced(response)
        # Rotated in Identity; the manager's entry expired meanwhile (no change notice).
        source.set(SecretKey("openai", user_id="alice"), {"api_key": NEW_KEY})
        secrets.invalidate("openai", user_id="alice")
        response, new_entry = await alice_call(router)
        assert old_entry not in litellm.model_cost
        assert old_entry not in _registered_pricing_fields()
        assert old_entry not in litellm.open_ai_chat_completion_models
        assert new_entry != old_entry
        assert new_entry in litellm.model_cost
        assert priced(response)
    finally:
        await router.aclose()


async def test_a_users_key_rotation_notice_removes_her_old_entry_before_any_call() -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(config(unique_id()), secrets)
    try:
        _, old_entry = await alice_call(router)
        source.set(SecretKey("openai", user_id="alice"), {"api_key": NEW_KEY})
        assert await secrets.refresh(user_id="alice") == 1  # the manager's refresh: a change notice
        assert old_entry not in litellm.model_cost
        response, _ = await alice_call(router)
        assert priced(response)
    finally:
        await router.aclose()


async def test_a_users_key_removed_removes_her_entry() -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(config(unique_id()), secrets, follow_changes=False)
    try:
        _, old_entry = await alice_call(router)
        source.remove(SecretKey("openai", user_id="alice"))
        secrets.invalidate("openai", user_id="alice")
        response = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
        assert old_entry not in litellm.model_cost
        assert priced(response)  # the deployment's own key, priced by the deployment's entry
    finally:
        await router.aclose()


def hold_on_the_wire(router: LLMRouter) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the router's litellm calls after they are sent: ``sent`` is set when one is, and it
    goes on (and is answered) once ``answer`` is set."""
    sent, answer = asyncio.Event(), asyncio.Event()
    litellm_call = router.router.acompletion

    async def held_on_the_wire(**kwargs: Any) -> Any:
        sent.set()
        await answer.wait()
        return await litellm_call(**kwargs)

    router.router.acompletion = held_on_the_wire  # type: ignore[method-assign]
    return sent, answer


def hold_sync_on_the_wire(router: LLMRouter) -> tuple[threading.Event, threading.Event]:
    """:func:`hold_on_the_wire` for the router's synchronous litellm calls (run in a thread)."""
    sent, answer = threading.Event(), threading.Event()
    litellm_call = router.router.completion

    def held_on_the_wire(**kwargs: Any) -> Any:
        sent.set()
        answer.wait(10)
        return litellm_call(**kwargs)

    router.router.completion = held_on_the_wire  # type: ignore[method-assign]
    return sent, answer


async def test_a_call_in_flight_keeps_its_entry_until_it_ends_and_is_priced() -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(config(unique_id()), secrets)
    try:
        _, old_entry = await alice_call(router)
        sent, answer = hold_on_the_wire(router)
        call = asyncio.create_task(router.acompletion(model="gpt", messages=MESSAGES, user_id="alice"))
        await sent.wait()  # the call carries the old key now
        source.set(SecretKey("openai", user_id="alice"), {"api_key": NEW_KEY})
        await secrets.refresh(user_id="alice")
        assert old_entry in litellm.model_cost  # the call in flight reads its price at its end
        answer.set()
        response = await call
        assert response._hidden_params["model_id"] == old_entry
        assert priced(response)
        assert old_entry not in litellm.model_cost  # ...and then it goes
    finally:
        await router.aclose()


async def test_entries_litellm_already_removed_break_nothing() -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    deployment_id = unique_id()
    router = await build_router(config(deployment_id), secrets, follow_changes=False)
    try:
        _, entry = await alice_call(router)
        del litellm.model_cost[entry], litellm.model_cost[deployment_id]  # as a cost-map reload would
        response, _ = await alice_call(router)  # registered again by the call
        assert priced(response)
        del litellm.model_cost[entry]
        source.set(SecretKey("openai", user_id="alice"), {"api_key": NEW_KEY})
        secrets.invalidate("openai", user_id="alice")
        response, _ = await alice_call(router)
        assert priced(response)
    finally:
        await router.aclose()
    assert derived_from(deployment_id) == set()


async def test_an_id_litellms_cost_map_had_before_the_router_stays() -> None:
    foreign = unique_id()  # registered by someone else: another litellm Router, register_model()
    litellm.register_model(
        {foreign: {"litellm_provider": "openai", "mode": "chat"}}, persist_across_reloads=False
    )
    try:
        router = await build_router(config(foreign), SecretsManager(alice_source()))
        await router.aclose()
        assert foreign in litellm.model_cost
    finally:
        _litellm.forget_cost_entries([foreign])


@pytest.mark.parametrize("catalog_id", ["gpt-4o", "GPT-4o", "openai/gpt-4o", "azure/gpt-4o"])
async def test_a_catalog_models_name_as_the_deployments_id_is_refused(catalog_id: str) -> None:
    """litellm registers a deployment's model info and prices under its id by merging them into
    the catalog entry that id resolves to: every call in the process pricing that model would be
    priced at this deployment's prices (and this deployment as that model)."""
    catalog = {name: copy.deepcopy(entry) for name, entry in litellm.model_cost.items() if "gpt-4o" in name}
    with pytest.raises(ConfigurationError) as caught:
        await build_router(config(catalog_id), SecretsManager(alice_source()))
    message = str(caught.value)
    assert message.startswith(f"model_list[0] (deployment {catalog_id!r} of model 'gpt'), model_info.id: ")
    assert "litellm's catalog" in message
    assert "an id of its own" in message
    assert {name: entry for name, entry in litellm.model_cost.items() if "gpt-4o" in name} == catalog


async def test_no_key_reaches_the_cost_map_or_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(config(unique_id()), secrets)
    try:
        await alice_call(router)
        await router.acompletion(model="gpt", messages=MESSAGES, api_key="canary-cost-per-call-03")
        source.set(SecretKey("openai", user_id="alice"), {"api_key": NEW_KEY})
        await secrets.refresh(user_id="alice")
        await alice_call(router)
        models = sorted(litellm.open_ai_chat_completion_models)
        registered = json.dumps([litellm.model_cost, _registered_pricing_fields(), models], default=str)
    finally:
        await router.aclose()
    logged = caplog.text + " ".join(str(record.__dict__) for record in caplog.records)
    assert "removed" in caplog.text  # the clean-up ran and was logged
    for text in (registered, logged):
        assert "canary-cost" not in text


async def test_users_keys_the_router_no_longer_remembers_leave_the_cost_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("dynamic_agents.llm.router._USERS_KEYS_KEPT", 2)
    users = {f"user-{n}": {"openai": {"api_key": f"canary-cost-user-{n:02d}"}} for n in range(3)}
    source = StaticSource({"openai": {"api_key": "canary-cost-system-01"}}, users=users)
    router = await build_router(config(unique_id()), SecretsManager(source))
    try:
        entries = {}
        for user_id in users:
            response = await router.acompletion(model="gpt", messages=MESSAGES, user_id=user_id)
            entries[user_id] = response._hidden_params["model_id"]
            assert priced(response)
        assert entries["user-0"] not in litellm.model_cost  # pushed out by the two after her
        assert {entries["user-1"], entries["user-2"]} <= set(litellm.model_cost)
        response = await router.acompletion(model="gpt", messages=MESSAGES, user_id="user-0")
        assert response._hidden_params["model_id"] == entries["user-0"]
        assert priced(response)
    finally:
        await router.aclose()


async def test_a_streamed_calls_entry_stays_until_the_stream_is_read_and_it_is_priced() -> None:
    """litellm prices a stream once it is read to its end, by the entry its call registered: a
    rotation of the user's key while the stream waits to be read must not take the entry away
    (a stream's call ended, for the bookkeeping, when it was handed over)."""
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(config(unique_id()), secrets)
    costs: list[float] = []

    class CostSeen(litellm.integrations.custom_logger.CustomLogger):  # type: ignore[misc]
        async def async_log_success_event(self, kwargs: Any, *_: Any, **__: Any) -> None:
            costs.append(kwargs.get("response_cost"))

    seen = CostSeen()
    litellm.callbacks.append(seen)
    try:
        _, old_entry = await alice_call(router)
        stream = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice", stream=True)
        source.set(SecretKey("openai", user_id="alice"), {"api_key": NEW_KEY})
        await secrets.refresh(user_id="alice")  # the notice: her old key's entries go...
        assert old_entry in litellm.model_cost  # ...but not the one the unread stream will be priced by
        chunks = [chunk async for chunk in stream]
        assert chunks
        assert old_entry not in litellm.model_cost  # read: it goes
        for _ in range(100):  # litellm logs a stream's success in a task of its own
            if costs:
                break
            await asyncio.sleep(0.01)
        assert costs
        assert costs[-1] is not None
        assert costs[-1] > 0.01  # the deployment's custom price (0.5 per token), not the catalog's
    finally:
        litellm.callbacks.remove(seen)
        await router.aclose()


@pytest.mark.parametrize("failing_call", [1, 2])
async def test_bookkeeping_that_fails_never_fails_the_call(
    failing_call: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Working out a call's cost-map entries runs at its start and at its end: litellm's internals
    failing there (moved in a release, say) is logged, and the call, which the provider has
    answered and billed, returns its response all the same."""
    router = await build_router(config(unique_id()), SecretsManager(alice_source()))
    real = _litellm.cost_entry_ids
    calls = 0

    def fails_once(*args: Any) -> frozenset[str]:
        nonlocal calls
        calls += 1
        if calls == failing_call:
            raise KeyError("litellm moved things")
        return real(*args)

    monkeypatch.setattr(_litellm, "cost_entry_ids", fails_once)
    try:
        for user in ({"user_id": "alice"}, {"api_key": "canary-cost-per-call-04"}):
            calls = 0
            response = await router.acompletion(model="gpt", messages=MESSAGES, **user)
            assert response.choices[0].message.content == "hi!"
    finally:
        await router.aclose()
    assert "failed: KeyError: 'litellm moved things'" in caplog.text
    assert "canary-cost" not in caplog.text


async def test_a_cancelled_call_leaves_nothing_counted_in_flight() -> None:
    """A call cancelled on the wire ends for the bookkeeping too: else its entries, counted in
    flight for ever, would never leave the cost map."""
    router = await build_router(config(unique_id()), SecretsManager(alice_source()))
    sent = asyncio.Event()

    async def never_answered(**kwargs: Any) -> Any:
        sent.set()
        await asyncio.Event().wait()

    router.router.acompletion = never_answered  # type: ignore[method-assign]
    try:
        for user in ({"user_id": "alice"}, {"api_key": "canary-cost-per-call-05"}):
            sent.clear()
            call = asyncio.create_task(router.acompletion(model="gpt", messages=MESSAGES, **user))
            await sent.wait()
            assert router._calls_in_flight  # counted while on the wire
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert not router._calls_in_flight
    finally:
        await router.aclose()


async def test_a_call_in_flight_when_the_users_key_is_removed_takes_its_entry_at_its_end() -> None:
    source = alice_source()
    secrets = SecretsManager(source)
    router = await build_router(config(unique_id()), secrets, follow_changes=False)
    try:
        _, old_entry = await alice_call(router)
        sent, answer = asyncio.Event(), asyncio.Event()
        litellm_call = router.router.acompletion

        async def first_held_on_the_wire(**kwargs: Any) -> Any:
            if not sent.is_set():
                sent.set()
                await answer.wait()
            return await litellm_call(**kwargs)

        router.router.acompletion = first_held_on_the_wire  # type: ignore[method-assign]
        call = asyncio.create_task(router.acompletion(model="gpt", messages=MESSAGES, user_id="alice"))
        await sent.wait()  # the call carries her key now
        source.remove(SecretKey("openai", user_id="alice"))
        secrets.invalidate("openai", user_id="alice")
        await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")  # the system key
        assert old_entry in litellm.model_cost  # the call in flight reads its price at its end
        answer.set()
        response = await call
        assert priced(response)
        assert old_entry not in litellm.model_cost  # ...and then it goes, with nothing to keep it
    finally:
        await router.aclose()


@pytest.mark.parametrize("removed_by", ["key change", "aclose"])
async def test_a_stream_dropped_unread_ends_its_call_and_its_entries_go(removed_by: str) -> None:
    """An async generator never iterated runs no ``finally``: a stream the caller got and dropped
    unread kept its call counted in flight for ever, and its entries in litellm's map."""
    source = alice_source()
    secrets = SecretsManager(source)
    deployment_id = unique_id()
    router = await build_router(config(deployment_id), secrets)
    try:
        _, entry = await alice_call(router)
        stream = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice", stream=True)
        per_call = await router.acompletion(
            model="gpt", messages=MESSAGES, api_key="canary-cost-per-call-06", stream=True
        )
        assert router._calls_in_flight
        del stream, per_call
        gc.collect()
        await asyncio.sleep(0)  # one turn of the loop: the finalizers hand the calls' ends to it
        assert not router._calls_in_flight
        if removed_by == "key change":
            source.set(SecretKey("openai", user_id="alice"), {"api_key": NEW_KEY})
            await secrets.refresh(user_id="alice")
            assert entry not in litellm.model_cost
    finally:
        await router.aclose()
    assert derived_from(deployment_id) == set()


async def test_a_stream_dropped_unread_after_aclose_takes_its_entries_then() -> None:
    deployment_id = unique_id()
    router = await build_router(config(deployment_id), SecretsManager(alice_source()))
    stream = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice", stream=True)
    await router.aclose()
    assert derived_from(deployment_id)  # the stream may still be read: its entry stays
    del stream
    gc.collect()
    await asyncio.sleep(0)  # the finalizer hands the call's end to the loop
    assert derived_from(deployment_id) == set()


async def test_a_stream_read_to_its_end_ends_its_call_once() -> None:
    """Its finalizer does nothing more once the stream ended: counted twice out of flight, the
    entry of another call in flight with the same key would go under it."""
    router = await build_router(config(unique_id()), SecretsManager(alice_source()))
    try:
        held = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice", stream=True)
        read = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice", stream=True)
        in_flight = dict(router._calls_in_flight)
        assert set(in_flight.values()) == {2}
        assert [chunk async for chunk in read]
        del read
        gc.collect()
        await asyncio.sleep(0)
        assert router._calls_in_flight == dict.fromkeys(in_flight, 1)  # the held stream's
        assert [chunk async for chunk in held]
        assert not router._calls_in_flight
    finally:
        await router.aclose()


async def test_a_traced_stream_dropped_unread_ends_its_call() -> None:
    """With tracing the caller holds the span's wrapper, which closes the stream it wraps when
    dropped (a task on the loop): the call ends once that let the stream go."""
    from opentelemetry.sdk.trace import TracerProvider

    from dynamic_agents.observability import Tracing

    provider = TracerProvider()
    deployment_id = unique_id()
    router = await build_router(
        config(deployment_id), SecretsManager(alice_source()), tracing=Tracing(provider)
    )
    try:
        stream = await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice", stream=True)
        assert router._calls_in_flight
        del stream
        gc.collect()
        await wait_until(lambda: not router._calls_in_flight, what="the dropped stream's call to end")
    finally:
        await router.aclose()
        provider.shutdown()
    assert derived_from(deployment_id) == set()


async def test_a_sync_call_with_a_key_of_its_own_keeps_its_entry_while_in_flight() -> None:
    """The synchronous path (agno's ``run``, here in a thread of its own) counts its call in flight
    like the async one: ``aclose()`` while it runs leaves its entry, which goes at its end."""
    deployment_id = unique_id()
    router = await build_router(config(deployment_id), SecretsManager(alice_source()))
    sent, answer = threading.Event(), threading.Event()
    litellm_call = router.router.completion

    def answered_then_held(**kwargs: Any) -> Any:
        response = litellm_call(**kwargs)  # its entry registered, the answer priced
        sent.set()
        answer.wait(10)
        return response

    router.router.completion = answered_then_held  # type: ignore[method-assign]
    try:
        call = asyncio.create_task(
            asyncio.to_thread(
                router.completion, model="gpt", messages=MESSAGES, api_key="canary-cost-per-call-07"
            )
        )
        await asyncio.to_thread(sent.wait, 10)
        (entry,) = derived_from(deployment_id)
        assert set(router._calls_in_flight) == {entry, deployment_id}
        await router.aclose()
        assert entry in litellm.model_cost  # the call in flight reads its price at its end
    finally:
        answer.set()
        await router.aclose()
    response = await call
    assert response._hidden_params["model_id"] == entry
    assert not router._calls_in_flight
    assert derived_from(deployment_id) == set()  # ...and then it goes


@pytest.mark.parametrize("meanwhile", ["a router built", "a router closed"])
@pytest.mark.parametrize("walk", ["clients", "cost map"])
async def test_a_sync_calls_end_in_its_thread_walks_the_routers_while_the_loop_changes_them(
    walk: str, meanwhile: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The end of a synchronous call (agno's ``run``, in a thread of its own) whose router closed
    while it was on the wire goes through the open routers, in that thread, to drop its clients
    and its cost-map entries: the event loop building or closing a router meanwhile made that
    walk fail (``Set changed size during iteration``), logged, with the entries left behind."""
    deployment_id, other_id = unique_id(), unique_id()
    secrets = SecretsManager(alice_source())
    router = await build_router(config(deployment_id, prices_in="model_info"), secrets)
    other = await build_router(config(other_id), secrets)
    walking, changed = threading.Event(), threading.Event()

    def paused_once() -> None:  # the walk in the call's thread (not the loop's) stops at the other router
        if threading.current_thread() is not threading.main_thread() and not walking.is_set():
            walking.set()
            changed.wait(10)

    if walk == "clients":
        users_digests = other._users_digests

        def paused_users_digests() -> set[str]:
            paused_once()
            return users_digests()

        other._users_digests = paused_users_digests  # type: ignore[method-assign]
    else:

        class PausedDeployments(dict[str, Any]):
            def __contains__(self, entry: object) -> bool:
                paused_once()
                return super().__contains__(entry)

        other._deployments = PausedDeployments(other._deployments)
    sent, answer = hold_sync_on_the_wire(router)
    call = asyncio.create_task(asyncio.to_thread(router.completion, model="gpt", messages=MESSAGES))
    built: list[LLMRouter] = []
    try:
        await asyncio.to_thread(sent.wait, 10)
        await router.aclose()  # the call's end drops the clients and entries it leaves
        answer.set()
        assert await asyncio.to_thread(walking.wait, 10)
        if meanwhile == "a router built":
            built.append(await build_router(config(unique_id()), secrets))
        else:
            await other.aclose()
        changed.set()
        assert priced(await call)
    finally:
        answer.set()
        changed.set()
        for each in (router, other, *built):
            await each.aclose()
    assert "failed" not in caplog.text
    assert deployment_id not in litellm.model_cost


async def test_a_sync_calls_end_skips_a_users_key_the_loop_removes_while_it_reads_them(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The end of a synchronous call whose router closed while it was on the wire reads the users'
    keys of the other open routers, in its thread, to keep their clients: a key the event loop
    removed between the copy of a router's slots and the read of its record (a user pushed out by
    another's call) raised ``KeyError``, logged, and the call's clients and cost-map entry stayed."""
    monkeypatch.setattr("dynamic_agents.llm.router._USERS_KEYS_KEPT", 1)  # bob's key pushes alice's out
    system_key = "canary-race-system-01"
    deployment_id = unique_id()
    params = {"model": "openai/gpt-4o-mini", "api_key": "secret:openai:api_key", "api_base": fake.api_base}
    prices = {"input_cost_per_token": INPUT_PRICE, "output_cost_per_token": OUTPUT_PRICE}

    def config_through_fake(router_id: str) -> RouterConfig:
        model_info = {"id": router_id, **prices}
        deployment = {"model_name": "gpt", "litellm_params": params, "model_info": model_info}
        return RouterConfig.from_dict({"model_list": [deployment], "num_retries": 0})

    router = await build_router(
        config_through_fake(deployment_id), SecretsManager(StaticSource({"openai": {"api_key": system_key}}))
    )
    users = {name: {"openai": {"api_key": f"canary-race-{name}-01"}} for name in ("alice", "bob")}
    other_source = StaticSource({"openai": {"api_key": "canary-race-other-01"}}, users=users)
    other = await build_router(config_through_fake(unique_id()), SecretsManager(other_source))
    await other.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
    reading, removed = threading.Event(), threading.Event()
    users_keys = type(other._users_keys)
    slots = users_keys.__iter__

    def slots_then_paused(cache: Any) -> Iterator[Any]:  # the slots copied, in the call's thread
        yield from slots(cache)
        in_the_calls_thread = threading.current_thread() is not threading.main_thread()
        if cache is other._users_keys and in_the_calls_thread and not reading.is_set():
            reading.set()
            removed.wait(10)

    monkeypatch.setattr(users_keys, "__iter__", slots_then_paused)
    sent, answer = hold_sync_on_the_wire(router)
    call = asyncio.create_task(asyncio.to_thread(router.completion, model="gpt", messages=MESSAGES))
    try:
        await asyncio.to_thread(sent.wait, 10)
        await router.aclose()  # the call's end drops the client it builds and its entry
        answer.set()
        assert await asyncio.to_thread(reading.wait, 10)
        await other.acompletion(model="gpt", messages=MESSAGES, user_id="bob")
        assert ("openai", "api_key", "alice") not in other._users_keys
        removed.set()
        assert priced(await call)
    finally:
        answer.set()
        removed.set()
        await router.aclose()
    try:
        assert "failed" not in caplog.text
        assert cached_clients(system_key) == []
        assert deployment_id not in litellm.model_cost
        assert cached_clients("canary-race-bob-01")  # the other router's user's, kept
    finally:
        await other.aclose()


async def test_a_user_pushed_out_keeps_an_entry_another_router_uses_without_walking_its_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each router counts the entries its users' keys use: whether one pushed out is still in use
    is a lookup per entry and open router, not a walk through every open router's 1,024 users'
    records (about 134 µs a router, on the end of the call that pushed her out)."""
    monkeypatch.setattr("dynamic_agents.llm.router._USERS_KEYS_KEPT", 2)
    users = {f"user-{n}": {"openai": {"api_key": f"canary-cost-user-{n:02d}"}} for n in range(3)}
    secrets = SecretsManager(StaticSource({"openai": {"api_key": "canary-cost-system-01"}}, users=users))
    deployment_id = unique_id()
    first = await build_router(config(deployment_id), secrets)
    second = await build_router(config(deployment_id), secrets)
    walked: list[object] = []
    users_keys = type(first._users_keys)
    real_iter = users_keys.__iter__
    monkeypatch.setattr(users_keys, "__iter__", lambda cache: walked.append(cache) or real_iter(cache))
    try:
        response = await first.acompletion(model="gpt", messages=MESSAGES, user_id="user-0")
        shared = response._hidden_params["model_id"]
        await second.acompletion(model="gpt", messages=MESSAGES, user_id="user-0")
        for user_id in ("user-1", "user-2"):  # user-0 pushed out of the first router's two
            await first.acompletion(model="gpt", messages=MESSAGES, user_id=user_id)
        assert ("openai", "api_key", "user-0") not in first._users_keys
        assert walked == []
        assert shared in litellm.model_cost  # the second router remembers her key
        for router in (first, second):  # the counts agree with the records
            records = [Cache.__getitem__(router._users_keys, slot) for slot in list(router._users_keys)]
            assert router._users_keys.in_use == Counter(e for record in records for e in record.entries)
        assert first._users_keys.in_use
        await second.aclose()
        assert shared not in litellm.model_cost  # nobody does now
    finally:
        await first.aclose()
        await second.aclose()
    assert derived_from(deployment_id) == set()


@pytest.mark.parametrize("caller", ["system key", "user without a key of her own", "sync"])
async def test_a_call_with_the_deployments_own_key_keeps_its_entry_through_aclose(caller: str) -> None:
    """A call sending the deployment's own key is priced by the deployment's entry at its end
    (prices in the model info): ``aclose()`` while it is on the wire must leave that entry (it
    took it, and the call was priced at the catalog's price), which goes once the call ends."""
    deployment_id = unique_id()
    source = StaticSource({"openai": {"api_key": "canary-cost-system-01"}}, users={"bob": {}})
    router = await build_router(config(deployment_id, prices_in="model_info"), SecretsManager(source))
    if caller == "sync":
        sent, answer = hold_sync_on_the_wire(router)
        call = asyncio.create_task(asyncio.to_thread(router.completion, model="gpt", messages=MESSAGES))
    else:
        sent, answer = threading.Event(), threading.Event()
        async_call = router.router.acompletion

        async def held(**kwargs: Any) -> Any:
            sent.set()
            await asyncio.to_thread(answer.wait, 10)
            return await async_call(**kwargs)

        router.router.acompletion = held  # type: ignore[method-assign]
        user = {"user_id": "bob"} if caller.startswith("user") else {}
        call = asyncio.create_task(router.acompletion(model="gpt", messages=MESSAGES, **user))
    try:
        await asyncio.to_thread(sent.wait, 10)
        await router.aclose()
        assert deployment_id in litellm.model_cost  # the call in flight reads its price at its end
    finally:
        answer.set()
        await router.aclose()
    response = await call
    assert priced(response)
    assert deployment_id not in litellm.model_cost  # ...and then it goes


@pytest.mark.parametrize("then", ["the next call", "aclose"])
async def test_a_stream_dropped_unread_after_its_event_loop_closed_ends_its_call(then: str) -> None:
    """Its finalizer cannot hand the call's end to a closed loop, and cannot run it where it runs
    (inside the garbage collector): the end waits for the next call, refresh or ``aclose()`` of a
    router, instead of staying in flight, and its entries in litellm's map, for ever."""
    deployment_id = unique_id()
    router = await build_router(config(deployment_id), SecretsManager(alice_source()))

    async def stream_unread() -> Any:  # in a loop of its own, closed when asyncio.run returns
        return await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice", stream=True)

    try:
        stream = await asyncio.to_thread(asyncio.run, stream_unread())
        (entry,) = derived_from(deployment_id)
        del stream
        gc.collect()
        await asyncio.sleep(0)
        if then == "the next call":
            await router.acompletion(model="gpt", messages=MESSAGES)
            assert not router._calls_in_flight
            await router.acompletion(model="gpt", messages=MESSAGES, user_id="alice")
            assert not router._calls_in_flight
    finally:
        await router.aclose()
    assert entry not in litellm.model_cost
    assert deployment_id not in litellm.model_cost


async def test_a_sync_stream_keeps_its_entries_until_it_is_read_and_is_priced() -> None:
    """litellm prices a stream at its end: ``aclose()`` after the synchronous ``completion()``
    handed its stream over, before it was read, must leave the entries it is priced by (the
    deployment's, with its ``model_info`` prices, and its key's), which go once it is read."""
    deployment_id = unique_id()
    router = await build_router(config(deployment_id, prices_in="model_info"), SecretsManager(alice_source()))
    costs: list[Any] = []

    class CostSeen(litellm.integrations.custom_logger.CustomLogger):  # type: ignore[misc]
        def log_success_event(self, kwargs: Any, *_: Any, **__: Any) -> None:
            costs.append(kwargs.get("response_cost"))

    seen = CostSeen()
    litellm.success_callback.append(seen)  # the synchronous path's success logging reads this list
    try:
        stream = await asyncio.to_thread(
            router.completion, model="gpt", messages=MESSAGES, api_key="canary-cost-per-call-08", stream=True
        )
        (entry,) = derived_from(deployment_id)
        await router.aclose()
        assert {entry, deployment_id} <= set(litellm.model_cost)  # the stream is not read yet
        chunks = await asyncio.to_thread(list, stream)
        assert chunks
        await wait_until(lambda: bool(costs), what="litellm to log the stream's success")
        assert costs[-1] > 0.01  # the deployment's prices (0.5 per token), not the catalog's
        assert not {entry, deployment_id} & set(litellm.model_cost)  # read: they go
    finally:
        litellm.success_callback.remove(seen)
        await router.aclose()


@pytest.mark.parametrize("next_call", ["acompletion", "completion"])
@pytest.mark.parametrize("dropped", ["unread", "read in part", "closed"])
async def test_a_sync_stream_not_read_to_its_end_ends_its_call_at_the_next_call(
    dropped: str, next_call: str
) -> None:
    """A synchronous generator closed early may be closed by the garbage collector, where the
    call's end cannot run: it is left to the next call, ``refresh()`` or ``aclose()`` — a
    synchronous one too (a host making none async would pile them up)."""
    deployment_id = unique_id()
    router = await build_router(config(deployment_id), SecretsManager(alice_source()))
    try:
        # Called here, not through asyncio.to_thread, whose future keeps the result a while.
        stream = router.completion(
            model="gpt", messages=MESSAGES, api_key="canary-cost-per-call-09", stream=True
        )
        if dropped == "read in part":
            assert next(stream)
        elif dropped == "closed":
            stream.close()
        del stream
        gc.collect()
        assert router._calls_in_flight
        if next_call == "acompletion":
            await router.acompletion(model="gpt", messages=MESSAGES)
        else:
            router.completion(model="gpt", messages=MESSAGES)
        assert not router._calls_in_flight
    finally:
        await router.aclose()
    assert derived_from(deployment_id) == set()


async def test_a_call_in_flight_on_a_closed_router_keeps_its_entry_when_a_sibling_closes() -> None:
    """Routers built from one config share their deployments' entries: the last one closed
    removes them, but not while a call of a router closed before it is still on the wire (it
    counted only the open routers' calls)."""
    deployment_id = unique_id()
    secrets = SecretsManager(alice_source())
    first = await build_router(config(deployment_id, prices_in="model_info"), secrets)
    second = await build_router(config(deployment_id, prices_in="model_info"), secrets)
    sent, answer = hold_on_the_wire(first)
    call = asyncio.create_task(first.acompletion(model="gpt", messages=MESSAGES))
    try:
        await sent.wait()
        await first.aclose()
        await second.aclose()
        assert deployment_id in litellm.model_cost  # the first router's call reads its price at its end
    finally:
        answer.set()
        await first.aclose()
        await second.aclose()
    assert priced(await call)
    assert deployment_id not in litellm.model_cost  # ...and then it goes


async def test_a_rotation_that_ends_after_aclose_writes_nothing_back_into_litellms_map() -> None:
    """``refresh()`` resolving a rotated key while ``aclose()`` runs: writing it into the discarded
    litellm Router afterwards registered the deployment's cost-map entry again, after ``aclose()``
    had removed it, for the life of the process."""
    deployment_id = unique_id()
    fetching, release = asyncio.Event(), asyncio.Event()

    class HeldSource(StaticSource):
        held = False

        async def fetch(self, key: SecretKey) -> Any:
            if self.held:
                fetching.set()
                await release.wait()
            return await super().fetch(key)

    source = HeldSource({"openai": {"api_key": "canary-cost-system-01"}})
    router = await build_router(config(deployment_id), SecretsManager(source))
    source.set(SecretKey("openai"), {"api_key": "canary-cost-system-02"})
    source.held = True
    refresh = asyncio.create_task(router.refresh())
    await fetching.wait()
    await router.aclose()
    assert deployment_id not in litellm.model_cost
    release.set()
    assert await refresh == 0  # nothing swapped into a closed router
    assert deployment_id not in litellm.model_cost


async def test_a_router_built_while_a_closed_ones_call_is_in_flight_removes_the_entries_it_shares() -> None:
    """A router built from the same config while a call of a closed one is still in flight (a
    config reload: the old router closed, then the new one built) finds the deployments' entries in
    litellm's map: they are the closed router's, not another owner's, and go with the last router."""
    deployment_id = unique_id()
    secrets = SecretsManager(alice_source())
    old = await build_router(config(deployment_id, prices_in="model_info"), secrets)
    sent, answer = hold_on_the_wire(old)
    call = asyncio.create_task(old.acompletion(model="gpt", messages=MESSAGES))
    await sent.wait()
    await old.aclose()
    new = await build_router(config(deployment_id, prices_in="model_info"), secrets)
    try:
        answer.set()
        assert priced(await call)
        assert deployment_id in litellm.model_cost  # the new router's deployment
    finally:
        await new.aclose()
    assert deployment_id not in litellm.model_cost


async def test_a_router_built_while_a_closed_ones_sync_call_ends_in_its_thread_removes_their_entry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same config reload, the closed router's call synchronous (ending in its own thread): a
    router built on the event loop once that call was counted out of flight but before its end
    removed the entries found the deployment's entry in litellm's map, owned by nobody, and kept
    it as another owner's; the closed router's end kept it too (the new router uses it), and it
    stayed in litellm's map for the life of the process."""
    deployment_id = unique_id()
    secrets = SecretsManager(alice_source())
    old = await build_router(config(deployment_id, prices_in="model_info"), secrets)
    out_of_flight, built = threading.Event(), threading.Event()
    after_call = old._after_call

    def paused_after_call(*args: Any) -> None:  # the call's next step, in its thread
        out_of_flight.set()
        built.wait(10)
        after_call(*args)

    old._after_call = paused_after_call  # type: ignore[method-assign]
    sent, answer = hold_sync_on_the_wire(old)
    call = asyncio.create_task(asyncio.to_thread(old.completion, model="gpt", messages=MESSAGES))
    new: LLMRouter | None = None
    try:
        await asyncio.to_thread(sent.wait, 10)
        await old.aclose()
        answer.set()
        assert await asyncio.to_thread(out_of_flight.wait, 10)
        assert not old._calls_in_flight
        new = await build_router(config(deployment_id, prices_in="model_info"), secrets)
        built.set()
        assert priced(await call)
        assert deployment_id in litellm.model_cost  # the new router's deployment
    finally:
        answer.set()
        built.set()
        await old.aclose()
        if new is not None:
            await new.aclose()
    assert "failed" not in caplog.text
    assert deployment_id not in litellm.model_cost


async def test_aclose_cancelled_while_it_waits_for_an_update_still_cleans_up() -> None:
    """``aclose()`` waits for the background updates it cancels; cancelled there (a shutdown's
    timeout), it marked the router closed and skipped the rest: a second ``aclose()`` returned at
    once, and the litellm Router stayed hooked into litellm, its entries in the cost map."""
    deployment_id = unique_id()
    router = await build_router(config(deployment_id), SecretsManager(alice_source()))
    update = asyncio.create_task(asyncio.Event().wait())  # an update in the background
    router._follow_ups.add(update)
    closing = asyncio.create_task(router.aclose())
    await asyncio.sleep(0)  # aclose() is waiting for the update it cancelled
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await router.aclose()
    assert update.cancelled()
    assert deployment_id not in litellm.model_cost
