"""The service fixtures themselves: isolation, cleanup, and the private server helper."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dynamic_agents.testing import RedisServer, free_port


@pytest.mark.redis
async def test_redis_prefix_keys_are_removed_after_the_test(redis_url: str) -> None:
    from redis.asyncio import Redis

    from tests.conftest import redis_prefix

    generator = redis_prefix.__wrapped__(redis_url)  # type: ignore[attr-defined]
    prefix = await generator.__anext__()
    client = Redis.from_url(redis_url)
    try:
        await client.set(f"{prefix}:a", "1")
        await client.xadd(f"{prefix}:stream", {"k": "v"})
        await client.set("unrelated-key-of-someone-else", "kept")
        with pytest.raises(StopAsyncIteration):
            await generator.__anext__()
        assert await client.exists(f"{prefix}:a", f"{prefix}:stream") == 0
        assert await client.get("unrelated-key-of-someone-else") == b"kept"
    finally:
        await client.delete("unrelated-key-of-someone-else")
        await client.aclose()


@pytest.mark.postgres
def test_postgres_url_is_a_private_schema(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        assert schema[0].startswith("test_")
        conn.execute("CREATE TABLE probe (id int)")
        row = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'probe'"
        ).fetchone()
        assert row == (schema[0],)


@pytest.mark.redis_server
def test_private_redis_server_survives_a_kill_with_its_data(redis_server: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    redis_server.kill()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.get("k") == b"v"
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        client.close()


@pytest.mark.redis_server
def test_a_redis_server_can_be_started_again_after_stop() -> None:
    import redis

    server = RedisServer(durable=False)
    with server:
        pass
    assert not server.directory.exists()
    with server:  # a second ``with`` (or start() after stop()) starts afresh
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
        finally:
            client.close()
    assert not server.directory.exists()


@pytest.mark.redis_server
def test_a_redis_server_that_is_not_durable_keeps_nothing_on_disk() -> None:
    import redis

    with RedisServer(durable=False) as server:
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", "v")
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("save") == {"save": ""}
        finally:
            client.close()
        server.kill()
        server.start()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.get("k") is None
        finally:
            client.close()
        directory = server.directory
    assert not directory.exists()


@pytest.mark.redis_server
def test_a_redis_server_that_fails_to_start_leaves_no_process_or_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started, but not ready in time (a slow machine): ``with`` never reaches ``__exit__``, so
    the failed start must clean up itself — a redis-server left running outlives the test run."""
    from dynamic_agents.exceptions import TransportError
    from dynamic_agents.testing import redis_server

    monkeypatch.setattr(redis_server, "_START_DEADLINE", 0.0)
    server = RedisServer(durable=False)
    with pytest.raises(TransportError, match="did not answer"), server:
        pass
    assert server.process is not None
    assert server.process.poll() is not None  # not running any more
    assert not server.directory.exists()


@pytest.mark.redis_server
def test_a_first_start_on_a_port_taken_since_it_was_chosen_moves_to_a_free_one() -> None:
    """``free_port()`` only found the port free once: another process (a parallel test run) can
    bind it before the server starts. Nothing has the URL yet, so the first start takes another
    port rather than failing the test with "Address already in use"."""
    import socket

    import redis

    server = RedisServer(durable=False)
    taken = server.port
    with socket.create_server(("127.0.0.1", taken)), server:
        assert server.port != taken
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
        finally:
            client.close()


@pytest.mark.redis_server
def test_a_restart_on_a_port_taken_meanwhile_is_not_mistaken_for_ready() -> None:
    """Between ``kill()`` and ``start()`` another process can take the port (``free_port()`` only
    found it free once): the new server cannot bind and exits, and whatever answers there is not
    it."""
    import socket
    import threading

    from dynamic_agents.exceptions import TransportError

    with RedisServer(durable=False) as server:
        server.kill()
        squatter = socket.create_server(("127.0.0.1", server.port))
        stop = threading.Event()

        def answer_pong() -> None:
            squatter.settimeout(0.05)
            while not stop.is_set():
                try:
                    connection, _ = squatter.accept()
                except TimeoutError:
                    continue
                with connection:
                    connection.recv(1024)
                    connection.sendall(b"+PONG\r\n")

        thread = threading.Thread(target=answer_pong)
        thread.start()
        try:
            with pytest.raises(TransportError, match="exited"):
                server.start()
        finally:
            stop.set()
            thread.join()
            squatter.close()


def _run_redis_test_without_redis(require: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    env.pop("DYNAMIC_AGENTS_REQUIRE_SERVICES", None)
    if require:
        env["DYNAMIC_AGENTS_REQUIRE_SERVICES"] = "1"
    test = "tests/test_service_fixtures.py::test_redis_prefix_keys_are_removed_after_the_test"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", test],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
        check=False,
    )


def test_missing_service_skips_with_a_reason_that_says_how_to_provide_it() -> None:
    result = _run_redis_test_without_redis(require=False)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "set REDIS_URL" in result.stdout


def test_missing_service_fails_when_services_are_required() -> None:
    result = _run_redis_test_without_redis(require=True)
    assert result.returncode == 1, result.stdout
    assert "DYNAMIC_AGENTS_REQUIRE_SERVICES is set" in result.stdout


@pytest.mark.redis_server
def test_a_redis_server_that_refuses_its_configuration_says_why() -> None:
    """redis-server writes a configuration error to stderr before it opens its log file: the
    error must quote it (it said ``redis-server exited with 1:`` and nothing more)."""
    from dynamic_agents.exceptions import TransportError

    with RedisServer(durable=False) as master:
        sentinel = RedisServer.sentinel(master, service="two words")
        with pytest.raises(TransportError, match="exited with 1") as caught, sentinel:
            pass
    assert "FATAL CONFIG FILE ERROR" in str(caught.value)
    assert "sentinel monitor two words" in str(caught.value)
    assert sentinel.process is not None
    assert sentinel.process.poll() is not None
    assert not sentinel.directory.exists()


@pytest.mark.redis_server
def test_a_redis_server_never_started_leaves_no_directory() -> None:
    """Made but never started (a fixture that failed before ``with``, a Sentinel a test did not
    need): nothing calls ``stop()``, so nothing may have been created. Each made a temporary
    directory that stayed behind."""
    with RedisServer(durable=False) as master:
        unused = [RedisServer(durable=False), RedisServer(replica_of=master), RedisServer.sentinel(master)]
    assert [server.directory.exists() for server in unused] == [False, False, False]
    assert len({server.directory for server in unused}) == 3  # each its own, as when started


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (reaped, or a zombie its parent has not waited for)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.redis_server
def test_a_redis_server_left_running_is_stopped_when_the_test_process_exits() -> None:
    """A test that starts a server and never stops it (an exception before ``stop()``, a fixture
    without teardown) left redis-server running after pytest exited, holding a port, for ever."""
    script = (
        "from dynamic_agents.testing import RedisServer\n"
        "server = RedisServer(durable=False)\n"
        "server.start()\n"
        "print(server.process.pid, server.directory, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    pid, directory = done.stdout.split()
    try:
        assert _gone(int(pid))
        assert not Path(directory).exists()
    finally:
        if not _gone(int(pid)):
            os.kill(int(pid), signal.SIGKILL)  # the server this test started, by its pid


@pytest.mark.redis_server
def test_a_redis_server_dropped_without_stop_is_stopped() -> None:
    server = RedisServer(durable=False)
    server.start()
    assert server.process is not None
    process, directory = server.process, server.directory
    del server
    gc.collect()
    try:
        process.wait(timeout=10)
        assert not directory.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
