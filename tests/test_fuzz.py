"""Hostile input fuzzing: random bodies, query strings, headers, paths and methods (hypothesis).

Each example is one raw ASGI request to the in-process app (the `asgi_api` fixture, on
every backend conftest offers), sent on the TestClient's own event loop (its portal), so
that nothing an HTTP client would refuse to send has to be skipped: an inconsistent or
repeated Content-Length, raw bytes in the query string or a header, a body in chunks.

Whatever arrives, the service must:

- answer HTTP 200, or 413 only when the body (or its declared Content-Length) is over
  `max_body_bytes`;
- answer the JSON envelope (`ActionStatus` "OK" exactly when `ErrorCode` is 0, an
  `ErrorInfo` string), never 10002 and never a traceback;
- change nothing in Redis when the call failed (the store is seeded first, with
  counters near the int64 limits, a group one key short of 20 and a Community group,
  so that late failures, overflow and key count among them, have something to change).

CI runs 200 examples per test and backend (`make test`, well under a minute). The long
run, 10,000 examples per backend (30,000 with the three backends), is marked slow:

    make test-slow                                       # every slow test
    .venv/bin/python -m pytest -m slow tests/test_fuzz.py    # this one only (~5 min)

Requests are kept to what uvicorn (httptools) can deliver: it refuses a raw control or
non-ASCII byte in the request target or a header, and a method it does not know, before
the app sees the request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Scope

from service.config import parse_config
from service.storage.keys import group_key
from tests.support import ADMIN, CONFIG, IMPLICIT_APP, OTHER_APP, REGISTERED_APP, Api, usersig_for

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
CAP: Final = parse_config(CONFIG, environ={}).config.max_body_bytes
PREFIX: Final = "/v4/group_open_http_svc/"
COMMANDS: Final = [
    "update_group_counter",
    "get_group_counter",
    "delete_group_counter",
    "create_group",
    "destroy_group",
]
APPS: Final = [REGISTERED_APP, IMPLICIT_APP, OTHER_APP]
USERSIGS: Final = {app: usersig_for(app) for app in APPS}
GROUP_TYPES: Final = ["Private", "Work", "Public", "ChatRoom", "Meeting", "AVChatRoom", "Community"]
SEEDED_GROUPS: Final = ["g1", "full", "@TGS#_community", "empty"]
SEEDED_KEYS: Final = ["big", "small", "k", "f00", "f18"]
PROBE_PATHS: Final = {"/healthz", "/readyz", "/metrics", "/openapi.json"}  # not the API: their own replies
EXAMPLES: Final = 200  # per test and backend in CI
MAX_STORED_KEYS: Final = 40  # the seed holds 7; snapshots of a larger store slow every example
SLOW_EXAMPLES: Final = 10_000  # per backend: `pytest -m slow`


# The seeded store -----------------------------------------------------------------------------


def seed(api: Api) -> None:
    """Groups whose failures would be visible: near-int64 counters, 19 keys, a Community group."""
    for app in (REGISTERED_APP, IMPLICIT_APP):
        if app == REGISTERED_APP:
            for group in ("g1", "full", "empty"):
                api.create(group, sdkappid=app)
            api.create("@TGS#_community", "Community", sdkappid=app)
        reply = api.update("g1", {"big": INT64_MAX - 3, "small": INT64_MIN + 3, "k": 7}, sdkappid=app)
        assert reply["ErrorCode"] == 0, reply
        reply = api.update("full", {f"f{i:02d}": i for i in range(19)}, sdkappid=app)
        assert reply["ErrorCode"] == 0, reply


@pytest.fixture
def seeded(asgi_api: Api) -> Api:
    seed(asgi_api)
    return asgi_api


def snapshot(api: Api) -> dict[Any, Any]:
    """Every key of the store with its type and content (a failed call must change none)."""
    inspector = api.inspector
    state: dict[Any, Any] = {}
    for key in sorted(inspector.keys("*")):
        kind = inspector.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        content: Any
        if kind == "hash":
            content = inspector.hgetall(key)
        elif kind == "string":
            content = inspector.get(key)
        elif kind == "set":
            content = sorted(inspector.smembers(key))
        elif kind == "zset":
            content = inspector.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            content = inspector.lrange(key, 0, -1)
        else:
            content = None
        state[key] = (kind, content)
    return state


# Raw requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    method: str
    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    chunks: int = 1  # the body arrives in this many http.request messages


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def _exchange(app: ASGIApp, scope: Scope, chunks: list[bytes]) -> list[Message]:
    pending = list(chunks)
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def send_raw(api: Api, raw: Raw) -> Answer:
    client = cast(TestClient, api.client)
    portal = client.portal
    assert portal is not None, "the TestClient is not running"
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": raw.method,
        "scheme": "http",
        "path": raw.path,
        "raw_path": raw.path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": raw.query,
        "headers": [(b"host", b"testserver"), *raw.headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
        "extensions": {},
    }
    size = max(1, -(-len(raw.body) // raw.chunks))
    chunks = [raw.body[i : i + size] for i in range(0, len(raw.body), size)] or [b""]
    messages = portal.call(_exchange, client.app, scope, chunks)
    starts = [m for m in messages if m["type"] == "http.response.start"]
    assert len(starts) == 1, f"no single response start: {messages}"
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return Answer(int(starts[0]["status"]), list(starts[0].get("headers", [])), body)


def _declared_length(headers: tuple[tuple[bytes, bytes], ...]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def check(api: Api, raw: Raw) -> None:
    """The properties of the module docstring, for one request."""
    before = snapshot(api)
    if len(before) > MAX_STORED_KEYS:  # successful creates pile up: start over from the seed
        for key in api.inspector.keys("*"):
            api.inspector.delete(key)
        seed(api)
        before = snapshot(api)
    answer = send_raw(api, raw)
    text = answer.body.decode("utf-8", "replace")
    declared = _declared_length(raw.headers)
    over_cap = len(raw.body) > CAP or (declared is not None and declared > CAP)
    allowed = {200, 413} if over_cap else {200}
    assert answer.status in allowed, f"HTTP {answer.status} for {raw!r}: {text[:300]}"
    assert "Traceback" not in text, text
    reply = json.loads(answer.body)
    assert isinstance(reply, dict), text
    code = reply["ErrorCode"]
    assert isinstance(code, int), reply
    assert reply["ActionStatus"] == ("OK" if code == 0 else "FAIL"), reply
    assert isinstance(reply["ErrorInfo"], str), reply
    assert code != 10002, f"10002 for {raw!r}: {reply}"
    assert answer.status == 200 or code != 0, reply
    content_types = [value for name, value in answer.headers if name == b"content-type"]
    assert content_types, answer.headers
    assert content_types[0].startswith(b"application/json"), answer.headers
    for name, value in answer.headers:  # no header injection through X-Request-Id
        assert value.isascii(), (name, value)
        assert value.decode().isprintable(), (name, value)
    if code != 0:
        assert snapshot(api) == before, f"the failed call {raw!r} ({reply}) changed the store"


# Strategies: JSON values and bodies --------------------------------------------------------------


EDGE_INTS: Final = st.sampled_from(
    [0, 1, -1, 3, 2**53, 2**53 + 1, -(2**53) - 1, INT64_MAX, INT64_MIN, INT64_MAX + 1, INT64_MIN - 1, 2**64]
)
INTS: Final = st.one_of(EDGE_INTS, st.integers(-1000, 1000), st.integers(), st.integers(-(2**80), 2**80))
FLOATS: Final = st.one_of(st.floats(), st.sampled_from([1.0, -0.0, 1e3, 9.223372036854776e18, 0.5]))
SCALARS: Final = st.one_of(st.none(), st.booleans(), INTS, FLOATS, st.text(max_size=30))
JSON_VALUES: Final = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
GROUP_IDS: Final = st.one_of(
    st.sampled_from([*SEEDED_GROUPS, "new-group", "@TGS#abc", "@TGS#_new", " ", "x" * 48, "x" * 49]),
    st.text(max_size=60),
    JSON_VALUES,
)
COUNTER_KEYS: Final = st.one_of(
    st.sampled_from([*SEEDED_KEYS, "new1", "new2", "", "x" * 128, "é" * 65]),
    st.text(max_size=140),
    JSON_VALUES,
)
COUNTER_VALUES: Final = st.one_of(INTS, JSON_VALUES)
COUNTER_ITEMS: Final = st.one_of(
    st.fixed_dictionaries({}, optional={"Key": COUNTER_KEYS, "Value": COUNTER_VALUES}),
    st.fixed_dictionaries({"Key": COUNTER_KEYS, "Value": INTS}),
    JSON_VALUES,
)
MODES: Final = st.one_of(
    st.sampled_from(["Set", "Increase", "Decrease", "set", "INCREASE", "", " Set", "Add"]), JSON_VALUES
)
FIELDS: Final = st.fixed_dictionaries(
    {},
    optional={
        "GroupId": GROUP_IDS,
        "GroupCounter": st.one_of(st.lists(COUNTER_ITEMS, max_size=22), JSON_VALUES),
        "Mode": MODES,
        "GroupCounterKeys": st.one_of(st.lists(COUNTER_KEYS, max_size=22), JSON_VALUES),
        "Type": st.one_of(st.sampled_from([*GROUP_TYPES, "public", "Unknown"]), JSON_VALUES),
        "Name": st.one_of(st.text(max_size=40), JSON_VALUES),
        "Owner_Account": st.one_of(st.sampled_from([ADMIN, ""]), st.text(max_size=20), JSON_VALUES),
    },
)
FIELD_BODIES: Final = st.builds(
    lambda fields, extra: {**extra, **fields},
    FIELDS,
    st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=3),
)


def _valid_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed bodies on the seeded groups: some succeed, some fail late (overflow, 20 keys)."""
    items = st.lists(
        st.fixed_dictionaries({"Key": st.sampled_from([*SEEDED_KEYS, "new1", "new2"]), "Value": INTS}),
        min_size=1,
        max_size=3,
        unique_by=lambda item: cast(str, item["Key"]),
    )
    groups = st.sampled_from(SEEDED_GROUPS)
    return st.one_of(
        st.fixed_dictionaries(
            {"GroupId": groups, "GroupCounter": items},
            optional={"Mode": st.sampled_from(["Set", "Increase", "Decrease"])},
        ),
        st.fixed_dictionaries(
            {"GroupId": groups},
            optional={"GroupCounterKeys": st.lists(st.sampled_from(SEEDED_KEYS), max_size=3)},
        ),
        st.fixed_dictionaries(
            {"Type": st.sampled_from(GROUP_TYPES), "Name": st.just("n")},
            optional={"GroupId": st.sampled_from([*SEEDED_GROUPS, "new-group", "@TGS#_new"])},
        ),
    )


VALID_BODIES: Final = _valid_bodies()


def _encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def _duplicate_keys(pairs: list[tuple[str, Any]]) -> bytes:
    """A JSON object that repeats field names: json.dumps cannot write one."""
    inner = ",".join(f"{json.dumps(name)}:{json.dumps(value, allow_nan=True)}" for name, value in pairs)
    return ("{" + inner + "}").encode()


def _oversized(body: bytes, over: int) -> bytes:
    """The body padded with JSON whitespace to CAP + over bytes (over <= 0: at or under the cap)."""
    return body + b" " * max(0, CAP + over - len(body))


BODIES: Final = st.one_of(
    st.builds(_encode, FIELD_BODIES, st.booleans()),
    st.builds(_encode, VALID_BODIES, st.booleans()),
    st.builds(_encode, JSON_VALUES, st.booleans()),
    st.binary(max_size=200),
    st.builds(
        lambda body, cut: body[: cut % (len(body) + 1)], st.builds(_encode, VALID_BODIES, st.just(True)), INTS
    ),
    st.builds(
        _duplicate_keys,
        st.lists(
            st.tuples(st.sampled_from(["GroupId", "GroupCounter", "Mode", "Type", "Name"]), JSON_VALUES),
            min_size=2,
            max_size=5,
        ),
    ),
    st.builds(_oversized, st.builds(_encode, VALID_BODIES, st.just(True)), st.integers(-2, 2)),
    st.sampled_from([b"", b"{}", b"[]", b"null", b"{", b"\xef\xbb\xbf{}", b"[" * 10_000, b'{"a":' * 5_000]),
)


# Strategies: query strings ------------------------------------------------------------------------


def _valid_params(app: int) -> list[tuple[str, str]]:
    return [
        ("sdkappid", str(app)),
        ("identifier", ADMIN),
        ("usersig", USERSIGS[app]),
        ("random", "12345"),
        ("contenttype", "json"),
    ]


def _join(pairs: list[tuple[str, str]], style: str) -> bytes:
    """name=value pairs joined by &: "plus" as urlencode does, "all" every byte %-encoded, "raw" as is."""

    def encode(text: str) -> str:
        if style == "plus":
            return quote_plus(text)
        if style == "all":
            return quote(text, safe="")
        return text

    joined = "&".join(f"{encode(name)}={encode(value)}" for name, value in pairs)
    return joined.encode("utf-8", "surrogatepass")


PARAM_NAMES: Final = st.one_of(
    st.sampled_from(
        ["sdkappid", "identifier", "usersig", "random", "contenttype", "SdkAppId", "Identifier", "usersig "]
    ),
    st.text(max_size=12),
)
PARAM_VALUES: Final = st.one_of(
    st.sampled_from(
        ["", "0", "-1", "4294967295", "4294967296", "json", "JSON", "\uff11\uff12\uff13", "1e3", " 1"]
    ),
    st.text(max_size=30),
    INTS.map(str),
)
USERSIG_VALUES: Final = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="ABCDEFabcdef0123456789*-_", max_size=200),
    st.sampled_from(
        [
            "",
            usersig_for(REGISTERED_APP, "nobody"),
            usersig_for(REGISTERED_APP, ADMIN, expire=-1),
            usersig_for(REGISTERED_APP, ADMIN, secret_key="not-the-key"),
            usersig_for(IMPLICIT_APP),
            "eJyrVkrNK8ovUbJSSs7PS8nMS1eqBQBF7gbN",
        ]
    ),
    st.builds(
        lambda sig, at, char: sig[: at % len(sig)] + char + sig[at % len(sig) + 1 :],
        st.sampled_from(list(USERSIGS.values())),
        st.integers(0, 10_000),
        st.sampled_from(list("A*-_=+/%")),
    ),
)
APP_PARAMS: Final = st.sampled_from(APPS).map(_valid_params)


def _without(pairs: list[tuple[str, str]], drop: list[bool]) -> list[tuple[str, str]]:
    return [pair for pair, gone in zip(pairs, drop, strict=False) if not gone] + pairs[len(drop) :]


def _replace(pairs: list[tuple[str, str]], index: int, value: str) -> list[tuple[str, str]]:
    out = list(pairs)
    name, _ = out[index % len(out)]
    out[index % len(out)] = (name, value)
    return out


def _corrupt(query: bytes, at: int, junk: bytes) -> bytes:
    at %= len(query) + 1
    return query[:at] + junk + query[at:]


def deliverable_query(query: bytes) -> bytes:
    """The query string as the HTTP server can deliver it: it refuses a request target with a
    control byte, a space or a byte over 0x7e, and ends the query at '#', so a client
    %-encodes those. A stray '%' is kept: a malformed escape reaches the service."""
    return b"".join(
        bytes([byte]) if 0x21 <= byte <= 0x7E and byte != 0x23 else b"%%%02X" % byte for byte in query
    )


QUERY_PAIRS: Final = st.one_of(
    st.builds(_without, APP_PARAMS, st.lists(st.booleans(), min_size=5, max_size=5)),
    st.builds(lambda pairs, i: [*pairs, pairs[i % 5]], APP_PARAMS, st.integers(0, 4)),  # repeated
    st.builds(
        lambda pairs, i, v: [*pairs, (pairs[i % 5][0], v)], APP_PARAMS, st.integers(0, 4), PARAM_VALUES
    ),
    st.builds(lambda pairs, sig: _replace(pairs, 2, sig), APP_PARAMS, USERSIG_VALUES),
    st.builds(_replace, APP_PARAMS, st.integers(0, 4), PARAM_VALUES),
    st.builds(lambda pairs, extra: pairs + extra, APP_PARAMS, st.lists(st.tuples(PARAM_NAMES, PARAM_VALUES))),
    st.builds(
        lambda pairs, order: sorted(pairs, key=lambda p: order.index(p[0]) if p[0] in order else 0),
        APP_PARAMS,
        st.permutations(["sdkappid", "identifier", "usersig", "random", "contenttype"]),
    ),
    st.lists(st.tuples(PARAM_NAMES, PARAM_VALUES), max_size=8),
)
QUERIES: Final = st.one_of(
    st.builds(_join, QUERY_PAIRS, st.sampled_from(["plus", "all", "raw"])),
    st.builds(
        _corrupt,
        st.builds(_join, APP_PARAMS, st.sampled_from(["plus", "all"])),
        st.integers(0, 10_000),
        st.sampled_from(
            [b"%", b"%z", b"%zz", b"%0", b"&", b"=", b";", b"&&", b"%00", b"%FF", b"+", b"\xff", b"#"]
        ),
    ),
    st.binary(max_size=120),
    st.sampled_from(
        [b"", b"&", b"=", b"?", b"sdkappid", b"sdkappid=&identifier=&usersig=&random=&contenttype="]
    ),
).map(deliverable_query)
VALID_QUERIES: Final = st.builds(_join, APP_PARAMS, st.sampled_from(["plus", "all"]))


# Strategies: headers, paths, methods ------------------------------------------------------------


CONTENT_TYPES: Final = st.one_of(
    st.sampled_from(
        [
            b"application/json",
            b"application/json; charset=utf-16",
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"",
            b"\xff\xfe",
        ]
    ),
    st.binary(max_size=40),
)
REQUEST_IDS: Final = st.one_of(
    st.sampled_from([b"", b"abc-123", b"x" * 64, b"x" * 65, b"a\tb", b"a\x7fb", b"\xc3\xa9", b"<script>"]),
    st.binary(max_size=80),
    st.text(max_size=80).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
IDEMPOTENCY_KEYS: Final = st.one_of(st.sampled_from([b"", b"key-1", b"x" * 129]), st.binary(max_size=140))
LENGTH_MODES: Final = st.sampled_from(
    ["exact", "absent", "smaller", "larger", "huge", "garbage", "twice", "negative"]
)
OTHER_HEADERS: Final = st.lists(
    st.tuples(st.binary(min_size=1, max_size=20).map(bytes.lower), st.binary(max_size=40)), max_size=3
)


def _content_length(mode: str, body: bytes) -> list[tuple[bytes, bytes]]:
    size = len(body)
    values = {
        "exact": [b"%d" % size],
        "absent": [],
        "smaller": [b"%d" % max(0, size - 1)],
        "larger": [b"%d" % (size + 7)],
        "huge": [b"%d" % (CAP + 1)],
        "garbage": [b"12abc"],
        "twice": [b"%d" % size, b"%d" % (size + 100_000)],
        "negative": [b"-1"],
    }[mode]
    return [(b"content-length", value) for value in values]


_TOKEN: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def deliverable_header(name: bytes, value: bytes) -> tuple[bytes, bytes] | None:
    """The header as the HTTP server can deliver it: a token name (lower-cased, as ASGI has
    it) and a value without control bytes other than tab; None when no name is left."""
    name = bytes(byte for byte in name.lower() if byte in _TOKEN)
    value = bytes(byte for byte in value if byte == 0x09 or 0x20 <= byte != 0x7F)
    return (name, value) if name else None


@st.composite
def hostile_headers(draw: st.DrawFn, body: bytes) -> tuple[tuple[bytes, bytes], ...]:
    headers = _content_length(draw(LENGTH_MODES), body)
    if draw(st.booleans()):
        headers.append((b"content-type", draw(CONTENT_TYPES)))
    if draw(st.booleans()):
        headers.append((b"x-request-id", draw(REQUEST_IDS)))
    if draw(st.integers(0, 3)) == 0:
        headers.append((b"idempotency-key", draw(IDEMPOTENCY_KEYS)))
    headers += draw(OTHER_HEADERS)
    if draw(st.booleans()):
        headers = draw(st.permutations(headers))
    return tuple(header for name, value in headers if (header := deliverable_header(name, value)))


def _plain_headers(body: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"content-length", b"%d" % len(body)),)


COMMAND_PATHS: Final = st.sampled_from(COMMANDS).map(lambda command: PREFIX + command)
PATHS: Final = st.one_of(
    st.sampled_from(
        [
            PREFIX,
            PREFIX + "Update_Group_Counter",
            PREFIX + "update_group_counter/",
            PREFIX + "update_group_counter/extra",
            "/v4/group_open_http_svc//get_group_counter",
            "/v4/group_open_http_svc",
            "/v4/",
            "/",  # (never "": an HTTP request target starts with "/")
            "/healthz/x",
        ]
    ),
    st.text(max_size=40).map(lambda text: PREFIX + text),
    st.text(max_size=40).map(lambda text: "/" + text),
).filter(lambda path: path not in PROBE_PATHS)
# Methods uvicorn's parser (httptools) accepts; one it does not know is refused before the app.
METHODS: Final = st.sampled_from(
    ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "PURGE"]
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> Raw:
    body = draw(BODIES)
    return Raw(
        "POST", draw(COMMAND_PATHS), draw(VALID_QUERIES), _plain_headers(body), body, draw(st.integers(1, 4))
    )


@st.composite
def hostile_queries(draw: st.DrawFn) -> Raw:
    body = _encode(draw(VALID_BODIES), True)
    return Raw("POST", draw(COMMAND_PATHS), draw(QUERIES), _plain_headers(body), body)


@st.composite
def hostile_header_sets(draw: st.DrawFn) -> Raw:
    body = draw(st.one_of(st.builds(_encode, VALID_BODIES, st.just(True)), BODIES))
    return Raw("POST", draw(COMMAND_PATHS), draw(VALID_QUERIES), draw(hostile_headers(body)), body)


@st.composite
def hostile_paths(draw: st.DrawFn) -> Raw:
    body = draw(st.builds(_encode, VALID_BODIES, st.just(True)))
    query = draw(st.one_of(VALID_QUERIES, QUERIES))
    if draw(st.booleans()):
        method, path = "POST", draw(PATHS)
    else:
        method, path = draw(METHODS), draw(st.one_of(PATHS, COMMAND_PATHS))
    return Raw(method, path, query, draw(hostile_headers(body)), body)


@st.composite
def hostile_requests(draw: st.DrawFn) -> Raw:
    """Everything at once: any path and method, query string, headers and body."""
    body = draw(BODIES)
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]))
    path = draw(st.one_of(COMMAND_PATHS, COMMAND_PATHS, PATHS))
    if method != "POST" and path in PROBE_PATHS:
        method = "POST"
    query = draw(st.one_of(VALID_QUERIES, QUERIES))
    return Raw(method, path, query, draw(hostile_headers(body)), body, draw(st.integers(1, 3)))


def _fuzz_settings(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


# Tests ------------------------------------------------------------------------------------------


@_fuzz_settings(EXAMPLES)
@given(raw=hostile_bodies())
def test_hostile_bodies_answer_200_envelopes_never_10002_and_change_nothing_when_failing(
    seeded: Api, raw: Raw
) -> None:
    check(seeded, raw)


@_fuzz_settings(EXAMPLES)
@given(raw=hostile_queries())
def test_hostile_query_strings_answer_200_envelopes_never_10002_and_change_nothing_when_failing(
    seeded: Api, raw: Raw
) -> None:
    check(seeded, raw)


@_fuzz_settings(EXAMPLES)
@given(raw=hostile_header_sets())
def test_hostile_headers_answer_200_or_413_over_the_cap_never_10002_and_change_nothing_when_failing(
    seeded: Api, raw: Raw
) -> None:
    check(seeded, raw)


@_fuzz_settings(EXAMPLES)
@given(raw=hostile_paths())
def test_random_paths_and_methods_answer_200_envelopes_and_change_nothing_when_failing(
    seeded: Api, raw: Raw
) -> None:
    check(seeded, raw)


@pytest.mark.slow
@_fuzz_settings(SLOW_EXAMPLES)
@given(raw=st.one_of(hostile_requests(), hostile_bodies(), hostile_queries(), hostile_header_sets()))
def test_any_hostile_request_never_fails_the_service_nor_changes_the_store_many_examples(
    seeded: Api, raw: Raw
) -> None:
    check(seeded, raw)


# The checks themselves can fail --------------------------------------------------------------------


def test_a_valid_call_through_the_raw_path_succeeds_and_changes_the_store(seeded: Api) -> None:
    body = _encode({"GroupId": "g1", "Mode": "Increase", "GroupCounter": [{"Key": "k", "Value": 1}]}, True)
    before = snapshot(seeded)
    answer = send_raw(
        seeded,
        Raw(
            "POST",
            PREFIX + "update_group_counter",
            _join(_valid_params(REGISTERED_APP), "plus"),
            _plain_headers(body),
            body,
            3,
        ),
    )
    assert answer.status == 200
    assert json.loads(answer.body)["GroupCounter"] == [{"Key": "k", "Value": 8}]
    after = snapshot(seeded)
    assert after != before
    assert seeded.inspector.hget(group_key(REGISTERED_APP, "g1"), "k") == b"8"


def test_an_over_the_cap_body_is_413_and_one_at_the_cap_is_not(seeded: Api) -> None:
    body = _encode({"GroupId": "g1"}, True)
    query = _join(_valid_params(REGISTERED_APP), "plus")
    at_cap, over_cap = _oversized(body, 0), _oversized(body, 1)
    assert len(at_cap) == CAP
    assert (
        send_raw(
            seeded, Raw("POST", PREFIX + "get_group_counter", query, _plain_headers(at_cap), at_cap)
        ).status
        == 200
    )
    answer = send_raw(
        seeded, Raw("POST", PREFIX + "get_group_counter", query, _plain_headers(over_cap), over_cap)
    )
    assert answer.status == 413
    check(seeded, Raw("POST", PREFIX + "get_group_counter", query, _plain_headers(over_cap), over_cap))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", PREFIX + "\n0"),  # what uvicorn makes of GET /v4/group_open_http_svc/%0A0
        ("POST", "/a\nb"),
        ("POST", PREFIX + "a/b\nc"),
    ],
)
def test_a_path_with_an_encoded_newline_answers_the_60009_envelope(
    seeded: Api, method: str, path: str
) -> None:
    """Found by the random paths test: a %0A inside the path must not escape the catch-all route."""
    body = _encode({"GroupId": "g1"}, True)
    query = _join(_valid_params(REGISTERED_APP), "plus")
    answer = send_raw(seeded, Raw(method, path, query, _plain_headers(body), body))
    assert answer.status == 200, answer
    assert json.loads(answer.body)["ErrorCode"] == 60009


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "PURGE"])
def test_a_method_the_http_server_accepts_answers_the_60009_envelope(seeded: Api, method: str) -> None:
    """Found by the random paths test: uvicorn passes these methods on; the reply must be the envelope."""
    body = _encode({"GroupId": "g1"}, True)
    query = _join(_valid_params(REGISTERED_APP), "plus")
    for path in (PREFIX + "get_group_counter", "/elsewhere"):
        answer = send_raw(seeded, Raw(method, path, query, _plain_headers(body), body))
        assert answer.status == 200, (path, answer)
        assert json.loads(answer.body)["ErrorCode"] == 60009
