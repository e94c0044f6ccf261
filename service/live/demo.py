"""/demo: a group's counters live in a browser, and a "like" button an end user presses.

Off by default (`demo = false`); the dev config turns it on, and `make run` prints its
URL. Plain HTML and a few lines of JavaScript, no build step: an EventSource on
watch_group_counter keeps the numbers current, and the button sends an Increase of
`like` with an end user's usersig that this page mints for the browser's identifier of
the first app that lets end users change `like` (docs/API.md, "End users").

Hostile is normal (issue 25): a GET changes nothing, so a group that does not exist yet
(registered mode) gets a page with a button that POSTs its creation; every page load and
creation counts in the demo's own one-second window (`demo_rate_limit`, across
replicas), never in the app's `rate_limit`; a browser keeps one identifier (an HttpOnly,
SameSite=Strict cookie), so reloading does not reset its end-user limits, and a POST
without that cookie (another site's form) creates nothing; the JSON embedded in the page
has `<`, `>` and `&` escaped. Values are read as BigInt (JSON.parse's source text), so
an int64 beyond 2^53 shows exactly.

The page holds a usersig valid for an hour: serve it only where anyone may act as an
end user of that app, which is what a dev config is for.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from typing import Final
from urllib.parse import parse_qsl, quote, urlencode

import msgspec
from starlette.types import Receive, Scope, Send

from service.api.auth import mint_usersig
from service.api.call import Call
from service.api.commands import create_group
from service.api.listing import group_type
from service.api.validate import check_custom_group_id
from service.config import App, Settings
from service.errors import ErrorCode, ServiceError
from service.storage import scripts
from service.storage.keys import demo_limit_key
from service.storage.scripts import ScriptCall
from service.storage.store import Store
from service.wire import CreateGroup

_BASE: Final = "/v4/group_open_http_svc"
_KEY: Final = "like"
_USERSIG_SECONDS: Final = 3600
_COOKIE: Final = "demo_viewer"
_COOKIE_VALUE: Final = re.compile(r"[0-9a-f]{16}")
_COOKIE_SECONDS: Final = 86400
_TEXT: Final = b"text/plain; charset=utf-8"
_HTML: Final = b"text/html; charset=utf-8"
# JSON inside a <script> element: none of these may appear raw (`</script>`, `<!--`).
_SCRIPT_UNSAFE: Final = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})

_CREATE_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Live counters: {group}</title>
<style>body {{ font: 18px system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; }}</style>
</head>
<body>
<h1>Group <code>{group}</code></h1>
<p id="status">the group does not exist yet</p>
<form method="post" action="/demo?{query}"><button id="create" type="submit">Create it</button></form>
</body>
</html>
"""

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Live counters: {group}</title>
<style>
  body {{ font: 18px system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; }}
  #like-count {{ font-size: 4rem; font-weight: bold; }}
  table {{ border-collapse: collapse; margin-top: 1rem; }}
  td {{ padding: .2rem .8rem; border-bottom: 1px solid #ddd; }}
  #status {{ color: #666; }}
</style>
</head>
<body>
<h1>Group <code>{group}</code></h1>
<p><span id="like-count">0</span> likes <button id="like" type="button">Like</button></p>
<table id="counters"></table>
<p id="status">connecting...</p>
<script type="application/json" id="demo-config">{config}</script>
<script>
"use strict";
const config = JSON.parse(document.getElementById("demo-config").textContent);
// A Value is an int64: a Number would round it beyond 2^53, so it is read from its
// source text as a BigInt (where the browser gives the reviver the source).
const parseEvent = (text) => JSON.parse(text, (key, value, context) =>
  key === "Value" && typeof value === "number" && context !== undefined ? BigInt(context.source) : value);
const counters = new Map();
const status = document.getElementById("status");
let version = 0;

function render() {{
  document.getElementById("like-count").textContent = String(counters.get(config.key) ?? 0);
  const rows = [...counters.keys()].sort().map((key) => {{
    const row = document.createElement("tr");
    for (const text of [key, String(counters.get(key))]) {{
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }}
    return row;
  }});
  document.getElementById("counters").replaceChildren(...rows);
  document.body.dataset.version = String(version);
}}

const events = new EventSource(config.watch);
events.addEventListener("snapshot", (event) => {{
  const data = parseEvent(event.data);
  counters.clear();
  for (const item of data.GroupCounter) counters.set(item.Key, item.Value);
  version = data.Version;
  status.textContent = data.Resync ? "resynced" : "live";
  render();
}});
events.addEventListener("change", (event) => {{
  const data = parseEvent(event.data);
  for (const item of data.GroupCounter) counters.set(item.Key, item.Value);
  for (const key of data.DeletedKeys) counters.delete(key);
  version = data.Version;
  render();
}});
events.addEventListener("destroyed", () => {{
  status.textContent = "the group was destroyed";
  events.close();
}});
events.onerror = () => {{ status.textContent = "reconnecting..."; }};

document.getElementById("like").addEventListener("click", async () => {{
  const body = {{GroupId: config.group, Mode: "Increase", GroupCounter: [{{Key: config.key, Value: 1}}]}};
  const reply = await (await fetch(config.update, {{method: "POST", body: JSON.stringify(body)}})).json();
  if (reply.ErrorCode !== 0) status.textContent = `like refused: ${{reply.ErrorCode}} ${{reply.ErrorInfo}}`;
}});
</script>
</body>
</html>
"""


def demo_app(settings: Settings) -> App | None:
    """The app the page acts for: the first whose end users may change `like`."""
    return next((app for app in settings.apps.values() if app.end_users and _KEY in app.client_keys), None)


def _viewer(scope: Scope) -> str | None:
    """The browser's identifier from its cookie, when it is one this page gave."""
    for name, value in scope["headers"]:
        if name == b"cookie":
            cookies: str = value.decode("latin-1")
            for part in cookies.split(";"):
                key, _, held = part.strip().partition("=")
                if key == _COOKIE and _COOKIE_VALUE.fullmatch(held):
                    return held
    return None


class _Answer(msgspec.Struct, frozen=True):
    status: int
    content_type: bytes
    body: bytes
    headers: list[tuple[bytes, bytes]] = []


def _text(status: int, text: str, *headers: tuple[bytes, bytes]) -> _Answer:
    return _Answer(status, _TEXT, text.encode(), list(headers))


class DemoPage:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.app = demo_app(settings)
        self.store = store
        self.rate_limit = settings.config.demo_rate_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            answer = await self._answer(scope)
        except ServiceError as exc:  # the store: nothing the viewer did
            answer = _text(503, f"{int(exc.code)}: {exc.info}\n", (b"retry-after", b"1"))
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (b"content-type", answer.content_type),
                    (b"content-length", b"%d" % len(answer.body)),
                    (b"cache-control", b"no-store"),
                    *answer.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    async def _answer(self, scope: Scope) -> _Answer:
        app = self.app
        if app is None:
            return _text(404, "no app of the config lets end users change 'like'\n")
        params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        try:
            group = check_custom_group_id(params.get("GroupId", "demo"), community=False)
        except ServiceError as exc:
            return _text(400, f"{int(exc.code)}: {exc.info}\n")
        reply = await self.store.run(
            ScriptCall(scripts.RATE_LIMIT, [demo_limit_key(app.sdkappid)], [self.rate_limit])
        )
        if reply[0] != 0:
            return _text(
                429, f"the demo page allows {self.rate_limit} loads a second; retry\n", (b"retry-after", b"1")
            )
        viewer = _viewer(scope)
        if scope["method"] == "POST":
            return await self._create(app, group, viewer)
        headers: list[tuple[bytes, bytes]] = []
        if viewer is None:
            viewer = secrets.token_hex(8)
            cookie = f"{_COOKIE}={viewer}; Path=/demo; Max-Age={_COOKIE_SECONDS}; HttpOnly; SameSite=Strict"
            headers.append((b"set-cookie", cookie.encode()))
        if not app.implicit_groups and await group_type(self.store, app.sdkappid, group) is None:
            page = _CREATE_PAGE.format(
                group=html.escape(group), query=html.escape(urlencode({"GroupId": group}))
            )
            return _Answer(200, _HTML, page.encode(), headers)
        return _Answer(200, _HTML, self._page(app, group, f"demo-viewer-{viewer}").encode(), headers)

    async def _create(self, app: App, group: str, viewer: str | None) -> _Answer:
        """The group (registered mode), then back to its page. Only from a browser that
        loaded the page: the SameSite=Strict cookie is not sent with another site's form."""
        if viewer is None:
            return _text(403, "load /demo first: a group is created from its page\n")
        if not app.implicit_groups:
            # Counted in the demo's window above, not in the app's rate limit.
            unlimited = msgspec.structs.replace(app, rate_limit=0)
            try:
                await create_group(
                    Call(self.store, unlimited), CreateGroup(type="Public", name="demo", group_id=group)
                )
            except ServiceError as exc:
                if exc.code != ErrorCode.GROUP_ID_TAKEN:
                    raise
        location = "/demo?" + urlencode({"GroupId": group}, quote_via=quote)
        return _Answer(303, _TEXT, b"", [(b"location", location.encode())])

    @staticmethod
    def _page(app: App, group: str, identifier: str) -> str:
        usersig = mint_usersig(app.sdkappid, app.secret_key, identifier, expire=_USERSIG_SECONDS)
        query = urlencode(
            {
                "sdkappid": app.sdkappid,
                "identifier": identifier,
                "usersig": usersig,
                "random": secrets.randbelow(2**32),
                "contenttype": "json",
            }
        )
        config = {
            "group": group,
            "key": _KEY,
            "identifier": identifier,
            "watch": f"{_BASE}/watch_group_counter?{query}&{urlencode({'GroupId': group})}",
            "update": f"{_BASE}/update_group_counter?{query}",
        }
        embedded = json.dumps(config).translate(_SCRIPT_UNSAFE)
        return _PAGE.format(group=html.escape(group), config=embedded)
