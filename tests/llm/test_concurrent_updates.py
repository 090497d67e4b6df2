"""Two updates of one deployment's credentials at once: the newer key is the one that stays."""

from __future__ import annotations

import asyncio
import contextlib

from dynamic_agents.llm import RouterConfig, build_router
from dynamic_agents.secrets import SecretKey, SecretsManager, SecretValue, StaticSource
from dynamic_agents.testing import FakeOpenAI
from tests.support.waiting import wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
V1, V2 = "sk-concurrent-v1-000001", "sk-concurrent-v2-000002"


class HeldSecrets(SecretsManager):
    """A manager whose next resolution of ``secret:openai:api_key``, once armed, resolves it and
    then waits for ``release``."""

    def __init__(self, source: StaticSource) -> None:
        super().__init__(source)
        self.armed = False
        self.held, self.release = asyncio.Event(), asyncio.Event()

    async def resolve(self, reference: str, *, user_id: str | None = None) -> SecretValue:
        resolved = await super().resolve(reference, user_id=user_id)
        if self.armed and reference == "secret:openai:api_key":
            self.armed = False
            self.held.set()
            await self.release.wait()
        return resolved


async def test_an_update_that_resolved_an_older_key_never_overwrites_a_newer_one(fake: FakeOpenAI) -> None:
    """A refresh resolves V1 and is held there; the key rotates to V2 and the change notice updates
    the deployment meanwhile; then the refresh goes on. It must not write V1 back over V2."""
    source = StaticSource({"openai": {"api_key": V1}})
    secrets = HeldSecrets(source)
    params = {"model": "openai/gpt-4o-mini", "api_key": "secret:openai:api_key", "api_base": fake.api_base}
    config = RouterConfig.from_dict(
        {"model_list": [{"model_name": "gpt", "litellm_params": params, "model_info": {"id": "gpt-main"}}]}
    )
    async with await build_router(config, secrets) as router:
        secrets.armed = True
        first = asyncio.create_task(router.refresh())  # resolves V1, then is held
        await asyncio.wait_for(secrets.held.wait(), 5)
        source.set(SecretKey("openai"), {"api_key": V2})
        await asyncio.wait_for(secrets.refresh(), 5)  # the second update (the change notice) completes
        secrets.release.set()
        await asyncio.wait_for(first, 5)
        (deployment,) = router.router.model_list
        assert deployment["model_info"]["id"] == "gpt-main"
        assert deployment["litellm_params"]["api_key"] == V2
        await router.acompletion(model="gpt", messages=MESSAGES)
    assert [request.authorization for request in fake.requests] == [f"Bearer {V2}"]


async def test_a_change_notice_sent_by_the_fetch_an_update_waits_for_does_not_deadlock(
    fake: FakeOpenAI,
) -> None:
    """The update that a notice for one provider starts finds the other provider's key expired:
    its fetch sees a rotation and sends a notice for the same deployment while the update waits on
    that fetch. The notice must not wait for the update (which waits for it), and both keys land."""
    now = [0.0]
    source = StaticSource({"openai": {"api_key": V1}, "team": {"token": "team-token-v1"}})
    secrets = SecretsManager(source, ttl=60, clock=lambda: now[0])
    params = {
        "model": "openai/gpt-4o-mini",
        "api_key": "secret:openai:api_key",
        "api_base": fake.api_base,
        "extra_headers": {"X-Team-Token": "secret:team:token"},
    }
    config = RouterConfig.from_dict({"model_list": [{"model_name": "gpt", "litellm_params": params}]})
    async with await build_router(config, secrets) as router:
        source.set(SecretKey("openai"), {"api_key": V2})
        source.set(SecretKey("team"), {"token": "team-token-v2"})
        now[0] = 120.0  # both cached keys expired
        await asyncio.wait_for(secrets.refresh("team"), 5)
        (deployment,) = router.router.model_list
        assert deployment["litellm_params"]["api_key"] == V2
        assert deployment["litellm_params"]["extra_headers"] == {"X-Team-Token": "team-token-v2"}


async def test_a_change_left_to_an_update_that_is_then_cancelled_still_lands(fake: FakeOpenAI) -> None:
    """A change notice arriving while an update of the deployment is under way leaves the work to
    that update. If that update is cancelled (its caller's request timed out, say), the change was
    lost until the next one; it is taken up in the background now."""
    source = StaticSource({"openai": {"api_key": V1}})
    secrets = HeldSecrets(source)
    params = {"model": "openai/gpt-4o-mini", "api_key": "secret:openai:api_key", "api_base": fake.api_base}
    config = RouterConfig.from_dict({"model_list": [{"model_name": "gpt", "litellm_params": params}]})
    async with await build_router(config, secrets) as router:
        secrets.armed = True
        first = asyncio.create_task(router.refresh())  # resolves V1, then is held
        await asyncio.wait_for(secrets.held.wait(), 5)
        source.set(SecretKey("openai"), {"api_key": V2})
        await asyncio.wait_for(secrets.refresh(), 5)  # the notice leaves the update to `first`
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await wait_until(
            lambda: router.router.model_list[0]["litellm_params"]["api_key"] == V2, what="V2 written"
        )
        await router.acompletion(model="gpt", messages=MESSAGES)
    assert [request.authorization for request in fake.requests] == [f"Bearer {V2}"]
