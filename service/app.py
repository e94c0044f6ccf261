"""The Starlette app: one route per call, read top to bottom.

path (60009) → query string → usersig → admin → body → the command's one script.
`_failure` is the one place a `ServiceError` becomes the wire envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.auth import UsersigVerifier
from service.body import BodyTooLarge, read_body
from service.commands import COMMANDS
from service.config import Settings
from service.errors import ErrorCode, ServiceError
from service.query import parse_query
from service.store import EMBEDDED_URL, Store, connect
from service.urls import redacted
from service.wire import encode_error

log = logging.getLogger("service")

COMMAND_PREFIX: Final = "/v4/group_open_http_svc/"
_JSON: Final = "application/json"


def _failure(code: ErrorCode, info: str, status: int = 200) -> Response:
    return Response(encode_error(code, info), status_code=status, media_type=_JSON)


class Service:
    """What a request needs: the settings, the verifier and the store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.verifier = UsersigVerifier(
            {sdkappid: app.secret_key for sdkappid, app in settings.apps.items()},
            cache_size=settings.config.usersig_cache_size,
        )

    async def handle(self, request: Request) -> Response:
        try:
            command = COMMANDS.get(request.path_params["command"])
            if command is None:
                raise ServiceError(ErrorCode.UNKNOWN_COMMAND, f"unknown command path {request.url.path!r}")
            caller = parse_query(request.scope["query_string"], self.settings.apps)
            self.verifier.verify(caller.usersig, caller.app.sdkappid, caller.identifier)
            if caller.identifier not in caller.app.admins:
                raise ServiceError(
                    ErrorCode.NOT_ADMIN, f"identifier {caller.identifier!r} is not an admin of the app"
                )
            body = await read_body(request, self.settings.config.max_body_bytes)
            reply = await command(self.store, caller.app, body)
        except ServiceError as exc:
            return _failure(exc.code, exc.info)
        except BodyTooLarge as exc:
            return _failure(ErrorCode.BAD_BODY, str(exc), status=413)
        except Exception:
            log.exception("unexpected fault in %s", request.url.path)
            return _failure(ErrorCode.INTERNAL, "internal error")
        return Response(reply, media_type=_JSON)


async def _unknown_path(request: Request) -> Response:
    return _failure(ErrorCode.UNKNOWN_COMMAND, f"unknown command path {request.method} {request.url.path!r}")


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    """The ASGI app; without `store`, one is made from `settings.redis_url`."""
    config = settings.config
    service = Service(
        settings,
        store
        or Store(
            connect(
                settings.redis_url, timeout=config.redis_timeout, max_connections=config.redis_max_connections
            )
        ),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if settings.redis_url == EMBEDDED_URL:
            log.warning(
                "using the embedded in-process store (memory://): nothing is kept on exit "
                "and it serves a single process only"
            )
        # Serve at once and report Redis's state, rather than block start-up: a pod
        # that answers and says why it is not ready is easier to operate than a crash loop.
        waiter = asyncio.create_task(service.store.wait_until_reachable(redacted(settings.redis_url)))
        try:
            yield
        finally:
            waiter.cancel()
            await service.store.close()

    return Starlette(
        routes=[
            Route(COMMAND_PREFIX + "{command}", service.handle, methods=["POST"]),
            Route(
                "/{path:path}",
                _unknown_path,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
            ),
        ],
        lifespan=lifespan,
    )
