"""The HTTP edge: what one client may cost a worker (the uvicorn protocol with its limits),
request bodies read under their cap, query strings, the probes and the OpenAPI document.

It knows HTTP, not the commands. It may import `service.storage`, `service.ops` and the
vocabulary (`service.errors`, `service.wire`, `service.config`); never `service.api`,
`service.live` or `service.moving`.
"""
