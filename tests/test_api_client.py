"""``AgentsHTTPClient`` on its own, through ``httpx.MockTransport``: it needs only the core install
(httpx), so ``bash .ci/lowest`` runs these at the httpx floor, where FastAPI is not installed (the
tests against the real router, in tests/api, run at the newer httpx the agents extra brings)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from typing import Any

import httpx
import pytest

from dynamic_agents.api import AgentsHTTPClient
from dynamic_agents.api import client as client_module
from dynamic_agents.exceptions import ApiError, ApiUnavailableError, ConfigurationError, DynamicAgentsError

TOKEN = "canary-token-4f1e"
SPEC = {"id": "bot", "model": "gpt", "instructions": "be brief"}
RESULT = {"status": "completed", "content": "hello", "run_id": "r1"}

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A fake API: records each request (method, raw path, headers, JSON body, read timeout) and
    answers with what ``answer`` returns for it."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.timeouts: list[dict[str, float | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.timeouts.append(dict(request.extensions["timeout"]))
        return self.answer(request)

    def client(self, base_url: str = "http://api.test", **options: Any) -> AgentsHTTPClient:
        return AgentsHTTPClient(base_url, transport=httpx.MockTransport(self), **options)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


async def test_each_call_sends_its_method_path_token_and_body() -> None:
    answers = {
        ("POST", "/api/v1/agents"): httpx.Response(201, json={**SPEC, "version": 1}),
        ("GET", "/api/v1/agents/bot"): httpx.Response(200, json={**SPEC, "version": 1}),
        ("POST", "/api/v1/agents/bot/execute"): httpx.Response(200, json=RESULT),
        ("POST", "/api/v1/requests/r1/cancel"): httpx.Response(202),
    }
    api = Recorder(lambda request: answers[request.method, request.url.raw_path.decode()])
    async with api.client(token=TOKEN) as client:
        assert await client.create("agents", SPEC) == {**SPEC, "version": 1}
        assert await client.get("agents", "bot") == {**SPEC, "version": 1}
        assert await client.execute("agents", "bot", "hi", session_id="s1") == RESULT
        assert await client.cancel("r1") is None  # a 202 with no body
    assert [(r.method, r.url.raw_path.decode()) for r in api.requests] == list(answers)
    assert {r.headers["authorization"] for r in api.requests} == {f"Bearer {TOKEN}"}
    assert body(api.requests[0]) == SPEC
    assert body(api.requests[2]) == {"input": "hi", "session_id": "s1", "user_id": None}
    assert "idempotency-key" not in api.requests[2].headers
    assert api.requests[3].content == b""


async def test_without_a_token_no_authorization_header_is_sent() -> None:
    api = Recorder(lambda request: httpx.Response(200, json=SPEC))
    async with api.client() as client:
        await client.get("agents", "bot")
    assert "authorization" not in api.requests[0].headers


@pytest.mark.parametrize(
    ("base_url", "path"),
    [
        ("http://api.test", "/api/v1/agents/bot"),
        ("http://api.test/", "/api/v1/agents/bot"),
        ("http://api.test/agents-service", "/agents-service/api/v1/agents/bot"),
        ("http://api.test/agents-service/", "/agents-service/api/v1/agents/bot"),
    ],
)
async def test_the_base_url_path_prefixes_every_call(base_url: str, path: str) -> None:
    """The API mounted under a prefix (behind a gateway) is reached there, slash or not."""
    api = Recorder(lambda request: httpx.Response(200, json=SPEC))
    async with api.client(base_url) as client:
        await client.get("agents", "bot")
    assert api.requests[0].url.raw_path.decode() == path


@pytest.mark.parametrize(
    ("request_id", "path"),
    [
        ("r?1", "/api/v1/requests/r%3F1/cancel"),
        ("r#1", "/api/v1/requests/r%231/cancel"),
        ("team/r1", "/api/v1/requests/team%2Fr1/cancel"),
        ("50%off", "/api/v1/requests/50%25off/cancel"),
        ("r%3F1", "/api/v1/requests/r%253F1/cancel"),
        ("r+1", "/api/v1/requests/r%2B1/cancel"),
        ("r 1", "/api/v1/requests/r%201/cancel"),
        (".", "/api/v1/requests/%2E/cancel"),  # a dot segment, which httpx resolves when sent as is:
        ("..", "/api/v1/requests/%2E%2E/cancel"),  # POST /api/v1/requests/cancel, /api/v1/cancel
    ],
)
async def test_an_id_is_escaped_whole_into_one_path_segment(request_id: str, path: str) -> None:
    """``?``, ``#``, ``/`` and ``%`` in an id reach the API as part of it: the raw path on the wire
    holds the id in one segment, and no query or fragment."""
    api = Recorder(lambda request: httpx.Response(202))
    async with api.client() as client:
        await client.cancel(request_id)
    sent = api.requests[0].url
    assert (sent.raw_path.decode(), sent.query, sent.fragment) == (path, b"", "")


async def test_execute_sends_every_option_and_extends_only_the_read_timeout() -> None:
    api = Recorder(lambda request: httpx.Response(200, json=RESULT))
    async with api.client(timeout=120) as client:
        await client.execute("agents", "bot", "hi", session_id="s0")
        await client.execute(
            "teams",
            "crew",
            "hi",
            session_id="s1",
            user_id="u7",
            session_state={"plan": "pro"},
            timeout=600,
            idempotency_key="order-42",
        )
        await client.execute("agents", "bot", "hi", session_id="s2", timeout=60)  # within 120 s
        # shorter than the client's, but not by the 30 s margin: extended too (docs/api.md)
        await client.execute("agents", "bot", "hi", session_id="s3", timeout=100)
    plain, full, short, near = api.requests
    assert body(full) == {
        "input": "hi",
        "session_id": "s1",
        "user_id": "u7",
        "session_state": {"plan": "pro"},
        "timeout": 600,
    }
    assert full.url.raw_path == b"/api/v1/teams/crew/execute"
    assert full.headers["idempotency-key"] == "order-42"
    assert body(short)["timeout"] == 60
    assert [t["read"] for t in api.timeouts] == [120.0, 630.0, 120.0, 130.0]  # the run's and 30 s more
    assert body(near)["timeout"] == 100
    assert {(t["connect"], t["write"], t["pool"]) for t in api.timeouts} == {(120.0, 120.0, 120.0)}
    assert "session_state" not in body(plain)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_stream_yields_the_server_sent_events_across_chunk_boundaries() -> None:
    """An event's lines may arrive split anywhere, even mid-line and between ``\\r`` and ``\\n``."""
    wire = (
        b'event: delta\r\ndata: {"content": "hel"}\r\n\r\n'
        b'event: delta\ndata: {"content": "lo"}\n\n'
        b": a comment line, ignored\n\n"
        b'event: result\ndata: {"status": "completed", "content": "hello"}\n\n'
    )
    cuts = [0, 5, 14, 15, 40, 41, 80, len(wire)]
    parts = [wire[start:end] for start, end in pairwise(cuts)]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_chunks(*parts))

    api = Recorder(answer)
    async with api.client(token=TOKEN) as client:
        events = [
            event
            async for event in client.stream(
                "agents", "bot", "hi", session_id="s1", user_id="u7", timeout=600, idempotency_key="k"
            )
        ]
    assert events == [
        ("delta", {"content": "hel"}),
        ("delta", {"content": "lo"}),
        ("result", {"status": "completed", "content": "hello"}),
    ]
    sent = api.requests[0]
    assert body(sent) == {"input": "hi", "session_id": "s1", "user_id": "u7", "timeout": 600, "stream": True}
    assert sent.headers["idempotency-key"] == "k"
    assert api.timeouts[0]["read"] == 630.0


async def test_stream_raises_api_error_before_any_event() -> None:
    api = Recorder(lambda request: httpx.Response(404, json={"detail": "no agent 'ghost'"}))
    async with api.client() as client:
        with pytest.raises(ApiError) as missing:
            _ = [event async for event in client.stream("agents", "ghost", "hi", session_id="s1")]
    assert (missing.value.status, missing.value.detail) == (404, "no agent 'ghost'")


class _Cut(httpx.AsyncByteStream):
    """An event stream the network cuts after its first event."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'event: delta\ndata: {"content": "hel"}\n\n'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "could not be reached (ConnectError"),
        (httpx.ReadTimeout("timed out"), "did not answer in time (ReadTimeout"),
    ],
)
async def test_the_network_failing_is_an_api_unavailable_error(
    error: httpx.TransportError, said: str
) -> None:
    """httpx's own exceptions came through: an ``except DynamicAgentsError`` (or ``ConnectionError``
    for a timeout) around a call missed an API that is down."""

    def down(request: httpx.Request) -> httpx.Response:
        raise error

    async with Recorder(down).client(token=TOKEN) as client:
        calls = [
            client.execute("agents", "bot", "hi", session_id="s1"),
            client.create("agents", {"id": "bot"}),
            client.get("agents", "bot"),
            client.cancel("r1"),
            anext(aiter(client.stream("agents", "bot", "hi", session_id="s1"))),
        ]
        for call in calls:
            with pytest.raises(ApiUnavailableError) as caught:
                await call
            assert isinstance(caught.value, ConnectionError)
            assert isinstance(caught.value, DynamicAgentsError)
            assert said in str(caught.value)
            assert "http://api.test" in str(caught.value)
            assert TOKEN not in str(caught.value)


async def test_a_stream_the_network_cuts_is_an_api_unavailable_error() -> None:
    api = Recorder(
        lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Cut())
    )
    async with api.client() as client:
        events = aiter(client.stream("agents", "bot", "hi", session_id="s1"))
        assert await anext(events) == ("delta", {"content": "hel"})
        with pytest.raises(ApiUnavailableError, match=r"could not be reached \(RemoteProtocolError"):
            await anext(events)


async def test_an_error_status_is_an_api_error_with_the_detail() -> None:
    detail = [{"loc": ["body", "session_id"], "msg": "Field required", "type": "missing"}]
    answers = iter(
        [
            httpx.Response(404, json={"detail": "no agent 'ghost'"}),
            httpx.Response(422, json={"detail": detail}),
            httpx.Response(409, json={"detail": "agent 'bot' exists"}),
        ]
    )
    api = Recorder(lambda request: next(answers))
    async with api.client() as client:
        with pytest.raises(ApiError) as missing:
            await client.execute("agents", "ghost", "hi", session_id="s1")
        with pytest.raises(ApiError) as invalid:
            await client.execute("agents", "bot", "hi", session_id="")
        with pytest.raises(ApiError) as conflict:
            await client.create("agents", SPEC)
    assert (missing.value.status, missing.value.detail) == (404, "no agent 'ghost'")
    assert str(missing.value) == "the agents API answered 404: no agent 'ghost'"
    assert isinstance(missing.value, DynamicAgentsError)
    assert isinstance(missing.value, client_module.ApiError)  # the old import path still works
    assert (invalid.value.status, invalid.value.detail) == (422, detail)
    assert (conflict.value.status, conflict.value.detail) == (409, "agent 'bot' exists")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'["upstream", "timed out"]', ["upstream", "timed out"]),
        (b'"upstream timed out"', "upstream timed out"),
        (b'{"error": "upstream timed out"}', {"error": "upstream timed out"}),
        (b"<html>bad gateway</html>", "Bad Gateway"),
        (b"", "Bad Gateway"),
    ],
)
async def test_the_client_raises_api_error_for_any_error_body(body: bytes, detail: Any) -> None:
    """A gateway in front of the API answers in its own shape: still an ``ApiError`` with what it said."""
    gateway = httpx.MockTransport(lambda request: httpx.Response(502, content=body))
    async with AgentsHTTPClient("http://api.test", token=TOKEN, transport=gateway) as api:
        with pytest.raises(ApiError) as failed:
            await api.get("agents", "bot")
        with pytest.raises(ApiError) as streamed:
            async for _ in api.stream("agents", "bot", "hi", session_id="s1"):
                pass
    assert (failed.value.status, failed.value.detail) == (502, detail)
    assert (streamed.value.status, streamed.value.detail) == (502, detail)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_an_api_error_naming_where_it_points_not_an_empty_answer(status: int) -> None:
    """An ``http://`` base URL whose server sends every request to ``https://``: httpx does not
    follow redirects (the token stays with the host it was given for), and the client took the
    redirect for the answer: ``create``, ``get`` and ``execute`` returned ``None``, ``cancel``
    cancelled nothing and ``stream`` yielded no event, all without a word."""

    def redirect(request: httpx.Request) -> httpx.Response:
        target = str(request.url.copy_with(scheme="https", query=b"sig=canary-sig-4f1e"))
        return httpx.Response(status, headers={"Location": target})

    api = Recorder(redirect)
    calls = {
        "create": lambda client: client.create("agents", SPEC),
        "get": lambda client: client.get("agents", "bot"),
        "execute": lambda client: client.execute("agents", "bot", "hi", session_id="s1"),
        "cancel": lambda client: client.cancel("r1"),
    }
    async with api.client(token=TOKEN) as client:
        for name, call in calls.items():
            with pytest.raises(ApiError) as redirected:
                await call(client)
            assert redirected.value.status == status, name
        with pytest.raises(ApiError) as streamed:
            _ = [event async for event in client.stream("agents", "bot", "hi", session_id="s1")]
    reason = httpx.codes.get_reason_phrase(status)
    assert redirected.value.detail == f"{reason} to https://api.test/api/v1/requests/r1/cancel?sig=**********"
    assert streamed.value.detail == f"{reason} to https://api.test/api/v1/agents/bot/execute?sig=**********"
    assert "canary-sig" not in str(streamed.value)
    assert len(api.requests) == 5  # none followed


@pytest.mark.parametrize(
    ("content_type", "wire", "detail"),
    [
        (
            "text/html",
            b"<html>the web app's own page</html>",
            "the answer ended without a result event (text/html, not an event stream)",
        ),
        (
            "text/event-stream",
            b'event: delta\ndata: {"content": "hel"}\n\n',
            "the answer ended without a result event",
        ),
    ],
)
async def test_a_stream_that_ends_without_a_result_is_an_api_error(
    content_type: str, wire: bytes, detail: str
) -> None:
    """A base URL that reaches a web app serving its page on every path (a 200), or a stream cut
    short: ``stream`` ended as if the run had, with no result and no error to say otherwise."""
    answer = httpx.Response(200, headers={"content-type": content_type}, content=wire)
    api = Recorder(lambda request: answer)
    async with api.client() as client:
        events = client.stream("agents", "bot", "hi", session_id="s1")
        if content_type == "text/event-stream":  # the deltas that came are still given
            assert await anext(events) == ("delta", {"content": "hel"})
        with pytest.raises(ApiError) as unfinished:
            await anext(events)
    assert (unfinished.value.status, unfinished.value.detail) == (200, detail)


async def _errors_of_the_object_calls(api: Recorder) -> list[ApiError]:
    """The ``ApiError`` each of ``create``, ``get`` and ``execute`` raises (each must raise one)."""
    errors = []
    async with api.client() as client:
        calls = [
            client.create("agents", SPEC),
            client.get("agents", "bot"),
            client.execute("agents", "bot", "hi", session_id="s1"),
        ]
        for call in calls:
            with pytest.raises(ApiError) as failed:
                await call
            errors.append(failed.value)
    return errors


async def test_a_success_that_is_no_json_is_an_api_error() -> None:
    """A base URL that reaches a web app serving its page on every path: the calls raised a bare
    ``JSONDecodeError`` (``Expecting value: line 1 column 1``), which an ``except ApiError`` misses."""
    page = httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>the app</html>")
    api = Recorder(lambda request: page)
    for failed in await _errors_of_the_object_calls(api):
        assert (failed.status, failed.detail) == (200, "the answer is no JSON (text/html)")


DEEP = b"[" * 100_000 + b"]" * 100_000
"""JSON nested deeper than ``json.loads`` can read: a ``RecursionError``, no ``ValueError``."""


@pytest.mark.parametrize(
    ("status", "wire", "detail"),
    [
        (200, DEEP, "the answer's JSON is nested too deeply"),
        (502, DEEP, "Bad Gateway"),  # as an error body that is no JSON: its reason phrase
    ],
)
async def test_an_answer_nested_too_deeply_is_an_api_error(status: int, wire: bytes, detail: str) -> None:
    """It escaped as a bare ``RecursionError``, which an ``except ApiError`` misses."""
    answer = httpx.Response(status, headers={"content-type": "application/json"}, content=wire)
    async with Recorder(lambda request: answer).client() as client:
        with pytest.raises(ApiError) as failed:
            await client.get("agents", "bot")
    assert (failed.value.status, failed.value.detail) == (status, detail)


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"<html>not json</html>", "an event's data is no JSON (event 'delta')"),
        (DEEP, "an event's data is nested too deeply (event 'delta')"),
        (b'["hel"]', "an event's data is no JSON object (event 'delta', a list)"),
    ],
)
async def test_a_stream_event_whose_data_is_no_json_is_an_api_error(data: bytes, detail: str) -> None:
    """A proxy mangling the stream, or a server that is not the API: ``stream`` raised a bare
    ``JSONDecodeError`` (or ``RecursionError``), which an ``except ApiError`` misses."""
    wire = b'event: delta\ndata: {"content": "hel"}\n\nevent: delta\ndata: ' + data + b"\n\n"
    answer = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=wire)
    async with Recorder(lambda request: answer).client() as client:
        events = client.stream("agents", "bot", "hi", session_id="s1")
        assert await anext(events) == ("delta", {"content": "hel"})
        with pytest.raises(ApiError) as failed:
            await anext(events)
    assert (failed.value.status, failed.value.detail) == (200, detail)


async def test_an_error_body_quoting_the_token_is_masked() -> None:
    """A gateway's 401 that echoes what it was sent: the ``ApiError`` (its text logged by whoever
    catches it) carried the client's bearer token in clear."""
    token = "echoed-token-7c2d9e"
    bodies = iter(
        [
            {"detail": f"token {token} is not valid"},
            {"error": {"headers": {"authorization": [f"Bearer {token}"]}}},  # no detail: the whole body
        ]
    )
    api = Recorder(lambda request: httpx.Response(401, json=next(bodies)))
    async with api.client(token=token) as client:
        with pytest.raises(ApiError) as detailed:
            await client.get("agents", "bot")
        with pytest.raises(ApiError) as whole:
            _ = [event async for event in client.stream("agents", "bot", "hi", session_id="s1")]
    assert detailed.value.detail == "token ********** is not valid"
    assert whole.value.detail == {"error": {"headers": {"authorization": ["Bearer **********"]}}}
    assert token not in str(detailed.value) + str(whole.value)


@pytest.mark.parametrize(
    ("answer", "kind"), [(b"[]", "a list"), (b'"ok"', "a str"), (b"null", "null"), (b"", "no body")]
)
async def test_a_success_that_is_no_json_object_is_an_api_error(answer: bytes, kind: str) -> None:
    """Another JSON API at the base URL: ``create``, ``get`` and ``execute`` returned its list or
    string as the spec or result they are typed to return (a ``dict``), and the caller's
    ``result["content"]`` failed with a bare ``TypeError``."""
    json_type = {"content-type": "application/json"}
    api = Recorder(lambda request: httpx.Response(200, headers=json_type, content=answer))
    for failed in await _errors_of_the_object_calls(api):
        assert (failed.status, failed.detail) == (200, f"the answer is no JSON object ({kind})")


async def test_a_stream_ending_with_an_error_event_raises_nothing() -> None:
    wire = b'event: error\ndata: {"detail": "the run failed (RuntimeError)", "status": 500}\n\n'
    answer = httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8"}, content=wire)
    async with Recorder(lambda request: answer).client() as client:
        events = [event async for event in client.stream("agents", "bot", "hi", session_id="s1")]
    assert events == [("error", {"detail": "the run failed (RuntimeError)", "status": 500})]


async def test_the_token_stays_out_of_the_repr() -> None:
    async with AgentsHTTPClient("http://api.test/base/", token=TOKEN) as client:
        assert repr(client) == "AgentsHTTPClient('http://api.test/base/')"
        assert TOKEN not in repr(client)


@pytest.mark.parametrize(
    ("url", "refusal"),
    [  # httpx sent them as Basic auth in place of the token, or put the API's paths in the query
        (
            "https://svc:url-canary-91c2@api.test",
            r"^base_url 'https://svc:\*{10}@api.test' holds credentials",
        ),
        ("https://api.test/v1?api_key=q-canary-5d0e", r"^base_url '.*api_key=\*{10}' has a query string"),
    ],
)
def test_a_base_url_with_credentials_or_a_query_is_refused_masked(url: str, refusal: str) -> None:
    with pytest.raises(ConfigurationError, match=refusal) as refused:
        AgentsHTTPClient(url, token=TOKEN)
    assert "canary" not in str(refused.value)


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"base_url": None}, r"^base_url must be an http\(s\) URL .*, got None$"),
        ({"base_url": "api.test"}, r"^base_url must be an http\(s\) URL .*, got 'api.test'$"),
        ({"base_url": "ftp://api.test"}, r"^base_url must be an http\(s\) URL"),
        ({"base_url": "http://api.test:port"}, r"^base_url must be an http\(s\) URL"),
        ({"base_url": "http://api.test/\n"}, r"^base_url must be an http\(s\) URL"),
        ({"token": 12345}, r"^token must be a str \(the API's bearer token\) or None, got 12345$"),
        ({"token": "   "}, r"^token must be a str .*, got '   '"),
        ({"token": f"{TOKEN}\n"}, r"^token must be a str .*, got \*{10}$"),
        ({"timeout": "5"}, r"^timeout must be a finite number of seconds > 0 \(or None\), got "),
        ({"timeout": 0}, r"^timeout must be a finite number of seconds > 0 \(or None\), got "),
    ],
)
def test_bad_options_are_refused_naming_them(options: dict[str, Any], refusal: str) -> None:
    # each failed late (None with a bare AttributeError, a port or a newline at the first call) or
    # was taken (a token of spaces sent as "Bearer    ", a newline refused by httpx per request)
    arguments: dict[str, Any] = {"base_url": "http://api.test", **options}
    with pytest.raises(ConfigurationError, match=refusal) as refused:
        AgentsHTTPClient(arguments.pop("base_url"), **arguments)
    assert TOKEN not in str(refused.value)


@pytest.mark.parametrize("token", [f"{TOKEN}-\u00e9", f"{TOKEN} {TOKEN}"])
def test_a_token_that_cannot_go_in_a_header_is_refused_masked(token: str) -> None:
    # Non-ASCII failed in httpx's header encoding with a bare UnicodeEncodeError holding
    # "Bearer <token>" in clear in its args (its repr, an error reporter's capture); a space was
    # sent as "Bearer a b", which no server takes (the Identity client refuses both already)
    with pytest.raises(ConfigurationError, match=r"^token must be a str .*, got \*{10}$") as refused:
        AgentsHTTPClient("http://api.test", token=token)
    assert TOKEN not in repr(refused.value)
    assert refused.value.__context__ is None


async def test_leaving_the_block_closes_the_http_client() -> None:
    api = Recorder(lambda request: httpx.Response(200, json=SPEC))
    async with api.client() as client:
        await client.get("agents", "bot")
    with pytest.raises(RuntimeError, match="closed"):
        await client.get("agents", "bot")
