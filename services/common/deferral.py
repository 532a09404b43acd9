"""Deferring an event: one a worker found no room for now goes to the back of its own topic, counted in a header.

A preprocessing batch holds up to 32 listings, and its photos share the worker's decoding threads and decoding memory
(services/preprocessing/decode_memory.py) until the batch's deadline. A batch of photos that are each fine but large
(49-megapixel WebPs decode one at a time within the default budget, two seconds each) cannot all be decoded by then:
those still waiting used to fail as INVALID_IMAGE and were dead-lettered, a seller's good photo refused as bad.
Retrying the whole batch would redo the photos already decoded and meet the same wait again, for ever. So each such
listing (ErrorKind.OVERLOADED, KafkaOutcome.DEFER) is sent again, the same key, payload and headers, to the end of
its partition, with `deferrals` one more, and the batch is committed once the broker acknowledged the copy: it comes
back after what was queued behind it, at the head of a later batch. After the most deferrals (a count a producer
may also set, or set wrongly) it is dead-lettered as OVERLOADED, replayable (`replay-dead-letters --kind OVERLOADED`).

A listing's events are ordered by their submission time, not their offsets (the result store keeps a late, older
submission superseded, never published), so a deferred event overtaken by a newer edit of its listing stays the older
one: the copy keeps the time it was submitted (its own submitted_at, else the original record's timestamp).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.metrics import KAFKA_DEFERRED

DEFERRALS_HEADER = "deferrals"


def deferrals(headers: Sequence | None) -> int:
    """How many times the record was deferred before: its last `deferrals` header, 0 without one or where it is not
    a count (a producer's header is anyone's)."""
    count = 0
    for key, value in headers or ():
        if key == DEFERRALS_HEADER:
            try:
                count = max(0, int(bytes(value or b"").decode("ascii")))
            except (ValueError, UnicodeDecodeError):
                count = 0
    return count


def copy_bytes(record, value: bytes | None = None) -> int:
    """About what the record's deferred copy takes in a produce request: its key, payload and headers. A copy over
    MAX_DEAD_LETTER_PAYLOAD (services.common.kafka) is not sent: the producer could refuse it for good (a record
    at the topic's limit, one header more), and the batch would be retried for ever."""
    headers = sum(len(key.encode(errors="replace")) + len(header or b"") for key, header in (record.headers or ()))
    return len(record.key or b"") + len(record.value if value is None else value) + headers + 64


def defer(producer, record, stage: str, value: bytes | None = None):
    """Sends the record again to the end of its topic (by its key, so to its listing's partition), `deferrals` one
    more, its other headers (trace context among them) and its timestamp kept; `value` replaces its payload where
    given. Returns the send future: the caller commits past the record only once it is acknowledged."""
    headers = [(key, bytes(header or b"")) for key, header in (record.headers or ()) if key != DEFERRALS_HEADER]
    headers.append((DEFERRALS_HEADER, str(deferrals(record.headers) + 1).encode()))
    timestamp = getattr(record, "timestamp", None)
    future = producer.send(record.topic, key=record.key, value=record.value if value is None else value,
                           headers=headers, timestamp_ms=timestamp if isinstance(timestamp, int) and timestamp >= 0
                           else None)
    future.add_callback(lambda metadata: KAFKA_DEFERRED.labels(stage).inc())
    return future
