"""The verification: every group of this process's users read back against the model, its
watchers against the final state, and the verdict on the counts."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from typing import Any

import gevent
import gevent.pool
from loadtest_model import GroupModel, Tally
from loadtest_settings import Signer
from loadtest_state import STATE
from loadtest_users import GroupCounterUser
from locust.env import Environment

logger = logging.getLogger("loadtest")


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
