"""For the live-counter tests: the app served by a real uvicorn in a thread, an SSE client.

Starlette's TestClient reads a whole response before it returns, so a stream that
never ends needs a real server; the client reads events off a real socket as an
EventSource would (http.client undoes the chunked encoding).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from service.app import create_app
from service.config import Settings
from service.storage.store import Store
from tests.support import REGISTERED_APP, free_port, post_command, query


@dataclass
class Event:
    event: str
    id: str
    data: dict[str, Any]


@dataclass
class Served:
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    opened: list[Watch] = field(default_factory=list)

    def stop(self) -> None:
        """Shut the server down as a signal would, whatever streams are open."""
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def post(self, command: str, body: dict[str, Any], sdkappid: int = REGISTERED_APP) -> dict[str, Any]:
        return post_command(self.port, command, body, sdkappid)

    def update(self, group_id: str, counters: dict[str, int], mode: str = "Set", **kw: Any) -> dict[str, Any]:
        items = [{"Key": k, "Value": v} for k, v in counters.items()]
        return self.post(
            "update_group_counter", {"GroupId": group_id, "Mode": mode, "GroupCounter": items}, **kw
        )

    def create(self, group_id: str) -> None:
        reply = self.post("create_group", {"Type": "Public", "Name": "g", "GroupId": group_id})
        assert reply["ErrorCode"] == 0, reply

    def counters(self, group_id: str, sdkappid: int = REGISTERED_APP) -> dict[str, int]:
        reply = self.post("get_group_counter", {"GroupId": group_id}, sdkappid)
        assert reply["ErrorCode"] == 0, reply
        return {item["Key"]: item["Value"] for item in reply["GroupCounter"]}

    def watch(
        self,
        group_id: str,
        *,
        last_event_id: str | None = None,
        sdkappid: int = REGISTERED_APP,
        **overrides: Any,
    ) -> Watch:
        watch = Watch(self.port, group_id, last_event_id, sdkappid, overrides)
        self.opened.append(watch)
        return watch


class Watch:
    """One watch_group_counter call: `reply` holds the envelope when it was refused (as
    JSON, or as the `refused` event of a refusal to retry)."""

    def __init__(
        self, port: int, group_id: str, last_event_id: str | None, sdkappid: int, overrides: dict[str, Any]
    ) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        params = query(sdkappid, **overrides) + "&GroupId=" + group_id
        self.conn.request(
            overrides.pop("method", "GET"),
            f"/v4/group_open_http_svc/watch_group_counter?{params}",
            headers=headers,
        )
        self.response = self.conn.getresponse()
        self.reply: dict[str, Any] | None = None
        if not self.response.getheader("content-type", "").startswith("text/event-stream"):
            self.reply = json.loads(self.response.read())
        elif self.response.getheader("content-length") is not None:
            # A refusal to retry: `retry:`, one `refused` event with the envelope, the end.
            body = self.response.read().decode()
            self.reply = json.loads(body.split("\ndata: ", 1)[1].split("\n", 1)[0])

    def next(self) -> Event | None:
        """The next event (comments skipped); None at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if "data" in fields:
                    return Event(
                        fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])
                    )
                fields = {}
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(": ")
            fields[name] = value

    def events(self, count: int) -> list[Event]:
        found: list[Event] = []
        for _ in range(count):
            event = self.next()
            assert event is not None, f"the stream ended after {found}"
            found.append(event)
        return found

    def close(self) -> None:
        self.conn.close()


@contextmanager
def serving(settings: Settings, store: Store) -> Iterator[Served]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, store),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped"
        time.sleep(0.01)
    served = Served(port, server, thread)
    try:
        yield served
    finally:
        for watch in served.opened:
            watch.close()
        server.should_exit = True
        thread.join(15)


@dataclass
class Tape:
    """What one watcher saw, and whether it was consistent: every change continues
    the version before it, or a snapshot (resync) replaces the state."""

    state: dict[str, int] = field(default_factory=dict)
    version: int = -1
    id: str = ""
    resyncs: int = 0
    ended: bool = False
    versions: list[int] = field(default_factory=list)

    def play(self, event: Event) -> None:
        data = event.data
        if event.event == "snapshot":
            if self.version >= 0:
                assert data["Resync"], "a later snapshot must be flagged as a resync"
                self.resyncs += 1
            self.state = {item["Key"]: item["Value"] for item in data["GroupCounter"]}
        elif event.event == "change":
            assert data["Version"] == self.version + 1, (self.version, data)
            for item in data["GroupCounter"]:
                self.state[item["Key"]] = item["Value"]
            for key in data["DeletedKeys"]:
                del self.state[key]
        else:
            assert event.event == "destroyed", event
            self.ended = True
        self.version = data["Version"]
        self.id = event.id
        self.versions.append(self.version)

    def play_until(self, watch: Watch, state: dict[str, int]) -> None:
        """Play `watch`'s events until this tape holds `state` (the group's final state)."""
        while self.state != state:
            event = watch.next()
            assert event is not None, f"the stream ended at {self.state}, short of {state}"
            self.play(event)
