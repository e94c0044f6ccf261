"""docs/openapi.json: served at /openapi.json, and every answer of a real service matches it.

schemathesis generates requests for every command of the document (its coverage and
fuzzing phases) against `python -m service` on a redis-server of our own, with a valid
usersig so the bodies reach the commands, and checks each answer: no 5xx, a declared
status code, content type, headers and a body that matches the declared schema.

watch_group_counter is left out of that run: its answer to a watch of a group that
exists is a stream that never ends, so a generated call would hold the run until its
request timeout and then count as a failure. Its refusals and its events are checked
against the document here instead, on streams that end (a destroyed group's).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx2
import jsonschema_rs
import pytest

from service.api.auth import mint_usersig
from service.errors import ErrorCode
from tests.live_support import Event, Watch
from tests.support import (
    ADMIN,
    IMPLICIT_APP,
    REGISTERED_APP,
    SECRET_KEYS,
    RedisServer,
    ServiceProcess,
    usersig_for,
)

ROOT: Final = Path(__file__).resolve().parent.parent
DOCUMENT: Final = ROOT / "docs" / "openapi.json"
COMMANDS: Final = (
    "update_group_counter",
    "get_group_counter",
    "delete_group_counter",
    "create_group",
    "destroy_group",
    "get_appid_group_list",
)
WATCH: Final = "watch_group_counter"
CHECKS: Final = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
# Per operation and phase; the whole run stays within a few seconds per app.
MAX_EXAMPLES: Final = 30


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT.read_text())
    return loaded


def ready(base_url: str) -> bool:
    try:
        return httpx2.get(f"{base_url}/readyz").status_code == 200
    except httpx2.TransportError:
        return False


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    redis_server = RedisServer().start()
    folder = tmp_path_factory.mktemp("openapi")
    config = folder / "config.toml"
    config.write_text(
        f'redis_url = "{redis_server.url}"\nlog_format = "json"\n'
        + "".join(
            f'[[apps]]\nsdkappid = {app}\nsecret_key = "{SECRET_KEYS[app]}"\nadmins = ["{ADMIN}"]\n'
            f'groups = "{mode}"\n'
            for app, mode in ((REGISTERED_APP, "registered"), (IMPLICIT_APP, "implicit"))
        )
    )
    process = ServiceProcess.start(config)
    try:
        process.wait_until(lambda: ready(process.base_url))
        yield process
    finally:
        process.stop()
        redis_server.stop()


def test_every_command_and_the_watch_are_operations_of_the_document() -> None:
    paths = document()["paths"]
    assert sorted(paths) == sorted(f"/v4/group_open_http_svc/{c}" for c in (*COMMANDS, WATCH))
    for command in COMMANDS:
        operation = paths[f"/v4/group_open_http_svc/{command}"]
        # get_appid_group_list takes a GET too, as timsdk sends it (docs/API.md §1).
        methods = ["post", "get"] if command == "get_appid_group_list" else ["post"]
        assert list(operation) == methods, "every command is POST only, but the listing"
        assert operation["post"]["operationId"] == command
    watch = paths[f"/v4/group_open_http_svc/{WATCH}"]
    assert list(watch) == ["get"], "the watch is GET only, for EventSource"
    assert watch["get"]["operationId"] == WATCH
    assert document()["openapi"].startswith("3.1.")


def test_the_documents_name_every_error_code_the_service_has() -> None:
    codes = {int(code) for code in ErrorCode if code != ErrorCode.OK}
    failure = document()["components"]["schemas"]["Failure"]["properties"]["ErrorCode"]
    assert set(failure["enum"]) == codes
    table = (ROOT / "docs" / "API.md").read_text().split("## 6.", 1)[1].split("## 7.", 1)[0]
    listed = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    assert listed == codes | {0}, "docs/API.md §6 lists every code"
    readme = (ROOT / "README.md").read_text().split("### Error codes", 1)[1].split("\n### ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", readme, re.MULTILINE))
    assert {int(code) for code in rows} == codes | {0}, "the README's error table lists every code"
    assert "end user" in rows[str(int(ErrorCode.NOT_ADMIN))], "60010 means something to end users too"


def test_the_service_serves_the_document_at_openapi_json(service: ServiceProcess) -> None:
    response = httpx2.get(f"{service.base_url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == document()


def access_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "service.access":
                lines.append(record)
    return lines


@pytest.mark.parametrize("sdkappid", [REGISTERED_APP, IMPLICIT_APP])
def test_every_answer_to_generated_calls_matches_the_document(
    service: ServiceProcess, tmp_path: Path, sdkappid: int
) -> None:
    # Fixed, valid query parameters: the generated bodies and headers reach the commands.
    usersig = mint_usersig(sdkappid, SECRET_KEYS[sdkappid], ADMIN)
    settings = tmp_path / "schemathesis.toml"
    settings.write_text(
        "[parameters]\n"
        f'"query.sdkappid" = {sdkappid}\n'
        f'"query.identifier" = "{ADMIN}"\n'
        f'"query.usersig" = "{usersig}"\n'
        '"query.random" = 7\n'
        '"query.contenttype" = "json"\n'
    )
    before = len(access_lines(service.log))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(settings), "--no-color"),
            *("run", str(DOCUMENT), "--url", service.base_url, "--checks", ",".join(CHECKS)),
            *("--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--workers", "1"),
            *("--phases", "examples,coverage,fuzzing", "--request-timeout", "10"),
            *("--exclude-operation-id", WATCH),  # an endless stream: see the module's docstring
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # Every operation but the watch: the six commands and the listing as a GET.
    assert re.search(r"Selected: 7/8", output), output[-3000:]
    assert re.search(r"Tested: 7\b", output), output[-3000:]

    # The run reached the commands themselves: with implicit groups every command succeeded
    # at least once; with registered ones groups were created and counter calls on groups
    # that were never created reached the group check (10010).
    calls = access_lines(service.log)[before:]
    codes = Counter((line["command"], line["error_code"]) for line in calls)
    if sdkappid == IMPLICIT_APP:
        assert all(codes[(command, 0)] for command in COMMANDS), codes
    else:
        assert codes[("create_group", 0)], codes
        assert any(codes[(command, 10010)] for command in COMMANDS), codes
    assert not [line for line in calls if line["error_code"] == 10002], "internal errors"


# ---- watch_group_counter against the document, on streams that end ----


def validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """`schema`, with the document's components beside it so its `$ref`s resolve."""
    return jsonschema_rs.validator_for({**schema, "components": document()["components"]})


def watch_answer(media_type: str) -> dict[str, Any]:
    """What the document says the watch's HTTP 200 holds as `media_type`."""
    operation = document()["paths"][f"/v4/group_open_http_svc/{WATCH}"]["get"]
    answer: dict[str, Any] = operation["responses"]["200"]["content"][media_type]
    return answer


def check_event(event: Event) -> None:
    """The event's SSE fields against the stream's item schema, and its data against the
    schema the document names for that event."""
    items = watch_answer("text/event-stream")["x-itemSchema"]
    validator(items).validate({"id": event.id, "event": event.event, "data": json.dumps(event.data)})
    (branch,) = [b for b in items["oneOf"] if b["properties"]["event"]["const"] == event.event]
    validator(branch["properties"]["data"]["contentSchema"]).validate(event.data)
    version = event.data["Version"]
    assert event.id == "0" if version == 0 else event.id.endswith(f"-{version}"), event


def post(service: ServiceProcess, command: str, body: dict[str, Any]) -> dict[str, Any]:
    usersig = mint_usersig(REGISTERED_APP, SECRET_KEYS[REGISTERED_APP], ADMIN)
    query = f"sdkappid={REGISTERED_APP}&identifier={ADMIN}&usersig={usersig}&random=7&contenttype=json"
    reply: dict[str, Any] = httpx2.post(
        f"{service.base_url}/v4/group_open_http_svc/{command}?{query}", json=body, timeout=10
    ).json()
    assert reply["ErrorCode"] == 0, reply
    return reply


@pytest.mark.parametrize(
    ("group_id", "overrides", "code"),
    [
        ("never-created", {}, 10010),
        ("caf%C3%A9", {}, 10015),
        ("g&GroupId=h", {}, 60002),
        ("g", {"usersig": "not-a-usersig"}, 70003),
        ("g", {"usersig": usersig_for(REGISTERED_APP, "stranger"), "identifier": "stranger"}, 60010),
        ("g", {"usersig": None}, 70002),
    ],
    ids=[
        "no-such-group",
        "malformed-group-id",
        "group-id-twice",
        "bad-usersig",
        "not-an-admin",
        "no-usersig",
    ],
)
def test_a_refused_watch_answers_the_documents_json_refusal(
    service: ServiceProcess, group_id: str, overrides: dict[str, Any], code: int
) -> None:
    watch = Watch(service.port, group_id, None, REGISTERED_APP, overrides)
    try:
        assert watch.response.status == 200
        assert watch.response.getheader("content-type") == "application/json"
        assert watch.response.getheader("x-request-id")
        assert watch.reply is not None
        validator(watch_answer("application/json")["schema"]).validate(watch.reply)
        assert watch.reply["ErrorCode"] == code
    finally:
        watch.close()


def test_a_watch_streams_the_events_the_document_describes(service: ServiceProcess) -> None:
    post(service, "create_group", {"Type": "Public", "Name": "n", "GroupId": "streamed"})
    watch = Watch(service.port, "streamed", None, REGISTERED_APP, {})
    try:
        headers = dict(watch.response.getheaders())
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        assert headers["x-request-id"]
        first = watch.events(1)[0]
        extremes = {"max": 2**63 - 1, "min": -(2**63)}
        post(
            service,
            "update_group_counter",
            {
                "GroupId": "streamed",
                "GroupCounter": [{"Key": key, "Value": value} for key, value in extremes.items()],
            },
        )
        post(service, "delete_group_counter", {"GroupId": "streamed", "GroupCounterKeys": ["min"]})
        post(service, "destroy_group", {"GroupId": "streamed"})
        events = [first, *watch.events(3)]
        assert watch.next() is None, "destroyed ends the stream"
    finally:
        watch.close()
    assert [event.event for event in events] == ["snapshot", "change", "change", "destroyed"]
    assert first.id == "0"
    for event in events:
        check_event(event)

    # Back with an id the group has moved on from: a snapshot flagged Resync.
    post(service, "create_group", {"Type": "Public", "Name": "n", "GroupId": "streamed"})
    post(service, "update_group_counter", {"GroupId": "streamed", "GroupCounter": [{"Key": "k", "Value": 1}]})
    again = Watch(service.port, "streamed", events[1].id, REGISTERED_APP, {})
    try:
        resync = again.events(1)[0]
    finally:
        again.close()
    assert (resync.event, resync.data["Resync"]) == ("snapshot", True)
    check_event(resync)
