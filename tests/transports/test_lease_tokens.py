"""Lease tokens: a new one for every claim, in every process, a forked child's included."""

from __future__ import annotations

import os

from dynamic_agents.transports.base import lease_token


def test_every_token_is_new_and_ends_with_its_holder() -> None:
    tokens = [lease_token("req/1") for _ in range(10_000)]

    assert len(set(tokens)) == len(tokens)
    # the holder is what follows the first "/" (RedisCoordinator.holder reads it so), slashes and all
    assert {token.partition("/")[2] for token in tokens} == {"req/1"}


def test_a_forked_child_does_not_repeat_its_parents_tokens() -> None:
    lease_token("warm-up")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next token, to the parent, then out without pytest's teardown
        try:
            os.write(write_end, lease_token("holder").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_token = pipe.read().decode()
    os.waitpid(pid, 0)
    parent_token = lease_token("holder")  # the parent's next token: the child's, had it kept the state

    assert child_token.endswith("/holder")
    assert child_token != parent_token
