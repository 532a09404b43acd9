"""Every open port of the stack held at once, the way a cheap attack holds them: idle TCP sockets on the three gRPC
ports, the three metrics ports and the console, and gRPC calls that send their headers and never their message (to
`Health/Check`, which needs no key, and to each service's own methods without one). Meanwhile listings are still
classified, through the gateway and through Kafka, every service says SERVING, and once the attacker lets go the
metrics answer again."""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.contracts.product_classification.v1 import gateway_pb2
from services.common.grpc_server import MAX_STREAMS_PER_CONNECTION
from services.drivers.traffic import sample_listings, submit_and_collect

pytestmark = pytest.mark.integration

METHODS = {"gateway": "/product_classification.v1.ListingClassifier/ClassifyListing",
           "preprocessing": "/product_classification.v1.ImagePredictor/PredictListing",
           "results": "/product_classification.v1.ClassificationResults/GetClassification"}


class Attacker:
    def __init__(self):
        self.sockets: list[socket.socket] = []
        self.channels: list[grpc.Channel] = []
        self.calls: list[grpc.Future] = []
        self.streams: list[grpc.Call] = []
        self.release = threading.Event()

    def hold_sockets(self, port: int, count: int) -> None:
        for _ in range(count):
            self.sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))

    def silent_calls(self, address: str, method: str, count: int) -> None:
        def never():
            self.release.wait()
            yield b""
        for first in range(0, count, MAX_STREAMS_PER_CONNECTION):  # as many connections as it takes
            # a connection of its own (channels to one address otherwise share one)
            channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            self.channels.append(channel)
            call = channel.stream_unary(method)
            self.calls += [call.future(never()) for _ in range(min(count - first, MAX_STREAMS_PER_CONNECTION))]

    def anonymous_streams(self, address: str, count: int) -> int:
        """Opens `count` health watches and as many reflection streams that ask once and stay open (neither needs
        a key); returns how many the server took."""
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.channels.append(channel)

        def ask_once():
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            self.release.wait()
        taken = 0
        for _ in range(count):
            for call in (health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()),
                         reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(ask_once())):
                self.streams.append(call)  # (a call object collected is a call cancelled)
                try:
                    next(call)
                    taken += 1
                except grpc.RpcError as refused:
                    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        return taken

    def close(self) -> None:
        self.release.set()
        for sock in self.sockets:
            sock.close()
        for channel in self.channels:
            channel.close()


def serving(address: str) -> int:
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def test_every_port_held_at_once_and_the_stack_still_classifies(stack, kafka, gateway):
    attacker = Attacker()
    try:
        for name, service in stack.services.items():
            attacker.hold_sockets(service.grpc_port, 200)
            attacker.hold_sockets(int(service.metrics_url.rsplit(":", 1)[1].split("/")[0]), 100)
            attacker.silent_calls(service.address, "/grpc.health.v1.Health/Check", 300)
            attacker.silent_calls(service.address, METHODS[name], 300)
        attacker.hold_sockets(int(stack.console.url.rsplit(":", 1)[1]), 60)
        time.sleep(1)

        for name, service in stack.services.items():
            assert serving(service.address) == health_pb2.HealthCheckResponse.SERVING, name
        direct, queued = sample_listings(2, seed=151, prefix="held-ports")
        answer = gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=direct.listing), timeout=60)
        assert answer.listing_id == direct.listing.listing_id and answer.label and answer.candidates
        assert len(submit_and_collect(kafka, [queued.listing], 90)) == 1
        login_page = urllib.request.urlopen(stack.console.url + "/login", timeout=10)
        assert login_page.status == 200
        # the silent calls ended: those without a key refused at once, the keyless health checks cancelled by the
        # servers (past each address's share at once, the rest at 10 s)
        deadline = time.monotonic() + 20
        while not all(call.done() for call in attacker.calls) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(call.done() for call in attacker.calls)
        assert {call.exception().code() for call in attacker.calls} <= {
            grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED}
    finally:
        attacker.close()
    for name, service in stack.services.items():
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(service.metrics_url, timeout=5) as response:
                    assert b"product_classification_grpc_requests_total" in response.read()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{name}'s metrics did not answer again"
                time.sleep(0.5)
        assert service.process.running(), name


def test_health_watches_and_reflection_streams_from_anyone_leave_every_service_its_calls(stack, kafka, gateway):
    """Anyone may watch a service's health or ask its reflection, with no key. Each such stream used to take one of
    the server's calls, and a thread on the gateway and preprocessing, for as long as its caller kept it open: 32 of
    them turned every caller of the gateway away, health checks included. Now one address holds at most 4 (the
    rest refused at once) and they never take the service's own calls (services/common/anonymous_streams.py)."""
    attacker = Attacker()
    try:
        for name, service in stack.services.items():
            assert attacker.anonymous_streams(service.address, 40) == 4, name
        for name, service in stack.services.items():
            assert serving(service.address) == health_pb2.HealthCheckResponse.SERVING, name
        direct, queued = sample_listings(2, seed=163, prefix="anonymous-streams")
        answer = gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=direct.listing), timeout=60)
        assert answer.listing_id == direct.listing.listing_id and answer.label
        assert len(submit_and_collect(kafka, [queued.listing], 90)) == 1
    finally:
        attacker.close()


def test_a_service_started_under_a_low_open_files_limit_raises_it_and_idle_sockets_do_not_stop_it(stack):
    """Started with the soft limit most systems give a process (1,024), 1,100 idle sockets once stopped the gateway
    accepting anyone. The services raise the soft limit to the hard one at start-up, so the same sockets are held
    (each until the 10 s handshake deadline) and a listing is still classified through that gateway."""
    from pathlib import Path

    from services.common.contracts.product_classification.v1 import gateway_pb2_grpc
    from services.localstack.stack import authenticated_channel

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit on open files here is {hard}: nothing to raise the soft one to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        service = stack.add_service("gateway-2")  # inherits the soft limit of 1,024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    attacker = Attacker()
    try:
        limits = Path(f"/proc/{service.process.process.pid}/limits").read_text()
        [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
        assert line.split()[3] == line.split()[4] != "1024", line  # soft raised to hard
        attacker.hold_sockets(service.grpc_port, 1100)
        # accepted at once, not once the handshake deadline (10 s) has closed some of the idle sockets
        with grpc.insecure_channel(service.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        [sample] = sample_listings(1, seed=157, prefix="held-descriptors")
        with authenticated_channel(service.address, stack.gateway_api_key, stack.client_tls("localstack")) as channel:
            answer = gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
                gateway_pb2.ClassifyListingRequest(listing=sample.listing), timeout=60)
        assert answer.listing_id == sample.listing.listing_id and answer.label
    finally:
        attacker.close()
        stack.services.pop("gateway-2").stop()


# -- where the stack listens

def _listening() -> dict[str, str]:
    """Socket inode -> local address of every listening TCP socket on the host (/proc/net/tcp and tcp6)."""
    found = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                found[fields[9]] = f"{address}:{int(port, 16)}"
    return found


def _loopback(address: str) -> bool:
    host = address.split(":")[0]
    return host in ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_every_port_the_stack_opens_listens_on_loopback_only(stack):
    """The local stack runs on a developer's (or a checker's) machine: its gRPC ports, the console, Triton, the broker
    and each service's metrics port answer this host only. The metrics ports listened on every address."""
    listening = _listening()
    ours = {}
    for pid in _descendants(os.getpid()):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            inode = link.removeprefix("socket:[").removesuffix("]")
            if link.startswith("socket:[") and inode in listening:
                ours[listening[inode]] = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:120]
    assert len(ours) >= 10, ours  # gRPC and metrics of three services, the console, Triton's three, the broker
    wide = {address: command for address, command in ours.items() if not _loopback(address)}
    assert not wide, f"listening beyond loopback: {wide}"
