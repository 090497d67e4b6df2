"""Checks of the numeric settings of the Identity client, its source and the secrets manager."""

from __future__ import annotations

import math

from dynamic_agents.exceptions import ConfigurationError


def check_seconds(name: str, value: object, *, zero: bool = False, forever: bool = False) -> float:
    """``value`` if it is a number of seconds > 0 (>= 0 with ``zero``), finite unless ``forever``
    (``math.inf`` accepted: a setting where "forever" has a meaning), else a
    :class:`ConfigurationError` naming the setting, the value and what is valid."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or (math.isinf(value) and not (forever and value > 0))
        or value < 0
        or (value == 0 and not zero)
    ):
        bound = ">= 0" if zero else "> 0"
        kind = "a number of seconds (math.inf: forever)" if forever else "a finite number of seconds"
        raise ConfigurationError(f"{name} must be {kind} {bound}, got {value!r}")
    return float(value)


def check_count(name: str, value: object, *, minimum: int) -> int:
    """``value`` as an int (``5.0`` is 5) if it is a whole number >= ``minimum``, else a
    :class:`ConfigurationError` naming the setting, the value and what is valid."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value
