"""Hostile input for the commands that move counters (issue 25, points 4 and 5), as data:
import files that a decoder chokes on, and migration sources that lie.

`tests/hostile.py` attacks a serving process from its clients; these attack a command
instead, from its input file or from the API it pulls from, so they live here with the
same two uses: `tests/test_hostile_moving.py` asserts on them, and run as a module each
replays against the real command line and prints what it cost:

    .venv/bin/python -m tests.hostile_moving ATTACK     # e.g. import-invalid-utf8, migrate-drip
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tests.support import CONFIG, REGISTERED_APP, REPO, RedisServer

HOST: Final = "127.0.0.1"
SECRET: Final = "secret-of-the-hostile-source"


# ---- import: lines ------------------------------------------------------------------------


def group_line(group_id: str, counters: dict[str, Any] | None = None, **extra: Any) -> bytes:
    body = {
        "SdkAppId": REGISTERED_APP,
        "GroupId": group_id,
        "Type": "Public",
        "GroupCounter": [{"Key": key, "Value": value} for key, value in (counters or {}).items()],
        **extra,
    }
    return json.dumps(body).encode() + b"\n"


def good_lines(count: int, prefix: str = "good") -> bytes:
    return b"".join(group_line(f"{prefix}-{i}", {"like": i}) for i in range(count))


def invalid_utf8_line() -> bytes:
    return b'{"SdkAppId":%d,"GroupId":"\xff\xfe","Type":"Public","GroupCounter":[]}\n' % REGISTERED_APP


def deep_line(depth: int = 5000) -> bytes:
    """A valid group line with an extra field nested `depth` deep (skipped values recurse)."""
    return group_line("deep").replace(b"}\n", b', "X": ' + b"[" * depth + b"]" * depth + b"}\n")


def long_line(size: int = 1 << 20) -> bytes:
    return group_line("x" * size)


def duplicate_key_lines() -> bytes:
    """SdkAppId twice (the second an app that does not exist), and a Value twice."""
    sdkappid = (
        b'{"SdkAppId":%d,"SdkAppId":1,"GroupId":"dup-app","Type":"Public","GroupCounter":[]}\n'
        % REGISTERED_APP
    )
    value = (
        b'{"SdkAppId":%d,"GroupId":"dup-value","Type":"Public",'
        b'"GroupCounter":[{"Key":"a","Value":1,"Value":2}]}\n' % REGISTERED_APP
    )
    return sdkappid + value


def empty_objects(count: int) -> bytes:
    return b"{}\n" * count


IMPORT_ATTACKS: Final[dict[str, Callable[[], bytes]]] = {
    "import-invalid-utf8": lambda: invalid_utf8_line() + good_lines(1000),
    "import-deep-nesting": lambda: deep_line() + good_lines(1000),
    "import-long-line": lambda: long_line(100 << 20) + good_lines(1000),
    "import-duplicate-keys": lambda: duplicate_key_lines() + good_lines(10),
    "import-many-rejects": lambda: empty_objects(5_000_000),
}


# ---- migrate: a lying source --------------------------------------------------------------


@dataclass
class Lies:
    """What a fake platform answers: `pages` (GroupType -> its listing replies, given in
    turn, round and round), `counters` (GroupId -> its get_group_counter reply), and a
    drip (seconds between two bytes of a reply; 0 sends it at once). A type without pages
    lists no groups, with `total` as its TotalCount (every reply gives the same one)."""

    pages: dict[str, list[bytes]] = field(default_factory=dict)
    total: int = 0
    counters: dict[str, bytes] = field(default_factory=dict)
    drip: float = 0.0
    served: dict[str, int] = field(default_factory=dict)

    def reply(self, command: str, body: dict[str, Any]) -> bytes:
        if command == "get_appid_group_list":
            group_type = str(body.get("GroupType"))
            pages = self.pages.get(group_type) or [listing([], total=self.total)]
            turn = self.served.get(group_type, 0)
            self.served[group_type] = turn + 1
            return pages[turn % len(pages)]
        return self.counters.get(str(body.get("GroupId")), b'{"ErrorCode":10010,"ErrorInfo":"gone"}')


def listing(group_ids: list[str], *, total: int, next_value: Any = 0) -> bytes:
    return json.dumps(
        {
            "ErrorCode": 0,
            "ErrorInfo": "",
            "TotalCount": total,
            "GroupIdList": [{"GroupId": group_id} for group_id in group_ids],
            "Next": next_value,
        }
    ).encode()


def counters(items: str) -> bytes:
    """A get_group_counter reply with `items` as its GroupCounter, verbatim JSON text."""
    return b'{"ErrorCode":0,"ErrorInfo":"","GroupCounter":' + items.encode() + b"}"


class _Handler(BaseHTTPRequestHandler):
    lies: Lies

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        command = urlsplit(self.path).path.rsplit("/", 1)[-1]
        reply = self.lies.reply(command, body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        try:
            if self.lies.drip <= 0:
                self.wfile.write(reply)
                return
            for byte in reply:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(self.lies.drip)
        except OSError:
            pass  # the caller gave up on us

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def lying_source(lies: Lies) -> Iterator[str]:
    """A platform-compatible API on a free loopback port that answers what `lies` says;
    its base URL."""
    handler = type("Handler", (_Handler,), {"lies": lies})
    server = ThreadingHTTPServer((HOST, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def only_public(pages: list[bytes], total: int, **counter_replies: bytes) -> Lies:
    return Lies(pages={"Public": pages}, counters=dict(counter_replies), total=total)


def padding(size: int) -> bytes:
    return b'{"ErrorCode":0,"TotalCount":1,"GroupIdList":[],"Next":0,"Pad":"' + b"x" * size + b'"}'


MIGRATE_ATTACKS: Final[dict[str, Callable[[], Lies]]] = {
    # Values that are not int64 integers, and a Key that is not a string: each group skipped.
    "migrate-coerced-values": lambda: only_public(
        [listing(["float", "text", "bool", "big", "int-key", "good"], total=6)],
        6,
        float=counters('[{"Key":"a","Value":1.9}]'),
        text=counters('[{"Key":"a","Value":"12"}]'),
        bool=counters('[{"Key":"a","Value":true}]'),
        big=counters('[{"Key":"a","Value":9223372036854775808}]'),
        **{"int-key": counters('[{"Key":7,"Value":1}]')},
        good=counters('[{"Key":"a","Value":5}]'),
    ),
    # Next goes 1, 2, 1, 2, ... with TotalCount 3: the walk never ends.
    "migrate-alternating-next": lambda: only_public(
        [listing(["a", "b", "c"], total=3, next_value=n) for n in (1, 2)], 3
    ),
    # Fresh cursors for ever, a thousand groups a page, TotalCount 3.
    "migrate-endless-listing": lambda: only_public(
        [listing([f"g{page}-{i}" for i in range(1000)], total=3, next_value=page + 1) for page in range(100)],
        3,
    ),
    "migrate-next-minus-one": lambda: only_public([listing(["a"], total=1, next_value=-1)], 1),
    "migrate-next-abc": lambda: only_public([listing(["a"], total=1, next_value="abc")], 1),
    "migrate-nan-body": lambda: only_public(
        [b'{"ErrorCode":0,"TotalCount":NaN,"GroupIdList":[],"Next":0}'], 1
    ),
    "migrate-array-body": lambda: only_public([b"[]"], 1),
    # A reply a byte every 5 s: each read finds a byte, so a per-read timeout never trips.
    "migrate-drip": lambda: Lies(pages={"Public": [listing(["a"], total=1)]}, total=1, drip=5.0),
    # 5 MiB in one reply, and 3 million GroupIds in another.
    "migrate-oversized-reply": lambda: only_public([padding(5 << 20)], 1),
    "migrate-huge-listing": lambda: only_public(
        [b'{"ErrorCode":0,"TotalCount":3000000,"Next":0,"GroupIdList":[' + b"{}," * 2_999_999 + b"{}]}"],
        3_000_000,
    ),
    # A GroupId holding a newline: one line in the spool, and a resume reads it back.
    "migrate-newline-group-id": lambda: only_public(
        [listing(["a\nb", "good"], total=2)],
        2,
        **{"a\nb": counters('[{"Key":"a","Value":1}]'), "good": counters('[{"Key":"b","Value":2}]')},
    ),
}


def migrate_argv(base_url: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service",
        "migrate",
        "--from",
        base_url,
        "--sdkappid",
        str(REGISTERED_APP),
        "--identifier",
        "administrator",
        "--secret-key-env",
        "HOSTILE_SOURCE_SECRET",
        "--out",
        str(out),
        "--list-rate",
        "1000",
        "--rate",
        "1000",
        "--backoff",
        "0.01",
        *extra,
    ]


def environ() -> dict[str, str]:
    base = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    return {**base, "HOSTILE_SOURCE_SECRET": SECRET}


@dataclass
class Run:
    returncode: int
    stderr: bytes
    seconds: float
    max_rss: int  # bytes, the command's peak

    def summary(self) -> str:
        tail = self.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return (
            f"exit {self.returncode} in {self.seconds:.1f} s, peak RSS {self.max_rss / 2**20:.0f} MiB, "
            f"stderr {len(self.stderr)} bytes; it ends:\n  " + "\n  ".join(tail)
        )


def run_command(argv: list[str], *, stdin: Path | None = None, timeout: float = 600) -> Run:
    """Run one command as a process of its own; what it answered and cost (its own peak
    RSS, from wait4: not the children's maximum, which counts whatever ran before)."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(stdin.open("rb")) if stdin is not None else subprocess.DEVNULL
        err = stack.enter_context(tempfile.TemporaryFile())
        process = subprocess.Popen(
            argv, cwd=REPO, env=environ(), stdin=source, stdout=subprocess.DEVNULL, stderr=err
        )
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    return Run(process.returncode, stderr, time.monotonic() - started, usage.ru_maxrss * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile_moving")
    parser.add_argument("attack", choices=sorted({*IMPORT_ATTACKS, *MIGRATE_ATTACKS}))
    parser.add_argument("--call-timeout", default="2", help="migrate's deadline per call (seconds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.attack in IMPORT_ATTACKS:
            server = RedisServer().start()
            try:
                config = workdir / "config.toml"
                config.write_text(CONFIG.replace('redis_url = "memory://"', f'redis_url = "{server.url}"'))
                data = workdir / "input.jsonl"
                # Written by a process of its own: a command forked from a process that
                # just built 100 MB would count those pages in its own peak RSS.
                write = "import sys; from tests.hostile_moving import IMPORT_ATTACKS as A; "
                write += "open(sys.argv[2], 'wb').write(A[sys.argv[1]]())"
                subprocess.run([sys.executable, "-c", write, args.attack, str(data)], cwd=REPO, check=True)
                argv = [sys.executable, "-m", "service", "import", "--config", str(config)]
                run = run_command(argv, stdin=data)
            finally:
                server.stop()
        else:
            with lying_source(MIGRATE_ATTACKS[args.attack]()) as base_url:
                argv = migrate_argv(base_url, workdir / "out.jsonl", "--retries", "0")
                run = run_command([*argv, "--call-timeout", args.call_timeout], timeout=120)
    print(f"{args.attack}: {run.summary()}")


if __name__ == "__main__":
    main()
