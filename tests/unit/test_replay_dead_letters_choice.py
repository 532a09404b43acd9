"""What replay-dead-letters picks and what it would send, without a broker (the integration test sends for real)."""

from __future__ import annotations

import argparse

import pytest
from kafka.record import MemoryRecordsBuilder

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.settings import KafkaSettings
from services.drivers.chaos.poison import UndecodableHeaderKey
from services.tools.replay_dead_letters import Selection, main, parse_source, picked, resend_for

SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:1")
SUBMITTED = SETTINGS.topics.listing_submitted


def failure(offset: int = 7, payload: bytes = b"", batch: bytes = b"", topic: str = SUBMITTED, listing: str = "l-1",
            kind: int = common_pb2.ERROR_KIND_INVALID_IMAGE, stage: str = "preprocessing"):
    return events_pb2.ProcessingFailed(listing_id=listing, error_kind=kind, stage=stage, source_topic=topic,
                                       source_partition=2, source_offset=offset, original_payload=payload,
                                       source_batch=batch, source_batch_offset=offset if batch else 0,
                                       reason="the image cannot be decoded")


def batch_at(offset: int, value: bytes) -> bytes:
    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20, offset=0)
    builder.append(timestamp=None, key=b"l-9", value=value,
                   headers=[("payload-type", b"product_classification.v1.ListingSubmitted"),
                            (UndecodableHeaderKey("x"), b"1")])
    builder.close()
    data = bytearray(builder.buffer())
    data[:8] = offset.to_bytes(8, "big")
    return bytes(data)


def test_sources_and_kinds_are_read_or_refused_by_name():
    assert parse_source(f"{SUBMITTED}/2/7") == (SUBMITTED, 2, 7)
    for text in ("x", "t/1", "t/a/1", "/1/2", "t/-1/2", "t/1/-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_source(text)


def test_picks_each_source_record_once_preferring_the_dead_letter_that_carries_it():
    bare, carrying = failure(7), failure(7, payload=b"event")
    other_kind = failure(8, kind=common_pb2.ERROR_KIND_SOURCE_UNREACHABLE)
    selection = Selection(kinds=frozenset({common_pb2.ERROR_KIND_INVALID_IMAGE}))
    assert picked([bare, carrying, other_kind], selection) == [carrying]
    assert picked([carrying, bare], Selection(everything=True)) == [carrying]
    assert picked([bare, other_kind], Selection(sources=frozenset({(SUBMITTED, 2, 8)}))) == [other_kind]
    # different flags must all match
    assert picked([bare, other_kind], Selection(listings=frozenset({"l-1"}), stages=frozenset({"results"}))) == []
    assert not Selection()


def test_what_is_sent_again():
    from_payload = resend_for(failure(payload=b"event"), SETTINGS)
    assert (from_payload.topic, from_payload.key, from_payload.value, from_payload.why_not) == (
        SUBMITTED, b"l-1", b"event", "")
    assert from_payload.headers == (("payload-type", b"product_classification.v1.ListingSubmitted"),)
    from_batch = resend_for(failure(7, batch=batch_at(7, b"the event")), SETTINGS)
    assert (from_batch.key, from_batch.value, from_batch.headers_dropped) == (b"l-9", b"the event", 1)
    assert from_batch.headers == (("payload-type", b"product_classification.v1.ListingSubmitted"),)


@pytest.mark.parametrize("dead_letter, says", [
    (failure(topic=SETTINGS.topics.listing_corrected, payload=b"x"), "which no service consumes"),
    (failure(), "carries neither its payload nor its record batch"),
    (failure(7, batch=batch_at(7, b"v")[:-3]), "cannot be taken out of the batch"),
    (failure(9, batch=batch_at(7, b"v")), "offset 9 is not in the batch"),
])
def test_what_cannot_be_sent_again_says_why(dead_letter, says):
    resend = resend_for(dead_letter, SETTINGS)
    assert says in resend.why_not and resend.line()["replayable"] is False


def test_nothing_picked_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main([], settings=SETTINGS)
    assert exited.value.code == 2 and "say which dead letters" in capsys.readouterr().err


def test_a_broker_that_is_not_there_is_one_line_and_exit_1(capsys):
    assert main(["--all", "--timeout-s", "3"], settings=KafkaSettings(bootstrap_servers="127.0.0.1:9")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("replay-dead-letters: ")
