"""The behaviour every spec store must have, written once for every backend.

A backend test module provides a ``backend`` fixture and subclasses :class:`SpecStoreContract`
(and :class:`PersistentSpecStoreContract` when the storage outlives a store: files, databases).
The specs are two small dummy models, so these tests do not depend on the library's own ones.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from dynamic_agents.agents.specs.base import SpecBase, SpecKind, SpecStatus
from dynamic_agents.agents.stores import SpecStore
from dynamic_agents.agents.stores.base import SpecModels
from dynamic_agents.exceptions import (
    ConfigurationError,
    SpecConflictError,
    SpecNotFoundError,
    SpecValidationError,
)


class DummyAgent(SpecBase):
    kind: ClassVar[SpecKind] = SpecKind.AGENT
    llm: str = "test-model"


class DummyTeam(SpecBase):
    kind: ClassVar[SpecKind] = SpecKind.TEAM
    members: tuple[str, ...] = ()


class StricterAgent(SpecBase):
    """A later model of agents that no longer has ``llm``: old documents stop validating."""

    kind: ClassVar[SpecKind] = SpecKind.AGENT


MODELS: SpecModels = {SpecKind.AGENT: DummyAgent, SpecKind.TEAM: DummyTeam}


@dataclass
class Backend:
    """A backend under test: stores sharing one storage, and a way to break a stored document.

    ``corrupt(kind, id)`` replaces the stored document with one that does not validate and returns
    what the error message must name (a file, a table). ``rekind(kind, id, new_kind)`` stores the
    spec under a kind no spec has (a row of a later version, a hand edit), returning the same.
    """

    make: Callable[[SpecModels], Awaitable[SpecStore]]
    corrupt: Callable[[SpecKind, str], Awaitable[str]] | None = None
    rekind: Callable[[SpecKind, str, str], Awaitable[str]] | None = None
    stores: list[SpecStore] = field(default_factory=list)

    async def store(self, models: SpecModels = MODELS) -> SpecStore:
        store = await self.make(models)
        self.stores.append(store)
        return store

    async def aclose(self) -> None:
        for store in self.stores:
            await store.aclose()


def agent(spec_id: str = "helper", **fields: object) -> DummyAgent:
    return DummyAgent.model_validate({"id": spec_id, **fields})


def team(spec_id: str = "crew", **fields: object) -> DummyTeam:
    return DummyTeam.model_validate({"id": spec_id, **fields})


async def stored_agent(store: SpecStore, spec_id: str = "helper") -> DummyAgent:
    spec = await store.require(SpecKind.AGENT, spec_id)
    assert isinstance(spec, DummyAgent)
    return spec


class SpecStoreContract:
    @pytest.fixture
    async def store(self, backend: Backend) -> SpecStore:
        return await backend.store()

    # -- create and read ----------------------------------------------------------------------------

    async def test_create_stores_version_1_and_get_returns_an_equal_copy(self, store: SpecStore) -> None:
        spec = agent(version=7, llm="big", tags=["a", "b"], metadata={"n": [1, {"x": None}]}, name="Helper")
        stored = await store.create(spec)
        assert stored == spec.model_copy(update={"version": 1})
        got = await store.get(SpecKind.AGENT, "helper")
        assert type(got) is DummyAgent
        assert got == stored
        assert got is not stored

    async def test_any_unicode_text_reads_back_as_written(self, store: SpecStore) -> None:
        """The YAML store read NEL (U+0085, the "…" of Windows-1252 text read as Latin-1) back as a
        line break: a spec stored with one came back changed."""
        text = "a\x85b \u2028 \u2029 \ufeff \x00 \x07 \x1b \t\r\n é 😀 \ufffe \uffff 'q' \"dq\" #x: y"
        nel = "wait\x85"  # alone and last: with the others, or before others, it is written escaped
        spec = agent(llm=nel, tags=[nel, text], metadata={nel: [text, {"k": nel}]}, name=text)
        await store.create(spec)
        assert await store.get(SpecKind.AGENT, "helper") == spec
        assert await store.list() == [spec]

    async def test_every_read_is_a_fresh_copy(self, store: SpecStore) -> None:
        await store.create(agent(metadata={"k": "v"}))
        first = await store.require(SpecKind.AGENT, "helper")
        first.metadata["k"] = "changed"
        assert (await store.require(SpecKind.AGENT, "helper")).metadata == {"k": "v"}

    async def test_the_same_id_may_exist_once_per_kind(self, store: SpecStore) -> None:
        await store.create(agent("same"))
        await store.create(team("same", members=["same"]))
        assert type(await store.get(SpecKind.TEAM, "same")) is DummyTeam
        assert type(await store.get(SpecKind.AGENT, "same")) is DummyAgent

    async def test_creating_twice_is_a_conflict_naming_the_stored_version(self, store: SpecStore) -> None:
        await store.create(agent())
        await store.update(agent(llm="other"), expected_version=1)
        with pytest.raises(SpecConflictError, match="agent 'helper'") as caught:
            await store.create(agent(llm="third"))
        assert caught.value.current == 2
        assert (await stored_agent(store)).llm == "other"

    @pytest.mark.parametrize("spec_id", ["a\x00b", "../helper", "x" * 300, "ünïcode", ""])
    async def test_an_id_no_spec_can_have_is_not_found(self, store: SpecStore, spec_id: str) -> None:
        """PostgreSQL raised psycopg's DataError ("text fields cannot contain NUL bytes") for an id
        with a NUL character (a REST path with %00), where every other backend found no spec."""
        await store.create(agent())
        assert await store.get(SpecKind.AGENT, spec_id) is None
        assert await store.version(SpecKind.AGENT, spec_id) is None
        assert await store.delete(SpecKind.AGENT, spec_id) is False
        assert await store.delete(SpecKind.AGENT, spec_id, expected_version=1) is False
        with pytest.raises(SpecNotFoundError):
            await store.require(SpecKind.AGENT, spec_id)
        assert await store.version(SpecKind.AGENT, "helper") == 1

    async def test_a_kind_given_as_its_text_is_read_and_an_unknown_one_is_refused(
        self, store: SpecStore
    ) -> None:
        """A kind as text ("agent") works as the member; a misspelt one ("agnet") was a bare
        ValueError ("'agnet' is not a valid SpecKind") or, in some calls, an empty answer."""
        await store.create(agent())
        assert await store.version("agent", "helper") == 1  # type: ignore[arg-type]
        refusal = r"^kind must be one of 'agent', 'team', 'workflow', got 'agnet'; did you mean 'agent'\?$"
        for call in (
            lambda: store.get("agnet", "helper"),  # type: ignore[arg-type]
            lambda: store.require("agnet", "helper"),  # type: ignore[arg-type]
            lambda: store.version("agnet", "helper"),  # type: ignore[arg-type]
            lambda: store.list("agnet"),  # type: ignore[arg-type]
            lambda: store.delete("agnet", "helper"),  # type: ignore[arg-type]
        ):
            with pytest.raises(ConfigurationError, match=refusal):
                await call()
        assert await store.version(SpecKind.AGENT, "helper") == 1

    @pytest.mark.parametrize(
        ("fields", "path"),
        [
            ({"llm": "x\ud800y"}, "llm"),
            ({"metadata": {"notes": ["fine", "\udfff"]}}, "metadata.notes[1]"),
            ({"tags": ["ok", "\ud800"]}, "tags[1]"),
        ],
    )
    async def test_a_lone_surrogate_is_refused_naming_where_and_nothing_is_stored(
        self, store: SpecStore, fields: dict[str, object], path: str
    ) -> None:
        """A lone surrogate (JSON's "\\ud800") is no Unicode text: the YAML store wrote a file
        no read could parse, and every list() failed on it from then on."""
        for write in (
            lambda: store.create(agent(**fields)),
            lambda: store.update(agent(**fields), expected_version=1),
        ):
            with pytest.raises(SpecValidationError, match="lone surrogate") as caught:
                await write()
            assert caught.value.path == path
            assert caught.value.spec == "agent 'helper'"
            if await store.version(SpecKind.AGENT, "helper") is None:
                await store.create(agent())
        assert await store.list() == [agent()]

    @pytest.mark.parametrize(
        ("fields", "path"),
        [
            ({"metadata": {"api_key": "sk-proj-CANARY0store0key00000000001"}}, "metadata"),
            ({"description": "posts as xoxb-CANARY0store0token000000001"}, "description"),
        ],
    )
    async def test_a_spec_changed_without_validation_is_refused_and_nothing_is_stored(
        self, store: SpecStore, fields: dict[str, object], path: str
    ) -> None:
        """A spec changed with pydantic's model_copy(update=…) skips its validators: the store
        wrote it as it was (a key in its metadata to a file) and every read of it failed from then
        on."""
        changed = agent().model_copy(update=fields)
        for write in (
            lambda: store.create(changed),
            lambda: store.update(changed, expected_version=1),
        ):
            with pytest.raises(SpecValidationError) as caught:
                await write()
            assert caught.value.path == path
            assert "CANARY0" not in str(caught.value)
            if await store.version(SpecKind.AGENT, "helper") is None:
                await store.create(agent())
        assert await store.list() == [agent()]

    async def test_a_status_given_as_its_text_filters_and_an_unknown_one_is_refused(
        self, store: SpecStore
    ) -> None:
        """An unknown status ("Active", "bogus") listed nothing on the in-memory and YAML stores
        and raised a bare ValueError on SQL."""
        await store.create(agent())
        assert await store.list(status="active") == [agent()]  # type: ignore[arg-type]
        assert await store.list(status="disabled") == []  # type: ignore[arg-type]
        for status in ("Active", "bogus"):
            with pytest.raises(
                ConfigurationError, match=rf"^status must be one of 'active', 'disabled', got '{status}'"
            ):
                await store.list(status=status)  # type: ignore[arg-type]

    async def test_unknown_specs_are_none_and_require_names_them(self, store: SpecStore) -> None:
        assert await store.get(SpecKind.AGENT, "nope") is None
        assert await store.version(SpecKind.AGENT, "nope") is None
        with pytest.raises(SpecNotFoundError, match="agent") as caught:
            await store.require(SpecKind.AGENT, "nope")
        assert "'nope'" in str(caught.value)

    # -- update ---------------------------------------------------------------------------------------

    async def test_update_from_the_stored_version_stores_the_next(self, store: SpecStore) -> None:
        await store.create(agent())
        second = await store.update(agent(llm="v2", version=1), expected_version=1)
        assert second.version == 2
        third = await store.update(agent(llm="v3", version=99), expected_version=2)
        assert third == agent(llm="v3", version=3)
        assert await store.get(SpecKind.AGENT, "helper") == third
        assert await store.version(SpecKind.AGENT, "helper") == 3

    async def test_update_from_a_stale_version_is_a_conflict_and_changes_nothing(
        self, store: SpecStore
    ) -> None:
        await store.create(agent())
        await store.update(agent(llm="v2"), expected_version=1)
        with pytest.raises(SpecConflictError) as caught:
            await store.update(agent(llm="stale"), expected_version=1)
        assert caught.value.current == 2
        assert (await stored_agent(store)).llm == "v2"

    async def test_update_of_a_missing_spec_is_not_found(self, store: SpecStore) -> None:
        with pytest.raises(SpecNotFoundError, match="agent 'ghost'"):
            await store.update(agent("ghost"), expected_version=1)

    async def test_concurrent_updates_from_one_version_have_one_winner(self, store: SpecStore) -> None:
        await store.create(agent())
        results = await asyncio.gather(
            *(store.update(agent(llm=f"writer-{n}"), expected_version=1) for n in range(5)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, SpecBase)]
        losers = [r for r in results if isinstance(r, SpecConflictError)]
        assert len(winners) == 1, results
        assert len(losers) == 4, results
        assert all(loser.current == 2 for loser in losers)
        assert await store.get(SpecKind.AGENT, "helper") == winners[0]

    @pytest.mark.parametrize("version", [True, "1", 0, -1, 1.5, None])
    async def test_an_expected_version_that_is_no_version_is_refused_naming_it(
        self, store: SpecStore, version: object
    ) -> None:
        """The backends disagreed: ``True`` updated as version 1 everywhere, ``"1"`` and ``None``
        raised a bare TypeError on SQL and YAML and a conflict "at version 1, not 1" in memory, and
        a delete with ``"1"`` removed the spec on SQL only."""
        await store.create(agent())
        pattern = rf"^expected_version must be a whole number > 0.* got {re.escape(repr(version))}$"
        with pytest.raises(ConfigurationError, match=pattern):
            await store.update(agent(llm="v2"), expected_version=version)  # type: ignore[arg-type]
        if version is not None:  # None is a delete without a version check
            with pytest.raises(ConfigurationError, match=pattern):
                await store.delete(SpecKind.AGENT, "helper", expected_version=version)  # type: ignore[arg-type]
        assert await stored_agent(store) == agent(version=1)

    # -- delete ---------------------------------------------------------------------------------------

    async def test_delete_removes_and_says_whether_there_was_a_spec(self, store: SpecStore) -> None:
        assert not await store.delete(SpecKind.AGENT, "helper")
        await store.create(agent())
        assert await store.delete(SpecKind.AGENT, "helper")
        assert await store.get(SpecKind.AGENT, "helper") is None
        assert await store.version(SpecKind.AGENT, "helper") is None
        assert not await store.delete(SpecKind.AGENT, "helper")
        assert (await store.create(agent())).version == 1  # the id is free again

    async def test_delete_with_an_expected_version(self, store: SpecStore) -> None:
        assert not await store.delete(SpecKind.AGENT, "helper", expected_version=1)
        await store.create(agent())
        await store.update(agent(), expected_version=1)
        with pytest.raises(SpecConflictError) as caught:
            await store.delete(SpecKind.AGENT, "helper", expected_version=1)
        assert caught.value.current == 2
        assert await store.version(SpecKind.AGENT, "helper") == 2
        assert await store.delete(SpecKind.AGENT, "helper", expected_version=2)
        assert await store.get(SpecKind.AGENT, "helper") is None

    # -- list -----------------------------------------------------------------------------------------

    async def test_list_filters_by_kind_tag_and_status_in_kind_then_id_order(self, store: SpecStore) -> None:
        disabled = SpecStatus.DISABLED
        for spec in [
            team("t1", tags=["blue"]),
            agent("b", tags=["blue", "x"]),
            agent("a_1", tags=["50%"], status=disabled),
            agent("B", tags=["blueish"]),
            agent("a-1", tags=["a_b"], status=disabled),
            agent("a.1", tags=["axb", "500"]),
        ]:
            await store.create(spec)

        def ids(specs: list[SpecBase]) -> list[tuple[str, str]]:
            return [(spec.kind.value, spec.id) for spec in specs]

        every = [("agent", i) for i in ["B", "a-1", "a.1", "a_1", "b"]] + [("team", "t1")]
        assert ids(await store.list()) == every
        assert ids(await store.list(SpecKind.AGENT)) == every[:-1]
        assert ids(await store.list(SpecKind.WORKFLOW)) == []
        assert ids(await store.list(tag="blue")) == [("agent", "b"), ("team", "t1")]
        assert ids(await store.list(SpecKind.AGENT, tag="blue")) == [("agent", "b")]
        assert ids(await store.list(tag="a_b")) == [("agent", "a-1")]
        assert ids(await store.list(tag="50%")) == [("agent", "a_1")]
        assert ids(await store.list(tag="blu")) == []
        assert ids(await store.list(status=disabled)) == [("agent", "a-1"), ("agent", "a_1")]
        assert ids(await store.list(status=SpecStatus.ACTIVE, tag="x")) == [("agent", "b")]
        listed = {spec.id: spec for spec in await store.list()}
        assert listed["b"] == await store.get(SpecKind.AGENT, "b")
        assert type(listed["t1"]) is DummyTeam

    # -- lifecycle ------------------------------------------------------------------------------------

    async def test_async_with_closes_the_store(self, backend: Backend) -> None:
        async with await backend.make(MODELS) as store:
            await store.create(agent())
            assert await store.version(SpecKind.AGENT, "helper") == 1


class PersistentSpecStoreContract(SpecStoreContract):
    """For storage that outlives a store: another store on it sees the same specs and versions."""

    async def test_specs_outlive_the_store_that_wrote_them(self, backend: Backend) -> None:
        async with await backend.make(MODELS) as first:
            await first.create(agent(llm="kept"))
            await first.create(team())
        second = await backend.store()
        assert await second.get(SpecKind.AGENT, "helper") == agent(llm="kept")
        assert [spec.id for spec in await second.list()] == ["helper", "crew"]

    async def test_two_stores_on_one_storage_see_each_others_versions(self, backend: Backend) -> None:
        first, second = await backend.store(), await backend.store()
        await first.create(agent())
        await second.update(agent(llm="by second"), expected_version=1)
        assert await first.version(SpecKind.AGENT, "helper") == 2
        with pytest.raises(SpecConflictError):
            await first.update(agent(llm="by first"), expected_version=1)

    async def test_concurrent_updates_through_two_stores_have_one_winner(self, backend: Backend) -> None:
        first, second = await backend.store(), await backend.store()
        await first.create(agent())
        results = await asyncio.gather(
            first.update(agent(llm="first"), expected_version=1),
            second.update(agent(llm="second"), expected_version=1),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, SpecBase)]
        assert len(winners) == 1, results
        assert sum(isinstance(r, SpecConflictError) for r in results) == 1, results
        assert await first.get(SpecKind.AGENT, "helper") == winners[0]

    async def test_a_broken_stored_document_is_a_validation_error_naming_where(
        self, store: SpecStore, backend: Backend
    ) -> None:
        assert backend.corrupt is not None
        await store.create(agent())
        await store.create(agent("fine"))
        where = await backend.corrupt(SpecKind.AGENT, "helper")
        with pytest.raises(SpecValidationError, match=re.escape(where)):
            await store.get(SpecKind.AGENT, "helper")
        with pytest.raises(SpecValidationError, match=re.escape(where)):
            await store.list()
        assert await store.get(SpecKind.AGENT, "fine") == agent("fine")

    async def test_a_document_the_model_no_longer_accepts_is_a_validation_error(
        self, store: SpecStore, backend: Backend
    ) -> None:
        await store.create(agent(llm="gone-field"))
        later = await backend.store({SpecKind.AGENT: StricterAgent})
        with pytest.raises(SpecValidationError) as caught:
            await later.get(SpecKind.AGENT, "helper")
        assert caught.value.path == "llm"
        assert "helper" in str(caught.value)


class SqlSpecStoreContract(PersistentSpecStoreContract):
    """For a table of rows: a row's kind is a column any writer may set."""

    async def test_a_row_of_an_unknown_kind_is_a_validation_error_naming_the_row(
        self, store: SpecStore, backend: Backend
    ) -> None:
        """It raised a bare ValueError ("'gadget' is not a valid SpecKind") from list()."""
        assert backend.rekind is not None
        await store.create(agent())
        await store.create(agent("fine"))
        table = await backend.rekind(SpecKind.AGENT, "helper", "gadget")
        with pytest.raises(SpecValidationError) as caught:
            await store.list()
        message = str(caught.value)
        assert message.startswith(f"{table} row ('gadget', 'helper'): ")
        assert "kind 'gadget'" in message
        assert "agent, team, workflow" in message
        assert await store.list(SpecKind.AGENT) == [agent("fine")]
