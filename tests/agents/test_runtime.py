"""Build and execute offline: scripted models, real agno objects, real session dbs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agno.run import RunContext
from pydantic import BaseModel
from sqlalchemy import event

from dynamic_agents.agents import (
    AgentRuntime,
    AgentSpec,
    AgnoExecutor,
    InMemorySpecStore,
    SpecKind,
    SpecStatus,
    SpecStore,
    SqlSpecStore,
    TeamSpec,
    ToolRegistry,
    WorkflowSpec,
    session_db,
)
from dynamic_agents.events import AgentRequestEvent, Attachment, ResponseStatus, Target, TargetType
from dynamic_agents.exceptions import (
    ConfigurationError,
    EventValidationError,
    RoutingConfigError,
    SpecNotFoundError,
    SpecValidationError,
)
from dynamic_agents.routing import EventRouter, RoutingRule
from dynamic_agents.secrets import SecretValue
from dynamic_agents.testing import ScriptedModels, ToolCall


class Ticket(BaseModel):
    title: str
    priority: int


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


async def slow_lookup(query: str) -> str:
    """A tool that takes far too long."""
    await asyncio.sleep(30)
    return "never"


def registry() -> ToolRegistry:
    tools = ToolRegistry()
    tools.tool(get_weather)
    tools.tool(slow_lookup)
    tools.schema("Ticket", Ticket)
    tools.function(
        "shout", lambda step_input: str(step_input.previous_step_content or step_input.input).upper()
    )
    tools.function("always", lambda step_input: True)
    tools.function("never", lambda step_input: False)
    tools.function("said_loop_2", lambda outputs: outputs[-1].content == "loop 2")
    return tools


_RUNTIMES: list[AgentRuntime] = []


class Deltas(list[str]):
    """An ``on_delta`` callback that keeps what it is given."""

    async def __call__(self, delta: str) -> None:
        self.append(delta)


def runtime(scripts: dict[str, list[Any]], *, store: SpecStore | None = None, db: Any = None) -> AgentRuntime:
    built = AgentRuntime(store or InMemorySpecStore(), registry(), ScriptedModels(scripts), db=db)
    _RUNTIMES.append(built)
    return built


def clocked_runtime(url: str, now: list[float]) -> AgentRuntime:
    """A runtime on the SQL store at ``url`` whose clock is ``now[0]``, specs cached up to 5 s."""
    built = AgentRuntime(
        SqlSpecStore.from_url(url),
        registry(),
        ScriptedModels({"gpt": ["old answer", "new answer"]}),
        max_staleness=5,
        clock=lambda: now[0],
    )
    _RUNTIMES.append(built)
    return built


def system_prompts(rt: AgentRuntime) -> list[str]:
    """The system messages the scripted "gpt" model was sent, call by call."""
    calls = rt.models.models["gpt"].calls  # type: ignore[attr-defined]
    return [m["content"] for call in calls for m in call.messages if m["role"] == "system"]


@pytest.fixture(autouse=True)
async def _close_runtimes() -> AsyncIterator[None]:
    yield
    while _RUNTIMES:
        await _RUNTIMES.pop().aclose()


async def test_an_agent_with_a_tool(tmp_path: Path) -> None:
    rt = runtime({"gpt": [ToolCall("get_weather", {"city": "Porto"}), "It is sunny in Porto."]})
    await rt.agents.create(AgentSpec.from_dict({"id": "weather", "model": "gpt", "tools": ["get_weather"]}))
    result = await rt.agents.execute("weather", "Weather in Porto?", session_id="s1")
    assert result.status == ResponseStatus.COMPLETED
    assert result.content == "It is sunny in Porto."
    assert result.tokens is not None
    assert result.tokens.total_tokens > 0
    assert result.run_id
    calls = rt.models.models["gpt"].calls  # type: ignore[attr-defined]
    assert calls[0].tools == ["get_weather"]
    assert calls[1].messages[-1]["content"] == "Sunny in Porto"


@pytest.mark.parametrize("mode", ["route", "coordinate"])
async def test_a_team(mode: str) -> None:
    leader = [ToolCall("delegate_task_to_member", {"member_id": "researcher", "task": "facts please"})]
    if mode == "coordinate":
        leader.append("Leader: the sky is blue.")  # type: ignore[arg-type]
    rt = runtime({"leader": leader, "member": ["Researcher: blue."]})
    await rt.agents.create(AgentSpec.from_dict({"id": "researcher", "model": "member"}))
    await rt.agents.create(AgentSpec.from_dict({"id": "writer", "model": "member"}))
    await rt.teams.create(
        TeamSpec.from_dict(
            {"id": "crew", "members": ["researcher", "writer"], "mode": mode, "model": "leader"}
        )
    )
    result = await rt.teams.execute("crew", "What colour is the sky?", session_id="s")
    assert result.status == ResponseStatus.COMPLETED
    assert result.content == ("Researcher: blue." if mode == "route" else "Leader: the sky is blue.")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("with_db", [False, True])
async def test_a_route_team_whose_member_fails_is_an_error(
    tmp_path: Path, stream: bool, with_db: bool
) -> None:
    """In route mode the member's reply is the team's: a member whose run failed made a
    `completed` result whose content was the member's error text, answered as a reply."""
    leader = [ToolCall("delegate_task_to_member", {"member_id": "researcher", "task": "facts please"})]
    db = session_db(f"sqlite:///{tmp_path}/sessions.db") if with_db else None
    rt = runtime({"leader": leader, "member": [RuntimeError("member provider down")]}, db=db)
    await rt.agents.create(AgentSpec.from_dict({"id": "researcher", "model": "member"}))
    await rt.teams.create(
        TeamSpec.from_dict({"id": "crew", "members": ["researcher"], "mode": "route", "model": "leader"})
    )
    deltas = Deltas()
    result = await rt.teams.execute(
        "crew", "What colour is the sky?", session_id="s", on_delta=deltas if stream else None
    )
    assert result.status == ResponseStatus.ERROR, result
    assert result.content == ""
    assert result.error_message == "member 'researcher' failed: member provider down"


async def test_a_route_team_whose_member_fails_fails_the_team_around_it_and_the_workflow_step() -> None:
    """A route team inside another route team, or as a workflow's step, was a completed run with
    the member's error text as its reply: the enclosing team and the workflow answered it."""
    to_crew = ToolCall("delegate_task_to_member", {"member_id": "crew", "task": "facts please"})
    to_researcher = ToolCall("delegate_task_to_member", {"member_id": "researcher", "task": "facts please"})
    rt = runtime(
        {
            "outer": [to_crew],
            "leader": [to_researcher] * 2,
            "member": [RuntimeError("member provider down")] * 2,
        }
    )
    await rt.agents.create(AgentSpec.from_dict({"id": "researcher", "model": "member"}))
    await rt.teams.create(
        TeamSpec.from_dict({"id": "crew", "members": ["researcher"], "mode": "route", "model": "leader"})
    )
    await rt.teams.create(
        TeamSpec.from_dict(
            {"id": "outer", "members": [{"kind": "team", "id": "crew"}], "mode": "route", "model": "outer"}
        )
    )
    await rt.workflows.create(
        WorkflowSpec.from_dict({"id": "flow", "steps": [{"type": "team", "team": "crew"}]})
    )
    nested = await rt.teams.execute("outer", "What colour is the sky?", session_id="s")
    assert nested.status == ResponseStatus.ERROR, nested
    assert nested.error_message == "member 'crew' failed: member 'researcher' failed: member provider down"
    flow = await rt.workflows.execute("flow", "What colour is the sky?", session_id="s")
    assert flow.status == ResponseStatus.ERROR, flow
    assert flow.error_message == "step 'crew' failed: member 'researcher' failed: member provider down"


async def test_a_workflow_with_parallel_condition_and_loop() -> None:
    rt = runtime({"gpt": ["draft", "left", "right", "loop 1", "loop 2"]})
    await rt.agents.create(AgentSpec.from_dict({"id": "writer", "model": "gpt"}))
    await rt.workflows.create(
        WorkflowSpec.from_dict(
            {
                "id": "pipeline",
                "steps": [
                    {"type": "agent", "agent": "writer", "name": "draft"},
                    {
                        "type": "parallel",
                        "steps": [
                            {"type": "agent", "agent": "writer", "name": "a"},
                            {"type": "agent", "agent": "writer", "name": "b"},
                        ],
                    },
                    {
                        "type": "condition",
                        "evaluator": "never",
                        "steps": [{"type": "function", "function": "shout", "name": "skipped"}],
                    },
                    {
                        "type": "loop",
                        "end_condition": "said_loop_2",
                        "max_iterations": 5,
                        "steps": [{"type": "agent", "agent": "writer", "name": "again"}],
                    },
                    {
                        "type": "condition",
                        "evaluator": "always",
                        "steps": [{"type": "function", "function": "shout", "name": "shout"}],
                    },
                ],
            }
        )
    )
    result = await rt.workflows.execute("pipeline", "write", session_id="w1")
    assert result.status == ResponseStatus.COMPLETED, result.error_message
    assert result.content == "LOOP 2"
    assert rt.models.models["gpt"].remaining == 0  # type: ignore[attr-defined]


async def test_a_kind_given_as_text_is_read_as_the_kind() -> None:
    """The stores take ``"agent"`` for ``SpecKind.AGENT``; so does the runtime (a str passed as a
    cache key, then failed on ``kind.value``, and ``"workflow"`` was not run as a workflow)."""
    rt = runtime({"gpt": ["hello", "again"]})
    await rt.agents.create(AgentSpec.from_dict({"id": "writer", "model": "gpt"}))
    first = await rt.execute("agent", "writer", "hi", session_id="s1")  # type: ignore[arg-type]
    assert (first.status, first.content) == (ResponseStatus.COMPLETED, "hello")
    assert (await rt.current("agent", "writer")).id == "writer"  # type: ignore[arg-type]
    rt.forget("agent", "writer")  # type: ignore[arg-type]
    assert (await rt.execute(SpecKind.AGENT, "writer", "hi", session_id="s1")).content == "again"
    with pytest.raises(
        ConfigurationError, match=r"^kind must be one of 'agent', 'team', 'workflow', got 'robot'$"
    ):
        await rt.execute("robot", "writer", "hi", session_id="s1")  # type: ignore[arg-type]


async def test_structured_output() -> None:
    rt = runtime({"gpt": ['{"title": "Printer on fire", "priority": 1}']})
    await rt.agents.create(AgentSpec.from_dict({"id": "triage", "model": "gpt", "output_schema": "Ticket"}))
    result = await rt.agents.execute("triage", "the printer is on fire", session_id="t")
    assert result.status == ResponseStatus.COMPLETED
    assert result.structured_data == {"title": "Printer on fire", "priority": 1}
    assert '"priority": 1' in result.content


async def test_an_error_reported_by_agno_is_never_a_success() -> None:
    rt = runtime({"gpt": [RuntimeError("provider down")]})
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt"}))
    result = await rt.agents.execute("a", "hi", session_id="e")
    assert result.status == ResponseStatus.ERROR
    assert result.error_message is not None
    assert "provider down" in result.error_message
    assert result.content == ""


async def test_an_error_the_run_reports_is_redacted_in_the_result() -> None:
    """The on_delta failure was redacted, the run's own error not: a workflow function or a model
    whose exception quoted a key (an HTTP error repeating a URL's ?api_key=…) handed it to the
    REST API's answer as written."""
    rt = runtime({"gpt": [RuntimeError(f"provider down: {PASTED_KEY}")]})

    def fetch(step_input: Any) -> str:
        raise ValueError(f"401 for url 'https://api.example.com/search?api_key={PASTED_KEY}'")

    rt.registry.function("fetch", fetch)
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt"}))
    await rt.workflows.create(
        WorkflowSpec.from_dict({"id": "w", "steps": [{"type": "function", "function": "fetch"}]})
    )
    for result in (
        await rt.agents.execute("a", "hi", session_id="e"),
        await rt.workflows.execute("w", "hi", session_id="e"),
    ):
        assert result.status == ResponseStatus.ERROR
        assert result.error_message is not None
        assert "**********" in result.error_message
        assert "CANARY" not in result.error_message


async def test_a_run_past_its_timeout() -> None:
    # agno's in-memory db: a run cancelled inside an aiosqlite call can leave that connection to be
    # collected after the test's event loop is gone, which pytest reports as an unraisable error.
    from agno.db.in_memory import InMemoryDb

    def completed_runs(session_id: str) -> int:
        session = db.get_session(session_id=session_id, session_type="agent")
        runs = (session.runs or []) if session is not None else []
        return sum(str(getattr(run.status, "value", run.status)).upper() == "COMPLETED" for run in runs)

    db = InMemoryDb()
    rt = runtime({"gpt": ["quick answer", ToolCall("slow_lookup", {"query": "x"}), "never reached"]}, db=db)
    await rt.agents.create(AgentSpec.from_dict({"id": "slow", "model": "gpt", "tools": ["slow_lookup"]}))
    control = await rt.agents.execute("slow", "hi", session_id="fast", timeout=5)
    assert control.status == ResponseStatus.COMPLETED
    assert completed_runs("agent:slow:fast") == 1  # the check below can see a completed run
    result = await rt.agents.execute("slow", "go", session_id="late", timeout=0.3)
    assert result.status == ResponseStatus.TIMEOUT
    assert "timed out" in (result.error_message or "")
    assert completed_runs("agent:slow:late") == 0
    # the result names the run agno stored as cancelled, as any other result names its run
    late = db.get_session(session_id="agent:slow:late", session_type="agent")
    assert late is not None
    assert late.runs
    assert result.run_id == late.runs[-1].run_id


def test_a_run_that_pauses_for_human_input_is_an_error_that_says_so() -> None:
    """Specs with tools that pause are refused at load, but a run can still pause (a tool's own
    hook, a toolkit that asks at run time): its content is the question it asks, not an error."""
    from agno.run.agent import RunOutput
    from agno.run.base import RunStatus

    from dynamic_agents.agents.runtime import _result

    paused = RunOutput(run_id="r1", content="Shall I delete the account?", status=RunStatus.paused)
    result = _result(paused, 0.0, "a")
    assert result.status == ResponseStatus.ERROR
    assert result.error_message is not None
    assert "paused for human input" in result.error_message
    assert "Shall I delete the account?" in result.error_message
    assert result.content == ""
    assert result.run_id == "r1"


async def test_a_timeout_error_of_the_run_itself_is_not_the_request_timing_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the request's own deadline answers ``timeout``: a ``TimeoutError`` that the agno run
    raises (agno turns most into error runs; not every path does) is raised as it is, like any
    other exception of the run, not reported as "timed out after 30s"."""
    from agno.agent import Agent

    async def timing_out(self: Agent, *args: Any, **kwargs: Any) -> Any:
        raise TimeoutError("the vector store timed out")

    rt = runtime({"gpt": ["unused"]})
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt"}))
    monkeypatch.setattr(Agent, "arun", timing_out)
    with pytest.raises(TimeoutError, match="the vector store timed out"):
        await rt.agents.execute("a", "hi", session_id="s", timeout=30)


async def test_history_is_shared_by_two_runtimes_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    spec = AgentSpec.from_dict(
        {"id": "memo", "model": "gpt", "add_history_to_context": True, "num_history_runs": 5}
    )
    first = runtime({"gpt": ["I will remember 42."]}, db=session_db(url))
    await first.agents.create(spec)
    await first.agents.execute("memo", "Remember 42.", session_id="conv")
    second = runtime({"gpt": ["You said 42."]}, db=session_db(url))
    await second.agents.create(spec)
    await second.agents.execute("memo", "What did I say?", session_id="conv")
    messages = second.models.models["gpt"].calls[0].messages  # type: ignore[attr-defined]
    assert any(m["content"] == "Remember 42." for m in messages)
    assert any(m["content"] == "I will remember 42." for m in messages)


async def test_sqlite_sessions_keep_their_connection_between_runs_and_close_it(tmp_path: Path) -> None:
    db = session_db(f"sqlite:///{tmp_path / 'sessions.db'}")
    opened: list[object] = []
    event.listen(db.db_engine.sync_engine, "connect", lambda connection, _: opened.append(connection))
    before = set(threading.enumerate())
    rt = runtime({"gpt": ["one", "two", "three", "four"]}, db=db)
    await rt.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt", "add_history_to_context": True}))
    for content in ("a", "b", "c", "d"):
        assert (await rt.agents.execute("bot", content, session_id="conv")).status == ResponseStatus.COMPLETED
    history = rt.models.models["gpt"].calls[-1].messages  # type: ignore[attr-defined]
    assert [m["content"] for m in history if m["role"] == "assistant"] == ["one", "two", "three"]
    assert len(opened) == 1  # one run at a time: the pooled connection serves them all
    connection_threads = set(threading.enumerate()) - before  # aiosqlite: one thread per connection
    assert connection_threads
    await rt.aclose()
    for thread in connection_threads:
        thread.join(timeout=5)
    assert not [thread for thread in connection_threads if thread.is_alive()]


async def test_aclose_closes_the_spec_store_when_closing_the_session_db_fails() -> None:
    class BrokenDb:
        async def close(self) -> None:
            raise OSError("the database went away")

    class CountingStore(InMemorySpecStore):
        closed = 0

        async def aclose(self) -> None:
            self.closed += 1

    store = CountingStore()
    rt = AgentRuntime(store, registry(), ScriptedModels({}), db=BrokenDb())
    with pytest.raises(OSError, match="went away"):
        await rt.aclose()
    assert store.closed == 1


async def test_aclose_runs_a_synchronous_db_close_off_the_event_loop() -> None:
    """A sync ``close()`` (agno's sync dbs: an engine dispose, a socket shutdown) blocked the loop.
    This one waits for a callback of the loop: on the loop it waits in vain, in a thread it returns."""
    loop = asyncio.get_running_loop()

    class SyncDb:
        closed_off_the_loop: bool | None = None

        def close(self) -> None:
            answered = threading.Event()
            loop.call_soon_threadsafe(answered.set)
            self.closed_off_the_loop = answered.wait(timeout=5)

    db = SyncDb()
    rt = AgentRuntime(InMemorySpecStore(), registry(), ScriptedModels({}), db=db)
    async with asyncio.timeout(10):
        await rt.aclose()
    assert db.closed_off_the_loop is True


async def test_runs_cancelled_midway_leave_the_sqlite_pool_usable(tmp_path: Path) -> None:
    # a pooled connection outlives the run that used it: a run cancelled in the middle of a db call
    # must not hand the next run a connection in a broken state
    db = session_db(f"sqlite:///{tmp_path / 'sessions.db'}")
    rt = runtime({"gpt": ["ok"] * 100}, db=db)
    await rt.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt", "add_history_to_context": True}))
    await rt.agents.execute("bot", "first", session_id="s0")
    cancelled = 0
    for step in range(24):  # cancelled after 0 to 11.5 ms: before, inside and after its db calls
        run = asyncio.ensure_future(rt.agents.execute("bot", f"m{step}", session_id=f"s{step % 3}"))
        await asyncio.sleep(step / 2000)
        cancelled += run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        after = await rt.agents.execute("bot", "after", session_id=f"s{step % 3}")
        assert after.status == ResponseStatus.COMPLETED, after.error_message
    assert cancelled > 0
    assert db.db_engine.pool.checkedout() == 0


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:sessions?mode=memory&uri=true"]
)
def test_an_in_memory_sqlite_session_db_is_refused(url: str) -> None:
    # one connection holds such a db: concurrent runs sharing it break each other's transactions
    with pytest.raises(ConfigurationError, match="in-memory SQLite") as caught:
        session_db(url)
    assert repr(url) in str(caught.value)


def test_an_unsupported_session_db_url_is_refused_without_its_password() -> None:
    canary = "canary-pw-7f3a9e"
    with pytest.raises(ConfigurationError) as caught:
        session_db(f"mysql://user:{canary}@127.0.0.1/db")
    assert "'mysql://user:***@127.0.0.1/db'" in str(caught.value)
    assert canary not in str(caught.value)
    with pytest.raises(ConfigurationError, match="not a URL"):
        session_db(f"user={canary} dbname=sessions")


def test_a_schema_for_a_sqlite_session_db_is_refused(tmp_path: Path) -> None:
    """SQLite has no schemas: the schema was dropped silently, so two runtimes told to keep their
    sessions apart by schema shared one history in the file."""
    with pytest.raises(ConfigurationError, match=r"schema 'tenant_a'.*PostgreSQL") as caught:
        session_db(f"sqlite:///{tmp_path / 'sessions.db'}", schema="tenant_a")
    assert "sqlite" in str(caught.value)
    assert not (tmp_path / "sessions.db").exists()


def test_postgres_session_db_urls_use_the_async_psycopg_driver() -> None:
    for scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        db = session_db(f"{scheme}://user:p%40ss@127.0.0.1:5432/test", schema="agno")
        url = db.db_engine.url.render_as_string(hide_password=False)
        assert url == "postgresql+psycopg_async://user:p%40ss@127.0.0.1:5432/test"
        assert db.db_schema == "agno"


async def test_a_built_agent_never_shows_the_session_db_password() -> None:
    # agno's Agent.to_dict() (what agno's own API and component store serialise) includes its db's
    # to_dict(), which holds db_url as given
    canary = "canary-pw-5c1d9e"
    db = session_db(f"postgresql://user:{canary}@127.0.0.1:5432/test")
    rt = runtime({"gpt": []}, db=db)
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt"}))
    agent = await rt.agents.build("a")
    assert canary not in repr(agent.to_dict())
    assert canary not in repr(db.to_dict())


async def test_reading_the_turn_back_stops_at_the_requests_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """The turn is read back from the session db after the run, outside the run's deadline: a db
    that stopped answering once the run was over held the answer back past the request's timeout,
    for as long as the db took (minutes for a host that drops packets)."""
    from agno.db.in_memory import InMemoryDb

    class NoAnswerOnReadBack(InMemoryDb):  # type: ignore[misc]
        async def get_run(self, run_id: str, deserialize: bool | None = True) -> Any:
            await asyncio.Event().wait()  # a db that never answers

    rt = runtime({"gpt": ["the answer"]}, db=NoAnswerOnReadBack())
    await rt.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt"}))
    caplog.set_level(logging.WARNING, logger="dynamic_agents.agents")
    async with asyncio.timeout(60):  # the test's own bound: without the fix, the call never returns
        result = await rt.agents.execute("bot", "hi", session_id="conv", timeout=3)
    assert result.status == ResponseStatus.COMPLETED
    assert result.content == "the answer"
    assert result.metadata["session_saved"] is False  # not known to be kept
    [warning] = [r for r in caplog.records if r.name == "dynamic_agents.agents"]
    assert "did not answer within the request's timeout" in warning.getMessage()


async def test_a_session_db_that_does_not_answer_before_the_run_times_out_the_request(tmp_path: Path) -> None:
    """The session's last run is read (for an interrupted turn) before the run starts, outside its
    deadline: with a session db that did not answer, a request with a timeout never returned."""
    db = session_db(f"sqlite:///{tmp_path / 'sessions.db'}")

    async def no_answer(**_: Any) -> None:
        await asyncio.Event().wait()

    db.get_session = no_answer  # every session read, the runtime's and agno's own
    rt = runtime({"gpt": ["never sent"]}, db=db)
    await rt.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt"}))
    async with asyncio.timeout(60):  # the test's own bound: without the fix, the call never returns
        result = await rt.agents.execute("bot", "hi", session_id="conv", timeout=2)
    assert result.status == ResponseStatus.TIMEOUT
    assert result.error_message == "agent 'bot' timed out after 2.0s"


class SilentStore(InMemorySpecStore):
    """An in-memory store whose reads stop answering once ``silent`` is set."""

    silent = False

    async def get(self, kind: SpecKind, spec_id: str) -> Any:
        if self.silent:
            await asyncio.Event().wait()
        return await super().get(kind, spec_id)


async def test_a_spec_store_that_does_not_answer_times_out_the_request() -> None:
    """The spec is read again (past max_staleness) and the agent built before the run, outside its
    deadline: with a store (or a secrets source) that did not answer, such a request never
    returned."""
    store = SilentStore()
    rt = AgentRuntime(store, registry(), ScriptedModels({"gpt": ["never sent"]}), max_staleness=0)
    _RUNTIMES.append(rt)
    await rt.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt"}))
    store.silent = True
    async with asyncio.timeout(60):  # the test's own bound: without the fix, the call never returns
        result = await rt.agents.execute("bot", "hi", session_id="conv", timeout=2)
    assert result.status == ResponseStatus.TIMEOUT
    assert result.error_message == "agent 'bot' timed out after 2.0s"


async def test_a_streamed_run_the_session_db_did_not_keep_answers_its_own_reply(tmp_path: Path) -> None:
    """A streamed run's result is read back from the session db: when the db could not save it (a
    sessions file the process cannot write), that read gave the session's previous turn, whose
    reply was answered again as this one's."""
    path = tmp_path / "sessions.db"
    spec = AgentSpec.from_dict({"id": "bot", "model": "gpt"})
    healthy = runtime({"gpt": ["the first answer"]}, db=session_db(f"sqlite:///{path}"))
    await healthy.agents.create(spec)
    assert (await healthy.agents.execute("bot", "first", session_id="conv")).ok
    read_only = runtime(
        {"gpt": ["the second answer"]}, db=session_db(f"sqlite:///file:{path}?mode=ro&uri=true")
    )
    await read_only.agents.create(spec)
    deltas = Deltas()
    result = await read_only.agents.execute("bot", "second", session_id="conv", on_delta=deltas)
    assert result.status == ResponseStatus.COMPLETED
    assert result.content == "the second answer" == "".join(deltas)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening) while the block runs."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("broken", ["postgresql-unreachable", "sqlite-read-only"])
async def test_a_turn_the_session_db_did_not_keep_is_answered_flagged_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str, stream: bool
) -> None:
    """agno logs a session db's failures on its own loggers and goes on: the run answered without
    its history and forgot the turn, and nothing the runtime returned or logged said so."""
    canary = "canary-db-pw-0e7b1f"
    spec = AgentSpec.from_dict({"id": "bot", "model": "gpt", "add_history_to_context": True})
    deltas = Deltas() if stream else None
    caplog.set_level(logging.WARNING, logger="dynamic_agents.agents")
    with closed_port() as port:
        if broken == "postgresql-unreachable":
            url, shown = f"postgresql://user:{canary}@127.0.0.1:{port}/test", f"127.0.0.1:{port}/test"
        else:  # a sessions file the process can read but not write
            path = tmp_path / "sessions.db"
            healthy = runtime({"gpt": ["kept"]}, db=session_db(f"sqlite:///{path}"))
            await healthy.agents.create(spec)
            kept = await healthy.agents.execute("bot", "first", session_id="conv", on_delta=deltas)
            assert kept.ok
            assert "session_saved" not in kept.metadata  # a db that works: no flag
            assert not [r for r in caplog.records if r.name.startswith("dynamic_agents")]
            url, shown = f"sqlite:///file:{path}?mode=ro&uri=true", str(path)
        rt = runtime({"gpt": ["the answer"]}, db=session_db(url))
        await rt.agents.create(spec)
        result = await rt.agents.execute("bot", "second", session_id="conv", on_delta=deltas)
    assert result.status == ResponseStatus.COMPLETED  # answered all the same
    assert result.content == "the answer"
    assert result.metadata["session_saved"] is False
    request = AgentRequestEvent(source="api", source_id="conv", user_id="u", content="second")
    assert result.to_response(request).metadata["session_saved"] is False
    [warning] = [r for r in caplog.records if r.name == "dynamic_agents.agents"]
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    for named in ("agent 'bot'", "session 'conv'", shown):
        assert named in message, message
    assert canary not in message
    assert canary not in repr(result)


async def test_two_targets_never_read_each_others_history(tmp_path: Path) -> None:
    db = session_db(f"sqlite:///{tmp_path / 'sessions.db'}")
    rt = runtime({"one": ["one's secret reply"], "two": ["two's reply"]}, db=db)
    for bot in ("one", "two"):
        await rt.agents.create(AgentSpec.from_dict({"id": bot, "model": bot, "add_history_to_context": True}))
    await rt.agents.execute("one", "hello one", session_id="same-channel")
    await rt.agents.execute("two", "hello two", session_id="same-channel")
    seen = rt.models.models["two"].calls[0].messages  # type: ignore[attr-defined]
    assert not any("one" in str(m["content"]) for m in seen)


async def test_concurrent_runs_in_different_sessions_keep_their_state(tmp_path: Path) -> None:
    db = session_db(f"sqlite:///{tmp_path / 'sessions.db'}")
    rt = runtime({"gpt": ["ok a", "ok b"]}, db=db)
    await rt.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt"}))
    results = await asyncio.gather(
        rt.agents.execute("bot", "a", session_id="A", session_state={"who": "alice"}),
        rt.agents.execute("bot", "b", session_id="B", session_state={"who": "bob"}),
    )
    assert {r.status for r in results} == {ResponseStatus.COMPLETED}
    for session, who in (("A", "alice"), ("B", "bob")):
        stored = await db.get_session(session_id=f"agent:bot:{session}", session_type="agent")
        assert stored.session_data["session_state"]["who"] == who


@pytest.mark.parametrize(("given", "stored"), [("", None), ("   ", None), ("u1", "u1")])
async def test_a_blank_user_id_runs_as_no_user(tmp_path: Path, given: str, stored: str | None) -> None:
    # AgentClient.build_request gives "" to an event without a user: agno stored it as a user of
    # that id (memories of every such request under one user ""), and the LLM router looked up
    # per-user keys for user "" on every call
    db = session_db(f"sqlite:///{tmp_path / 'sessions.db'}")
    rt = runtime({"gpt": ["ok"]}, db=db)
    models_for: list[str | None] = []  # the user whose model (and so LLM keys) the run gets
    scripted = rt.models.model
    rt.models.model = lambda settings, *, user_id: (
        models_for.append(user_id)
        or scripted(  # type: ignore[method-assign]
            settings, user_id=user_id
        )
    )
    await rt.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt"}))
    request = AgentRequestEvent(source="discord", source_id="c", user_id=given, content="hi")
    result = await AgnoExecutor(rt).execute(Target(type=TargetType.AGENT, id="bot"), request)
    assert result.status == ResponseStatus.COMPLETED
    session = await db.get_session(session_id=f"agent:bot:{request.session_id}", session_type="agent")
    assert session.user_id == stored
    assert models_for == [stored]


async def test_attachments_and_request_fields_reach_the_run() -> None:
    rt = runtime({"gpt": ["I see a cat."]})
    await rt.agents.create(AgentSpec.from_dict({"id": "eyes", "model": "gpt"}))
    request = AgentRequestEvent(
        source="discord",
        source_id="c",
        user_id="u1",
        user_name="Ana",
        content="what is this?",
        attachments=[{"kind": "image", "url": "https://cdn.example/cat.png", "content_type": "image/png"}],
        session_state={"tier": "gold"},
    )
    result = await AgnoExecutor(rt).execute(Target(type=TargetType.AGENT, id="eyes"), request)
    assert result.status == ResponseStatus.COMPLETED
    response = result.to_response(request, Target(type=TargetType.AGENT, id="eyes"))
    assert (response.request_id, response.agent_id, response.content) == (request.id, "eyes", "I see a cat.")


async def test_a_spec_changed_elsewhere_is_used_within_the_bound(tmp_path: Path) -> None:
    # Two runtimes with stores of their own on one database, as two worker processes would have.
    url = f"sqlite:///{tmp_path / 'specs.db'}"
    reader = runtime({"gpt": ["v1 answer", "v2 answer"]}, store=SqlSpecStore.from_url(url))
    reader.max_staleness = 0.05
    writer = runtime({"gpt": []}, store=SqlSpecStore.from_url(url))
    created = await writer.agents.create(
        AgentSpec.from_dict({"id": "bot", "model": "gpt", "instructions": "version one"})
    )
    await reader.agents.execute("bot", "hi", session_id="x")
    await writer.agents.update(
        created.model_copy(update={"instructions": "version two"}), expected_version=created.version
    )
    await asyncio.sleep(0.06)  # the configured staleness bound
    await reader.agents.execute("bot", "hi", session_id="x")
    systems = system_prompts(reader)
    assert "version one" in systems[0]
    assert "version two" in systems[-1]


async def test_unknown_and_disabled_targets_raise() -> None:
    rt = runtime({"gpt": []})
    with pytest.raises(SpecNotFoundError):
        await rt.agents.execute("ghost", "hi", session_id="s")
    created = await rt.agents.create(AgentSpec.from_dict({"id": "off", "model": "gpt"}))
    await rt.agents.update(created.model_copy(update={"status": SpecStatus.DISABLED}), expected_version=1)
    with pytest.raises(SpecValidationError) as caught:
        await rt.agents.execute("off", "hi", session_id="s")
    # the spec named once (it read "agent 'off' at status: agent 'off' is disabled")
    assert str(caught.value) == "agent 'off' at status: it is disabled (status 'active' runs it)"


async def test_serves_tells_which_routing_targets_the_runtime_can_run() -> None:
    store = InMemorySpecStore()
    rt = runtime({"gpt": []}, store=store)
    await rt.agents.create(AgentSpec.from_dict({"id": "on", "model": "gpt"}))
    created = await rt.agents.create(AgentSpec.from_dict({"id": "off", "model": "gpt"}))
    await rt.agents.update(created.model_copy(update={"status": SpecStatus.DISABLED}), expected_version=1)
    await rt.teams.create(TeamSpec.from_dict({"id": "crew", "members": ["on"], "model": "gpt"}))
    agent, team = TargetType.AGENT, TargetType.TEAM
    assert await rt.serves(Target(type=agent, id="on"))
    assert await rt.serves(Target(type=team, id="crew"))
    assert not await rt.serves(Target(type=agent, id="off"))  # disabled: a request to it fails
    assert not await rt.serves(Target(type=agent, id="ghost"))
    assert not await rt.serves(Target(type=team, id="on"))  # an agent's id, not a team's
    assert not await rt.serves(Target(type=TargetType.WORKFLOW, id="crew"))

    router = EventRouter(
        [
            RoutingRule.model_validate({"name": "a", "content_pattern": "^/a", "agent_id": "off"}),
            RoutingRule.model_validate({"name": "b", "content_pattern": "^/b", "team_id": "crew"}),
        ],
        default=Target(type=agent, id="ghost"),
    )
    with pytest.raises(RoutingConfigError, match=r"unknown routing targets: agent 'ghost', agent 'off'$"):
        await router.check_targets(rt.serves)

    # A stored spec whose references no longer hold says what is wrong, not merely "unknown".
    await store.create(AgentSpec.from_dict({"id": "broken", "model": "gpt-9"}))
    with pytest.raises(SpecValidationError, match="unknown model 'gpt-9'"):
        await rt.serves(Target(type=agent, id="broken"))


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        (
            {"id": "a", "model": "gpt", "tools": ["get_weather", "teleport"]},
            "tools[1].name",
            "unknown tool 'teleport'; registered: get_weather, slow_lookup",
        ),
        ({"id": "a", "model": "gpt-9"}, "model.name", "unknown model 'gpt-9'"),
        (
            {"id": "a", "model": "gpt", "output_schema": "Invoice"},
            "output_schema",
            "unknown schema 'Invoice'",
        ),
    ],
)
async def test_bad_references_name_their_path(spec: dict[str, Any], path: str, message: str) -> None:
    rt = runtime({"gpt": []})
    with pytest.raises(SpecValidationError) as caught:
        await rt.agents.create(AgentSpec.from_dict(spec))
    assert caught.value.path == path
    assert message in str(caught.value)
    assert str(caught.value).startswith("agent 'a' at ")


PASTED_KEY = "sk-proj-CANARYabcdefghijklmnop0123456789"


@pytest.mark.parametrize(
    ("kind", "spec", "path"),
    [
        (SpecKind.AGENT, {"id": "a", "model": PASTED_KEY}, "model.name"),
        (SpecKind.TEAM, {"id": "a", "model": PASTED_KEY, "members": ["solo"]}, "model.name"),
        (SpecKind.TEAM, {"id": "a", "model": "gpt", "members": [PASTED_KEY]}, "members[0]"),
        (
            SpecKind.TEAM,
            {"id": "a", "model": "gpt", "members": [{"kind": "team", "id": PASTED_KEY}]},
            "members[0]",
        ),
        (SpecKind.WORKFLOW, {"id": "a", "steps": [{"type": "agent", "agent": PASTED_KEY}]}, "steps[0].agent"),
        (SpecKind.WORKFLOW, {"id": "a", "steps": [{"type": "team", "team": PASTED_KEY}]}, "steps[0].team"),
    ],
)
async def test_a_key_pasted_as_a_reference_is_masked_in_the_error(
    kind: SpecKind, spec: dict[str, Any], path: str
) -> None:
    """An unknown model, member or step target was quoted as written, a key pasted there included
    (an unknown tool, schema or function was already masked)."""
    rt = runtime({"gpt": []})
    await rt.agents.create(AgentSpec.from_dict({"id": "solo", "model": "gpt"}))
    model = {SpecKind.AGENT: AgentSpec, SpecKind.TEAM: TeamSpec, SpecKind.WORKFLOW: WorkflowSpec}[kind]
    with pytest.raises(SpecValidationError) as caught:
        await rt.validate(model.from_dict(spec))
    assert caught.value.path == path
    assert "CANARY" not in str(caught.value)
    assert re.search(r"unknown (model|agent|team) \*{10}", str(caught.value)), str(caught.value)


@pytest.mark.parametrize("mode", ["coordinate", "broadcast"])
async def test_a_member_listed_twice_is_refused_naming_both(mode: str) -> None:
    # accepted: a broadcast team ran the agent twice on every request (twice its cost and its
    # tools' side effects), a coordinating leader was shown it twice
    rt = runtime({"gpt": []})
    await rt.agents.create(AgentSpec.from_dict({"id": "solo", "model": "gpt"}))
    await rt.agents.create(AgentSpec.from_dict({"id": "other", "model": "gpt"}))
    members = ["solo", "other", {"kind": "agent", "id": "solo"}]
    with pytest.raises(SpecValidationError) as caught:
        await rt.teams.create(
            TeamSpec.from_dict({"id": "t", "model": "gpt", "mode": mode, "members": members})
        )
    assert (caught.value.spec, caught.value.path) == ("team 't'", "members[2]")
    assert caught.value.detail == "agent 'solo' is members[0] already"


async def test_member_cycles_and_missing_members_are_refused() -> None:
    rt = runtime({"gpt": []})
    await rt.agents.create(AgentSpec.from_dict({"id": "solo", "model": "gpt"}))
    await rt.teams.create(TeamSpec.from_dict({"id": "inner", "model": "gpt", "members": ["solo"]}))
    outer = await rt.teams.create(
        TeamSpec.from_dict({"id": "outer", "model": "gpt", "members": [{"kind": "team", "id": "inner"}]})
    )
    inner = await rt.teams.get("inner")
    cyclic = inner.model_copy(
        update={"members": (*inner.members, outer.members[0].model_copy(update={"id": "outer"}))}
    )
    with pytest.raises(SpecValidationError, match="member cycle: inner -> outer -> inner") as caught:
        await rt.teams.update(cyclic, expected_version=inner.version)
    assert caught.value.path.startswith("members[1]")
    with pytest.raises(SpecValidationError, match="unknown agent 'nobody'") as missing:
        await rt.teams.create(TeamSpec.from_dict({"id": "t", "model": "gpt", "members": ["nobody"]}))
    assert missing.value.path == "members[0]"


class CountingStore(InMemorySpecStore):
    """An in-memory store that counts its reads."""

    reads = 0

    async def get(self, kind: SpecKind, spec_id: str) -> Any:
        self.reads += 1
        return await super().get(kind, spec_id)


async def test_the_cycle_check_reads_a_team_reached_twice_once() -> None:
    # Each level's two teams both contain both teams of the level below: the check read every
    # team once per path to it, 2**levels reads (a database query each) to create the top one.
    store = CountingStore()
    rt = runtime({"gpt": []}, store=store)
    await rt.agents.create(AgentSpec.from_dict({"id": "solo", "model": "gpt"}))
    below: list[dict[str, str]] = [{"kind": "agent", "id": "solo"}]
    levels = 8  # and the top team: 9 levels of teams
    for level in range(levels):
        for side in "ab":
            await rt.teams.create(
                TeamSpec.from_dict({"id": f"t{level}{side}", "model": "gpt", "members": below})
            )
        below = [{"kind": "team", "id": f"t{level}{side}"} for side in "ab"]
    store.reads = 0
    await rt.validate(TeamSpec.from_dict({"id": "top", "model": "gpt", "members": below}))
    assert store.reads <= 2 + 2 * levels  # its members, then each team below at most once


async def chain_of_teams(
    rt: AgentRuntime, prefix: str, levels: int, bottom: dict[str, str]
) -> dict[str, str]:
    """``levels`` teams, each holding the one before (the first holding ``bottom``): the last, as
    a member."""
    member = bottom
    for level in range(levels):
        await rt.teams.create(
            TeamSpec.from_dict({"id": f"{prefix}{level}", "model": "gpt", "members": [member]})
        )
        member = {"kind": "team", "id": f"{prefix}{level}"}
    return member


async def test_teams_nested_too_deep_are_refused_naming_the_path() -> None:
    # 300 teams, each holding the one before, were accepted, and running the last raised a bare
    # RecursionError out of execute
    rt = runtime({"gpt": []})
    await rt.agents.create(AgentSpec.from_dict({"id": "solo", "model": "gpt"}))
    ten = await chain_of_teams(rt, "t", 10, {"kind": "agent", "id": "solo"})  # 10 levels: the most
    with pytest.raises(SpecValidationError) as caught:
        await rt.teams.create(TeamSpec.from_dict({"id": "top", "model": "gpt", "members": [ten]}))
    assert (caught.value.spec, caught.value.path) == ("team 'top'", ".".join(["members[0]"] * 10))
    chain = " -> ".join(["top", *(f"t{level}" for level in range(9, -1, -1))])
    assert caught.value.detail == f"teams nested more than 10 deep: {chain}"


async def test_a_team_reached_again_deeper_down_counts_at_its_deepest() -> None:
    # the cycle check reads a team once: reached again by a longer path, its depth counts anew
    rt = runtime({"gpt": []})
    await rt.agents.create(AgentSpec.from_dict({"id": "solo", "model": "gpt"}))
    five = await chain_of_teams(rt, "x", 5, {"kind": "agent", "id": "solo"})
    long = await chain_of_teams(rt, "l", 5, five)  # 10 levels: the most
    with pytest.raises(SpecValidationError) as caught:
        await rt.teams.create(TeamSpec.from_dict({"id": "top", "model": "gpt", "members": [five, long]}))
    assert caught.value.path == ".".join(["members[1]", *["members[0]"] * 5])
    assert caught.value.detail == (
        "teams nested more than 10 deep: top -> l4 -> l3 -> l2 -> l1 -> l0 -> x4, which holds 4 more levels"
    )


@pytest.mark.parametrize(
    ("model", "spec", "path"),
    [
        (AgentSpec, {"id": "a"}, "model"),
        (AgentSpec, {"id": "a", "model": "gpt", "num_history_runs": -2}, "num_history_runs"),
        (  # agno would keep num_history_runs and drop num_history_messages with a log line
            AgentSpec,
            {"id": "a", "model": "gpt", "num_history_runs": 2, "num_history_messages": 10},
            "num_history_messages",
        ),
        (
            WorkflowSpec,
            {"id": "w", "steps": [{"type": "agent", "agent": "a"}, {"type": "teleport"}]},
            "steps[1]",
        ),
    ],
)
def test_invalid_specs_name_their_path(
    model: type[AgentSpec | WorkflowSpec], spec: dict[str, Any], path: str
) -> None:
    with pytest.raises(SpecValidationError) as caught:
        model.from_dict(spec)
    assert caught.value.path == path


async def test_tools_needing_confirmation_are_refused() -> None:
    rt = runtime({"gpt": []})
    rt.registry.add_tool(lambda: "boom", name="launch_missiles", requires_confirmation=True)
    with pytest.raises(SpecValidationError, match="requires human confirmation"):
        await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt", "tools": ["launch_missiles"]}))


@pytest.mark.parametrize("flag", ["requires_confirmation", "requires_user_input", "external_execution"])
async def test_agno_tools_that_pause_the_run_are_refused(flag: str) -> None:
    # each of these makes agno pause the run for a human or an outside caller: without a resume
    # flow every run of the agent would end paused, so the spec is refused when it loads
    from agno.tools import tool

    def run_shell(command: str) -> str:
        """Run a shell command."""
        return "done"

    rt = runtime({"gpt": [ToolCall("run_shell", {"command": "ls"}), "done"]})
    rt.registry.tool(tool(**{flag: True})(run_shell))
    with pytest.raises(SpecValidationError, match="requires human confirmation") as caught:
        await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt", "tools": ["run_shell"]}))
    assert caught.value.path == "tools[0].name"


@pytest.mark.parametrize("name", ["delete_account", "remove_user"])
async def test_a_function_marked_by_agnos_approval_decorator_is_refused(name: str) -> None:
    # @approval on a plain function only marks it (@tool reads the mark): the registry missed it,
    # the spec loaded, and registered under another name the builder made it an agno Function
    # without the mark, which then ran with no approval asked
    from agno.approval import approval

    deleted: list[str] = []

    @approval
    def delete_account(user: str) -> str:
        """Delete a user's account."""
        deleted.append(user)
        return "deleted"

    rt = runtime({"gpt": [ToolCall(name, {"user": "bob"}), "done"]})
    rt.registry.add_tool(delete_account, name=name)
    with pytest.raises(SpecValidationError, match="requires human confirmation") as caught:
        await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt", "tools": [name]}))
    assert caught.value.path == "tools[0].name"
    assert deleted == []


@pytest.mark.parametrize("load", [AgentSpec.from_yaml, AgentSpec.from_json])
def test_spec_text_that_does_not_parse_is_a_validation_error(load: Any) -> None:
    with pytest.raises(SpecValidationError, match="not valid"):
        load("id: [unclosed\nmodel: gpt\n")


def test_specs_export_a_json_schema() -> None:
    schema = AgentSpec.json_schema()
    assert "add_history_to_context" in schema["properties"]
    assert SpecKind.AGENT.value == "agent"


async def test_a_workflow_with_a_failed_step_is_an_error() -> None:
    rt = runtime({"gpt": [RuntimeError("step exploded"), "later step ran"]})
    await rt.agents.create(AgentSpec.from_dict({"id": "w", "model": "gpt"}))
    await rt.workflows.create(
        WorkflowSpec.from_dict(
            {
                "id": "p",
                "steps": [
                    {"type": "agent", "agent": "w", "name": "first"},
                    {"type": "agent", "agent": "w", "name": "second"},
                ],
            }
        )
    )
    result = await rt.workflows.execute("p", "go", session_id="f")
    assert result.status == ResponseStatus.ERROR
    assert result.error_message == "step 'first' failed: step exploded"


@pytest.mark.postgres
async def test_history_on_postgresql(postgres_url: str) -> None:
    from urllib.parse import parse_qs, urlsplit

    schema = parse_qs(urlsplit(postgres_url).query)["options"][0].split("=", 1)[1]
    spec = AgentSpec.from_dict({"id": "memo", "model": "gpt", "add_history_to_context": True})
    first = runtime({"gpt": ["Noted: blue."]}, db=session_db(postgres_url, schema=schema))
    await first.agents.create(spec)
    await first.agents.execute("memo", "My colour is blue.", session_id="pg")
    second = runtime({"gpt": ["Blue."]}, db=session_db(postgres_url, schema=schema))
    await second.agents.create(spec)
    await second.agents.execute("memo", "What is my colour?", session_id="pg")
    messages = second.models.models["gpt"].calls[0].messages  # type: ignore[attr-defined]
    assert [m["content"] for m in messages if m["role"] in {"user", "assistant"}][:2] == [
        "My colour is blue.",
        "Noted: blue.",
    ]


@pytest.mark.parametrize(
    ("kind", "content_type", "handed_as", "mime_type"),
    [
        # a media kind wins over a content type of another family, which is then not sent: a
        # provider may refuse audio said to be image/png (it was sent as the mime type)
        ("audio", "image/png", "audio", None),
        ("video", "audio/mpeg", "videos", None),
        ("image", "video/mp4", "images", None),
        ("image", "application/pdf", "images", None),
        ("image", None, "images", None),
        ("image", "image", "images", None),  # no type/subtype: no MIME type
        ("sticker", "audio", "files", None),
        ("image", "image/png", "images", "image/png"),  # of the kind's family: sent
        ("file", "image/png", "images", "image/png"),  # the default kind says nothing: the content type does
        ("sticker", "image/webp", "images", "image/webp"),  # so does a platform's own kind
        ("voice", "audio/ogg", "audio", "audio/ogg"),
        ("file", "application/pdf", "files", "application/pdf"),
        ("sticker", None, "files", None),
        # kinds in any case; content types case-insensitive (RFC 2045), sent in lower case without
        # parameters
        ("Image", None, "images", None),
        ("VIDEO", "video/MP4", "videos", "video/mp4"),
        ("Audio", "IMAGE/PNG", "audio", None),
        ("file", "IMAGE/PNG", "images", "image/png"),
        ("File", "Audio/Ogg; codecs=opus", "audio", "audio/ogg"),
        ("file", "Application/PDF", "files", "application/pdf"),
        # agno's File takes a short list of mime types and raised a ValidationError for any
        # other, failing the run: Discord's CDN sends both of these
        ("file", "application/octet-stream", "files", None),
        ("file", "text/plain; charset=utf-8", "files", "text/plain"),
        ("file", "application/x-tar", "files", None),
    ],
)
def test_an_attachment_is_handed_over_by_kind_then_content_type(
    kind: str, content_type: str | None, handed_as: str, mime_type: str | None
) -> None:
    """As docs/events.md says: by ``kind`` (image, audio, video), or else by the content type."""
    from dynamic_agents.agents.build import media_from_attachments

    attachment = Attachment(kind=kind, url="https://cdn.example/a", content_type=content_type)
    media = media_from_attachments([attachment])
    assert {name: len(items) for name, items in media.run_kwargs().items()} == {handed_as: 1}
    (item,) = media.run_kwargs()[handed_as]
    assert (item.url, item.mime_type) == ("https://cdn.example/a", mime_type)
    assert attachment.kind == kind  # the event is left as it came


async def test_attachments_reach_the_provider_request() -> None:
    from dynamic_agents.agents import RouterModels
    from dynamic_agents.llm import RouterConfig, build_router
    from dynamic_agents.secrets import SecretsManager, StaticSource
    from dynamic_agents.testing import FakeOpenAI

    fake = FakeOpenAI(["A cat."])
    with fake.installed():
        config = RouterConfig.from_dict(
            {
                "model_list": [
                    {
                        "model_name": "gpt",
                        "litellm_params": {
                            "model": "openai/gpt-4o",
                            "api_key": "sk-test-000001",
                            "api_base": fake.api_base,
                        },
                    }
                ]
            }
        )
        router = await build_router(config, SecretsManager(StaticSource()))
        rt = AgentRuntime(InMemorySpecStore(), registry(), RouterModels(router))
        _RUNTIMES.append(rt)
        await rt.agents.create(AgentSpec.from_dict({"id": "eyes", "model": "gpt"}))
        result = await rt.agents.execute(
            "eyes",
            "what is this?",
            session_id="img",
            attachments=[
                Attachment(kind="image", url="https://cdn.example/cat.png", content_type="image/png")
            ],
        )
        await router.aclose()
    assert result.status == ResponseStatus.COMPLETED
    (request,) = fake.requests
    user = request.messages[-1]
    assert any(
        part.get("type") == "image_url" and "cat.png" in part["image_url"]["url"] for part in user["content"]
    )


async def test_content_deltas_are_streamed() -> None:
    rt = AgentRuntime(
        InMemorySpecStore(), registry(), ScriptedModels({"gpt": ["Hello there, friend."]}, chunk_size=5)
    )
    _RUNTIMES.append(rt)
    await rt.agents.create(AgentSpec.from_dict({"id": "talker", "model": "gpt"}))
    deltas = Deltas()
    result = await rt.agents.execute("talker", "hi", session_id="stream", on_delta=deltas)
    assert result.status == ResponseStatus.COMPLETED
    assert result.content == "Hello there, friend."
    assert len(deltas) > 1
    assert "".join(deltas) == "Hello there, friend."


@pytest.mark.parametrize("db", [False, True])
async def test_a_streamed_run_whose_model_fails_is_an_error(tmp_path: Path, db: bool) -> None:
    """As without streaming: not a completed run whose content is the error's text."""
    sessions = session_db(f"sqlite:///{tmp_path / 'sessions.db'}") if db else None
    rt = runtime({"gpt": [RuntimeError("provider down")] * 2}, db=sessions)
    await rt.agents.create(AgentSpec.from_dict({"id": "talker", "model": "gpt"}))
    deltas = Deltas()
    result = await rt.agents.execute("talker", "hi", session_id="s", on_delta=deltas)
    assert deltas == []  # the error is no content
    assert (result.status, result.content) == (ResponseStatus.ERROR, "")
    assert result.error_message is not None
    assert "provider down" in result.error_message


async def test_a_failing_on_delta_ends_the_run_as_a_redacted_error_and_closes_agnos_stream() -> None:
    """Like any failure of the run: an error result, not an exception out of ``execute``; agno's
    stream is closed at once (its run no longer tracked), not whenever it is garbage-collected."""
    from agno.run.cancel import get_active_runs

    secret = SecretValue("sk-on-delta-canary-0001")  # registered with the redactor
    rt = runtime({"gpt": ["Hello there, friend."]})
    await rt.agents.create(AgentSpec.from_dict({"id": "talker", "model": "gpt"}))

    async def on_delta(delta: str) -> None:
        raise RuntimeError(f"platform refused the edit with {secret.reveal()}")

    result = await rt.agents.execute("talker", "hi", session_id="s", on_delta=on_delta)
    assert (result.status, result.content) == (ResponseStatus.ERROR, "")
    assert result.error_message is not None
    assert "platform refused the edit" in result.error_message
    assert secret.reveal() not in result.error_message
    assert result.run_id is not None
    assert result.run_id not in get_active_runs()


@pytest.mark.parametrize("kind", [TargetType.AGENT, TargetType.WORKFLOW])
async def test_tools_receive_the_request_id_to_deduplicate_side_effects(kind: TargetType) -> None:
    seen: list[str] = []

    def charge_card(run_context: RunContext, amount: int) -> str:
        """Charge once per request, whatever the retries."""
        seen.append(str((run_context.metadata or {}).get("request_id")))
        return "charged"

    rt = runtime({"gpt": [ToolCall("charge_card", {"amount": 5}), "done"]})
    rt.registry.tool(charge_card)
    await rt.agents.create(AgentSpec.from_dict({"id": "cashier", "model": "gpt", "tools": ["charge_card"]}))
    await rt.workflows.create(  # a workflow's steps get it too
        WorkflowSpec.from_dict({"id": "checkout", "steps": [{"type": "agent", "agent": "cashier"}]})
    )
    target = Target(type=kind, id="cashier" if kind is TargetType.AGENT else "checkout")
    request = AgentRequestEvent(source="rest", source_id="c", user_id="u", content="pay")
    result = await AgnoExecutor(rt).execute(target, request)
    assert result.status == ResponseStatus.COMPLETED, result
    assert seen == [request.id], rt.models.models["gpt"].calls  # type: ignore[attr-defined]


async def test_a_cancelled_run_is_stored_with_its_partial_output() -> None:
    from agno.db.in_memory import InMemoryDb

    async def lookup(query: str) -> str:
        """A tool that takes a moment."""
        await asyncio.sleep(0.3)
        return f"found {query}"

    rt = runtime(
        {"gpt": [ToolCall("lookup", {"query": "tides"}), "never used", "the second answer"]}, db=InMemoryDb()
    )
    rt.registry.add_tool(lookup)
    await rt.agents.create(
        AgentSpec.from_dict({"id": "a", "model": "gpt", "tools": ["lookup"], "add_history_to_context": True})
    )
    first = asyncio.create_task(rt.agents.execute("a", "first question", session_id="s"))
    await asyncio.sleep(0.1)  # the tool is running
    first.cancel()  # an interrupt, or a cancellation request
    with pytest.raises(asyncio.CancelledError):
        await first
    result = await rt.agents.execute("a", "second question", session_id="s")
    assert result.content == "the second answer"
    session = rt.db.get_session(session_id="agent:a:s", session_type="agent")
    cancelled, completed = session.runs
    assert str(cancelled.status.value) == "CANCELLED"
    kept = [m.content for m in cancelled.messages or []]
    assert kept[0] == "first question"
    assert "found tides" in kept  # the work done before the cancellation is in the session
    assert str(completed.status.value) == "COMPLETED"
    # agno leaves cancelled runs out of the history; the runtime hands the interrupted turn over
    second_call = rt.models.models["gpt"].calls[-1].messages  # type: ignore[attr-defined]
    context = " ".join(str(m["content"]) for m in second_call if m["role"] == "user")
    assert "first question" in context
    assert "never used" in context  # the partial reply of the interrupted run


async def test_the_interrupted_turn_is_read_from_a_sync_session_db_off_the_event_loop() -> None:
    """agno's InMemoryDb and SqliteDb are synchronous: read on the loop, they block every other
    run. The db's first read (the runtime's, before agno's run) waits for a callback the loop runs:
    on the loop it could only time out."""
    from agno.db.in_memory import InMemoryDb

    loop = asyncio.get_running_loop()

    class LoopWatchingDb(InMemoryDb):
        def __init__(self) -> None:
            super().__init__()
            self.loop_ran_during_first_read: bool | None = None

        def get_session(self, *args: Any, **kwargs: Any) -> Any:
            if self.loop_ran_during_first_read is None:
                loop_ran = threading.Event()
                loop.call_soon_threadsafe(loop_ran.set)
                # A deadline, not a sleep: set at once unless this blocks the loop.
                self.loop_ran_during_first_read = loop_ran.wait(timeout=10)
            return super().get_session(*args, **kwargs)

    db = LoopWatchingDb()
    rt = runtime({"gpt": ["an answer"]}, db=db)
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt"}))
    async with asyncio.timeout(60):
        result = await rt.agents.execute("a", "hi", session_id="s")
    assert result.status == ResponseStatus.COMPLETED
    assert db.loop_ran_during_first_read is True


async def test_a_workflow_past_its_timeout_runs_no_further_steps() -> None:
    ran: list[str] = []

    async def slow_step(step_input: Any) -> str:
        await asyncio.sleep(0.3)
        ran.append("slow")
        return "slow done"

    def charge_step(step_input: Any) -> str:
        ran.append("charge")
        return "charged"

    rt = runtime({"gpt": []})
    rt.registry.function("slow_step", slow_step)
    rt.registry.function("charge_step", charge_step)
    await rt.workflows.create(
        WorkflowSpec.from_dict(
            {
                "id": "pay",
                "steps": [
                    {"type": "function", "function": "slow_step"},
                    {"type": "function", "function": "charge_step"},
                ],
            }
        )
    )
    result = await rt.workflows.execute("pay", "go", session_id="late", timeout=0.1)
    assert result.status == ResponseStatus.TIMEOUT
    # agno is asked to cancel the workflow's run: it stops before the next step, within cancel_grace
    assert ran == ["slow"]


async def test_toolkit_parameters_the_factory_does_not_take_are_refused_at_load() -> None:
    rt = runtime({"gpt": ["unused"]})
    rt.registry.toolkit("search", lambda max_results=5: get_weather)
    spec = {"id": "a", "model": "gpt", "tools": [{"name": "search", "parameters": {"max_result": 3}}]}
    with pytest.raises(SpecValidationError) as caught:
        await rt.agents.create(AgentSpec.from_dict(spec))
    assert caught.value.path == "tools[0].parameters"
    assert "'max_result'" in str(caught.value)
    assert "max_results" in str(caught.value)  # what it takes


async def test_a_team_streams_its_own_reply_not_its_members_work() -> None:
    leader = [
        ToolCall("delegate_task_to_member", {"member_id": "researcher", "task": "facts please"}),
        "Leader: the sky is blue.",
    ]
    rt = AgentRuntime(
        InMemorySpecStore(),
        registry(),
        ScriptedModels({"leader": leader, "member": ["Researcher: internal notes."]}, chunk_size=5),
    )
    _RUNTIMES.append(rt)
    await rt.agents.create(AgentSpec.from_dict({"id": "researcher", "model": "member"}))
    await rt.teams.create(TeamSpec.from_dict({"id": "crew", "members": ["researcher"], "model": "leader"}))
    deltas = Deltas()
    result = await rt.teams.execute("crew", "What colour is the sky?", session_id="s", on_delta=deltas)
    assert result.status == ResponseStatus.COMPLETED
    assert result.content == "Leader: the sky is blue."
    assert "".join(deltas) == result.content


async def test_a_spec_deleted_and_created_again_elsewhere_is_used_within_the_bound(tmp_path: Path) -> None:
    # the new spec starts again at version 1: the version alone cannot tell it from the cached one
    url = f"sqlite:///{tmp_path / 'specs.db'}"
    now = [0.0]
    reader = clocked_runtime(url, now)
    writer = runtime({"gpt": []}, store=SqlSpecStore.from_url(url))
    await writer.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt", "instructions": "old bot"}))
    await reader.agents.execute("bot", "hi", session_id="x")
    assert await writer.agents.delete("bot")
    await writer.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt", "instructions": "new bot"}))
    now[0] += 5  # the staleness bound has passed
    await reader.agents.execute("bot", "hi", session_id="x")
    systems = system_prompts(reader)
    assert "old bot" in systems[0]
    assert "new bot" in systems[-1]


@pytest.mark.parametrize("data", ["bm90IGJhc2U2NA", "not base64!", "aGk-_w==", "aGVsbG8é"])
async def test_an_attachment_that_is_not_base64_is_an_error_naming_it(data: str) -> None:
    rt = runtime({"gpt": ["unused"]})
    await rt.agents.create(AgentSpec.from_dict({"id": "eyes", "model": "gpt"}))
    request = AgentRequestEvent(
        source="rest",
        source_id="c",
        user_id="u",
        content="what is this?",
        attachments=[
            {"kind": "image", "url": "https://cdn.example/a.png"},
            {"kind": "image", "data_base64": data},
        ],
    )
    with pytest.raises(EventValidationError, match=r"attachments\[1\]\.data_base64: not valid base64"):
        await AgnoExecutor(rt).execute(Target(type=TargetType.AGENT, id="eyes"), request)
    assert rt.models.models["gpt"].calls == []  # type: ignore[attr-defined]


async def test_a_spec_this_runtime_creates_is_used_at_once_even_over_a_cached_one(tmp_path: Path) -> None:
    # Deleted elsewhere while cached here, then created here: this runtime's own write is used at
    # once, as its own update is, not after the staleness bound.
    url = f"sqlite:///{tmp_path / 'specs.db'}"
    now = [0.0]
    here = clocked_runtime(url, now)
    elsewhere = runtime({"gpt": []}, store=SqlSpecStore.from_url(url))
    await here.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt", "instructions": "old bot"}))
    await here.agents.execute("bot", "hi", session_id="x")
    assert await elsewhere.agents.delete("bot")
    await here.agents.create(AgentSpec.from_dict({"id": "bot", "model": "gpt", "instructions": "new bot"}))
    await here.agents.execute("bot", "hi", session_id="x")  # the clock has not moved
    systems = system_prompts(here)
    assert "old bot" in systems[0]
    assert "new bot" in systems[-1]


@pytest.mark.parametrize("change", ["disable", "delete"])
async def test_a_cached_team_or_workflow_with_a_member_gone_names_it_as_a_fresh_load_does(
    change: str,
) -> None:
    # The error must not depend on whether the team was cached: without the cache, validation
    # names the member's path; with it, the member's own lookup used to surface ("no agent 'b'",
    # a SpecNotFoundError the REST API answers 404, as if the team were missing).
    rt = runtime({"gpt": ["fine"] * 4})
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt"}))
    await rt.agents.create(AgentSpec.from_dict({"id": "b", "model": "gpt"}))
    await rt.teams.create(TeamSpec.from_dict({"id": "crew", "model": "gpt", "members": ["a", "b"]}))
    steps = [{"type": "agent", "agent": "a"}, {"type": "agent", "agent": "b"}]
    await rt.workflows.create(WorkflowSpec.from_dict({"id": "flow", "steps": steps}))
    assert (await rt.teams.execute("crew", "hi", session_id="s")).ok
    assert (await rt.workflows.execute("flow", "hi", session_id="s")).ok
    if change == "disable":
        b = await rt.agents.get("b")
        await rt.agents.update(b.model_copy(update={"status": SpecStatus.DISABLED}), expected_version=1)
        detail = "agent 'b' is disabled"
    else:
        assert await rt.agents.delete("b")
        detail = "unknown agent 'b'"
    with pytest.raises(SpecValidationError) as in_team:
        await rt.teams.execute("crew", "hi", session_id="s")
    assert (in_team.value.spec, in_team.value.path, in_team.value.detail) == (
        "team 'crew'",
        "members[1]",
        detail,
    )
    with pytest.raises(SpecValidationError) as in_workflow:
        await rt.workflows.execute("flow", "hi", session_id="s")
    assert (in_workflow.value.spec, in_workflow.value.path) == ("workflow 'flow'", "steps[1].agent")
    assert in_workflow.value.detail == detail


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_staleness", -1.0),
        ("max_staleness", float("nan")),
        ("max_staleness", "5"),
        ("cancel_grace", -1.0),
        ("cancel_grace", float("nan")),
        ("cancel_grace", float("inf")),
    ],
)
def test_runtime_settings_out_of_range_are_configuration_errors(setting: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{setting} must be .* got {re.escape(repr(value))}$"):
        AgentRuntime(InMemorySpecStore(), registry(), ScriptedModels({}), **{setting: value})


def test_runtime_settings_at_their_bounds_are_accepted() -> None:
    runtime = AgentRuntime(
        InMemorySpecStore(), registry(), ScriptedModels({}), max_staleness=math.inf, cancel_grace=0
    )
    assert (runtime.max_staleness, runtime.cancel_grace) == (math.inf, 0)
    assert (
        AgentRuntime(InMemorySpecStore(), registry(), ScriptedModels({}), max_staleness=0).max_staleness == 0
    )


@pytest.mark.parametrize("timeout", ["5", float("nan"), -1.0, 0, True])
async def test_a_bad_run_timeout_is_a_configuration_error_before_anything_runs(timeout: Any) -> None:
    """A timeout that was not a number of seconds > 0 raised a bare TypeError ("5") after the run
    had started, which went on in the background; NaN and negatives ran and were reported as
    "timed out after nans"."""
    ran: list[str] = []

    def record(query: str) -> str:
        """Records that the run reached its tool."""
        ran.append(query)
        return "recorded"

    tools = registry()
    tools.tool(record)
    rt = AgentRuntime(
        InMemorySpecStore(), tools, ScriptedModels({"gpt": [ToolCall("record", {"query": "q"}), "done"]})
    )
    _RUNTIMES.append(rt)
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt", "tools": ["record"]}))
    with pytest.raises(ConfigurationError, match=rf"^timeout must be .* got {re.escape(repr(timeout))}$"):
        await rt.agents.execute("a", "hi", session_id="s", timeout=timeout)
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    await asyncio.gather(*tasks, return_exceptions=True)  # a run started in the background ends
    assert ran == []
    assert rt.models.models["gpt"].calls == []  # type: ignore[attr-defined]


async def test_a_run_whose_tool_ignores_being_cancelled_does_not_hold_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After ``cancel_grace`` the run is cancelled outright; a tool that catches the cancellation
    and goes on held the request past its timeout until the run ended on its own (never, for this
    one), and its session with it."""
    release, ended = asyncio.Event(), asyncio.Event()

    async def stubborn(query: str) -> str:
        """A tool that retries whatever happens, cancellations too."""
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()
        ended.set()
        return "finally"

    rt = AgentRuntime(
        InMemorySpecStore(),
        registry(),
        ScriptedModels({"gpt": [ToolCall("stubborn", {"query": "q"}), "done"]}),
        cancel_grace=0.1,
    )
    _RUNTIMES.append(rt)
    rt.registry.add_tool(stubborn)
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt", "tools": ["stubborn"]}))
    try:
        async with asyncio.timeout(60):  # the test's own bound: without the fix, it never returns
            result = await rt.agents.execute("a", "hi", session_id="s", timeout=0.5)
        assert not ended.is_set()  # answered while the tool still went on
    finally:
        release.set()  # the run ends: nothing left behind for the loop's teardown
    assert result.status == ResponseStatus.TIMEOUT
    assert "did not stop when cancelled" in caplog.text
    await ended.wait()


async def test_a_run_cancelled_again_while_it_is_being_stopped_is_cancelled_outright(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second cancellation (a shutdown cancelling its tasks again, a caller's own deadline) that
    came while the runtime waited ``cancel_grace`` for agno to stop the run ended the wait and left
    the run going on in the background, its tool still working, with nobody to stop it."""
    started, tool_cancelled, stopping = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def wait_forever(query: str) -> str:
        """A tool that never returns and never reaches one of agno's checkpoints."""
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            tool_cancelled.set()
            raise
        raise AssertionError("unreachable")

    rt = AgentRuntime(
        InMemorySpecStore(),
        registry(),
        ScriptedModels({"gpt": [ToolCall("wait_forever", {"query": "q"}), "never used"]}),
        cancel_grace=3600,
    )
    _RUNTIMES.append(rt)
    rt.registry.add_tool(wait_forever)
    stop_run = rt._stop_run

    async def signalled_stop_run(inner: asyncio.Task[Any], run_id: str) -> None:
        stopping.set()
        await stop_run(inner, run_id)

    monkeypatch.setattr(rt, "_stop_run", signalled_stop_run)
    await rt.agents.create(AgentSpec.from_dict({"id": "a", "model": "gpt", "tools": ["wait_forever"]}))
    running = asyncio.create_task(rt.agents.execute("a", "hi", session_id="s"))
    await started.wait()
    running.cancel()
    await stopping.wait()
    running.cancel()  # while the runtime waits for agno to stop the run
    with pytest.raises(asyncio.CancelledError):
        await running
    async with asyncio.timeout(30):  # expiring here: the run was left going on
        await tool_cancelled.wait()
