"""The GPU decode path (PREPROCESSING_DECODE_IN_TRITON=true) through the real Triton: the photo's bytes go to the
photo_ensemble, whose photo_decode step (DALI: on a GPU in production, on its CPU backend here) decodes and resizes
them before the models. The hostile-image limits are still checked here, from the header, before anything reaches
Triton."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from services.common.contracts.product_classification.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.drivers.chaos.poison import marker_flood_listing, oversized_image_listing, scan_bomb_listing
from services.drivers.traffic import sample_listings, submit_and_collect
from services.localstack.stack import LocalStack, StackOptions
from services.preprocessing.images import ImageLimits, prepare_image
from services.common.decode_path import ENSEMBLE_MODEL, THUMBNAIL_SIDE
from tests.unit.crafted_images import exif_block, raw_tiff


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
    classifier = decode_in_triton.triton.classifier(decode_in_triton.called_models,
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
    strips = raw_tiff(Image.new("L", (1, 60_000), 90), rows_per_strip=1)  # 60,000 strips of one pixel
    exif = io.BytesIO()
    Image.open(io.BytesIO(good[0].listing.image_bytes)).save(exif, "PNG", exif=exif_block(6, fractions=60_000))
    batch = [good[0].listing, truncated_jpeg("decode-truncated"), good[1].listing,
             oversized_image_listing("decode-bomb"), scan_bomb_listing("decode-scans"), good[2].listing,
             marker_flood_listing("decode-markers"),
             common_pb2.Listing(listing_id="decode-strips", marketplace="de-modehaus", image_bytes=strips),
             common_pb2.Listing(listing_id="decode-exif", marketplace="de-modehaus", image_bytes=exif.getvalue())]
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
    scans = outcomes["decode-scans"].error  # refused from its markers: Triton's decoder never sees it
    assert scans.kind == common_pb2.ERROR_KIND_INVALID_IMAGE and "scans" in scans.reason
    markers = outcomes["decode-markers"].error  # counted before the file is opened
    assert markers.kind == common_pb2.ERROR_KIND_INVALID_IMAGE and "markers" in markers.reason
    for listing_id, counted in (("decode-strips", "strips"), ("decode-exif", "EXIF")):
        error = outcomes[listing_id].error  # counted before the file is opened, or from the header
        assert error.kind == common_pb2.ERROR_KIND_INVALID_IMAGE and counted in error.reason, listing_id


def test_the_decode_path_sends_the_thumbnail_triton_made_turned_as_the_exif_says(decode_in_triton):
    """photo_decode makes the thumbnail (the service never decodes the photo on this path); it is the picture the
    CPU path's thumbnail shows, turned by the EXIF orientation the service read from the header."""
    from services.common.contracts.product_classification.v1 import preprocessing_pb2, preprocessing_pb2_grpc

    photo = Image.open(io.BytesIO(sample_listings(1, seed=181, prefix="decode-thumb")[0].listing.image_bytes))
    listings = []
    for orientation in (1, 6):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        photo.convert("RGB").save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
        listings.append(common_pb2.Listing(listing_id=f"decode-thumb-{orientation}", marketplace="de-modehaus",
                                           image_bytes=buffer.getvalue()))
    with decode_in_triton.internal_channel("preprocessing", "gateway") as channel:
        stub = preprocessing_pb2_grpc.ImagePredictorStub(channel)
        thumbnails = [stub.PredictListing(preprocessing_pb2.PredictListingRequest(listing=listing),
                                          timeout=60).thumbnail_jpeg for listing in listings]
    for listing, thumbnail in zip(listings, thumbnails):
        assert thumbnail[:2] == b"\xff\xd8" and len(thumbnail) <= 64 * 1024
        made_here = prepare_image(listing.image_bytes, [224], ImageLimits(),
                                  thumbnail_size=THUMBNAIL_SIDE).thumbnail_jpeg
        got, expected = Image.open(io.BytesIO(thumbnail)), Image.open(io.BytesIO(made_here))
        assert abs(got.width - expected.width) <= 1 and abs(got.height - expected.height) <= 1
        got = np.asarray(got.resize(expected.size), np.int16)
        right = np.abs(got - np.asarray(expected, np.int16)).mean()
        wrong = np.abs(got - np.asarray(expected.transpose(Image.Transpose.ROTATE_180), np.int16)).mean()
        # the same picture the same way up (decoded at another scale, so not to the pixel), not another one
        assert right < 12 and right < wrong / 2, (right, wrong)
    upright, turned = (Image.open(io.BytesIO(t)).size for t in thumbnails)
    assert turned == (upright[1], upright[0])


def encoded(image: Image.Image, form: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=form, **options)
    return buffer.getvalue()


def test_gif_avif_and_transparent_photos_get_the_answer_the_same_picture_gets_as_a_jpeg(decode_in_triton):
    """Triton's DALI step reads neither GIF nor AVIF and drops alpha (a transparent background would come out black):
    the service decodes those photos itself and sends Triton a JPEG, so each is answered as the same picture sent as a
    JPEG is, with white where the photo was transparent, all in one batch with photos Triton decodes itself."""
    from services.common.contracts.product_classification.v1 import preprocessing_pb2, preprocessing_pb2_grpc

    photo = Image.open(io.BytesIO(sample_listings(1, seed=191, prefix="formats")[0].listing.image_bytes))
    photo = photo.convert("RGB")
    rgba = np.asarray(photo.convert("RGBA")).copy()
    edge = max(photo.size) // 8
    border = np.ones(rgba.shape[:2], bool)
    border[edge:-edge, edge:-edge] = False
    on_white = rgba.copy()
    on_white[border] = (255, 255, 255, 255)
    rgba[border] = (0, 0, 0, 0)  # transparent, black underneath
    uploads = {"jpeg": encoded(photo, "JPEG", quality=95), "gif": encoded(photo.quantize(256), "GIF"),
               "avif": encoded(photo, "AVIF", quality=90),
               "jpeg-on-white": encoded(Image.fromarray(on_white).convert("RGB"), "JPEG", quality=95),
               "png-transparent": encoded(Image.fromarray(rgba), "PNG"),
               "webp-transparent": encoded(Image.fromarray(rgba), "WEBP", lossless=True)}
    listings = [common_pb2.Listing(listing_id=f"formats-{kind}", marketplace="de-modehaus", image_bytes=data)
                for kind, data in uploads.items()]
    with decode_in_triton.gateway_channel() as channel:  # one batch: bytes Triton decodes and JPEGs made here
        response = gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListings(
            gateway_pb2.ClassifyListingsRequest(listings=listings), timeout=120)
    outcomes = {o.listing_id: o for o in response.outcomes}
    assert all(o.WhichOneof("outcome") == "classification" for o in outcomes.values()), outcomes
    label = {kind: outcomes[f"formats-{kind}"].classification.label for kind in uploads}
    assert label["gif"] == label["avif"] == label["jpeg"], label
    assert label["png-transparent"] == label["webp-transparent"] == label["jpeg-on-white"], label
    with decode_in_triton.internal_channel("preprocessing", "gateway") as channel:
        stub = preprocessing_pb2_grpc.ImagePredictorStub(channel)
        for listing in listings[-2:]:
            thumbnail = stub.PredictListing(preprocessing_pb2.PredictListingRequest(listing=listing),
                                            timeout=60).thumbnail_jpeg
            corner = np.asarray(Image.open(io.BytesIO(thumbnail)).convert("RGB"))[:8, :8]
            assert corner.mean() > 240, (listing.listing_id, corner.mean())  # white, as the CPU path composites


def test_a_model_reloaded_at_a_new_version_is_named_by_the_answers_it_gave(decode_in_triton):
    """photo_ensemble runs each model's latest version and its answer does not say which: the predictions name the
    version that answered, before and after a reload, and nothing is lost. Last here: it changes the stack's models."""
    from services.drivers.chaos import scenarios

    result = scenarios.model_reloaded(decode_in_triton, 120)
    assert result.lost == 0 and result.duplicated == 0 and result.dead_lettered == 0, result
    assert result.classified == 120, result
    notes = json.loads(result.notes)
    versions = notes["model_versions"]
    assert any(notes["old"] in v.split(",") for v in versions), versions
    assert any(notes["new"] in v.split(",") for v in versions), versions
