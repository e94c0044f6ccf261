"""Commands answered on their request cycle, below ASGI (service/http/direct.py).

Under `python -m service` a command's request goes from uvicorn's protocol straight to
the command endpoint, which answers on the cycle itself. The answer must be the one
ASGI would give, byte for byte but for the server's own headers; every HTTP rule the
cycle keeps (keep-alive, pipelining, 100-continue, a body in pieces, the body cap, a
client that leaves) must hold as before. The contract suite runs through this path on
every backend but the embedded store (tests/edge.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from starlette.testclient import TestClient
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from service.app import create_app
from service.config import parse_config
from service.http.direct import DirectCycle
from service.http.exchange import Exchange
from tests.backends import memory_store
from tests.edge import served
from tests.support import CONFIG, RecordingTransport, query

PREFIX = "/v4/group_open_http_svc/"
UPDATE_A = {"GroupId": "g", "Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": 1}]}


# ---- a raw HTTP/1.1 client ---------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    command: str,
    body: bytes,
    *,
    method: str = "POST",
    version: str = "1.1",
    headers: tuple[str, ...] = (),
    length: int | None = None,
) -> bytes:
    lines = [f"{method} {PREFIX}{command}?{query()} HTTP/{version}", "host: test"]
    if length is not None or "transfer-encoding: chunked" not in headers:
        lines.append(f"content-length: {len(body) if length is None else length}")
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """Answers off one connection, in order; `closed` once the server closed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            raise EOFError("the server closed the connection")
        self.buffer += chunk

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(status, headers, body)

    def at_end(self) -> bool:
        """The server closed the connection (after what was read)."""
        try:
            self._fill()
        except EOFError:
            return True
        return False


@pytest.fixture
def port() -> Iterator[int]:
    app = create_app(parse_config(CONFIG, environ={}), memory_store())
    with served(app) as client:
        port = client.base_url.port
        assert port is not None
        yield port


def ask(port: int, data: bytes, answers: int = 1) -> list[Answer]:
    with connect(port) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        return [reader.answer() for _ in range(answers)]


def create(port: int, group_id: str = "g") -> None:
    body = json.dumps({"Type": "Public", "Name": "n", "GroupId": group_id}).encode()
    (answer,) = ask(port, request("create_group", body))
    assert answer.json()["ErrorCode"] == 0, answer


# ---- the answer over a real connection ---------------------------------------------------

# (command, body, method, extra headers): a success, each kind of failure, another method.
CASES = [
    ("create_group", json.dumps({"Type": "Public", "Name": "n", "GroupId": "g"}).encode(), "POST", ()),
    ("update_group_counter", json.dumps(UPDATE_A).encode(), "POST", ()),
    ("get_group_counter", b'{"GroupId": "g"}', "POST", ()),
    ("update_group_counter", b"{not json", "POST", ()),
    ("update_group_counter", b'{"GroupId": "g", "GroupCounter": 5}', "POST", ()),
    ("no_such_command", b"{}", "POST", ()),
    ("get_group_counter", b'{"GroupId": "g"}', "PUT", ()),
    ("get_appid_group_list", b"", "GET", ()),
    ("update_group_counter", b"x" * 70_000, "POST", ()),
    ("update_group_counter", json.dumps(UPDATE_A).encode(), "POST", ("idempotency-key: " + "k" * 129,)),
]


def test_each_answer_is_the_one_asgi_gives_but_for_the_servers_own_headers(port: int) -> None:
    over_asgi = TestClient(create_app(parse_config(CONFIG, environ={}), memory_store()))
    with over_asgi:
        for number, (command, body, method, extra) in enumerate(CASES):
            request_id = f"case-{number}"
            headers = {"x-request-id": request_id}
            headers.update(line.split(": ", 1) for line in extra)  # type: ignore[misc]
            expected = over_asgi.request(
                method, f"{PREFIX}{command}?{query()}", content=body, headers=headers
            )
            (direct,) = ask(
                port, request(command, body, method=method, headers=(f"x-request-id: {request_id}", *extra))
            )
            assert direct.status == expected.status_code, (command, direct)
            assert direct.body == expected.content, (command, method)
            for name in ("content-type", "content-length", "x-request-id"):
                assert direct.headers[name] == expected.headers[name], (command, name)
            # The server's own headers, as uvicorn gives every answer.
            assert direct.headers["server"] == "uvicorn"
            assert "date" in direct.headers
            assert "connection" not in direct.headers  # kept alive


def test_pipelined_commands_are_answered_in_order_each_with_its_own_answer(port: int) -> None:
    create(port)
    calls = [
        request("update_group_counter", json.dumps(UPDATE_A).encode(), headers=(f"x-request-id: p{i}",))
        for i in range(20)
    ]
    answers = ask(port, b"".join(calls), answers=20)
    assert [answer.headers["x-request-id"] for answer in answers] == [f"p{i}" for i in range(20)]
    assert [answer.json()["GroupCounter"][0]["Value"] for answer in answers] == list(range(1, 21))


def test_an_http_1_0_request_is_answered_with_connection_close_and_closed(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request("get_group_counter", b'{"GroupId": "g"}', version="1.0"))
        reader = Reader(sock)
        answer = reader.answer()
        assert answer.json()["ErrorCode"] == 10010  # no such group: an answer all the same
        assert answer.headers["connection"] == "close"
        assert reader.at_end()


def test_a_request_that_asks_for_close_is_answered_and_closed(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request("get_group_counter", b'{"GroupId": "g"}', headers=("connection: close",)))
        reader = Reader(sock)
        assert reader.answer().headers["connection"] == "close"
        assert reader.at_end()


def test_a_kept_alive_connection_takes_call_after_call(port: int) -> None:
    create(port)
    with connect(port) as sock:
        reader = Reader(sock)
        for value in range(1, 6):
            sock.sendall(request("update_group_counter", json.dumps(UPDATE_A).encode()))
            assert reader.answer().json()["GroupCounter"] == [{"Key": "a", "Value": value}]


def test_expect_100_continue_is_answered_before_the_body_is_sent(port: int) -> None:
    create(port)
    body = json.dumps(UPDATE_A).encode()
    with connect(port) as sock:
        head, _ = request("update_group_counter", body, headers=("expect: 100-continue",)).split(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        reader = Reader(sock)
        interim = reader.answer()
        assert interim.status == 100
        sock.sendall(body)
        assert reader.answer().json()["GroupCounter"] == [{"Key": "a", "Value": 1}]


def test_a_body_that_arrives_in_slow_pieces_is_read_whole(port: int) -> None:
    create(port)
    body = json.dumps(UPDATE_A).encode()
    data = request("update_group_counter", body)
    with connect(port) as sock:
        head_end = data.index(b"\r\n\r\n") + 4
        sock.sendall(data[:head_end])
        for offset in range(head_end, len(data), 7):
            time.sleep(0.02)
            sock.sendall(data[offset : offset + 7])
        assert Reader(sock).answer().json()["GroupCounter"] == [{"Key": "a", "Value": 1}]


def test_a_chunked_body_over_the_cap_is_refused_with_413_and_changes_nothing(port: int) -> None:
    create(port)
    chunk = b"x" * 8192
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    data = request("update_group_counter", chunks, headers=("transfer-encoding: chunked",))
    with connect(port) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        answer = reader.answer()
        assert answer.status == 413
        assert answer.json()["ErrorCode"] == 60003
        # The connection stays usable after the rest of that body.
        sock.sendall(request("get_group_counter", b'{"GroupId": "g"}'))
        assert reader.answer().json()["GroupCounter"] == []


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_sent(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request("update_group_counter", b"", length=10_000_000))
        answer = Reader(sock).answer()
        assert answer.status == 413
        assert answer.json()["ErrorCode"] == 60003


def test_a_client_that_leaves_mid_body_changes_nothing_and_the_server_serves_on(port: int) -> None:
    create(port)
    data = request("update_group_counter", json.dumps(UPDATE_A).encode())
    with connect(port) as sock:
        sock.sendall(data[:-5])
    time.sleep(0.1)
    (answer,) = ask(port, request("get_group_counter", b'{"GroupId": "g"}'))
    assert answer.json()["GroupCounter"] == []


def test_head_on_a_command_path_is_answered_over_asgi_without_a_body(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request("get_group_counter", b"", method="HEAD"))
        reader = Reader(sock)
        while b"\r\n\r\n" not in reader.buffer:
            reader._fill()
        head, rest = reader.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        assert rest == b""  # no body follows a HEAD's answer


# ---- the cycle on its own ----------------------------------------------------------------


class Flow:
    write_paused = False

    def resume_reading(self) -> None:
        pass


def cycle_of(handler: Any, *, keep_alive: bool = True) -> tuple[DirectCycle, RecordingTransport, list[str]]:
    transport, responded = RecordingTransport(), []
    cycle = DirectCycle(
        handler,
        {"type": "http", "path": PREFIX + "x", "method": "POST", "headers": []},
        cast(asyncio.Transport, transport),
        cast(FlowControl, Flow()),
        logging.getLogger("test"),
        [(b"server", b"uvicorn")],
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: responded.append("done"),
    )
    cycle.more_body = False
    return cycle, transport, responded


def test_the_answer_is_one_write_of_head_and_body_and_ends_the_request() -> None:
    async def handler(scope: Any, exchange: Exchange) -> None:
        await exchange.reply(200, await exchange.read_body(100) or b"{}", b"id-1")

    async def scenario() -> tuple[list[bytes], list[str], bool]:
        cycle, transport, responded = cycle_of(handler)
        await cycle.run_asgi(None)
        return transport.writes, responded, cycle.response_complete

    writes, responded, complete = asyncio.run(scenario())
    assert writes == [
        b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\nx-request-id: id-1\r\n\r\n{}"
    ]
    assert responded == ["done"]
    assert complete


def test_an_answer_without_keep_alive_says_connection_close_and_closes() -> None:
    async def handler(scope: Any, exchange: Exchange) -> None:
        await exchange.reply(200, b"{}", b"id-1")

    async def scenario() -> tuple[list[bytes], bool]:
        cycle, transport, _ = cycle_of(handler, keep_alive=False)
        await cycle.run_asgi(None)
        return transport.writes, transport.closed

    writes, closed = asyncio.run(scenario())
    assert b"\r\nconnection: close\r\n" in writes[0]
    assert closed


def test_a_call_cut_off_before_its_answer_answers_10002_maybe_applied_and_closes() -> None:
    async def handler(scope: Any, exchange: Exchange) -> None:
        await asyncio.sleep(3600)  # a call still running at the end of the graceful timeout

    async def scenario() -> tuple[list[bytes], bool]:
        cycle, transport, _ = cycle_of(handler)
        task = asyncio.ensure_future(cycle.run_asgi(None))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return transport.writes, transport.closed

    (write,), closed = asyncio.run(scenario())
    head, body = write.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in head
    reply = json.loads(body)
    assert (reply["ErrorCode"], reply["Applied"], reply["ActionStatus"]) == (10002, "maybe", "FAIL")
    assert closed


def test_a_handler_that_ends_without_answering_answers_10002() -> None:
    async def handler(scope: Any, exchange: Exchange) -> None:
        return None

    async def scenario() -> list[bytes]:
        cycle, transport, _ = cycle_of(handler)
        await cycle.run_asgi(None)
        return transport.writes

    (write,) = asyncio.run(scenario())
    assert json.loads(write.split(b"\r\n\r\n")[1])["ErrorCode"] == 10002


def test_nothing_is_written_to_a_client_that_left() -> None:
    async def handler(scope: Any, exchange: Exchange) -> None:
        await exchange.reply(200, b"{}", b"id-1")

    async def scenario() -> list[bytes]:
        cycle, transport, _ = cycle_of(handler)
        cycle.disconnected = True
        await cycle.run_asgi(None)
        return transport.writes

    assert asyncio.run(scenario()) == []


def test_a_direct_cycle_is_uvicorns_request_cycle_with_every_attribute_of_one() -> None:
    """So the protocol's pipeline, disconnect and shutdown handling apply to it unchanged
    (a uvicorn that adds an attribute to its cycle fails this, not a call in production)."""
    assert issubclass(DirectCycle, RequestResponseCycle)

    async def handler(scope: Any, exchange: Exchange) -> None:
        pass

    async def make() -> tuple[set[str], set[str]]:
        direct, _, _ = cycle_of(handler)
        uvicorns = RequestResponseCycle(
            scope=cast(Any, {}),
            transport=cast(asyncio.Transport, RecordingTransport()),
            flow=cast(FlowControl, Flow()),
            logger=logging.getLogger("test"),
            access_logger=logging.getLogger("test"),
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
        return set(vars(direct)), set(vars(uvicorns))

    direct, uvicorns = asyncio.run(make())
    assert uvicorns <= direct, uvicorns - direct


def test_gone_returns_once_the_client_has_left_and_not_before() -> None:
    """What a walking command (get_appid_group_list) waits on to stop its walk: a wake-up
    of the cycle that is not a disconnect (the end of the body) does not end it."""

    async def handler(scope: Any, exchange: Exchange) -> None:
        pass

    async def scenario() -> tuple[bool, bool]:
        cycle, _, _ = cycle_of(handler)
        gone = asyncio.ensure_future(cycle.gone())
        cycle.message_event.set()  # as on_message_complete does
        await asyncio.sleep(0.01)
        early = gone.done()
        cycle.disconnected = True  # as connection_lost does
        cycle.message_event.set()
        await asyncio.wait_for(gone, 1.0)
        return early, gone.done()

    assert asyncio.run(scenario()) == (False, True)


def test_nothing_is_written_on_a_transport_already_closing() -> None:
    """uvloop closes a reset connection's transport before the protocol hears of it: the
    answer, and the cut-off answer, are dropped rather than raised on a closed transport."""

    async def answers(scope: Any, exchange: Exchange) -> None:
        await exchange.reply(200, b"{}", b"id-1")

    async def hangs(scope: Any, exchange: Exchange) -> None:
        await asyncio.sleep(3600)

    async def scenario() -> list[list[bytes]]:
        written = []
        for handler in (answers, hangs):
            cycle, transport, _ = cycle_of(handler)
            transport.closed = True
            task = asyncio.ensure_future(cycle.run_asgi(None))
            await asyncio.sleep(0)
            task.cancel()
            await task  # run_asgi ends without raising
            written.append(transport.writes)
        return written

    assert asyncio.run(scenario()) == [[], []]


def test_commands_take_the_direct_path_and_every_other_request_asgi(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct: list[str] = []
    run = DirectCycle.run_asgi

    async def noting(self: DirectCycle, app: Any) -> None:
        direct.append(f"{self.request['method']} {self.request['path']}")
        await run(self, app)

    monkeypatch.setattr(DirectCycle, "run_asgi", noting)
    ask(port, request("get_group_counter", b'{"GroupId": "g"}'))
    ask(port, request("get_appid_group_list", b"", method="GET"))
    test_head_on_a_command_path_is_answered_over_asgi_without_a_body(port)
    ask(port, b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
    with connect(port) as sock:  # a watch stream: its answer starts, and it stays open
        target = f"{PREFIX}watch_group_counter?{query()}&GroupId=g"
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        assert Reader(sock).answer().status == 200
    assert direct == [f"POST {PREFIX}get_group_counter", f"GET {PREFIX}get_appid_group_list"]
