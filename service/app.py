"""The Starlette app: the command endpoint, the probes, /metrics, and 60009 for the rest.

The path of a call is `endpoint.py`; this module wires routes and the lifespan
(watch Redis come up, close it at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from service.config import Settings
from service.endpoint import CommandEndpoint
from service.errors import ErrorCode
from service.lifecycle import mark_draining_on_signals, tune_gc_for_serving
from service.metrics import flush_every_second, metrics_endpoint
from service.probes import Readiness, healthz
from service.store import EMBEDDED_URL, Store, open_store
from service.urls import redacted
from service.wire import encode_error

log = logging.getLogger("service")

COMMAND_PREFIX: Final = "/v4/group_open_http_svc/"
_JSON: Final = "application/json"
_ALL_METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _failure(code: ErrorCode, info: str) -> Response:
    return Response(encode_error(code, info), media_type=_JSON)


async def _unknown_path(request: Request) -> Response:
    return _failure(ErrorCode.UNKNOWN_COMMAND, f"unknown command path {request.method} {request.url.path!r}")


def create_app(settings: Settings, store: Store | None = None) -> Router:
    """The ASGI app; without `store`, one is made from `settings.redis_url`."""
    config = settings.config
    store = store or open_store(
        settings.redis_url, timeout=config.redis_timeout, max_pending=config.redis_max_pending
    )
    readiness = Readiness(store)

    @contextlib.asynccontextmanager
    async def lifespan(_: Router) -> AsyncIterator[None]:
        if settings.redis_url == EMBEDDED_URL:
            log.warning(
                "using the embedded in-process store (memory://): nothing is kept on exit "
                "and it serves a single process only"
            )
        # Serve at once and report Redis's state, rather than block start-up: a pod
        # that answers and says why it is not ready is easier to operate than a crash loop.
        mark_draining_on_signals()
        tune_gc_for_serving()
        waiter = asyncio.create_task(store.wait_until_reachable(redacted(settings.redis_url)))
        flusher = asyncio.create_task(flush_every_second())
        try:
            yield
        finally:
            waiter.cancel()
            flusher.cancel()
            await store.close()

    # A bare Router rather than Starlette(): the app's error and exception middlewares
    # wrap every call (one builds a Request per call) and would never fire, because
    # the command endpoint answers every failure itself, as a value.
    return Router(
        routes=[
            Route(COMMAND_PREFIX + "{command}", CommandEndpoint(settings, store), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readiness.check, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/{path:path}", _unknown_path, methods=_ALL_METHODS),
        ],
        lifespan=lifespan,
    )
