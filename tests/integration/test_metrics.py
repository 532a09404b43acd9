"""Every service exposes Prometheus metrics that move with the traffic."""

from services.common.contracts.product_classification.v1 import gateway_pb2
from services.localstack.metrics_reader import scrape, total
from services.localstack.traffic import sample_listings, submit_and_collect


def test_metrics_follow_the_traffic(stack, kafka, gateway):
    samples = sample_listings(4, seed=41, prefix="metrics")
    assert len(submit_and_collect(kafka, [s.listing for s in samples], 60)) == 4
    gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=samples[0].listing), timeout=60)

    gateway_metrics = scrape(stack.services["gateway"].metrics_url)
    assert total(gateway_metrics, "product_classification_grpc_requests_total", "ClassifyListing", "code=OK") >= 1
    assert total(gateway_metrics, "product_classification_grpc_request_seconds_count", "ClassifyListing") >= 1

    preprocessing = scrape(stack.services["preprocessing"].metrics_url)
    assert total(preprocessing, "product_classification_kafka_messages_consumed_total", "listing-submitted") >= 4
    assert total(preprocessing, "product_classification_kafka_messages_produced_total", "prediction-made") >= 4
    for model in stack.called_models:
        assert total(preprocessing, "product_classification_triton_batch_images_count", f"model={model}") >= 1
        assert total(preprocessing, "product_classification_triton_call_seconds_sum", f"model={model}") > 0
    assert total(preprocessing, "product_classification_preprocess_seconds_count") >= 4

    results = scrape(stack.services["results"].metrics_url)
    assert total(results, "product_classification_kafka_messages_produced_total", "listing-classified") >= 4
    assert total(results, "product_classification_end_to_end_seconds_count") >= 4
    assert (total(results, "product_classification_classifications_total", "outcome=classified")
            + total(results, "product_classification_classifications_total", "outcome=needs_review")) >= 4
