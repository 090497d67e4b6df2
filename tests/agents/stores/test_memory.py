from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dynamic_agents.agents.stores import InMemorySpecStore, SpecStore
from dynamic_agents.agents.stores.base import SpecModels
from tests.agents.stores.contract import Backend, SpecStoreContract


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async def make(models: SpecModels) -> SpecStore:
        return InMemorySpecStore(models)

    backend = Backend(make)
    yield backend
    await backend.aclose()


class TestInMemorySpecStore(SpecStoreContract):
    pass
