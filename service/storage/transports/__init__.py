"""The transports: each reaches Redis one way, behind `base.Transport`. The URL picks one."""

from __future__ import annotations

from collections.abc import Callable

from service.storage.transports.acks import Ack
from service.storage.transports.base import Transport
from service.storage.urls import CLUSTER, SENTINEL, parse

__all__ = ["Ack", "Transport", "open_transport"]


def open_transport(
    url: str,
    *,
    timeout: float,
    max_pending: int,
    on_flush: Callable[[int], None] | None = None,
    ack: Ack | None = None,
) -> Transport:
    """ValueError for a URL `urls.parse` rejects. `ack`: what a write waits for beyond the
    master (transports/acks.py); None: nothing (`ack = "primary"` without `ack_fsync`)."""
    parsed = parse(url)
    if parsed.embedded:
        from service.storage.transports.embedded import RedisPyTransport, embedded_client

        return RedisPyTransport(embedded_client())
    if parsed.scheme in CLUSTER:
        from service.storage.transports.cluster import ClusterTransport

        return ClusterTransport(parsed, timeout=timeout, max_pending=max_pending, on_flush=on_flush, ack=ack)
    if parsed.scheme in SENTINEL:
        from service.storage.transports.sentinel import SentinelTransport

        return SentinelTransport(parsed, timeout=timeout, max_pending=max_pending, ack=ack)
    from service.storage.transports.pipelined import PipelinedTransport

    return PipelinedTransport(parsed, timeout=timeout, max_pending=max_pending, on_flush=on_flush, ack=ack)
