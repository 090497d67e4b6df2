"""A private ``redis-server`` on a free loopback port, for tests that kill, restart or pause it.

By default it persists with ``--appendonly yes --appendfsync always`` in its own temporary
directory, so a kill and restart keeps every acknowledged write; ``RedisServer(durable=False)``
keeps nothing on disk (for benchmarks). Only the process started here is ever stopped::

    with RedisServer() as server:
        transport = RedisStreamsTransport.from_url(server.url)
        ...
        server.kill()     # SIGKILL, like a crash
        server.start()    # same port, same data directory
        server.pause()    # SIGSTOP: connections stay open, nothing answers (a hung server)
        server.resume()   # SIGCONT

Needs the ``redis-server`` binary on ``PATH``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from dynamic_agents.exceptions import MissingDependencyError, TransportError

__all__ = ["RedisServer", "free_port"]

_START_DEADLINE = 10.0
_PORT_ATTEMPTS = 5


class _PortTakenError(TransportError):
    """redis-server could not bind its port: another process took it after :func:`free_port`."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``with RedisServer() as server: server.url``; ``kill()``, ``start()``, ``restart()``,
    ``pause()`` and ``resume()``."""

    def __init__(self, *, durable: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise MissingDependencyError("redis-server", install="apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="dynamic-agents-redis-"))
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (nothing if it runs). The first start moves to another free port if
        the one chosen was taken meanwhile; a later start keeps the port (clients have the URL)."""
        if self.process is not None and self.process.poll() is None:
            return
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                self._launch()
            except _PortTakenError:
                if self._started or attempt == _PORT_ATTEMPTS:
                    raise
                self.port = free_port()
            else:
                self._started = True
                return

    def _launch(self) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)  # stop() removed it: start afresh
        log = self.directory / "redis.log"  # appended to by each launch: read only this one's
        self._log_offset = log.stat().st_size if log.exists() else 0
        self.process = subprocess.Popen(  # noqa: S603 - a fixed argv, the binary found on PATH
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                *(
                    ("--appendonly", "yes", "--appendfsync", "always")
                    if self.durable
                    else ("--appendonly", "no")
                ),
                "--save",
                "",
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()  # not ready in time (or interrupted): never leave a server behind
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_DEADLINE
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self._log_since_launch[-2000:]
                error = _PortTakenError if "Address already in use" in log else TransportError
                raise error(f"redis-server exited with {self.process.returncode}: {log}")
            try:
                if self._answers_as_ours():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise TransportError(f"redis-server on port {self.port} did not answer within {_START_DEADLINE}s")

    @property
    def _log_since_launch(self) -> str:
        try:
            with (self.directory / "redis.log").open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:  # it exited before opening its log (bad arguments)
            return "(no log)"

    def _answers_as_ours(self) -> bool:
        """Whether what answers on the port is the process started here: another one may have
        taken the port since :func:`free_port` found it free (or since :meth:`kill`)."""
        assert self.process is not None
        with socket.create_connection(("127.0.0.1", self.port), 0.2) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"\r\ntcp_port:" not in reply:  # process_id comes before it
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return f"\r\nprocess_id:{self.process.pid}\r\n".encode() in reply

    def kill(self) -> None:
        """SIGKILL: no shutdown save, like a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing, like a hung host."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`: the server answers again, queued commands first."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server and remove its data directory (a later :meth:`start` begins empty)."""
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a paused server would not act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.stop()  # ``with`` calls no __exit__ when __enter__ fails: remove the directory here
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
