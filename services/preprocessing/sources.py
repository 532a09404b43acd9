"""Where a listing's image bytes come from: inline in the event, or fetched from its URL behind an SSRF guard.

The guard checks the address each connection actually reached (after DNS and after every redirect), not the name
in the URL, so neither a DNS answer pointing inside nor a redirect to 127.0.0.1 gets through. Private, loopback,
link-local, multicast and reserved addresses are refused unless their host is allow-listed, and so are IPv6
addresses that lead to one of them through a translator or tunnel (NAT64, 6to4, IPv4-mapped and the like); only
http(s) is fetched.
"""

from __future__ import annotations

import http.client
import ipaddress
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind

ALLOWED_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class FetchSettings:
    timeout_s: float = 5.0  # connect and each read
    total_timeout_s: float = 15.0  # the whole fetch: every attempt, redirect and byte of the body
    max_bytes: int = 20 * 1024 * 1024
    attempts: int = 3  # transient failures (connection errors, 5xx, 429) are retried
    allowed_hosts: frozenset[str] = frozenset()  # hosts (or host:port) that may resolve to internal addresses
    # http://host:port of an egress proxy to fetch through; empty: direct. Environment proxies (HTTP_PROXY...) are
    # never used: they would fetch on our behalf past the address check.
    proxy: str = ""


class ForbiddenAddress(urllib.error.URLError):
    pass


# IPv6 prefixes that carry an IPv4 address in their last 32 bits, which a translator may reach: NAT64's well-known
# prefix (RFC 6052), IPv4-translated (RFC 2765) and the deprecated IPv4-compatible addresses. Python 3.11 calls
# 64:ff9b::7f00:1 (127.0.0.1 through NAT64) global. NAT64's local-use prefix (RFC 8215) leads to a site's own
# translator, where the IPv4 address may sit anywhere: it is refused whole.
_EMBEDDING_IPV4 = tuple(ipaddress.ip_network(prefix) for prefix in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))
_LOCAL_TRANSLATION = ipaddress.ip_network("64:ff9b:1::/48")


def _inner_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to: mapped, 6to4, Teredo (server and client), or one of the prefixes
    above."""
    inner = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if any(ip in network for network in _EMBEDDING_IPV4):
        inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [address for address in inner if address is not None]


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_TRANSLATION:
            return True
        inner = _inner_ipv4(ip)
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif any(_forbidden(str(address)) for address in inner):
            return True
    return not ip.is_global or ip.is_multicast


class _Watchdog:
    """Closes every socket of one fetch when its total deadline passes, whatever the host is doing (a host that
    drips one byte every half second never trips a per-read timeout)."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.sockets: list[socket.socket] = []
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self.sockets.append(sock)
            if self.fired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self.sockets:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _guarded(connection_class, allowed_hosts: frozenset[str], watchdog: _Watchdog | None = None):
    class GuardedConnection(connection_class):
        def _allowed(self) -> bool:
            return self.host in allowed_hosts or f"{self.host}:{self.port}" in allowed_hosts

        def connect(self):
            # Before connecting: refused or open, an internal port must look the same to the caller (no port scans).
            if not self._allowed():
                try:
                    answers = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                except OSError:
                    answers = []
                inside = [a[4][0] for a in answers if _forbidden(a[4][0])]
                if inside:
                    raise ForbiddenAddress(f"{self.host} resolves to {inside[0]}, an internal address")
            super().connect()
            if watchdog is not None:
                watchdog.register(self.sock)
            # After connecting: the address really reached, in case DNS answered differently the second time.
            peer = self.sock.getpeername()[0]
            if _forbidden(peer) and not self._allowed():
                self.sock.close()
                raise ForbiddenAddress(f"{self.host} resolves to {peer}, an internal address")

    return GuardedConnection


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allowed_hosts, watchdog=None):
        super().__init__()
        self.connection = _guarded(http.client.HTTPConnection, allowed_hosts, watchdog)

    def http_open(self, request):
        return self.do_open(self.connection, request)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allowed_hosts, watchdog=None):
        super().__init__()
        self.connection = _guarded(http.client.HTTPSConnection, allowed_hosts, watchdog)

    def https_open(self, request):
        return self.do_open(self.connection, request, context=self._context)


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def __init__(self, settings: FetchSettings):
        super().__init__()
        self.settings = settings

    def redirect_request(self, request, fp, code, message, headers, new_url):
        if urllib.parse.urlsplit(new_url).scheme.lower() not in ALLOWED_SCHEMES:
            raise ForbiddenAddress(f"redirect to a non-http(s) URL: {new_url[:80]}")
        if self.settings.proxy:
            check_target(new_url, self.settings)  # through a proxy the connection is the proxy's: guard the target
        return super().redirect_request(request, fp, code, message, headers, new_url)


def check_target(url: str, settings: FetchSettings) -> None:
    """The URL's own host must not resolve inside (checked by us, before the proxy is asked to fetch it)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if host in settings.allowed_hosts or f"{host}:{port}" in settings.allowed_hosts:
        return
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # unresolvable here: the proxy will fail it the same way
    inside = [a[4][0] for a in answers if _forbidden(a[4][0])]
    if inside:
        raise ForbiddenAddress(f"{host} resolves to {inside[0]}, an internal address")


def _opener(settings: FetchSettings, watchdog: _Watchdog | None = None) -> urllib.request.OpenerDirector:
    # ProxyHandler({}): environment proxies would fetch on our behalf and bypass the address check. A proxy named in
    # the settings is used, and the guard lets connections reach it (it is ours) while check_target guards the target.
    allowed = settings.allowed_hosts
    proxies = {}
    if settings.proxy:
        proxy = urllib.parse.urlsplit(settings.proxy)
        proxies = {"http": settings.proxy, "https": settings.proxy}
        allowed = allowed | {proxy.hostname or "", f"{proxy.hostname}:{proxy.port or 80}"}
    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies), _GuardedHTTPHandler(allowed, watchdog),
                                       _GuardedHTTPSHandler(allowed, watchdog), _SchemeCheckingRedirects(settings))


def fetch_url(url: str, settings: FetchSettings) -> bytes:
    """GETs an http(s) URL with timeouts, a total deadline and a size cap behind the SSRF guard; transient failures
    are retried within the deadline. A host too slow for the deadline is SOURCE_TOO_SLOW."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.hostname:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, f"image_url must be an http(s) URL, got {url[:80]!r}")
    watchdog = _Watchdog(time.monotonic() + settings.total_timeout_s)
    try:
        return _fetch(url, settings, watchdog)
    except ClassificationError:
        if watchdog.fired:
            raise _too_slow(settings) from None
        raise
    except Exception:  # noqa: BLE001  (a socket closed under a read raises whatever the layer above makes of it)
        if watchdog.fired:
            raise _too_slow(settings) from None
        raise
    finally:
        watchdog.cancel()


def _too_slow(settings: FetchSettings) -> ClassificationError:
    return ClassificationError(ErrorKind.SOURCE_TOO_SLOW, f"the image host did not send the image within "
                               f"{settings.total_timeout_s:g} s")


def _fetch(url: str, settings: FetchSettings, watchdog: _Watchdog) -> bytes:
    if settings.proxy:
        try:
            check_target(url, settings)
        except ForbiddenAddress as error:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"image_url refused: {error.reason}") from None
    opener = _opener(settings, watchdog)
    last_error = ""
    for attempt in range(settings.attempts):
        if attempt:
            time.sleep(random.uniform(0, 0.2 * 2 ** attempt))
        remaining = watchdog.deadline - time.monotonic()
        if remaining <= 0 or watchdog.fired:
            raise _too_slow(settings)
        try:
            with opener.open(urllib.request.Request(url, headers={"User-Agent": "product-classification/1"}),
                             timeout=min(settings.timeout_s, remaining)) as response:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > settings.max_bytes:
                    raise _too_large(settings)
                data = _read_body(response, settings.max_bytes + 1, watchdog, settings)
            if len(data) > settings.max_bytes:
                raise _too_large(settings)
            return data
        except ForbiddenAddress as error:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"image_url refused: {error.reason}") from None
        except urllib.error.HTTPError as error:
            if 300 <= error.code < 400:  # urllib refused to follow it: another scheme, or a redirect loop
                raise ClassificationError(ErrorKind.INVALID_REQUEST, f"image_url refused: a redirect to a non-http(s) "
                                          f"URL or too many redirects ({error.reason})") from None
            if 400 <= error.code < 500 and error.code not in (408, 429):
                raise ClassificationError(ErrorKind.SOURCE_UNREACHABLE,
                                          f"fetching the image failed: HTTP {error.code}") from None
            last_error = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            if isinstance(getattr(error, "reason", None), ForbiddenAddress):
                raise ClassificationError(ErrorKind.INVALID_REQUEST,
                                          f"image_url refused: {error.reason.reason}") from None
            last_error = str(getattr(error, "reason", error)) or type(error).__name__
    raise ClassificationError(ErrorKind.SOURCE_UNREACHABLE,
                              f"fetching the image failed after {settings.attempts} attempts: {last_error}")


def _read_body(response, limit: int, watchdog: _Watchdog, settings: FetchSettings) -> bytes:
    """Reads up to limit bytes in whatever pieces arrive, checking the total deadline between them."""
    chunks, size = [], 0
    while size < limit:
        chunk = response.read1(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if time.monotonic() > watchdog.deadline:
            raise _too_slow(settings)
    if watchdog.fired:  # the watchdog shut the socket: what looks like the end of the body is the deadline
        raise _too_slow(settings)
    return b"".join(chunks)


def _too_large(settings: FetchSettings) -> ClassificationError:
    return ClassificationError(ErrorKind.IMAGE_TOO_LARGE,
                               f"the image at the URL is over the limit of {settings.max_bytes} bytes")


def image_bytes(listing: common_pb2.Listing, settings: FetchSettings) -> bytes:
    which = listing.WhichOneof("image")
    if which == "image_bytes":
        return listing.image_bytes
    if which == "image_url":
        return fetch_url(listing.image_url, settings)
    raise ClassificationError(ErrorKind.INVALID_REQUEST, "the listing has neither image_bytes nor image_url")
