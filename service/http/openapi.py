"""GET /openapi.json: the OpenAPI 3.1 description of the commands (docs/openapi.json).

The wheel carries the file as service/openapi.json (pyproject's force-include); a source
checkout reads docs/openapi.json itself, so there is one copy to edit.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from service.ops.build import version


def _source() -> bytes:
    packaged = resources.files("service").joinpath("openapi.json")
    if packaged.is_file():
        return packaged.read_bytes()
    return (Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_bytes()


@functools.cache
def _document() -> bytes:
    """The document with `info.version` the running build's, whatever the file says."""
    document = json.loads(_source())
    document["info"]["version"] = version()
    return json.dumps(document, ensure_ascii=False, indent=2).encode()


async def openapi_document(_: Request) -> Response:
    return Response(_document(), media_type="application/json")
