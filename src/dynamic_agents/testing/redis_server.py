"""A private ``redis-server`` on a free loopback port, for tests that kill, restart or pause it.

By default it persists with ``--appendonly yes --appendfsync always`` in its own temporary
directory, so a kill and restart keeps every acknowledged write; ``RedisServer(durable=False)``
keeps nothing on disk (for benchmarks). Only the process started here is ever stopped; one left
running (no ``stop()``) is killed when its ``RedisServer`` is dropped or the interpreter exits::

    with RedisServer() as server:
        transport = RedisStreamsTransport.from_url(server.url)
        ...
        server.kill()     # SIGKILL, like a crash
        server.start()    # same port, same data directory
        server.pause()    # SIGSTOP: connections stay open, nothing answers (a hung server)
        server.resume()   # SIGCONT

``RedisServer(replica_of=master)`` replicates a started ``master``, and
``RedisServer.sentinel(master)`` is a Redis Sentinel monitoring it (as ``mymaster``, quorum 1),
with timers short enough for a failover test to take a second or two::

    with RedisServer(durable=False) as master, RedisServer(replica_of=master, durable=False) as replica:
        with RedisServer.sentinel(master) as sentinel:
            client = Sentinel([("127.0.0.1", sentinel.port)]).master_for("mymaster")

Needs the ``redis-server`` binary on ``PATH``.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from dynamic_agents.exceptions import MissingDependencyError, TransportError

__all__ = ["RedisServer", "free_port"]

_START_DEADLINE = 10.0
_PORT_ATTEMPTS = 5
_SENTINEL_PERIODS_MS: Final = {"info-period": 100, "publish-period": 100}
"""Sentinel's timers for tests (``SENTINEL DEBUG``; Redis 7.0+). The publish period sets how long
a demoted master's role change waits (4 periods; 8 s by default) and the info period how often
replicas are looked at (10 s by default, when no failover is in progress). Not the ping period:
after a crash Sentinel promotes only a replica it heard from within 5 ping periods, and it asks
them once a second then."""


def _reap(process: subprocess.Popen[bytes], directory: Path) -> None:
    if process.poll() is None:
        process.kill()  # SIGKILL acts on a paused server too
        process.wait(timeout=10)
    shutil.rmtree(directory, ignore_errors=True)


class _PortTakenError(TransportError):
    """redis-server could not bind its port: another process took it after :func:`free_port`."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class _Monitoring:
    """What a Sentinel monitors: the master it is started with, under its service name."""

    master: RedisServer
    service: str
    down_after: float
    failover_timeout: float

    def config(self) -> str:
        return (
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} {round(self.down_after * 1000)}\n"
            f"sentinel failover-timeout {self.service} {round(self.failover_timeout * 1000)}\n"
        )


class RedisServer:
    """``with RedisServer() as server: server.url``; ``kill()``, ``start()``, ``restart()``,
    ``pause()`` and ``resume()``. ``replica_of``: a started server this one replicates."""

    def __init__(self, *, durable: bool = True, replica_of: RedisServer | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise MissingDependencyError("redis-server", install="apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        # made by the first start (a server never started leaves nothing: nothing would remove it)
        self.directory = Path(tempfile.gettempdir()) / f"dynamic-agents-redis-{secrets.token_hex(8)}"
        self.durable = durable
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None
        self._monitoring: _Monitoring | None = None
        self._started = False
        self._log_offset = 0

    @classmethod
    def sentinel(
        cls,
        master: RedisServer,
        *,
        service: str = "mymaster",
        down_after: float = 1.0,
        failover_timeout: float = 2.0,
    ) -> RedisServer:
        """A Redis Sentinel (``redis-server --sentinel``) monitoring ``master`` (started first) as
        ``service``, with a quorum of 1: ``SENTINEL FAILOVER <service>`` on it promotes a replica.
        ``down_after`` and ``failover_timeout`` (seconds) are the service's settings of those names;
        its own timers are shortened (``SENTINEL DEBUG``) so a failover takes a second or two."""
        server = cls(durable=False)
        server._monitoring = _Monitoring(master, service, down_after, failover_timeout)
        return server

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
        self.directory.mkdir(mode=0o700, exist_ok=True)  # the first start, or after stop() removed it
        log = self.directory / "redis.log"  # appended to by each launch: read only this one's
        self._log_offset = log.stat().st_size if log.exists() else 0
        common = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        # its output goes to the log too: a configuration error is written to stderr, before the
        # log file is opened (both append, so neither overwrites the other)
        with log.open("ab") as output:
            self.process = subprocess.Popen(  # noqa: S603 - a fixed argv, the binary found on PATH
                [self.binary, *self._role_arguments(), *common, "--logfile", str(log)],
                stdout=output,
                stderr=output,
            )
        # stopped, and its directory removed, when this object is dropped or the interpreter
        # exits without stop(): a test that failed before it left the server running for ever
        weakref.finalize(self, _reap, self.process, self.directory)
        try:
            self._wait_ready()
            if self._monitoring is not None:
                periods = (str(part) for pair in _SENTINEL_PERIODS_MS.items() for part in pair)
                self._command("SENTINEL", "DEBUG", *periods)
        except BaseException:
            self.kill()  # not ready in time (or interrupted): never leave a server behind
            raise

    def _role_arguments(self) -> list[str]:
        if self._monitoring is not None:  # Sentinel rewrites its file: kept for a restart
            config = self.directory / "sentinel.conf"
            if not config.exists():
                config.write_text(self._monitoring.config())
            return [str(config), "--sentinel"]
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        )
        # a replica's first sync starts at once (diskless, it waits 5 s for more replicas by default)
        arguments = [*persistence, "--save", "", "--repl-diskless-sync-delay", "0"]
        if self.replica_of is not None:
            arguments += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        return arguments

    def _command(self, *args: str) -> None:
        """Send one command on a connection of its own; an error reply is a TransportError."""
        packed = b"".join(b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args)
        with socket.create_connection(("127.0.0.1", self.port), _START_DEADLINE) as sock:
            sock.sendall(b"*%d\r\n%s" % (len(args), packed))
            reply = sock.recv(4096)
        if not reply.startswith(b"+"):
            raise TransportError(f"{' '.join(args[:2])} on port {self.port} failed: {reply!r}")

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
        raise TransportError(
            f"redis-server on port {self.port} did not answer within {_START_DEADLINE}s: "
            f"{self._log_since_launch[-2000:]}"
        )

    @property
    def _log_since_launch(self) -> str:
        try:
            with (self.directory / "redis.log").open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace") or "(nothing in its log)"
        except FileNotFoundError:  # the directory was removed under it
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
