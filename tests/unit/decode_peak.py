"""The most memory a process held while it decoded, over its size before (peak resident size, so Pillow's and the
codecs' buffers count, which tracemalloc does not see), each measurement in a process of its own. Prints one line of
JSON.

    python -m tests.unit.decode_peak image FILE                prepare_image on the file; and decode_memory's
                                                               estimate for it
    python -m tests.unit.decode_peak listings URL COUNT MB     a ListingPredictor (Triton faked: the seam) given
                                                               COUNT listings at once, of the image URL with {i}
                                                               their number, its decoding memory MB; and what each
                                                               listing got
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np

from services.preprocessing.decode_memory import MB, decode_bytes
from services.preprocessing.images import JPEG_FORMATS, ImageLimits, open_checked, prepare_image


def estimate(data: bytes, limits: ImageLimits, side: int) -> int:
    image = open_checked(data, limits)
    full = image.size
    if image.format in JPEG_FORMATS:  # as decode_rgb drafts it
        width, height = full
        longer = max(width, height)
        image.draft("RGB", (max(1, side * width // longer), max(1, side * height // longer)))
    return decode_bytes(image, full)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_bytes() -> int:
    """The process's peak resident size (VmHWM): getrusage's ru_maxrss keeps, across the exec that started this
    process, the size of the process that forked it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class FakeTriton:
    """What a model would answer, without a model."""

    def __init__(self):
        from services.preprocessing.triton_models import ModelSpec

        self.specs = [ModelSpec("m", "1", "image", 224, 64, "probabilities", ("a", "b"))]

    def input_sizes(self):
        return [224]

    def classify(self, batches, deadline=None):
        return {"m": np.tile(np.array([[0.9, 0.1]], np.float32), (len(batches[224]), 1))}

    def answered_by(self):
        return self.specs


def image(path: str) -> dict:
    data = Path(path).read_bytes()
    limits = ImageLimits(max_bytes=1 << 30, decode_memory_bytes=1 << 40)
    expected = estimate(data, limits, 224)
    before = resident_bytes()
    prepare_image(data, [224], limits, 224)
    return {"used": peak_bytes() - before, "estimate": expected}


def listings(url: str, count: int, budget_mb: int) -> dict:
    from urllib.parse import urlsplit

    from services.common.contracts.product_classification.v1 import common_pb2
    from services.common.errors import ClassificationError
    from services.preprocessing.core import ListingPredictor, ListingRequest
    from services.preprocessing.sources import FetchSettings

    fetch = FetchSettings(timeout_s=5, attempts=1, allowed_hosts=frozenset({urlsplit(url).netloc}))
    predictor = ListingPredictor(FakeTriton(), ImageLimits(decode_memory_bytes=budget_mb * MB), fetch,
                                 decode_threads=2, fetch_threads=count, thumbnail_size=224)
    requests = [ListingRequest(f"s{i}", common_pb2.Listing(listing_id=f"l{i}", marketplace="m",
                                                                 image_url=url.format(i=i)))
                for i in range(count)]
    before = resident_bytes()
    try:
        results = predictor.predict(requests)
    finally:
        predictor.stop()
    return {"used": peak_bytes() - before, "held_after": predictor.memory.held_bytes,
            "outcomes": [f"{r.kind.name}: {r.reason}" if isinstance(r, ClassificationError) else "classified"
                         for r in results]}


if __name__ == "__main__":
    if sys.argv[1] == "image":
        print(json.dumps(image(sys.argv[2])))
    else:
        print(json.dumps(listings(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
