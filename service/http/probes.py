"""Kubernetes probes: liveness never touches Redis; readiness runs a real script.

`/readyz?exclude=redis` (as kube-apiserver's `/readyz?exclude=etcd`) leaves the Redis
check out: it is what the Deployment's readiness probe asks. Every replica shares one
Redis, so a probe that followed it would take every pod out of the Service at once
during a Redis blip: clients would get "connection refused" instead of a fast 10002,
and a rollout with maxUnavailable 0 would stall. Plain `/readyz` still reports Redis,
for people and alerts.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from service.errors import ServiceError
from service.ops.lifecycle import LIFECYCLE
from service.storage.store import Store

_JSON: Final = "application/json"


async def healthz(_: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type=_JSON)


class Readiness:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def check(self, request: Request) -> Response:
        if LIFECYCLE.draining:
            return Response(b'{"status":"draining"}', status_code=503, media_type=_JSON)
        if "redis" in request.query_params.getlist("exclude"):
            return Response(b'{"status":"ready"}', media_type=_JSON)
        try:
            await self._store.probe()
        except ServiceError:
            return Response(b'{"status":"redis unavailable"}', status_code=503, media_type=_JSON)
        return Response(b'{"status":"ready"}', media_type=_JSON)
