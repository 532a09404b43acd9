"""gRPC edge of the result service: record a synchronous prediction, get, list and watch classifications."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import deque

import grpc

from services.common.contracts.product_classification.v1 import results_pb2, results_pb2_grpc
from services.common.errors import ClassificationError, ErrorKind, abort_with
from services.results.core import ClassificationRecorder

MAX_PAGE_SIZE = 500


class StreamLimits:
    """Watch streams hold a worker thread each: bounded in total and per caller, so unary calls always find one."""

    def __init__(self, total: int, per_caller: int):
        self.total, self.per_caller = total, per_caller
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self, caller: str):
        with self._lock:
            if sum(self._open.values()) >= self.total:
                raise ClassificationError(ErrorKind.OVERLOADED, f"{self.total} watch streams are open, the most this "
                                          "replica serves; retry later or use another replica")
            if self._open.get(caller, 0) >= self.per_caller:
                raise ClassificationError(ErrorKind.OVERLOADED, f"this caller already has {self.per_caller} watch "
                                          "streams open, the most one caller may hold")
            self._open[caller] = self._open.get(caller, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._open[caller] -= 1
                if not self._open[caller]:
                    del self._open[caller]


def caller_of(context) -> str:
    """Who is calling, as far as streams are counted: their credential (hashed, never kept), else their address."""
    for key, value in context.invocation_metadata() or ():
        if key in ("authorization", "x-api-key"):
            return hashlib.sha256(str(value).encode()).hexdigest()[:16]
    return (context.peer() or "").rsplit(":", 1)[0]


class ClassificationResultsServicer(results_pb2_grpc.ClassificationResultsServicer):
    def __init__(self, recorder: ClassificationRecorder, watch_poll_s: float, streams: StreamLimits | None = None,
                 watch_lookback_s: float = 10.0):
        self.recorder = recorder
        self.store = recorder.store
        self.watch_poll_s = watch_poll_s
        self.streams = streams or StreamLimits(16, 4)
        # A row whose sequence was taken before a later one's but committed after it (two writers) is still
        # delivered: every poll looks back this long, skipping what was already sent.
        self.watch_lookback_s = watch_lookback_s

    def RecordPrediction(self, request, context):
        try:
            [outcome] = self.recorder.record_predictions([request], wait_for_other_publishers=False)
        except ClassificationError as error:
            abort_with(context, error)
        if isinstance(outcome, ClassificationError):
            abort_with(context, outcome)
        return outcome.classification

    def GetClassification(self, request, context):
        if not request.listing_id:
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, "listing_id is required"))
        try:
            found = self.store.latest_for_listing(request.listing_id)
        except ClassificationError as error:
            abort_with(context, error)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no classification for listing {request.listing_id!r}")
        return found

    def ListClassifications(self, request, context):
        if request.page_size < 0 or request.before_sequence < 0:
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, "page_size and before_sequence must "
                                                    "not be negative"))
        page_size = min(request.page_size or 50, MAX_PAGE_SIZE)
        try:
            found = self.store.recent(request.marketplace, page_size + 1, request.before_sequence)
        except ClassificationError as error:
            abort_with(context, error)
        more = len(found) > page_size
        found = found[:page_size]
        return results_pb2.ListClassificationsResponse(
            classifications=found, next_before_sequence=found[-1].sequence if more and found else 0)

    def WatchClassifications(self, request, context):
        """Streams rows as they are stored: woken by this replica's writes, and polling for other replicas'."""
        try:
            with self.streams.held(caller_of(context)):
                yield from self._watch(request, context)
        except ClassificationError as error:
            abort_with(context, error)

    def _watch(self, request, context):
        position = request.after_sequence or self.store.last_sequence()
        history: deque[tuple[float, int]] = deque()  # (when, position then): the look-back's floor
        sent: set[int] = set()
        while context.is_active():
            now = time.monotonic()
            history.append((now, position))
            while history[0][0] < now - self.watch_lookback_s:
                history.popleft()
            floor = history[0][1]
            fresh = []
            try:
                cursor = floor
                while True:  # page past rows already sent, so a busy look-back never hides new ones
                    page = self.store.after(cursor, request.marketplace)
                    fresh.extend(c for c in page if c.sequence not in sent)
                    if len(page) < 200:
                        break
                    cursor = page[-1].sequence
            except ClassificationError:
                fresh = []  # the store is down for a moment: keep the stream, try again
            for classification in sorted(fresh, key=lambda c: c.sequence):
                sent.add(classification.sequence)
                position = max(position, classification.sequence)
                yield classification
            sent = {sequence for sequence in sent if sequence > floor}
            if not fresh:
                with self.recorder.stored:
                    self.recorder.stored.wait(self.watch_poll_s)
