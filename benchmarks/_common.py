"""What the benchmark scripts share: the description of the machine their figures came from.

Imported as ``_common`` (each script runs as ``python benchmarks/<name>.py``, so this directory is
on ``sys.path``); ``run_all.py`` skips it because its name starts with ``_``.
"""

from __future__ import annotations

import os
import platform
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
