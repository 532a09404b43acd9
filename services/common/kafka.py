"""Kafka plumbing shared by the services: clients built from settings, topic creation, and the consume loop.

The consume loop holds the commit discipline: auto-commit off; a polled batch is handled, every output it sent is
acknowledged by the broker, and only then are the batch's offsets committed. A retryable failure rewinds the batch
and tries again after a backoff, so nothing is skipped; stop() lets the batch in hand finish and commit first. The
one record moved past is one the client cannot read at all, and only once its dead letter is acknowledged.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from services.common import kafka_decompression, kafka_receive, kafka_unreadable
from services.common.errors import ClassificationError, KafkaOutcome
from services.common.metrics import (KAFKA_ASSIGNED_PARTITIONS, KAFKA_BATCH_RETRIES, KAFKA_CONSUMED, KAFKA_CONSUMER_LAG,
                                     KAFKA_PRODUCED)
from services.common.settings import KafkaSettings
from services.common.tracing import inject_headers

log = logging.getLogger(__name__)

# Every client made in a process that imports this module reads what the broker sends with fewer copies, raises on
# every poll, with where it sits, for a record it cannot read (kafka_unreadable), and decompresses a batch no further
# than a bound (kafka_decompression; make_consumer sets it from the settings).
kafka_receive.install()
kafka_unreadable.install()
kafka_decompression.install()

PAYLOAD_TYPE_HEADER = "payload-type"
# The largest produce request the services send: the topics' max.message.bytes (docker-compose.yml).
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# The most of an original record a dead letter carries: what a produce request holds, less room for the rest of the
# dead letter (services.common.dead_letters clips its texts to fit).
MAX_DEAD_LETTER_PAYLOAD = MAX_REQUEST_BYTES - 64 * 1024


EVENT_ID_HEADER = "event-id"


def payload_headers(message) -> list[tuple[str, bytes]]:
    """Record headers naming the payload's protobuf type, e.g. product_classification.v1.ListingSubmitted."""
    return [(PAYLOAD_TYPE_HEADER, message.DESCRIPTOR.full_name.encode())]


def send_event(producer: KafkaProducer, topic: str, key: str, message, event_id: str = ""):
    """Sends a protobuf event keyed by listing id with its payload-type (and event-id) header; counts it once
    acknowledged."""
    headers = payload_headers(message) + ([(EVENT_ID_HEADER, event_id.encode())] if event_id else [])
    future = producer.send(topic, key=key.encode(), value=message.SerializeToString(),
                           headers=inject_headers(headers))
    future.add_callback(lambda metadata: KAFKA_PRODUCED.labels(metadata.topic).inc())
    return future


def create_topics(settings: KafkaSettings, partitions: int, replication_factor: int = 1) -> None:
    """Creates the platform's topics (existing ones are left as they are)."""
    admin = KafkaAdminClient(**settings.client_options(), client_id="product-classification-topic-setup")
    try:
        for name in settings.topics.model_dump().values():
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def make_producer(settings: KafkaSettings, client_id: str) -> KafkaProducer:
    # batch_size: a prediction carries its thumbnail (up to 64 KiB), so the default 16 KiB batch held one record and a
    # handled batch went out as one produce request per record, one at a time (max_in_flight 1 keeps the order).
    # A loop flushes after each handled batch, so linger_ms adds no latency there.
    # No compression: what the topics carry is JPEG. Measured on 32 real records, gzip level 1 saved 7% of a prediction
    # (mostly its thumbnail) for 0.22 CPU-ms each and 0.9% of a listing's photo for 0.91 CPU-ms; the CPU per listing is
    # what limits throughput, not the network.
    return KafkaProducer(**settings.client_options(), client_id=client_id, acks="all", linger_ms=5,
                         batch_size=1024 * 1024, retries=5, max_in_flight_requests_per_connection=1,
                         max_request_size=MAX_REQUEST_BYTES)


def make_consumer(settings: KafkaSettings, group_id: str, client_id: str, max_poll_records: int) -> KafkaConsumer:
    kafka_decompression.install(settings.max_decompressed_batch_bytes)
    return KafkaConsumer(
        **settings.client_options(),
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        # A new group starts from the beginning: nothing submitted before the first deploy is skipped.
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_records=max_poll_records,
        max_poll_interval_ms=300_000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )


@dataclass
class Backoff:
    """Exponential backoff with full jitter."""

    initial_s: float = 0.2
    maximum_s: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        self.attempt += 1
        return random.uniform(0, min(self.maximum_s, self.initial_s * 2 ** (self.attempt - 1)))

    def reset(self) -> None:
        self.attempt = 0


class _AssignmentTracker(ConsumerRebalanceListener):
    """Logs and exports which partitions this member holds. Revocation needs no draining here: batches are handled
    inside the poll loop, so by the time a rebalance runs (inside poll) the previous batch is already committed."""

    def __init__(self, loop_name: str, topics: Sequence[str]):
        self.loop_name = loop_name
        self.topics = topics
        self.assigned: set[TopicPartition] = set()

    def _export(self) -> None:
        for topic in self.topics:
            KAFKA_ASSIGNED_PARTITIONS.labels(topic).set(sum(1 for p in self.assigned if p.topic == topic))

    def on_partitions_revoked(self, revoked):
        self.assigned -= set(revoked)
        self._export()

    def on_partitions_assigned(self, assigned):
        self.assigned |= set(assigned)
        self._export()
        log.info("partitions assigned", extra={"loop": self.loop_name,
                                               "partitions": sorted(f"{p.topic}/{p.partition}" for p in assigned)})


class HandlerBug(RuntimeError):
    """A handler raised what no event can cause on its own (a bug): retrying would stall the partition for good."""


# Polls that raise, one after another, before health says NOT_SERVING: an error met again on every poll stops the
# loop consuming, and it must not go on saying SERVING. A record the client cannot read is not one of them where the
# loop can dead-letter it (on_unreadable): it is moved past. The broker being away (kafka-python's retriable errors)
# does not count: a service with no batch in hand keeps serving its API then.
UNHEALTHY_AFTER_FAILED_POLLS = 3


def _broker_away(error: Exception) -> bool:
    return bool(getattr(error, "retriable", False))


# How many batches one poll may take (the rest held for the batches after it): see ConsumeLoop._poll_batch.
POLL_AHEAD_BATCHES = 4
# How often an idle loop exports its lag (after each batch otherwise): new records show as lag within this long.
LAG_EXPORT_IDLE_S = 1.0


@dataclass(frozen=True)
class UnreadableRecord:
    """A record the Kafka client cannot read (kafka_unreadable), met in two fetches at the same place (once may be the
    transfer's fault: it is fetched again): dead-lettered with where it sits (its bytes stay in the broker's log for
    whoever can read them) before the loop moves past it."""
    topic: str
    partition: int
    offset: int
    reason: str
    # The bytes of the record batch holding it, as fetched, its first offset and its size (kafka_unreadable): all
    # there is of the record. batch_offset is -1 where the batch could not be found in the fetch; the bytes are left
    # out where they are over MAX_DEAD_LETTER_PAYLOAD, or where another dead letter of this loop carries them
    # (carried_by, that dead letter's offset).
    batch: bytes = b""
    batch_offset: int = -1
    batch_size: int = 0
    carried_by: int = -1


# Publishes the dead letter of an unreadable record; returns its send future.
UnreadableHandler = Callable[[UnreadableRecord], object]

# A batch handler gets the polled records and returns the futures of every record it produced.
BatchHandler = Callable[[Sequence], list]


class ConsumeLoop:
    """Polls a consumer group in its own thread and hands batches to a handler, with the commit discipline above."""

    def __init__(self, name: str, consumer: KafkaConsumer, topics: Sequence[str], handler: BatchHandler,
                 producer: KafkaProducer, send_timeout_s: float = 30.0, max_batch: int = 500,
                 batch_linger_s: float = 0.0, ack_patience_s: float = 2.0,
                 on_unreadable: UnreadableHandler | None = None):
        self.name = name
        # Dead-letters a record kafka-python cannot read, so the loop can move past it (_skip_if_unreadable); without
        # it such a record holds its partition, and health says NOT_SERVING.
        self.on_unreadable = on_unreadable
        # Per partition, the unreadable record met once (its offset) and the error it raised. Per partition, not the
        # last one met: kafka-python fetches partitions in turn, so two partitions holding one each raise in turn,
        # and a loop that remembered only the last would never meet either twice in a row (seen in `make chaos`).
        self._unreadable_met: dict[TopicPartition, tuple[int, BaseException]] = {}
        # Per partition, the first offset of the last batch an unreadable record's dead letter carried, and that
        # record's offset: a batch failing its checksum is skipped a record at a time, and carried by the first's only.
        self._batch_carried: dict[TopicPartition, tuple[int, int]] = {}
        # A batch whose sends and commit the broker has not acknowledged within this long makes health NOT_SERVING
        # while the loop goes on waiting (up to send_timeout_s, then the batch is retried).
        self.ack_patience_s = ack_patience_s
        self.max_batch = max_batch
        # How long to keep polling for more records once some arrived, so downstream calls get full batches.
        self.batch_linger_s = batch_linger_s
        self.consumer = consumer
        self.topics = list(topics)
        self.handler = handler
        self.producer = producer
        self.send_timeout_s = send_timeout_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.healthy = threading.Event()  # set while batches are being handled without retryable failures
        self.batches_handled = 0
        # Set when the loop died of an error it cannot handle: the process must exit so it is restarted.
        self.fatal = threading.Event()
        self.fatal_reason = ""
        self._ahead: list = []  # polled and not yet handled, in the order polled (_poll_batch)
        self._lag_exported_at = 0.0

    def start(self) -> None:
        self.consumer.subscribe(self.topics, listener=_AssignmentTracker(self.name, self.topics))
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-consume-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finishes the batch in hand (handled, acknowledged, committed), then leaves the group."""
        self._stopping.set()
        if self._thread:
            self._thread.join(timeout_s)
        try:
            self.consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001
            log.exception("closing the consumer failed")

    def _run(self) -> None:
        backoff = Backoff()
        self.healthy.set()
        failed_polls = 0
        while not self._stopping.is_set():
            try:
                records = self._poll_batch()
            except Exception as error:  # noqa: BLE001  (broker unreachable: kafka-python reconnects by itself)
                log.exception("poll failed", extra={"loop": self.name})
                if self._skip_if_unreadable(error):
                    continue  # met once (fetched again at once), or dead-lettered and moved past
                if not _broker_away(error):
                    failed_polls += 1
                if failed_polls >= UNHEALTHY_AFTER_FAILED_POLLS:  # its partitions cannot be read: say so
                    self.healthy.clear()
                self._stopping.wait(backoff.next_delay())
                continue
            if failed_polls:
                failed_polls = 0
                backoff.reset()
                self.healthy.set()
            if not records:
                self._export_lag(every_s=LAG_EXPORT_IDLE_S)
                continue
            for record in records:
                KAFKA_CONSUMED.labels(record.topic).inc()
            try:
                self._handle_until_done(records, backoff)
            except Exception as error:  # noqa: BLE001  (a bug: every event's own fault is dead-lettered by handlers)
                # Nothing was committed: the batch is redone by whoever holds its partitions next. Staying up would
                # hold the partitions while never consuming again; exiting lets the orchestrator restart us.
                self.fatal_reason = f"{type(error).__name__}: {error}"
                log.critical("the consume loop cannot go on; the process exits so it is restarted",
                             extra={"loop": self.name, "reason": self.fatal_reason}, exc_info=True)
                self.healthy.clear()
                self.fatal.set()
                return
            self._export_lag()
        self.healthy.clear()

    def _export_lag(self, every_s: float = 0.0) -> None:
        """Exports, per topic, the records of the partitions this member holds that it has not handled yet: each
        partition's high watermark as its last fetch reported it, less the first record held for it (polled ahead)
        or else its position. Read from what the client already knows, no request to the broker; a partition whose
        watermark or position is not known yet (no fetch answered since it was assigned) is left out. While fetching
        is paused (a batch being retried), the watermarks are those of the last fetch."""
        now = time.monotonic()
        if now - self._lag_exported_at < every_s:
            return
        self._lag_exported_at = now
        next_held: dict[TopicPartition, int] = {}
        for record in self._ahead:
            partition = TopicPartition(record.topic, record.partition)
            next_held[partition] = min(next_held.get(partition, record.offset), record.offset)
        lag = dict.fromkeys(self.topics, 0)
        try:
            assigned = self.consumer.assignment()
        except Exception:  # noqa: BLE001
            return
        for partition in assigned:
            try:
                highwater = self.consumer.highwater(partition)
                position = next_held.get(partition)
                if position is None:
                    position = self.consumer.position(partition, timeout_ms=0)
            except Exception:  # noqa: BLE001  (not known yet, or revoked meanwhile)
                continue
            if highwater is not None and position is not None:
                lag[partition.topic] = lag.get(partition.topic, 0) + max(0, highwater - position)
        for topic, records in lag.items():
            KAFKA_CONSUMER_LAG.labels(topic).set(records)

    def _handle_until_done(self, records: list, backoff: Backoff) -> None:
        """Handles the batch; on a retryable failure pauses fetching and retries with backoff until it succeeds,
        the loop stops (the batch stays uncommitted for whoever owns its partitions next), or its partitions are
        revoked in a rebalance (their new owner redoes them)."""
        paused = False
        try:
            while True:
                try:
                    self._handle(records)
                    backoff.reset()
                    self.healthy.set()
                    return
                except HandlerBug:
                    raise
                except ClassificationError as error:
                    if error.kind.kafka_outcome is KafkaOutcome.DEAD_LETTER:  # a handler dead-letters these itself
                        raise
                    reason = error.reason
                except Exception as error:  # noqa: BLE001  (unacknowledged sends, commit failures: retry)
                    reason = repr(error)
                self.healthy.clear()  # health says NOT_SERVING until the dependency answers again
                KAFKA_BATCH_RETRIES.labels(self.name).inc()
                delay = backoff.next_delay()
                log.warning("batch failed, fetching paused, will retry",
                            extra={"loop": self.name, "reason": reason, "retry_in_s": round(delay, 2)})
                paused = True
                records = self._wait_paused(records, delay)
                if self._stopping.is_set() or not records:
                    self._rewind(records)
                    return
        finally:
            if paused:
                self.consumer.resume(*self.consumer.assignment())

    def _wait_paused(self, records: list, delay_s: float) -> list:
        """Keeps polling (so the group keeps this member) with every partition paused; returns the records whose
        partitions this member still holds."""
        deadline = time.monotonic() + delay_s
        while not self._stopping.is_set():
            wait_ms = max(1, min(500, int((deadline - time.monotonic()) * 1000)))
            try:
                self.consumer.pause(*self.consumer.assignment())  # again after a rebalance: new partitions too
                leaked = self.consumer.poll(timeout_ms=wait_ms)
            except Exception as error:  # noqa: BLE001  (the broker unreachable as well: the client reconnects)
                log.warning("poll failed while paused", extra={"loop": self.name, "reason": repr(error)})
                self._stopping.wait(wait_ms / 1000)
                leaked = {}
            self._rewind([r for batch in leaked.values() for r in batch])  # fetched before the pause took hold
            if time.monotonic() >= deadline:
                break
        assigned = self.consumer.assignment()
        return [r for r in records if TopicPartition(r.topic, r.partition) in assigned]

    def _poll_batch(self) -> list:
        """Up to max_batch records: those polled ahead first, then what polls return, topped up for at most
        batch_linger_s. A poll takes up to POLL_AHEAD_BATCHES batches, so it usually takes every record kafka-python
        holds: kafka-python sends its next fetch only once it has handed out all it holds, and the broker's answer
        then arrives while this batch is handled rather than after it. What is beyond the batch is held for the next
        one, uncommitted until it is handled. Held records of partitions this member no longer holds are dropped
        (their new owner starts from the last commit); kafka-python keeps the position of a partition a rebalance
        leaves here, so the records held for it are not fetched again and stay."""
        if self._ahead:
            assigned = self.consumer.assignment()
            self._ahead = [r for r in self._ahead if TopicPartition(r.topic, r.partition) in assigned]
        # Polled into the held list itself: a poll that fails leaves what earlier polls returned held, not lost
        # behind a position kafka-python has moved past them.
        records = self._ahead
        try:
            if len(records) < self.max_batch:
                records.extend(self._poll(0 if records else 200))
            deadline = time.monotonic() + self.batch_linger_s
            while records and len(records) < self.max_batch and time.monotonic() < deadline:
                records.extend(self._poll(max(1, int((deadline - time.monotonic()) * 1000))))
        except Exception as error:  # noqa: BLE001
            if not records:
                raise
            # The records in hand are handled, not held back behind a record that cannot be read (those of its
            # partition are all before it); a failure met again on the next poll is dealt with then.
            log.warning("poll failed; handling the records in hand first", extra={"loop": self.name}, exc_info=True)
            self._skip_if_unreadable(error)
        self._ahead = records[self.max_batch:]
        return records[:self.max_batch]

    def _skip_if_unreadable(self, error: Exception) -> bool:
        """Whether a poll's error was a record the client cannot read (kafka_unreadable): the first time at a place it
        is only noted (the next poll fetches it again); the next time its partition raises there it is dead-lettered
        and, once the broker acknowledged that, the partition's position moves past it. Not skipped unless
        dead-lettered."""
        place = kafka_unreadable.unreadable_at(error)
        if place is None or self.on_unreadable is None:
            return False
        partition, offset = place
        met = self._unreadable_met.get(partition)
        if met is None or met[0] != offset or met[1] is error:  # the same error raised again is not a second fetch
            assigned = self.consumer.assignment()  # a partition a rebalance took away is forgotten
            self._unreadable_met = {p: m for p, m in self._unreadable_met.items() if p in assigned}
            self._unreadable_met[partition] = (offset, error)
            return True
        del self._unreadable_met[partition]
        if partition not in self.consumer.assignment() or self.consumer.position(partition) != offset:
            return True  # moved on meanwhile (a rebalance, a rewind): whoever reads it next meets it again
        record = UnreadableRecord(partition.topic, partition.partition, offset,
                                  f"unreadable record: {type(error).__name__}: {error}"[:500])
        batch = kafka_unreadable.unreadable_batch(error)
        if batch is not None:
            first, data = batch
            carried = self._batch_carried.get(partition)
            record = replace(record, batch_offset=first, batch_size=len(data))
            if carried is not None and carried[0] == first:
                record = replace(record, carried_by=carried[1])
            elif len(data) <= MAX_DEAD_LETTER_PAYLOAD:
                record = replace(record, batch=data)
        try:
            self.on_unreadable(record).get(timeout=self.send_timeout_s)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001  (not acknowledged: not skipped; met again on the next poll)
            log.exception("dead-lettering an unreadable record failed", extra={"loop": self.name})
            return False
        if record.batch:
            self._batch_carried[partition] = (record.batch_offset, offset)
        log.error("unreadable record dead-lettered and skipped",
                  extra={"loop": self.name, "source": f"{record.topic}/{record.partition}/{record.offset}",
                         "reason": record.reason})
        self.consumer.seek(partition, offset + 1)
        if not any(r.topic == partition.topic and r.partition == partition.partition for r in self._ahead):
            # Nothing of the partition in hand: the skip is committed now, not met (and dead-lettered) again after a
            # restart when no later record of the partition is handled first.
            try:
                self.consumer.commit({partition: OffsetAndMetadata(offset + 1, "", -1)})
            except Exception:  # noqa: BLE001  (committed with the partition's next batch instead)
                log.warning("committing past an unreadable record failed", extra={"loop": self.name}, exc_info=True)
        return True

    def _poll(self, timeout_ms: int) -> list:
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_batch * POLL_AHEAD_BATCHES)
        return [record for batch in polled.values() for record in batch]

    def _handle(self, records: Sequence) -> None:
        try:
            futures = self.handler(records)
        except (ClassificationError, KafkaError):
            raise  # the handler's own verdict (retry or not), or the broker failing a send: retried
        except Exception as error:  # noqa: BLE001
            raise HandlerBug(f"the {self.name} handler failed: {type(error).__name__}: {error}") from error
        stalled = threading.Timer(self.ack_patience_s, self._broker_stalled)
        stalled.daemon = True
        stalled.start()
        try:
            self.producer.flush(self.send_timeout_s)
            for future in futures:
                future.get(timeout=self.send_timeout_s)  # raises if the broker did not acknowledge
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for record in records:
                partition = TopicPartition(record.topic, record.partition)
                if partition not in offsets or offsets[partition].offset <= record.offset:
                    offsets[partition] = OffsetAndMetadata(record.offset + 1, "", -1)
            self.consumer.commit(offsets)
        finally:
            stalled.cancel()
        self.batches_handled += 1

    def _broker_stalled(self) -> None:
        """The broker has not acknowledged the batch in hand within ack_patience_s: NOT_SERVING until it does."""
        self.healthy.clear()
        log.warning("the broker has not acknowledged the batch in hand; not serving until it does",
                    extra={"loop": self.name, "waited_s": self.ack_patience_s})

    def _rewind(self, records: Sequence) -> None:
        first: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            first[partition] = min(first.get(partition, record.offset), record.offset)
        for partition, offset in first.items():
            try:
                self.consumer.seek(partition, offset)
            except Exception:  # noqa: BLE001  (partition revoked meanwhile)
                pass
        # Records held ahead from where a partition now starts again will be fetched again: held twice otherwise.
        self._ahead = [r for r in self._ahead if r.offset < first.get(TopicPartition(r.topic, r.partition), r.offset + 1)]
