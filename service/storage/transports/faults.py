"""Which Redis errors are faults of the connection or the server, not of the command,
and which of them prove that the command did not run.

Below every transport and the pipelined connection (which base.py's transports build
on), so that they share one list and import nothing of each other for it.

Whether a failed call ran is what a client needs to know before it retries without an
Idempotency-Key (docs/API.md, "Applied"). A call is "certainly not run" only when its
bytes never left this process, or when Redis answered it with a refusal it gives
before a script writes anything. Anything else (a timeout, a connection lost after the
write, a replica acknowledgment that did not come) may have run.
"""

from __future__ import annotations

from typing import Final

from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    MaxClientsReachedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError as SyncMasterNotFoundError

# Error replies that say this server cannot serve us now (a replica, a Redis loading its
# data, a replica whose master is down, no free client slot): the command did not run,
# and neither will the next on that connection.
SERVER_FAULTS: Final = ("READONLY", "LOADING", "MASTERDOWN", "ERR max number of clients reached")

# Error replies that refuse one command before it writes anything: a script's writes are
# checked for memory, replicas and disk errors at its first write, and our scripts check
# everything before they write (a rate-limit count refused by OOM is caught inside). The
# connection stays good.
COMMAND_REFUSALS: Final = ("OOM ", "NOREPLICAS", "MISCONF", "BUSY ", "NOSCRIPT")


class NotRun:
    """Mixed into an error that proves its command did not run on Redis."""


class NotSent(NotRun, RedisConnectionError):
    """The command never left this process (no connection, refused at admission, or its
    connection died while it was still in the send buffer)."""


class NotConnectedInTime(NotRun, RedisTimeoutError):
    """No connection (connect and handshake) within the timeout: the command never left."""


class ServerRefused(NotRun, RedisConnectionError):
    """A `SERVER_FAULTS` reply: this server serves nothing now; the connection is dropped."""


class CommandRefused(NotRun, ResponseError):
    """A `COMMAND_REFUSALS` reply: Redis refused this command before it wrote anything."""


class NotAcknowledged(RedisTimeoutError):
    """The command ran on the master, but not every replica confirmed holding it within
    the acknowledgment timeout (`ack = "replicas"`): a failover now may lose it."""


def certainly_not_run(exc: BaseException) -> bool:
    """Whether `exc` proves its command did not run (safe to send again as it is).
    Our own errors say so by type; redis-py's (Sentinel, the embedded store) by their
    class or, for the codes it does not name, the reply's first word."""
    if isinstance(exc, (NotRun, *_REDIS_PY_REFUSALS)):
        return True
    if type(exc) is ResponseError:
        return str(exc).startswith(COMMAND_REFUSALS)
    # redis-py connects a pooled connection before it sends on it: a failed connect
    # (its OSError kept as the cause, or its own timeout) sent nothing.
    if type(exc) is RedisConnectionError:
        if str(exc).endswith(_DEMOTED):  # redis-py's name for a READONLY on Sentinel
            return True
        return " connecting to " in str(exc) and isinstance(exc.__cause__, OSError)
    return type(exc) is RedisTimeoutError and str(exc) == "Timeout connecting to server"


_DEMOTED: Final = "The previous master is now a slave"

# How redis-py names the refusals above (it strips the code from the message), and
# Sentinel's "no master" (no connection was even tried).
_REDIS_PY_REFUSALS: Final = (
    MasterNotFoundError,
    SyncMasterNotFoundError,
    ReadOnlyError,
    MasterDownError,
    BusyLoadingError,
    OutOfMemoryError,
    MaxClientsReachedError,
)


def is_connection_fault(exc: RedisError) -> bool:
    """A fault of the connection or the server, not of the command: the connection is
    dropped and the next call makes a new one (on Sentinel, to the master named now).
    READONLY is a demoted master; max clients is a server with no slot for us."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError | MasterDownError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(SERVER_FAULTS)
