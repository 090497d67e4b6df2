"""``WorkerSettings``: how a worker consumes, runs and answers."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from dynamic_agents._validation import check_choice, check_count, check_flag, check_seconds, shown
from dynamic_agents.events import TargetType
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.transports.base import check_name

__all__ = ["SessionPolicy", "WorkerSettings"]


class SessionPolicy(StrEnum):
    """What happens to a message that arrives while its session is busy.

    ``enqueue``: wait its turn (FIFO per session). ``reject``: answer ``rejected`` ("busy") at once.
    ``interrupt``: cancel the running run (it answers ``cancelled``), then run the new message; the
    newest wins: the session's messages still queued in this worker behind the interrupted run are
    answered ``cancelled`` too. Across workers only the run holding the lease is cancelled (a
    cancellation request); messages waiting for another worker's lease run in turn.
    ``merge``: messages queued behind a running run are answered as one turn.
    """

    ENQUEUE = "enqueue"
    REJECT = "reject"
    INTERRUPT = "interrupt"
    MERGE = "merge"


_TARGET_TYPES = tuple(kind.value for kind in TargetType)


def _checked_policies(policies: object) -> dict[str, SessionPolicy]:
    """``policies`` with their values as :class:`SessionPolicy`; a key is looked up as
    ``"<type>:<id>"``, so one of another shape (it would never match) is refused."""
    if not isinstance(policies, Mapping):
        raise ConfigurationError(f"policies must be a mapping of target to policy, got {policies!r}")
    checked: dict[str, SessionPolicy] = {}
    for key, value in policies.items():
        kind, _, target_id = key.partition(":") if isinstance(key, str) else ("", "", "")
        if kind not in _TARGET_TYPES or not target_id:
            valid = ", ".join(f"'{kind}:<id>'" for kind in _TARGET_TYPES)
            raise ConfigurationError(f"policies key {shown(key)} names no target: keys are {valid}")
        checked[key] = check_choice(f"policies[{key!r}]", value, SessionPolicy)
    return checked


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Settings of an :class:`~dynamic_agents.worker.AgentWorker` (seconds unless said).

    * ``concurrency``: runs in flight at once; the worker never reads more entries than it has free.
    * ``claim_min_idle``: entries idle this long on a consumer are taken over — only dead consumers'
      entries get there, since a live worker keeps what it holds fresh every ``keep_fresh_every``.
    * ``max_deliveries``: after this many deliveries an entry is dead-lettered with an error reply
      (while its session's lease is held — a run of it may still go on — it is handed back and
      looked at again after ``claim_min_idle``, for as long as a run of it could still go on:
      ``request_timeout`` more, in steps of ``claim_min_idle``). Waiting for a session lease does
      not count.
    * ``record_ttl``: how long a completed-request record outlives its answer (deduplication); it
      must outlive ``max_deliveries x claim_min_idle + request_timeout``, checked here.
    * ``lease_ttl``: a session lease's lifetime, renewed every third of it while a run goes on
      and until its reply is written.
    * ``claim_on_read``: let the transport claim each request's session in the round trip of the
      read that delivers it (the Redis transport does, for reads of a few requests; see
      ``Subscription.claim_ttl``): one round trip less on their path. Its leases are the
      coordinator's only when both share the Redis server and key prefix, as
      ``transport.coordinator()`` does: turn it off otherwise.
    * ``abandon_after``: how long :meth:`~dynamic_agents.worker.AgentWorker.stop` waits, after its
      grace, for the runs it cancelled; one still running then (it ignores its cancellation) is
      abandoned: its entry left pending for another worker, its lease given up, so it writes
      nothing if it finishes later. ``stop(grace=None)`` cancels nothing and waits however long.
    * ``session_policy`` / ``policies``: see :class:`SessionPolicy`, or its value as text
      (``"reject"``, as read from YAML or the environment: converted here, an unknown one refused);
      ``cancel_poll``: how often cancellation requests for running requests are checked.
    """

    group: str = "dynamic-agents"
    consumer: str = field(default_factory=_consumer_name)
    concurrency: int = 8
    batch_size: int = 16
    block: float = 1.0
    claim_min_idle: float = 60.0
    keep_fresh_every: float | None = None
    max_deliveries: int = 5
    request_timeout: float = 120.0
    record_ttl: float = 7 * 24 * 3600.0
    lease_ttl: float = 30.0
    lease_poll: float = 0.2
    claim_on_read: bool = True
    events: bool = False
    events_maxlen: int = 10_000
    delta_interval: float = 0.1
    reply_maxlen: int | None = 1_000
    reply_expire: float | None = 7 * 24 * 3600.0
    session_policy: SessionPolicy = SessionPolicy.ENQUEUE
    policies: Mapping[str, SessionPolicy] = field(default_factory=dict)
    """Per target, as ``"agent:support"``; a request overrides both with ``metadata.session_policy``."""
    cancel_poll: float = 0.25
    abandon_after: float = 5.0
    busy_message: str = "Still working on your previous message; please wait for its answer."

    def __post_init__(self) -> None:
        # Types first: "8" or None would fail the comparisons below with a bare TypeError, and NaN
        # passes every comparison (it would make a lease or a timeout that never ends).
        for name in ("concurrency", "batch_size", "max_deliveries", "events_maxlen"):
            object.__setattr__(self, name, check_count(name, getattr(self, name)))  # frozen: 5.0 kept as 5
        object.__setattr__(
            self, "reply_maxlen", check_count("reply_maxlen", self.reply_maxlen, optional=True)
        )
        # block and lease_poll of 0 would be loops that never wait: the transport (Redis, or the
        # event loop for the in-memory one) polled without pause
        seconds = (
            "claim_min_idle",
            "request_timeout",
            "record_ttl",
            "lease_ttl",
            "cancel_poll",
            "abandon_after",
            "block",
            "lease_poll",
        )
        for name in seconds:
            check_seconds(name, getattr(self, name))
        check_seconds("delta_interval", self.delta_interval, zero=True)
        for name in ("keep_fresh_every", "reply_expire"):
            check_seconds(name, getattr(self, name), optional=True)
        for name in ("claim_on_read", "events"):
            check_flag(name, getattr(self, name))
        for name in ("group", "consumer"):  # as the transports check them: here, not at subscribe
            check_name(name, getattr(self, name))
        if not isinstance(self.busy_message, str):
            raise ConfigurationError(f"busy_message must be a string, got {shown(self.busy_message)}")
        # frozen: the policies given as text (YAML, environment) are stored as SessionPolicy
        object.__setattr__(
            self, "session_policy", check_choice("session_policy", self.session_policy, SessionPolicy)
        )
        object.__setattr__(self, "policies", _checked_policies(self.policies))
        floor = self.max_deliveries * self.claim_min_idle + self.request_timeout
        if self.record_ttl < floor:
            raise ConfigurationError(
                f"record_ttl={self.record_ttl}s is too short: a redelivered request can arrive up to "
                f"max_deliveries x claim_min_idle + request_timeout = {floor}s after the first, and must "
                "still find its record"
            )
        if self.keep_fresh_every is not None and self.keep_fresh_every >= self.claim_min_idle:
            raise ConfigurationError(
                f"keep_fresh_every={self.keep_fresh_every}s must be shorter than claim_min_idle="
                f"{self.claim_min_idle}s: entries idle for claim_min_idle are taken over from live "
                "workers too"
            )

    @property
    def freshness_interval(self) -> float:
        return self.keep_fresh_every if self.keep_fresh_every is not None else self.claim_min_idle / 3
