"""replay-dead-letters against the real stack: a listing event (or a prediction) whose header key kafka-python cannot
read is dead-lettered with its record batch by the stage that met it; the tool takes the event out of that batch,
sends it again without the header that stopped the client, and the listing is classified. Nothing of it was lost."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaProducer

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.kafka import PAYLOAD_TYPE_HEADER
from services.drivers.chaos.poison import UndecodableHeaderKey
from services.drivers.traffic import (AllClassified, TopicReader, classified_by_listing, sample_listings,
                                      submit_listings, submitted_event)
from services.tools import replay_dead_letters

pytestmark = pytest.mark.integration


def _dead_letter_of(reader: TopicReader, topic: str, partition: int, offset: int) -> list:
    def found(records) -> bool:
        return any(_place(r) == (topic, partition, offset) for r in records)
    return [events_pb2.ProcessingFailed.FromString(r.value) for r in reader.read(found, 60)
            if _place(r) == (topic, partition, offset)]


def _place(record) -> tuple:
    failure = events_pb2.ProcessingFailed.FromString(record.value)
    return failure.source_topic, failure.source_partition, failure.source_offset


def test_a_record_no_client_could_read_is_classified_once_replayed(stack, kafka, capsys):
    sample = sample_listings(1, seed=197, prefix="replayed")[0]
    event = submitted_event(sample.listing)
    topic = kafka.topics.listing_submitted
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=0)
    failed_reader = TopicReader(kafka, kafka.topics.processing_failed)
    classified_reader = TopicReader(kafka, kafka.topics.listing_classified)
    wanted = {sample.listing.listing_id}
    try:
        sent = producer.send(topic, key=sample.listing.listing_id.encode(), value=event.SerializeToString(),
                             headers=[(PAYLOAD_TYPE_HEADER, event.DESCRIPTOR.full_name.encode()),
                                      (UndecodableHeaderKey("x"), b"1")]).get(30)
        letters = _dead_letter_of(failed_reader, topic, sent.partition, sent.offset)
        assert letters and letters[0].source_batch, "dead-lettered without its record batch"
        source = f"{topic}/{sent.partition}/{sent.offset}"

        # Listed first: nothing is sent without --replay.
        assert replay_dead_letters.main(["--source", source, "--idle-s", "2"], settings=kafka) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert lines[0]["source"] == source and lines[0]["replayable"] and not lines[0]["sent"]
        assert lines[0]["headers_dropped"] == 1 and lines[-1]["picked"] == 1 and lines[-1]["sent"] == 0

        assert replay_dead_letters.main(["--source", source, "--idle-s", "2", "--replay"], settings=kafka) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert lines[0]["sent"] and lines[-1]["sent"] == 1
        classified = classified_by_listing(classified_reader.read(AllClassified(wanted), 90))
    finally:
        producer.close()
        failed_reader.close()
        classified_reader.close()
    assert wanted <= set(classified), "the replayed listing was never classified"
    assert classified[sample.listing.listing_id][0].classification.submission_id == event.submission_id


def test_an_ordinary_dead_letter_is_sent_again_from_its_payload(stack, kafka, capsys):
    """Bytes that are no listing event: its dead letter carries them, they are sent again as they were (and
    dead-lettered again, as nothing about them changed)."""
    topic = kafka.topics.listing_submitted
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=0)
    failed_reader = TopicReader(kafka, kafka.topics.processing_failed)
    try:
        sent = producer.send(topic, key=b"replay-garbage", value=b"\x00\xffno event").get(30)
        letters = _dead_letter_of(failed_reader, topic, sent.partition, sent.offset)
        assert letters[0].original_payload == b"\x00\xffno event"
        source = f"{topic}/{sent.partition}/{sent.offset}"
        assert replay_dead_letters.main(["--source", source, "--idle-s", "2", "--replay"], settings=kafka) == 0
        line = json.loads(capsys.readouterr().out.splitlines()[0])
        assert line["sent"] and line["bytes"] == len(b"\x00\xffno event") and line["kind"] == "INVALID_REQUEST"
        again = [r for r in failed_reader.read(lambda rs: any(
            events_pb2.ProcessingFailed.FromString(r.value).original_payload == b"\x00\xffno event"
            and _place(r)[2] != sent.offset for r in rs), 60)]
    finally:
        producer.close()
        failed_reader.close()
    assert any(_place(r)[:2] == (topic, sent.partition) and _place(r)[2] > sent.offset for r in again)


def test_a_prediction_the_result_service_could_not_read_is_classified_once_replayed(stack, kafka, capsys):
    """The results stage's side: a real prediction (the models' outputs for a real photo) sent again for another
    listing with a header key kafka-python cannot read is dead-lettered by the result service with its record batch;
    replayed to prediction-made without that header, the listing is classified from those outputs."""
    sample = sample_listings(1, seed=211, prefix="replayed-prediction")[0]
    predictions_reader = TopicReader(kafka, kafka.topics.prediction_made)
    failed_reader = TopicReader(kafka, kafka.topics.processing_failed)
    classified_reader = TopicReader(kafka, kafka.topics.listing_classified)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=0)
    try:
        submit_listings(kafka, [sample.listing])
        made = [r for r in predictions_reader.read(lambda rs: any(
            events_pb2.PredictionMade.FromString(r.value).listing_id == sample.listing.listing_id for r in rs), 90)
            if events_pb2.PredictionMade.FromString(r.value).listing_id == sample.listing.listing_id]
        assert made, "the listing was never predicted"
        prediction = events_pb2.PredictionMade.FromString(made[0].value)
        prediction.listing_id = sample.listing.listing_id + "-again"
        prediction.submission_id = prediction.submission_id + "-again"
        topic = kafka.topics.prediction_made
        sent = producer.send(topic, key=prediction.listing_id.encode(), value=prediction.SerializeToString(),
                             headers=[(PAYLOAD_TYPE_HEADER, prediction.DESCRIPTOR.full_name.encode()),
                                      (UndecodableHeaderKey("x"), b"1")]).get(30)
        letters = _dead_letter_of(failed_reader, topic, sent.partition, sent.offset)
        assert letters and letters[0].stage == "results" and letters[0].source_batch, letters
        source = f"{topic}/{sent.partition}/{sent.offset}"
        assert replay_dead_letters.main(["--source", source, "--idle-s", "2", "--replay"], settings=kafka) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert lines[0]["sent"] and lines[0]["headers_dropped"] == 1 and lines[-1]["sent"] == 1
        wanted = {sample.listing.listing_id, prediction.listing_id}
        classified = classified_by_listing(classified_reader.read(AllClassified(wanted), 90))
    finally:
        producer.close()
        predictions_reader.close()
        failed_reader.close()
        classified_reader.close()
    assert wanted <= set(classified), "the replayed prediction was never classified"
    again = classified[prediction.listing_id]
    first = classified[sample.listing.listing_id][0].classification
    assert len(again) == 1 and again[0].classification.submission_id == prediction.submission_id
    assert again[0].classification.category.id == first.category.id and again[0].classification.label == first.label
    assert again[0].classification.image_digest == first.image_digest
