"""Release 0.1.0's storage format (format 1), kept as a test fixture: its Lua scripts as
it shipped them (lua/, copied from the commit of 2026-11-23) and the key names and
arguments its commands passed them. The upgrade and compatibility tests write data as
0.1.0 did, and read what a 0.1.0 service would answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

LUA: Final = Path(__file__).resolve().parent / "lua"


class Client(Protocol):
    """redis.Redis or redis.cluster.RedisCluster: both route EVAL by its first key."""

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any: ...


def _source(name: str) -> str:
    source = (LUA / f"{name}.lua").read_text(encoding="utf-8")
    header_end = source.index("]]\n") + 3
    shared = (LUA / "include" / "rate_limit.lua").read_text(encoding="utf-8")
    return source[:header_end] + shared + source[header_end:]


SOURCES: Final = {
    name: _source(name)
    for name in ("update_counters", "get_counters", "delete_counters", "create_group", "destroy_group")
}


def group_key(sdkappid: int, group_id: str) -> str:
    """0.1.0's key: the GroupId as it is, braces and all."""
    return f"{{{sdkappid}:{group_id}}}"


def fingerprint(command: str, args: Sequence[str | int]) -> str:
    digest = hashlib.blake2b(command.encode(), digest_size=16)
    for arg in args:
        digest.update(b"\0" + str(arg).encode())
    return digest.hexdigest()


class Release010:
    """The five commands as 0.1.0's service ran them (no rate limit: its ARGV "0")."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _run(self, name: str, keys: list[str], args: list[str | int]) -> list[Any]:
        reply: list[Any] = self.client.eval(SOURCES[name], len(keys), *keys, *args)
        return reply

    def create(self, sdkappid: int, group_id: str, group_type: str = "Public") -> int:
        group = group_key(sdkappid, group_id)
        return int(self._run("create_group", [group, group], ["1", "0", group_type])[0])

    def update(
        self,
        sdkappid: int,
        group_id: str,
        counters: Mapping[str, int],
        mode: str = "Increase",
        *,
        idempotency_key: str | None = None,
        registered: bool = True,
    ) -> list[Any]:
        """{0, value, ...} or an error reply, as update_counters.lua answers."""
        group = group_key(sdkappid, group_id)
        operation = "set" if mode == "Set" else "add"
        pairs: list[str | int] = []
        for key, value in counters.items():
            pairs += (key, -value if mode == "Decrease" else value)
        record, print_ = group, ""
        if idempotency_key is not None:
            record = f"{group}:idempotency:{idempotency_key}"
            print_ = fingerprint("update_group_counter", [operation, *pairs])
        flag = "1" if registered else "0"
        return self._run("update_counters", [group, group, record], [flag, "0", print_, operation, *pairs])

    def get(self, sdkappid: int, group_id: str, *, registered: bool = True) -> dict[str, int] | int:
        """Every counter of the group, or the error code."""
        group = group_key(sdkappid, group_id)
        reply = self._run("get_counters", [group, group], ["1" if registered else "0", "0"])
        if reply[0] != 0:
            return int(reply[0])
        items = reply[1:]
        return {key.decode(): int(value) for key, value in zip(items[::2], items[1::2], strict=True)}

    def delete(
        self,
        sdkappid: int,
        group_id: str,
        keys: Sequence[str] = (),
        *,
        idempotency_key: str | None = None,
    ) -> int:
        group = group_key(sdkappid, group_id)
        record, print_ = group, ""
        if idempotency_key is not None:
            record = f"{group}:idempotency:{idempotency_key}"
            print_ = fingerprint("delete_group_counter", list(keys))
        return int(self._run("delete_counters", [group, group, record], ["1", "0", print_, *keys])[0])

    def destroy(self, sdkappid: int, group_id: str) -> int:
        group = group_key(sdkappid, group_id)
        return int(self._run("destroy_group", [group, group], ["1", "0"])[0])
