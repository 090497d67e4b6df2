"""What the benchmark scripts share: the description of the machine their figures came from, and
counting the commands the library packs itself.

Imported as ``_common`` (each script runs as ``python benchmarks/<name>.py``, so this directory is
on ``sys.path``); ``run_all.py`` skips it because its name starts with ``_``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine(**extra: Any) -> dict[str, Any]:
    """CPU, core count, platform and Python, then ``extra`` (library versions and the like)."""
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
    }


def count_library_commands(count: Callable[[str], None]) -> None:
    """Call ``count(command name)`` for every command the library's auto-pipeline sends.

    It packs them itself (``dynamic_agents.transports._pipelining._pack``) and writes the bytes with
    redis-py's ``send_packed_command``, so a count in redis-py's ``pack_command`` misses them.
    """
    from dynamic_agents.transports import _pipelining

    pack = _pipelining._pack

    def counting_pack(command: Sequence[Any]) -> bytes:
        name = command[0]
        count((name.decode() if isinstance(name, bytes) else str(name)).lower())
        return pack(command)

    _pipelining._pack = counting_pack
