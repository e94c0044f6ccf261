"""The pipelined Redis connection, against real redis-server processes."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.scripts import GET_COUNTERS, ScriptCall
from service.transports.connection import PipelinedConnection, _pack
from service.transports.pipelined import PipelinedTransport
from tests.support import RedisServer, free_port


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and reads, but never answers: a stalled Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port: int = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def _batches_written(url: str, calls: int, max_batch: int) -> tuple[list[Any], list[int]]:
    """`calls` ECHOs started in one tick: their replies, and the size of each write."""
    batches: list[int] = []

    async def scenario() -> list[Any]:
        connection = PipelinedConnection(url, timeout=2.0, max_batch=max_batch, on_flush=batches.append)
        await connection.execute("PING")  # connected
        batches.clear()
        replies = await asyncio.gather(*(connection.execute("ECHO", str(n)) for n in range(calls)))
        connection.close()
        return replies

    return asyncio.run(scenario()), batches


def test_commands_of_one_tick_go_out_in_one_write(redis_server: RedisServer) -> None:
    replies, batches = _batches_written(redis_server.url, calls=30, max_batch=32)
    assert replies == [str(n).encode() for n in range(30)]
    assert batches == [30]


def test_a_batch_is_written_once_it_holds_max_batch_commands(redis_server: RedisServer) -> None:
    replies, batches = _batches_written(redis_server.url, calls=200, max_batch=64)
    assert replies == [str(n).encode() for n in range(200)]
    assert batches == [64, 64, 64, 8]


def test_a_tick_that_fills_whole_batches_schedules_no_empty_write(redis_server: RedisServer) -> None:
    replies, batches = _batches_written(redis_server.url, calls=64, max_batch=32)
    assert replies == [str(n).encode() for n in range(64)]
    assert batches == [32, 32]


def test_replies_and_errors_resolve_their_own_calls_in_order(redis_server: RedisServer) -> None:
    async def scenario() -> list[Any]:
        connection = PipelinedConnection(redis_server.url, timeout=2.0)
        calls = [
            connection.execute("SET", "pipelined:x", "1"),
            connection.execute("HGET", "pipelined:x", "f"),  # WRONGTYPE
            connection.execute("GET", "pipelined:x"),
            connection.execute("NOSUCHCOMMAND"),
            connection.execute("INCR", "pipelined:x"),
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        connection.close()
        return results

    ok, wrongtype, value, unknown, incremented = asyncio.run(scenario())
    assert ok == b"OK"
    assert isinstance(wrongtype, ResponseError)
    assert "WRONGTYPE" in str(wrongtype)
    assert value == b"1"
    assert isinstance(unknown, ResponseError)
    assert incremented == 2


def test_a_flushed_script_cache_is_reloaded_without_failing_the_call(redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).script_flush()

    async def scenario() -> Any:
        transport = PipelinedTransport(redis_server.url, timeout=2.0, max_pending=100)
        call = ScriptCall(GET_COUNTERS, ["{pipelined:g}", "{pipelined:g}"], ["0", "0"])
        reply = await transport.run_script(call)
        await transport.close()
        return reply

    assert asyncio.run(scenario()) == [0]
    assert redis.Redis.from_url(redis_server.url).script_exists(GET_COUNTERS.sha) == [True]


def test_a_stalled_redis_answers_timeout_within_the_bound(silent_server: int) -> None:
    async def scenario() -> tuple[BaseException | Any, float]:
        connection = PipelinedConnection(f"redis://127.0.0.1:{silent_server}/0", timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await asyncio.gather(connection.execute("PING"), return_exceptions=True)
        elapsed = loop.time() - started
        connection.close()
        return result[0], elapsed

    error, elapsed = asyncio.run(scenario())
    assert isinstance(error, RedisTimeoutError)
    assert 0.25 <= elapsed < 1.0


def test_every_write_of_a_stalled_redis_times_out_and_later_writes_still_wait(silent_server: int) -> None:
    async def scenario() -> tuple[list[Any], list[bool]]:
        connection = PipelinedConnection(f"redis://127.0.0.1:{silent_server}/0", timeout=0.3, max_batch=2)
        first = asyncio.gather(*(connection.execute("PING") for _ in range(5)), return_exceptions=True)
        await asyncio.sleep(0.15)
        later = [asyncio.ensure_future(connection.execute("PING")) for _ in range(2)]
        results = await first  # three writes (2, 2, 1), all past their timeout
        pending = [call.done() for call in later]  # written 0.15 s after: not yet due
        await asyncio.gather(*later, return_exceptions=True)
        connection.close()
        return results, pending

    results, pending = asyncio.run(scenario())
    assert all(isinstance(result, RedisTimeoutError) for result in results)
    assert pending == [False, False]


def test_answered_calls_are_not_kept_alive_until_their_timeout(redis_server: RedisServer) -> None:
    async def scenario() -> list[Any]:
        connection = PipelinedConnection(redis_server.url, timeout=30.0)
        await connection.execute("PING")
        futures = [connection._send(_pack(("ECHO", str(n)))) for n in range(50)]
        done, _ = await asyncio.wait(futures)
        assert len(done) == 50
        del done
        refs = [weakref.ref(future) for future in futures]
        del futures
        gc.collect()
        alive = [ref() for ref in refs]  # while the writes' 30 s timers are still pending
        connection.close()
        return alive

    assert asyncio.run(scenario()) == [None] * 50


def test_calls_past_max_pending_fail_at_once(silent_server: int) -> None:
    async def scenario() -> list[Any]:
        connection = PipelinedConnection(f"redis://127.0.0.1:{silent_server}/0", timeout=0.5, max_pending=10)
        results = await asyncio.gather(
            *(connection.execute("PING") for _ in range(15)), return_exceptions=True
        )
        connection.close()
        return results

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, RedisConnectionError)]
    timed_out = [r for r in results if isinstance(r, RedisTimeoutError)]
    assert len(refused) == 5
    assert len(timed_out) == 10


def test_a_late_reply_after_a_timeout_does_not_answer_the_next_call(own_redis: RedisServer) -> None:
    async def scenario() -> tuple[Any, Any]:
        connection = PipelinedConnection(own_redis.url, timeout=0.2)
        await connection.execute("SET", "k", "value")
        # DEBUG SLEEP stalls the server; the GET behind it times out on our side.
        sleeping = asyncio.gather(connection.execute("DEBUG", "SLEEP", "0.5"), return_exceptions=True)
        stale = asyncio.gather(connection.execute("GET", "k"), return_exceptions=True)
        first = (await sleeping)[0], (await stale)[0]
        await asyncio.sleep(0.5)  # the late replies arrive and are matched to the failed calls
        fresh = await connection.execute("ECHO", "fresh")
        connection.close()
        return first, fresh

    (sleep_result, stale_result), fresh = asyncio.run(scenario())
    assert isinstance(sleep_result, RedisTimeoutError)
    assert isinstance(stale_result, RedisTimeoutError)
    assert fresh == b"fresh"


def test_a_lost_connection_fails_calls_in_flight_and_the_next_call_reconnects(own_redis: RedisServer) -> None:
    async def scenario() -> tuple[Any, Any]:
        connection = PipelinedConnection(own_redis.url, timeout=5.0)
        await connection.execute("PING")
        in_flight = asyncio.gather(connection.execute("DEBUG", "SLEEP", "2"), return_exceptions=True)
        await asyncio.sleep(0.1)
        assert own_redis.process is not None
        own_redis.process.kill()  # Redis dies with the call in flight
        lost = (await in_flight)[0]
        own_redis.process.wait()
        own_redis.start()  # same port
        again = await connection.execute("PING")
        connection.close()
        return lost, again

    lost, again = asyncio.run(scenario())
    assert isinstance(lost, RedisConnectionError)
    assert again == b"PONG"


def test_nothing_listening_is_a_connection_error(silent_server: int) -> None:
    async def scenario() -> BaseException | Any:
        connection = PipelinedConnection(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
        result = await asyncio.gather(connection.execute("PING"), return_exceptions=True)
        return result[0]

    assert isinstance(asyncio.run(scenario()), RedisConnectionError)


@pytest.fixture
def password_redis() -> Iterator[RedisServer]:
    """A redis-server of our own that requires the password `s3cret`."""
    server = RedisServer().start()
    admin = redis.Redis(port=server.port)
    admin.config_set("requirepass", "s3cret")
    admin.close()
    yield server
    server.stop()


def test_password_and_database_from_the_url_are_used(password_redis: RedisServer) -> None:
    port = password_redis.port

    async def scenario() -> None:
        connection = PipelinedConnection(f"redis://:s3cret@127.0.0.1:{port}/2", timeout=2.0)
        await connection.execute("SET", "in-db-2", "yes")
        connection.close()

    asyncio.run(scenario())
    assert redis.Redis(port=port, password="s3cret", db=2).get("in-db-2") == b"yes"
    assert redis.Redis(port=port, password="s3cret", db=0).get("in-db-2") is None


def test_a_wrong_password_is_an_error_not_a_hang(password_redis: RedisServer) -> None:
    async def scenario() -> BaseException | Any:
        connection = PipelinedConnection(f"redis://:wrong@127.0.0.1:{password_redis.port}/0", timeout=2.0)
        result = await asyncio.gather(connection.execute("PING"), return_exceptions=True)
        connection.close()
        return result[0]

    error = asyncio.run(scenario())
    assert isinstance(error, ResponseError)
