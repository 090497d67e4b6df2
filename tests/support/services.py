"""Where the test suite finds Redis and PostgreSQL, and what it does when they are absent.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and ``POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) point at the servers. Without a server, tests that
need it skip and say how to provide it; with ``DYNAMIC_AGENTS_REQUIRE_SERVICES=1`` (CI) they fail.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def postgres_url() -> str:
    return os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL)


def services_required() -> bool:
    return os.environ.get("DYNAMIC_AGENTS_REQUIRE_SERVICES", "") not in {"", "0", "false", "no"}


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), 2):
            return True
    except OSError:
        return False


def unavailable(service: str, url: str, how: str) -> NoReturn:
    reason = f"{service} is not reachable at {url}: {how}"
    if services_required():
        pytest.fail(f"{reason} (DYNAMIC_AGENTS_REQUIRE_SERVICES is set, so this is a failure)")
    pytest.skip(reason)
