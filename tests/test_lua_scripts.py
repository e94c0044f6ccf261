"""The Lua scripts themselves: headers that match how the code calls them, and exact limb arithmetic.

STYLE rule: a test loads every script and checks the header's KEYS/ARGV count against
how the code calls it. The arithmetic tests run `update_counters.lua` directly on the
real redis-server (and the table also on fakeredis, which runs the embedded store).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import service.api.commands
import service.api.listing
import service.moving.transfer
import service.storage.format
import service.storage.scripts
import service.storage.upgrade
from service.storage.scripts import (
    END_USER_LIMIT,
    IMPORT_GROUP,
    SCRIPTS,
    STORAGE_FORMAT,
    UPDATE_COUNTERS,
    UPGRADE_GROUP,
    Script,
    ScriptArg,
    ScriptCall,
    ScriptReply,
)
from service.storage.store import Store
from tests.support import END_USER_APP, IMPLICIT_APP, RATE_LIMITED_APP, Api, RedisServer, query

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
LUA_DIR: Final = Path(__file__).resolve().parents[1] / "lua"
# Every module that builds a ScriptCall of a script by its `scripts.NAME`.
CALLER_SOURCES: Final = [
    Path(module.__file__ or "").read_text(encoding="utf-8")
    for module in (
        service.api.commands,
        service.api.listing,
        service.moving.transfer,
        service.storage.format,
        service.storage.upgrade,
    )
]
SCRIPT_IDS: Final = [script.name for script in SCRIPTS]


@dataclass(frozen=True)
class Header:
    keys: tuple[int, ...]  # the n of every KEYS[n] line, in order
    argv: tuple[int, ...]  # the n of every fixed ARGV[n] line, in order
    argv_rest: int | None  # the n of an `ARGV[n..]` line (variadic tail), if any
    rest_in_pairs: bool  # the variadic tail is Key, Value pairs
    reply: bool  # a `Reply` line is present


def parse_header(script: Script) -> Header:
    match = re.match(r"\s*--\[\[(.*?)\]\]", script.source, re.DOTALL)
    assert match, f"{script.name}.lua does not start with a --[[ ... ]] header comment"
    text = match.group(1)
    keys = tuple(int(n) for n in re.findall(r"^KEYS\[(\d+)\]", text, re.MULTILINE))
    argv = tuple(int(n) for n in re.findall(r"^ARGV\[(\d+)\](?!\.)", text, re.MULTILINE))
    rest = re.search(r"^ARGV\[(\d+)\.\.\](.*)$", text, re.MULTILINE)
    return Header(
        keys=keys,
        argv=argv,
        argv_rest=int(rest.group(1)) if rest else None,
        rest_in_pairs=bool(rest and "Key, Value, Key, Value" in rest.group(2)),
        reply=re.search(r"^Reply\s+\{", text, re.MULTILINE) is not None,
    )


def _script_named(attribute: str) -> Script:
    script = getattr(service.storage.scripts, attribute)
    assert isinstance(script, Script), f"scripts.{attribute} is not a Script"
    return script


# ---- headers against the code ----


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_header_documents_exactly_the_keys_the_code_passes(script: Script) -> None:
    header = parse_header(script)
    assert header.keys == tuple(range(1, script.keys + 1)), (
        f"{script.name}.lua documents KEYS {header.keys}, the code passes {script.keys}"
    )
    # and the body uses no KEYS[n] beyond the documented ones
    used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", script.source)}
    assert used <= set(range(1, script.keys + 1)), f"{script.name}.lua uses KEYS {sorted(used)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_header_documents_argv_and_reply(script: Script) -> None:
    header = parse_header(script)
    assert header.argv or header.argv_rest is not None, f"{script.name}.lua documents no ARGV"
    assert header.argv == tuple(range(1, len(header.argv) + 1)), f"{script.name}.lua ARGV {header.argv}"
    if header.argv_rest is not None:
        assert header.argv_rest == len(header.argv) + 1, f"{script.name}.lua: ARGV[n..] must follow ARGV[n-1]"
    assert header.reply, f"{script.name}.lua documents no Reply"
    # every literal ARGV[n] the body reads is documented
    used = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", script.source.split("]]", 1)[1])}
    for n in used:
        assert n in header.argv or (header.argv_rest is not None and n >= header.argv_rest), (
            f"{script.name}.lua reads ARGV[{n}], which its header does not document"
        )


def test_every_lua_file_is_registered_in_scripts() -> None:
    files = sorted(path.stem for path in LUA_DIR.glob("*.lua"))
    assert files, f"no Lua scripts under {LUA_DIR}"
    names = [script.name for script in SCRIPTS]
    assert len(names) == len(set(names)), f"a script is registered twice: {names}"
    assert sorted(names) == files, f"lua/ holds {files}, SCRIPTS registers {sorted(names)}"


def _script_calls(source: str) -> list[ast.Call]:
    """Every `ScriptCall(scripts.X, [KEYS...], [ARGV...])` a module builds."""
    return [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ScriptCall"
    ]


def test_commands_call_each_script_with_the_documented_keys_and_fixed_argv() -> None:
    called: set[str] = set()
    for call in [call for source in CALLER_SOURCES for call in _script_calls(source)]:
        assert len(call.args) == 3, f"line {call.lineno}: ScriptCall takes (script, keys, args)"
        target, keys, args = call.args
        assert isinstance(target, ast.Attribute), f"line {call.lineno}: the script is not scripts.<NAME>"
        script = _script_named(target.attr)
        called.add(script.name)
        header = parse_header(script)
        assert isinstance(keys, ast.List), f"line {call.lineno}: KEYS should be a list literal"
        fixed_keys = [e for e in keys.elts if not isinstance(e, ast.Starred)]
        assert (len(fixed_keys) != len(keys.elts)) == script.more_keys, f"line {call.lineno}: KEYS tail"
        assert len(fixed_keys) == script.keys == len(header.keys), (
            f"line {call.lineno}: {script.name} called with {len(keys.elts)} KEYS"
        )
        assert isinstance(args, ast.List), f"line {call.lineno}: ARGV should be a list literal"
        fixed = [e for e in args.elts if not isinstance(e, ast.Starred)]
        variadic = len(fixed) != len(args.elts)
        assert len(fixed) == len(header.argv), f"line {call.lineno}: {script.name} fixed ARGV"
        assert variadic == (header.argv_rest is not None), f"line {call.lineno}: {script.name} ARGV tail"
    # end_user_limit runs on its own, from service/api/rate_limit.py.
    expected = {script.name for script in SCRIPTS} - {END_USER_LIMIT.name}
    assert called == expected, f"scripts never called: {called ^ expected}"


def test_every_command_calls_its_script_with_the_argv_count_the_header_documents(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Script, list[str], list[ScriptArg]]] = []
    original = Store.run

    async def spy(self: Store, call: ScriptCall) -> ScriptReply:
        seen.append((call.script, list(call.keys), list(call.args)))
        return await original(self, call)

    monkeypatch.setattr(Store, "run", spy)
    api.create("g")
    api.update("g", {"a": 1, "b": 2}, "Set")
    api.update("g", {"a": 3}, "Increase")
    api.update("g", {"a": 1, "c": 4, "d": 5}, "Decrease")
    api.get("g")
    api.get("g", ["a", "zz"])
    api.call("delete_group_counter", {"GroupId": "g", "GroupCounterKeys": ["a", "b"]})
    api.call("delete_group_counter", {"GroupId": "g"})
    api.call("destroy_group", {"GroupId": "g"})
    api.update("h", {"x": 1}, "Increase", sdkappid=IMPLICIT_APP)
    api.get("h", sdkappid=IMPLICIT_APP)
    api.call("destroy_group", {"GroupId": "h"}, sdkappid=IMPLICIT_APP)
    # A rate-limited app's call that fails before its script is counted on its own.
    api.call("get_group_counter", raw=b"not json", sdkappid=RATE_LIMITED_APP)
    # An end user's call is counted in their own window.
    api.call("get_group_counter", {"GroupId": "g"}, sdkappid=END_USER_APP, identifier="viewer")
    # A watch of a group that does not exist reads it (snapshot_group) and is refused.
    watch = api.client.get(f"/v4/group_open_http_svc/watch_group_counter?{query()}&GroupId=gone")
    assert watch.json()["ErrorCode"] == 10010

    api.create("listed")
    api.call("get_appid_group_list", {"GroupType": "Public"})
    # import_group runs from the CLI, not a command: tests/test_transfer.py checks its calls;
    # the storage format scripts run at start and in the upgrade (tests/test_upgrade.py).
    not_commands = {IMPORT_GROUP.name, STORAGE_FORMAT.name, UPGRADE_GROUP.name}
    assert {script.name for script, _, _ in seen} == set(SCRIPT_IDS) - not_commands
    for script, keys, args in seen:
        header = parse_header(script)
        assert len(keys) == script.keys == len(header.keys), (script.name, keys)
        if header.argv_rest is None:
            assert len(args) == len(header.argv), (script.name, args)
        else:
            assert len(args) >= len(header.argv), (script.name, args)
            if header.rest_in_pairs:
                tail = len(args) - len(header.argv)
                assert tail >= 2, (script.name, args)
                assert tail % 2 == 0, (script.name, args)


@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_every_script_loads_on_the_real_redis_server(script: Script, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        sha = client.script_load(script.source)
        assert client.script_exists(sha) == [True]
    finally:
        client.close()


# ---- update_counters.lua arithmetic ----

OVERFLOW: Final = None
HASH: Final = "{1400000001:limbs}"
VERSION: Final = b"\xfd"  # the group's "<version> <incarnation>" (lua/include/live.lua)
# ARGV[1..6] of update_counters: implicit, no rate limit, no Idempotency-Key, the token
# "token", and live counters off (no channel).
NO_NOTICE: Final = ["0", "0", "", "token", "", ""]

# (old value or None for a missing key, amount added, expected result or OVERFLOW)
LIMB_CASES: Final[list[tuple[int | None, int, int | None]]] = [
    # carries across the 1e9 limb
    (999999999, 1, 1000000000),
    (-999999999, -1, -1000000000),
    (1000000000, -1, 999999999),
    (-1000000000, 1, -999999999),
    (999999999, 999999999, 1999999998),
    (-999999999, -999999999, -1999999998),
    (123456789999999999, 1, 123456790000000000),
    (-123456789000000000, -1, -123456789000000001),
    (-1000000000, -1000000000, -2000000000),
    # sign changes
    (-5, 10, 5),
    (5, -10, -5),
    (1000000000, -1000000001, -1),
    (-1000000000, 1000000001, 1),
    (5000000000, -4999999999, 1),
    (-5000000000, 4999999999, -1),
    (1000000000, -1000000000, 0),
    (-1000000000, 1000000000, 0),
    (-1, 1, 0),
    (0, 0, 0),
    # past a double's exact range
    (2**53, 1, 2**53 + 1),
    (-(2**53), -1, -(2**53) - 1),
    (9007199254740993, 9007199254740993, 18014398509481986),
    # exact int64 extremes
    (INT64_MAX - 1, 1, INT64_MAX),
    (INT64_MIN + 1, -1, INT64_MIN),
    (9223372036000000000, 854775807, INT64_MAX),
    (-9223372036000000000, -854775808, INT64_MIN),
    (0, INT64_MAX, INT64_MAX),
    (0, INT64_MIN, INT64_MIN),
    (None, INT64_MIN, INT64_MIN),
    (INT64_MAX, INT64_MIN, -1),
    (INT64_MIN, INT64_MAX, -1),
    (INT64_MAX, -INT64_MAX, 0),
    # overflow by one, both directions
    (INT64_MAX, 1, OVERFLOW),
    (INT64_MIN, -1, OVERFLOW),
    (9223372036000000000, 854775808, OVERFLOW),
    (-9223372036000000000, -854775809, OVERFLOW),
    (INT64_MAX, INT64_MAX, OVERFLOW),
    (INT64_MIN, INT64_MIN, OVERFLOW),
    # a Decrease of INT64_MIN arrives negated: 2**63, one past int64
    (-1, 2**63, INT64_MAX),
    (INT64_MIN, 2**63, 0),
    (0, 2**63, OVERFLOW),
    (None, 2**63, OVERFLOW),
    (1, 2**63, OVERFLOW),
]


def add_reply(client: redis.Redis, old: int | None, amount: int, key: str = "c") -> Any:
    client.delete(HASH)
    if old is not None:
        client.hset(HASH, key, str(old))
    script = client.register_script(UPDATE_COUNTERS.source)
    return script(keys=[HASH, HASH, HASH], args=["0", "0", "", "t", "", "", "add", "86400", key, str(amount)])


def expected_reply(old: int | None, amount: int, key: str = "c") -> list[Any]:
    result = (old or 0) + amount
    if not INT64_MIN <= result <= INT64_MAX:
        return [10004, key.encode()]
    return [0, str(result).encode()]


@pytest.fixture(scope="module")
def real_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.delete(HASH)
    client.close()


@pytest.fixture(params=["redis", "memory"])
def scripting(request: pytest.FixtureRequest) -> redis.Redis:
    if request.param == "redis":
        client: redis.Redis = request.getfixturevalue("real_redis")
        return client
    fake: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return fake


def test_limb_case_table_agrees_with_python_integers() -> None:
    """The table's expectations are themselves Python's int64 arithmetic."""
    for old, amount, expected in LIMB_CASES:
        result = (old or 0) + amount
        assert expected == (result if INT64_MIN <= result <= INT64_MAX else OVERFLOW), (old, amount)


@pytest.mark.parametrize(("old", "amount", "expected"), LIMB_CASES)
def test_update_counters_adds_exactly_across_limbs_and_int64_bounds(
    scripting: redis.Redis, old: int | None, amount: int, expected: int | None
) -> None:
    reply = add_reply(scripting, old, amount)
    if expected is OVERFLOW:
        assert reply == [10004, b"c"]
        stored = scripting.hget(HASH, "c")
        assert stored == (None if old is None else str(old).encode()), "an overflow must change nothing"
    else:
        assert reply == [0, str(expected).encode()]
        assert scripting.hget(HASH, "c") == str(expected).encode()


def test_update_counters_overflow_in_one_key_changes_no_key(scripting: redis.Redis) -> None:
    scripting.delete(HASH)
    scripting.hset(HASH, mapping={"a": "1", "b": str(INT64_MAX)})
    script = scripting.register_script(UPDATE_COUNTERS.source)
    reply = script(keys=[HASH, HASH, HASH], args=[*NO_NOTICE, "add", "86400", "a", "1", "new", "5", "b", "1"])
    assert reply == [10004, b"b"]
    assert scripting.hgetall(HASH) == {b"a": b"1", b"b": str(INT64_MAX).encode()}
    assert scripting.hget(HASH, VERSION) is None, "a failed call raises no version"


def test_update_counters_checks_overflow_before_key_count(scripting: redis.Redis) -> None:
    scripting.delete(HASH)
    scripting.hset(HASH, mapping={f"k{i:02d}": str(INT64_MAX) for i in range(20)})
    script = scripting.register_script(UPDATE_COUNTERS.source)
    before = scripting.hgetall(HASH)
    assert script(keys=[HASH, HASH, HASH], args=[*NO_NOTICE, "add", "86400", "new", "1", "k00", "1"]) == [
        10004,
        b"k00",
    ]
    assert script(keys=[HASH, HASH, HASH], args=[*NO_NOTICE, "add", "86400", "new", "1", "k00", "-1"]) == [
        10063,
        21,
    ]
    assert scripting.hgetall(HASH) == before


def test_update_counters_set_stores_the_value_unchanged(scripting: redis.Redis) -> None:
    scripting.delete(HASH)
    script = scripting.register_script(UPDATE_COUNTERS.source)
    values = [INT64_MIN, INT64_MAX, -(2**53) - 1, 2**53 + 1, 0, -1]
    args: list[str] = [*NO_NOTICE, "set", "86400"]
    for i, value in enumerate(values):
        args += [f"k{i}", str(value)]
    assert script(keys=[HASH, HASH, HASH], args=args) == [0, *(str(v).encode() for v in values)]
    stored = scripting.hgetall(HASH)
    assert stored.pop(VERSION) == b"1 token"
    assert stored == {f"k{i}".encode(): str(v).encode() for i, v in enumerate(values)}


def _near(point: int, width: int = 3) -> st.SearchStrategy[int]:
    return st.integers(point - width, point + width)


INT64S: Final = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1, 1]),
    *(
        _near(p).filter(lambda v: INT64_MIN <= v <= INT64_MAX)
        # ... and either side of the fast path's bound (15 characters: 10^15, and -10^14
        # whose sign makes 16), where the double path hands over to the limbs.
        for p in (
            0,
            10**9,
            -(10**9),
            10**14,
            -(10**14),
            10**15,
            -(10**15),
            2**53,
            -(2**53),
            INT64_MAX,
            INT64_MIN,
        )
    ),
    st.integers(-(10**12), 10**12),
)
AMOUNTS: Final = st.one_of(INT64S, st.just(2**63), _near(2**63 - 1, 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(old=st.none() | INT64S, amount=AMOUNTS)
def test_update_counters_equals_python_addition_or_overflows_exactly_outside_int64(
    real_redis: redis.Redis, old: int | None, amount: int
) -> None:
    assert add_reply(real_redis, old, amount) == expected_reply(old, amount)


@pytest.fixture(scope="module")
def embedded_lua() -> redis.Redis:
    """The embedded store's Lua (fakeredis on lupa), whose numbers may differ from Redis's."""
    client: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return client


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(old=st.none() | INT64S, amount=AMOUNTS)
def test_the_embedded_stores_lua_adds_as_exactly_as_redis(
    embedded_lua: redis.Redis, old: int | None, amount: int
) -> None:
    assert add_reply(embedded_lua, old, amount) == expected_reply(old, amount)
