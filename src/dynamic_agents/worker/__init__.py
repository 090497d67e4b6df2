"""The worker: consume requests, route them, run them, answer them once."""

from dynamic_agents.worker.hooks import BaseHooks, RunContext, WorkerHooks
from dynamic_agents.worker.settings import SessionPolicy, WorkerSettings
from dynamic_agents.worker.worker import AgentWorker, RunLostError, WorkerStats

__all__ = [
    "AgentWorker",
    "BaseHooks",
    "RunContext",
    "RunLostError",
    "SessionPolicy",
    "WorkerHooks",
    "WorkerSettings",
    "WorkerStats",
]
