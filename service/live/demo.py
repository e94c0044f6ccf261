"""/demo: a group's counters live in a browser, and a "like" button an end user presses.

Off by default (`demo = false`); the dev config turns it on, and `make run` prints its
URL. Plain HTML and a few lines of JavaScript, no build step: an EventSource on
watch_group_counter keeps the numbers current, and the button sends an Increase of
`like` with an end user's usersig that this page mints for a random identifier of the
first app that lets end users change `like` (docs/API.md, "End users"). In registered
mode the page creates its group first.

The page holds a usersig valid for an hour: serve it only where anyone may act as an
end user of that app, which is what a dev config is for.
"""

from __future__ import annotations

import html
import json
import secrets
from typing import Final
from urllib.parse import parse_qsl, urlencode

from starlette.types import Receive, Scope, Send

from service.api.auth import mint_usersig
from service.api.call import Call
from service.api.commands import create_group
from service.api.validate import check_custom_group_id
from service.config import App, Settings
from service.errors import ErrorCode, ServiceError
from service.storage.store import Store
from service.wire import CreateGroup

_BASE: Final = "/v4/group_open_http_svc"
_KEY: Final = "like"
_USERSIG_SECONDS: Final = 3600

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
  const data = JSON.parse(event.data);
  counters.clear();
  for (const item of data.GroupCounter) counters.set(item.Key, item.Value);
  version = data.Version;
  status.textContent = data.Resync ? "resynced" : "live";
  render();
}});
events.addEventListener("change", (event) => {{
  const data = JSON.parse(event.data);
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


class DemoPage:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.app = demo_app(settings)
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, content_type, body = await self._page(scope)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", b"%d" % len(body)),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _page(self, scope: Scope) -> tuple[int, bytes, bytes]:
        app = self.app
        if app is None:
            return 404, b"text/plain; charset=utf-8", b"no app of the config lets end users change 'like'\n"
        params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        try:
            group = check_custom_group_id(params.get("GroupId", "demo"), community=False)
            if not app.implicit_groups:
                await create_group(
                    Call(self.store, app), CreateGroup(type="Public", name="demo", group_id=group)
                )
        except ServiceError as exc:
            if exc.code != ErrorCode.GROUP_ID_TAKEN:
                return 400, b"text/plain; charset=utf-8", f"{int(exc.code)}: {exc.info}\n".encode()
        identifier = f"demo-viewer-{secrets.token_hex(4)}"
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
            "watch": f"{_BASE}/watch_group_counter?{query}&{urlencode({'GroupId': group})}",
            "update": f"{_BASE}/update_group_counter?{query}",
        }
        # "</" cannot end the script element from inside the JSON.
        embedded = json.dumps(config).replace("</", "<\\/")
        page = _PAGE.format(group=html.escape(group), config=embedded)
        return 200, b"text/html; charset=utf-8", page.encode()
