"""``slot_init``: a frozen, slotted dataclass built through it behaves as the dataclass built it.

Each class is compared with a twin made by ``@dataclass`` alone: the same instances from the same
arguments (positional, keyword, defaults, a fresh object from each ``default_factory``), the same
``TypeError`` for a missing or unknown argument, ``__post_init__`` run, fields still frozen, and
equality, hashing, ``repr``, ``replace`` and pickling unchanged. The classes built on every request
use it and stay frozen.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any, ClassVar

import pytest

from dynamic_agents._frozen import slot_init
from dynamic_agents.events.codecs import DecodedMessage
from dynamic_agents.events.envelope import Envelope
from dynamic_agents.execution import ExecutionResult
from dynamic_agents.transports import base
from dynamic_agents.transports.redis import _Claim, _Completion, _ReadClaim


def _point(decorate: bool) -> Any:
    def make(cls: type) -> type:
        made = dataclass(frozen=True, slots=True)(cls)
        return slot_init(made) if decorate else made

    @make
    class Point:
        limit: ClassVar[int] = 3
        x: int
        y: int = 2
        tags: list[str] = field(default_factory=list, hash=False)
        hidden: str = field(default="h", init=False)
        made: dict[str, int] = field(default_factory=dict, init=False, hash=False)
        label: str = field(default="p", kw_only=True)
        seen: list[int] = field(default_factory=list, repr=False, compare=False)

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("x must not be negative")
            object.__setattr__(self, "y", self.y * 1)

    @make
    class Point3(Point):
        z: int = field(default=0, kw_only=True)

    return Point, Point3


FAST, FAST3 = _point(True)
PLAIN, PLAIN3 = _point(False)
CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {}),
    ((1, 5), {}),
    ((1, 5, ["a"]), {"label": "q"}),
    ((), {"x": 4, "tags": ["b"], "seen": [1]}),
]


def _fields(instance: Any) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_the_same_instance_as_the_dataclass_makes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    fast, plain = FAST(*args, **kwargs), PLAIN(*args, **kwargs)
    assert _fields(fast) == _fields(plain)
    assert repr(fast) == repr(plain).replace("PLAIN", "FAST")
    assert fast == FAST(*args, **kwargs)
    assert hash(fast) == hash(FAST(*args, **kwargs)) == hash(plain)
    assert copy.copy(fast) == fast
    assert copy.deepcopy(fast) == fast
    assert dataclasses.replace(fast, label="r") == FAST(*args, **{**kwargs, "label": "r"})
    assert _fields(FAST3(*args, z=7, **kwargs)) == _fields(PLAIN3(*args, z=7, **kwargs))


def test_the_same_signature() -> None:
    assert str(inspect.signature(FAST)) == str(inspect.signature(PLAIN))
    assert [p.kind for p in inspect.signature(FAST3).parameters.values()] == [
        p.kind for p in inspect.signature(PLAIN3).parameters.values()
    ]


def test_each_instance_gets_its_own_default_from_the_factory() -> None:
    first, second = FAST(1), FAST(1)
    assert first.tags == []
    assert first.tags is not second.tags
    assert first.made == {}
    assert first.made is not second.made


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1,), {"nope": 1}), ((1, 2, [], [], 5), {}), ((1,), {"hidden": "x"})],
)
def test_the_same_type_error_for_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        PLAIN(*args, **kwargs)
    with pytest.raises(TypeError):
        FAST(*args, **kwargs)


def test_post_init_runs() -> None:
    with pytest.raises(ValueError, match="x must not be negative"):
        FAST(-1)


def test_fields_stay_frozen() -> None:
    point = FAST(1)
    with pytest.raises(FrozenInstanceError):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del point.y  # type: ignore[misc]
    assert (point.x, point.y) == (1, 2)


def test_refuses_a_class_it_cannot_build() -> None:
    @dataclass(slots=True)
    class Unfrozen:
        x: int

    @dataclass(frozen=True)
    class Unslotted:
        x: int

    for cls in (Unfrozen, Unslotted):
        with pytest.raises(TypeError, match="frozen, slotted dataclass"):
            slot_init(cls)


REQUEST_PATH = [
    (Envelope, {"body": b"{}"}),
    (DecodedMessage, {"event": "e"}),
    (base.Entry, {"stream": "s", "entry_id": "1-0", "fields": {}}),
    (base.Delivery, {"stream": "s", "entry_id": "1-0", "fields": {}, "delivery_count": 2}),
    (base.Lease, {"session_id": "s", "token": "t/r", "ttl": 1.0}),
    (base.Claim, {"status": base.ClaimStatus.BUSY}),
    (ExecutionResult, {"status": "completed", "content": "ok"}),
    (base.Reply, {"event": None, "stream": "s", "maxlen": 10}),
    (
        base.CompletedRecord,
        dict.fromkeys(["request_id", "response_id", "status"], "x")
        | {"reply_stream": None, "reply_entry_id": None, "completed_at": 1.0},
    ),
    (base.Completion, {"record": None, "created": True}),
    (_Completion, {"keys": ("a", "b", "c", "d"), "args": ()}),
    (_Claim, {"lease_key": "k", "token": "t", "ttl_ms": 1, "checks": ()}),
    (_ReadClaim, dict.fromkeys(["session_id", "request_id", "token", "lease_key"], b"x") | {"values": []}),
]


@pytest.mark.parametrize(("cls", "kwargs"), REQUEST_PATH, ids=lambda v: getattr(v, "__name__", ""))
def test_the_classes_built_per_request_use_it_and_stay_frozen(cls: Any, kwargs: dict[str, Any]) -> None:
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    assert "_SET" in cls.__init__.__globals__, "built by slot_init"
    instance = cls(**kwargs)
    for name, value in kwargs.items():
        assert getattr(instance, name) == value
    first = dataclasses.fields(instance)[0].name
    with pytest.raises(FrozenInstanceError):
        setattr(instance, first, None)
    assert instance == cls(**kwargs) == pickle.loads(pickle.dumps(instance))
    assert repr(instance).startswith(f"{cls.__name__}(")
