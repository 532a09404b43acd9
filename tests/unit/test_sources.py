"""Fetching image URLs: timeouts, size caps, retries and the SSRF guard, against real local HTTP servers."""

from __future__ import annotations

import http.server
import threading
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
