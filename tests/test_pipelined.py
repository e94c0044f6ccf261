"""The pipelined Redis connection, against real redis-server processes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import socket
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import hiredis
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.storage.scripts import GET_COUNTERS, ScriptCall
from service.storage.transports.connection import PipelinedConnection
from service.storage.transports.pipelined import PipelinedTransport
from service.storage.urls import parse
from tests.support import RedisServer, free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_redis(*handlers: Handler) -> AsyncIterator[int]:
    """A fake Redis on a free port: its n-th connection is served by handlers[n] (the
    last one serves the rest). Runs in the test's own event loop."""
    connections = itertools.count()
    serving: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        serving[writer] = task
        handler = handlers[min(next(connections), len(handlers) - 1)]
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await handler(reader, writer)
        finally:
            writer.transport.abort()
            serving.pop(writer, None)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in list(serving):
            writer.transport.abort()
        await asyncio.gather(*serving.values(), return_exceptions=True)
        await server.wait_closed()


async def _commands(reader: asyncio.StreamReader) -> AsyncIterator[list[bytes]]:
    """The RESP commands a client sends, one by one."""
    parser = hiredis.Reader()
    while data := await reader.read(65536):
        parser.feed(data)
        while (command := parser.gets()) is not False:
            yield command


def pings_then(reply: bytes | None) -> Handler:
    """A fake Redis that answers every PING, and every other command with `reply`: b""
    closes the connection at it, None never answers it (a stalled Redis)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for command in _commands(reader):
            if command[0].upper() == b"PING":
                writer.write(b"+PONG\r\n")
            elif reply == b"":
                return
            elif reply is not None:
                writer.write(reply)

    return handler


async def outcomes_on_fake(
    handler: Handler,
    send: Callable[[PipelinedConnection], Awaitable[Any]],
    times: int,
    *,
    max_pending: int = 10_000,
) -> list[Any]:
    """`times` calls made at once by `send` on one live connection to a fake Redis served
    by `handler`: their outcomes, replies or exceptions."""
    async with scripted_redis(handler) as port:
        connection = PipelinedConnection(
            parse(f"redis://127.0.0.1:{port}/0"), timeout=1.0, max_pending=max_pending
        )
        await connection.execute("PING")
        try:
            return list(
                await asyncio.gather(*(send(connection) for _ in range(times)), return_exceptions=True)
            )
        finally:
            connection.close()


async def pong_then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers the connection's handshake PING, then never answers again (a dead peer)."""
    async for _ in _commands(reader):
        writer.write(b"+PONG\r\n")
        break
    await reader.read()  # until the client gives up on us


def echo_server(*, after: int = 0, then: bytes = b"") -> Handler:
    """A Redis that answers PING, ASKING and ECHO; after `after` commands it sends `then`
    instead of the reply (an error line, say) and closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        async for command in _commands(reader):
            if then and served == after:
                writer.write(then)
                await writer.drain()
                return
            served += 1
            if command[0].upper() == b"PING":
                writer.write(b"+PONG\r\n")
            elif command[0].upper() == b"ASKING":
                writer.write(b"+OK\r\n")
            else:
                writer.write(b"$%d\r\n%s\r\n" % (len(command[1]), command[1]))

    return handler


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
        transport = PipelinedTransport(parse(redis_server.url), timeout=2.0, max_pending=100)
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


def test_replies_overdue_past_the_timeout_drop_the_connection_and_the_next_call_reconnects() -> None:
    async def scenario() -> tuple[list[Any], Any, int]:
        async with scripted_redis(pong_then_silent) as port:
            connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=0.3, max_batch=2)
            first = await asyncio.gather(
                *(connection.execute("PING") for _ in range(5)), return_exceptions=True
            )
            # Those calls waited for the connect, so their deadline (from before it) falls a
            # connect's time before the link's own timer (from its write): once that fires,
            # the silent link is gone and the next call opens a new one, not queued behind.
            await asyncio.sleep(0.05)
            again = (await asyncio.gather(connection.execute("PING"), return_exceptions=True))[0]
            connection.close()
            return first, again, connection.connects

    first, again, connects = asyncio.run(scenario())
    assert all(isinstance(result, RedisTimeoutError | RedisConnectionError) for result in first)
    assert isinstance(first[0], RedisTimeoutError)
    # A new link, silent too: the call times out (or, on a machine so loaded that the
    # new link's handshake overruns, fails as a connection error), never queued behind.
    assert isinstance(again, RedisTimeoutError | RedisConnectionError)
    assert connects == 2


def test_a_dead_peer_never_fills_max_pending() -> None:
    """Calls one after another to a peer that stopped answering each time out on their
    own: none is refused because lost calls piled up on a kept socket."""

    async def scenario() -> list[Any]:
        async with scripted_redis(pong_then_silent) as port:
            connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=0.2, max_pending=3)
            results = []
            for _ in range(6):
                results += await asyncio.gather(
                    *(connection.execute("PING") for _ in range(3)), return_exceptions=True
                )
                await asyncio.sleep(0.05)  # the link's own timer fires just after the calls' deadline
            connection.close()
            return results

    results = asyncio.run(scenario())
    assert not [r for r in results if "already waiting" in str(r)]
    assert all(isinstance(r, RedisTimeoutError | RedisConnectionError) for r in results)


def test_answered_calls_are_not_kept_alive_until_their_timeout(redis_server: RedisServer) -> None:
    async def scenario() -> list[Any]:
        connection = PipelinedConnection(redis_server.url, timeout=30.0)
        await connection.execute("PING")
        futures = [asyncio.ensure_future(connection.execute("ECHO", str(n))) for n in range(50)]
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


def test_calls_past_max_pending_fail_at_once() -> None:
    async def scenario() -> list[Any]:
        async with scripted_redis(pong_then_silent) as port:
            connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=0.5, max_pending=10)
            results = await asyncio.gather(
                *(connection.execute("PING") for _ in range(15)), return_exceptions=True
            )
            connection.close()
            return results

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, RedisConnectionError) and "already waiting" in str(r)]
    timed_out = [r for r in results if isinstance(r, RedisTimeoutError)]
    assert len(refused) == 5
    assert len(timed_out) == 10


def test_asking_calls_past_max_pending_fail_at_once() -> None:
    """ASKING and its command (a Cluster slot half migrated) wait in the same queue as
    every other call, so the same bound refuses them."""

    async def scenario() -> list[Any]:
        async with scripted_redis(echo_server()) as port:
            connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=1.0, max_pending=10)
            await connection.execute("PING")  # a live link: the calls below queue on it in one tick
            results = await asyncio.gather(
                *(connection.execute("ECHO", f"plain-{n}") for n in range(6)),
                *(connection.execute_asking("ECHO", f"asking-{n}") for n in range(6)),
                return_exceptions=True,
            )
            connection.close()
            return results

    results = asyncio.run(scenario())
    # Six calls wait, and each ASKING pair adds two: the third pair finds ten waiting.
    assert results[:8] == [*(f"plain-{n}".encode() for n in range(6)), b"asking-0", b"asking-1"]
    refused = results[8:]
    assert all(isinstance(r, RedisConnectionError) and "already waiting" in str(r) for r in refused), refused


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


def test_a_retired_connection_answers_the_calls_already_made_then_closes(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[list[Any], Any, bool, bool, int]:
        connection = PipelinedConnection(redis_server.url, timeout=5.0)
        await connection.execute("PING")
        link = connection._link
        assert link is not None
        made = [
            asyncio.ensure_future(connection.execute("DEBUG", "SLEEP", "0.2")),
            *(asyncio.ensure_future(connection.execute("ECHO", f"made-{n}")) for n in range(5)),
        ]
        await asyncio.sleep(0.05)  # written; Redis sleeps on the first
        connection.retire()
        later = (await asyncio.gather(connection.execute("ECHO", "later"), return_exceptions=True))[0]
        replies = await asyncio.gather(*made, return_exceptions=True)
        return replies, later, link.closed, connection.connected, connection.connects

    replies, later, closed, connected, connects = asyncio.run(scenario())
    assert replies == [b"OK", *(f"made-{n}".encode() for n in range(5))]
    assert isinstance(later, RedisConnectionError)
    assert "retired" in str(later)
    assert closed
    assert not connected
    assert connects == 1  # nothing reconnected


def test_a_connection_retired_while_it_connects_sends_nothing_and_keeps_no_link(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> tuple[Any, bool, int]:
        connection = PipelinedConnection(redis_server.url, timeout=2.0)
        call = asyncio.ensure_future(connection.execute("SET", "retired-while-connecting", "1"))
        await asyncio.sleep(0)  # the connect has started
        connection.retire()
        outcome = (await asyncio.gather(call, return_exceptions=True))[0]
        return outcome, connection.connected, connection.connects

    outcome, connected, connects = asyncio.run(scenario())
    assert isinstance(outcome, RedisConnectionError)
    assert "retired" in str(outcome)
    assert not connected
    assert connects == 1  # it connected, then closed the link unused
    inspector = redis.Redis.from_url(redis_server.url)
    try:
        assert inspector.get("retired-while-connecting") is None
    finally:
        inspector.close()


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


# ---- regressions: a reply never reaches another caller, whatever the server does ----


async def _echo_round(connection: PipelinedConnection, calls: int, tag: str) -> list[Any]:
    return await asyncio.gather(
        *(connection.execute("ECHO", f"{tag}-{n}") for n in range(calls)), return_exceptions=True
    )


def _assert_own_replies(results: list[Any], tag: str) -> int:
    """Every answer is the caller's own ECHO or an error; the number answered."""
    answered = 0
    for n, result in enumerate(results):
        if isinstance(result, BaseException):
            assert isinstance(result, RedisConnectionError | RedisTimeoutError), result
        else:
            assert result == f"{tag}-{n}".encode(), f"call {n} got another caller's reply: {result!r}"
            answered += 1
    return answered


def test_a_redis_that_accepts_and_answers_max_clients_shifts_no_reply() -> None:
    """Accept, `-ERR max number of clients reached`, close (twice); then a sane Redis."""
    full = echo_server(after=0, then=b"-ERR max number of clients reached\r\n")

    async def scenario() -> list[list[Any]]:
        async with scripted_redis(full, full, echo_server()) as port:
            connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=1.0)
            rounds = [await _echo_round(connection, 64, f"r{n}") for n in range(4)]
            connection.close()
            return rounds

    rounds = asyncio.run(scenario())
    for n, results in enumerate(rounds):
        _assert_own_replies(results, f"r{n}")
    assert _assert_own_replies(rounds[-1], "r3") == 64  # healed


def test_a_connection_that_drops_after_its_handshake_fails_the_waiting_calls() -> None:
    """Dropped between the connect and the waiting callers' writes: they fail at once,
    and the next calls are answered in order (once this was call-1, call-2, call-3, timeout)."""
    drops = echo_server(after=1, then=b"")

    async def drop_after_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for _ in _commands(reader):
            writer.write(b"+PONG\r\n")
            await writer.drain()
            return  # closed right after the handshake

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with scripted_redis(drop_after_pong, drops, echo_server()) as port:
            connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=1.0)
            first = await _echo_round(connection, 4, "call")
            await asyncio.sleep(0.05)
            later = [await _echo_round(connection, 4, "call") for _ in range(3)]
            connection.close()
            return first, later[-1]

    first, last = asyncio.run(scenario())
    _assert_own_replies(first, "call")
    assert _assert_own_replies(last, "call") == 4


@pytest.mark.parametrize(
    "refusal",
    [
        b"-READONLY You can't write against a read only replica.\r\n",
        b"-LOADING Redis is loading the dataset in memory\r\n",
        b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
    ],
    ids=["READONLY", "LOADING", "MASTERDOWN"],
)
def test_a_server_that_cannot_serve_is_a_connection_fault_and_the_next_call_reconnects(
    refusal: bytes,
) -> None:
    async def scenario() -> tuple[Any, Any, int]:
        async with scripted_redis(echo_server(after=1, then=refusal), echo_server()) as port:
            connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=1.0)
            refused = (await asyncio.gather(connection.execute("ECHO", "x"), return_exceptions=True))[0]
            again = await connection.execute("ECHO", "y")
            connection.close()
            return refused, again, connection.connects

    refused, again, connects = asyncio.run(scenario())
    assert isinstance(refused, RedisConnectionError)
    assert again == b"y"
    assert connects == 2


def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for command in _commands(reader):
            writer.write(b"+PONG\r\n" if command[0].upper() == b"PING" else b"+one\r\n+two\r\n")

    async def scenario() -> tuple[tuple[Any, Any], Any]:
        async with scripted_redis(chatty, echo_server()) as port:
            connection = PipelinedConnection(f"redis://127.0.0.1:{port}/0", timeout=1.0)
            first = await asyncio.gather(
                connection.execute("ECHO", "a"), connection.execute("ECHO", "b"), return_exceptions=True
            )
            again = await connection.execute("ECHO", "c")
            connection.close()
            return first, again

    first, again = asyncio.run(scenario())
    # "one" answered a, "two" answered b: then nothing is trusted, and the link is replaced.
    assert again == b"c"
    assert all(r in (b"one", b"two") or isinstance(r, RedisConnectionError) for r in first)


def test_a_percent_encoded_password_in_the_url_is_decoded(password_redis: RedisServer) -> None:
    admin = redis.Redis(port=password_redis.port, password="s3cret")
    admin.config_set("requirepass", "p@ss:w/rd")
    admin.close()

    async def scenario() -> Any:
        connection = PipelinedConnection(
            f"redis://:p%40ss%3Aw%2Frd@127.0.0.1:{password_redis.port}/0", timeout=2.0
        )
        reply = await connection.execute("PING")
        connection.close()
        return reply

    assert asyncio.run(scenario()) == b"PONG"


def test_tcp_keepalive_is_on_for_the_redis_connection(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[int, int]:
        connection = PipelinedConnection(redis_server.url, timeout=2.0)
        await connection.execute("PING")
        link = connection._link
        assert link is not None
        assert link._transport is not None
        sock = link._transport.get_extra_info("socket")
        settings = (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        )
        connection.close()
        return settings

    keepalive, idle = asyncio.run(scenario())
    assert keepalive == 1
    assert idle <= 30
