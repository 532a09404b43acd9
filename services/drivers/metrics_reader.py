"""Reads a Prometheus endpoint of the local stack (a service's or Triton's) into plain numbers."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, float]:
    """'name{label=value,...}' -> value, for every sample."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def total(values: dict[str, float], name: str, *label_parts: str) -> float:
    """Sum of the samples of one metric whose labels contain every given 'label=value' (or substring)."""
    return sum(v for k, v in values.items() if k.startswith(name + "{") and all(p in k for p in label_parts))
