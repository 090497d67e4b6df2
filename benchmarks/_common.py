"""What the benchmark scripts share: the description of the machine their figures came from, and
counting the commands the library packs itself.

Imported as ``_common`` (each script runs as ``python benchmarks/<name>.py``, so this directory is
on ``sys.path``); ``run_all.py`` skips it because its name starts with ``_``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Callable
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


def git_commit() -> str | None:
    """The repository's ``HEAD`` commit (full hash), ``None`` outside a git checkout."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        return done.stdout.strip() or None
    return None


def machine(**extra: Any) -> dict[str, Any]:
    """CPU, core count, platform and Python, then ``extra`` (library versions and the like)."""
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
    }


def count_library_commands(
    count: Callable[[str], None], count_write: Callable[[], None] | None = None
) -> None:
    """Call ``count(command name)`` for every command the library's auto-pipeline sends, and
    ``count_write()`` for every write of a batch of them (one round trip).

    It packs them itself (``dynamic_agents.transports._pipelining._pack``) and writes the bytes on a
    connection of its own, so counts in redis-py's ``pack_command`` / ``send_packed_command`` miss
    them.
    """
    from dynamic_agents.transports import _pipelining

    pack = _pipelining._pack

    def counting_pack(command: tuple[Any, ...]) -> bytes:
        name = command[0]
        count((name.decode() if isinstance(name, bytes) else str(name)).lower())
        return pack(command)

    _pipelining._pack = counting_pack
    if count_write is None:
        return
    write = _pipelining.AutoPipeline._write

    def counting_write(self: _pipelining.AutoPipeline, *args: Any) -> None:
        count_write()
        write(self, *args)

    _pipelining.AutoPipeline._write = counting_write  # type: ignore[method-assign,assignment]
