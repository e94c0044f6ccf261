"""Which Redis errors are faults of the connection or the server, not of the command.

Below every transport and the pipelined connection (which base.py's transports build
on), so that they share one list and import nothing of each other for it.
"""

from __future__ import annotations

from typing import Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MasterDownError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Error replies that say this server cannot serve us now (a replica, a Redis loading its
# data, a replica whose master is down, no free client slot): the command did not run,
# and neither will the next on that connection.
SERVER_FAULTS: Final = ("READONLY", "LOADING", "MASTERDOWN", "ERR max number of clients reached")


def is_connection_fault(exc: RedisError) -> bool:
    """A fault of the connection or the server, not of the command: the connection is
    dropped and the next call makes a new one (on Sentinel, to the master named now).
    READONLY is a demoted master; max clients is a server with no slot for us."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError | MasterDownError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(SERVER_FAULTS)
