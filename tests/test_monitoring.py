"""deploy/monitoring: the alerts pass promtool, fire when they should, and, like the
dashboard, name only metrics the service exports (a misspelt metric is an alert that
never fires and a panel that stays empty).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client import REGISTRY

from service.ops.metrics import Tally
from service.ops.metrics import render as render_metrics
from tests.test_deploy import DEPLOY, NAME, only, render

MONITORING: Final = DEPLOY / "monitoring"
DASHBOARD: Final = MONITORING / "grafana-dashboard.json"
# Prometheus's own per-target series: it exists for every target it scrapes, the
# service's pods included, and is how a pod that does not answer shows.
SCRAPE_SERIES: Final = {"up"}
PROMQL_KEYWORDS: Final = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_KEYWORDS_BINARY: Final = {"and", "or", "unless", "offset"}
# promtool's lint reads "counter" in a metric name as its type, and every name here starts
# with the product's, group_counter_: that one finding is expected of each metric.
PRODUCT_NAME_LINT: Final = re.compile(r"^group_counter_\w+ metric name should not include type 'counter'$")
# The alerts the operations kit promises (README, "Operations kit").
ALERTS: Final = {
    "GroupCounterErrorRatioHigh",
    "GroupCounterInternalErrors",
    "GroupCounterLatencyP99High",
    "GroupCounterDeliveryLagHigh",
    "GroupCounterRedisErrors",
    "GroupCounterPodsNotReady",
    "GroupCounterDown",
}


def exported_series() -> set[str]:
    """Every series name /metrics can show, from the registered metric families."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("group_counter_"):
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\boffset\s+-?\w+", "", text)  # offset durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if word in PROMQL_KEYWORDS or word in PROMQL_KEYWORDS_BINARY:
            continue
        names.add(word)
    return names


def rules() -> dict[str, Any]:
    objects = yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text())
    [rule] = [obj for obj in objects if obj and obj["kind"] == "PrometheusRule"]
    spec: dict[str, Any] = rule["spec"]
    return spec


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rules()["groups"] for rule in group["rules"] if "alert" in rule]


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is missing: `make redis-server` installs it as root "
            "(apt-get install --no-install-recommends prometheus)",
            pytrace=False,
        )
    return binary


def test_metric_name_extraction_sees_through_promql() -> None:
    expression = (
        'sum by (le) (rate(a_total{code!="0",x=~"y"}[5m])) / on (job) group_left b_count'
        ' > bool 0.5 and absent(up{job="j"} == 1) or c offset 1m'
    )
    assert metric_names(expression) == {"a_total", "b_count", "up", "c"}


def test_the_promised_alerts_exist_with_severity_and_description() -> None:
    found = {rule["alert"]: rule for rule in alerts()}
    assert set(found) == ALERTS
    for name, rule in found.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_every_alert_names_only_metrics_the_service_exports() -> None:
    known = exported_series() | SCRAPE_SERIES
    assert "group_counter_requests_total" in known
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
        assert names <= known, f"{rule['alert']}: not exported: {names - known}"


def test_every_dashboard_query_names_only_metrics_the_service_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_series() | SCRAPE_SERIES
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert expressions
    used: set[str] = set()
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        assert names <= known, f"not exported: {names - known} in {expression!r}"
        used |= names
    # Every metric the service exports has a panel (histograms through their buckets).
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported_series()}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families <= shown, f"no panel for {families - shown}"
    assert dashboard["uid"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "job"]


def write_rule_file(folder: Path, *, annotations: bool = True) -> Path:
    """The PrometheusRule's groups as a plain rule file; without annotations for
    `promtool test rules`, which would otherwise compare their rendered text too."""
    groups = rules()["groups"]
    if not annotations:
        groups = [
            {**group, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in group["rules"]]}
            for group in groups
        ]
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def test_alert_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(write_rule_file(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alerts())} rules found" in result.stdout


def firing(alert: str, at: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels or {}}]}


def quiet(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def test_alerts_fire_on_trouble_and_stay_quiet_on_a_healthy_service(tmp_path: Path) -> None:
    """promtool test rules: synthetic series, one minute apart, through each alert."""
    rule_file = write_rule_file(tmp_path, annotations=False)
    job = 'job="group-counter"'
    update = f'{job},command="update_group_counter"'
    healthy = [
        # 100 calls/s succeed, 1 call/s fails with 10004: 1%, below the ratio alert.
        {
            "series": f'group_counter_requests_total{{{job},command="get_group_counter",code="0"}}',
            "values": "0+6000x30",
        },
        {
            "series": f'group_counter_requests_total{{{job},command="get_group_counter",code="10004"}}',
            "values": "0+60x30",
        },
        {
            "series": f'group_counter_request_seconds_bucket{{{job},command="get_group_counter",le="0.005"}}',
            "values": "0+6000x30",
        },
        {
            "series": f'group_counter_request_seconds_bucket{{{job},command="get_group_counter",le="+Inf"}}',
            "values": "0+6000x30",
        },
        {"series": f'up{{{job},instance="a"}}', "values": "1x30"},
        {"series": f'up{{{job},instance="b"}}', "values": "1x30"},
        # Passes over the watchers within 100 ms.
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="0.1"}}', "values": "0+600x30"},
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="+Inf"}}', "values": "0+600x30"},
    ]
    trouble = [
        # Half the calls answer 10002, slowly; Redis calls fail; pod b stops answering.
        {
            "series": f'group_counter_requests_total{{{job},command="update_group_counter",code="10002"}}',
            "values": "0+3000x30",
        },
        {
            "series": f'group_counter_requests_total{{{job},command="update_group_counter",code="0"}}',
            "values": "0+3000x30",
        },
        {
            "series": f'group_counter_request_seconds_bucket{{{update},le="0.5"}}',
            "values": "0+3000x30",
        },
        {
            "series": f'group_counter_request_seconds_bucket{{{job},command="update_group_counter",le="1"}}',
            "values": "0+6000x30",
        },
        {
            "series": f'group_counter_request_seconds_bucket{{{update},le="+Inf"}}',
            "values": "0+6000x30",
        },
        {"series": f'group_counter_redis_errors_total{{{job},script="update"}}', "values": "0+600x30"},
        {"series": f'up{{{job},instance="a"}}', "values": "1x30"},
        {"series": f'up{{{job},instance="b"}}', "values": "0x30"},
        # Passes over the watchers of 2 s: far more watchers than one worker writes to in time.
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="1"}}', "values": "0x30"},
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="2.5"}}', "values": "0+30x30"},
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="+Inf"}}', "values": "0+30x30"},
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": healthy,
            "alert_rule_test": [quiet(alert, "20m") for alert in sorted(ALERTS)],
        },
        {
            "interval": "1m",
            "input_series": trouble,
            "alert_rule_test": [
                firing("GroupCounterErrorRatioHigh", "20m", {"severity": "warning"}),
                firing("GroupCounterInternalErrors", "20m", {"severity": "critical"}),
                firing("GroupCounterLatencyP99High", "20m", {"severity": "warning"}),
                firing("GroupCounterDeliveryLagHigh", "20m", {"severity": "warning"}),
                firing("GroupCounterRedisErrors", "20m", {"severity": "critical"}),
                firing("GroupCounterPodsNotReady", "20m", {"severity": "warning"}),
                quiet("GroupCounterDown", "20m"),
            ],
        },
        {
            "interval": "1m",
            "input_series": [{"series": f'up{{{job},instance="a"}}', "values": "0x30"}],
            "alert_rule_test": [firing("GroupCounterDown", "20m", {"severity": "critical"})],
        },
    ]
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [rule_file.name], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [promtool(), "test", "rules", test_file.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_renders_the_alerts_and_the_dashboard() -> None:
    objects = render("production")
    rule = only(objects, "PrometheusRule", NAME)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == rules()
    dashboard = only(objects, "ConfigMap", "group-counter-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["grafana-dashboard.json"]) == json.loads(DASHBOARD.read_text())


def test_the_metrics_exposition_passes_promtool_check_metrics() -> None:
    tally = Tally()  # one sample of every kind of metric, labelled ones included
    tally.call("get_group_counter", 0, 0.002)
    tally.redis_call("get_counters", 0.001)
    tally.redis_error("get_counters")
    tally.rejection("header_bytes")
    tally.batch(3)
    tally.watchers = 2
    tally.watched_groups = 1
    tally.watcher_left(cut_off=True)
    tally.resync_snapshots("gap", 1)
    tally.resync_snapshots("reconnect", 1)
    tally.flush()
    payload, _ = render_metrics()
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=payload, capture_output=True, timeout=60, check=False
    )
    findings = (result.stdout + result.stderr).decode().splitlines()
    assert result.returncode in (0, 3), findings  # 3: lint findings only, checked below
    assert [line for line in findings if line and not PRODUCT_NAME_LINT.match(line)] == []
    assert b'group_counter_resync_snapshots_total{reason="gap"}' in payload
