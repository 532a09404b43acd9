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
