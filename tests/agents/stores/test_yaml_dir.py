from __future__ import annotations

import asyncio
import logging
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from dynamic_agents.agents.specs.base import SpecKind
from dynamic_agents.agents.stores import SpecStore, YamlDirectorySpecStore
from dynamic_agents.agents.stores.base import SpecModels
from dynamic_agents.exceptions import SpecValidationError
from tests.agents.stores.contract import MODELS, Backend, PersistentSpecStoreContract, agent
from tests.support.yaml_documents import FORBIDDEN_CHARACTERS, UNREADABLE_SCALARS, alias_bomb


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    directory = tmp_path / "specs"

    async def make(models: SpecModels) -> SpecStore:
        return YamlDirectorySpecStore(directory, models)

    async def corrupt(kind: SpecKind, spec_id: str) -> str:
        path = directory / kind.value / f"{spec_id}.yaml"
        path.write_text("id: [unclosed\n", encoding="utf-8")
        return str(path)

    backend = Backend(make, corrupt)
    yield backend
    await backend.aclose()


class TestYamlDirectorySpecStore(PersistentSpecStoreContract):
    pass


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "specs"


@pytest.fixture
async def store(directory: Path) -> AsyncIterator[YamlDirectorySpecStore]:
    async with YamlDirectorySpecStore(directory, MODELS) as store:
        yield store


async def test_one_readable_file_per_spec_and_no_temporary_files(
    store: YamlDirectorySpecStore, directory: Path
) -> None:
    await store.create(agent(tags=["a"]))
    await store.update(agent(llm="second"), expected_version=1)
    path = directory / "agent" / "helper.yaml"
    assert store.path(SpecKind.AGENT, "helper") == path
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert document["kind"] == "agent"
    assert (document["id"], document["version"], document["llm"]) == ("helper", 2, "second")
    assert sorted(p.name for p in (directory / "agent").iterdir()) == ["helper.yaml"]


async def test_hand_edited_files_are_read(store: YamlDirectorySpecStore, directory: Path) -> None:
    (directory / "agent").mkdir(parents=True)
    (directory / "agent" / "manual.yaml").write_text("id: manual\nversion: 3\nllm: hand\n")
    assert await store.get(SpecKind.AGENT, "manual") == agent("manual", version=3, llm="hand")
    assert await store.version(SpecKind.AGENT, "manual") == 3
    assert (await store.update(agent("manual"), expected_version=3)).version == 4


async def test_a_hand_written_file_without_a_version_is_at_version_1(
    store: YamlDirectorySpecStore, directory: Path
) -> None:
    # get() reads it at the model's default version, 1: version() and update() must agree with it
    (directory / "agent").mkdir(parents=True)
    (directory / "agent" / "manual.yaml").write_text("id: manual\nllm: hand\n")
    assert await store.get(SpecKind.AGENT, "manual") == agent("manual", version=1, llm="hand")
    assert await store.version(SpecKind.AGENT, "manual") == 1
    assert (await store.update(agent("manual", llm="edited"), expected_version=1)).version == 2
    assert await store.get(SpecKind.AGENT, "manual") == agent("manual", version=2, llm="edited")


async def test_a_file_whose_id_differs_from_its_name_is_invalid(
    store: YamlDirectorySpecStore, directory: Path
) -> None:
    (directory / "agent").mkdir(parents=True)
    (directory / "agent" / "one.yaml").write_text("id: other\n")
    with pytest.raises(SpecValidationError, match=r"one\.yaml.*'other'"):
        await store.get(SpecKind.AGENT, "one")


@pytest.mark.parametrize("text", ["- a list\n", "id: x\nversion: two\n", "\xff"])
async def test_files_that_are_not_specs_are_invalid(
    store: YamlDirectorySpecStore, directory: Path, text: str
) -> None:
    (directory / "agent").mkdir(parents=True)
    (directory / "agent" / "x.yaml").write_bytes(text.encode("latin-1"))
    with pytest.raises(SpecValidationError, match=r"x\.yaml"):
        await store.get(SpecKind.AGENT, "x")
    with pytest.raises(SpecValidationError, match=r"x\.yaml"):
        await store.list()


@pytest.mark.parametrize("spec_id", ["..", ".", "../agent/x", "a/b", "a\\b", "", ".hidden"])
async def test_ids_that_cannot_be_file_names_are_never_found(
    store: YamlDirectorySpecStore, directory: Path, spec_id: str
) -> None:
    (directory / "agent").mkdir(parents=True)
    (directory / "agent" / "x.yaml").write_text("id: x\n")
    assert store.path(SpecKind.AGENT, spec_id) is None
    assert await store.get(SpecKind.AGENT, spec_id) is None
    assert await store.version(SpecKind.AGENT, spec_id) is None
    assert not await store.delete(SpecKind.AGENT, spec_id)
    assert (directory / "agent" / "x.yaml").exists()


async def test_a_spec_with_an_unsafe_id_is_refused(store: YamlDirectorySpecStore) -> None:
    unsafe = agent().model_copy(update={"id": "../escape"})
    with pytest.raises(SpecValidationError, match="escape"):
        await store.create(unsafe)


async def test_an_empty_or_missing_directory_lists_nothing(store: YamlDirectorySpecStore) -> None:
    assert await store.list() == []


WRITER = """
import asyncio, sys
from dynamic_agents.agents.specs.base import SpecKind
from dynamic_agents.agents.stores import YamlDirectorySpecStore
from dynamic_agents.exceptions import SpecConflictError
from tests.agents.stores.contract import MODELS, agent

async def main(directory, rounds):
    store = YamlDirectorySpecStore(directory, MODELS)
    won = 0
    while won < rounds:
        current = await store.version(SpecKind.AGENT, "helper")
        try:
            await store.update(agent(llm=f"round {won}"), expected_version=current)
        except SpecConflictError:
            continue
        won += 1
    print(won)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_writers_in_several_processes_lose_no_update(
    store: YamlDirectorySpecStore, directory: Path
) -> None:
    await store.create(agent())
    rounds, processes = 25, 3
    root = Path(__file__).parents[3]
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, str(directory), str(rounds), cwd=root, stdout=PIPE
        )
        for _ in range(processes)
    ]
    outputs = [await writer.communicate() for writer in writers]
    assert [writer.returncode for writer in writers] == [0] * processes
    assert [int(out) for out, _ in outputs] == [rounds] * processes
    assert await store.version(SpecKind.AGENT, "helper") == 1 + rounds * processes


@pytest.mark.parametrize("name", ["helper copy.yaml", "-draft.yaml", f"{'x' * 129}.yaml"])
async def test_a_file_whose_name_is_no_spec_id_is_skipped_with_a_warning(
    store: YamlDirectorySpecStore, directory: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """One stray file (a copy a file manager made, say) made every list() raise. get() never finds
    it (no spec can have that id), so list() leaves it out too, and says so."""
    await store.create(agent("fine"))
    stray = directory / "agent" / name
    stray.write_text("id: helper\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dynamic_agents.agents"):
        assert await store.list() == [agent("fine")]
        assert await store.list(SpecKind.AGENT) == [agent("fine")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    message = warnings[0].getMessage()
    assert str(stray) in message
    assert "not a valid spec id" in message
    assert "A-Z" in message  # what a valid one looks like
    assert stray.exists()


@pytest.mark.usefixtures("yaml_loader")
async def test_a_file_that_does_not_parse_is_refused_by_line_without_quoting_it(
    store: YamlDirectorySpecStore, directory: Path
) -> None:
    (directory / "agent").mkdir(parents=True)
    (directory / "agent" / "x.yaml").write_text("id: x\nllm: {api_key: sk-CANARY123456789abcdef\n")
    with pytest.raises(SpecValidationError, match=r"x\.yaml: not valid YAML at line \d+: ") as refused:
        await store.get(SpecKind.AGENT, "x")
    assert "CANARY" not in str(refused.value)


@pytest.mark.usefixtures("yaml_loader")
async def test_a_file_the_reader_lets_through_is_refused_as_yaml(
    store: YamlDirectorySpecStore, directory: Path
) -> None:
    (directory / "agent").mkdir(parents=True)
    for text in (alias_bomb("metadata"), *UNREADABLE_SCALARS):
        (directory / "agent" / "x.yaml").write_text("id: x\n" + text)
        with pytest.raises(SpecValidationError, match=r"x\.yaml: not valid YAML at line \d+: "):
            await store.get(SpecKind.AGENT, "x")


@pytest.mark.usefixtures("yaml_loader")
async def test_a_file_with_a_character_yaml_does_not_allow_is_refused_naming_it(
    store: YamlDirectorySpecStore, directory: Path
) -> None:
    """It said only "not valid YAML: ReaderError"."""
    (directory / "agent").mkdir(parents=True)
    path = directory / "agent" / "x.yaml"
    for text, problem, _ in FORBIDDEN_CHARACTERS:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        if "\ud800" in text:  # no UTF-8 file holds a lone surrogate: it is not UTF-8 text
            with pytest.raises(SpecValidationError, match=r"x\.yaml: not UTF-8 text"):
                await store.get(SpecKind.AGENT, "x")
            continue
        with pytest.raises(SpecValidationError) as refused:
            await store.get(SpecKind.AGENT, "x")
        assert str(refused.value).endswith(f"x.yaml: not valid YAML {problem}")
