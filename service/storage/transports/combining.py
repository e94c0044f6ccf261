"""Calls that share one command on a link: write combining (updates of one group waiting
together to be written go to Redis as one script call) and read coalescing (`Shared`).

A hot group's updates all run on one Redis thread, one script call each, and a script
call costs Redis far more than the update's own reads and writes. Calls of a
`CombinableScript` on the same group (the same KEYS[1]) that are queued on a link while
its buffer is unsent share one entry there; when the buffer is written, an entry of
one call is that call, exactly as without combining (at low load nothing changes),
and an entry of several is one call of the script's combined form, which applies each
in arrival order with its own checks, reply, version, notice, record and rate-limit
count (scripts.py). No timer: an entry takes only what arrives before its buffer is
written. An entry is bounded (`MAX_CALLS`, `MAX_BYTES`) so no script runs long.

Each caller has a future of its own. A combined call that fails as a whole (an error
reply: Redis aborts the script where it failed, after the earlier calls' writes) fails
each of its calls as maybe run, except for the refusals Redis makes before running
anything (NOSCRIPT, a Cluster redirect, BUSY; LOADING and the like close the link),
which each call gets, to be
handled as its own would be: run_with_reload sends each call's EVAL on NOSCRIPT, and
the link loads the combined form for the next time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Final

import hiredis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from service.storage.scripts import CombinableScript, ScriptArg

# Calls and bytes of ARGV per combined call: 64 updates run in well under a millisecond.
MAX_CALLS: Final = 64
MAX_BYTES: Final = 128 * 1024
# Error replies Redis gives before it runs any of a script (and BUSY, another script
# running): each call can be told as its own. Others (OOM, NOREPLICAS, MISCONF, a script
# error) may come from a write of a later call, after the earlier calls' writes.
_BEFORE_RUNNING: Final = (AskError, TryAgainError, ClusterDownError)

_pack: Final[Callable[[tuple[Any, ...]], bytes]] = hiredis.pack_command


class CombinedCallFailed(RedisError):
    """A combined call failed as a whole: each of its calls may have run."""


class Combined:
    """The calls of one group in a link's unsent buffer; a link queue entry (Pending)."""

    __slots__ = ("args", "callers", "keys", "load", "script", "size")

    def __init__(
        self,
        script: CombinableScript,
        load: Callable[[bytes], None],
        keys: Sequence[ScriptArg],
        args: Sequence[ScriptArg],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.script = script
        self.load = load  # sends a command whose reply nobody needs (SCRIPT LOAD)
        self.keys: list[ScriptArg] = list(keys)
        self.args: list[Sequence[ScriptArg]] = [args]
        self.callers: list[asyncio.Future[Any]] = [loop.create_future()]
        # Bytes of ARGV, counted when a second call asks to join: most entries (spread
        # groups) stay alone, and counting costs more than the rest of an entry.
        self.size = -1

    @property
    def first(self) -> asyncio.Future[Any]:
        """The future of the call that started the entry."""
        return self.callers[0]

    @property
    def joined(self) -> int:
        """Callers beyond the first: Link.joined counts them."""
        return len(self.callers) - 1

    def join(
        self, keys: Sequence[ScriptArg], args: Sequence[ScriptArg], loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[Any] | None:
        """The future of one more call in this entry, or None when it would pass a bound."""
        if len(self.callers) >= MAX_CALLS:
            return None
        if self.size < 0:
            self.size = _size(self.args[0])
        size = self.size + _size(args)
        if size > MAX_BYTES:
            return None
        self.size = size
        future: asyncio.Future[Any] = loop.create_future()
        self.callers.append(future)
        self.keys.extend(keys)
        self.args.append(args)
        return future

    def packed(self) -> bytes:
        """The command this entry is when its buffer is written."""
        if len(self.args) == 1:
            return _pack(("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args[0]))
        flat: list[ScriptArg] = [len(self.args)]
        for args in self.args:
            flat.append(len(args))
            flat.extend(args)
        return _pack(("EVALSHA", self.script.combined.sha, len(self.keys), *self.keys, *flat))

    # ---- as a link queue entry ----

    def done(self) -> bool:
        return all(caller.done() for caller in self.callers)

    def set_result(self, reply: Any) -> None:
        callers = self.callers
        if len(callers) == 1:
            if not callers[0].done():
                callers[0].set_result(reply)
            return
        if not isinstance(reply, list) or len(reply) != len(callers):
            self.set_exception(CombinedCallFailed(f"a combined call answered {reply!r:.100}"))
            return
        for caller, one in zip(callers, reply, strict=True):
            if not caller.done():
                caller.set_result(one)

    def set_exception(self, error: BaseException) -> None:
        callers = self.callers
        if len(callers) > 1 and isinstance(error, ResponseError):
            if isinstance(error, NoScriptError):
                self.load(_pack(("SCRIPT", "LOAD", self.script.combined.source)))
            elif not isinstance(error, _BEFORE_RUNNING) and not str(error).startswith("BUSY "):
                error = CombinedCallFailed(f"a combined call of {len(callers)} failed: {error}")
        for caller in callers:
            if not caller.done():
                # One exception object each: each caller's handler may annotate its own.
                caller.set_exception(_copy(error))


def _size(args: Sequence[ScriptArg]) -> int:
    try:
        return sum(map(len, args))  # type: ignore[arg-type]  # the usual: all text (commands.py)
    except TypeError:  # an int among them: at most 20 digits
        return sum(len(arg) if isinstance(arg, str | bytes) else 20 for arg in args)


def _copy(error: BaseException) -> BaseException:
    try:
        return type(error)(*error.args)
    except Exception:  # an exception type with another signature: the same object
        return error


class Shared:
    """A read sent once for every identical read queued while it was unsent: each
    caller has a future of its own (one that leaves cancels only its own)."""

    __slots__ = ("callers",)

    def __init__(self) -> None:
        self.callers: list[asyncio.Future[Any]] = []

    def join(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = loop.create_future()
        self.callers.append(future)
        return future

    @property
    def joined(self) -> int:
        """Callers beyond the first: Link.joined counts them."""
        return len(self.callers) - 1

    def done(self) -> bool:
        return all(caller.done() for caller in self.callers)

    def set_result(self, result: Any) -> None:
        for caller in self.callers:
            if not caller.done():
                caller.set_result(result)

    def set_exception(self, exception: BaseException) -> None:
        for caller in self.callers:
            if not caller.done():
                caller.set_exception(exception)


class _Discard:
    """The queue entry of a command whose reply nobody waits for."""

    __slots__ = ()

    def done(self) -> bool:
        return False

    def set_result(self, _: Any) -> None:
        pass

    def set_exception(self, _: BaseException) -> None:
        pass


DISCARD: Final = _Discard()
