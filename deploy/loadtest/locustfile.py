"""Locust load test for the group counter service, with an exactness verdict.

Self-contained on purpose (stdlib + Locust only): the same file runs from the repo
(`make loadtest`) and from a ConfigMap in the stock `locustio/locust` image.

What it does
------------
Every simulated user owns its own groups (`lt-<run>-<process>-<user>-<n>`: unique
across users, and across processes and workers through a random per-process token),
creates them first when the app's groups are `registered` (`--group-mode`), then runs
a weighted mix (`--mix`) of `update_group_counter` in all three modes,
`get_group_counter` and `delete_group_counter` on them. Every call carries a real
TLSSigAPIv2 usersig for `--sdkappid`/`--identifier`, signed with the secret key from
the environment variable LOADTEST_SECRET_KEY (never from the command line).

The model
---------
Because nobody else touches a user's groups, the value of every (group, key) is known
from the calls that were acknowledged. The model keeps, per key, the *set of values
it may have* (`None` = absent):

- an acknowledged Set makes it `{Value}`; an acknowledged Delete makes it `{None}`;
- an acknowledged Increase/Decrease applies the delta to every possible value; the
  reply's value after must be one of them (then the key is exactly that value again);
- an acknowledged read must return one of the possible values (and pins it);
- a call whose outcome is unknown (ErrorCode 10002, a transport error, a non-200
  answer, a user stopped mid-call) may or may not have been applied: the possible
  values become the union of both outcomes. A key whose set would grow past 64 values
  is no longer checked ("unverifiable");
- any other error code means the call changed nothing (the wire contract: a request
  that fails changes nothing), so the model is left as it was.

A reply that contradicts the model counts as an `unexpected value`. At the end every
group is read back: a key whose final value is not a possible value counts as a
`lost update` (an acknowledged write, delete included, that is not there); a key the
kit never wrote counts as an unexpected value. Then the groups are destroyed (unless
`--keep-groups`).

Distributed mode
----------------
Each process verifies the groups of its own users (the local runner, or each worker)
when its test stops, and a worker sends its counts to the master as a Locust message.
The master, when its test stops, asks every worker still connected to stop and
verify, waits (`--verdict-timeout`) for every worker's counts, adds them up and
decides. A worker that never answers fails the verdict.

Watchers
--------
Beside the writers, `--watchers-per-group` SSE clients (default 1) watch each group
(`watch_group_counter`) from the moment it exists, reconnecting with Last-Event-ID
when a stream ends early. Each keeps the state its events describe and checks that
every `change` carries the version after the one before (a `snapshot` flagged Resync
may replace the state at any time). At the verification, once a group is read back,
each of its watchers must reach exactly that final state within a few seconds.

Verdict
-------
Passed when there are 0 lost updates, 0 unexpected values, every group could be read
back, no worker is missing, at least one key was checked, and every watcher saw every
version in order (or resynced) and ended equal to its group's final state. A failed verdict sets
the process exit code to 1. Locust's own rule still applies too: any failed request
(any ErrorCode other than 0, any transport error) makes the exit code 1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import http.client
import itertools
import json
import logging
import os
import random
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import gevent
import gevent.pool
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import STATE_INIT, STATE_STOPPED, MasterRunner, WorkerRunner

logger = logging.getLogger("loadtest")

OPERATIONS: Final = ("set", "increase", "decrease", "get", "delete")
DEFAULT_MIX: Final = "set=1,increase=4,decrease=2,get=2,delete=1"
COMMAND_PATH: Final = "/v4/group_open_http_svc/"
MAX_POSSIBLE_VALUES: Final = 64
MAX_KEYS_PER_GROUP: Final = 20
SECRET_ENV: Final = "LOADTEST_SECRET_KEY"  # noqa: S105 (a variable name)
VERDICT_MESSAGE: Final = "loadtest_verdict"
VERIFY_MESSAGE: Final = "loadtest_verify"
# Unique per process: with the user number it makes GroupIds unique across workers.
PROCESS_TOKEN: Final = secrets.token_hex(4)
# Answers about who calls, not about what: every later call would get the same, so the
# run stops at the first one with this advice instead of idling for its whole duration.
SETUP_ERRORS: Final = {
    60006: "the service has no app {sdkappid}: check --sdkappid (LOADTEST_SDKAPPID)",
    60010: "{identifier!r} is not an admin of app {sdkappid}: check --identifier (LOADTEST_IDENTIFIER)",
    70003: "the service cannot decode the kit's usersig: is TARGET this service?",
    70009: "wrong secret key? The usersig's signature does not match app {sdkappid}'s key: "
    "set LOADTEST_SECRET_KEY to that app's secret key",
    70013: "the usersig was refused for identifier {identifier!r}",
    70014: "the usersig was refused for sdkappid {sdkappid}",
}

# The possible values of one key: a set of ints (None = absent), or None once unverifiable.
Possible = set[int | None] | None


# ---------------------------------------------------------------------------- options


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("group counter load test (secret key: LOADTEST_SECRET_KEY)")
    group.add_argument(
        "--sdkappid", type=int, env_var="LOADTEST_SDKAPPID", default=1400000000, help="the app to call"
    )
    group.add_argument(
        "--identifier",
        env_var="LOADTEST_IDENTIFIER",
        default="administrator",
        help="an admin identifier of the app; the usersig is made for it",
    )
    group.add_argument(
        "--mix",
        env_var="LOADTEST_MIX",
        default=DEFAULT_MIX,
        help=f"weights of {', '.join(OPERATIONS)} (default {DEFAULT_MIX})",
    )
    group.add_argument(
        "--counter-groups",
        type=int,
        env_var="LOADTEST_GROUPS",
        default=4,
        help="groups owned by each user",
    )
    group.add_argument(
        "--counter-keys",
        type=int,
        env_var="LOADTEST_KEYS",
        default=8,
        help=f"keys per group (1..{MAX_KEYS_PER_GROUP})",
    )
    group.add_argument(
        "--group-mode",
        choices=["registered", "implicit"],
        env_var="LOADTEST_GROUP_MODE",
        default="registered",
        help="registered: create_group every group first; implicit: the app's groups are implicit",
    )
    group.add_argument(
        "--run-id",
        env_var="LOADTEST_RUN_ID",
        default="",
        help="a label in every GroupId (default: random)",
    )
    group.add_argument(
        "--summary-file",
        env_var="LOADTEST_SUMMARY_FILE",
        default="",
        help="write the text summary here (default: print it)",
    )
    group.add_argument(
        "--keep-groups",
        action="store_true",
        env_var="LOADTEST_KEEP_GROUPS",
        default=False,
        help="do not destroy the groups after the verdict",
    )
    group.add_argument(
        "--watchers-per-group",
        type=int,
        env_var="LOADTEST_WATCHERS",
        default=1,
        help="SSE watchers (watch_group_counter) of each group; 0: none",
    )
    group.add_argument(
        "--verdict-timeout",
        type=float,
        env_var="LOADTEST_VERDICT_TIMEOUT",
        default=120.0,
        help="seconds the master waits for the workers' verdicts",
    )


def parse_mix(text: str) -> dict[str, int]:
    weights = dict.fromkeys(OPERATIONS, 0)
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        name = name.strip().lower()
        if not sep or name not in weights or not weight.strip().isdigit():
            raise ValueError(f"--mix: {part!r} is not <operation>=<weight> with operation in {OPERATIONS}")
        weights[name] = int(weight)
    if not any(weights.values()):
        raise ValueError("--mix: every weight is 0")
    return weights


@dataclass(frozen=True)
class Settings:
    sdkappid: int
    identifier: str
    secret_key: str
    mix: dict[str, int]
    groups: int
    keys: int
    registered: bool
    run_id: str
    keep_groups: bool
    watchers: int = 1

    @classmethod
    def from_options(cls, options: Any) -> Settings:
        secret_key = os.environ.get(SECRET_ENV, "")
        if not secret_key:
            raise ValueError(f"{SECRET_ENV} is not set: the app's secret key comes from the environment")
        if not 1 <= options.counter_keys <= MAX_KEYS_PER_GROUP:
            raise ValueError(f"--counter-keys must be 1..{MAX_KEYS_PER_GROUP}")
        if options.counter_groups < 1:
            raise ValueError("--counter-groups must be at least 1")
        run_id = options.run_id or _DEFAULT_RUN_ID
        if not (len(run_id) <= 12 and all(33 <= ord(c) <= 126 for c in run_id)):
            raise ValueError("--run-id: at most 12 printable ASCII characters, no spaces")
        return cls(
            sdkappid=options.sdkappid,
            identifier=options.identifier,
            secret_key=secret_key,
            mix=parse_mix(options.mix),
            groups=options.counter_groups,
            keys=options.counter_keys,
            registered=options.group_mode == "registered",
            run_id=run_id,
            keep_groups=options.keep_groups,
            watchers=max(0, int(getattr(options, "watchers_per_group", 1))),
        )


_DEFAULT_RUN_ID: Final = secrets.token_hex(3)


# ---------------------------------------------------------------------------- signing


def mint_usersig(sdkappid: int, secret_key: str, identifier: str, expire: int = 7 * 86400) -> str:
    """A TLSSigAPIv2 usersig, as the official tls-sig-api-v2 generators make one."""
    now = int(time.time())
    content = f"TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{now}\nTLS.expire:{expire}\n"
    sig = base64.b64encode(hmac.new(secret_key.encode(), content.encode(), hashlib.sha256).digest())
    document = {
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": now,
        "TLS.sig": sig.decode(),
    }
    compressed = zlib.compress(json.dumps(document, separators=(",", ":")).encode())
    return base64.b64encode(compressed).translate(bytes.maketrans(b"+/=", b"*-_")).decode()


class Signer:
    """Builds the query string of every call; one usersig per process (minting is not free)."""

    def __init__(self, settings: Settings) -> None:
        self._fixed = {
            "sdkappid": str(settings.sdkappid),
            "identifier": settings.identifier,
            "usersig": mint_usersig(settings.sdkappid, settings.secret_key, settings.identifier),
        }

    def path(self, command: str) -> str:
        params = {**self._fixed, "random": str(random.randrange(2**32)), "contenttype": "json"}
        return COMMAND_PATH + command + "?" + urllib.parse.urlencode(params)


# ---------------------------------------------------------------------------- model


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


def watch(host: str, signer: Signer, tape: Tape) -> None:
    """One watcher's greenlet: read the group's events until stopped, reconnecting with
    Last-Event-ID when the stream ends early (a cut-off slow reader, a restart)."""
    target = urllib.parse.urlsplit(host)
    path = signer.path("watch_group_counter") + "&" + urllib.parse.urlencode({"GroupId": tape.group_id})
    while not tape.stopped:
        kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
        connection = kind(target.netloc, timeout=60)
        try:
            headers = {"Accept": "text/event-stream"}
            if tape.last_id is not None:
                headers["Last-Event-ID"] = tape.last_id
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            if not (response.getheader("Content-Type") or "").startswith("text/event-stream"):
                tape.refused = f"HTTP {response.status} {response.read(300)!r}"
                logger.error("watcher of %s refused: %s", tape.group_id, tape.refused)
                return
            fields: dict[str, str] = {}
            while not tape.stopped:
                line = response.readline()
                if not line:
                    break
                text = line.decode().rstrip("\n")
                if text.startswith(":"):
                    continue
                if text:
                    name, _, value = text.partition(": ")
                    fields[name] = value
                elif "data" in fields:
                    tape.play(fields.get("event", ""), fields.get("id", ""), json.loads(fields["data"]))
                    fields = {}
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not tape.stopped:
                logger.warning("watcher of %s: %s; reconnecting", tape.group_id, exc)
                gevent.sleep(0.5)
        finally:
            connection.close()


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


# ---------------------------------------------------------------------------- the user


def _classify(response: Any) -> tuple[str, dict[str, Any] | None, str]:
    """("ok"|"failed"|"unknown", reply, error label)."""
    error = getattr(response, "error", None)
    status = getattr(response, "status_code", 0)
    if error is not None and status == 0:
        return "unknown", None, "transport"
    if status != 200:
        return "unknown", None, f"HTTP {status}"
    try:
        reply = json.loads(response.content)
        code = int(reply["ErrorCode"])
    except (TypeError, ValueError, KeyError):
        return "unknown", None, "bad reply"
    if code == 0:
        return "ok", reply, ""
    return ("unknown" if code == 10002 else "failed"), reply, str(code)


class GroupCounterUser(FastHttpUser):
    """Drives the counter commands on groups that only this user touches."""

    # A load test against an unreachable target should fail fast, not hang.
    connection_timeout = 10.0
    network_timeout = 30.0

    def on_start(self) -> None:
        settings, signer = STATE.settings, STATE.signer
        assert settings is not None, "set at test_start"
        assert signer is not None, "set at test_start"
        self.signer = signer
        number = next(STATE.users)
        key_names = [f"k{index:02d}" for index in range(settings.keys)]
        self.groups: list[GroupModel] = []
        for index in range(settings.groups):
            group_id = f"lt-{settings.run_id}-{PROCESS_TOKEN}-{number}-{index}"
            if settings.registered and not self._create(group_id):
                if STATE.fatal:
                    return  # the run is stopping; the reason is logged once
                continue
            model = GroupModel(group_id, {key: {None} for key in key_names})
            self.groups.append(model)
            STATE.models.append(model)
            host = self.environment.host or self.host or ""
            for _ in range(settings.watchers):
                tape = Tape(group_id)
                STATE.tapes.setdefault(group_id, []).append(tape)
                STATE.watchers.append(gevent.spawn(watch, host, signer, tape))
        if not self.groups:
            logger.error("user %d owns no group (create_group failed): stopping it", number)
            raise StopUser  # locust logs this one with a traceback; the reason is the line above
        operations = [name for name in OPERATIONS if settings.mix[name]]
        self.operations = operations
        self.weights = [settings.mix[name] for name in operations]

    def _post(self, command: str, body: dict[str, Any], name: str) -> tuple[str, dict[str, Any] | None]:
        with self.client.post(
            self.signer.path(command),
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            name=name,
            catch_response=True,
        ) as response:
            outcome, reply, label = _classify(response)
            if outcome == "ok":
                response.success()
            else:
                STATE.tally.errors[label] += 1
                info = reply.get("ErrorInfo", "") if reply else ""
                response.failure(f"{label} {info}".strip())
        if reply is not None and reply["ErrorCode"] in SETUP_ERRORS:
            stop_for_setup_error(self.environment, reply["ErrorCode"], reply.get("ErrorInfo", ""))
        return outcome, reply

    def _create(self, group_id: str) -> bool:
        """create_group; 10021 (taken) is ours only after an attempt of ours had an unknown outcome."""
        maybe_ours = False
        for attempt in range(3):
            outcome, reply = self._post(
                "create_group", {"Type": "Public", "Name": "loadtest", "GroupId": group_id}, "create_group"
            )
            if outcome == "ok":
                return True
            if outcome == "failed" and reply is not None and reply["ErrorCode"] == 10021 and maybe_ours:
                return True
            if outcome == "failed":
                if not STATE.fatal:
                    logger.error("create_group %s failed: %s", group_id, reply)
                return False
            maybe_ours = True
            gevent.sleep(0.1 * (attempt + 1))
        return False

    @task
    def counter_call(self) -> None:
        if STATE.fatal:
            gevent.sleep(1)  # the run is quitting (stop_for_setup_error); nothing more to send
            return
        operation = random.choices(self.operations, self.weights)[0]
        group = random.choice(self.groups)
        keys = list(group.keys)
        body: dict[str, Any] = {"GroupId": group.group_id}
        if operation in ("set", "increase", "decrease"):
            chosen = random.sample(keys, random.randint(1, min(3, len(keys))))
            if operation == "set":
                items = [(key, random.randint(-1_000_000, 1_000_000)) for key in chosen]
            else:
                items = [(key, random.randint(1, 1000)) for key in chosen]
            mode = operation.capitalize()
            body["Mode"] = mode
            body["GroupCounter"] = [{"Key": key, "Value": value} for key, value in items]
            command, name = "update_group_counter", f"update_group_counter {mode}"
        else:
            # One in five reads/deletes names no keys: the whole group.
            whole = random.random() < 0.2
            chosen = [] if whole else random.sample(keys, random.randint(1, min(3, len(keys))))
            if chosen:
                body["GroupCounterKeys"] = chosen
            items = [(key, 0) for key in chosen]
            mode = operation
            command = f"{operation}_group_counter"
            name = command + (" all" if whole else "")
        call = Call(group, mode, items)
        # Registered before the request: a user stopped mid-call leaves it here, and the
        # verdict then treats it as an unknown outcome.
        STATE.in_flight[id(self)] = call
        outcome, reply = self._post(command, body, name)
        del STATE.in_flight[id(self)]
        if outcome == "ok" and reply is not None:
            call.apply_acknowledged(reply, STATE.tally)
        elif outcome == "unknown":
            STATE.tally.unknown_outcomes += 1
            call.apply_unknown()


def stop_for_setup_error(environment: Environment, code: int, info: str) -> None:
    """Stop the whole run (this process's, on a worker) once, saying what to fix."""
    if STATE.fatal:
        return
    settings = STATE.settings
    advice = SETUP_ERRORS[code].format(
        sdkappid=settings.sdkappid if settings else "?", identifier=settings.identifier if settings else "?"
    )
    STATE.fatal = f"stopped at the first call: {code} {info!r}; {advice}"
    logger.error("%s", STATE.fatal)
    environment.process_exit_code = 2
    runner = environment.runner
    if runner is not None:
        # From a user's own greenlet: quitting here would kill the caller mid-way.
        gevent.spawn_later(0, runner.quit)


# ---------------------------------------------------------------------------- verification


def _call_direct(host: str, signer: Signer, command: str, body: dict[str, Any]) -> dict[str, Any]:
    url = host.rstrip("/") + signer.path(command)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the target must be an http(s) URL, not {host!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        reply: dict[str, Any] = json.loads(response.read())
        return reply


def _read_back(host: str, signer: Signer, group: GroupModel) -> dict[str, int] | None:
    """Every counter of the group, or None when it cannot be read (after retries)."""
    for attempt in range(4):
        try:
            reply = _call_direct(host, signer, "get_group_counter", {"GroupId": group.group_id})
        except (OSError, ValueError) as exc:
            logger.warning("verify %s: %s", group.group_id, exc)
        else:
            if reply.get("ErrorCode") == 0:
                return {item["Key"]: item["Value"] for item in reply.get("GroupCounter") or []}
            if reply.get("ErrorCode") == 10010:  # the group is gone: no counters at all
                return {}
            logger.warning("verify %s: %s", group.group_id, reply)
        gevent.sleep(0.2 * (attempt + 1))
    return None


def verify_process(environment: Environment) -> Tally:
    """Reads back every group of this process's users and counts against the model."""
    tally = STATE.tally
    # After a setup error every read-back would be refused the same way: nothing to verify.
    if STATE.verified or STATE.signer is None or STATE.settings is None or STATE.fatal:
        STATE.verified = True
        return tally
    STATE.verified = True
    for call in STATE.in_flight.values():  # users stopped mid-call
        tally.unknown_outcomes += 1
        call.apply_unknown()
    STATE.in_flight.clear()
    host = environment.host or GroupCounterUser.host or ""
    signer, settings = STATE.signer, STATE.settings

    def verify(group: GroupModel) -> None:
        actual = _read_back(host, signer, group)
        tally.groups += 1
        if actual is None:
            tally.unreadable_groups += 1
            return
        for key in actual.keys() - group.keys.keys():
            tally.unexpected += 1
            logger.error("final read: unexpected key %s %s = %s", group.group_id, key, actual[key])
        check_watchers(group, actual, tally)
        for key, possible in group.keys.items():
            if possible is None:
                tally.unverifiable_keys += 1
                continue
            tally.checked_keys += 1
            if actual.get(key) not in possible:
                tally.lost += 1
                logger.error(
                    "lost update: %s %s is %s, acknowledged calls left it at %s",
                    group.group_id,
                    key,
                    actual.get(key),
                    possible if len(possible) > 1 else next(iter(possible)),
                )
        if not settings.keep_groups:
            try:
                _call_direct(host, signer, "destroy_group", {"GroupId": group.group_id})
            except (OSError, ValueError) as exc:
                logger.warning("destroy_group %s: %s", group.group_id, exc)

    pool = gevent.pool.Pool(16)
    for _ in pool.imap_unordered(verify, STATE.models):
        pass
    gevent.killall(STATE.watchers, block=False)
    return tally


def check_watchers(group: GroupModel, actual: dict[str, int], tally: Tally, seconds: float = 5.0) -> None:
    """Every watcher of the group saw every version in order (or resynced) and reaches
    the group's final state; then it stops (before the group is destroyed)."""
    tapes = STATE.tapes.get(group.group_id, [])
    deadline = time.monotonic() + seconds
    for tape in tapes:
        while tape.state != actual and not tape.refused and time.monotonic() < deadline:
            gevent.sleep(0.05)
        tape.stopped = True
        tally.watchers += 1
        tally.watcher_events += tape.events
        tally.watcher_resyncs += tape.resyncs
        tally.watcher_disorder += tape.disorder
        if tape.state != actual:
            tally.watchers_behind += 1
            logger.error(
                "watcher of %s ended at %s (version %s), the group holds %s",
                group.group_id,
                tape.state,
                tape.version,
                actual,
            )


# ---------------------------------------------------------------------------- events


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(VERDICT_MESSAGE, _on_worker_verdict)
        return
    # Fail at start, not at the first user, when the key or an option is wrong. (A worker
    # checks again at test_start, with the options the master sent.)
    try:
        Settings.from_options(environment.parsed_options)
    except ValueError as exc:
        logger.error("%s", exc)
        sys.exit(2)
    if isinstance(runner, WorkerRunner):
        runner.register_message(VERIFY_MESSAGE, _on_verify_request, concurrent=True)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    STATE.reset()
    if not isinstance(environment.runner, MasterRunner):
        STATE.settings = Settings.from_options(environment.parsed_options)
        STATE.signer = Signer(STATE.settings)


def _send_verdict(environment: Environment) -> None:
    assert environment.runner is not None
    environment.runner.send_message(VERDICT_MESSAGE, STATE.tally.to_message())


def _on_verify_request(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    """Worker: the master's test stopped; stop ours (which verifies) or resend the counts."""
    runner = environment.runner
    if runner is not None and runner.state not in (STATE_STOPPED, STATE_INIT):
        runner.stop()  # fires test_stop, which verifies and sends
    else:
        verify_process(environment)
        _send_verdict(environment)


def _on_worker_verdict(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    STATE.worker_verdicts[msg.node_id] = msg.data


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        verify_process(environment)
        _send_verdict(environment)
        return
    if isinstance(runner, MasterRunner):
        final = _collect_worker_verdicts(environment, runner)
    else:
        final = verify_process(environment)
    STATE.final = final
    passed, _ = verdict(final, STATE.missing_workers)
    if not passed and environment.process_exit_code is None:
        environment.process_exit_code = 1
    text = summary(environment)
    logger.info("load test verdict: %s", "PASSED" if passed else "FAILED")
    options = environment.parsed_options
    if options is not None and not options.headless:
        # The web UI (and the Kubernetes master) never quits after a run: show it now.
        logger.info("\n%s", text)


def _collect_worker_verdicts(environment: Environment, runner: MasterRunner) -> Tally:
    expected = set(STATE.worker_verdicts) | {client.id for client in runner.clients.all}
    runner.send_message(VERIFY_MESSAGE)
    timeout = environment.parsed_options.verdict_timeout if environment.parsed_options else 120.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not expected <= STATE.worker_verdicts.keys():
        gevent.sleep(0.1)
    total = Tally()
    for data in STATE.worker_verdicts.values():
        total.add(data)
    STATE.workers = len(expected)
    STATE.missing_workers = len(expected - STATE.worker_verdicts.keys())
    if STATE.missing_workers:
        logger.error("%d worker(s) sent no verdict within %.0f s", STATE.missing_workers, timeout)
    return total


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or STATE.final is None:
        return
    # The stats are final now (the workers' last reports are in).
    text = summary(environment)
    options = environment.parsed_options
    path = options.summary_file if options is not None else ""
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        logger.info("summary written to %s", path)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    html_file = getattr(options, "html_file", None) if options is not None else None
    if html_file and os.path.isfile(html_file):
        passed, _ = verdict(STATE.final, STATE.missing_workers)
        add_verdict_to_report(html_file, text, passed)


def add_verdict_to_report(html_file: str, text: str, passed: bool) -> None:
    """Put the verdict and summary at the top of Locust's HTML report.

    Locust writes the report before it fires `quitting`, with no hook for a section of
    our own; the page is a React app mounted on one element, so a block before that
    element shows above the charts without touching them.
    """
    word, colour = ("PASSED", "#1b7f3b") if passed else ("FAILED", "#b3261e")
    block = (
        '<section id="group-counter-verdict" style="font-family:sans-serif;margin:16px;padding:12px;'
        f'border:3px solid {colour};border-radius:6px">'
        f'<h1 style="color:{colour};margin:0 0 8px">Exactness verdict: {word}</h1>'
        f'<pre style="margin:0;white-space:pre-wrap">{html.escape(text)}</pre></section>'
    )
    with open(html_file, encoding="utf-8") as file:
        page = file.read()
    marker = re.search(r"<body[^>]*>", page)
    at = marker.end() if marker else 0
    with open(html_file, "w", encoding="utf-8") as file:
        file.write(page[:at] + block + page[at:])
    logger.info("verdict added to %s", html_file)


# ---------------------------------------------------------------------------- verdict


def verdict(tally: Tally, missing_workers: int) -> tuple[bool, list[str]]:
    reasons = []
    if tally.lost:
        reasons.append(f"{tally.lost} lost update(s)")
    if tally.unexpected:
        reasons.append(f"{tally.unexpected} unexpected value(s)")
    if tally.unreadable_groups:
        reasons.append(f"{tally.unreadable_groups} group(s) could not be read back")
    if missing_workers:
        reasons.append(f"{missing_workers} worker(s) sent no verdict")
    if tally.watcher_disorder:
        reasons.append(f"{tally.watcher_disorder} version(s) out of order at watchers")
    if tally.watchers_behind:
        reasons.append(f"{tally.watchers_behind} watcher(s) not at the final state")
    if STATE.fatal:
        reasons.insert(0, STATE.fatal)
    elif not tally.checked_keys:
        reasons.append("no key was checked")
    return not reasons, reasons


def summary(environment: Environment) -> str:
    tally = STATE.final or Tally()
    passed, reasons = verdict(tally, STATE.missing_workers)
    total = environment.stats.total
    elapsed = max((total.last_request_timestamp or 0) - total.start_time, 1e-9)
    options = environment.parsed_options
    mode = options.group_mode if options is not None else "?"
    sdkappid = options.sdkappid if options is not None else "?"
    where = f"{STATE.workers} worker(s)" if isinstance(environment.runner, MasterRunner) else "local"
    errors = ", ".join(f"{code}: {n}" for code, n in sorted(tally.errors.items())) or "none"

    def ms(percentile: float) -> str:
        return f"{total.get_response_time_percentile(percentile):.0f}" if total.num_requests else "-"

    lines = [
        "group counter load test summary",
        f"target:              {environment.host} (sdkappid {sdkappid}, {mode} groups, {where})",
        f"requests:            {total.num_requests} in {elapsed:.1f} s, "
        f"{total.num_requests / elapsed:.1f} req/s, {total.num_failures} failed",
        f"latency (ms):        p50 {ms(0.5)}, p95 {ms(0.95)}, p99 {ms(0.99)}, "
        f"max {total.max_response_time:.0f}",
        f"groups verified:     {tally.groups} ({tally.checked_keys} keys checked, "
        f"{tally.unverifiable_keys} unverifiable after unknown outcomes)",
        f"unknown outcomes:    {tally.unknown_outcomes} (10002 / transport errors / stopped mid-call)",
        f"errors by ErrorCode: {errors}",
        f"watchers:            {tally.watchers} ({tally.watcher_events} events, "
        f"{tally.watcher_resyncs} resyncs)",
        f"watcher disorder:    {tally.watcher_disorder}",
        f"watchers behind:     {tally.watchers_behind}",
        f"lost updates:        {tally.lost}",
        f"unexpected values:   {tally.unexpected}",
        "verdict:             " + ("PASSED" if passed else "FAILED: " + "; ".join(reasons)),
    ]
    return "\n".join(lines) + "\n"
