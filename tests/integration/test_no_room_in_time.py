"""A batch of large, sound photos through Kafka, more than the worker can decode before the batch's deadline: the
photos still waiting at the deadline (for a decoding thread, or for decoding memory) used to be dead-lettered as
INVALID_IMAGE, a seller's good photo refused as a bad one. Now each goes to the back of its topic and comes back in a
later batch; every listing is classified and none is dead-lettered."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.drivers.benchmarks.pipeline_runs import EVERY_PHOTO_DECODED
from services.drivers.metrics_reader import scrape, total
from services.drivers.traffic import TopicReader, labelled_photos, submit_and_collect
from services.localstack.stack import LocalStack, StackOptions

pytestmark = pytest.mark.integration

PHOTOS = 30
# A 0.6 s batch deadline (no fetch time, 0.6 s of decoding); one 21-megapixel PNG decode at a time (about 140 MB by
# the estimate, in 200), each about 0.1 s on two cores: thirty cannot all be decoded by the deadline, while each one
# decodes well within it, so none is the photo's fault.
NO_ROOM = {"PREPROCESSING_DECODE_TIMEOUT_S": "0.6", "PREPROCESSING_FETCH_TOTAL_TIMEOUT_S": "0",
           "PREPROCESSING_DECODE_MEMORY_MB": "200", "PREPROCESSING_DECODE_THREADS": "2",
           "PREPROCESSING_MAX_DEFERRALS": "50"}


def large_listings(count: int) -> list[common_pb2.Listing]:
    listings = []
    for index, (path, _) in enumerate(labelled_photos()[:count]):
        picture = Image.open(path).convert("RGB")
        large = picture.resize((picture.width * 10, picture.height * 10), Image.NEAREST)
        out = io.BytesIO()
        large.save(out, "PNG", compress_level=1)
        listings.append(common_pb2.Listing(listing_id=f"no-room-{index}", marketplace="de-modehaus",
                                           image_bytes=out.getvalue()))
    return listings


def test_photos_the_worker_has_no_room_for_in_time_are_deferred_and_all_classified(stack, tmp_path):
    listings = large_listings(PHOTOS)
    options = StackOptions(work_dir=tmp_path / "no-room", triton=stack.triton,
                           extra_env={**EVERY_PHOTO_DECODED, **NO_ROOM})
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
    deferred = total(metrics, "product_classification_kafka_messages_deferred_total", "stage=preprocessing")
    assert deferred > 0, "every photo was decoded by its batch's deadline: the test did not make the worker short"
