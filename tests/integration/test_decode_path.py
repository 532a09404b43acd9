"""The GPU decode path (PREPROCESSING_DECODE_IN_TRITON=true) through the real Triton: the photo's bytes go to the
photo_ensemble, whose photo_decode step (DALI on a GPU; its Pillow twin on this CPU) decodes and resizes them before
the models. The hostile-image limits are still checked here, from the header, before anything reaches Triton."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from services.common.contracts.product_classification.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.drivers.poison import oversized_image_listing
from services.drivers.traffic import sample_listings, submit_and_collect
from services.localstack.stack import LocalStack, StackOptions
from services.preprocessing.triton_models import TritonClassifier
from services.common.decode_path import ENSEMBLE_MODEL


@pytest.fixture(scope="module")
def decode_in_triton(tmp_path_factory):
    options = StackOptions(work_dir=tmp_path_factory.mktemp("decode-in-triton"),
                           extra_env={"PREPROCESSING_DECODE_IN_TRITON": "true"})
    with LocalStack(options) as stack:
        yield stack


def truncated_jpeg(listing_id: str) -> common_pb2.Listing:
    """A photo whose header is sound (it passes the checks made here) and whose body stops half-way."""
    photo = sample_listings(1, seed=163, prefix="truncated")[0].listing.image_bytes
    return common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus", image_bytes=photo[:len(photo) // 2])


def test_the_ensemble_answers_as_the_models_do_on_the_same_squares(decode_in_triton):
    """The ensemble's outputs are the called models' probabilities, one row per photo, in order."""
    photos = [s.listing.image_bytes for s in sample_listings(5, seed=167, prefix="ensemble")]
    classifier = TritonClassifier(decode_in_triton.triton.grpc_url, decode_in_triton.called_models,
                                  ensemble=ENSEMBLE_MODEL)
    classifier.start()
    try:
        probabilities, refused = classifier.classify_photos(photos)
    finally:
        classifier.stop()
    assert refused == {}
    for name in decode_in_triton.called_models:
        assert probabilities[name].shape == (5, 10)
        assert np.allclose(probabilities[name].sum(axis=1), 1.0, atol=1e-3)


def test_listings_through_kafka_are_classified_and_mostly_right(decode_in_triton):
    samples = sample_listings(30, seed=173, prefix="decode-kafka")
    found = submit_and_collect(decode_in_triton.kafka_settings, [s.listing for s in samples], 180)
    assert set(found) == {s.listing.listing_id for s in samples}
    right = sum(found[s.listing.listing_id][0].classification.label == s.true_label for s in samples)
    # No product segmentation on this path (the whole photo is resized): fewer right than the CPU path, not chance.
    assert right >= 0.7 * len(samples), f"{right}/{len(samples)}"


def test_a_photo_that_does_not_decode_fails_alone_and_the_header_limits_hold_before_triton(decode_in_triton):
    good = sample_listings(3, seed=179, prefix="decode-batch")
    batch = [good[0].listing, truncated_jpeg("decode-truncated"), good[1].listing,
             oversized_image_listing("decode-bomb"), good[2].listing]
    with decode_in_triton.gateway_channel() as channel:
        response = gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListings(
            gateway_pb2.ClassifyListingsRequest(listings=batch), timeout=120)
    outcomes = {o.listing_id: o for o in response.outcomes}
    for sample in good:
        assert outcomes[sample.listing.listing_id].WhichOneof("outcome") == "classification"
    truncated = outcomes["decode-truncated"].error
    assert truncated.kind == common_pb2.ERROR_KIND_INVALID_IMAGE and "decode" in truncated.reason
    bomb = outcomes["decode-bomb"].error
    assert bomb.kind == common_pb2.ERROR_KIND_IMAGE_TOO_LARGE and "pixels" in bomb.reason


def test_the_decode_path_keeps_sending_thumbnails(decode_in_triton):
    listing = sample_listings(1, seed=181, prefix="decode-thumb")[0].listing
    with decode_in_triton.internal_channel("preprocessing", "gateway") as channel:
        from services.common.contracts.product_classification.v1 import preprocessing_pb2, preprocessing_pb2_grpc

        prediction = preprocessing_pb2_grpc.ImagePredictorStub(channel).PredictListing(
            preprocessing_pb2.PredictListingRequest(listing=listing), timeout=60)
    assert prediction.thumbnail_jpeg[:2] == b"\xff\xd8" and len(prediction.thumbnail_jpeg) <= 64 * 1024
