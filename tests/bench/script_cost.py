"""Redis time per update: update_counters.lua at a git ref against the one in the tree,
side by side on one redis-server of its own, with a bare HINCRBY pair as the floor.

    .venv/bin/python -m tests.bench.script_cost [--ref HEAD~1] [--calls 20000] [--rounds 5]

Each round runs, in turn, `--calls` Increase-by-1 calls of two Keys (a like counter's
call) through each script, on spread groups and on one hot group, then on the hot group
through each version's combined form (write combining, `--combined` updates per script
call) where it has one, the tree's script as a Redis Function (`--functions`), and the
same count of pipelined HINCRBY pairs; Redis's own time
per update comes from INFO commandstats (the script commands' usec, after CONFIG
RESETSTAT). Medians over the rounds, and each script's ratio to the HINCRBY pair in the
same round.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

import redis

from service.storage.scripts import UPDATE_COUNTERS
from tests.support import RedisServer

ROOT: Final = Path(__file__).resolve().parents[2]
BATCH: Final = 256


def source_at(ref: str) -> str:
    """update_counters.lua as service/storage/scripts.py assembled it at `ref`."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{ref}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{ref}:lua/include"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    source = show("lua/update_counters.lua")
    header_end = source.index("]]\n") + 3
    shared = "".join(show(f"lua/include/{name}") for name in sorted(names) if name.endswith(".lua"))
    return source[:header_end] + shared + source[header_end:]


def combined_at(ref: str) -> str | None:
    """update_counters' combined form as that version's scripts.py generates it (None
    before write combining): its service/ and lua/ unpacked and imported on their own."""
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(
            ["git", "archive", ref, "service", "lua"], cwd=ROOT, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        code = (
            "from service.storage.scripts import UPDATE_COUNTERS as u;"
            "print(u.combined.source if hasattr(u, 'combined') else '', end='')"
        )
        printed = subprocess.run(
            [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True
        ).stdout
    return printed or None


def usec_of(client: redis.Redis, commands: tuple[str, ...], run: Callable[[], None]) -> float:
    client.config_resetstat()
    run()
    stats = client.info("commandstats")
    return sum(float(stats[f"cmdstat_{name}"]["usec"]) for name in commands if f"cmdstat_{name}" in stats)


def argv_of(source: str) -> list[str | int]:
    """The fixed ARGV of an Increase of like and gift by 1, as that version takes it
    (ARGV[8], the record's lifetime, came with `idempotency_ttl`)."""
    fixed: list[str | int] = ["0", "0", "", "t0k3n", "", "", "add"]
    if "ARGV[8]  the idempotency record's lifetime" in source:
        fixed.append(86400)
    return [*fixed, "like", 1, "gift", 1]


def script_calls(
    client: redis.Redis, sha: str | None, argv: list[str | int], calls: int, hot: bool
) -> Callable[[], None]:
    """`calls` updates through the script `sha`, or (None) through as_function()'s FCALL."""

    def run() -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(calls):
            group = "{1400000000:hot}" if hot else f"{{1400000000:g{i % 10_000}}}"
            if sha is None:
                pipe.fcall("update_counters", 3, group, group, group, *argv)
            else:
                pipe.evalsha(sha, 3, group, group, group, *argv)
            if i % BATCH == BATCH - 1:
                pipe.execute()
        pipe.execute()

    return run


def combined_calls(
    client: redis.Redis, sha: str, argv: list[str | int], calls: int, together: int
) -> Callable[[], None]:
    """`calls` updates of the hot group, `together` to a script call (the combined form's
    KEYS and ARGV: each call's three KEYS; the count, then each call's ARGV count and ARGV)."""
    group = "{1400000000:hot}"
    keys = [group] * 3 * together
    flat: list[str | int] = [together]
    for _ in range(together):
        flat += [len(argv), *argv]

    def run() -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(calls // together):
            pipe.evalsha(sha, len(keys), *keys, *flat)
            if i % BATCH == BATCH - 1:
                pipe.execute()
        pipe.execute()

    return run


def as_function(source: str) -> str:
    """The tree's update_counters as a Redis Function library: the includes, the
    constants and the arithmetic (`split`, `add`) defined once, at FUNCTION LOAD; each
    FCALL runs only the rest of the body. A measurement of what FCALL would save, not
    what the service runs."""
    body = source[source.index("]]\n") + 3 :]
    constants, checks = body.index("local META"), body.index("if over_rate_limit")
    arithmetic, rest = body.index("local function split(s)"), body.index("local new, added = {}, 0")
    once = body[:checks] + body[arithmetic:rest]
    per_call = body[checks:arithmetic] + body[rest:]
    assert constants < checks < arithmetic < rest, "update_counters.lua moved: adjust as_function()"
    return (
        "#!lua name=script_cost\n"
        f"{once}local function update(KEYS, ARGV)\n{per_call}\nend\n"
        "redis.register_function('update_counters', function(keys, args) return update(keys, args) end)\n"
    )


def hincrby_pairs(client: redis.Redis, calls: int) -> Callable[[], None]:
    def run() -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(calls):
            group = f"{{bare:g{i % 10_000}}}"
            pipe.hincrby(group, "like", 1)
            pipe.hincrby(group, "gift", 1)
            if i % BATCH == BATCH - 1:
                pipe.execute()
        pipe.execute()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.script_cost")
    parser.add_argument("--ref", default="HEAD~1", help="the git ref of the script to compare with")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--combined", type=int, default=32, help="updates per combined script call")
    parser.add_argument("--functions", action="store_true", help="the tree's script as a Redis Function too")
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        sources = {args.ref: source_at(args.ref), "tree": UPDATE_COUNTERS.source}
        scripts = {name: (client.script_load(source), argv_of(source)) for name, source in sources.items()}
        combined_sources = {args.ref: combined_at(args.ref), "tree": UPDATE_COUNTERS.combined.source}
        combined = {
            name: (client.script_load(source), argv_of(source))
            for name, source in combined_sources.items()
            if source is not None
        }
        calls = args.calls - args.calls % args.combined
        if args.functions:
            client.function_load(as_function(UPDATE_COUNTERS.source))
            sha, argv = scripts["tree"]
            as_script = client.evalsha(sha, 3, *["{check:script}"] * 3, *argv)
            as_function_ = client.fcall("update_counters", 3, *["{check:function}"] * 3, *argv)
            assert as_script == as_function_, f"the Function answers {as_function_}, the script {as_script}"
        rows: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            bare = usec_of(client, ("hincrby",), hincrby_pairs(client, args.calls)) / args.calls
            rows.setdefault("HINCRBY pair", []).append(bare)
            for name, (sha, argv) in scripts.items():
                for hot in (False, True):
                    label = f"{name}, {'one hot group' if hot else 'spread groups'}"
                    usec = (
                        usec_of(client, ("evalsha",), script_calls(client, sha, argv, args.calls, hot))
                        / args.calls
                    )
                    rows.setdefault(label, []).append(usec)
                    rows.setdefault(f"{label} / HINCRBY pair", []).append(usec / bare)
            if args.functions:
                for hot in (False, True):
                    label = f"tree as a Function, {'one hot group' if hot else 'spread groups'}"
                    argv = scripts["tree"][1]
                    run = script_calls(client, None, argv, args.calls, hot)
                    usec = usec_of(client, ("fcall",), run) / args.calls
                    rows.setdefault(label, []).append(usec)
                    rows.setdefault(f"{label} / HINCRBY pair", []).append(usec / bare)
            for name, (sha, argv) in combined.items():
                label = f"{name}, one hot group, {args.combined} per script call"
                run = combined_calls(client, sha, argv, calls, args.combined)
                usec = usec_of(client, ("evalsha",), run) / calls
                rows.setdefault(label, []).append(usec)
                rows.setdefault(f"{label} / HINCRBY pair", []).append(usec / bare)
        print(
            f"Redis us per update, median of {args.rounds} rounds of {args.calls} updates"
            " (2 Keys, Increase 1):"
        )
        for label, values in rows.items():
            print(f"  {label:<45} {statistics.median(values):8.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
