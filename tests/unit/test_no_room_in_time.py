"""A photo the worker had no room for before its batch's deadline is OVERLOADED, not INVALID_IMAGE: a batch of large,
sound photos decoded one at a time used to fail its last listings as bad images, dead-lettered for good. Only a
decode that ran for the whole decode limit is the photo's fault. The decoding memory serves decodes in the order they
asked, so a large one is not passed over for ever by small ones that fit beside the others."""

from __future__ import annotations

import http.server
import io
import threading
import time

import pytest
from PIL import Image

from services.common.byte_budget import ByteBudget
from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing import core
from services.preprocessing.core import ListingPredictor, ListingRequest
from services.preprocessing.decode_memory import MB
from services.preprocessing.images import ImageLimits
from services.preprocessing.sources import FetchSettings
from tests.unit.test_prediction_cache import FakeTriton


def photo(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, 90, 200 - shade)).save(out, "PNG")
    return out.getvalue()


def listing(index: int, data: bytes) -> ListingRequest:
    return ListingRequest(f"s{index}", common_pb2.Listing(listing_id=f"l{index}", marketplace="m", image_bytes=data))


def test_a_share_waiting_for_room_is_not_passed_over_by_later_ones_that_would_fit():
    budget = ByteBudget(100)
    assert budget.take(60)
    order: list[str] = []

    def large():
        assert budget.take(90, time.monotonic() + 5)
        order.append("large")
        budget.give_back(90)

    waiting = threading.Thread(target=large)
    waiting.start()
    time.sleep(0.2)  # the large share is waiting now
    assert not budget.try_take(10)  # it would fit beside the 60, but the large one asked first
    assert not budget.take(10, time.monotonic() + 0.2)
    late = threading.Thread(target=lambda: (budget.take(10, time.monotonic() + 5), order.append("small")))
    late.start()
    time.sleep(0.2)
    assert order == []
    budget.give_back(60)
    waiting.join(5)
    late.join(5)
    assert order == ["large", "small"]
    assert budget.held == 10


def test_a_share_that_gives_up_lets_the_next_in_line_through():
    budget = ByteBudget(100)
    assert budget.take(50)
    gave_up = threading.Thread(target=lambda: budget.take(80, time.monotonic() + 0.3))
    gave_up.start()
    time.sleep(0.1)
    got: list[bool] = []
    after = threading.Thread(target=lambda: got.append(budget.take(40, time.monotonic() + 5)))
    after.start()
    gave_up.join(5)
    after.join(5)
    assert got == [True] and budget.held == 90


@pytest.fixture
def slow_decodes(monkeypatch):
    """Each photo's decode (inside its hold of decoding memory, where a real decode runs) takes what `seconds` says
    for its bytes: the seam a slow decoder would be."""
    seconds: dict[bytes, float] = {}
    original = core.prepare_image

    def slow(data, sizes, limits, thumbnail_size=0, digest="", memory=None, deadline=None):
        with memory.held(MB, deadline):
            time.sleep(seconds.get(data, 0.0))
        return original(data, sizes, limits, thumbnail_size, digest, memory, deadline)

    monkeypatch.setattr(core, "prepare_image", slow)
    return seconds


def predictor(decode_timeout_s: float, fetch_total_timeout_s: float = 0.0) -> ListingPredictor:
    """One decoding thread; a batch's deadline is the fetch limit and the decode limit from its start."""
    return ListingPredictor(FakeTriton(), ImageLimits(decode_timeout_s=decode_timeout_s),
                            FetchSettings(total_timeout_s=fetch_total_timeout_s), decode_threads=1, thumbnail_size=32)


def test_listings_still_waiting_for_a_decoding_thread_at_the_deadline_are_overloaded_not_invalid(slow_decodes):
    photos = [photo(shade) for shade in range(0, 160, 20)]
    for data in photos:
        slow_decodes[data] = 0.4
    service = predictor(decode_timeout_s=1.0)
    try:
        started = time.monotonic()
        outcomes = service.predict([listing(i, data) for i, data in enumerate(photos)])
        took = time.monotonic() - started
    finally:
        service.stop()
    kinds = ["classified" if not isinstance(o, ClassificationError) else o.kind.name for o in outcomes]
    # 0.4 s each, one at a time, 1 s for all: the first two or so decode; the next is decoding at the deadline (less
    # than its limit used) and the rest never began. None is the photo's fault.
    decoded = kinds.count("classified")
    assert 1 <= decoded <= 3 and kinds == ["classified"] * decoded + ["OVERLOADED"] * (len(kinds) - decoded), kinds
    assert "no room" in outcomes[-1].reason and "deadline" in outcomes[-1].reason
    assert took < 3.0  # listings whose thread came free after the deadline were not started


def test_a_decode_that_ran_for_the_whole_limit_is_the_photos_fault(slow_decodes):
    slow, after = photo(10), photo(30)
    slow_decodes[slow] = 2.0
    service = predictor(decode_timeout_s=0.5, fetch_total_timeout_s=0.5)  # the first decode gets its 0.5 s
    try:
        outcomes = service.predict([listing(0, slow), listing(1, after)])
    finally:
        service.stop()
    assert isinstance(outcomes[0], ClassificationError) and outcomes[0].kind is ErrorKind.INVALID_IMAGE
    assert "longer than" in outcomes[0].reason
    assert isinstance(outcomes[1], ClassificationError) and outcomes[1].kind is ErrorKind.OVERLOADED


def test_a_decode_waiting_for_memory_at_the_deadline_is_overloaded():
    """Another batch's decode holds 90 MB of a 100 MB budget; each photo (a 2,000x1,500 PNG, about 24 MB by the
    estimate) waits for room until the deadline. Once there is room, the same photo decodes."""
    photos = []
    for shade in (40, 120):
        out = io.BytesIO()
        Image.new("RGB", (2000, 1500), (shade, 80, 40)).save(out, "PNG", compress_level=1)
        photos.append(out.getvalue())
    service = ListingPredictor(FakeTriton(), ImageLimits(decode_timeout_s=0.5, decode_memory_bytes=100 * MB),
                               FetchSettings(total_timeout_s=0.0), decode_threads=2, thumbnail_size=32)
    try:
        with service.memory.held(90 * MB):
            outcomes = service.predict([listing(i, data) for i, data in enumerate(photos)])
            assert service.memory.held_bytes == 90 * MB  # neither got room
        after = service.predict([listing(2, photos[0])])
    finally:
        service.stop()
    assert [o.kind for o in outcomes] == [ErrorKind.OVERLOADED, ErrorKind.OVERLOADED]
    assert all("no room" in o.reason for o in outcomes)
    assert not isinstance(after[0], ClassificationError), after  # the same photo, once there is room
    assert service.memory.held_bytes == 0


def test_image_urls_waiting_for_a_fetching_thread_at_the_deadline_are_overloaded_not_invalid():
    """A healthy host that takes 0.8 s an image, one fetching thread, a 1.5 s deadline: the first URL is fetched and
    decoded; the second is still being fetched at the deadline (its thread came free at 0.8 s), the third never got a
    thread. Neither is the photo's or the host's fault (each fetch is within its own limit)."""
    body = photo(60)

    class SlowHost(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            time.sleep(0.8)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHost)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    fetch = FetchSettings(timeout_s=2, attempts=1, total_timeout_s=1.0,
                          allowed_hosts=frozenset({f"127.0.0.1:{host.server_port}"}))
    service = ListingPredictor(FakeTriton(), ImageLimits(decode_timeout_s=0.5), fetch, decode_threads=1,
                               fetch_threads=1, thumbnail_size=32)
    requests = [ListingRequest(f"s{i}", common_pb2.Listing(
        listing_id=f"u{i}", marketplace="m", image_url=f"http://127.0.0.1:{host.server_port}/{i}.png"))
        for i in range(3)]
    try:
        outcomes = service.predict(requests)
    finally:
        service.stop()
        host.shutdown()
    kinds = ["classified" if not isinstance(o, ClassificationError) else o.kind.name for o in outcomes]
    assert kinds == ["classified", "OVERLOADED", "OVERLOADED"], outcomes
    assert "fetch" in outcomes[1].reason and "a thread" in outcomes[2].reason
