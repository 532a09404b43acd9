"""Fault injection on a stack of its own: every event ends classified or dead-lettered, none twice."""

from __future__ import annotations

import json

import pytest

from services.drivers.chaos import scenarios
from services.localstack.stack import LocalStack


@pytest.fixture(scope="module")
def dripping_host():
    return {}


@pytest.fixture(scope="module")
def chaos_stack(postgres_url, tmp_path_factory, dripping_host):
    options, host = scenarios.chaos_stack_options(tmp_path_factory.mktemp("chaos"), postgres_url)
    dripping_host["host"] = host
    with LocalStack(options) as stack:
        yield stack


def assert_mid_stream(result: scenarios.ScenarioResult) -> None:
    assert 0 < result.published_at_fault < result.events_in, f"the fault did not land mid-stream: {result}"


def assert_nothing_lost_or_doubled(result: scenarios.ScenarioResult, dead_lettered: int = 0) -> None:
    assert result.lost == 0, result
    assert result.duplicated == 0, result
    assert result.dead_lettered == dead_lettered, result


def assert_complete_mid_stream(result: scenarios.ScenarioResult, count: int) -> None:
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == count, result


def test_triton_killed_mid_stream_and_restarted(chaos_stack):
    regions_before_kill = chaos_stack.triton.shm_regions()
    assert regions_before_kill, "the CPU Triton's Python backend uses shared memory"
    result = scenarios.triton_killed_and_restarted(chaos_stack, 300)
    assert not any(region.exists() for region in regions_before_kill), "the killed Triton's /dev/shm regions remain"
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 300 and result.recovery_s is not None


def test_one_of_two_workers_killed(chaos_stack):
    result = scenarios.worker_killed(chaos_stack, 200)
    assert_complete_mid_stream(result, 200)


def test_a_worker_short_of_room_killed_as_it_defers_loses_and_doubles_nothing(chaos_stack):
    result = scenarios.short_worker_killed(chaos_stack, 60)
    assert json.loads(result.notes)["deferred_before_kill"] >= 1, result
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 60, result


def test_result_service_restarted_mid_stream(chaos_stack):
    result = scenarios.results_restarted(chaos_stack, 200)
    assert_complete_mid_stream(result, 200)
    stopped = json.loads(result.notes)
    # SIGTERM alone ended it, well within the grace period (20 s): exit status 0, no SIGKILL behind it
    assert stopped["exit_code"] == 0 and stopped["stop_s"] < 20, stopped


def test_the_same_events_twice_are_stored_and_published_once(chaos_stack):
    result = scenarios.produced_twice(chaos_stack, 100)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 100


def test_poison_is_dead_lettered_and_good_events_go_on_in_order(chaos_stack):
    result = scenarios.poison_interleaved(chaos_stack, 60)
    assert_nothing_lost_or_doubled(result, dead_lettered=6)
    assert result.classified == 60
    notes = json.loads(result.notes)
    assert "UnicodeDecodeError" in notes["poison_reasons"]["chaos-poison-unreadable"]  # a record no one can read
    assert "zstd-compressed batch unfolds to more than" in notes["poison_reasons"]["chaos-poison-unfolding"]
    assert notes["order_kept"]
    # their dead letters carry the batches holding them (lost otherwise): the unfolding one as its few KB of zstd
    carried = notes["unreadable_batch_bytes_carried"]
    assert set(carried) == {"chaos-poison-unreadable", "chaos-poison-unfolding"}
    assert carried["chaos-poison-unfolding"] < 64 << 10
    assert "cannot be decoded" in notes["poison_reasons"]["chaos-poison-corrupt"]
    assert "100000x100000" in notes["poison_reasons"]["chaos-poison-bomb"]
    assert "scans, over the limit" in notes["poison_reasons"]["chaos-poison-scans"]
    assert notes["poison_reasons"]["chaos-poison-garbage"].startswith("not a ListingSubmitted")


def test_a_model_reloaded_at_a_new_version_is_picked_up_without_a_restart(chaos_stack):
    result = scenarios.model_reloaded(chaos_stack, 300)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    notes = json.loads(result.notes)
    versions = notes["model_versions"]
    old = [v for v in versions if notes["old"] in v.split(",")]
    new = [v for v in versions if notes["new"] in v.split(",")]
    assert old and new, versions  # served by version 1, then by version 2, in the same run
    assert result.classified == 300 and result.recovery_s is not None


def test_two_result_replicas_racing_publish_each_prediction_once(chaos_stack):
    result = scenarios.results_replicas_racing(chaos_stack, 100)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 100


def test_result_service_sigkilled_mid_publishing_loses_nothing(chaos_stack):
    result = scenarios.results_killed_mid_publishing(chaos_stack, 200)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)  # a republication would keep its event id: duplicated_in_crash_window
    assert result.classified == 200 and result.duplicated_in_crash_window <= 64  # at most the batch in hand
    # The restarted replica has the same name (RESULTS_PUBLISHER_ID, a pod's name in production): it takes back the
    # rows it had claimed at once, instead of waiting out their 60 s lease.
    assert result.recovery_s is not None and result.recovery_s < 30, result


def test_poison_ids_are_dead_lettered_and_their_partitions_go_on(chaos_stack):
    result = scenarios.poison_ids_interleaved(chaos_stack, 40)
    assert_nothing_lost_or_doubled(result, dead_lettered=4)
    assert result.classified == 40
    reasons = json.loads(result.notes)
    assert any("control characters" in r for r in reasons.values())
    assert any("over the limit of 256" in r for r in reasons.values())


def test_a_dripping_host_fails_only_its_own_listings(chaos_stack, dripping_host):
    result = scenarios.dripping_host_among_good(chaos_stack, dripping_host["host"], 40, 3)
    assert_nothing_lost_or_doubled(result, dead_lettered=3)
    assert result.classified == 40
    assert set(json.loads(result.notes).values()) == {"ERROR_KIND_SOURCE_TOO_SLOW"}


def test_postgresql_connections_killed_under_load(chaos_stack):
    result = scenarios.postgres_connections_killed(chaos_stack, 200)
    assert_mid_stream(result)
    assert_nothing_lost_or_doubled(result)
    assert result.classified == 200 and "connections terminated" in result.notes


def test_the_synchronous_path_answers_unavailable_while_triton_is_down(chaos_stack):
    """A dependency outage is UNAVAILABLE to a gRPC caller (retry later), health says NOT_SERVING, and both come back."""
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
    from services.drivers.traffic import sample_listings

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


def test_listings_with_image_urls_through_kafka_and_grpc(chaos_stack, dripping_host):
    """Image URLs on a local host: fetched and classified through Kafka and through the gateway; 429 and 503 are
    retried; a missing image is dead-lettered as SOURCE_UNREACHABLE and stored as FAILED with its reason."""
    import uuid

    import grpc

    from services.common.contracts.product_classification.v1 import (common_pb2, gateway_pb2, gateway_pb2_grpc,
                                                                     results_pb2, results_pb2_grpc)
    from services.drivers.traffic import labelled_photos, submit_listings

    host = dripping_host["host"]
    host.start()
    try:
        photos = [f"{path.parent.name}/{path.name}" for path, _ in labelled_photos()[:3]]
        run = uuid.uuid4().hex[:6]
        listings = {
            f"url-{run}-ok": host.url(f"photo/{photos[0]}"),
            f"url-{run}-429": host.url(f"flaky-429/{photos[1]}"),
            f"url-{run}-503": host.url(f"flaky-503/{photos[2]}"),
            f"url-{run}-missing": host.url("missing/nothing.jpg"),
        }
        outcomes = scenarios.Outcomes(chaos_stack)
        try:
            submit_listings(chaos_stack.kafka_settings, [
                common_pb2.Listing(listing_id=i, marketplace="fr-boutique", image_url=u) for i, u in listings.items()])
            outcomes.wait_for(set(listings), 120)
            classified = {e.classification.listing_id for _, e in outcomes.published}
            failed = {f.listing_id: f for f in outcomes.failed}
        finally:
            outcomes.close()
        assert {f"url-{run}-ok", f"url-{run}-429", f"url-{run}-503"} <= classified
        missing = failed[f"url-{run}-missing"]
        assert missing.error_kind == common_pb2.ERROR_KIND_SOURCE_UNREACHABLE and "HTTP 404" in missing.reason
        with chaos_stack.internal_channel("results") as channel:
            stored = results_pb2_grpc.ClassificationResultsStub(channel).GetClassification(
                results_pb2.GetClassificationRequest(listing_id=f"url-{run}-missing"), timeout=10)
        assert stored.status == common_pb2.CLASSIFICATION_STATUS_FAILED and "HTTP 404" in stored.error_reason

        with chaos_stack.gateway_channel() as channel:
            stub = gateway_pb2_grpc.ListingClassifierStub(channel)
            answer = stub.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=common_pb2.Listing(
                listing_id=f"url-{run}-grpc", marketplace="fr-boutique",
                image_url=host.url(f"flaky-503/{photos[0]}?grpc"))), timeout=60)
            assert answer.category.id and answer.category.locale == "fr"
            with pytest.raises(grpc.RpcError) as raised:
                stub.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=common_pb2.Listing(
                    listing_id=f"url-{run}-grpc-missing", marketplace="fr-boutique",
                    image_url=host.url("missing/x.jpg"))), timeout=60)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "HTTP 404" in raised.value.details()
    finally:
        host.stop()


def test_postgresql_unavailable_mid_stream_pauses_reports_not_serving_and_resumes(chaos_stack):
    result = scenarios.postgres_unavailable(chaos_stack, 200)
    assert_complete_mid_stream(result, 200)
    seen = json.loads(result.notes)
    assert seen["not_serving_during_outage"] and seen["serving_again"], seen
    assert seen["get_classification"] == "UNAVAILABLE", seen


def test_the_broker_unreachable_mid_stream_is_waited_out_and_nothing_is_lost(chaos_stack):
    result = scenarios.broker_unreachable(chaos_stack, 200)
    assert_complete_mid_stream(result, 200)
    seen = json.loads(result.notes)
    assert seen["serving_again"], seen
    assert any(seen["not_serving_during_outage"].values()), seen


def test_the_callers_deadline_reaches_triton(chaos_stack):
    """Triton frozen (SIGSTOP: connected, answering nothing): a caller's 2 s deadline ends its call at the gateway
    with DEADLINE_EXCEEDED, and preprocessing's PredictListing (whose Triton call carries the remaining deadline)
    ends at about the same time, not at Triton's own 30 s client timeout."""
    import time

    import grpc

    from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
    from services.drivers.metrics_reader import scrape, total
    from services.drivers.traffic import sample_listings

    listing = sample_listings(1, seed=149, prefix="deadline")[0].listing
    metrics = chaos_stack.services["preprocessing"].metrics_url
    count, seconds = "product_classification_grpc_request_seconds_count", "product_classification_grpc_request_seconds_sum"

    def predict_calls() -> tuple[float, float]:
        values = scrape(metrics)
        return total(values, count, "PredictListing"), total(values, seconds, "PredictListing")

    calls_before, seconds_before = predict_calls()
    chaos_stack.triton.freeze()
    try:
        began = time.monotonic()
        with chaos_stack.gateway_channel() as channel:
            with pytest.raises(grpc.RpcError) as raised:
                gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
                    gateway_pb2.ClassifyListingRequest(listing=listing), timeout=2)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - began < 4
        deadline = time.monotonic() + 8  # well under the 30 s Triton would hold it without the caller's deadline
        while predict_calls()[0] == calls_before and time.monotonic() < deadline:
            time.sleep(0.1)
        calls_after, seconds_after = predict_calls()
    finally:
        chaos_stack.triton.thaw()
    assert calls_after == calls_before + 1, "preprocessing was still waiting on Triton after the caller gave up"
    assert seconds_after - seconds_before < 4, seconds_after - seconds_before
    chaos_stack.services["preprocessing"].wait_serving(60)
