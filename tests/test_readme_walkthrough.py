"""The README's "Calling it" walkthrough works when pasted in order on a fresh `make run`:
after the curl lines `make run` prints and a visit to the demo page (each flow on groups of
its own), its setup lines, its table's curl lines with the watch started where the README
says (after create_group, before the updates), every reply exactly as the table shows it
and the stream as the README shows it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support import make_run

ROOT: Final = Path(__file__).resolve().parent.parent
README: Final = ROOT / "README.md"
README_PORT: Final = 8080  # the port the README's lines name; the test's service is elsewhere


@dataclass(frozen=True)
class Row:
    name: str
    command: str
    reply: str


def calling_it() -> str:
    text = README.read_text()
    section = text[text.index("\n## Calling it\n") :]
    return section[: section.index("\n### Error codes\n")]


def setup_lines(port: int) -> list[str]:
    """The ```sh block that sets USERSIG, Q and API, pointed at `port`."""
    [block] = [b for b in re.findall(r"```sh\n(.*?)```", calling_it(), re.DOTALL) if "USERSIG=" in b]
    return [line.replace(f":{README_PORT}/", f":{port}/") for line in block.splitlines() if line.strip()]


def table_rows() -> list[Row]:
    rows = re.findall(r"^\| ([^|`]+) \| `(curl [^`]+)` \| `([^`]+)` \|$", calling_it(), re.MULTILINE)
    return [Row(name.strip(), command, reply) for name, command, reply in rows]


def watch_command() -> str:
    [command] = re.findall(r'`(curl -N "\$API/watch_group_counter[^`]+)`', calling_it())
    return str(command)


def documented_stream() -> str:
    [block] = [b for b in re.findall(r"```text\n(.*?)```", calling_it(), re.DOTALL) if "retry:" in b]
    return str(block)


@pytest.fixture
def make_run_port(tmp_path: Path) -> Iterator[int]:
    """`make run` on a free port, as a new user starts it; its output in make-run.log."""
    with make_run(tmp_path / "make-run.log") as port:
        yield port


def shell(line: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=30, check=False, cwd=ROOT, env=env
    )
    assert result.returncode == 0, (line, result.stderr)
    return result.stdout


def same_reply(actual: dict[str, Any], documented: dict[str, Any], row: Row) -> bool:
    if "generated" in row.name:
        # A generated GroupId is new each time: the same prefix and length as the example's.
        def shape(group_id: str) -> tuple[str, int]:
            return re.sub(r"[A-Za-z0-9]+$", "", group_id), len(group_id)

        assert shape(actual.pop("GroupId")) == shape(documented.pop("GroupId")), row
    return actual == documented


def events(stream: str) -> list[dict[str, str]]:
    found = []
    for block in stream.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "event" in fields:
            found.append(fields)
    return found


def test_the_readme_walkthrough_works_pasted_in_order_on_a_fresh_make_run(
    make_run_port: int, tmp_path: Path
) -> None:
    port = make_run_port
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"

    # What `make run` printed first: its curl lines, then the demo page, each on its groups.
    printed = [
        line for line in (tmp_path / "make-run.log").read_text().splitlines() if line.startswith("curl ")
    ]
    assert printed
    # Each flow on groups of its own: the demo page's "demo" shows only its own likes.
    printed_groups = set(re.findall(r'"GroupId":"([^"]+)"', "\n".join(printed)))
    readme_groups = set(re.findall(r'"GroupId":"([^"@]+)"', "\n".join(row.command for row in table_rows())))
    assert printed_groups, printed
    assert readme_groups
    assert not printed_groups & readme_groups
    assert "demo" not in printed_groups | readme_groups
    for line in printed:
        reply = json.loads(shell(line, env))
        assert (reply["ActionStatus"], reply["ErrorCode"]) == ("OK", 0), (line, reply)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/demo", timeout=10) as page:
        assert page.status == 200

    # The README's setup lines, in one shell, as pasted; what they set goes on to the next lines.
    lines = setup_lines(port)
    values = shell("\n".join([*lines, 'printf "%s\\n%s\\n%s\\n" "$USERSIG" "$Q" "$API"']), env).splitlines()
    env.update(zip(("USERSIG", "Q", "API"), values, strict=True))
    assert values[2] == f"http://127.0.0.1:{port}/v4/group_open_http_svc"

    rows = table_rows()
    assert [row.name for row in rows][:1] == ["create_group"]
    watch_out = tmp_path / "watch.txt"
    watch: subprocess.Popen[bytes] | None = None
    try:
        for index, row in enumerate(rows):
            reply = json.loads(shell(row.command, env))
            assert same_reply(reply, json.loads(row.reply), row), (row.name, reply, row.reply)
            if index == 0:  # after create_group, before the updates
                with watch_out.open("wb") as sink:
                    watch = subprocess.Popen(["bash", "-c", watch_command()], cwd=ROOT, env=env, stdout=sink)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and "event: snapshot" not in watch_out.read_text():
                    time.sleep(0.05)
        assert watch is not None
        watch.wait(10)  # destroyed ends the stream, and curl with it
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0

    stream = watch_out.read_text()
    assert stream.startswith("retry: 1000\n\n")
    got = events(stream)
    # A snapshot, one change per applied update (the overflow applies nothing), destroyed.
    assert [e["event"] for e in got] == ["snapshot", "change", "change", "change", "destroyed"]
    versions = [json.loads(e["data"])["Version"] for e in got]
    assert versions == [0, 1, 2, 3, 4]
    incarnation = got[1]["id"].split("-")[0]
    assert re.fullmatch(r"[0-9a-f]{8}", incarnation), got[1]["id"]
    assert [e["id"] for e in got] == ["0", *(f"{incarnation}-{v}" for v in versions[1:])]
    # The README's example: the same events, but for the incarnation (random) and the
    # changes it leaves out ("...").
    shown = events(documented_stream().replace("...\n", "\n"))
    assert documented_stream().startswith("retry: 1000\n\n")
    by_version = {json.loads(e["data"])["Version"]: e for e in got}
    for event in shown:
        real = by_version[json.loads(event["data"])["Version"]]
        assert (event["event"], event["data"]) == (real["event"], real["data"])
        assert re.sub(r"^[0-9a-f]{8}-", "", event["id"]) == re.sub(r"^[0-9a-f]{8}-", "", real["id"])
