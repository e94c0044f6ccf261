"""The failover kit (issue 24): Redis topologies on loopback that fail over under load,
and an exact account of what the service acknowledged and what survived.

`python -m tests.failover --help` runs it; tests/test_failover.py runs a short version
in `make test` and the full one in `make test-slow`.
"""
