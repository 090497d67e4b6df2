"""Quickstart: build a request as an interface would, put it on the wire, read it back, answer it.

Runs with no servers: ``pip install -e . && python examples/quickstart.py``.
"""

from __future__ import annotations

from dynamic_agents.events import (
    AgentRequestEvent,
    AgentResponseEvent,
    EventCodec,
    StreamNames,
)


def main() -> None:
    streams = StreamNames()  # "agent:requests", "agent:responses:{source}:{source_id}", …
    codec = EventCodec()

    # An interface normalises a platform message into a request.
    request = AgentRequestEvent(
        source="discord",
        source_id="123456789",
        user_id="111222333",
        user_name="ana",
        content="Olá! What is a consumer group?",
        agent_id="research-agent",
        reply_stream=streams.responses("discord", "123456789"),
        metadata={"guild_id": "987654321"},
    )

    # On Redis a stream entry holds one field, __data__, in FastStream's binary envelope.
    entry = codec.encode_entry(request, headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
    received = codec.decode_entry(entry, AgentRequestEvent)
    assert received.event == request
    print(f"{streams.requests}: {received.event.content!r} from {received.event.user_name}")
    print(f"  session {received.event.session_id}, correlation id {received.correlation_id}")

    # A worker answers on the request's reply stream.
    response = AgentResponseEvent(
        request_id=request.id,
        session_id=request.session_id,
        content="A consumer group shares a stream's entries among workers.",
        agent_id="research-agent",
        agent_name="Research Agent",
        execution_time_ms=840,
    )
    wire = codec.encode_json(response)
    answer = codec.decode_json(wire, AgentResponseEvent)
    print(f"{request.reply_stream}: {answer.content!r} ({answer.status}, {len(wire)} bytes)")


if __name__ == "__main__":
    main()
