"""``AgentManager``, ``TeamManager``, ``WorkflowManager``: create, read, update, delete, list and
execute one kind of spec on an :class:`~dynamic_agents.agents.AgentRuntime`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from dynamic_agents.agents.specs import AgentSpec, SpecBase, SpecKind, SpecStatus, TeamSpec, WorkflowSpec
from dynamic_agents.events import Attachment
from dynamic_agents.exceptions import SpecNotFoundError, SpecValidationError
from dynamic_agents.execution import DeltaCallback, ExecutionResult

if TYPE_CHECKING:
    from dynamic_agents.agents.runtime import AgentRuntime

__all__ = ["AgentManager", "SpecManager", "TeamManager", "WorkflowManager"]

S = TypeVar("S", bound=SpecBase)


class SpecManager(Generic[S]):
    """Operations on one kind of spec. Specs are validated (registry names, models, members,
    steps) before they are stored."""

    kind: ClassVar[SpecKind]
    model: type[S]

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _check_kind(self, spec: SpecBase) -> S:
        if not isinstance(spec, self.model):
            raise SpecValidationError(
                f"{type(self).__name__} manages {self.kind.value} specs, got {spec.ref}"
            )
        return spec

    async def create(self, spec: S) -> S:
        await self.runtime.validate(self._check_kind(spec))
        stored = self._check_kind(await self.runtime.store.create(spec))
        self.runtime.forget(self.kind, spec.id)  # a copy cached before another process deleted it
        return stored

    async def get(self, spec_id: str) -> S:
        spec = await self.runtime.store.get(self.kind, spec_id)
        if spec is None:
            raise SpecNotFoundError(f"no {self.kind.value} {spec_id!r}")
        return self._check_kind(spec)

    async def update(self, spec: S, *, expected_version: int) -> S:
        """Store a new version; :class:`SpecConflictError` if someone else updated it first."""
        await self.runtime.validate(self._check_kind(spec))
        stored = self._check_kind(await self.runtime.store.update(spec, expected_version=expected_version))
        self.runtime.forget(self.kind, spec.id)
        return stored

    async def delete(self, spec_id: str, *, expected_version: int | None = None) -> bool:
        deleted = await self.runtime.store.delete(self.kind, spec_id, expected_version=expected_version)
        self.runtime.forget(self.kind, spec_id)
        return deleted

    async def list(self, *, tag: str | None = None, status: SpecStatus | None = None) -> list[S]:
        return [
            self._check_kind(spec)
            for spec in await self.runtime.store.list(self.kind, tag=tag, status=status)
        ]

    async def build(self, spec_id: str, *, user_id: str | None = None) -> Any:
        """A fresh agno object for one run (or for inspection)."""
        return await self.runtime.build(self.kind, spec_id, user_id=user_id)

    async def execute(
        self,
        spec_id: str,
        input: str,
        *,
        session_id: str,
        user_id: str | None = None,
        session_state: dict[str, Any] | None = None,
        attachments: Sequence[Attachment] = (),
        timeout: float | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> ExecutionResult:
        """Run once and return the result (see :meth:`AgentRuntime.execute`)."""
        return await self.runtime.execute(
            self.kind,
            spec_id,
            input,
            session_id=session_id,
            user_id=user_id,
            session_state=session_state,
            attachments=attachments,
            timeout=timeout,
            on_delta=on_delta,
        )


class AgentManager(SpecManager[AgentSpec]):
    kind = SpecKind.AGENT
    model = AgentSpec


class TeamManager(SpecManager[TeamSpec]):
    kind = SpecKind.TEAM
    model = TeamSpec


class WorkflowManager(SpecManager[WorkflowSpec]):
    kind = SpecKind.WORKFLOW
    model = WorkflowSpec
