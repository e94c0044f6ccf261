"""The ceiling: the simplest Starlette route that reads the body and returns a fixed JSON reply.

`make bench` serves it with exactly the service's server settings; the service's
throughput is quoted as a ratio of this one's, measured side by side.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_REPLY = (
    b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"",'
    b'"GroupCounter":[{"Key":"a","Value":1},{"Key":"b","Value":2}]}'
)


async def endpoint(request: Request) -> Response:
    await request.body()
    return Response(_REPLY, media_type="application/json")


app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST"])])
