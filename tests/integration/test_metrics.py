"""Every service exposes Prometheus metrics that move with the traffic: a scrape before and after, compared."""

import importlib.metadata
import re
import threading
import time
import urllib.request
import uuid

from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from services.common.contracts.product_classification.v1 import gateway_pb2
from services.common.decode_path import PIXELS_ENSEMBLE
from services.common.kafka import ConsumeLoop, make_consumer, make_producer
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


def test_every_target_says_which_service_it_is(stack):
    """What the down alert (deploy/prometheus/alerts.yml) knows a target by where the scrape job is not the
    service's name: each service's product_classification_service_info, and Triton's request counts, which it exports
    for every model it has loaded."""
    for name in ("gateway", "preprocessing", "results"):
        values = scrape(stack.services[name].metrics_url)
        info = {key: value for key, value in values.items() if key.startswith("product_classification_service_info{")}
        version = importlib.metadata.version("product-classification")
        assert info == {f"product_classification_service_info{{service={name},version={version}}}": 1.0}, name
    # as Prometheus reads it (prometheus_client's parser would name the counter nv_inference_request_success_total)
    triton = urllib.request.urlopen(f"http://127.0.0.1:{stack.triton.metrics_port}/metrics", timeout=5).read().decode()
    for model in stack.called_models:
        assert re.search(rf'^nv_inference_request_success{{model="{model}",version="\d+"}} \d+$', triton, re.M), model


def test_the_consumer_lag_is_the_backlog_the_real_broker_holds(stack, kafka):
    """A consume loop on the real broker exports, after its first batch of 10 out of 100 records, a lag of 90 (the
    partition's high watermark from the fetch, less the first record it holds ahead), then 0 once it is through; the
    services export it too, 0 once their traffic is through."""
    topic = f"lag-test-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**kafka.client_options())
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    producer = make_producer(kafka, "lag-test")
    for index in range(100):
        producer.send(topic, key=b"k", value=str(index).encode())
    producer.flush(30)
    handled: list[int] = []
    lag_seen: list[float | None] = []
    go_on = threading.Event()

    def handler(records):
        if handled:  # from the second batch on: what was exported after the first
            lag_seen.append(REGISTRY.get_sample_value("product_classification_kafka_consumer_lag", {"topic": topic}))
            go_on.wait(30)
        handled.extend(r.offset for r in records)
        return []

    loop = ConsumeLoop("lag-test", make_consumer(kafka, f"{topic}-group", "lag-test", 10), [topic], handler, producer,
                       max_batch=10)
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while not lag_seen and time.monotonic() < deadline:
            time.sleep(0.05)
        go_on.set()
        while len(handled) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert lag_seen[0] == 90 and sorted(handled) == list(range(100))
        assert REGISTRY.get_sample_value("product_classification_kafka_consumer_lag", {"topic": topic}) == 0
    finally:
        loop.stop(10)
        producer.close()

    samples = sample_listings(3, seed=43, prefix="lag")
    assert len(submit_and_collect(kafka, [s.listing for s in samples], 60)) == 3
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # an idle loop exports its lag every second
        scraped = {name: scrape(stack.services[name].metrics_url) for name in ("preprocessing", "results")}
        if (total(scraped["preprocessing"], "product_classification_kafka_consumer_lag", "listing-submitted") == 0
                and total(scraped["results"], "product_classification_kafka_consumer_lag", "prediction-made") == 0):
            break
        time.sleep(0.5)
    assert any(key.startswith("product_classification_kafka_consumer_lag{") for key in scraped["preprocessing"])
    assert total(scraped["preprocessing"], "product_classification_kafka_consumer_lag", "listing-submitted") == 0
    assert total(scraped["results"], "product_classification_kafka_consumer_lag", "prediction-made") == 0
