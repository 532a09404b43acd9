"""Fault injection on a stack of its own: every event ends classified or dead-lettered, none twice."""

from __future__ import annotations

import json

import pytest

from services.localstack import chaos
from services.localstack.stack import LocalStack


@pytest.fixture(scope="module")
def dripping_host():
    return {}


@pytest.fixture(scope="module")
def chaos_stack(postgres_url, tmp_path_factory, dripping_host):
    options, host = chaos.chaos_stack_options(tmp_path_factory.mktemp("chaos"), postgres_url)
    dripping_host["host"] = host
    with LocalStack(options) as stack:
        yield stack


def assert_mid_stream(result: chaos.ScenarioResult) -> None:
    assert 0 < result.published_at_fault < result.events_in, f"the fault did not land mid-stream: {result}"


def assert_nothing_lost_or_doubled(result: chaos.ScenarioResult, dead_lettered: int = 0) -> None:
    assert result.lost == 0, result
    assert result.duplicated == 0, result
    assert result.dead_lettered == dead_lettered, result


def test_triton_killed_mid_stream_and_restarted(chaos_stack):
    regions_before_kill = chaos_stack.triton.shm_regions()
    assert regions_before_kill, "the CPU Triton's Python backend uses shared memory"
    result = chaos.triton_killed_and_restarted(chaos_stack, 300)
    assert not any(region.exists() for region in regions_before_kill), "the killed Triton's /dev/shm regions remain"
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 300 and result.recovery_s is not None


def test_one_of_two_workers_killed(chaos_stack):
    result = chaos.worker_killed(chaos_stack, 200)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 200


def test_result_service_restarted_mid_stream(chaos_stack):
    result = chaos.results_restarted(chaos_stack, 200)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 200


def test_the_same_events_twice_are_stored_and_published_once(chaos_stack):
    result = chaos.produced_twice(chaos_stack, 100)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 100


def test_poison_is_dead_lettered_and_good_events_go_on_in_order(chaos_stack):
    result = chaos.poison_interleaved(chaos_stack, 60)
    assert_nothing_lost_or_doubled(result, dead_lettered=3)
    assert result.classified == 60
    notes = json.loads(result.notes)
    assert notes["order_kept"]
    assert "cannot be decoded" in notes["poison_reasons"]["chaos-poison-corrupt"]
    assert "100000x100000" in notes["poison_reasons"]["chaos-poison-bomb"]
    assert notes["poison_reasons"]["chaos-poison-garbage"].startswith("not a ListingSubmitted")


def test_a_model_reloaded_at_a_new_version_is_picked_up_without_a_restart(chaos_stack):
    result = chaos.model_reloaded(chaos_stack, 300)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    notes = json.loads(result.notes)
    versions = notes["model_versions"]
    old = [v for v in versions if notes["old"] in v.split(",")]
    new = [v for v in versions if notes["new"] in v.split(",")]
    assert old and new, versions  # served by version 1, then by version 2, in the same run
    assert result.classified == 300 and result.recovery_s is not None


def test_two_result_replicas_racing_publish_each_prediction_once(chaos_stack):
    result = chaos.results_replicas_racing(chaos_stack, 100)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 100


def test_result_service_sigkilled_mid_publishing_loses_nothing(chaos_stack):
    result = chaos.results_killed_mid_publishing(chaos_stack, 200)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)  # a republication would keep its event id: duplicated_in_crash_window
    assert result.classified == 200 and result.duplicated_in_crash_window <= 64  # at most the batch in hand


def test_poison_ids_are_dead_lettered_and_their_partitions_go_on(chaos_stack):
    result = chaos.poison_ids_interleaved(chaos_stack, 40)
    assert_nothing_lost_or_doubled(result, dead_lettered=4)
    assert result.classified == 40
    reasons = json.loads(result.notes)
    assert any("control characters" in r for r in reasons.values())
    assert any("over the limit of 256" in r for r in reasons.values())


def test_a_dripping_host_fails_only_its_own_listings(chaos_stack, dripping_host):
    result = chaos.dripping_host_among_good(chaos_stack, dripping_host["host"], 40, 3)
    assert_nothing_lost_or_doubled(result, dead_lettered=3)
    assert result.classified == 40
    assert set(json.loads(result.notes).values()) == {"ERROR_KIND_SOURCE_TOO_SLOW"}


def test_postgresql_connections_killed_under_load(chaos_stack):
    result = chaos.postgres_connections_killed(chaos_stack, 200)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 200 and "connections terminated" in result.notes


def test_the_synchronous_path_answers_unavailable_while_triton_is_down(chaos_stack):
    """A dependency outage is UNAVAILABLE to a gRPC caller (retry later), health says NOT_SERVING, and both come back."""
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
    from services.localstack.traffic import sample_listings

    listing = sample_listings(1, seed=139, prefix="sync-outage")[0].listing

    def preprocessing_status():
        with grpc.insecure_channel(chaos_stack.services["preprocessing"].address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status

    chaos_stack.triton.kill()
    try:
        with chaos_stack.gateway_channel() as channel:
            with pytest.raises(grpc.RpcError) as raised:
                gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
                    gateway_pb2.ClassifyListingRequest(listing=listing), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
        deadline = time.monotonic() + 10
        while preprocessing_status() != health_pb2.HealthCheckResponse.NOT_SERVING and time.monotonic() < deadline:
            time.sleep(0.2)
        assert preprocessing_status() == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        chaos_stack.triton.start()
    chaos_stack.services["preprocessing"].wait_serving(60)
    with chaos_stack.gateway_channel() as channel:
        answer = gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
            gateway_pb2.ClassifyListingRequest(listing=listing), timeout=60)
    assert answer.category.id
