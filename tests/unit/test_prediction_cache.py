"""A photo answered before by the same model versions is answered again without decoding it or calling the models;
a photo held by several listings of one batch is decoded once."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing import core
from services.preprocessing.core import ListingPredictor, ListingRequest
from services.preprocessing.images import ImageLimits, image_digest
from services.preprocessing.prediction_cache import ENTRY_OVERHEAD_BYTES, PredictionCache
from services.preprocessing.sources import FetchSettings
from services.preprocessing.triton_models import ModelSpec

LABELS = ("dress", "hat")


class FakeTriton:
    """The seam: what Triton would answer, by model version, and what it was asked. `served` is the version Triton
    serves now; `specs` the one read last (as TritonClassifier reads them: again after finding a reload)."""

    def __init__(self):
        self.served = "1"
        self.read = "1"
        self.rows_classified: list[int] = []
        self.version_checks = 0
        self.reachable = True
        self.reload_during_next_call = False
        self.refuses: set[bytes] = set()
        self.answered: list[ModelSpec] = []
        self.read_again_after_next_answer = ""  # another thread's call finds a reload just after this one answered

    @property
    def specs(self):
        if not self.reachable:
            raise ClassificationError(ErrorKind.UNAVAILABLE, "Triton: connection refused")
        return [ModelSpec("m", self.read, "image", 32, 8, "probabilities", LABELS)]

    def input_sizes(self):
        return [32]

    def answer(self, version: str) -> np.ndarray:
        return np.array([0.9, 0.1] if version == "1" else [0.2, 0.8], np.float32)

    def classify(self, batches, deadline=None):
        if not self.reachable:
            raise ClassificationError(ErrorKind.UNAVAILABLE, "Triton: connection refused")
        if self.reload_during_next_call:  # found by the call itself: the versions read again, the call made again
            self.reload_during_next_call = False
            self.served = self.read = str(int(self.read) + 1)
        rows = len(batches[32])
        self.rows_classified.append(rows)
        self.answered = self.specs
        answer = {"m": np.tile(self.answer(self.read), (rows, 1))}
        if self.read_again_after_next_answer:
            self.served = self.read = self.read_again_after_next_answer
            self.read_again_after_next_answer = ""
        return answer

    def answered_by(self):
        return self.answered

    def classify_photos(self, photos, deadline=None, thumbnails=False):
        """The GPU decode path: the photos' bytes to the ensemble, which refuses the ones it cannot decode."""
        if not self.reachable:
            raise ClassificationError(ErrorKind.UNAVAILABLE, "Triton: connection refused")
        refused = {row: ClassificationError(ErrorKind.INVALID_IMAGE, "Triton could not decode the photo")
                   for row, data in enumerate(photos) if data in self.refuses}
        rows = len(photos) - len(refused)
        self.rows_classified.append(rows)
        self.answered = self.specs
        return {"m": np.tile(self.answer(self.read), (rows, 1))}, refused

    def versions_still_served(self, deadline=None):
        self.version_checks += 1
        if not self.reachable:
            raise ClassificationError(ErrorKind.UNAVAILABLE, "Triton: connection refused")
        if self.served != self.read:
            self.read = self.served
            return False
        return True


def photo(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


RED, BLUE = photo((200, 30, 30)), photo((30, 30, 200))


def listing(listing_id: str, data: bytes) -> ListingRequest:
    return ListingRequest(f"s-{listing_id}", common_pb2.Listing(listing_id=listing_id, marketplace="m",
                                                                image_bytes=data))


@pytest.fixture
def triton():
    return FakeTriton()


@pytest.fixture
def decodes(monkeypatch):
    """How many photos were decoded (prepare_image called)."""
    calls = []
    original = core.prepare_image

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(core, "prepare_image", counting)
    return calls


def predictor(triton, cache_bytes=1 << 20) -> ListingPredictor:
    return ListingPredictor(triton, ImageLimits(), FetchSettings(), decode_threads=1, thumbnail_size=32,
                            prediction_cache_bytes=cache_bytes)


def test_a_photo_sent_again_is_answered_without_decoding_it_or_calling_the_models(triton, decodes):
    service = predictor(triton)
    try:
        first = service.predict([listing("a", RED)])
        again = service.predict([listing("b", RED), listing("c", RED)])
    finally:
        service.stop()
    assert triton.rows_classified == [1] and len(decodes) == 1
    assert triton.version_checks == 1  # the batch answered wholly from before still asked which versions are served
    assert [event.listing_id for event in again] == ["b", "c"]
    for event in again:
        assert event.image_digest == first[0].image_digest == image_digest(RED)
        assert event.thumbnail_jpeg == first[0].thumbnail_jpeg and event.thumbnail_jpeg
        assert list(event.predictions) == list(first[0].predictions)
        assert event.predictions[0].model_version == "1"


def test_a_mixed_batch_sends_only_the_new_photos_to_the_models(triton, decodes):
    service = predictor(triton)
    try:
        service.predict([listing("a", RED)])
        results = service.predict([listing("b", BLUE), listing("c", RED), listing("d", b"not an image")])
    finally:
        service.stop()
    assert triton.rows_classified == [1, 1] and triton.version_checks == 0  # the models' call named the versions
    assert [r.image_digest for r in results[:2]] == [image_digest(BLUE), image_digest(RED)]
    assert isinstance(results[2], ClassificationError) and results[2].kind is ErrorKind.INVALID_IMAGE


def test_a_model_reloaded_at_a_new_version_answers_every_photo_again(triton, decodes):
    service = predictor(triton)
    try:
        service.predict([listing("a", RED)])
        triton.served = "2"  # reloaded between batches: a batch answered wholly from before finds it
        reloaded = service.predict([listing("b", RED)])
        service.predict([listing("c", BLUE)])
        triton.reload_during_next_call = True  # found by the models' call for the new photo of a mixed batch
        mixed = service.predict([listing("d", RED), listing("e", photo((30, 200, 30)))])
    finally:
        service.stop()
    assert reloaded[0].predictions[0].model_version == "2"
    assert list(reloaded[0].predictions[0].probabilities) == pytest.approx([0.2, 0.8])
    assert [e.predictions[0].model_version for e in mixed] == ["3", "3"]  # red was remembered under version 2
    assert [list(e.predictions[0].probabilities) for e in mixed] == [pytest.approx([0.2, 0.8])] * 2
    # a (1 row), b again under version 2 (1), c (1), the mixed batch's new photo (1) and then both (2)
    assert triton.rows_classified == [1, 1, 1, 1, 2]


def test_an_answer_is_named_and_kept_by_the_versions_that_made_it_when_another_call_reads_them_again(triton,
                                                                                                      decodes):
    service = predictor(triton)
    try:
        triton.read_again_after_next_answer = "2"  # e.g. a gRPC call's batch found the reload meanwhile
        first = service.predict([listing("a", RED)])
        again = service.predict([listing("b", RED)])
    finally:
        service.stop()
    assert first[0].predictions[0].model_version == "1"  # version 1 answered, not the version read last
    assert list(first[0].predictions[0].probabilities) == pytest.approx([0.9, 0.1])
    # kept under version 1, so not found under version 2: decoded and answered again
    assert again[0].predictions[0].model_version == "2" and len(decodes) == 2 and triton.rows_classified == [1, 1]


def test_triton_unreachable_fails_a_batch_answered_from_before_as_it_fails_any_other(triton):
    service = predictor(triton)
    try:
        service.predict([listing("a", RED)])
        triton.reachable = False
        with pytest.raises(ClassificationError) as raised:
            service.predict([listing("b", RED)])
    finally:
        service.stop()
    assert raised.value.kind is ErrorKind.UNAVAILABLE  # retried by the caller, never answered blind


def test_without_a_cache_every_photo_is_decoded_and_sent(triton, decodes):
    service = predictor(triton, cache_bytes=0)
    try:
        service.predict([listing("a", RED)])
        service.predict([listing("b", RED)])
    finally:
        service.stop()
    assert triton.rows_classified == [1, 1] and len(decodes) == 2 and triton.version_checks == 0


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_a_photo_several_listings_of_one_batch_hold_is_decoded_once_while_they_are_prepared_at_once(
        triton, monkeypatch, cache_bytes):
    decodes = []
    original = core.prepare_image

    def slow(*args, **kwargs):  # each decode takes long enough for the other threads to reach the same photo
        decodes.append(1)
        time.sleep(0.2)
        return original(*args, **kwargs)

    monkeypatch.setattr(core, "prepare_image", slow)
    service = ListingPredictor(triton, ImageLimits(), FetchSettings(), decode_threads=4, thumbnail_size=32,
                               prediction_cache_bytes=cache_bytes)
    try:
        results = service.predict([listing("a", RED), listing("b", RED), listing("c", BLUE), listing("d", RED)])
    finally:
        service.stop()
    assert len(decodes) == 2  # RED once, BLUE once
    assert [event.listing_id for event in results] == ["a", "b", "c", "d"]
    assert [event.image_digest for event in results] == [image_digest(p) for p in (RED, RED, BLUE, RED)]
    assert results[0].thumbnail_jpeg == results[1].thumbnail_jpeg == results[3].thumbnail_jpeg != b""
    assert triton.rows_classified == [2]  # one row a photo


def test_a_bad_photo_two_listings_of_one_batch_hold_is_read_once_and_refused_for_both(triton, decodes):
    service = predictor(triton, cache_bytes=0)
    service._decoders = ThreadPoolExecutor(max_workers=2)
    try:
        results = service.predict([listing("a", b"not an image"), listing("b", BLUE), listing("c", b"not an image")])
    finally:
        service.stop()
    assert len(decodes) == 2
    assert [type(r) for r in results] == [ClassificationError, type(results[1]), ClassificationError]
    assert results[0].kind == results[2].kind == ErrorKind.INVALID_IMAGE
    assert results[1].listing_id == "b" and triton.rows_classified == [1]


class ColourTriton(FakeTriton):
    """Answers each row by its photo's colour (red: dress, otherwise hat), so a listing given another row's answer
    shows; records the photos each call was sent."""

    def __init__(self):
        super().__init__()
        self.photos_sent: list[int] = []

    @staticmethod
    def by_colour(pixels: np.ndarray) -> np.ndarray:
        red, _, blue = pixels.reshape(-1, 3).mean(axis=0)
        return np.array([0.9, 0.1] if red > blue else [0.2, 0.8], np.float32)

    def classify(self, batches, deadline=None):
        self.photos_sent.append(len(batches[32]))
        self.answered = self.specs
        return {"m": np.stack([self.by_colour(tensor) for tensor in batches[32]])}

    def classify_photos(self, photos, deadline=None, thumbnails=False):
        self.photos_sent.append(len(photos))
        self.answered = self.specs
        refused = {row: ClassificationError(ErrorKind.INVALID_IMAGE, "Triton could not decode the photo")
                   for row, data in enumerate(photos) if data in self.refuses}
        answers = [self.by_colour(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                   for row, data in enumerate(photos) if row not in refused]
        return {"m": np.stack(answers) if answers else np.zeros((0, 2), np.float32)}, refused


@pytest.mark.parametrize("decode_in_triton", [False, True])
def test_listings_sharing_a_photo_share_its_row_and_each_gets_its_own_photos_answer(decode_in_triton):
    triton = ColourTriton()
    green = photo((30, 200, 30))
    triton.refuses.add(green)
    service = ListingPredictor(triton, ImageLimits(), FetchSettings(), decode_threads=2, thumbnail_size=32,
                               decode_in_triton=decode_in_triton, thumbnail_in_triton=False)
    try:
        results = service.predict([listing("a", RED), listing("b", green), listing("c", BLUE), listing("d", RED),
                                   listing("e", green), listing("f", BLUE)])
    finally:
        service.stop()
    assert triton.photos_sent == [3]
    answers = [results[i].predictions[0].probabilities[0] for i in (0, 2, 3, 5)]
    assert [results[i].listing_id for i in (0, 2, 3, 5)] == ["a", "c", "d", "f"]
    assert answers == pytest.approx([0.9, 0.2, 0.9, 0.2])
    refused = [results[1], results[4]]
    if decode_in_triton:  # Triton refused the green photo: both listings that hold it
        assert all(isinstance(r, ClassificationError) and r.kind is ErrorKind.INVALID_IMAGE for r in refused)
    else:  # decoded here, where green is a photo like any other
        assert [r.predictions[0].probabilities[0] for r in refused] == pytest.approx([0.2, 0.2])


def test_on_the_gpu_decode_path_too_and_a_batch_whose_new_photos_triton_refused_still_checks_the_versions(triton):
    service = ListingPredictor(triton, ImageLimits(), FetchSettings(), decode_threads=1, thumbnail_size=32,
                               decode_in_triton=True, thumbnail_in_triton=False, prediction_cache_bytes=1 << 20)
    unreadable_to_triton = photo((30, 200, 30))
    triton.refuses.add(unreadable_to_triton)
    try:
        first = service.predict([listing("a", RED)])
        triton.served = "2"
        results = service.predict([listing("b", RED), listing("c", unreadable_to_triton)])
    finally:
        service.stop()
    assert triton.version_checks == 1  # the models' call answered nothing of its own
    assert results[0].predictions[0].model_version == "2" and first[0].thumbnail_jpeg
    assert results[0].thumbnail_jpeg and results[0].image_digest == first[0].image_digest
    assert isinstance(results[1], ClassificationError) and results[1].kind is ErrorKind.INVALID_IMAGE
    # a; then b from before and c refused, found stale; then b and c again, c refused again
    assert triton.rows_classified == [1, 0, 1]


def entry_bytes(thumbnail: bytes, digest: str = "d") -> int:
    return ENTRY_OVERHEAD_BYTES + len(digest) + len(thumbnail) + 2 * 4


def test_the_cache_keeps_the_most_recently_used_within_its_bytes_and_copies_what_it_keeps():
    thumbnail = b"x" * 1000
    cache = PredictionCache(max_bytes=2 * entry_bytes(thumbnail, "a") + 10)
    row = np.array([0.9, 0.1], np.float32)
    cache.put("a", ("m:1",), {"m": row}, thumbnail)
    cache.put("b", ("m:1",), {"m": row}, thumbnail)
    row[0] = 0.0  # the batch's array is reused: what was kept does not change
    assert cache.get("a", ("m:1",)).probabilities["m"][0] == pytest.approx(0.9)  # a is now the most recent
    cache.put("c", ("m:1",), {"m": row}, thumbnail)
    assert cache.get("b", ("m:1",)) is None and cache.get("a", ("m:1",)) and cache.get("c", ("m:1",))
    assert cache.get("a", ("m:2",)) is None  # another version of the model: not its answer
    assert len(cache) == 2 and cache.size_bytes <= cache.max_bytes
    cache.put("huge", ("m:1",), {"m": row}, b"x" * cache.max_bytes)
    assert cache.get("huge", ("m:1",)) is None and len(cache) == 2
    with pytest.raises(ValueError):
        cache.get("a", ("m:1",)).probabilities["m"][0] = 1.0


def test_a_jpeg_with_a_comment_of_its_own_has_the_same_pixels_and_another_digest():
    from services.drivers.traffic import jpeg_with_comment

    commented = jpeg_with_comment(RED, "listing-1")
    assert image_digest(commented) != image_digest(RED)
    assert Image.open(io.BytesIO(commented)).info.get("comment") == b"listing-1"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(commented))), np.asarray(Image.open(io.BytesIO(RED))))
    assert jpeg_with_comment(b"GIF89a...", "x") == b"GIF89a..."
