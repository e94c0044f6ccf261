"""Moving counters: export and import (JSON lines), migration from the hosted platform,
and their command-line entry points.

It may import `service.api` and everything below it; never `service.live`.
"""
