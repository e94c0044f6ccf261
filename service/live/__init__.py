"""Live counters: the watch endpoint (a server-sent event stream per watcher), the feeds
that turn one Redis subscription per watched group into every watcher's events, and the
/demo page.

It may import `service.api` and everything below it; never `service.moving`.
"""
