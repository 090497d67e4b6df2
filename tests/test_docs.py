"""Every Python block in README.md and docs/, and every file in examples/, runs; the documentation
site builds with ``mkdocs build --strict`` and its nav lists every page."""

from __future__ import annotations

import ast
import asyncio
import gc
import os
import re
import subprocess
import sys
from pathlib import Path
from types import CodeType

import pytest
import yaml

from tests.support import services

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
# pymdownx.snippets: a line `--8<-- "path"` is replaced by that file (relative to the repository root)
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)


def _expand_snippets(source: str) -> str:
    """The block as the site shows it: included files (examples/…) take the place of their line."""

    def include(match: re.Match[str]) -> str:
        path = ROOT / match.group(1)
        assert path.is_file(), f"snippet {match.group(1)!r} not found"
        return path.read_text()

    return _SNIPPET.sub(include, source)


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for document in DOCUMENTS:
        for number, match in enumerate(_BLOCK.finditer(document.read_text()), start=1):
            blocks.append((f"{document.relative_to(ROOT)}#{number}", _expand_snippets(match.group(1))))
    return blocks


BLOCKS = python_blocks()


def test_the_documents_have_code_to_run() -> None:
    assert len(BLOCKS) >= 4
    assert EXAMPLES


@pytest.mark.parametrize(("name", "source"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_code_block_runs(name: str, source: str) -> None:
    # dont_inherit: a block runs as a module of its own, without this file's `from __future__` imports
    code: CodeType = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    environ, thresholds = dict(os.environ), gc.get_threshold()
    try:
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    finally:  # a block may set variables or the collector for its demo; the rest of the suite must not
        os.environ.clear()
        os.environ.update(environ)
        gc.set_threshold(*thresholds)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: Path) -> None:
    if "REDIS_URL" in example.read_text():  # the example talks to Redis
        url = services.redis_url()
        if not services.reachable(url, 6379):
            services.unavailable(
                "Redis", url, f"{example.name} needs it; start redis-server or set REDIS_URL"
            )
    completed = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip()


def _nav_pages(entries: object) -> list[str]:
    """Every page path in mkdocs.yml's nav, in order."""
    if isinstance(entries, str):
        return [] if entries.startswith(("http://", "https://")) else [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in _nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in _nav_pages(value)]
    raise AssertionError(f"unexpected nav entry {entries!r}")


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    docs = ROOT / config.get("docs_dir", "docs")
    pages = sorted(str(page.relative_to(docs)) for page in docs.rglob("*.md"))
    assert sorted(set(nav)) == sorted(nav), "a page is listed twice in the nav"
    assert sorted(set(nav) - set(pages)) == [], "nav entries without a page"
    assert sorted(set(pages) - set(nav)) == [], "pages missing from the nav in mkdocs.yml"


@pytest.mark.timeout(300)  # the API reference reads every module: slow on a busy machine
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """What CI runs: warnings (broken links and anchors, docstrings griffe cannot read, pages left
    out of the nav) fail the build."""
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "worker" / "index.html").is_file()
