"""The operators' alerts (deploy/prometheus/alerts.yml): checked by Prometheus's own promtool (the rules, the
configuration that loads them, and what each alert does with the series in tests/prometheus/alerts_test.yml), and
held to the metrics the services really export, so a renamed metric or label cannot leave an alert that never fires."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY

from services.common.errors import ErrorKind
from tests.unit.test_deploy import rendered, tool

importlib.import_module("services.common.metrics")  # registers every metric the services export
ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
OURS = re.compile(r"\bproduct_classification_[a-z_]+")
SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$")
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"\s*,?')
SCRAPE_LABELS = {"job", "instance"}


def promtool() -> str:
    found = shutil.which("promtool", path=str(Path(sys.executable).parent)) or shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (`make test` takes it out of Debian's prometheus package)")
    return found


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def collector(name: str):
    """The collector that exports a series of this name (a counter's _total, a histogram's _bucket included)."""
    found = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001  (prometheus_client has no public lookup)
    assert found is not None, f"no service exports {name}"
    return found


def series_labels(text: str) -> tuple[str, dict[str, str]]:
    match = SERIES.match(text.strip())
    assert match, text
    labels = dict(LABEL.findall(match.group("labels") or ""))
    return match.group("name"), labels


def test_the_rules_and_the_configuration_that_loads_them_pass_promtool():
    tool = promtool()
    for command in (["check", "rules", str(ALERTS)],
                    ["check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")]):
        result = subprocess.run([tool, *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_what_it_is_for_and_not_on_what_it_is_not():
    result = subprocess.run([promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
                            timeout=120, cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_says_how_urgent_it_is():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", ()) if case["exp_alerts"]}
    for rule in rules():
        assert rule["alert"] in fired, f"{rule['alert']} has no test in which it fires"
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_the_alerts_ask_for_metrics_and_labels_the_services_export():
    for rule in rules():
        expression = rule["expr"]
        for name in OURS.findall(expression):
            labelnames = set(collector(name)._labelnames)  # noqa: SLF001
            selector = re.search(re.escape(name) + r"\{([^}]*)\}", expression)
            for label, _, value in re.findall(r'([a-z_]+)\s*(=~|!~|=|!=)\s*"([^"]*)"',
                                              selector.group(1) if selector else ""):
                assert label in labelnames, f"{rule['alert']}: {name} has no label {label}"
                if label == "error_kind":
                    assert set(value.split("|")) <= {kind.name for kind in ErrorKind}, rule["alert"]
        ours = OURS.findall(expression)
        exported = set().union(*(collector(name)._labelnames for name in ours))  # noqa: SLF001
        for grouping in re.findall(r"by \(([^)]*)\)", expression) if ours else ():
            for label in (part.strip() for part in grouping.split(",")):
                assert label in exported | SCRAPE_LABELS | {"le"}, f"{rule['alert']}: grouped by {label}, not exported"


def test_the_tests_feed_series_as_the_services_label_them():
    """The alert tests' input series carry exactly the labels the code gives each metric (plus the scrape's job and
    instance), with values the code gives them: an alert test cannot pass on series no service would send."""
    outcomes = set(re.findall(r'"(classified|needs_review|failed)"', (ROOT / "services/results/core.py").read_text()))
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            name, labels = series_labels(series["series"])
            if not name.startswith("product_classification_"):
                continue
            exported = set(collector(name)._labelnames)  # noqa: SLF001
            exported |= {"le"} if name.endswith("_bucket") else set()
            assert set(labels) - SCRAPE_LABELS == exported, f"{series['series']}: the code labels it {exported}"
            if "error_kind" in labels:
                assert labels["error_kind"] in {kind.name for kind in ErrorKind}, series["series"]
            if "outcome" in labels and name.startswith("product_classification_classifications"):
                assert labels["outcome"] in outcomes, series["series"]


def test_kubernetes_gets_the_same_alerts_as_a_configmap():
    documents = rendered("overlays/production")
    alerts = [document for document in documents if document["kind"] == "ConfigMap"
              and document["metadata"]["name"] == "product-classification-alerts"]
    assert len(alerts) == 1 and alerts[0]["data"]["alerts.yml"] == ALERTS.read_text()


def with_prometheus_operator(overlay: str, tmp_path: Path) -> list[dict]:
    """An overlay with the Prometheus Operator component added, as an operator's own overlay would add it."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "product-classification",
        "resources": [os.path.relpath(ROOT / "deploy" / overlay, tmp_path)],  # kustomize takes no absolute path
        "components": [os.path.relpath(ROOT / "deploy" / "components" / "prometheus-operator", tmp_path)]}))
    output = subprocess.run([tool("kubectl"), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(tmp_path)],
                            check=True, capture_output=True, text=True).stdout
    return [document for document in yaml.safe_load_all(output) if document]


def test_the_prometheus_rule_is_what_alerts_yml_makes():
    """The Prometheus Operator's copy of the alerts (a PrometheusRule) holds the same groups, rule for rule."""
    rule = ROOT / "deploy" / "components" / "prometheus-operator" / "prometheus-rule.yaml"
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "prometheus" / "prometheus_rule.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load(rule.read_text())["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


@pytest.mark.parametrize("overlay", ["overlays/production", "overlays/production-colocated-workers"])
def test_the_pod_monitor_scrapes_every_metrics_port_under_its_service_name(overlay, tmp_path):
    """Every container port named for metrics in the overlay's pods is one of the PodMonitor's endpoints, and the
    job the target gets (the pod's jobLabel value, or the endpoint's relabelling) is the service's name: the job
    names ProductClassificationServiceDown matches. The PodMonitor and PrometheusRule hold to their CRDs' fields."""
    documents = with_prometheus_operator(overlay, tmp_path)
    schema = json.loads((ROOT / "tests" / "schemas" / "prometheus-operator.schema.json").read_text())
    monitors = [document for document in documents if document["apiVersion"].startswith("monitoring.coreos.com/")]
    for document in monitors:
        jsonschema.validate(document, schema)
        assert document["metadata"]["namespace"] == "product-classification"
    [monitor] = [document["spec"] for document in monitors if document["kind"] == "PodMonitor"]
    [expression] = monitor["selector"]["matchExpressions"]
    endpoints = {endpoint["port"]: endpoint for endpoint in monitor["podMetricsEndpoints"]}
    down = next(rule["expr"] for rule in rules() if rule["alert"] == "ProductClassificationServiceDown")
    compose_jobs = re.search(r'up\{job=~"([^"]+)"\}', down).group(1).split("|")
    scraped = set()
    for document in documents:
        if document["kind"] != "Deployment":
            continue
        labels = document["spec"]["template"]["metadata"]["labels"]
        selected = labels.get(expression["key"]) in expression["values"]
        for container in document["spec"]["template"]["spec"]["containers"]:
            for port in container.get("ports", ()):
                if not port["name"].endswith("metrics"):
                    continue
                assert selected and port["name"] in endpoints, f"{container['name']}'s {port['name']} is not scraped"
                job = labels[monitor["jobLabel"]]
                for relabel in endpoints[port["name"]].get("relabelings", ()):
                    if relabel["targetLabel"] == "job":
                        job = relabel["replacement"]
                service = re.sub(r"-\d+$", "", container["name"])  # preprocessing-1, a co-located worker
                assert job == service and job in compose_jobs, (container["name"], port["name"], job)
                scraped.add((document["metadata"]["name"], container["name"]))
    assert {"gateway", "preprocessing", "results", "triton"} <= {container for _, container in scraped}
    if overlay.endswith("colocated-workers"):
        assert {("triton", "preprocessing-1"), ("triton", "preprocessing-2")} <= scraped
