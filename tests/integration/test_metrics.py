"""Every service exposes Prometheus metrics that move with the traffic: a scrape before and after, compared."""

from services.common.contracts.product_classification.v1 import gateway_pb2
from services.common.decode_path import PIXELS_ENSEMBLE
from services.drivers.metrics_reader import scrape, total
from services.drivers.traffic import sample_listings, submit_and_collect


def test_metrics_follow_the_traffic(stack, kafka, gateway):
    urls = {name: stack.services[name].metrics_url for name in ("gateway", "preprocessing", "results")}
    before = {name: scrape(url) for name, url in urls.items()}

    samples = sample_listings(4, seed=41, prefix="metrics")
    assert len(submit_and_collect(kafka, [s.listing for s in samples], 60)) == 4
    gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=samples[0].listing), timeout=60)

    after = {name: scrape(url) for name, url in urls.items()}

    def grew(service: str, name: str, *labels: str) -> float:
        return total(after[service], name, *labels) - total(before[service], name, *labels)

    assert grew("gateway", "product_classification_grpc_requests_total", "ClassifyListing", "code=OK") == 1
    assert grew("gateway", "product_classification_grpc_request_seconds_count", "ClassifyListing") == 1
    # 4 through Kafka; the synchronous call goes through preprocessing's gRPC API, not its consumer
    assert grew("preprocessing", "product_classification_kafka_messages_consumed_total", "listing-submitted") == 4
    assert grew("preprocessing", "product_classification_kafka_messages_produced_total", "prediction-made") == 4
    # one call per batch to pixels_ensemble, which runs every called model, and no call to a model by itself
    assert PIXELS_ENSEMBLE in stack.triton.composed_models
    for model in stack.called_models:
        assert grew("preprocessing", "product_classification_triton_batch_images_count", f"model={model}") == 0
    for model in [PIXELS_ENSEMBLE]:
        assert grew("preprocessing", "product_classification_triton_batch_images_count", f"model={model}") >= 1
        assert grew("preprocessing", "product_classification_triton_call_seconds_sum", f"model={model}") > 0
    assert grew("preprocessing", "product_classification_preprocess_seconds_count") == 5
    # the synchronous call classified the same listing and photo again: the same classification, not published twice
    assert grew("results", "product_classification_kafka_messages_produced_total", "listing-classified") == 4
    assert grew("results", "product_classification_end_to_end_seconds_count") >= 4
    assert (grew("results", "product_classification_classifications_total", "outcome=classified")
            + grew("results", "product_classification_classifications_total", "outcome=needs_review")) == 4
