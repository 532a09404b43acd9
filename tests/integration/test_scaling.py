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
    assert total(scrape(stack.services["preprocessing"].metrics_url), ASSIGNED, "listing-submitted") == 4, \
        "the stopped worker's partitions were not handed over"
    samples = sample_listings(8, seed=37, prefix="handover")
    classified = submit_and_collect(stack.kafka_settings, [s.listing for s in samples], 120)
    assert len(classified) == 8


def test_each_listings_versions_come_out_in_the_order_they_went_in_across_rebalances(two_worker_stack):
    """Listings edited three times (a new photo each time) stream in while the group rebalances twice: a worker
    leaves (SIGTERM) and then joins again. Each listing's classifications come out in the order of its edits, once."""
    import threading

    from services.common.contracts.product_classification.v1 import events_pb2
    from services.drivers.traffic import TopicReader, classified_by_listing, submit_listings
    from services.preprocessing.images import image_digest

    stack = two_worker_stack
    if "preprocessing-2" not in stack.services or not stack.services["preprocessing-2"].process.running():
        stack.add_service("preprocessing-2")
    photos = sample_listings(90, seed=41, prefix="order")
    listing_ids = [f"order-{index}" for index in range(30)]
    edits = []  # edit round by round: every listing's first photo, then every second, then every third
    for round_ in range(3):
        for index, listing_id in enumerate(listing_ids):
            listing = photos[round_ * 30 + index].listing
            edited = type(listing)()
            edited.CopyFrom(listing)
            edited.listing_id = listing_id
            edits.append(edited)
    expected = {i: [image_digest(e.image_bytes) for e in edits if e.listing_id == i] for i in listing_ids}

    def stream(batch: list) -> None:
        for begin in range(0, len(batch), 10):
            submit_listings(stack.kafka_settings, batch[begin:begin + 10])
            time.sleep(0.3)

    def ours(rs) -> int:
        return sum(1 for r in rs if events_pb2.ListingClassified.FromString(r.value).classification.listing_id
                   in expected)

    reader = TopicReader(stack.kafka_settings, stack.kafka_settings.topics.listing_classified)
    sender = threading.Thread(target=stream, args=(edits[:60],), daemon=True)  # the first two rounds
    sender.start()
    records: list = []
    try:
        records += reader.read(lambda rs: ours(records) + ours(rs) >= 15, 120)
        began = time.monotonic()
        stack.services["preprocessing-2"].stop()  # a rebalance mid-stream: a worker leaves (SIGTERM)
        # it finished its batch, committed and exited by itself within the grace period: no SIGKILL behind it
        assert stack.services["preprocessing-2"].process.process.returncode == 0
        assert time.monotonic() - began < 20
        stack.add_service("preprocessing-2")  # and another: it joins again, while the third round goes in
        sender.join(120)
        stream(edits[60:])
        records += reader.read(lambda rs: ours(records) + ours(rs) >= 90, 180)
    finally:
        reader.close()
    found = classified_by_listing(records)
    came_out = {i: [e.classification.image_digest for e in found.get(i, [])] for i in listing_ids}
    assert came_out == expected
