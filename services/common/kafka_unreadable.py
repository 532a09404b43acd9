"""Records kafka-python cannot read: raised on every poll with where they sit, not a poll that never returns.

kafka-python 3.0.12 reads a fetched partition's records through a generator. When its parser raises on a record (a
batch failing its checksum, a codec it has no library for, a header key that is not UTF-8 as a Go or C producer may
write), the generator is finished but the partition's fetched records stay in hand as if unread: the poll that
raised was the last to return, and the next one looped in the fetcher for ever, a core busy, the consume loop
stopped and health none the wiser (seen with a listing event whose header key was b"\\xff\\xfe").

`install()` wraps `PartitionRecords.take` so that when it raises, those records are let go: the next poll fetches
the partition again from its position and raises again, the same error on every poll until the caller moves past
the record (as the Java client does). The error carries where the record sits: `unreadable_at(error)`. It applies
only to the kafka-python release it was written against, and only where that release's method is still the one
wrapped (checked by its code); anything else is left as it is, with a warning. `services.common.kafka` installs it
in every process that makes a client with it.
"""

from __future__ import annotations

import logging

from kafka import TopicPartition

log = logging.getLogger(__name__)

WRITTEN_FOR = "3.0.12"
# The attribute set on the exception: (TopicPartition, offset of the record that could not be read).
PLACE_ATTRIBUTE = "unreadable_at"

_installed = False


def unreadable_at(error: BaseException) -> tuple[TopicPartition, int] | None:
    """Where the record sits whose reading raised error; None for any other error."""
    return getattr(error, PLACE_ATTRIBUTE, None)


def _wrapped(take):
    def take_or_let_go(self, n=None):
        try:
            return take(self, n)
        except Exception as error:
            if unreadable_at(error) is None:
                # The offset after the last record handed out: the one that failed (the first of its batch when the
                # whole batch failed).
                setattr(error, PLACE_ATTRIBUTE, (self.topic_partition, self.next_fetch_offset))
            self.drain()  # fetched again from the position on the next poll
            raise
    take_or_let_go.__wrapped__ = take
    return take_or_let_go


def install() -> bool:
    """Wraps `PartitionRecords.take` once; False (and a warning) where the installed kafka-python is not the release
    it was written against, or the method changed."""
    global _installed
    if _installed:
        return True
    import kafka.version
    from kafka.consumer.fetcher import Fetcher

    take = Fetcher.PartitionRecords.take
    code = getattr(take, "__code__", None)
    if kafka.version.__version__ != WRITTEN_FOR or code is None or not {
            "_maybe_raise_next_inline_exception", "record_iterator", "_next_inline_exception"} <= set(code.co_names):
        log.warning("kafka-python's handling of unreadable records left as it is: written for kafka-python %s, "
                    "this is %s", WRITTEN_FOR, kafka.version.__version__)
        return False
    Fetcher.PartitionRecords.take = _wrapped(take)
    _installed = True
    return True
