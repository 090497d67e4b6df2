"""Secret values that do not leak.

A :class:`SecretValue` shows ``'**********'`` in ``repr``, ``str`` and f-strings, refuses to be
pickled, and gives its value only through :meth:`SecretValue.reveal`. Each value is registered with
the process-wide redactor, so log records that contain it anyway are masked (see
:class:`RedactingFilter`).
"""

from __future__ import annotations

import hmac
from typing import NoReturn

from dynamic_agents._redaction import MASK, REDACTOR, RedactingFilter, Redactor, protect_loggers
from dynamic_agents._validation import LONE_SURROGATE
from dynamic_agents.exceptions import ConfigurationError

__all__ = ["MASK", "REDACTOR", "RedactingFilter", "Redactor", "SecretValue", "protect_loggers"]


class SecretValue:
    """A secret string: masked when shown, revealed only on request."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a SecretValue holds a str, not {type(value).__name__}")
        if (surrogate := LONE_SURROGATE.search(value)) is not None:
            # no header, JSON body or redactor pattern can encode it: say where, never what
            raise ConfigurationError(
                f"a SecretValue holds text, and this one has a lone surrogate at position "
                f"{surrogate.start()} (bytes that are not UTF-8?): it cannot be sent anywhere"
            )
        self._value = value
        REDACTOR.register(value)

    def reveal(self) -> str:
        """The secret itself: pass it where it is used, never to a log or a message."""
        return self._value

    def __repr__(self) -> str:
        return f"SecretValue({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretValue):
            return hmac.compare_digest(self._value.encode(), other._value.encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash((SecretValue, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __copy__(self) -> SecretValue:
        return self  # immutable; without these, copy falls back on __reduce__, which refuses

    def __deepcopy__(self, memo: dict[int, object]) -> SecretValue:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SecretValue cannot be pickled: it would write the secret out")
