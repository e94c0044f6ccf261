"""Storage: the Redis key names, the Lua scripts and how they are loaded, Redis URLs,
the store that runs one script per call, and the transports that reach one Redis, a
Sentinel set or a Cluster (and the embedded store).

It may import `service.ops` and the vocabulary only.
"""
