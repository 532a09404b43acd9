"""A batch of large, sound photos through Kafka, more than the worker can decode before the batch's deadline: the
photos still waiting at the deadline (for a decoding thread, or for decoding memory) used to be dead-lettered as
INVALID_IMAGE, a seller's good photo refused as a bad one. Now each goes to the back of its topic and comes back in a
later batch; every listing is classified and none is dead-lettered."""

from __future__ import annotations

import json
import time

import pytest

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.drivers.chaos.scenarios import DEFERRED_METRIC, WORKER_SHORT_OF_ROOM
from services.drivers.metrics_reader import scrape, total
from services.drivers.traffic import TopicReader, large_photo_listings, submit_and_collect, submit_listings
from services.localstack.stack import LocalStack, StackOptions
from services.tools import replay_dead_letters

pytestmark = pytest.mark.integration

PHOTOS = 30
# WORKER_SHORT_OF_ROOM: a 0.6 s batch deadline and one decode at a time. Thirty 21-megapixel PNGs, about 0.1 s each
# on two cores, cannot all be decoded by the deadline, while each one decodes well within it, so none is the photo's
# fault.


def test_photos_the_worker_has_no_room_for_in_time_are_deferred_and_all_classified(stack, tmp_path):
    listings = [sample.listing for sample in large_photo_listings(PHOTOS, seed=211, prefix="no-room")]
    options = StackOptions(work_dir=tmp_path / "no-room", triton=stack.triton, extra_env=WORKER_SHORT_OF_ROOM)
    with LocalStack(options) as small:
        found = submit_and_collect(small.kafka_settings, listings, 240)
        failed = TopicReader(small.kafka_settings, small.kafka_settings.topics.processing_failed)
        try:
            letters = [events_pb2.ProcessingFailed.FromString(r.value) for r in failed.read(lambda _: False, 3)]
        finally:
            failed.close()
        metrics = scrape(small.services["preprocessing"].metrics_url)
    wanted = {listing.listing_id for listing in listings}
    assert [f"{letter.listing_id}: {letter.reason}" for letter in letters if letter.listing_id in wanted] == []
    assert set(found) == wanted, f"never classified: {sorted(wanted - set(found))}"
    deferred = total(metrics, DEFERRED_METRIC, "stage=preprocessing")
    assert deferred > 0, "every photo was decoded by its batch's deadline: the test did not make the worker short"


class Outcomes:
    """Every classification and dead letter of a stack, read as they come."""

    def __init__(self, settings):
        self.readers = {"classified": TopicReader(settings, settings.topics.listing_classified),
                        "failed": TopicReader(settings, settings.topics.processing_failed)}
        self.classified: set[str] = set()
        self.letters: list[events_pb2.ProcessingFailed] = []

    def wait(self, settled, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not settled(self) and time.monotonic() < deadline:
            for record in self.readers["classified"].read(lambda records: len(records) > 0, 0.5):
                self.classified.add(events_pb2.ListingClassified.FromString(record.value).classification.listing_id)
            self.letters += [events_pb2.ProcessingFailed.FromString(record.value)
                             for record in self.readers["failed"].read(lambda records: len(records) > 0, 0.5)]

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


def test_a_listing_deferred_the_most_times_is_dead_lettered_as_overloaded_and_an_operator_replays_it(stack, tmp_path,
                                                                                                    capsys):
    """With no deferral allowed, the photos without room are dead-lettered at once, as OVERLOADED (never as bad
    images); replaying them (replay-dead-letters --kind OVERLOADED --replay, a few at a time as the workers have
    room) classifies every one."""
    listings = [sample.listing for sample in large_photo_listings(PHOTOS, seed=223, prefix="no-deferral")]
    wanted = {listing.listing_id for listing in listings}
    options = StackOptions(work_dir=tmp_path / "no-deferral", triton=stack.triton,
                           extra_env={**WORKER_SHORT_OF_ROOM, "PREPROCESSING_MAX_DEFERRALS": "0"})
    with LocalStack(options) as small:
        outcomes = Outcomes(small.kafka_settings)
        try:
            submit_listings(small.kafka_settings, listings)
            outcomes.wait(lambda o: wanted <= o.classified | {letter.listing_id for letter in o.letters}, 240)
            first_letters = [letter for letter in outcomes.letters if letter.listing_id in wanted]
            rounds = 0
            while not wanted <= outcomes.classified and rounds < 10:
                rounds += 1
                waiting = sorted(wanted - outcomes.classified)[:4]
                letters_before = len(outcomes.letters)
                arguments = ["--kind", "OVERLOADED", "--idle-s", "2", "--replay"]
                for listing_id in waiting:
                    arguments += ["--listing", listing_id]
                assert replay_dead_letters.main(arguments, settings=small.kafka_settings) == 0
                sent = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
                assert sum(1 for line in sent if line.get("sent")) >= len(waiting)
                outcomes.wait(lambda o: set(waiting) <= o.classified | {
                    letter.listing_id for letter in o.letters[letters_before:]}, 120)
        finally:
            outcomes.close()
    assert first_letters, "every photo was decoded by its batch's deadline: the test did not make the worker short"
    assert {common_pb2.ErrorKind.Name(letter.error_kind) for letter in first_letters} == {"ERROR_KIND_OVERLOADED"}
    assert all("deferred 0 times" in letter.reason for letter in first_letters)
    assert wanted <= outcomes.classified, f"never classified: {sorted(wanted - outcomes.classified)}"
