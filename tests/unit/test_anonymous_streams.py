"""Health watches and reflection streams, which anyone may open without a key, are bounded and never take the
server's calls away from its callers (services/common/anonymous_streams.py), on both kinds of server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.anonymous_streams import AnonymousStreamPolicy
from services.common.grpc_server import AsyncioGrpcServer, GrpcServer

WORKERS = 4
KINDS = ["thread-pool", "asyncio"]


@pytest.fixture
def serve():
    started = []

    def start(kind: str, policy: AnonymousStreamPolicy | None = None):
        if kind == "thread-pool":
            server = GrpcServer("127.0.0.1:0", [], max_workers=WORKERS, anonymous=policy)
        else:
            server = AsyncioGrpcServer("127.0.0.1:0", [], max_workers=WORKERS, max_streams=2, anonymous=policy)
        server.start()
        server.set_serving(True)
        started.append(server)
        return server, grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield start
    for server in started:
        server.stop(0)


def check(server) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # a connection of its own
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def watch(channel: grpc.Channel):
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    return call, next(call).status  # raises the refusal


class Reflection:
    """A reflection stream that asks one question, then stays open until closed."""

    def __init__(self, channel: grpc.Channel):
        self.release = threading.Event()

        def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            self.release.wait(30)
        self.call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(requests())
        self.services = [s.name for s in next(self.call).list_services_response.service]

    def close(self) -> None:
        self.release.set()
        self.call.cancel()


def refusal(open_one) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        open_one()
    return refused.value


def until(condition, seconds: float = 5.0) -> bool:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("kind", KINDS)
def test_one_address_holds_at_most_its_share_and_the_server_still_answers(serve, kind):
    server, channel = serve(kind, AnonymousStreamPolicy(WORKERS, reflections=3))  # 4 per address, the default
    watches = [watch(channel)[0] for _ in range(2)]
    reflections = [Reflection(channel) for _ in range(2)]
    assert "grpc.health.v1.Health" in reflections[0].services
    for open_one in (lambda: watch(channel), lambda: Reflection(channel)):
        refused = refusal(open_one)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the most one address may" in refused.details()
    assert check(server) == health_pb2.HealthCheckResponse.SERVING

    watches[0].cancel()  # its place comes back
    assert until(lambda: server.anonymous.open_streams("watch") == 1)
    assert watch(channel)[1] == health_pb2.HealthCheckResponse.SERVING
    for reflection in reflections:
        reflection.close()
    assert until(lambda: server.anonymous.open_streams("reflection") == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_watches_hold_no_worker_and_each_hears_the_change(serve, kind):
    server, channel = serve(kind, AnonymousStreamPolicy(WORKERS, watches=5 * WORKERS, per_address=5 * WORKERS))
    watches = [watch(channel) for _ in range(5 * WORKERS)]  # before: the fifth was refused on the thread-pool server
    assert all(status == health_pb2.HealthCheckResponse.SERVING for _, status in watches)
    assert check(server) == health_pb2.HealthCheckResponse.SERVING
    refused = refusal(lambda: watch(channel))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "watch streams are open" in refused.details()

    server.set_serving(False)
    assert [next(call).status for call, _ in watches] == [health_pb2.HealthCheckResponse.NOT_SERVING] * len(watches)


@pytest.mark.parametrize("kind", KINDS)
def test_reflection_streams_are_bounded_in_all_and_end_after_their_lifetime(serve, kind):
    server, channel = serve(kind, AnonymousStreamPolicy(WORKERS, reflections=2, per_address=10,
                                                        reflection_lifetime_s=1.0))
    held = [Reflection(channel) for _ in range(2)]
    refused = refusal(lambda: Reflection(channel))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "reflection streams are open" in refused.details()
    assert check(server) == health_pb2.HealthCheckResponse.SERVING

    for reflection in held:  # neither is closed by its caller: the server ends both
        with pytest.raises(grpc.RpcError) as ended:
            next(reflection.call)
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert until(lambda: server.anonymous.open_streams("reflection") == 0)
    Reflection(channel).close()


def test_by_default_reflection_takes_at_most_a_sixteenth_of_the_workers():
    from services.gateway.settings import GatewaySettings
    default = {name: field.default for name, field in GatewaySettings.model_fields.items()}
    reflections = AnonymousStreamPolicy(default["grpc_workers"]).reflections
    assert reflections == 2  # the gateway's classifications and streams at once still find their threads
    assert default["max_in_flight"] + default["max_streams"] + reflections <= default["grpc_workers"]
    assert AnonymousStreamPolicy(2).reflections == 1
    assert AnonymousStreamPolicy(32).extra_calls == AnonymousStreamPolicy(32).watches + 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_watch_still_hears_a_change_after_another_watch_left(serve, kind):
    """grpcio's asyncio health servicer forgot every watcher of a service when one of them left."""
    server, channel = serve(kind)
    leaving, _ = watch(channel)
    staying, status = watch(channel)
    assert status == health_pb2.HealthCheckResponse.SERVING
    leaving.cancel()
    assert until(lambda: server.anonymous.open_streams("watch") == 1)
    server.set_serving(False)
    heard = []
    listener = threading.Thread(target=lambda: heard.append(next(staying).status), daemon=True)
    listener.start()
    listener.join(5)
    assert heard == [health_pb2.HealthCheckResponse.NOT_SERVING]
    with pytest.raises(grpc.RpcError) as unknown:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="made.Up"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
