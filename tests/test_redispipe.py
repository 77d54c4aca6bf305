"""The hot path's pipelined Redis connection (vaxline/redispipe.py), against a real Redis.

Covers: many commands in flight on one connection each get their own reply, in order, and the commands
of one turn of the event loop go out in one write; a Redis error
fails its own command only; the script is loaded again after SCRIPT FLUSH (as after a Redis restart);
a killed connection fails what was in flight with a ConnectionError and the next call reconnects; a
command that times out fails with a TimeoutError and does not leave later replies mismatched.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from vaxline.redispipe import RedisPipe, _encode

SCRIPT = "return {KEYS[1], ARGV[1]}"


async def test_replies_match_their_commands_however_many_are_in_flight(settings, redis):
    pipe = RedisPipe(settings.redis_url)
    key = f"{settings.stream_prefix}:pipe"
    try:
        replies = await asyncio.gather(*(pipe.call(b"INCRBY", key, n) for n in range(1, 201)))
        assert sorted(replies) == sorted(set(replies)) and replies[-1] <= 200 * 201 // 2
        assert int(await redis.get(key)) == 200 * 201 // 2
        echoed = await asyncio.gather(*(pipe.call(b"ECHO", f"n{n}") for n in range(300)))
        assert echoed == [f"n{n}".encode() for n in range(300)]
        with pytest.raises(ResponseError):
            await pipe.call(b"INCRBY", key, b"not a number")
        assert await pipe.call(b"ECHO", b"after") == b"after"  # the error was its command's alone
    finally:
        await pipe.close()


async def test_the_commands_of_one_turn_of_the_loop_go_out_in_one_write(settings, redis):
    pipe = RedisPipe(settings.redis_url)
    try:
        await pipe.evalsha(SCRIPT, ["k"], ["v"])  # connected, the script loaded
        transport = pipe._protocol.transport
        writes = []
        original = transport.write
        transport.write = lambda data: (writes.append(data), original(data))[1]
        replies = await asyncio.gather(*(pipe.call(b"ECHO", f"n{n}") for n in range(50)),
                                       pipe.evalsha(SCRIPT, ["k"], ["v"]))
        assert replies == [f"n{n}".encode() for n in range(50)] + [[b"k", b"v"]]
        assert len(writes) == 1 and writes[0].count(b"ECHO") == 50
    finally:
        await pipe.close()


async def test_the_script_is_loaded_again_after_a_flush(settings, redis):
    pipe = RedisPipe(settings.redis_url)
    try:
        assert await pipe.evalsha(SCRIPT, ["k"], ["v"]) == [b"k", b"v"]
        await redis.script_flush()  # as a restarted Redis has forgotten it
        assert await pipe.evalsha(SCRIPT, ["k2"], ["v2"]) == [b"k2", b"v2"]
    finally:
        await pipe.close()


async def test_a_killed_connection_fails_what_was_in_flight_and_the_next_call_reconnects(settings, redis):
    pipe = RedisPipe(settings.redis_url)
    try:
        name = f"{settings.stream_prefix}-pipe"
        await pipe.call(b"CLIENT", b"SETNAME", name)
        blocked = asyncio.ensure_future(pipe.call(b"BLPOP", f"{settings.stream_prefix}:nothing", 5))
        await asyncio.sleep(0)  # written before the kill
        clients = [c for c in await redis.client_list() if c.get("name") == name]
        assert clients, "the pipe's connection is listed"
        await redis.client_kill_filter(_id=clients[0]["id"])
        with pytest.raises(ConnectionError):
            await blocked
        assert await pipe.call(b"PING") == b"PONG"  # a new connection
    finally:
        await pipe.close()


async def test_a_timeout_closes_the_connection_so_no_reply_lands_on_the_wrong_command(settings):
    pipe = RedisPipe(settings.redis_url, timeout=0.3)
    try:
        slow = asyncio.ensure_future(pipe.call(b"BLPOP", f"{settings.stream_prefix}:nothing", 2))
        behind = asyncio.ensure_future(pipe.call(b"ECHO", b"behind"))
        with pytest.raises(TimeoutError):
            await slow
        with pytest.raises((ConnectionError, TimeoutError)):  # queued behind the one that timed out
            await behind
        assert await pipe.call(b"ECHO", b"fresh") == b"fresh"
    finally:
        await pipe.close()


def test_commands_are_encoded_as_resp_bulk_strings():
    assert _encode((b"SET", "k", 12)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert _encode(("é",)) == "*1\r\n$2\r\né\r\n".encode()
