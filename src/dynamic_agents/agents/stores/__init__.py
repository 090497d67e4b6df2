"""Spec stores keep agent, team and workflow specs by kind and id, with optimistic versions.

:class:`InMemorySpecStore` (tests, single process), :class:`YamlDirectorySpecStore` (files people
edit and keep in version control) and :class:`SqlSpecStore` (SQLite or PostgreSQL) behave alike.
``SqlSpecStore`` loads SQLAlchemy on first use (extra ``agents``; ``postgres`` for PostgreSQL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports
from dynamic_agents.agents.stores.base import SpecStore
from dynamic_agents.agents.stores.memory import InMemorySpecStore
from dynamic_agents.agents.stores.yaml_dir import YamlDirectorySpecStore

if TYPE_CHECKING:
    from dynamic_agents.agents.stores.sql import SqlSpecStore

__all__ = ["InMemorySpecStore", "SpecStore", "SqlSpecStore", "YamlDirectorySpecStore"]

# public name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY: dict[str, str] = {"SqlSpecStore": "dynamic_agents.agents.stores.sql"}

__getattr__ = _lazy_exports(__name__, _LAZY, globals())
