"""Two preprocessing workers in one consumer group split the partitions and share the work."""

from __future__ import annotations

import time

import pytest

from services.drivers.metrics_reader import scrape, total
from services.localstack.stack import LocalStack, StackOptions
from services.drivers.traffic import sample_listings, submit_and_collect


ASSIGNED = "product_classification_kafka_assigned_partitions"
CONSUMED = "product_classification_kafka_messages_consumed_total"


@pytest.fixture(scope="module")
def two_worker_stack(tmp_path_factory):
    with LocalStack(StackOptions(work_dir=tmp_path_factory.mktemp("scaling"), partitions=4)) as stack:
        stack.add_service("preprocessing-2")
        yield stack


def assignments(stack) -> list[float]:
    return [total(scrape(stack.services[name].metrics_url), ASSIGNED, "listing-submitted")
            for name in ("preprocessing", "preprocessing-2")]


def test_partitions_split_and_work_is_shared(two_worker_stack):
    stack = two_worker_stack
    deadline = time.monotonic() + 60
    while assignments(stack) != [2.0, 2.0] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert assignments(stack) == [2.0, 2.0], "the 4 partitions should be split 2 and 2"

    samples = sample_listings(40, seed=31, prefix="scale")
    classified = submit_and_collect(stack.kafka_settings, [s.listing for s in samples], 120)
    assert len(classified) == 40

    consumed = [total(scrape(stack.services[name].metrics_url), CONSUMED, "listing-submitted")
                for name in ("preprocessing", "preprocessing-2")]
    assert sum(consumed) == 40 and min(consumed) > 0, f"work not shared: {consumed}"


def test_a_stopped_worker_hands_its_partitions_over(two_worker_stack):
    stack = two_worker_stack
    stack.services["preprocessing-2"].stop()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if total(scrape(stack.services["preprocessing"].metrics_url), ASSIGNED, "listing-submitted") == 4:
            break
        time.sleep(0.5)
    samples = sample_listings(8, seed=37, prefix="handover")
    classified = submit_and_collect(stack.kafka_settings, [s.listing for s in samples], 120)
    assert len(classified) == 8
