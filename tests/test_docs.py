"""Every Python block in README.md and docs/, and every file in examples/, runs."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from types import CodeType

import pytest

from tests.support import services

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for document in DOCUMENTS:
        for number, match in enumerate(_BLOCK.finditer(document.read_text()), start=1):
            blocks.append((f"{document.relative_to(ROOT)}#{number}", match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_the_documents_have_code_to_run() -> None:
    assert len(BLOCKS) >= 4
    assert EXAMPLES


@pytest.mark.parametrize(("name", "source"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_code_block_runs(name: str, source: str) -> None:
    code: CodeType = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    environ = dict(os.environ)
    try:
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    finally:  # blocks may set variables for their demo; the rest of the suite must not see them
        os.environ.clear()
        os.environ.update(environ)


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
