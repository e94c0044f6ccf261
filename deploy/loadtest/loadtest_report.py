"""The report: the text summary of a run, and its verdict at the top of Locust's HTML report."""

from __future__ import annotations

import html
import logging
import re

from loadtest_model import Tally
from loadtest_state import STATE
from loadtest_verdict import verdict
from locust.env import Environment
from locust.runners import MasterRunner

logger = logging.getLogger("loadtest")


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
