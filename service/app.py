"""The Starlette app: one route per call, read top to bottom.

path (60009) → query string → usersig → admin → body → the command's one script.
`_failure` is the one place a `ServiceError` becomes the wire envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
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
from service.lifecycle import mark_draining_on_signals
from service.metrics import IN_FLIGHT, REQUEST_SECONDS, REQUESTS, metrics_endpoint
from service.probes import Readiness, healthz
from service.query import parse_query
from service.store import EMBEDDED_URL, Store, open_store
from service.urls import redacted
from service.wire import encode_error

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

COMMAND_PREFIX: Final = "/v4/group_open_http_svc/"
_JSON: Final = "application/json"
_ALL_METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _failure(code: ErrorCode, info: str, status: int = 200) -> Response:
    return Response(encode_error(code, info), status_code=status, media_type=_JSON)


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= 64 and given.isascii() and given.isprintable():
        return given
    return os.urandom(8).hex()


class Service:
    """What a call needs: the settings, the verifier and the store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.verifier = UsersigVerifier(
            {sdkappid: app.secret_key for sdkappid, app in settings.apps.items()},
            cache_size=settings.config.usersig_cache_size,
        )

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["command"]
        sdkappid: int | None = None
        group_id: str | None = None
        code = ErrorCode.OK
        IN_FLIGHT.inc()
        try:
            command = COMMANDS.get(name)
            if command is None:
                raise ServiceError(ErrorCode.UNKNOWN_COMMAND, f"unknown command path {request.url.path!r}")
            caller = parse_query(request.scope["query_string"], self.settings.apps)
            sdkappid = caller.app.sdkappid
            self.verifier.verify(caller.usersig, sdkappid, caller.identifier)
            if caller.identifier not in caller.app.admins:
                raise ServiceError(
                    ErrorCode.NOT_ADMIN, f"identifier {caller.identifier!r} is not an admin of the app"
                )
            body = command.decode(await read_body(request, self.settings.config.max_body_bytes))
            group_id = getattr(body, "group_id", None)
            response = Response(await command.run(self.store, caller.app, body), media_type=_JSON)
        except ServiceError as exc:
            code = exc.code
            response = _failure(exc.code, exc.info)
        except BodyTooLarge as exc:
            code = ErrorCode.BAD_BODY
            response = _failure(code, str(exc), status=413)
        except Exception:
            code = ErrorCode.INTERNAL
            log.exception("unexpected fault in %s", name)
            response = _failure(code, "internal error")
        finally:
            IN_FLIGHT.dec()
        elapsed = time.perf_counter() - started
        label = name if command is not None else "unknown"
        REQUESTS.labels(label, str(int(code))).inc()
        REQUEST_SECONDS.labels(label).observe(elapsed)
        request_id = _request_id(request)
        response.headers["x-request-id"] = request_id
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "call",
                extra={
                    "request_id": request_id,
                    "command": label,
                    "sdkappid": sdkappid,
                    "group_id": group_id,
                    "error_code": int(code),
                    "latency_ms": round(elapsed * 1000, 3),
                },
            )
        return response


async def _unknown_path(request: Request) -> Response:
    return _failure(ErrorCode.UNKNOWN_COMMAND, f"unknown command path {request.method} {request.url.path!r}")


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    """The ASGI app; without `store`, one is made from `settings.redis_url`."""
    config = settings.config
    store = store or open_store(
        settings.redis_url, timeout=config.redis_timeout, max_pending=config.redis_max_pending
    )
    service = Service(settings, store)
    readiness = Readiness(store)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if settings.redis_url == EMBEDDED_URL:
            log.warning(
                "using the embedded in-process store (memory://): nothing is kept on exit "
                "and it serves a single process only"
            )
        # Serve at once and report Redis's state, rather than block start-up: a pod
        # that answers and says why it is not ready is easier to operate than a crash loop.
        mark_draining_on_signals()
        waiter = asyncio.create_task(store.wait_until_reachable(redacted(settings.redis_url)))
        try:
            yield
        finally:
            waiter.cancel()
            await store.close()

    return Starlette(
        routes=[
            Route(COMMAND_PREFIX + "{command}", service.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readiness.check, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/{path:path}", _unknown_path, methods=_ALL_METHODS),
        ],
        lifespan=lifespan,
    )
