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
    "GroupCounterRedisErrors",
    "GroupCounterLatencyP99High",
    "GroupCounterDeliveryLagHigh",
    "GroupCounterConnectionsRefused",
    "GroupCounterWatchersCutOff",
    "GroupCounterMemoryNearLimit",
    "GroupCounterPodsNotReady",
    "GroupCounterDown",
}
# The pods' memory and its limit, from the kubelet (cAdvisor) and kube-state-metrics: the
# service cannot see its container's limit, the cluster's own exporters do.
CLUSTER_SERIES: Final = {"container_memory_working_set_bytes", "kube_pod_container_resource_limits"}
README: Final = Path(__file__).resolve().parent.parent / "README.md"
# Where runbook_url points: the README's Runbook (prometheusrule.yaml says how to change it).
RUNBOOK_BASE: Final = "https://github.com/your-org/group-counter/blob/main/README.md"


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
        assert rule["annotations"]["runbook_url"], name


def test_every_alert_names_only_metrics_the_service_exports() -> None:
    known = exported_series() | SCRAPE_SERIES | CLUSTER_SERIES
    assert "group_counter_requests_total" in known
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
        assert names <= known, f"{rule['alert']}: not exported: {names - known}"


def test_every_dashboard_query_names_only_metrics_the_service_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_series() | SCRAPE_SERIES | CLUSTER_SERIES
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


# Grafana's unit ids: a rate is per second (answers: reqps; other events: ops or cps), a
# time is seconds, a share is a fraction of 1, a count of things open now is plain.
RATE_UNITS: Final = {"reqps", "ops", "cps"}


def unit_for(expression: str) -> set[str]:
    """The units an expression's values can be shown in, from what it computes."""
    if re.search(r"histogram_quantile\([^,]+,.*_seconds_bucket", expression) or re.search(
        r"_seconds_sum\b.*/.*_seconds_count\b", expression
    ):
        return {"s"}
    if "histogram_quantile(" in expression:
        return {"short"}  # a quantile of a size or a count
    if "/" in expression:
        return {"percentunit"}
    if re.search(r"\brate\(", expression):
        return RATE_UNITS
    if "_bytes" in expression or 'resource="memory"' in expression:
        return {"bytes"}
    return {"short"}


def test_every_dashboard_panel_shows_its_values_in_their_unit() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert unit_for("sum(group_counter_open_connections)") == {"short"}
    for panel in dashboard["panels"]:
        unit = panel["fieldConfig"]["defaults"]["unit"]
        for target in panel["targets"]:
            assert unit in unit_for(target["expr"]), f"{panel['title']}: unit {unit} for {target['expr']}"


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


def run_promtool_tests(folder: Path, tests: list[dict[str, Any]], *, annotations: bool = False) -> None:
    """`promtool test rules` on the alerts: synthetic series, one sample a minute."""
    rule_file = write_rule_file(folder, annotations=annotations)
    test_file = folder / "tests.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [rule_file.name], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [promtool(), "test", "rules", test_file.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=folder,
    )
    assert result.returncode == 0, result.stdout + result.stderr


JOB: Final = 'job="group-counter"'


def test_alerts_fire_on_trouble_and_stay_quiet_on_a_healthy_service(tmp_path: Path) -> None:
    job = JOB
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
        {"series": f'group_counter_redis_seconds_count{{{job},script="get"}}', "values": "0+6000x30"},
        {"series": f'up{{{job},instance="a"}}', "values": "1x30"},
        {"series": f'up{{{job},instance="b"}}', "values": "1x30"},
        # Passes over the watchers within 100 ms; a slow client cut off now and then.
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="0.1"}}', "values": "0+600x30"},
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="+Inf"}}', "values": "0+600x30"},
        {"series": f"group_counter_watchers{{{job}}}", "values": "1000x30"},
        {"series": f"group_counter_watchers_cut_off_total{{{job}}}", "values": "0+1x30"},
        {"series": POD_MEMORY, "values": "100000000x30"},
        {"series": POD_LIMIT, "values": "268435456x30"},
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
        {"series": f'group_counter_redis_errors_total{{{job},script="update"}}', "values": "0+3000x30"},
        {"series": f'group_counter_redis_seconds_count{{{job},script="update"}}', "values": "0+3000x30"},
        {"series": f'up{{{job},instance="a"}}', "values": "1x30"},
        {"series": f'up{{{job},instance="b"}}', "values": "0x30"},
        # Passes over the watchers of 2 s: far more watchers than one worker writes to in time.
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="1"}}', "values": "0x30"},
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="2.5"}}', "values": "0+30x30"},
        {"series": f'group_counter_delivery_pass_seconds_bucket{{{job},le="+Inf"}}', "values": "0+30x30"},
        {"series": f"group_counter_watchers{{{job}}}", "values": "1000x30"},
        {"series": f"group_counter_watchers_cut_off_total{{{job}}}", "values": "0+100x30"},
        {
            "series": f'group_counter_http_rejections_total{{{job},reason="max_connections"}}',
            "values": "0+600x30",
        },
        {"series": POD_MEMORY, "values": "260000000x30"},
        {"series": POD_LIMIT, "values": "268435456x30"},
    ]
    pod = {"namespace": "counters", "pod": "group-counter-a"}
    run_promtool_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": healthy,
                "alert_rule_test": [quiet(alert, "20m") for alert in sorted(ALERTS)],
            },
            {
                "interval": "1m",
                "input_series": trouble,
                "alert_rule_test": [
                    firing("GroupCounterErrorRatioHigh", "20m", {"severity": "critical"}),
                    firing("GroupCounterLatencyP99High", "20m", {"severity": "warning"}),
                    firing("GroupCounterDeliveryLagHigh", "20m", {"severity": "warning"}),
                    firing("GroupCounterRedisErrors", "20m", {"severity": "critical"}),
                    firing("GroupCounterConnectionsRefused", "20m", {"severity": "warning"}),
                    firing("GroupCounterWatchersCutOff", "20m", {"severity": "warning"}),
                    firing("GroupCounterMemoryNearLimit", "20m", {"severity": "warning", **pod}),
                    firing("GroupCounterPodsNotReady", "20m", {"severity": "warning"}),
                    quiet("GroupCounterDown", "20m"),
                ],
            },
            {
                "interval": "1m",
                "input_series": [{"series": f'up{{{job},instance="a"}}', "values": "0x30"}],
                "alert_rule_test": [firing("GroupCounterDown", "20m", {"severity": "critical"})],
            },
        ],
    )


# The pod memory series as the kubelet (cAdvisor) and kube-state-metrics name them.
POD_MEMORY: Final = (
    'container_memory_working_set_bytes{job="kubelet",namespace="counters",pod="group-counter-a",'
    'container="group-counter"}'
)
POD_LIMIT: Final = (
    'kube_pod_container_resource_limits{job="kube-state-metrics",namespace="counters",'
    'pod="group-counter-a",container="group-counter",resource="memory",unit="byte"}'
)


def series(name: str, values: str) -> dict[str, str]:
    return {"series": name, "values": values}


# Per alert changed or added by issue 21: the steady background, a blip (one minute of
# the fault from minute 10, then healthy again) and the same fault lasting. Each series
# is sampled once a minute for 40 minutes; a counter's blip is one jump, then flat.
CALLS: Final = f'group_counter_requests_total{{{JOB},command="update_group_counter",code="0"}}'
SERVER_FAILURES: Final = f'group_counter_requests_total{{{JOB},command="update_group_counter",code="10002"}}'
REDIS_CALLS: Final = f'group_counter_redis_seconds_count{{{JOB},script="update"}}'
REDIS_ERRORS: Final = f'group_counter_redis_errors_total{{{JOB},script="update"}}'
REFUSED: Final = f'group_counter_http_rejections_total{{{JOB},reason="max_connections"}}'
WATCHERS: Final = f"group_counter_watchers{{{JOB}}}"
CUT_OFF: Final = f"group_counter_watchers_cut_off_total{{{JOB}}}"
BLIP_AND_FAULT: Final[dict[str, tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]]] = {
    # 100 calls/s; a blip: one minute in which every call answers 10002 (a Redis failover).
    "GroupCounterErrorRatioHigh": (
        [series(CALLS, "0+6000x40")],
        [series(SERVER_FAILURES, "0x10 6000x30")],
        [series(SERVER_FAILURES, "0+300x40")],  # 5% of calls, lasting
    ),
    # 100 Redis calls/s; a blip: one single error (what paged before), then a minute of
    # every Redis call failing.
    "GroupCounterRedisErrors": (
        [series(REDIS_CALLS, "0+6000x40")],
        [series(REDIS_ERRORS, "0x10 1x5 6001x25")],
        [series(REDIS_ERRORS, "0+600x40")],  # 10% of Redis calls, lasting
    ),
    # A burst of 1,000 refused connections in one minute; lasting: 1 a second.
    "GroupCounterConnectionsRefused": (
        [],
        [series(REFUSED, "0x10 1000x30")],
        [series(REFUSED, "0+60x40")],
    ),
    # 1,000 watchers; a blip: half of them cut off at once (a network hiccup); lasting:
    # 20 a minute (10% every 5 minutes).
    "GroupCounterWatchersCutOff": (
        [series(WATCHERS, "1000x40")],
        [series(CUT_OFF, "0x10 500x30")],
        [series(CUT_OFF, "0+20x40")],
    ),
    # A 256 MiB limit; a blip: one minute at 95% of it (a burst of large requests).
    "GroupCounterMemoryNearLimit": (
        [series(POD_LIMIT, "268435456x40")],
        [series(POD_MEMORY, "100000000x10 255000000 100000000x30")],
        [series(POD_MEMORY, "100000000x5 240000000x35")],  # 89%, lasting
    ),
}
SEVERITY: Final = {rule["alert"]: rule["labels"]["severity"] for rule in alerts()}
EXTRA_LABELS: Final = {"GroupCounterMemoryNearLimit": {"namespace": "counters", "pod": "group-counter-a"}}


def test_every_alert_changed_by_issue_21_has_a_blip_and_a_fault_case() -> None:
    assert set(BLIP_AND_FAULT) == ALERTS - {
        "GroupCounterLatencyP99High",
        "GroupCounterDeliveryLagHigh",
        "GroupCounterPodsNotReady",
        "GroupCounterDown",
    }


@pytest.mark.parametrize("alert", sorted(BLIP_AND_FAULT))
def test_a_blip_does_not_page_and_a_lasting_fault_does(alert: str, tmp_path: Path) -> None:
    background, blip, fault = BLIP_AND_FAULT[alert]
    labels = {"severity": SEVERITY[alert], **EXTRA_LABELS.get(alert, {})}
    run_promtool_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": background + blip,
                # Every minute from the blip to the end: it never fires.
                "alert_rule_test": [quiet(alert, f"{minute}m") for minute in range(9, 40)],
            },
            {
                "interval": "1m",
                "input_series": background + fault,
                "alert_rule_test": [quiet(alert, "5m"), firing(alert, "25m", labels)],
            },
        ],
    )


def test_client_caused_errors_do_not_page(tmp_path: Path) -> None:
    """Half of all calls failing with the codes a client causes (no such group, over its
    rate limit, an end user over its bounds, an expired usersig), for 40 minutes."""
    client = [
        series(
            f'group_counter_requests_total{{{JOB},command="update_group_counter",code="{code}"}}', "0+1500x40"
        )
        for code in ("10010", "60007", "61007", "70001")
    ]
    run_promtool_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [series(CALLS, "0+6000x40"), *client],
                "alert_rule_test": [quiet("GroupCounterErrorRatioHigh", f"{m}m") for m in range(10, 40, 5)],
            }
        ],
    )


def test_edge_503s_count_as_failures_on_the_services_side(tmp_path: Path) -> None:
    """Workers at max_connections refuse 5% of the calls with HTTP 503 and no call answers
    10002: that is the service failing its clients, and pages."""
    run_promtool_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [series(CALLS, "0+5700x40"), series(REFUSED, "0+300x40")],
                "alert_rule_test": [
                    quiet("GroupCounterErrorRatioHigh", "5m"),
                    firing("GroupCounterErrorRatioHigh", "25m", {"severity": "critical"}),
                ],
            }
        ],
    )


def fires_with(alert: str, at: str, severity: str, description: str, anchor: str) -> dict[str, Any]:
    """The alert firing with exactly this text (its summary as written in the rule)."""
    [rule] = [rule for rule in alerts() if rule["alert"] == alert]
    annotations = {
        "summary": rule["annotations"]["summary"],
        "description": description,
        "runbook_url": f"{RUNBOOK_BASE}#{anchor}",
    }
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {"severity": severity}, "exp_annotations": annotations}],
    }


def test_alert_texts_read_as_people_write_them(tmp_path: Path) -> None:
    """The rendered annotations, runbook link included: a percentage, not '3.333m calls/s'."""
    redis_text = (
        "10% of Redis calls failed over 5 minutes (timeouts, refused connections, OOM under"
        " noeviction). Plain /readyz on a pod reports Redis."
    )
    refused_text = (
        "720 connections a minute refused with HTTP 503 over 5 minutes;"
        " group_counter_open_connections by pod shows which are full."
    )
    run_promtool_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [series(REDIS_CALLS, "0+5400x40"), series(REDIS_ERRORS, "0+600x40")],
                "alert_rule_test": [
                    fires_with("GroupCounterRedisErrors", "25m", "critical", redis_text, "redis-down")
                ],
            },
            {
                "interval": "1m",
                "input_series": [series(REFUSED, "0+720x40")],
                "alert_rule_test": [
                    fires_with(
                        "GroupCounterConnectionsRefused",
                        "25m",
                        "warning",
                        refused_text,
                        "connections-refused",
                    )
                ],
            },
        ],
        annotations=True,
    )


def test_every_value_in_an_annotation_is_humanized() -> None:
    for rule in alerts():
        for name, text in rule["annotations"].items():
            for use in re.findall(r"\{\{[^}]*\$value[^}]*\}\}", text):
                assert re.search(r"\|\s*humanize(Percentage|Duration)?\s*\}\}$", use), (
                    rule["alert"],
                    name,
                    use,
                )


def github_anchors(markdown: str) -> list[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped
    but for hyphens, spaces made hyphens."""
    anchors = []
    for line in markdown.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if heading:
            text = re.sub(r"[`*_]", "", heading.group(1)).lower()
            anchors.append(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_every_alert_links_a_runbook_entry_that_exists() -> None:
    readme = README.read_text()
    anchors = github_anchors(readme)
    runbook = readme[readme.index("\n### Runbook\n") :]
    runbook = runbook[: runbook.index("\n## ")]
    in_runbook = set(github_anchors(runbook))
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE, rule["alert"]
        assert anchor in in_runbook, f"{rule['alert']}: no Runbook heading for #{anchor}"
        assert anchors.count(anchor) == 1, f"#{anchor} names several headings"


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
