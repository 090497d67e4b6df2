"""An in-process spec store: documents in a dict, with the same versioning as the real backends.

It keeps JSON text rather than model objects, so every read rebuilds and validates a fresh copy,
as a database would. Use it in tests, or for specs that need not outlive the process.
"""

from __future__ import annotations

import builtins
import json

from dynamic_agents._validation import check_count
from dynamic_agents.agents.specs.base import SpecBase, SpecKind, SpecStatus
from dynamic_agents.agents.stores.base import SpecModels, SpecStore, matches, order_key, stored_copy
from dynamic_agents.exceptions import SpecConflictError, SpecNotFoundError

__all__ = ["InMemorySpecStore"]


class InMemorySpecStore(SpecStore):
    """Specs kept in this process. No operation awaits between its check and its write, so each
    is atomic with respect to other tasks."""

    def __init__(self, models: SpecModels | None = None) -> None:
        super().__init__(models)
        self._documents: dict[tuple[SpecKind, str], str] = {}

    async def get(self, kind: SpecKind, spec_id: str) -> SpecBase | None:
        kind = SpecKind.of(kind)
        text = self._documents.get((kind, spec_id))
        return None if text is None else self._load(kind, spec_id, text)

    async def list(
        self, kind: SpecKind | None = None, *, tag: str | None = None, status: SpecStatus | None = None
    ) -> builtins.list[SpecBase]:
        kind = None if kind is None else SpecKind.of(kind)
        status = None if status is None else SpecStatus.of(status)
        specs = [
            self._load(key_kind, spec_id, text)
            for (key_kind, spec_id), text in self._documents.items()
            if kind is None or key_kind == kind
        ]
        return sorted((spec for spec in specs if matches(spec, tag, status)), key=order_key)

    async def version(self, kind: SpecKind, spec_id: str) -> int | None:
        return self._version((SpecKind.of(kind), spec_id))

    async def create(self, spec: SpecBase) -> SpecBase:
        key = (spec.kind, spec.id)
        if key in self._documents:
            raise SpecConflictError(f"{spec.ref} already exists", current=self._version(key))
        stored = stored_copy(spec, 1)
        self._documents[key] = json.dumps(stored.to_document())
        return stored

    async def update(self, spec: SpecBase, *, expected_version: int) -> SpecBase:
        expected_version = check_count("expected_version", expected_version)
        key = (spec.kind, spec.id)
        current = self._version(key)
        if key not in self._documents:
            raise SpecNotFoundError(f"no {spec.ref} to update")
        if current != expected_version:
            raise SpecConflictError(
                f"{spec.ref} is at version {current}, not {expected_version}", current=current
            )
        stored = stored_copy(spec, expected_version + 1)
        self._documents[key] = json.dumps(stored.to_document())
        return stored

    async def delete(self, kind: SpecKind, spec_id: str, *, expected_version: int | None = None) -> bool:
        expected_version = check_count("expected_version", expected_version, optional=True)
        key = (SpecKind.of(kind), spec_id)
        if key not in self._documents:
            return False
        current = self._version(key)
        if expected_version is not None and current != expected_version:
            raise SpecConflictError(
                f"{key[0].value} {spec_id!r} is at version {current}, not {expected_version}",
                current=current,
            )
        del self._documents[key]
        return True

    async def aclose(self) -> None:
        """Nothing to release; the specs stay readable through this store."""

    def _version(self, key: tuple[SpecKind, str]) -> int | None:
        text = self._documents.get(key)
        version = None if text is None else json.loads(text).get("version")
        return version if isinstance(version, int) else None

    def _load(self, kind: SpecKind, spec_id: str, text: str) -> SpecBase:
        return self.rebuild(kind, spec_id, json.loads(text), where=f"in-memory {kind.value} {spec_id!r}")
