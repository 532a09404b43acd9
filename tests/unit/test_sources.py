"""Fetching image URLs: timeouts, size caps, retries and the SSRF guard, against real local HTTP servers."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing.sources import FetchSettings, fetch_url

IMAGE = b"\x89PNG fake but fetched"


class Handler(http.server.BaseHTTPRequestHandler):
    redirect_to = ""
    failures_before_success = 0
    calls = 0

    def do_GET(self):  # noqa: N802
        type(self).calls += 1
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
        elif self.path == "/flaky" and type(self).calls <= type(self).failures_before_success:
            self.send_response(503)
            self.end_headers()
        elif self.path == "/missing":
            self.send_response(404)
            self.end_headers()
        elif self.path in ("/drip", "/drip-headers"):
            # One byte every 0.2 s: never idle long enough for a per-read timeout.
            if self.path == "/drip":
                self.send_response(200)
                self.end_headers()
                self.wfile.flush()
            for byte in (b"HTTP/1.0 200 OK\r\n" if self.path == "/drip-headers" else IMAGE * 50):
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 5000)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)

    def log_message(self, *args):
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    Handler.calls = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def allowing(server, **extra) -> FetchSettings:
    return FetchSettings(timeout_s=2, attempts=3, allowed_hosts=frozenset({f"127.0.0.1:{server.server_port}"}),
                         **extra)


def test_loopback_is_refused_by_default(server):
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://127.0.0.1:{server.server_port}/image", FetchSettings(timeout_s=2))
    assert raised.value.kind is ErrorKind.INVALID_REQUEST and "internal address" in raised.value.reason


def test_a_name_that_resolves_inside_is_refused(server):
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://localhost:{server.server_port}/image", FetchSettings(timeout_s=2))
    assert "internal address" in raised.value.reason


def test_a_name_whose_dns_answer_changes_between_the_check_and_the_connection_is_refused(server, monkeypatch):
    """DNS rebinding: the check sees a public address, the connection gets loopback. The address really reached is
    checked after connecting, so the second answer is refused too (and the server never sees a request)."""
    import socket

    real = socket.getaddrinfo
    answers = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.example":
            return real(host, port, *args, **kwargs)
        answers.append(host)
        address = "93.184.216.34" if len(answers) == 1 else "127.0.0.1"  # public first, then inside
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://rebind.example:{server.server_port}/image", FetchSettings(timeout_s=2, attempts=1))
    assert len(answers) >= 2, "the name was resolved once only: the test did not rebind"
    assert raised.value.kind is ErrorKind.INVALID_REQUEST and "127.0.0.1" in raised.value.reason
    assert Handler.calls == 0


def test_an_allow_listed_host_is_fetched(server):
    assert fetch_url(f"http://127.0.0.1:{server.server_port}/image", allowing(server)) == IMAGE


def test_a_redirect_to_loopback_is_refused_after_the_redirect(server):
    # The first hop is allowed (the allow-list stands in for a public host); its redirect goes inside.
    Handler.redirect_to = f"http://localhost:{server.server_port}/image"
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://127.0.0.1:{server.server_port}/redirect", allowing(server))
    assert raised.value.kind is ErrorKind.INVALID_REQUEST and "internal address" in raised.value.reason


def test_a_redirect_to_another_scheme_is_refused(server):
    Handler.redirect_to = "file:///etc/passwd"
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://127.0.0.1:{server.server_port}/redirect", allowing(server))
    assert "non-http" in raised.value.reason


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x", "http://"])
def test_non_http_urls_are_invalid(url):
    with pytest.raises(ClassificationError) as raised:
        fetch_url(url, FetchSettings())
    assert raised.value.kind is ErrorKind.INVALID_REQUEST


def test_transient_failures_are_retried(server):
    Handler.failures_before_success = 2
    assert fetch_url(f"http://127.0.0.1:{server.server_port}/flaky", allowing(server)) == IMAGE
    assert Handler.calls == 3


def test_a_source_that_keeps_failing_is_unreachable(server):
    Handler.failures_before_success = 100
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://127.0.0.1:{server.server_port}/flaky", allowing(server))
    assert raised.value.kind is ErrorKind.SOURCE_UNREACHABLE and "3 attempts" in raised.value.reason


def test_not_found_is_unreachable_without_retries(server):
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://127.0.0.1:{server.server_port}/missing", allowing(server))
    assert raised.value.kind is ErrorKind.SOURCE_UNREACHABLE and Handler.calls == 1


def test_the_size_cap_holds_without_a_content_length(server):
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://127.0.0.1:{server.server_port}/big", allowing(server, max_bytes=1000))
    assert raised.value.kind is ErrorKind.IMAGE_TOO_LARGE


def test_a_dead_port_is_unreachable():
    with pytest.raises(ClassificationError) as raised:
        fetch_url("http://127.0.0.1:9/x", FetchSettings(timeout_s=1, attempts=2,
                                                         allowed_hosts=frozenset({"127.0.0.1:9"})))
    assert raised.value.kind is ErrorKind.SOURCE_UNREACHABLE


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_a_dripping_host_fails_at_the_total_deadline_as_too_slow(server, path):
    began = time.monotonic()
    with pytest.raises(ClassificationError) as raised:
        fetch_url(f"http://127.0.0.1:{server.server_port}{path}", allowing(server, total_timeout_s=1.5))
    assert raised.value.kind is ErrorKind.SOURCE_TOO_SLOW and "1.5 s" in raised.value.reason
    assert time.monotonic() - began < 3.0  # the deadline holds, whatever the per-read timeout (2 s) would allow


def test_a_slow_source_fails_only_its_own_listing_in_a_batch(server):
    """The good listings that share a batch with a dripping host are classified."""
    import numpy as np

    from services.common.contracts.product_classification.v1 import common_pb2
    from services.preprocessing.core import ListingPredictor, ListingRequest
    from services.preprocessing.images import ImageLimits
    from services.preprocessing.triton_models import ModelSpec

    class FakeTriton:  # the seam: what a model would answer, without a model
        specs = [ModelSpec("m", "1", "image", 32, 8, "probabilities", ("a", "b"))]

        def input_sizes(self):
            return [32]

        def classify(self, batches, deadline=None):
            return {"m": np.tile(np.array([[0.9, 0.1]], np.float32), (len(batches[32]), 1))}

        def answered_by(self):
            return self.specs

    from skimage import data
    from PIL import Image
    import io

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
    predictor = ListingPredictor(FakeTriton(), ImageLimits(decode_timeout_s=1.0),
                                 allowing(server, total_timeout_s=1.5), decode_threads=1, fetch_threads=4)
    slow = [ListingRequest(f"s{i}", common_pb2.Listing(listing_id=f"slow-{i}", marketplace="m",
                                                       image_url=f"http://127.0.0.1:{server.server_port}/drip"))
            for i in range(3)]
    good = [ListingRequest(f"g{i}", common_pb2.Listing(listing_id=f"good-{i}", marketplace="m",
                                                       image_bytes=buffer.getvalue())) for i in range(4)]
    try:
        began = time.monotonic()
        results = predictor.predict([slow[0], good[0], slow[1], good[1], good[2], slow[2], good[3]])
        assert time.monotonic() - began < 4.0
    finally:
        predictor.stop()
    assert [getattr(r, "listing_id", None) for r in results if not isinstance(r, ClassificationError)] == [
        "good-0", "good-1", "good-2", "good-3"]
    failures = [r for r in results if isinstance(r, ClassificationError)]
    assert len(failures) == 3 and all(f.kind is ErrorKind.SOURCE_TOO_SLOW for f in failures), failures


class Proxy(Handler):
    """A recording forward proxy: answers every request itself (as the image) and remembers the URL asked for."""

    asked: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).asked.append(self.path)
        self.path = "/image"
        super().do_GET()


@pytest.fixture
def proxy() -> Iterator[http.server.HTTPServer]:
    Proxy.asked = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


def test_environment_proxies_are_ignored(server, proxy, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert fetch_url(f"http://127.0.0.1:{server.server_port}/image", allowing(server)) == IMAGE
    assert Proxy.asked == []  # fetched directly, behind the guard
    with pytest.raises(ClassificationError) as raised:  # and the guard still sees the real target
        fetch_url(f"http://127.0.0.1:{server.server_port}/image", FetchSettings(timeout_s=2))
    assert "internal address" in raised.value.reason and Proxy.asked == []


def test_a_configured_proxy_is_used_and_the_target_is_guarded(proxy):
    settings = FetchSettings(timeout_s=2, proxy=f"http://127.0.0.1:{proxy.server_port}")
    with pytest.raises(ClassificationError) as raised:
        fetch_url("http://localhost:8080/admin.jpg", settings)  # the target is inside: refused before the proxy
    assert raised.value.kind is ErrorKind.INVALID_REQUEST and "internal address" in raised.value.reason
    assert Proxy.asked == []
    allowed = FetchSettings(timeout_s=2, proxy=settings.proxy, allowed_hosts=frozenset({"images.internal.test"}))
    assert fetch_url("http://images.internal.test/shoe.jpg", allowed) == IMAGE  # through the proxy
    assert Proxy.asked == ["http://images.internal.test/shoe.jpg"]


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "::", "fd00::1", "fe80::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 to loopback and to the metadata service
    "64:ff9b:1::5db8:d822",  # NAT64's local-use prefix: a site's own translator, whatever the IPv4 address
    "::127.0.0.1", "::ffff:0:a00:1",  # IPv4-compatible, IPv4-translated
    "2002:7f00:1::", "2002:a9fe:a9fe::1",  # 6to4 of loopback and of the metadata service
])
def test_addresses_that_lead_inside_are_refused_however_they_are_written(address):
    from services.preprocessing.sources import _forbidden

    assert _forbidden(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "64:ff9b::5db8:d822", "2002:5db8:d822::"])
def test_public_addresses_are_fetched_however_they_are_written(address):
    from services.preprocessing.sources import _forbidden

    assert not _forbidden(address)
