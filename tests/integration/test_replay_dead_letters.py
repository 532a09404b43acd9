"""replay-dead-letters against the real stack: a listing event whose header key kafka-python cannot read is
dead-lettered with its record batch; the tool takes the event out of that batch, sends it again without the header
that stopped the client, and the listing is classified. Nothing of it was lost."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaProducer

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.kafka import PAYLOAD_TYPE_HEADER
from services.drivers.chaos.poison import UndecodableHeaderKey
from services.drivers.traffic import AllClassified, TopicReader, classified_by_listing, sample_listings, submitted_event
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
