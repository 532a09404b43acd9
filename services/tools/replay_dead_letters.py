"""replay-dead-letters: lists the dead letters an operator picks and, with --replay, sends their events again.

A listing dead-lettered for what has since been fixed (its image host was down past the retries, a parser refused a
producer's header, a bug fixed in a new release) is classified once its event is sent again. This reads the
processing-failed topic from its beginning (no consumer group; until no record has come for --idle-s) and picks the
dead letters named by --source TOPIC/PARTITION/OFFSET, --kind, --stage or --listing (each may repeat; different
flags must all match), or --all. For each source record once, what is sent again is the dead letter's original
payload or, for a record the Kafka client could not read, that record taken out of the record batch its dead letter
carries (services.common.record_batch: key, value and the headers whose keys are UTF-8), to the topic it came from,
which must be one the services consume (listing-submitted or prediction-made). Without --replay nothing is sent.

The event goes again as it was, its submission id and submission time with it, so a listing submitted anew since
keeps its newer classification (the result service stores the late one superseded). Sending one twice is harmless:
the result service stores and publishes a classification once per photo and model versions.

The broker is --bootstrap, else KAFKA_BOOTSTRAP_SERVERS, else the address `make up` wrote in .run/up/ (the other
KAFKA_ settings, TLS and SASL, from the environment as the services take them). One JSON line per dead letter
picked, then one JSON line of totals. Exits 0; 1 where the broker failed or, with --replay, something picked was not
sent; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.errors import ErrorKind
from services.common.kafka import MAX_REQUEST_BYTES, PAYLOAD_TYPE_HEADER
from services.common.kafka_unreadable import unreadable_at
from services.common.record_batch import RecordBatchError, record_at
from services.common.settings import KafkaSettings
from services.tools.caller_settings import default_setting

REASON_SHOWN = 300


@dataclass
class Resend:
    """What is sent again for one dead letter, or why nothing can be."""
    failure: events_pb2.ProcessingFailed
    topic: str = ""
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    why_not: str = ""
    headers_dropped: int = 0  # header keys that are not UTF-8: what kafka-python could not read
    sent: bool = False

    @property
    def source(self) -> str:
        return f"{self.failure.source_topic}/{self.failure.source_partition}/{self.failure.source_offset}"

    def line(self) -> dict:
        failure = self.failure
        line = {"source": self.source, "stage": failure.stage,
                "kind": ErrorKind.from_proto(failure.error_kind).name, "listing_id": failure.listing_id,
                "reason": failure.reason[:REASON_SHOWN], "replayable": not self.why_not}
        if self.why_not:
            line["why_not"] = self.why_not
        else:
            line.update(topic=self.topic, bytes=len(self.value or b""), sent=self.sent)
            if self.headers_dropped:
                line["headers_dropped"] = self.headers_dropped
        return line


def parse_source(text: str) -> tuple[str, int, int]:
    topic, _, rest = text.rpartition("/")
    topic, _, partition = topic.rpartition("/")
    try:
        place = (topic, int(partition), int(rest))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not TOPIC/PARTITION/OFFSET") from None
    if not topic or place[1] < 0 or place[2] < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: not TOPIC/PARTITION/OFFSET")
    return place


def error_kind(text: str) -> int:
    try:
        return ErrorKind[text.upper()].proto
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: not an error kind ({', '.join(kind.name for kind in ErrorKind)})") from None


@dataclass(frozen=True)
class Selection:
    sources: frozenset = frozenset()
    kinds: frozenset = frozenset()
    stages: frozenset = frozenset()
    listings: frozenset = frozenset()
    everything: bool = False

    def __bool__(self) -> bool:
        return self.everything or any((self.sources, self.kinds, self.stages, self.listings))

    def picks(self, failure: events_pb2.ProcessingFailed) -> bool:
        place = (failure.source_topic, failure.source_partition, failure.source_offset)
        return (not self.sources or place in self.sources) and (not self.kinds or failure.error_kind in self.kinds) \
            and (not self.stages or failure.stage in self.stages) \
            and (not self.listings or failure.listing_id in self.listings)


def picked(failures: Iterable[events_pb2.ProcessingFailed], selection: Selection) -> list[events_pb2.ProcessingFailed]:
    """The dead letters selection picks, one per source record (a record dead-lettered twice, by a worker that died
    before committing and the one after it, is sent again once): the first that carries something to send."""
    chosen: dict[tuple, events_pb2.ProcessingFailed] = {}
    for failure in failures:
        if not selection.picks(failure):
            continue
        place = (failure.source_topic, failure.source_partition, failure.source_offset)
        if place not in chosen or not _carries(chosen[place]) and _carries(failure):
            chosen[place] = failure
    return list(chosen.values())


def _carries(failure: events_pb2.ProcessingFailed) -> bool:
    return bool(failure.original_payload or failure.source_batch)


def resend_for(failure: events_pb2.ProcessingFailed, settings: KafkaSettings) -> Resend:
    """What sending failure's event again means (the pure part: nothing is sent here)."""
    payload_types = {settings.topics.listing_submitted: events_pb2.ListingSubmitted,
                     settings.topics.prediction_made: events_pb2.PredictionMade}
    resend = Resend(failure)
    if failure.source_topic not in payload_types:
        resend.why_not = f"it came from {failure.source_topic!r}, which no service consumes"
        return resend
    resend.topic = failure.source_topic
    if failure.original_payload:
        resend.key = failure.listing_id.encode() or None
        resend.value = failure.original_payload
        resend.headers = ((PAYLOAD_TYPE_HEADER, payload_types[failure.source_topic].DESCRIPTOR.full_name.encode()),)
        return resend
    if not failure.source_batch:
        resend.why_not = "it carries neither its payload nor its record batch (see its reason): read them at its source"
        return resend
    try:
        record = record_at(failure.source_batch, failure.source_offset)
    except RecordBatchError as error:
        resend.why_not = f"its record cannot be taken out of the batch it carries: {error}"
        return resend
    resend.key, resend.value = record.key, record.value
    headers = []
    for key, value in record.headers:
        try:
            headers.append((key.decode("utf-8"), value or b""))
        except UnicodeDecodeError:
            resend.headers_dropped += 1  # what kafka-python could not read: the record goes again without it
    resend.headers = tuple(headers)
    return resend


def read_dead_letters(settings: KafkaSettings, keep: Callable[[events_pb2.ProcessingFailed], bool], idle_s: float,
                      timeout_s: float) -> tuple[int, list, int]:
    """Reads the processing-failed topic from its beginning until no record has come for idle_s (this broker's end
    offsets are not to be trusted) or timeout_s passed: how many dead letters it read, those keep picks (only those
    are held: dead letters may carry 16 MiB each), and how many records there were not dead letters."""
    topic = settings.topics.processing_failed
    consumer = KafkaConsumer(**settings.client_options(), group_id=None, enable_auto_commit=False,
                             fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=MAX_REQUEST_BYTES,
                             bootstrap_timeout_ms=int(min(timeout_s, 30) * 1000))
    read, kept, unreadable = 0, [], 0
    try:
        deadline = time.monotonic() + timeout_s
        found_by = min(deadline, time.monotonic() + 10)
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < found_by:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise RuntimeError(f"the topic {topic} was not found on the broker")
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle_s:
            try:
                polled = consumer.poll(timeout_ms=200)
            except Exception as error:  # noqa: BLE001
                place = unreadable_at(error)
                if place is None:
                    raise
                unreadable += 1
                consumer.seek(place[0], place[1] + 1)
                continue
            for records in polled.values():
                quiet_since = time.monotonic()
                for record in records:
                    try:
                        failure = events_pb2.ProcessingFailed.FromString(record.value or b"")
                    except Exception:  # noqa: BLE001  (not a dead letter: protobuf's DecodeError)
                        unreadable += 1
                        continue
                    read += 1
                    if keep(failure):
                        kept.append(failure)
    finally:
        consumer.close()
    return read, kept, unreadable


def send_again(resends: list[Resend], settings: KafkaSettings, timeout_s: float) -> None:
    producer = KafkaProducer(**settings.client_options(), acks="all", linger_ms=5,
                             max_request_size=MAX_REQUEST_BYTES)
    try:
        futures = [(resend, producer.send(resend.topic, key=resend.key, value=resend.value,
                                          headers=list(resend.headers)))
                   for resend in resends if not resend.why_not]
        for resend, future in futures:
            try:
                future.get(timeout_s)
                resend.sent = True
            except Exception as error:  # noqa: BLE001  (the broker refused it, or did not answer)
                resend.why_not = f"the broker did not take it: {type(error).__name__}: {error}"
    finally:
        producer.close(timeout=timeout_s)


def main(argv: list[str] | None = None, settings: KafkaSettings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="replay-dead-letters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", type=parse_source, default=[], metavar="TOPIC/PARTITION/OFFSET")
    parser.add_argument("--kind", action="append", type=error_kind, default=[], help="e.g. SOURCE_UNREACHABLE")
    parser.add_argument("--stage", action="append", default=[], help="preprocessing or results")
    parser.add_argument("--listing", action="append", default=[], metavar="LISTING_ID")
    parser.add_argument("--all", action="store_true", help="every dead letter on the topic")
    parser.add_argument("--replay", action="store_true", help="send them again (without it, only list them)")
    parser.add_argument("--bootstrap", default=None, metavar="HOST:PORT[,...]")
    parser.add_argument("--idle-s", type=float, default=5.0, help="stop reading once none came for this long")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    options = parser.parse_args(argv)
    selection = Selection(frozenset(options.source), frozenset(options.kind), frozenset(options.stage),
                          frozenset(options.listing), options.all)
    if not selection:
        parser.error("say which dead letters: --source, --kind, --stage, --listing, or --all")
    if settings is None:
        bootstrap = options.bootstrap or default_setting("KAFKA_BOOTSTRAP_SERVERS", "kafka-bootstrap")
        if not bootstrap:
            parser.error("no broker: set KAFKA_BOOTSTRAP_SERVERS, pass --bootstrap, or start one with `make up`")
        settings = KafkaSettings(bootstrap_servers=bootstrap)
    try:
        read, kept, unreadable = read_dead_letters(settings, selection.picks, options.idle_s, options.timeout_s)
        resends = [resend_for(failure, settings) for failure in picked(kept, selection)]
        if options.replay:
            send_again(resends, settings, 30.0)
    except Exception as error:  # noqa: BLE001  (the broker away, refused: one line, not a traceback)
        print(f"replay-dead-letters: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    for resend in resends:
        print(json.dumps(resend.line(), ensure_ascii=False))
    replayable = [r for r in resends if not r.why_not]
    print(json.dumps({"dead_letters_read": read, "records_not_dead_letters": unreadable,
                      "picked": len(resends), "replayable": len(replayable),
                      "sent": sum(r.sent for r in resends), "replay": options.replay}))
    return 1 if options.replay and not all(r.sent for r in resends) else 0


if __name__ == "__main__":
    sys.exit(main())
