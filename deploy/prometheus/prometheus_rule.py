"""Writes deploy/components/prometheus-operator/prometheus-rule.yaml: deploy/prometheus/alerts.yml's groups as a
PrometheusRule, for a Prometheus run by the Prometheus Operator. `make prometheus-rule`; the test suite fails while
the two differ. Run from anywhere: python deploy/prometheus/prometheus_rule.py [--check]."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
RULE = HERE.parent / "components" / "prometheus-operator" / "prometheus-rule.yaml"
HEADER = ("# Generated from deploy/prometheus/alerts.yml by `make prometheus-rule` (read the alerts and their comments\n"
          "# there): the same groups as a PrometheusRule. tests/unit/test_alerts.py fails while the two differ.\n")


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None  # a multi-line expression stays readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def prometheus_rule() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    resource = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                "metadata": {"name": "product-classification-alerts"}, "spec": {"groups": groups}}
    return HEADER + yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def main() -> None:
    text = prometheus_rule()
    if "--check" in sys.argv[1:]:
        if not RULE.exists() or RULE.read_text() != text:
            sys.exit(f"{RULE} is not what alerts.yml makes: run `make prometheus-rule`")
        return
    RULE.write_text(text)
    print(f"wrote {RULE}")


if __name__ == "__main__":
    main()
