"""The simulated users: each owns its groups, creates them, drives the weighted mix of
counter calls on them, and starts their watchers (SSE clients of watch_group_counter)."""

from __future__ import annotations

import http.client
import json
import logging
import random
import secrets
import urllib.parse
from typing import Any, Final

import gevent
from loadtest_model import Call, GroupModel, Tape
from loadtest_settings import OPERATIONS, Signer
from loadtest_state import STATE
from locust import task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.exception import StopUser

logger = logging.getLogger("loadtest")

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
