"""Listings in, both models' predictions out: the preprocessing service's core, shared by its Kafka and gRPC edges."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.common.validation import check_listing
from services.common.metrics import (PREDICTION_CACHE_BYTES, PREDICTION_CACHE_LOOKUPS, PREDICTION_CACHE_PHOTOS,
                                     PREPROCESS_SECONDS)
from services.common.decode_path import THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT, THUMBNAIL_SIDE
from services.preprocessing.decode_memory import DecodeMemory, JobDecodeMemory
from services.preprocessing.images import (ImageLimits, PreparedImage, image_digest, prepare_encoded, prepare_image,
                                           thumbnail_from_pixels)
from services.preprocessing.prediction_cache import PredictionCache, RememberedPrediction
from services.preprocessing.settings import PreprocessingSettings
from services.preprocessing.sources import FetchSettings, image_bytes
from services.preprocessing.triton_models import TritonClassifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListingRequest:
    submission_id: str
    listing: common_pb2.Listing
    submitted_at: Timestamp | None = None


def preprocessing_limits(settings: PreprocessingSettings) -> tuple[ImageLimits, FetchSettings]:
    """The image limits and fetch settings, the same for the service and the operator's tool."""
    allowed = frozenset(h.strip() for h in settings.fetch_allowed_hosts.split(",") if h.strip())
    formats = tuple(f.strip().upper() for f in settings.image_formats.split(",") if f.strip())
    return (ImageLimits(settings.max_image_bytes, settings.max_image_pixels, settings.decode_timeout_s, formats,
                        settings.max_jpeg_scans, settings.max_structure_steps, settings.max_jpeg_scan_pixels,
                        settings.decode_memory_mb * 1024 * 1024),
            FetchSettings(timeout_s=settings.fetch_timeout_s, total_timeout_s=settings.fetch_total_timeout_s,
                          max_bytes=settings.max_image_bytes, attempts=settings.fetch_attempts,
                          allowed_hosts=allowed, proxy=settings.fetch_proxy))


def validate_listing(listing: common_pb2.Listing) -> None:
    check_listing(listing)


class ListingPredictor:
    """Prepares each listing's image and runs the whole batch through both models in one call per model.

    A listing whose image is bad gets its own ClassificationError in the result list; the others go on. A Triton
    failure raises (retryable) for the whole batch, so the caller retries rather than dead-letters good input.

    With prediction_cache_bytes, a photo whose bytes were answered before by the same model versions is not decoded
    or sent to Triton again (prediction_cache.py); a batch answered wholly that way still asks Triton, in one small
    call, whether those versions are still the ones it serves.
    """

    def __init__(self, classifier: TritonClassifier, limits: ImageLimits, fetch: FetchSettings, decode_threads: int = 2,
                 fetch_threads: int = 16, thumbnail_size: int = 0, decode_in_triton: bool = False,
                 thumbnail_in_triton: bool = True, prediction_cache_bytes: int = 0):
        self.classifier = classifier
        self.cache = PredictionCache(prediction_cache_bytes) if prediction_cache_bytes > 0 else None
        # The GPU decode path: only the header is checked here; Triton's ensemble decodes and resizes.
        self.decode_in_triton = decode_in_triton
        self.thumbnail_in_triton = thumbnail_in_triton
        self.thumbnail_size = thumbnail_size
        self.limits = limits
        self.fetch = fetch
        # Shared by the decoding threads and the fetching threads (which decode what they fetched): what their
        # decodes hold at once stays within limits.decode_memory_bytes (decode_memory.py).
        self.memory = DecodeMemory(limits.decode_memory_bytes)
        self._decoders = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")
        # URLs wait on their hosts in threads of their own, so a slow host never holds a decoder (nor the inline
        # images queued behind it).
        self._fetchers = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="fetch")

    def stop(self) -> None:
        self._fetchers.shutdown(wait=True)
        self._decoders.shutdown(wait=True)

    def _thumbnails_from_triton(self) -> bool:
        """On the GPU decode path the ensemble makes the thumbnail too, when it can make one of the size asked for
        (and a repository written before it could is still served: the thumbnail is then made here)."""
        if not (self.decode_in_triton and self.thumbnail_in_triton and 0 < self.thumbnail_size <= THUMBNAIL_SIDE):
            return False
        try:
            return self.classifier.ensemble_makes_thumbnails()
        except ClassificationError:
            return False  # Triton unreachable: the batch will say so; its thumbnails would be made here

    def _prepare(self, request: ListingRequest, sizes: list[int], thumbnail_in_triton: bool,
                 versions: tuple[str, ...] | None, batch_photos: _BatchPhotos, deadline: float,
                 memory: JobDecodeMemory) -> PreparedImage | RememberedPrediction | ClassificationError:
        """The photo's bytes to what Triton needs, or its answer from before when the cache holds one for these
        model versions (None: not looked up). A photo another listing of the same batch holds too is prepared once
        (batch_photos): the listing that comes to it second waits for the first one's outcome and shares it. A
        listing whose thread comes free only after the batch's deadline is not started (its batch has moved on)."""
        if time.monotonic() >= deadline:
            return _no_room("a thread to prepare it")
        try:
            validate_listing(request.listing)
            with PREPROCESS_SECONDS.time():
                data = image_bytes(request.listing, self.fetch)
                if len(data) > self.limits.max_bytes:  # refused by its size before anything reads it
                    return self._prepared(data, sizes, thumbnail_in_triton, versions, "", deadline, memory)
                digest = image_digest(data)
                outcome, first = batch_photos.claim(digest)
                if not first:
                    return outcome.result()
                try:
                    prepared = self._prepared(data, sizes, thumbnail_in_triton, versions, digest, deadline, memory)
                except BaseException as error:
                    outcome.set_exception(error)
                    raise
                outcome.set_result(prepared)
                return prepared
        except ClassificationError as error:
            return error
        except Exception as error:  # noqa: BLE001  (a decoder bug must not take the batch down)
            return ClassificationError(ErrorKind.INTERNAL, f"preprocessing failed: {error!r}")

    def _prepared(self, data: bytes, sizes: list[int], thumbnail_in_triton: bool, versions: tuple[str, ...] | None,
                  digest: str, deadline: float, memory: JobDecodeMemory) -> PreparedImage | RememberedPrediction:
        if digest and self.cache is not None and versions is not None:
            remembered = self.cache.get(digest, versions)
            PREDICTION_CACHE_LOOKUPS.labels("hit" if remembered else "miss").inc()
            if remembered is not None:
                return remembered
        if self.decode_in_triton:
            return prepare_encoded(data, self.limits, self.thumbnail_size, thumbnail_in_triton, digest, memory,
                                   deadline)
        return prepare_image(data, sizes, self.limits, self.thumbnail_size, digest, memory, deadline)

    def _deadline(self, started: float) -> float:
        """Every listing of the batch gets the same budget from the batch's start: the fetch deadline plus the decode
        limit."""
        return started + self.fetch.total_timeout_s + self.limits.decode_timeout_s

    def _result_within_limit(self, job: tuple[Future, JobDecodeMemory], started: float
                             ) -> PreparedImage | ClassificationError:
        """The fetch enforces its own deadline, and a decode waiting for memory gives up at the batch's: this catches
        a decode that overruns, and a listing still waiting for a thread. Only a decode that has run for the whole
        decode limit is the photo's fault (INVALID_IMAGE); one that began late, behind the batch's other photos, or
        has not begun, is OVERLOADED: the photo is tried again later (a Kafka worker defers it)."""
        future, memory = job
        remaining = self._deadline(started) - time.monotonic()
        try:
            return future.result(timeout=max(0.0, remaining))
        except FutureTimeout:
            since = memory.decoding_since
            if since is not None and time.monotonic() - since >= self.limits.decode_timeout_s:
                return ClassificationError(ErrorKind.INVALID_IMAGE, "decoding the image took longer than "
                                           f"{self.limits.decode_timeout_s:.0f} s")
            if since is not None:
                return _no_room("time to finish decoding it")
            # Running without having begun to decode: fetching its URL (a thread that came free late), or waiting
            # for decoding memory.
            return _no_room("the time to fetch it or the memory to decode it" if future.running()
                            else "a thread to prepare it")

    def _submit(self, request: ListingRequest, sizes: list[int], thumbnail_in_triton: bool,
                versions: tuple[str, ...] | None, batch_photos: _BatchPhotos, deadline: float):
        pool = self._fetchers if request.listing.WhichOneof("image") == "image_url" else self._decoders
        memory = JobDecodeMemory(self.memory)
        return (pool.submit(self._prepare, request, sizes, thumbnail_in_triton, versions, batch_photos, deadline,
                            memory), memory)

    def _versions(self) -> tuple[str, ...] | None:
        """The called models' names and versions, the cache's key beside the digest; None without a cache, or while
        Triton cannot say (the batch then goes on as without one, and Triton's failure is met where it was)."""
        if self.cache is None:
            return None
        try:
            return tuple(spec.versioned_name for spec in self.classifier.specs)
        except ClassificationError:
            return None

    def predict(self, requests: list[ListingRequest], deadline: float | None = None
                ) -> list[events_pb2.PredictionMade | ClassificationError]:
        try:
            return self._predict(requests, deadline, self._versions())
        except _RememberedAnswersStale:
            # A model was reloaded at a new version since the answers were looked up: every photo is answered by the
            # models now served (the cache's key has their versions, so those answers are not found again).
            return self._predict(requests, deadline, None)

    def _predict(self, requests: list[ListingRequest], deadline: float | None, versions: tuple[str, ...] | None
                 ) -> list[events_pb2.PredictionMade | ClassificationError]:
        sizes = [] if self.decode_in_triton else self.classifier.input_sizes()
        thumbnail_in_triton = self._thumbnails_from_triton()
        began = time.perf_counter()
        started = time.monotonic()
        batch_photos = _BatchPhotos()
        jobs = [self._submit(r, sizes, thumbnail_in_triton, versions, batch_photos, self._deadline(started))
                for r in requests]
        prepared = [self._result_within_limit(job, started) for job in jobs]
        remembered = [i for i, p in enumerate(prepared) if isinstance(p, RememberedPrediction)]
        good = [i for i, p in enumerate(prepared) if isinstance(p, PreparedImage)]
        if not good and not remembered:
            return prepared  # type: ignore[return-value]
        decoded = time.perf_counter()
        thumbnails: dict[int, bytes] = {}
        probabilities: dict[str, np.ndarray] = {}
        models_called = bool(good)
        # One row per photo, not per listing: listings that share a photo (_BatchPhotos) share its row.
        sent, row = _rows(good, prepared)
        if good and self.decode_in_triton:
            probabilities, refused = self.classifier.classify_photos([prepared[i].encoded for i in sent], deadline,
                                                                     thumbnails=thumbnail_in_triton)
            for index in good:
                if row[index] in refused:
                    prepared[index] = refused[row[index]]
            answered_rows = {position: kept for kept, position in
                             enumerate(p for p in range(len(sent)) if p not in refused)}
            good = [index for index in good if row[index] not in refused]
            row = {index: answered_rows[row[index]] for index in good}
            sent = [index for position, index in enumerate(sent) if position not in refused]
        elif good:
            batches = {size: np.stack([prepared[i].tensors[size] for i in sent]) for size in set(sizes)}
            probabilities = self.classifier.classify(batches, deadline)
        if remembered and not good and not self.classifier.versions_still_served(deadline):
            raise _RememberedAnswersStale()  # no answer of the models' own to say which versions they are
        answered = time.perf_counter()
        # The models that gave this batch's answers, not the versions read last (another call may have found a
        # reload since): what its events are named by and its answers kept under.
        specs = self.classifier.answered_by() if models_called else self.classifier.specs
        answered_by = tuple(spec.versioned_name for spec in specs)
        if remembered and answered_by != versions:
            raise _RememberedAnswersStale()  # the models' call found them reloaded and read them again
        if good and self.decode_in_triton and thumbnail_in_triton:  # only a small JPEG encode here, in the decoders'
            encoded = list(self._decoders.map(                      # threads
                lambda at: thumbnail_from_pixels(probabilities[THUMBNAIL_OUTPUT][at],
                                                 probabilities[THUMBNAIL_SHAPE_OUTPUT][at], self.thumbnail_size),
                range(len(sent))))
            thumbnails = {index: encoded[row[index]] for index in good}
        finished = time.perf_counter()
        log.info("batch predicted", extra={"listings": len(requests), "images": len(sent),
                                           "answered_before": len(remembered),
                                           "photos_shared": batch_photos.shared,
                                           "preprocess_ms": round((decoded - began) * 1000, 1),
                                           "triton_ms": round((answered - decoded) * 1000, 1),
                                           "thumbnails_ms": round((finished - answered) * 1000, 1)})
        answers: dict[int, tuple[dict[str, np.ndarray], str, bytes]] = {}
        for index in good:
            image = prepared[index]
            answer = {s.name: probabilities[s.name][row[index]] for s in specs}
            thumbnail = thumbnails.get(index, image.thumbnail_jpeg)
            answers[index] = (answer, image.digest, thumbnail)
            if self.cache is not None:
                self.cache.put(image.digest, answered_by, answer, thumbnail)
        if self.cache is not None and good:
            PREDICTION_CACHE_BYTES.set(self.cache.size_bytes)
            PREDICTION_CACHE_PHOTOS.set(len(self.cache))
        for index in remembered:
            earlier = prepared[index]
            answers[index] = (earlier.probabilities, earlier.digest, earlier.thumbnail_jpeg)
        now = Timestamp()
        now.GetCurrentTime()
        results: list = list(prepared)
        for index, (answer, digest, thumbnail) in answers.items():
            request = requests[index]
            event = events_pb2.PredictionMade(
                submission_id=request.submission_id, listing_id=request.listing.listing_id,
                marketplace=request.listing.marketplace, locale=request.listing.locale, image_digest=digest,
                predictions=[common_pb2.ModelPrediction(model_name=s.name, model_version=s.version, labels=s.labels,
                                                        probabilities=answer[s.name].tolist())
                             for s in specs],
                predicted_at=now, thumbnail_jpeg=thumbnail)
            if request.submitted_at is not None:
                event.submitted_at.CopyFrom(request.submitted_at)
            results[index] = event
        return results


def _rows(good: list[int], prepared: list) -> tuple[list[int], dict[int, int]]:
    """The listings whose photos go to Triton, one per distinct photo (listings sharing one share the prepared
    object), and each good listing's row in that request."""
    sent: list[int] = []
    row_of_photo: dict[int, int] = {}
    row: dict[int, int] = {}
    for index in good:
        photo = id(prepared[index])
        if photo not in row_of_photo:
            row_of_photo[photo] = len(sent)
            sent.append(index)
        row[index] = row_of_photo[photo]
    return sent, row


def _no_room(what: str) -> ClassificationError:
    return ClassificationError(ErrorKind.OVERLOADED, f"the worker had no room to prepare the image in time: the "
                               f"batch's other photos held it, and it did not get {what} before the batch's deadline")


class _BatchPhotos:
    """The photos of one batch by digest: the first listing to reach a photo prepares it, any other listing of the
    batch with the same photo (one product listed on several marketplaces at once, an edit sent twice) waits for that
    outcome instead of decoding it again. The first one is already running when the others wait, so a wait always
    ends: with its outcome, or as its listing's decode limit runs out (_result_within_limit)."""

    def __init__(self):
        self._outcomes: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.shared = 0  # listings that shared another's preparation

    def claim(self, digest: str) -> tuple[Future, bool]:
        """The photo's outcome, and whether this caller is the first, who must set it."""
        with self._lock:
            outcome = self._outcomes.get(digest)
            if outcome is None:
                outcome = self._outcomes[digest] = Future()
                return outcome, True
            self.shared += 1
            return outcome, False


class _RememberedAnswersStale(Exception):
    """The batch's answers from the cache were looked up under model versions Triton no longer serves."""
