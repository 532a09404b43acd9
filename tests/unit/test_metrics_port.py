"""The metrics port against sockets held open without a request: the service keeps its threads, and /metrics
answers again once they are gone."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from services.common.metrics import serve_metrics
from services.localstack.processes import free_port


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read()


def test_held_sockets_cost_a_bounded_number_of_threads_and_time_out():
    port = free_port()
    server = serve_metrics(port, "127.0.0.1", slots=4, read_timeout_s=1.0)
    try:
        assert b"product_classification_grpc_requests_total" in scrape(port)
        threads_before = threading.active_count()
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
        time.sleep(0.5)
        assert threading.active_count() <= threads_before + 4  # prometheus_client's own server: +200
        closed = 0
        for sock in held:
            sock.settimeout(3)
            try:
                closed += sock.recv(1) == b""  # refused at once, or dropped at the read timeout
            except (TimeoutError, ConnectionResetError):
                closed += 1
        assert closed == len(held)
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while threading.active_count() > threads_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= threads_before
        assert b"product_classification_grpc_requests_total" in scrape(port)
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_that_trickles_in_is_dropped_at_the_read_timeout():
    port = free_port()
    server = serve_metrics(port, "127.0.0.1", slots=2, read_timeout_s=0.5)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /metr")
        began = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - began < 3
        assert scrape(port)
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_dripped_a_byte_at_a_time_is_dropped_at_the_request_deadline():
    """Each byte comes well within the read timeout, so only a deadline on the whole request ends it; before, four
    addresses dripping like this held every slot for as long as they liked."""
    port = free_port()
    server = serve_metrics(port, "127.0.0.1", slots=2, read_timeout_s=1.0, request_deadline_s=1.5)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        began = time.monotonic()
        dropped = None
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 4:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                dropped = time.monotonic() - began
                break
            time.sleep(0.25)
        assert dropped is not None and dropped < 4, "the dripping request was still being read"
        assert scrape(port)
    finally:
        server.shutdown()
        server.server_close()


def test_sockets_held_from_one_address_leave_the_scrapes_from_another_answered():
    port = free_port()
    server = serve_metrics(port, "0.0.0.0", slots=8, read_timeout_s=30, per_address=2)
    held = []
    try:
        try:
            for _ in range(50):  # from 127.0.0.2: two held, the rest closed at once
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)))
        except OSError as error:
            pytest.skip(f"cannot connect from 127.0.0.2: {error}")
        time.sleep(0.3)
        for _ in range(5):
            assert b"product_classification_grpc_requests_total" in scrape(port)  # Prometheus, from 127.0.0.1
        open_ones = 0
        for sock in held:
            sock.settimeout(0.2)
            try:
                sock.recv(1)
            except TimeoutError:
                open_ones += 1
        assert open_ones == 2
    finally:
        for sock in held:
            sock.close()
        server.shutdown()
        server.server_close()
