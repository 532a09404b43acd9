"""The console's HTTP server against clients that hold connections without finishing requests (slowloris).

A real uvicorn server on loopback with the console's protocol class; the attacker connects from 127.0.0.2 and the
operator from 127.0.0.1, two addresses of this machine's loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request

import pytest
import uvicorn

from services.localstack.processes import free_port
from services.console.http_guard import ConnectionLimits, guarded_http_protocol

ATTACKER = ("127.0.0.2", 0)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow-stream":  # a long response, like the live feed
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(6):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.5)
        await send({"type": "http.response.body", "body": b"done\n"})
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok %d" % len(body)})


class Server:
    def __init__(self, limits: ConnectionLimits | None, limit_concurrency: int = 1000):
        self.port = free_port()
        http = guarded_http_protocol(limits) if limits else "h11"
        config = uvicorn.Config(app, host="0.0.0.0", port=self.port, log_config=None, access_log=False, http=http,
                                timeout_keep_alive=5, limit_concurrency=limit_concurrency)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_):
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, path: str = "/") -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def attacker_socket(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=ATTACKER)


def closed_by_server(sock: socket.socket, within_s: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open for `within_s`."""
    sock.settimeout(within_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


@pytest.fixture(autouse=True)
def second_loopback_address():
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1, source_address=ATTACKER)
    except ConnectionRefusedError:
        return
    except OSError as error:
        pytest.skip(f"cannot connect from {ATTACKER[0]}: {error}")


def test_without_the_guard_idle_sockets_from_one_machine_turn_operators_away():
    """The attack the guard exists for, against uvicorn's own protocol (so this test fails if uvicorn fixes it)."""
    with Server(None, limit_concurrency=50) as server:
        held = [server.attacker_socket() for _ in range(50)]
        time.sleep(0.3)
        assert server.get()[0] == 503
        for sock in held:
            sock.close()


def test_one_address_cannot_fill_the_server_and_its_extra_connections_are_told_why():
    limits = ConnectionLimits(header_timeout_s=60, body_timeout_s=60, per_client=10)
    with Server(limits, limit_concurrency=50) as server:
        held = [server.attacker_socket() for _ in range(60)]
        answers = [closed_by_server(sock, 0.5) for sock in held]
        refused = [a for a in answers if a is not None]
        assert len(refused) == 50 and all(a.startswith(b"HTTP/1.1 429 ") for a in refused)
        assert server.get() == (200, b"ok 0")  # the operator, from another address
        for sock in held:
            sock.close()
        time.sleep(0.3)
        fresh = server.attacker_socket()  # the address's slots come back when its sockets close
        fresh.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert closed_by_server(fresh, 5).startswith(b"HTTP/1.1 200 ")


def test_silent_and_dripping_connections_are_closed_at_the_header_deadline():
    limits = ConnectionLimits(header_timeout_s=1.0, body_timeout_s=60, per_client=100)
    with Server(limits) as server:
        silent = server.attacker_socket()
        dripping = server.attacker_socket()
        dripping.sendall(b"GET / HTTP/1.1\r\n")
        began = time.monotonic()
        for _ in range(4):  # a header line every 0.4 s: never finished within the deadline
            time.sleep(0.4)
            try:
                dripping.sendall(b"x-a: b\r\n")
            except OSError:
                break
        assert closed_by_server(silent, 3) == b""
        assert closed_by_server(dripping, 3) == b""
        assert time.monotonic() - began < 4
        # after a finished response, the next request owes its headers within the deadline too
        kept = server.attacker_socket()
        kept.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        kept.settimeout(5)
        response = b""
        while not response.endswith(b"0\r\n\r\n"):  # the whole chunked response
            response += kept.recv(4096)
        assert response.startswith(b"HTTP/1.1 200 ")
        kept.sendall(b"GET / HT")
        assert closed_by_server(kept, 3) == b""


def test_a_body_that_does_not_arrive_is_cut_but_a_long_response_is_not():
    limits = ConnectionLimits(header_timeout_s=1.0, body_timeout_s=1.0, per_client=100)
    with Server(limits) as server:
        slow_body = server.attacker_socket()
        slow_body.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        assert closed_by_server(slow_body, 4) == b""
        whole = server.attacker_socket()
        whole.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nconnection: close\r\n\r\n0123456789")
        assert b"ok 10" in closed_by_server(whole, 5)
        began = time.monotonic()
        status, body = server.get("/slow-stream")  # 3 s of response, past both deadlines
        assert status == 200 and body.endswith(b"done\n") and body.count(b"tick") == 6
        assert time.monotonic() - began > 2.5
