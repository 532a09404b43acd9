"""What a worker's decodes hold at once: each image's decoding memory estimated from its header, covering what the
decode really takes, and the decodes of one worker waiting for room within its budget (decode_memory.py)."""

from __future__ import annotations

import http.server
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, features
from prometheus_client import REGISTRY

from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing.decode_memory import MB, DecodeMemory
from services.preprocessing.images import ImageLimits, decode_rgb, prepare_image

ROOT = Path(__file__).resolve().parents[2]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def plain(mode: str, side: int) -> Image.Image:
    """A picture of one colour with a square of another: files of a few KB that decode to side x side pixels."""
    picture = Image.new("RGB", (side, side), (200, 30, 40))
    picture.paste((20, 90, 200), (side // 4, side // 4, side // 2, side // 2))
    if mode == "RGBA":
        picture.putalpha(200)
    elif mode == "P+transparency":
        picture = picture.quantize(16)
        picture.info["transparency"] = 0
    elif mode != "RGB":
        picture = picture.convert(mode)
    return picture


SIDE = 3000  # 9 megapixels: large enough that what a decoder holds stands out of the process's size
CASES = {  # name: (mode, format, options)
    "WebP lossy": ("RGB", "WEBP", {"quality": 50, "method": 0}),
    "WebP lossless with alpha": ("RGBA", "WEBP", {"lossless": True, "method": 0}),
    "AVIF with alpha": ("RGBA", "AVIF", {"speed": 10, "quality": 30}),
    "PNG with alpha": ("RGBA", "PNG", {}),
    "PNG palette with transparency": ("P+transparency", "PNG", {"transparency": 0}),
    "GIF": ("P", "GIF", {}),
    "TIFF RGB": ("RGB", "TIFF", {"compression": "tiff_adobe_deflate"}),
    "TIFF CMYK": ("CMYK", "TIFF", {"compression": "tiff_adobe_deflate"}),
    "PNG grey": ("L", "PNG", {}),
    "progressive JPEG 4:4:4": ("RGB", "JPEG", {"progressive": True, "subsampling": 0}),
    "progressive JPEG CMYK": ("CMYK", "JPEG", {"progressive": True}),
}


def run_peak(*arguments: str) -> dict:
    finished = subprocess.run([sys.executable, "-m", "tests.unit.decode_peak", *arguments], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_the_estimate_covers_what_decoding_really_takes(case, tmp_path):
    """Measured in a process of its own: its peak resident size over its size before (the codecs' buffers count)."""
    mode, fmt, options = CASES[case]
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF plugin")
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(encode(plain(mode, SIDE), fmt, **options))
    measured = run_peak("image", str(path))
    assert measured["used"] <= measured["estimate"], measured
    # and not so far above it that a worker decodes one photo at a time where it could decode several
    assert measured["estimate"] < 3.5 * max(measured["used"], 8 * MB), measured


def test_a_photo_whose_decoding_alone_would_take_more_than_the_budget_is_refused_from_its_header():
    data = encode(plain("RGB", 2000), "WEBP", lossless=True)  # 4 megapixels: about 84 MB by the estimate
    with pytest.raises(ClassificationError) as refused:
        decode_rgb(data, ImageLimits(decode_memory_bytes=64 * MB), 224)
    assert refused.value.kind is ErrorKind.IMAGE_TOO_LARGE
    assert "2000x2000 WEBP" in refused.value.reason and "64 MB" in refused.value.reason
    assert max(decode_rgb(data, ImageLimits(decode_memory_bytes=128 * MB), 224).size) >= 224


def test_a_jpeg_decodes_reduced_so_a_large_one_needs_little():
    data = encode(plain("RGB", 6000), "JPEG", quality=80)  # 36 megapixels, decoded at an eighth
    assert decode_rgb(data, ImageLimits(decode_memory_bytes=64 * MB), 224).size == (750, 750)


def waits(outcome: str) -> float:
    return REGISTRY.get_sample_value("product_classification_decode_memory_waits_total", {"outcome": outcome}) or 0.0


def test_decodes_wait_for_room_and_a_decode_past_its_deadline_is_overloaded_with_the_reason():
    memory = DecodeMemory(100 * MB)
    timed_out, decoded = waits("timed_out"), waits("decoded")
    entered, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def first():
        with memory.held(70 * MB):
            order.append("first in")
            entered.set()
            leave.wait(5)
            order.append("first out")

    holder = threading.Thread(target=first)
    holder.start()
    assert entered.wait(5)
    with pytest.raises(ClassificationError) as late:
        with memory.held(40 * MB, deadline=time.monotonic() + 0.2):
            pass
    # Not the photo's fault: tried again later (a Kafka worker defers it; a gRPC caller gets RESOURCE_EXHAUSTED).
    assert late.value.kind is ErrorKind.OVERLOADED and "40 MB" in late.value.reason
    assert memory.held_bytes == 70 * MB
    with memory.held(30 * MB, deadline=time.monotonic() + 0.2):  # fits beside the first
        assert memory.held_bytes == 100 * MB

    def second():
        with memory.held(40 * MB, deadline=time.monotonic() + 5):
            order.append("second in")

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.2)
    assert order == ["first in"]  # the second waits for room
    leave.set()
    holder.join(5)
    waiter.join(5)
    assert order == ["first in", "first out", "second in"]
    assert memory.held_bytes == 0
    assert (waits("timed_out") - timed_out, waits("decoded") - decoded) == (1, 1)


def test_a_decode_that_fails_gives_its_room_back():
    memory = DecodeMemory(100 * MB)
    truncated = encode(plain("RGB", 1000), "PNG")[:5000]
    with pytest.raises(ClassificationError) as bad:
        prepare_image(truncated, [224], ImageLimits(), memory=memory)
    assert bad.value.kind is ErrorKind.INVALID_IMAGE
    assert memory.held_bytes == 0


@pytest.fixture
def huge_webps() -> Iterator[str]:
    """A host serving 6,000x6,000 lossless WebPs of a few hundred bytes, each of its own colour (/0.webp, /1.webp,
    ...), so that no two listings share one photo's preparation."""
    files = {f"/{i}.webp": encode(Image.new("RGB", (6000, 6000), (i * 20, 40, 90)), "WEBP", lossless=True, method=0)
             for i in range(8)}

    class Host(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Host)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{host.server_port}/{{i}}.webp"
    host.shutdown()


def test_listings_whose_photos_decode_to_hundreds_of_mb_each_are_classified_within_the_workers_budget(huge_webps):
    """Eight image URLs fetched at once, each a 6,000x6,000 WebP (about 560 MB while it decodes, 720 by the
    estimate): the threads that fetched them decode them, and unbounded they held 4.4 GB at once. With a budget of
    1,024 MB they decode one at a time, and every listing is classified. One at a time is not enough on its own:
    glibc's malloc kept what each thread's decode freed in that thread's heap, and the eight held 1.5 GB; after
    each large decode the free memory goes back (return_freed_memory), and they hold what one decode takes."""
    measured = run_peak("listings", huge_webps, "8", "1024")
    assert measured["outcomes"] == ["classified"] * 8, measured["outcomes"]
    assert measured["held_after"] == 0
    assert measured["used"] < 800 * MB, measured["used"] / MB

