"""A spec store in a directory of YAML files, one per spec: ``<directory>/<kind>/<id>.yaml``.

The files are meant to be read and edited by people and kept in version control; each holds the
spec's document, version included. Writes go to a temporary file beside the target and are moved
into place with :func:`os.replace`, so a reader sees the old file or the new one, never half of
one. Read-check-write operations hold an :class:`asyncio.Lock` in the process and, on POSIX, an
exclusive :func:`fcntl.flock` on ``<directory>/.lock``, so writers in several processes on one
machine are serialised too (``flock`` is not reliable on network file systems, and on Windows
there is no cross-process lock: only the atomic replace). File I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dynamic_agents._logging import get_logger
from dynamic_agents._validation import check_count
from dynamic_agents._yaml import safe_load, yaml_problem
from dynamic_agents.agents.specs.base import SpecBase, SpecKind, SpecStatus
from dynamic_agents.agents.stores.base import (
    SpecModels,
    SpecStore,
    invalid,
    matches,
    order_key,
    stored_copy,
)
from dynamic_agents.exceptions import SpecConflictError, SpecNotFoundError

__all__ = ["YamlDirectorySpecStore"]

SPEC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Ids that are safe as file names: no separators, never ``.`` or ``..``, and short enough (with
``.yaml`` and a temporary file's affixes) for the usual 255-byte limit on a name."""

SPEC_ID_RULE = "1-128 of A-Z a-z 0-9 _ . -, starting with a letter or digit"

LOCK_FILE = ".lock"

logger = get_logger("agents")

T = TypeVar("T")

if sys.platform == "win32":  # pragma: no cover - no flock: only the in-process lock and os.replace

    @contextmanager
    def _exclusive(lock_path: Path) -> Iterator[None]:
        yield

else:
    import fcntl

    @contextmanager
    def _exclusive(lock_path: Path) -> Iterator[None]:
        """Hold an exclusive lock on ``lock_path`` (created if missing) across processes."""
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class YamlDirectorySpecStore(SpecStore):
    """Specs as YAML files under ``directory`` (created on the first write).

    Ids differing only in case name the same file on case-insensitive file systems: avoid them.
    """

    def __init__(self, directory: str | os.PathLike[str], models: SpecModels | None = None) -> None:
        super().__init__(models)
        self.directory = Path(directory)
        self._lock = asyncio.Lock()

    def path(self, kind: SpecKind, spec_id: str) -> Path | None:
        """The file of a spec, or ``None`` if ``spec_id`` could never be stored (not a valid id)."""
        if not SPEC_ID.fullmatch(spec_id):
            return None
        return self.directory / SpecKind.of(kind).value / f"{spec_id}.yaml"

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, kind: SpecKind, spec_id: str) -> SpecBase | None:
        path = self.path(kind, spec_id)
        document = None if path is None else await asyncio.to_thread(_read, path)
        if path is None or document is None:
            return None
        return self.rebuild(SpecKind.of(kind), spec_id, document, where=str(path))

    async def list(
        self, kind: SpecKind | None = None, *, tag: str | None = None, status: SpecStatus | None = None
    ) -> builtins.list[SpecBase]:
        kinds = list(SpecKind) if kind is None else [SpecKind.of(kind)]
        status = None if status is None else SpecStatus.of(status)
        found = await asyncio.to_thread(self._scan, kinds)
        specs = [self.rebuild(k, spec_id, document, where=str(path)) for k, spec_id, path, document in found]
        return sorted((spec for spec in specs if matches(spec, tag, status)), key=order_key)

    async def version(self, kind: SpecKind, spec_id: str) -> int | None:
        path = self.path(kind, spec_id)
        return None if path is None else await asyncio.to_thread(_stored_version, path)

    # -- writing ----------------------------------------------------------------------------------

    async def create(self, spec: SpecBase) -> SpecBase:
        stored = stored_copy(spec, 1)
        async with self._lock:
            await asyncio.to_thread(self._locked, partial(self._create, stored))
        return stored

    async def update(self, spec: SpecBase, *, expected_version: int) -> SpecBase:
        expected_version = check_count("expected_version", expected_version)
        stored = stored_copy(spec, expected_version + 1)
        async with self._lock:
            await asyncio.to_thread(self._locked, partial(self._update, stored, expected_version))
        return stored

    async def delete(self, kind: SpecKind, spec_id: str, *, expected_version: int | None = None) -> bool:
        expected_version = check_count("expected_version", expected_version, optional=True)
        path = self.path(kind, spec_id)
        if path is None:
            return False
        async with self._lock:
            return await asyncio.to_thread(self._locked, partial(self._delete, path, expected_version))

    async def aclose(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # -- in worker threads ------------------------------------------------------------------------

    def _locked(self, operation: Callable[[], T]) -> T:
        with _exclusive(self.directory / LOCK_FILE):
            return operation()

    def _create(self, spec: SpecBase) -> None:
        path = self._path_for_write(spec)
        current = _stored_version(path)
        if current is not None:
            raise SpecConflictError(f"{spec.ref} already exists ({path})", current=current)
        _write(path, spec.to_document())

    def _update(self, spec: SpecBase, expected_version: int) -> None:
        path = self._path_for_write(spec)
        current = _stored_version(path)
        if current is None:
            raise SpecNotFoundError(f"no {spec.ref} to update ({path})")
        if current != expected_version:
            raise SpecConflictError(
                f"{spec.ref} is at version {current}, not {expected_version}", current=current
            )
        _write(path, spec.to_document())

    def _delete(self, path: Path, expected_version: int | None) -> bool:
        current = _stored_version(path)
        if current is None:
            return False
        if expected_version is not None and current != expected_version:
            raise SpecConflictError(
                f"{path} is at version {current}, not {expected_version}", current=current
            )
        path.unlink()
        return True

    def _path_for_write(self, spec: SpecBase) -> Path:
        path = self.path(spec.kind, spec.id)
        if path is None:
            raise invalid(str(self.directory), f"id {spec.id!r} cannot be a file name", spec.ref, "id")
        return path

    def _scan(self, kinds: builtins.list[SpecKind]) -> builtins.list[tuple[SpecKind, str, Path, Any]]:
        found = []
        for kind in kinds:
            folder = self.directory / kind.value
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.yaml")):
                if path.name.startswith("."):
                    continue
                if not SPEC_ID.fullmatch(path.stem):
                    # no spec can have this id, so get() never finds it: a stray file, not a spec
                    logger.warning(
                        "skipping %s: %r is not a valid spec id (%s)", path, path.stem, SPEC_ID_RULE
                    )
                    continue
                document = _read(path)
                if document is not None:  # deleted since the directory was listed
                    found.append((kind, path.stem, path, document))
        return found


def _read(path: Path) -> Any:
    """The parsed YAML in ``path``; ``None`` if there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as error:
        raise invalid(str(path), f"not UTF-8 text: {error}") from None
    try:
        return safe_load(text)
    except yaml.YAMLError as error:
        raise invalid(str(path), yaml_problem(error)) from None


def _stored_version(path: Path) -> int | None:
    document = _read(path)
    if document is None:
        return None
    # a hand-written file may leave the version out: get() reads it at the model's default, 1
    version = document.get("version", 1) if isinstance(document, dict) else None
    if type(version) is not int or version < 1:
        raise invalid(str(path), f"no valid version (got {version!r})", path="version")
    return version


def _write(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` atomically: write a temporary file beside it, sync it, rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    if safe_load(text) != document:
        # PyYAML writes some characters as they are where its reader takes them for something
        # else (a NEL ending a text, U+0085, read back as a space): escaped, they read back as written
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=False)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before the rename below
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
