"""Everything this process knows about the current test, in one object the events can reach."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Final

from loadtest_model import Call, GroupModel, Tally, Tape
from loadtest_settings import Settings, Signer


@dataclass
class ProcessState:
    """Everything this process knows; module-level so the events can reach it."""

    settings: Settings | None = None
    signer: Signer | None = None
    models: list[GroupModel] = field(default_factory=list)
    tapes: dict[str, list[Tape]] = field(default_factory=dict)
    watchers: list[Any] = field(default_factory=list)
    in_flight: dict[int, Call] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    verified: bool = False
    users: itertools.count[int] = field(default_factory=itertools.count)
    worker_verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: Tally | None = None
    # Why the run was stopped early (SETUP_ERRORS), if it was.
    fatal: str = ""
    missing_workers: int = 0
    workers: int = 0
    started: float = field(default_factory=time.time)

    def reset(self) -> None:
        """A new test: forget the last one's groups and counts (the user numbers go on)."""
        self.models = []
        self.tapes = {}
        self.watchers = []
        self.in_flight = {}
        self.tally = Tally()
        self.verified = False
        self.worker_verdicts = {}
        self.final = None
        self.fatal = ""
        self.missing_workers = 0
        self.workers = 0


STATE: Final = ProcessState()
