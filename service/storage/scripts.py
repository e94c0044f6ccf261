"""The Lua scripts, loaded once, and the shape of one call of a script.

Each file in lua/ documents its KEYS, ARGV and reply in a header; `ScriptCall` carries
exactly the KEYS and ARGV that Redis receives, so what a command builds is what runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

ScriptArg = str | bytes | int
# Each script documents its reply shape in its header; commands.py reads it at the boundary.
ScriptReply = list[Any]


def _lua_dir() -> Path:
    """The scripts ship inside the wheel as service/lua; a source checkout has ./lua."""
    packaged = resources.files("service").joinpath("lua")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "lua"


def _with_includes(source: str, *, combined: bool = False) -> str:
    """Shared Lua from lua/include/, placed right after the script's header comment.

    `combined`: the body becomes a function of (KEYS, ARGV), called for each of several
    calls in one script call, in order, each with its own KEYS and ARGV and its own
    reply, exactly as if each were a call of its own (connection.py's write combining).
    KEYS: each call's, one after another; ARGV: the number of calls, then for each call
    the number of its ARGV and its ARGV. Reply: each call's reply, in order.
    """
    header_end = source.index("]]\n") + 3
    shared = "".join(
        path.read_text(encoding="utf-8") for path in sorted((_lua_dir() / "include").glob("*.lua"))
    )
    body = source[header_end:]
    if combined:
        body = _COMBINED.format(body=body)
    return source[:header_end] + shared + body


_COMBINED: Final = """local function one(KEYS, ARGV)
{body}
end

local replies, k, a = {{}}, 0, 2
for i = 1, tonumber(ARGV[1]) do
  local argc = tonumber(ARGV[a])
  replies[i] = one({{KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]}}, {{unpack(ARGV, a + 1, a + argc)}})
  k, a = k + 3, a + 1 + argc
end
return replies
"""


class Script:
    """One Lua file, called with `keys` KEYS (the count its header documents), or at
    least `keys` where the header documents a variable tail (`more_keys`)."""

    def __init__(self, name: str, keys: int, *, more_keys: bool = False, combined: bool = False) -> None:
        self.name = name
        self.keys = keys
        self.more_keys = more_keys
        text = (_lua_dir() / f"{name}.lua").read_text(encoding="utf-8")
        self.source = _with_includes(text, combined=combined)
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


class CombinableScript(Script):
    """A script whose calls on one group may go as one script call (`combined`: the same
    file, its body applied to each call in turn). Three KEYS, the group's first."""

    def __init__(self, name: str) -> None:
        super().__init__(name, keys=3)
        self.combined = Script(name, keys=3, combined=True)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 0.2 us more to build, per call
class ScriptCall:
    """One script with every KEYS and ARGV entry it receives, in its header's order."""

    script: Script
    keys: Sequence[str]
    args: Sequence[ScriptArg]


UPDATE_COUNTERS: Final = CombinableScript("update_counters")
GET_COUNTERS: Final = Script("get_counters", keys=2)
DELETE_COUNTERS: Final = Script("delete_counters", keys=3)
CREATE_GROUP: Final = Script("create_group", keys=2)
DESTROY_GROUP: Final = Script("destroy_group", keys=2)
RATE_LIMIT: Final = Script("rate_limit", keys=1)
END_USER_LIMIT: Final = Script("end_user_limit", keys=1)
READ_GROUP: Final = Script("read_group", keys=1)
IMPORT_GROUP: Final = Script("import_group", keys=1)
SNAPSHOT_GROUP: Final = Script("snapshot_group", keys=2)
STORAGE_FORMAT: Final = Script("storage_format", keys=1)
UPGRADE_GROUP: Final = Script("upgrade_group", keys=2, more_keys=True)
SCRIPTS: Final = (
    UPDATE_COUNTERS,
    GET_COUNTERS,
    DELETE_COUNTERS,
    CREATE_GROUP,
    DESTROY_GROUP,
    RATE_LIMIT,
    END_USER_LIMIT,
    READ_GROUP,
    IMPORT_GROUP,
    SNAPSHOT_GROUP,
    STORAGE_FORMAT,
    UPGRADE_GROUP,
)


def shareable(call: ScriptCall) -> bool:
    """Whether identical calls still unsent may share one script call: get_counters
    changes nothing unless it counts the app's rate limit (ARGV[2] not 0), where each
    call must count."""
    return call.script is GET_COUNTERS and call.args[1] in (0, "0")
