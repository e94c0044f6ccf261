"""The Starlette app: the command endpoint, the probes, /metrics, /openapi.json, and 60009 for the rest.

The path of a call is `endpoint.py`; this module wires routes and the lifespan
(watch Redis come up, close it at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router, request_response
from starlette.types import Receive, Scope, Send

from service.api.endpoint import CommandEndpoint
from service.config import Settings
from service.errors import ErrorCode, ServiceError
from service.http.direct import Handler
from service.http.exchange import send_reply
from service.http.openapi import openapi_document
from service.http.probes import Readiness, healthz
from service.live.demo import DemoPage
from service.live.watch import COMMAND as WATCH_COMMAND
from service.live.watch import WatchEndpoint
from service.ops.access_log import ACCESS
from service.ops.build import revision, version
from service.ops.lifecycle import mark_draining_on_signals, tune_gc_for_serving
from service.ops.metrics import flush_every_second, metrics_endpoint, publish_build_info
from service.ops.metrics_server import serve_metrics
from service.storage.format import EXIT_WRONG_FORMAT, StorageFormatError, check_format
from service.storage.store import EMBEDDED_URL, Store, open_store
from service.storage.urls import redacted
from service.wire import encode_error

log = logging.getLogger("service")

COMMAND_PREFIX: Final = "/v4/group_open_http_svc/"
_WATCH_PATH: Final = COMMAND_PREFIX + WATCH_COMMAND


async def unknown_path(scope: Scope, receive: Receive, send: Send) -> None:
    """60009 for every path no route has (the Router's default)."""
    if scope["type"] != "http":
        return
    await send_reply(
        send, 200, encode_error(ErrorCode.UNKNOWN_COMMAND, f"unknown command path {scope['path']!r}")
    )


class AnyMethod:
    """A probe as a plain ASGI app: a Route then matches every method, where for a
    function endpoint Starlette allows only GET and HEAD and answers others 405."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self._app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class CommandFirst:
    """Commands straight to their endpoint; every other path through Starlette's router.

    A command path is one fixed prefix and a name: a prefix test and a dict lookup
    find it, where the router would try each route's regex and build a child scope
    on every call (a tenth of a call's cost in our process, measured).
    """

    def __init__(self, commands: CommandEndpoint, watch: WatchEndpoint, router: Router) -> None:
        self.commands = commands
        self.watch = watch
        self.router = router

    def direct_routes(self, method: str, path: str) -> Handler | None:
        """What the HTTP edge answers below ASGI (service/http/direct.py): every command
        path but the watch stream's, in any method but HEAD (whose answer has no body)."""
        if method != "HEAD" and path.startswith(COMMAND_PREFIX) and path != _WATCH_PATH:
            return self.commands.serve
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(COMMAND_PREFIX):
            if scope["path"] == _WATCH_PATH:
                await self.watch(scope, receive, send)
            else:
                await self.commands(scope, receive, send)
        else:
            await self.router(scope, receive, send)


async def _refuse_a_format_it_cannot_serve(store: Store) -> None:
    """Once Redis answers: a process that must not serve the data's format exits (code 3)."""
    while True:
        try:
            await check_format(store)
            return
        except StorageFormatError as exc:
            log.critical("refusing to serve: %s", exc)
            ACCESS.flush()
            logging.shutdown()
            os._exit(EXIT_WRONG_FORMAT)
        except ServiceError:
            await asyncio.sleep(1.0)  # Redis went away again: the check waits for it


def create_app(
    settings: Settings,
    store: Store | None = None,
    metrics_address: tuple[str, int] | None = None,
    *,
    check_storage_format: bool = False,
) -> CommandFirst:
    """The ASGI app; without `store`, one is made from `settings.redis_url`.

    With `metrics_address` (host, port), /metrics is served there instead of on the API port.
    With `check_storage_format`, the process checks the storage format once Redis answers and exits
    if it must not serve it (`serve` asks for it when Redis did not answer its own check).
    """
    publish_build_info(version(), revision())
    config = settings.config
    store = store or open_store(
        settings.redis_url,
        timeout=config.redis_timeout,
        max_pending=config.redis_max_pending,
        ack=config.ack_policy(),
    )
    store.live = config.live_counters
    store.record_ttl = config.idempotency_ttl
    readiness = Readiness(store)
    commands = CommandEndpoint(settings, store, COMMAND_PREFIX)
    watch = WatchEndpoint(settings, store, commands.access, commands.request_ids)

    async def reach() -> None:
        await store.wait_until_reachable(redacted(settings.redis_url))
        if check_storage_format:
            await _refuse_a_format_it_cannot_serve(store)

    @contextlib.asynccontextmanager
    async def lifespan(_: Router) -> AsyncIterator[None]:
        if settings.redis_url == EMBEDDED_URL:
            log.warning(
                "using the embedded in-process store (memory://): nothing is kept on exit "
                "and it serves a single process only"
            )
        # Serve at once and report Redis's state, rather than block start-up: a pod
        # that answers and says why it is not ready is easier to operate than a crash loop.
        mark_draining_on_signals(on_drain=watch.feeds.end_all)
        tune_gc_for_serving()
        waiter = asyncio.create_task(reach(), name="reach redis")
        flusher = asyncio.create_task(flush_every_second())
        metrics_server = await serve_metrics(*metrics_address) if metrics_address else None
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.close()
            waiter.cancel()
            flusher.cancel()
            await watch.close()
            await store.close()
            ACCESS.flush()  # the last calls' lines, before the process exits

    # A bare Router rather than Starlette(): the app's error and exception middlewares
    # wrap every call (one builds a Request per call) and would never fire, because
    # the command endpoint answers every failure itself, as a value.
    router = Router(
        routes=[
            # The probes answer any method: a Route whose path matches but whose method
            # does not would make Starlette answer a plain 405 itself.
            Route("/healthz", AnyMethod(healthz)),
            Route("/readyz", AnyMethod(readiness.check)),
            Route("/openapi.json", openapi_document),
            # GET shows a group's page; POST creates the group (registered mode).
            *(
                [Route("/demo", DemoPage(settings, store), methods=["GET", "POST"])]
                if settings.config.demo
                else []
            ),
            *([] if metrics_address else [Route("/metrics", AnyMethod(metrics_endpoint))]),
        ],
        default=unknown_path,
        redirect_slashes=False,  # a 307 is not an answer the wire contract knows
        lifespan=lifespan,
    )
    return CommandFirst(commands, watch, router)
