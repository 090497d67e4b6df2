"""The worker: consume requests, route them, run them, answer them once."""

from dynamic_agents.worker.hooks import BaseHooks, RunContext, WorkerHooks
from dynamic_agents.worker.settings import SessionPolicy, WorkerSettings
from dynamic_agents.worker.worker import AgentWorker, WorkerStats

__all__ = [
    "AgentWorker",
    "BaseHooks",
    "RunContext",
    "SessionPolicy",
    "WorkerHooks",
    "WorkerSettings",
    "WorkerStats",
]
