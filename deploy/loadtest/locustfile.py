"""Locust load test for the group counter service, with an exactness verdict.

Stdlib + Locust only, on purpose: the same files run from the repo (`make loadtest`) and
from a ConfigMap in the stock `locustio/locust` image. This file wires the kit into
Locust's events; the rest sits beside it, one job a module: loadtest_settings (options,
usersig), loadtest_model (what each key may hold), loadtest_state (this process's),
loadtest_users (the users and watchers), loadtest_verdict (the read-back and verdict),
loadtest_report (the summary, the HTML report's verdict). Locust puts this file's
directory first on sys.path while it imports it, so they import as top-level modules
(hence the prefix: no clash with another package); kustomization.yaml puts every one of
them in the ConfigMap.

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

import logging
import os
import sys
import time
from typing import Any, Final

import gevent
from loadtest_model import Tally
from loadtest_report import add_verdict_to_report, summary
from loadtest_settings import Settings, Signer, add_arguments
from loadtest_state import STATE
from loadtest_users import GroupCounterUser
from loadtest_verdict import verdict, verify_process
from locust import events
from locust.env import Environment
from locust.runners import STATE_INIT, STATE_STOPPED, MasterRunner, WorkerRunner

logger = logging.getLogger("loadtest")

VERDICT_MESSAGE: Final = "loadtest_verdict"
VERIFY_MESSAGE: Final = "loadtest_verify"

# Locust runs the User classes it finds in this module.
__all__ = ["GroupCounterUser"]

events.init_command_line_parser.add_listener(add_arguments)


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
