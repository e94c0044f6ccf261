"""`ack = "replicas"` against a Redis that misbehaves around its WAIT: a fake Redis on a
free port that reports one replica (ROLE), answers the calls, and then does something
wrong with the batch's WAIT. Every call written answers as maybe run, none as done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import RedisError

from service.storage.transports.acks import Ack, AckedConnections
from service.storage.transports.faults import certainly_not_run
from service.storage.urls import parse
from tests.test_pipelined import Handler, _commands, scripted_redis

ROLE_ONE_REPLICA = b"*3\r\n$6\r\nmaster\r\n:0\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n$1\r\n0\r\n"
Reaction = Callable[[asyncio.StreamWriter], Awaitable[bool]]  # False: stop serving


def fake_redis(on_wait: Reaction) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for command in _commands(reader):
            name = command[0].upper()
            if name == b"PING":
                writer.write(b"+PONG\r\n")
            elif name == b"ROLE":
                writer.write(ROLE_ONE_REPLICA)
            elif name == b"WAIT":
                if not await on_wait(writer):
                    return
            else:
                writer.write(b":1\r\n")

    return handler


async def acked_outcomes(handler: Handler, ack: Ack) -> tuple[list[Any], float]:
    """Five calls' outcomes through `ack` on a fake Redis served by `handler`, and how long
    they took to come (not counting the fake's end)."""
    async with scripted_redis(handler) as port:
        connections = AckedConnections(
            parse(f"redis://127.0.0.1:{port}/0"), timeout=0.5, ack=ack, max_pending=100
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await asyncio.gather(
                *(connections.execute("INCR", "n") for _ in range(5)), return_exceptions=True
            )
            return results, loop.time() - started
        finally:
            connections.close()


async def timed_outcomes(on_wait: Reaction) -> tuple[list[Any], float]:
    return await acked_outcomes(fake_redis(on_wait), Ack(replicas=True, fsync=False, wait=0.2))


async def outcomes(on_wait: Reaction) -> list[Any]:
    return (await timed_outcomes(on_wait))[0]


def all_maybe(results: list[Any]) -> bool:
    return all(isinstance(r, RedisError) and not certainly_not_run(r) for r in results)


async def too_few(writer: asyncio.StreamWriter) -> bool:
    writer.write(b":0\r\n")
    return True


async def closes(writer: asyncio.StreamWriter) -> bool:
    return False


async def half_a_reply(writer: asyncio.StreamWriter) -> bool:
    writer.write(b":")
    await writer.drain()
    await asyncio.sleep(5)
    return False


async def garbage(writer: asyncio.StreamWriter) -> bool:
    writer.write(b"!!not resp\r\n")
    return True


async def enough(writer: asyncio.StreamWriter) -> bool:
    writer.write(b":1\r\n")
    return True


@pytest.mark.parametrize(
    "on_wait", [too_few, closes, half_a_reply, garbage], ids=["too-few", "closes", "half-a-reply", "garbage"]
)
def test_a_batch_whose_wait_goes_wrong_is_never_acknowledged(on_wait: Reaction) -> None:
    results = asyncio.run(outcomes(on_wait))
    assert all_maybe(results), results


def test_a_wait_that_answers_late_fails_the_batch_within_the_timeouts() -> None:
    async def late(writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(3)
        writer.write(b":1\r\n")
        return True

    results, elapsed = asyncio.run(timed_outcomes(late))
    assert all_maybe(results), results
    assert elapsed < 0.5 + 0.2 + 1.0  # redis_timeout + ack_timeout, checked once a timer fires


def test_a_batch_whose_replicas_confirm_is_answered() -> None:
    assert asyncio.run(outcomes(enough)) == [1] * 5
