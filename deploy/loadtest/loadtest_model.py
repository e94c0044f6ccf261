"""The model: what each key of each group may hold, given the calls that were acknowledged or
whose outcome is unknown, what a watcher's events describe, and the counts of a process."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

logger = logging.getLogger("loadtest")

MAX_POSSIBLE_VALUES: Final = 64

# The possible values of one key: a set of ints (None = absent), or None once unverifiable.
Possible = set[int | None] | None


@dataclass
class Tally:
    """Counts of one process (or, on the master, of all of them)."""

    groups: int = 0
    checked_keys: int = 0
    unverifiable_keys: int = 0
    lost: int = 0
    unexpected: int = 0
    unknown_outcomes: int = 0
    unreadable_groups: int = 0
    watchers: int = 0
    watcher_events: int = 0
    watcher_resyncs: int = 0
    watcher_disorder: int = 0
    watchers_behind: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def to_message(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in _COUNTS}
        data["errors"] = dict(self.errors)
        return data

    def add(self, data: dict[str, Any]) -> None:
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + int(data.get(name, 0)))
        self.errors.update({str(code): int(n) for code, n in data.get("errors", {}).items()})


_COUNTS: Final = (
    "groups",
    "checked_keys",
    "unverifiable_keys",
    "lost",
    "unexpected",
    "unknown_outcomes",
    "unreadable_groups",
    "watchers",
    "watcher_events",
    "watcher_resyncs",
    "watcher_disorder",
    "watchers_behind",
)


def _shift(possible: Possible, delta: int) -> Possible:
    return None if possible is None else {(value or 0) + delta for value in possible}


def _widen(possible: Possible, more: Possible) -> Possible:
    if possible is None or more is None:
        return None
    union = possible | more
    return union if len(union) <= MAX_POSSIBLE_VALUES else None


@dataclass
class GroupModel:
    group_id: str
    keys: dict[str, Possible]

    def check(self, key: str, actual: int | None, tally: Tally) -> None:
        """An acknowledged observation of `key`: it must be a possible value; it pins the key."""
        possible = self.keys[key]
        if possible is None or actual in possible:
            self.keys[key] = {actual}
        else:
            tally.unexpected += 1
            logger.error(
                "unexpected value: %s %s is %s, expected one of %s", self.group_id, key, actual, possible
            )


@dataclass
class Call:
    """One call in flight: what it would do to the model if it was applied."""

    group: GroupModel
    mode: str  # Set, Increase, Decrease, delete, get
    items: list[tuple[str, int]]  # (key, value or delta); for delete/get: (key, 0)

    def apply_acknowledged(self, reply: dict[str, Any], tally: Tally) -> None:
        group = self.group
        if self.mode == "get":
            returned = {item["Key"]: item["Value"] for item in reply.get("GroupCounter") or []}
            requested = [key for key, _ in self.items] or list(group.keys)
            for key in returned.keys() - group.keys.keys():
                tally.unexpected += 1
                logger.error("unexpected key: %s %s = %s", group.group_id, key, returned[key])
            for key in requested:
                group.check(key, returned.get(key), tally)
            return
        if self.mode == "delete":
            for key in [key for key, _ in self.items] or list(group.keys):
                group.keys[key] = {None}
            return
        values = {item["Key"]: item["Value"] for item in reply.get("GroupCounter") or []}
        for key, value in self.items:
            if self.mode == "Set":
                group.keys[key] = {value}
                expected: Possible = {value}
            else:
                expected = _shift(group.keys[key], value if self.mode == "Increase" else -value)
                group.keys[key] = expected
            actual = values.get(key)
            if expected is None or actual in expected:
                group.keys[key] = {actual}
            else:
                tally.unexpected += 1
                logger.error(
                    "unexpected value: %s %s %s %s answered %s, expected one of %s",
                    group.group_id,
                    self.mode,
                    key,
                    value,
                    actual,
                    expected,
                )

    def apply_unknown(self) -> None:
        """The call may or may not have been applied."""
        group = self.group
        if self.mode == "get":
            return
        if self.mode == "delete":
            for key in [key for key, _ in self.items] or list(group.keys):
                group.keys[key] = _widen(group.keys[key], {None})
            return
        for key, value in self.items:
            if self.mode == "Set":
                after: Possible = {value}
            else:
                after = _shift(group.keys[key], value if self.mode == "Increase" else -value)
            group.keys[key] = _widen(group.keys[key], after)


@dataclass
class Tape:
    """What one watcher of a group saw: the state its events describe, and any break in order."""

    group_id: str
    state: dict[str, int] = field(default_factory=dict)
    version: int = -1
    last_id: str | None = None
    events: int = 0
    resyncs: int = 0
    disorder: int = 0
    refused: str = ""
    stopped: bool = False

    def play(self, event: str, ident: str, data: dict[str, Any]) -> None:
        self.events += 1
        if event == "snapshot":
            if self.version >= 0:
                self.resyncs += 1
            self.state = {item["Key"]: item["Value"] for item in data["GroupCounter"]}
        elif event == "change":
            if data["Version"] != self.version + 1:
                self.disorder += 1
                logger.error(
                    "watcher of %s: version %s after %s", self.group_id, data["Version"], self.version
                )
            for item in data["GroupCounter"]:
                self.state[item["Key"]] = item["Value"]
            for key in data["DeletedKeys"]:
                self.state.pop(key, None)
        elif event == "destroyed":
            self.stopped = True
        self.version = data["Version"]
        self.last_id = ident
