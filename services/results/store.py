"""The result store: classifications keyed for idempotency, on SQLite (embedded default) or PostgreSQL.

A row's idempotency key is listing id + image digest + model versions, so a redelivered prediction finds its row and
changes nothing, nor does an edit that left the photo as it was. A listing that goes back to a photo it had before
(a seller undoing an edit) gets a row of its own again, after the one it replaces, so its latest row is its current
photo's (see record_many); an earlier submission recorded after a newer one of its listing is stored superseded,
never the listing's latest and never published (_keys_in_order). `published` records whether the listing-classified
event was acknowledged by the broker, so a crash between storing and publishing is repaired by the redelivery
instead of being lost or published twice.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind

log = logging.getLogger(__name__)

# The name a schema statement creates, where it creates one only if missing.
_CREATED = re.compile(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)")
# The PostgreSQL advisory lock starting replicas take in turn while they create what is missing.
SCHEMA_LOCK_KEY = 0x70636C73  # "pcls"
# The one a replica holds while it builds the indexes a new release added (in the background, after its start).
INDEX_LOCK_KEY = 0x70636C69  # "pcli"
ADVISORY_LOCK_PAUSE_S = 0.2
# Each index of the schema and whether PostgreSQL uses it (false: a concurrent build stopped midway, or under way).
_INDEXES_VALID = ("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                  "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()")
# The table an index statement indexes.
_INDEXED_TABLE = re.compile(r"CREATE INDEX IF NOT EXISTS \w+ ON (\w+)")
# A column added by a new release: how long each try waits for the table, and the pause between tries.
COLUMN_LOCK_WAIT_MS = 200
COLUMN_LOCK_PAUSE_S = 0.5
FAILED_STATUS = int(common_pb2.CLASSIFICATION_STATUS_FAILED)


@dataclass(frozen=True)
class StoredClassification:
    classification: common_pb2.Classification  # sequence filled in
    newly_stored: bool
    published: bool
    key: str = ""  # the row's idempotency key (its event id is made from it)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS classifications (
    sequence {id_type},
    idempotency_key TEXT NOT NULL UNIQUE,
    listing_id TEXT NOT NULL,
    marketplace TEXT NOT NULL,
    status INTEGER NOT NULL,
    payload {blob_type} NOT NULL,
    published BOOLEAN NOT NULL DEFAULT FALSE,
    stored_at DOUBLE PRECISION NOT NULL,
    claimed_by TEXT,
    claimed_until DOUBLE PRECISION,
    confidence DOUBLE PRECISION,
    label TEXT,
    category_id TEXT,
    superseded BOOLEAN NOT NULL DEFAULT FALSE,
    error_kind INTEGER
);
CREATE INDEX IF NOT EXISTS classifications_listing ON classifications (listing_id, sequence);
CREATE INDEX IF NOT EXISTS classifications_marketplace ON classifications (marketplace, sequence);
CREATE INDEX IF NOT EXISTS classifications_stored_at ON classifications (stored_at);
CREATE INDEX IF NOT EXISTS classifications_failed ON classifications (sequence) WHERE status = {failed};
CREATE TABLE IF NOT EXISTS thumbnails (
    image_digest TEXT PRIMARY KEY,
    jpeg {blob_type} NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS corrections (
    sequence {id_type},
    correction_id TEXT NOT NULL UNIQUE,
    listing_id TEXT NOT NULL,
    marketplace TEXT NOT NULL,
    classification_sequence BIGINT NOT NULL,
    model_label TEXT NOT NULL,
    category_id TEXT NOT NULL,
    model_was_right BOOLEAN NOT NULL,
    operator TEXT NOT NULL,
    payload {blob_type} NOT NULL,
    corrected_at DOUBLE PRECISION NOT NULL,
    published BOOLEAN NOT NULL DEFAULT FALSE,
    claimed_by TEXT,
    claimed_until DOUBLE PRECISION,
    carried_from BIGINT
);
CREATE INDEX IF NOT EXISTS corrections_classification ON corrections (classification_sequence, sequence);
CREATE INDEX IF NOT EXISTS corrections_listing ON corrections (listing_id, sequence);
CREATE INDEX IF NOT EXISTS corrections_unpublished ON corrections (published, sequence)
"""


def _is_the_data(error: BaseException) -> bool:
    """A store error caused by the row itself (bad text, a value too long, a violated check), not an outage."""
    if isinstance(error, (ValueError, UnicodeError)):
        return True  # e.g. psycopg refuses a NUL byte in text before sending anything
    try:
        import psycopg

        return isinstance(error, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)) and \
            not isinstance(error, psycopg.errors.UndefinedTable)
    except ImportError:  # pragma: no cover  (SQLite-only install)
        return False


def short_category_id(category_id: str) -> str:
    """'gid://shopify/TaxonomyCategory/aa-1-4' -> 'aa-1-4' (what the store indexes)."""
    return category_id.rsplit("/", 1)[-1]


def idempotency_key(classification: common_pb2.Classification) -> str:
    if classification.status == common_pb2.CLASSIFICATION_STATUS_FAILED:
        return f"{classification.listing_id}|failed|{classification.submission_id}"
    return f"{classification.listing_id}|{classification.image_digest}|{classification.model_versions}"


# A photo a listing had before, back after another: its row's key is the photo's key, this, and the sequence of the
# row it comes after.
PHOTO_BACK_SEPARATOR = "|after:"


def _superseded(classification: common_pb2.Classification) -> common_pb2.Classification:
    copy = common_pb2.Classification()
    copy.CopyFrom(classification)
    copy.superseded = True
    return copy


def _rounds(classifications: list[common_pb2.Classification]) -> list[list[int]]:
    """The batch's positions in rounds where each listing appears once: its first event in the first round, its
    second in the second, and so on (nearly every batch is one round)."""
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for index, classification in enumerate(classifications):
        round_of = seen.get(classification.listing_id, 0)
        seen[classification.listing_id] = round_of + 1
        if round_of == len(rounds):
            rounds.append([])
        rounds[round_of].append(index)
    return rounds


class ClassificationStore:
    """Thread-safe access to the classifications table through one connection (SQLite file or PostgreSQL DSN)."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self._lock = threading.RLock()  # reconnecting creates the schema inside a transaction
        self._connection = None
        self._postgres = database_url.startswith(("postgresql://", "postgres://"))
        self._placeholder = "%s" if self._postgres else "?"
        self._started = False
        self._index_builder: threading.Thread | None = None  # builds what a new release added (_build_indexes)
        self._index_connection = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._started = True
        self._stopping.clear()
        self._connect()

    def _connect(self) -> None:
        if self._postgres:
            import psycopg

            self._connection = psycopg.connect(self.database_url, autocommit=False, connect_timeout=5)
            statements = _SCHEMA.format(id_type="BIGSERIAL PRIMARY KEY", blob_type="BYTEA", failed=FAILED_STATUS)
        elif self.database_url.startswith("sqlite:///"):
            path = self.database_url.removeprefix("sqlite:///")
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(path, check_same_thread=False, timeout=10, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            statements = _SCHEMA.format(id_type="INTEGER PRIMARY KEY AUTOINCREMENT", blob_type="BLOB",
                                        failed=FAILED_STATUS)
        else:
            raise ValueError(f"database_url must be sqlite:///PATH or postgresql://..., got {self.database_url!r}")
        if self._postgres:
            self._create_missing(statements)
            return
        with self._transaction() as cursor:
            for statement in statements.split(";"):
                cursor.execute(statement)
            self._add_columns(cursor)

    def _create_missing(self, statements: str) -> None:
        """PostgreSQL: the tables, indexes and columns that are not there yet, each in a transaction of its own, by one
        starting replica at a time (an advisory lock, which no query of a running replica takes).

        `CREATE INDEX IF NOT EXISTS` and `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` lock their table even when
        there is nothing to do, ALTER TABLE exclusively: a replica starting while another ran a transaction waited
        for it, and every query behind it waited too, and holding one table's lock while waiting for the other's it
        deadlocked with a transaction reading both (seen in a fresh clone's chaos test). Now a started schema takes no
        table lock at all, and a migration holds one table's lock at a time.

        What a new release adds to tables the running replicas write, it adds without stopping their writes: a
        column in tries of a moment each (_add_column); an index, which no query needs to be right, after the start
        and in the background, CONCURRENTLY (_build_indexes): a plain build held off every insert for the whole
        build, and every later query queued behind it while it waited for a running transaction; and a concurrent
        build waits for every transaction older than it in the database, which could outlast the start-up probe,
        whose kill would stop the build midway again at every start."""
        self._take_advisory_lock(SCHEMA_LOCK_KEY)
        later: list[tuple[str, str]] = []
        try:
            with self._transaction() as cursor:
                cursor.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                               "WHERE n.nspname = current_schema()")
                relations = {str(row[0]) for row in cursor.fetchall()}
                cursor.execute("SELECT table_name, column_name FROM information_schema.columns "
                               "WHERE table_schema = current_schema()")
                columns = {(str(table), str(column)) for table, column in cursor.fetchall()}
            invalid = self._invalid_indexes()
            for statement in (piece.strip() for piece in statements.split(";")):
                created = _CREATED.search(statement)
                if created is not None and created.group(1) in relations - invalid:
                    continue
                indexed = _INDEXED_TABLE.search(statement)
                if indexed is not None and indexed.group(1) in relations:  # a table that may hold rows already
                    later.append((created.group(1), statement))
                    continue
                with self._transaction() as cursor:
                    cursor.execute(statement)
            for table, more in self._LATER_COLUMNS.items():
                for name, kind in more:
                    if (table, name) not in columns:
                        self._add_column(table, name, kind)
        finally:
            with self._transaction() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
        if later and (self._index_builder is None or not self._index_builder.is_alive()):
            self._index_builder = threading.Thread(target=self._build_indexes, args=(later,), daemon=True,
                                                   name="index-builder")
            self._index_builder.start()

    def _invalid_indexes(self) -> set[str]:
        """Indexes PostgreSQL keeps but never uses: a concurrent build stopped midway (or one under way)."""
        with self._transaction() as cursor:
            cursor.execute(_INDEXES_VALID)
            return {str(name) for name, valid in cursor.fetchall() if not valid}

    def _take_advisory_lock(self, key: int) -> None:
        """An advisory lock, asked for in short transactions until it is free. A transaction waiting in
        pg_advisory_lock keeps its snapshot, and a concurrent index build waits for every older snapshot: a replica
        building an index under the lock and one waiting for the lock waited for each other, and PostgreSQL ended
        the deadlock by failing one of the two."""
        while True:
            with self._transaction() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cursor.fetchone()[0]:
                    return
            time.sleep(ADVISORY_LOCK_PAUSE_S)

    def _build_indexes(self, wanted: list[tuple[str, str]]) -> None:
        """In the background, on a connection of its own, one replica at a time (the index lock): each wanted index
        that is still missing, or left invalid by a build stopped midway (dropped first), built CONCURRENTLY, so
        the running replicas go on writing. A failure is logged; the next start builds what is still missing."""
        import psycopg

        from services.common.metrics import STORE_INDEXES_TO_BUILD

        STORE_INDEXES_TO_BUILD.set(len(wanted))
        try:
            with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as connection:
                self._index_connection = connection
                while not connection.execute("SELECT pg_try_advisory_lock(%s)", (INDEX_LOCK_KEY,)).fetchone()[0]:
                    if self._stopping.wait(ADVISORY_LOCK_PAUSE_S):
                        return
                for name, statement in wanted:  # the lock goes with the connection
                    if self._stopping.is_set():
                        return
                    row = connection.execute(_INDEXES_VALID + " AND c.relname = %s", (name,)).fetchone()
                    if row is not None and row[1]:
                        STORE_INDEXES_TO_BUILD.dec()
                        continue  # another replica built it meanwhile
                    if row is not None:
                        log.warning("index %s was left invalid by a build stopped midway; building it again", name)
                        connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                    began = time.monotonic()
                    log.info("building index %s concurrently (writes go on meanwhile)", name)
                    connection.execute(statement.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1))
                    log.info("built index %s in %.1f s", name, time.monotonic() - began)
                    STORE_INDEXES_TO_BUILD.dec()
        except Exception as error:  # noqa: BLE001  (the store works without the index, only slower)
            if not self._stopping.is_set():
                log.error("building indexes %s failed, the next start builds them again: %s",
                          ", ".join(name for name, _ in wanted), error)
        finally:
            self._index_connection = None

    def _stop_index_builder(self) -> None:
        """Stops a build under way (PostgreSQL drops what a cancelled concurrent build made, or leaves it invalid
        for the next start to build again) and waits for its thread."""
        self._stopping.set()
        connection = self._index_connection
        if connection is not None:
            try:
                connection.cancel_safe(timeout=5)
            except Exception:  # noqa: BLE001  (already closed, or the server gone: nothing runs there)
                pass
        if self._index_builder is not None:
            self._index_builder.join(10)
            self._index_builder = None

    def _add_column(self, table: str, name: str, kind: str) -> None:
        """ALTER TABLE ... ADD COLUMN, which needs the table to itself for a moment. Waiting for it behind a running
        transaction queues every later query of the table behind the ALTER: each try waits at most
        COLUMN_LOCK_WAIT_MS, then gives the table back for COLUMN_LOCK_PAUSE_S, until it gets its moment."""
        import psycopg

        tries = 0
        while True:
            try:
                with self._transaction() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = '{COLUMN_LOCK_WAIT_MS}ms'")
                    cursor.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {kind}")
                return
            except ClassificationError as error:
                if not isinstance(error.__cause__, psycopg.errors.LockNotAvailable):
                    raise
            tries += 1
            if tries % 10 == 1:
                log.warning("adding column %s.%s waits for a transaction holding the table (try %d)", table, name,
                            tries)
            time.sleep(COLUMN_LOCK_PAUSE_S)

    def _reconnect_if_broken(self) -> None:
        """After a lost connection (a database restart, a failover), the next transaction opens a new one."""
        if self._postgres and self._connection is not None and self._connection.closed:
            self._connection = None
        if self._connection is None:
            try:
                self._connect()
            except Exception as error:  # noqa: BLE001
                self._connection = None
                raise ClassificationError(ErrorKind.UNAVAILABLE, f"result store: {error}") from None

    # Columns added since the first release, per table: a database an earlier version created gets them on start.
    _LATER_COLUMNS = {
        "classifications": (("claimed_by", "TEXT"), ("claimed_until", "DOUBLE PRECISION"),  # publication claims
                            ("confidence", "DOUBLE PRECISION"), ("label", "TEXT"), ("category_id", "TEXT"),  # queue
                            ("superseded", "BOOLEAN NOT NULL DEFAULT FALSE"),  # a late, older submission
                            ("error_kind", "INTEGER")),  # a failure's kind, for the numbers (NULL before)
        "corrections": (("carried_from", "BIGINT"),),  # a verdict applied again to a listing back to its photo
    }

    def _add_columns(self, cursor) -> None:
        """SQLite databases created by an earlier version get the columns added since (PostgreSQL: _create_missing)."""
        for table, later in self._LATER_COLUMNS.items():
            columns = {row[1] for row in cursor.execute(f"PRAGMA table_info({table})").fetchall()}
            for name, kind in later:
                if name not in columns:
                    cursor.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def claim(self, sequence: int, owner: str, lease_s: float) -> bool:
        """Atomically makes owner the one publisher of an unpublished row: True when it may publish now.

        False when the row is published already, or another owner's lease on it has not run out; a lease that ran
        out (its owner died between claiming and publishing) can be taken over.
        """
        now = time.time()
        with self._transaction() as cursor:
            cursor.execute(self._sql(
                "UPDATE classifications SET claimed_by = ?, claimed_until = ? WHERE sequence = ? AND NOT published "
                "AND (claimed_by IS NULL OR claimed_by = ? OR claimed_until < ?)"),
                (owner, now + lease_s, sequence, owner, now))
            return cursor.rowcount == 1

    def is_published(self, sequence: int) -> bool:
        with self._transaction() as cursor:
            cursor.execute(self._sql("SELECT published FROM classifications WHERE sequence = ?"), (sequence,))
            row = cursor.fetchone()
            return bool(row and row[0])

    def stop(self) -> None:
        self._started = False
        self._stop_index_builder()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def ready(self) -> bool:
        try:
            with self._transaction() as cursor:
                cursor.execute("SELECT 1")
            return True
        except ClassificationError:
            return False

    class _Transaction:
        def __init__(self, store: "ClassificationStore"):
            self.store = store

        def __enter__(self):
            self.store._lock.acquire()
            try:
                if self.store._connection is None:
                    raise RuntimeError("reconnecting")
                self.cursor = self.store._connection.cursor()
                if not self.store._postgres:
                    self.cursor.execute("BEGIN IMMEDIATE")
            except Exception as error:
                self.store._lock.release()
                raise ClassificationError(ErrorKind.UNAVAILABLE, f"result store: {error}") from None
            return self.cursor

        def __exit__(self, error_type, error, _traceback):
            try:
                if error_type is None:
                    self.store._connection.commit() if self.store._postgres else self.cursor.execute("COMMIT")
                else:
                    self.store._connection.rollback() if self.store._postgres else self.cursor.execute("ROLLBACK")
            except Exception as commit_error:  # noqa: BLE001
                if error_type is None:
                    raise ClassificationError(ErrorKind.UNAVAILABLE, f"result store: {commit_error}") from None
            finally:
                if self.store._postgres and self.store._connection is not None and self.store._connection.closed:
                    self.store._connection = None  # lost: the next transaction reconnects
                self.store._lock.release()
            if error_type is not None and not issubclass(error_type, ClassificationError):
                if _is_the_data(error):  # retrying the same row cannot help: the event's fault, dead-lettered
                    raise ClassificationError(ErrorKind.INVALID_REQUEST, f"the result store refuses the row: "
                                              f"{error}"[:500]) from error
                raise ClassificationError(ErrorKind.UNAVAILABLE, f"result store: {error}") from error
            return False

    def _transaction(self) -> "_Transaction":
        if not self._started:
            raise ClassificationError(ErrorKind.UNAVAILABLE, "result store is not started")
        with self._lock:
            self._reconnect_if_broken()
        return self._Transaction(self)

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self._placeholder)

    # The operators' tables (services/results/operator_store.py) share this connection and its transactions.
    transaction = _transaction
    sql = _sql

    @property
    def is_postgres(self) -> bool:
        return self._postgres

    def record(self, classification: common_pb2.Classification) -> StoredClassification:
        """Stores the classification unless its idempotency key is already there; returns what the store holds."""
        return self.record_many([classification])[0]

    def record_many(self, classifications: list[common_pb2.Classification]) -> list[StoredClassification]:
        """record() for a batch in one transaction and, for each listing's first event in the batch, three
        statements at most, whatever its size: one look-up of the keys already stored, one insert of the rest (in
        the batch's order, so sequences follow it), and a re-read of any key another replica inserted in between
        (ON CONFLICT DO NOTHING leaves it to that replica). A listing's later events in the same batch (a seller's
        quick edits) are recorded after it, in their order, in the same transaction. A key found stored that is not
        its listing's latest row is a photo the listing had before; one more statement then reads the latest rows
        (_photo_back). A row the store refuses fails the whole batch (INVALID_REQUEST): the caller then records
        one by one to find it."""
        if not classifications:
            return []
        outcomes: list = [None] * len(classifications)
        with self._transaction() as cursor:
            for indices in _rounds(classifications):
                recorded = self._record_round(cursor, [classifications[index] for index in indices])
                for index, outcome in zip(indices, recorded):
                    outcomes[index] = outcome
        return outcomes

    def _record_round(self, cursor, classifications: list[common_pb2.Classification]) -> list[StoredClassification]:
        """record_many for events of distinct listings (so of distinct keys: every key starts with the listing)."""
        own_keys = [idempotency_key(c) for c in classifications]
        stored = self._stored_by_key(cursor, sorted(set(own_keys)))
        keys, late = self._keys_in_order(cursor, own_keys, classifications, stored)
        moved = sorted({key for key, own in zip(keys, own_keys) if key != own} - set(stored))
        if moved:  # a listing's latest row, or a return to a photo: looked up in their turn
            stored.update(self._stored_by_key(cursor, moved))
        new = [index for index, key in enumerate(keys) if key not in stored]
        classifications = [_superseded(c) if index in late and index in new else c
                           for index, c in enumerate(classifications)]
        inserted: dict[str, int] = {}
        if new:
            now = time.time()
            rows = ", ".join(["(" + ", ".join([self._placeholder] * 12) + ")"] * len(new))
            values = [value for index in new for value in self._row_values(keys[index], classifications[index],
                                                                              now)]
            cursor.execute(
                "INSERT INTO classifications (idempotency_key, listing_id, marketplace, status, payload, "
                f"published, stored_at, confidence, label, category_id, superseded, error_kind) VALUES {rows} "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, sequence", values)
            inserted = {str(key): int(sequence) for key, sequence in cursor.fetchall()}
            raced = [keys[index] for index in new if keys[index] not in inserted]
            if raced:
                stored.update(self._stored_by_key(cursor, raced))
        results: list[StoredClassification] = []
        for index, (key, classification) in enumerate(zip(keys, classifications)):
            if key in inserted:
                copy = common_pb2.Classification()
                copy.CopyFrom(classification)
                copy.sequence = inserted[key]
                # a superseded row is not published: nothing is left to send
                results.append(StoredClassification(copy, newly_stored=True, published=copy.superseded, key=key))
            else:
                results.append(stored[key])
        return results

    def _keys_in_order(self, cursor, keys: list[str], classifications: list[common_pb2.Classification],
                       stored: dict[str, StoredClassification]) -> tuple[list[str], set[int]]:
        """The keys to record the events under, so that a listing's latest row is its newest submission's, and the
        positions of the events that arrived after a newer submission of their listing (late).

        Where a key found stored is not its listing's latest row, the listing has had another photo (or a failure)
        since that row: either it is back to this photo in a newer submission, a seller undoing an edit, and gets a
        row of its own after the latest one (its key names that row's sequence, so a redelivery of this event finds
        it; published like any new row), or the event is an earlier submission delivered again (submitted no later
        than the latest row's) and finds its old row, changing nothing. An event on the latest row's photo finds
        that row (a redelivery, or an edit that kept the photo). An event on a photo the listing has no row for that
        was submitted before the latest row's submission is late (it arrived after a newer one: one came through the
        gateway and the other through Kafka, or producers partitioned them differently): it is stored superseded,
        never the listing's latest row and never published. Where either submission time is missing, the order
        events arrive in decides."""
        latest = self._latest_rows(cursor, sorted({c.listing_id for c in classifications}))
        chosen, late = list(keys), set()
        for index, (key, classification) in enumerate(zip(keys, classifications)):
            if classification.listing_id not in latest:
                continue
            sequence, latest_key, latest_submitted = latest[classification.listing_id]
            submitted = classification.submitted_at.ToMicroseconds()
            if latest_key.split(PHOTO_BACK_SEPARATOR)[0] == key:
                chosen[index] = latest_key  # the listing's current photo: its latest row
            elif key in stored:
                if submitted > latest_submitted:
                    chosen[index] = f"{key}{PHOTO_BACK_SEPARATOR}{sequence}"
            elif 0 < submitted < latest_submitted:
                late.add(index)
                log.info("an earlier submission arrived after a newer one: stored superseded, not published",
                         extra={"listing_id": classification.listing_id[:100], "newer_sequence": sequence})
        return chosen, late

    def _latest_rows(self, cursor, listings: list[str]) -> dict[str, tuple[int, str, int]]:
        """listing -> its latest row (superseded ones aside): sequence, key, submission time (microseconds, 0 for
        none)."""
        latest: dict[str, tuple[int, str, int]] = {}
        for start in range(0, len(listings), 500):
            chunk = listings[start:start + 500]
            marks = ", ".join([self._placeholder] * len(chunk))
            cursor.execute(
                "SELECT c.listing_id, c.sequence, c.idempotency_key, c.payload FROM classifications c JOIN "
                f"(SELECT listing_id, MAX(sequence) AS sequence FROM classifications WHERE listing_id IN ({marks}) "
                "AND NOT superseded GROUP BY listing_id) m ON c.sequence = m.sequence", chunk)
            for listing_id, sequence, key, payload in cursor.fetchall():
                submitted = common_pb2.Classification.FromString(bytes(payload)).submitted_at.ToMicroseconds()
                latest[str(listing_id)] = (int(sequence), str(key), max(0, submitted))
        return latest

    def _stored_by_key(self, cursor, keys: list[str]) -> dict[str, StoredClassification]:
        found: dict[str, StoredClassification] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ", ".join([self._placeholder] * len(chunk))
            cursor.execute(f"SELECT idempotency_key, sequence, payload, published FROM classifications "
                           f"WHERE idempotency_key IN ({marks})", chunk)
            for key, sequence, payload, published in cursor.fetchall():
                stored = common_pb2.Classification.FromString(bytes(payload))
                stored.sequence = sequence
                found[str(key)] = StoredClassification(stored, newly_stored=False, published=bool(published),
                                                       key=str(key))
        return found

    @staticmethod
    def _row_values(key: str, classification: common_pb2.Classification, now: float) -> tuple:
        return (key, classification.listing_id, classification.marketplace, classification.status,
                classification.SerializeToString(), classification.superseded, now, float(classification.confidence),
                classification.label, short_category_id(classification.category.id), classification.superseded,
                classification.error_kind if classification.status == common_pb2.CLASSIFICATION_STATUS_FAILED
                else None)

    def claim_many(self, sequences: list[int], owner: str, lease_s: float) -> set[int]:
        """claim() for many rows in one statement: the sequences this owner may publish now."""
        if not sequences:
            return set()
        now = time.time()
        marks = ", ".join([self._placeholder] * len(sequences))
        with self._transaction() as cursor:
            cursor.execute(self._sql(
                f"UPDATE classifications SET claimed_by = ?, claimed_until = ? WHERE sequence IN ({marks}) AND NOT "
                "published AND (claimed_by IS NULL OR claimed_by = ? OR claimed_until < ?) RETURNING sequence"),
                (owner, now + lease_s, *sequences, owner, now))
            return {int(row[0]) for row in cursor.fetchall()}

    def published_among(self, sequences: list[int]) -> set[int]:
        if not sequences:
            return set()
        marks = ", ".join([self._placeholder] * len(sequences))
        with self._transaction() as cursor:
            cursor.execute(f"SELECT sequence FROM classifications WHERE sequence IN ({marks}) AND published",
                           sequences)
            return {int(row[0]) for row in cursor.fetchall()}

    def mark_published(self, sequences: list[int]) -> None:
        if not sequences:
            return
        with self._transaction() as cursor:
            marks = ", ".join([self._placeholder] * len(sequences))
            cursor.execute(f"UPDATE classifications SET published = TRUE WHERE sequence IN ({marks})", sequences)

    def _select(self, where: str, parameters: tuple, order: str, limit: int) -> list[common_pb2.Classification]:
        with self._transaction() as cursor:
            cursor.execute(self._sql(f"SELECT sequence, payload FROM classifications WHERE {where} "
                                     f"ORDER BY sequence {order} LIMIT {int(limit)}"), parameters)
            rows = cursor.fetchall()
        results = []
        for sequence, payload in rows:
            classification = common_pb2.Classification.FromString(bytes(payload))
            classification.sequence = sequence
            results.append(classification)
        return results

    def latest_for_listing(self, listing_id: str) -> common_pb2.Classification | None:
        found = self._select("listing_id = ? AND NOT superseded", (listing_id,), "DESC", 1)
        return found[0] if found else None

    def recent(self, marketplace: str, limit: int, before_sequence: int = 0, failed_only: bool = False,
               error_kind: int = 0) -> list[common_pb2.Classification]:
        """Newest first; `failed_only` (or an `error_kind`, only failures of that kind) reads the failures' own
        index. A failure stored before the kind had a column is listed as failed, not under its kind."""
        where, parameters = ["sequence < ?"], [before_sequence or 2 ** 62]
        if marketplace:
            where.append("marketplace = ?")
            parameters.append(marketplace)
        if failed_only or error_kind:
            where.append(f"status = {FAILED_STATUS}")  # the partial index's own predicate, so that it is used
        if error_kind:
            where.append("error_kind = ?")
            parameters.append(error_kind)
        return self._select(" AND ".join(where), tuple(parameters), "DESC", limit)

    def after(self, after_sequence: int, marketplace: str, limit: int = 200) -> list[common_pb2.Classification]:
        where, parameters = ["sequence > ?"], [after_sequence]
        if marketplace:
            where.append("marketplace = ?")
            parameters.append(marketplace)
        return self._select(" AND ".join(where), tuple(parameters), "ASC", limit)

    def sequences_after(self, after_sequence: int, limit: int = 10_000) -> list[int]:
        """The sequences of the rows after after_sequence, oldest first: the index alone, no payload read."""
        with self._transaction() as cursor:
            cursor.execute(self._sql(f"SELECT sequence FROM classifications WHERE sequence > ? ORDER BY sequence "
                                     f"LIMIT {int(limit)}"), (after_sequence,))
            return [int(row[0]) for row in cursor.fetchall()]

    def by_sequences(self, sequences: list[int]) -> list[common_pb2.Classification]:
        """These rows (those that exist), oldest first."""
        if not sequences:
            return []
        marks = ", ".join([self._placeholder] * len(sequences))
        return self._select(f"sequence IN ({marks})", tuple(sequences), "ASC", len(sequences))

    def last_sequence(self) -> int:
        with self._transaction() as cursor:
            cursor.execute("SELECT COALESCE(MAX(sequence), 0) FROM classifications")
            return int(cursor.fetchone()[0])

    def count_listings(self, listing_ids: list[str]) -> int:
        """How many of these listings have a row (progress, for fault tests)."""
        if not listing_ids:
            return 0
        with self._transaction() as cursor:
            marks = ", ".join([self._placeholder] * len(listing_ids))
            cursor.execute(f"SELECT COUNT(DISTINCT listing_id) FROM classifications WHERE listing_id IN ({marks})",
                           listing_ids)
            return int(cursor.fetchone()[0])

    def count_for_listing(self, listing_id: str) -> int:
        with self._transaction() as cursor:
            cursor.execute(self._sql("SELECT COUNT(*) FROM classifications WHERE listing_id = ?"), (listing_id,))
            return int(cursor.fetchone()[0])
