"""The spec store interface: where agent, team and workflow specs live, with optimistic versions.

A :class:`SpecStore` keeps one document per ``(kind, id)`` (what :meth:`SpecBase.to_document`
returns) and rebuilds specs from them with the model class registered for the kind. Every write
checks a version: :meth:`SpecStore.create` stores version 1, :meth:`SpecStore.update` only succeeds
from the version currently stored and stores the next one, so two writers racing from the same
version cannot both win. The in-memory, YAML-directory and SQL backends share one contract suite.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeAlias

from dynamic_agents._validation import LONE_SURROGATE
from dynamic_agents.agents.specs.base import SpecBase, SpecKind, SpecStatus
from dynamic_agents.exceptions import ConfigurationError, SpecNotFoundError, SpecValidationError

__all__ = ["SpecModels", "SpecStore"]

SpecModels: TypeAlias = Mapping[SpecKind, type[SpecBase]]
"""The model class of each kind, used to rebuild specs from stored documents."""


def default_models() -> SpecModels:
    """The library's own spec models, imported on first use only: a store given its own models
    never loads them."""
    from dynamic_agents.agents.specs import SPEC_MODELS

    return SPEC_MODELS


class SpecStore(ABC):
    """Specs by kind and id, each with a version that every write checks.

    ``models`` maps each kind to the class its documents are rebuilt with (default: the library's
    spec models). Use as ``async with store:`` or call :meth:`aclose`.
    """

    def __init__(self, models: SpecModels | None = None) -> None:
        self._models = models

    @property
    def models(self) -> SpecModels:
        if self._models is None:
            self._models = default_models()
        return self._models

    # -- reading ----------------------------------------------------------------------------------

    @abstractmethod
    async def get(self, kind: SpecKind, spec_id: str) -> SpecBase | None:
        """The stored spec, or ``None``. A stored document that no longer validates raises
        :class:`SpecValidationError` saying where it is stored."""

    async def require(self, kind: SpecKind, spec_id: str) -> SpecBase:
        """The stored spec; :class:`SpecNotFoundError` if there is none."""
        spec = await self.get(kind, spec_id)
        if spec is None:
            raise SpecNotFoundError(f"no {SpecKind.of(kind).value} spec {spec_id!r}")
        return spec

    @abstractmethod
    async def list(
        self, kind: SpecKind | None = None, *, tag: str | None = None, status: SpecStatus | None = None
    ) -> builtins.list[SpecBase]:
        """Stored specs of ``kind`` (every kind when ``None``) carrying ``tag`` and in ``status``,
        ordered by kind, then id (by code point, the same on every backend)."""

    @abstractmethod
    async def version(self, kind: SpecKind, spec_id: str) -> int | None:
        """The stored version (``None`` if absent), without rebuilding the spec: compare it with a
        cached copy's to notice changes made by other processes."""

    # -- writing ----------------------------------------------------------------------------------

    @abstractmethod
    async def create(self, spec: SpecBase) -> SpecBase:
        """Store ``spec`` at version 1 (whatever its own version) and return the stored copy;
        :class:`SpecConflictError` if a spec of that kind and id exists."""

    @abstractmethod
    async def update(self, spec: SpecBase, *, expected_version: int) -> SpecBase:
        """Atomically replace the stored spec if its version is ``expected_version``, storing
        ``expected_version + 1``; returns the stored copy. :class:`SpecConflictError` (with
        ``current``) if the stored version differs, :class:`SpecNotFoundError` if there is none;
        an ``expected_version`` that is not a whole number > 0 is a :class:`ConfigurationError`."""

    @abstractmethod
    async def delete(self, kind: SpecKind, spec_id: str, *, expected_version: int | None = None) -> bool:
        """Remove a spec; false if there was none. With ``expected_version``, only if that is the
        stored version (else :class:`SpecConflictError`; not a whole number > 0:
        :class:`ConfigurationError`)."""

    # -- lifecycle --------------------------------------------------------------------------------

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the store holds (connections, engines); the stored specs stay."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- for backends ------------------------------------------------------------------------------

    def rebuild(self, kind: SpecKind, spec_id: str, document: Any, *, where: str) -> SpecBase:
        """The spec in a stored ``document``; :class:`SpecValidationError` naming ``where`` (a file,
        a row) if it is not a valid spec of that kind and id."""
        model = self.models.get(kind)
        if model is None:
            raise ConfigurationError(
                f"no spec model for kind {SpecKind.of(kind).value!r}: models has {sorted(self.models)}"
            )
        ref = f"{SpecKind.of(kind).value} {spec_id!r}"
        if not isinstance(document, Mapping):
            raise invalid(where, f"a stored spec must be a mapping, got {type(document).__name__}", ref)
        try:
            spec = model.from_dict(document)
        except SpecValidationError as error:
            raise invalid(where, str(error), error.spec, error.path) from None
        if spec.id != spec_id:
            raise invalid(where, f"{ref}: stored under id {spec_id!r} but its id is {spec.id!r}", ref)
        return spec


def invalid(where: str, message: str, spec: str = "", path: str = "") -> SpecValidationError:
    """A :class:`SpecValidationError` whose message starts with where the document is stored."""
    error = SpecValidationError(f"{where}: {message}")
    error.spec, error.path = spec, path
    return error


def stored_copy(spec: SpecBase, version: int) -> SpecBase:
    """``spec`` as stored at ``version``; a :class:`SpecValidationError` naming where if a text
    of it holds a lone surrogate (JSON's ``"\\ud800"``): no Unicode text, it cannot be written as
    UTF-8, and the YAML store wrote a file that no read could parse. The document is validated
    again, as a read validates it: a spec changed with ``model_copy(update=…)`` skipped its
    validators (a key written out in its metadata, an id no spec can have), and was stored as it
    was, then refused by every read."""
    document = spec.to_document()
    for path, text in _texts(document, ""):
        surrogate = LONE_SURROGATE.search(text)
        if surrogate is not None:
            raise SpecValidationError(
                f"the text holds a lone surrogate ({surrogate.group()!a}), which is no Unicode "
                "character: the text is not valid UTF-8",
                spec=spec.ref,
                path=path,
            )
    return type(spec).from_dict(document).model_copy(update={"version": version})


def _texts(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string value of a document with its path (``metadata.notes[1]``). Keys are not
    searched: the document's JSON form has U+FFFD for a surrogate in a key."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _texts(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _texts(item, f"{path}[{index}]")


def matches(spec: SpecBase, tag: str | None, status: SpecStatus | None) -> bool:
    return (tag is None or tag in spec.tags) and (status is None or spec.status == status)


def order_key(spec: SpecBase) -> tuple[str, str]:
    return (spec.kind.value, spec.id)
