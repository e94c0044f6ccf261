"""Issue 11, point 6: log lines cannot be forged, and a client's long field is cut."""

from __future__ import annotations

import json
import logging
import sys
from typing import Final, Literal

import pytest

from service.ops.logs import JsonFormatter, TextFormatter
from tests.support import Api, access_lines

FORGED: Final = "g\n2026-01-01 00:00:00,000 INFO service.access: call request_id=forged error_code=0"


def access_line(api: Api, group_id: str, fmt: Literal["json", "text"]) -> str:
    with access_lines(fmt) as lines:
        api.call("get_group_counter", {"GroupId": group_id})
        (line,) = lines()
    return line


def test_text_format_escapes_a_newline_in_a_group_id(api: Api) -> None:
    line = access_line(api, FORGED, "text")
    assert "group_id=g\\x0a2026-01-01" in line


@pytest.mark.parametrize("char", ["\r", "\x00", "\x1b", "\x85", "\u2028", "\u2029"])
def test_text_format_escapes_every_control_character(char: str) -> None:
    record = logging.LogRecord("service", logging.INFO, __file__, 1, "bad %s", (f"a{char}b",), None)
    record.group_id = f"x{char}y"
    line = TextFormatter().format(record)
    assert char not in line
    assert line.count("\\") == 2


def test_text_format_escapes_a_backslash_so_an_escape_is_unambiguous() -> None:
    record = logging.LogRecord("service", logging.INFO, __file__, 1, "m", None, None)
    record.group_id = "a\\x0ab"
    assert "group_id=a\\\\x0ab" in TextFormatter().format(record)


def test_text_format_marks_every_line_of_a_traceback() -> None:
    try:
        raise ValueError("first\nERROR forged line")
    except ValueError:
        record = logging.LogRecord("service", logging.ERROR, __file__, 1, "fault", None, sys.exc_info())
    first, *rest = TextFormatter().format(record).splitlines()
    assert first.endswith("fault")
    assert rest
    assert all(line.startswith("| ") for line in rest), rest


def test_json_format_keeps_a_newline_inside_its_string(api: Api) -> None:
    line = access_line(api, FORGED, "json")
    assert json.loads(line)["group_id"] == FORGED


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_long_invalid_group_id_is_cut_with_a_marker(api: Api, fmt: Literal["json", "text"]) -> None:
    line = access_line(api, "G" * 60_000, fmt)
    assert len(line) < 1000
    assert "more chars]" in line


def test_a_long_message_is_cut_with_a_marker() -> None:
    record = logging.LogRecord("service", logging.INFO, __file__, 1, "%s", ("m" * 100_000,), None)
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert len(line) < 3000
        assert "more chars]" in line
