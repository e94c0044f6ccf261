"""Operations: metrics and their own server, logs and the access log, and the lifecycle
thresholds that decide when a worker is ready, draining or stopping.

It may import the vocabulary (`service.errors`, `service.wire`, `service.config`) only.
"""
