"""Records kafka-python cannot read: raised on every poll with where they sit, not a poll that never returns.

kafka-python 3.0.12 reads a fetched partition's records through a generator. When its parser raises on a record (a
batch failing its checksum, a codec it has no library for, a header key that is not UTF-8 as a Go or C producer may
write), the generator is finished but the partition's fetched records stay in hand as if unread: the poll that
raised was the last to return, and the next one looped in the fetcher for ever, a core busy, the consume loop
stopped and health none the wiser (seen with a listing event whose header key was b"\\xff\\xfe").

`install()` wraps `PartitionRecords.take` so that when it raises, those records are let go: the next poll fetches
the partition again from its position and raises again, the same error on every poll until the caller moves past
the record (as the Java client does). The error carries where the record sits: `unreadable_at(error)`, and the bytes
of the record batch holding it as the broker sent them: `unreadable_batch(error)`. Nothing of such a record can be
read, so those bytes are all of it there is: a dead letter keeps them past the topic's retention, for whoever can
read them (another client, a fixed parser). It applies only to the kafka-python release it was written against, and
only where that release's methods are still the ones wrapped (checked by their code); anything else is left as it
is, with a warning. `services.common.kafka` installs it in every process that makes a client with it.
"""

from __future__ import annotations

import logging
import struct

from kafka import TopicPartition

log = logging.getLogger(__name__)

WRITTEN_FOR = "3.0.12"
# The attribute set on the exception: (TopicPartition, offset of the record that could not be read).
PLACE_ATTRIBUTE = "unreadable_at"
# The attribute set on the exception: (the first offset of the batch holding that record, the batch's bytes).
BATCH_ATTRIBUTE = "unreadable_batch"
# Where a PartitionRecords keeps the bytes of its fetch until they are all read (the reader holds them till then too).
_FETCHED_BYTES = "_fetched_bytes"

# Every version of Kafka's log format starts a batch (v2) or message (v0, v1) with its offset and length; a v2 batch
# states at byte 16 its magic and at byte 23 its last record's offset less its first.
_OFFSET_AND_LENGTH = struct.Struct(">qi")
_MAGIC_AT, _LAST_OFFSET_DELTA_AT = 16, 23

_installed = False


def unreadable_at(error: BaseException) -> tuple[TopicPartition, int] | None:
    """Where the record sits whose reading raised error; None for any other error."""
    return getattr(error, PLACE_ATTRIBUTE, None)


def unreadable_batch(error: BaseException) -> tuple[int, bytes] | None:
    """The first offset and the bytes of the record batch holding the record whose reading raised error, as fetched;
    None for any other error, or where they could not be found in the fetch."""
    return getattr(error, BATCH_ATTRIBUTE, None)


def batch_holding(fetched, offset: int) -> tuple[int, bytes] | None:
    """In a fetch's bytes, the first batch (or legacy message) whose last offset is offset or later: the one holding
    the record at offset, or the next after it where that record was compacted away. Read from the frame every
    format shares, never from what the batch says inside (it may be what is broken). None where no whole batch
    reaches offset."""
    view, position = memoryview(fetched), 0
    while position + _OFFSET_AND_LENGTH.size <= len(view):
        first, length = _OFFSET_AND_LENGTH.unpack_from(view, position)
        end = position + _OFFSET_AND_LENGTH.size + length
        if length < 0 or end > len(view):
            return None  # a partial batch closes a fetch: the broker sends whole batches only up to its limit
        last = first
        if length >= _LAST_OFFSET_DELTA_AT + 4 - _OFFSET_AND_LENGTH.size and view[position + _MAGIC_AT] == 2:
            last = first + struct.unpack_from(">i", view, position + _LAST_OFFSET_DELTA_AT)[0]
        # A legacy wrapper message's offset is its last inner record's.
        if last >= offset:
            return first, bytes(view[position:end])
        position = end
    return None


def _wrapped_init(init):
    def init_keeping_bytes(self, fetch_offset, tp, records, *args, **kwargs):
        init(self, fetch_offset, tp, records, *args, **kwargs)
        setattr(self, _FETCHED_BYTES, getattr(records, "_buffer", None))
    init_keeping_bytes.__wrapped__ = init
    return init_keeping_bytes


def _wrapped_drain(drain):
    def drain_and_let_go(self):
        drain(self)
        setattr(self, _FETCHED_BYTES, None)  # whoever drains it (its reader at the end, a seek, a pause, take below)
    drain_and_let_go.__wrapped__ = drain
    return drain_and_let_go


def _wrapped_take(take):
    def take_or_let_go(self, n=None):
        try:
            return take(self, n)
        except Exception as error:
            if unreadable_at(error) is None:
                # The offset after the last record handed out: the one that failed (the first of its batch when the
                # whole batch failed).
                setattr(error, PLACE_ATTRIBUTE, (self.topic_partition, self.next_fetch_offset))
                fetched = getattr(self, _FETCHED_BYTES, None)
                batch = batch_holding(fetched, self.next_fetch_offset) if fetched is not None else None
                if batch is not None:
                    setattr(error, BATCH_ATTRIBUTE, batch)
            self.drain()  # fetched again from the position on the next poll
            raise
    take_or_let_go.__wrapped__ = take
    return take_or_let_go


def install() -> bool:
    """Wraps `PartitionRecords`' `take` (and `__init__` and `drain`, which keep and let go the fetch's bytes) once;
    False (and a warning) where the installed kafka-python is not the release it was written against, or the methods
    changed."""
    global _installed
    if _installed:
        return True
    import kafka.version
    from kafka.consumer.fetcher import Fetcher
    from kafka.record import MemoryRecords

    records = Fetcher.PartitionRecords
    take, init, drain = records.take, records.__init__, records.drain
    take_code, init_code, drain_code = (getattr(f, "__code__", None) for f in (take, init, drain))
    if kafka.version.__version__ != WRITTEN_FOR or None in (take_code, init_code, drain_code) or not {
            "_maybe_raise_next_inline_exception", "record_iterator", "_next_inline_exception"} <= set(
            take_code.co_names) or init_code.co_varnames[1:4] != ("fetch_offset", "tp", "records") or (
            drain_code.co_argcount != 1 or "_buffer" not in MemoryRecords.__slots__):
        log.warning("kafka-python's handling of unreadable records left as it is: written for kafka-python %s, "
                    "this is %s", WRITTEN_FOR, kafka.version.__version__)
        return False
    records.__init__, records.take, records.drain = _wrapped_init(init), _wrapped_take(take), _wrapped_drain(drain)
    _installed = True
    return True
