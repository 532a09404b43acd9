"""HTTP/2 abuse no gRPC library sends, against the project's own servers: streams opened and reset at once (the
"rapid reset", CVE-2023-44487), written frame by frame (tests/raw_http2.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import MAX_STREAMS_PER_CONNECTION
from tests.raw_http2 import RawConnection

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


SERVER = """
import sys, time
from services.common.grpc_server import AsyncioGrpcServer, GrpcServer
kind = sys.argv[1]
server = (GrpcServer if kind == "thread-pool" else AsyncioGrpcServer)("127.0.0.1:0", [], max_workers=8)
server.start()
server.set_serving(True)
print(server.port, flush=True)
sys.stdin.read()  # until the test closes it
"""


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.parametrize("kind", ["thread-pool", "asyncio"])
def test_a_rapid_reset_neither_grows_the_server_nor_stops_its_health_checks(kind):
    """Without a limit on streams per connection, one connection's rapid reset (reading every reply as it comes)
    grew a thread-pool server to 1 GB in 20 s, and 36 of its 38 health checks meanwhile were cancelled or refused;
    on the asyncio server all 41. With it: about 100 MB, and every check answered. The server runs in a process of
    its own, as a service does, so that the attacker here does not slow it down."""
    assert MAX_STREAMS_PER_CONNECTION <= 100
    server = subprocess.Popen([sys.executable, "-c", SERVER, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              cwd=REPOSITORY_ROOT)
    answers: list[object] = []
    attacking = threading.Event()
    try:
        port = int(server.stdout.readline())

        def check_meanwhile() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                attacking.wait(10)
                while attacking.is_set():
                    try:
                        answers.append(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
                    except grpc.RpcError as error:
                        answers.append(error.code())
                    time.sleep(0.2)
        checker = threading.Thread(target=check_meanwhile)
        checker.start()
        attacker = RawConnection(port)
        before = resident_mb(server.pid)
        attacking.set()
        opened = attacker.rapid_reset(seconds=4)
        grown = resident_mb(server.pid) - before
        attacking.clear()
        attacker.close()
        checker.join(10)
    finally:
        attacking.clear()
        server.stdin.close()
        server.kill()
        server.wait(10)
    assert opened > 10_000  # the attack ran
    assert grown < 150, f"the server grew by {grown:.0f} MB under {opened} streams opened and reset"
    serving = answers.count(health_pb2.HealthCheckResponse.SERVING)
    assert len(answers) >= 5 and serving >= 0.9 * len(answers), answers
