"""A cheaper ``__init__`` for frozen, slotted dataclasses built on every request.

``@dataclass(frozen=True)`` makes ``__init__`` set each field with ``object.__setattr__(self, name,
value)``: a full attribute lookup per field, about 320 instructions more than a slot store. A
slotted class keeps each field in a member descriptor, whose ``__set__`` stores the value directly;
called as ``MemberDescriptorType.__set__(descriptor, self, value)`` it costs what a plain assignment
does. :func:`slot_init` replaces the generated ``__init__`` by one that does that, with the same
parameters, defaults, default factories and ``__post_init__`` call. Everything else the dataclass
made stays: assigning a field still raises ``FrozenInstanceError``, and equality, hashing, ``repr``,
``replace`` and pickling are untouched.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, TypeVar

__all__ = ["slot_init"]

T = TypeVar("T")

_SET = types.MemberDescriptorType.__set__


class _Factory:
    """The default of a parameter whose field has a ``default_factory`` (dataclasses' own
    sentinel is private)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def slot_init(cls: type[T]) -> type[T]:
    """Give a frozen, slotted dataclass an ``__init__`` that sets its slots directly (see the
    module docstring). Apply it above ``@dataclass(frozen=True, slots=True)``."""
    settings = getattr(cls, "__dataclass_params__")  # noqa: B009 - set by @dataclass
    if not (settings.frozen and settings.init and "__slots__" in cls.__dict__):
        raise TypeError(f"slot_init needs a frozen, slotted dataclass with an __init__: {cls!r}")
    every = getattr(cls, "__dataclass_fields__")  # noqa: B009 - set by @dataclass
    initvar = getattr(dataclasses, "_FIELD_INITVAR")  # noqa: B009 - no public way to tell
    if any(getattr(f, "_field_type", None) is initvar for f in every.values()):
        raise TypeError(f"slot_init does not take InitVar fields: {cls!r}")
    namespace: dict[str, Any] = {"_SET": _SET, "_FACTORY": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for index, f in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if f.name == "self" or f.name.startswith(("_SET", "_FACTORY", "_slot", "_make", "_default")):
            raise TypeError(f"slot_init: {cls.__qualname__}.{f.name} would shadow a name it uses")
        slot = getattr(cls, f.name)
        if not isinstance(slot, types.MemberDescriptorType):
            raise TypeError(f"slot_init: {cls.__qualname__}.{f.name} is not a slot")
        namespace[f"_slot{index}"] = slot
        parameter, value = _field_init(f, index, namespace)
        if parameter is not None:
            (keyword if f.kw_only else positional).append(parameter)
        if value is not None:
            body.append(f"    _SET(_slot{index}, self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    parameters = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({parameters}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, namespace)  # noqa: S102 - built from field names only, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {f.name: f.type for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    init.__annotations__["return"] = None
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning to a method
    return cls


def _field_init(
    f: dataclasses.Field[Any], index: int, namespace: dict[str, Any]
) -> tuple[str | None, str | None]:
    """The parameter ``f`` adds to ``__init__`` (``None``: none, ``init=False``) and the expression
    its slot is set to (``None``: left unset, as dataclasses leaves a field without a default and
    without ``init``)."""
    if f.default_factory is not dataclasses.MISSING:
        namespace[f"_make{index}"] = f.default_factory
        if f.init:
            return f"{f.name}=_FACTORY", f"_make{index}() if {f.name} is _FACTORY else {f.name}"
        return None, f"_make{index}()"
    if f.default is not dataclasses.MISSING:
        namespace[f"_default{index}"] = f.default
        if f.init:
            return f"{f.name}=_default{index}", f.name
        return None, f"_default{index}"
    return (f.name, f.name) if f.init else (None, None)
