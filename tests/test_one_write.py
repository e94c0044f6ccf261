"""Issue 14: a response's head and body leave in one write, and a head alone is never held back."""

from __future__ import annotations

import asyncio
from typing import cast

from service.http.protocol import OneWrite
from tests.support import RecordingTransport


class Cycle:
    response_started = False


def one_write() -> tuple[OneWrite, RecordingTransport, Cycle]:
    transport, cycle = RecordingTransport(), Cycle()
    return OneWrite(cast(asyncio.Transport, transport), cycle, asyncio.get_running_loop()), transport, cycle


def test_the_head_and_the_body_go_out_in_one_write() -> None:
    async def scenario() -> list[bytes]:
        writer, transport, cycle = one_write()
        cycle.response_started = True
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writer.write(b"{}")
        await asyncio.sleep(0)
        return transport.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\n\r\n{}"]


def test_a_head_without_a_body_goes_out_at_the_end_of_the_loop_step() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        writer, transport, cycle = one_write()
        cycle.response_started = True
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        before = list(transport.writes)
        await asyncio.sleep(0)
        return before, transport.writes

    assert asyncio.run(scenario()) == ([], [b"HTTP/1.1 200 OK\r\n\r\n"])


def test_a_100_continue_is_not_held() -> None:
    async def scenario() -> list[bytes]:
        writer, transport, _ = one_write()
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response starts
        return transport.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_closing_writes_a_held_head_first() -> None:
    async def scenario() -> tuple[list[bytes], bool]:
        writer, transport, cycle = one_write()
        cycle.response_started = True
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
        writer.close()
        return transport.writes, transport.closed

    assert asyncio.run(scenario()) == ([b"HTTP/1.1 500 Internal Server Error\r\n\r\n"], True)
