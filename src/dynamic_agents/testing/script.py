"""Script steps shared by the scripted test doubles (``ScriptedModel``, ``FakeOpenAI``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ToolCall"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call the model asks for. ``id`` defaults to ``call_1``, ``call_2``, … in script order."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ToolCall.name must be a non-empty string, got {self.name!r}")
        try:
            json.dumps(dict(self.arguments))
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"ToolCall({self.name!r}).arguments must be JSON-serialisable "
                f"(the model sends them as JSON): {error}"
            ) from error
