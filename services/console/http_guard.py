"""The console's HTTP/1.1 connections, guarded against clients that hold them without finishing a request.

uvicorn closes a connection that idles between requests, but not one that never finishes a request: a client that
opens sockets and sends nothing, or a header a byte at a time, keeps each open for good, and the server counts them
against its concurrency limit, so a thousand such sockets from one machine turn every operator away with 503.
`guarded_http_protocol` returns uvicorn's own HTTP/1.1 protocol with the three limits it lacks:

- a request's headers (the first on a connection, or the next after a response) must arrive within
  `header_timeout_s`, and its body within `body_timeout_s` after them; otherwise the connection is closed;
- at most `per_client` connections from one address at once; one more is answered 429 and closed.

A response that takes long (the live feed streams for hours) is not limited: only what the client owes is.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

from services.common.address_share import AddressShare

log = logging.getLogger(__name__)

_TOO_MANY = (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
             b"content-length: 47\r\n\r\ntoo many connections from this address; retry\n")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    per_client: int = 64  # 0: no limit


def guarded_http_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's H11Protocol with `limits`; pass the class as uvicorn.Config(http=...). One class per server: the
    per-address counts live in it."""
    open_per_client = AddressShare(limits.per_client) if limits.per_client else None

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _client_host: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            if open_per_client is not None and host is not None:
                if not open_per_client.enter(host):
                    log.warning("refused a connection: %d already open from %s", limits.per_client, host)
                    transport.write(_TOO_MANY)
                    transport.close()
                    return
                self._client_host = host  # counted: given back when the connection is lost
            self._await("headers", limits.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            if self._client_host is not None:
                open_per_client.leave(self._client_host)
                self._client_host = None
            super().connection_lost(exc)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not None and self.cycle is not before:  # a request's headers arrived
                self._cancel()
                if self.cycle.more_body:
                    self._await("body", limits.body_timeout_s)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle is not None and self.cycle.response_complete:
                self._await("headers", limits.header_timeout_s)

        def _await(self, what: str, seconds: float) -> None:
            """Close the connection unless `what` the client owes on the current request arrives in `seconds`."""
            self._cancel()
            watched = self.cycle

            def expired() -> None:
                self._deadline = None
                if self.transport.is_closing() or self.cycle is not watched:
                    return  # a new request began: its own deadline runs
                if what == "body" and not (watched is not None and watched.more_body):
                    return
                log.info("closed a connection from %s: its request's %s did not arrive within %.0f s",
                         self.client[0] if self.client else "?", what, seconds)
                self.transport.close()

            self._deadline = self.loop.call_later(seconds, expired)

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

    return GuardedH11Protocol
