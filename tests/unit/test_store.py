"""The result store on SQLite and on the real PostgreSQL: idempotent writes, queries in order."""

import uuid

import pytest

from services.common.contracts.product_classification.v1 import common_pb2
from services.results.store import ClassificationStore, idempotency_key


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, postgres_url):
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}" if request.param == "sqlite" else postgres_url
    store = ClassificationStore(url)
    store.start()
    yield store
    store.stop()


def classification(listing_id, digest="d1", marketplace="de-modehaus"):
    return common_pb2.Classification(listing_id=listing_id, marketplace=marketplace, image_digest=digest,
                                     model_versions="resnet50:1", label="mug",
                                     status=common_pb2.CLASSIFICATION_STATUS_CLASSIFIED)


def test_the_same_classification_is_stored_once(store):
    listing = f"store-{id(store)}"
    first = store.record(classification(listing))
    again = store.record(classification(listing))
    assert first.newly_stored and not again.newly_stored
    assert again.classification.sequence == first.classification.sequence
    assert store.count_for_listing(listing) == 1


def test_published_flag_survives_redelivery(store):
    listing = f"published-{id(store)}"
    first = store.record(classification(listing))
    store.mark_published([first.classification.sequence])
    assert store.record(classification(listing)).published


def test_latest_recent_and_after(store):
    prefix = f"q-{id(store)}"
    sequences = [store.record(classification(f"{prefix}-a", digest=d)).classification.sequence for d in ("1", "2")]
    store.record(classification(f"{prefix}-b", marketplace="fr-boutique"))
    assert store.latest_for_listing(f"{prefix}-a").image_digest == "2"
    assert store.latest_for_listing("missing") is None
    recent = store.recent("de-modehaus", 10)
    assert [c.sequence for c in recent][:2] == sorted(sequences, reverse=True)
    assert all(c.marketplace == "de-modehaus" for c in recent)
    assert [c.sequence for c in store.after(sequences[0], "")][:2] == [sequences[1], sequences[1] + 1]


def test_postgres_store_reconnects_after_losing_its_connection(postgres_url):
    """A database restart or failover drops the connection: the store says UNAVAILABLE, then carries on by itself."""
    import psycopg

    from services.common.errors import ClassificationError, ErrorKind

    store = ClassificationStore(postgres_url)
    store.start()
    try:
        store.record(classification("reconnect-before"))
        backend = store._connection.info.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(store.record(classification("reconnect-after")).newly_stored)
                break
            except ClassificationError as error:
                assert error.kind is ErrorKind.UNAVAILABLE  # retryable, never a crash
                outcomes.append("unavailable")
        assert outcomes[-1] is True and store.ready()
        assert store._connection.info.backend_pid != backend
        assert store.count_for_listing("reconnect-after") == 1
    finally:
        store.stop()


def test_record_many_matches_record_one_by_one(store):
    """A batch with rows already stored (one of them published), a key twice, and new rows: the same answers as
    record() row by row, sequences in the batch's order."""
    prefix = f"many-{id(store)}"
    old = store.record(classification(f"{prefix}-old"))
    published = store.record(classification(f"{prefix}-published"))
    store.mark_published([published.classification.sequence])
    batch = [classification(f"{prefix}-new-1"), classification(f"{prefix}-old"), classification(f"{prefix}-new-2"),
             classification(f"{prefix}-new-1"), classification(f"{prefix}-published")]
    results = store.record_many(batch)
    assert [r.newly_stored for r in results] == [True, False, True, False, False]
    assert [r.published for r in results] == [False, False, False, False, True]
    assert results[1].classification.sequence == old.classification.sequence
    assert results[4].classification.sequence == published.classification.sequence
    assert results[3].classification.sequence == results[0].classification.sequence
    assert old.classification.sequence < results[0].classification.sequence < results[2].classification.sequence
    assert [r.classification.listing_id for r in results] == [c.listing_id for c in batch]
    assert store.record_many(batch[:3])[0].newly_stored is False
    assert store.count_for_listing(f"{prefix}-new-1") == 1
    assert store.record_many([]) == []


def test_record_many_when_another_replica_stores_a_key_between_look_up_and_insert(store, tmp_path, postgres_url):
    """Two replicas race for the same listing: the one whose insert finds the row already there reads it back and
    reports it as stored by someone else; nothing is stored twice."""
    other = ClassificationStore(postgres_url if store.is_postgres else f"sqlite:///{tmp_path / 'store.sqlite3'}")
    other.start()
    prefix = f"race-{id(store)}"
    look_up = store._stored_by_key
    calls = []

    def look_up_then_race(cursor, keys):
        found = look_up(cursor, keys)
        if not calls:
            calls.append(keys)
            if store.is_postgres:  # another connection commits the row before our insert
                other.record(classification(f"{prefix}-contested"))
            else:  # SQLite serialises writers: the row is put in through this transaction instead
                cursor.execute(store.sql("INSERT INTO classifications (idempotency_key, listing_id, marketplace, "
                                         "status, payload, published, stored_at, confidence, label, category_id, "
                                         "superseded, error_kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                               store._row_values(idempotency_key(classification(f"{prefix}-contested")),
                                                 classification(f"{prefix}-contested"), 0.0))
        return found

    store._stored_by_key = look_up_then_race
    try:
        results = store.record_many([classification(f"{prefix}-mine"), classification(f"{prefix}-contested")])
    finally:
        store._stored_by_key = look_up
        other.stop()
    assert [r.newly_stored for r in results] == [True, False]
    assert results[1].classification.listing_id == f"{prefix}-contested" and results[1].classification.sequence > 0
    assert store.count_for_listing(f"{prefix}-contested") == 1


def submitted(listing_id: str, digest: str, second: int, status=common_pb2.CLASSIFICATION_STATUS_CLASSIFIED):
    event = classification(listing_id, digest=digest)
    event.status = status
    if second:
        event.submitted_at.FromSeconds(1_800_000_000 + second)
    return event


def test_a_listing_back_to_a_photo_it_had_gets_that_photo_as_its_latest_again(store):
    """A seller undoes an edit: photo A, then B, then A again. Before, the third event found A's first row, so the
    listing's latest classification stayed B's and nothing was published for the photo it shows."""
    listing = f"back-{id(store)}"
    first, second = store.record(submitted(listing, "A", 1)), store.record(submitted(listing, "B", 2))
    back = store.record(submitted(listing, "A", 3))
    assert back.newly_stored and not back.published
    assert back.classification.sequence > second.classification.sequence > first.classification.sequence
    assert back.key == f"{first.key}|after:{second.classification.sequence}" != first.key
    assert store.latest_for_listing(listing).image_digest == "A"
    # redeliveries change nothing: this event again, the first one again, B's again
    assert store.record(submitted(listing, "A", 3)).classification.sequence == back.classification.sequence
    assert store.record(submitted(listing, "A", 1)).classification.sequence == back.classification.sequence
    assert store.record(submitted(listing, "B", 2)).classification.sequence == second.classification.sequence
    assert store.latest_for_listing(listing).sequence == back.classification.sequence
    # and the listing can go on: B again, then A a third time
    assert store.record(submitted(listing, "B", 4)).newly_stored
    again = store.record(submitted(listing, "A", 5))
    assert again.newly_stored and store.latest_for_listing(listing).sequence == again.classification.sequence
    assert store.count_for_listing(listing) == 5


def test_an_earlier_submission_delivered_after_a_newer_photo_changes_nothing(store):
    listing = f"late-{id(store)}"
    first = store.record(submitted(listing, "A", 1))
    store.record(submitted(listing, "B", 2))
    for late in (submitted(listing, "A", 1), submitted(listing, "A", 0)):  # as submitted before B, or with no time
        found = store.record(late)
        assert not found.newly_stored and found.classification.sequence == first.classification.sequence
    assert store.latest_for_listing(listing).image_digest == "B" and store.count_for_listing(listing) == 2


def test_an_earlier_submission_of_another_photo_arriving_after_a_newer_one_does_not_become_current(store):
    """Photo A submitted, then B; B's event arrives first (one came through the gateway and the other through Kafka,
    or from producers that partition differently). Before, A's late event became the listing's latest row and was
    published: the listing's classification went back to a photo it no longer shows. Now it is stored superseded:
    there to answer and to list, never published, never the listing's latest."""
    listing, quick, untimed = f"stale-{id(store)}", f"stale-batch-{id(store)}", f"untimed-{id(store)}"
    newer = store.record(submitted(listing, "B", 2))
    late = store.record(submitted(listing, "A", 1))
    assert late.newly_stored and late.published and late.classification.superseded
    assert late.classification.image_digest == "A" and late.classification.sequence > newer.classification.sequence
    assert not newer.classification.superseded
    assert store.latest_for_listing(listing).image_digest == "B" and store.count_for_listing(listing) == 2
    assert store.by_sequences([late.classification.sequence])[0].superseded
    again = store.record(submitted(listing, "A", 1))  # redelivered: its own row, unchanged
    assert not again.newly_stored and again.classification.sequence == late.classification.sequence
    # the same within one batch
    results = store.record_many([submitted(quick, "B", 2), submitted(quick, "A", 1)])
    assert [r.classification.superseded for r in results] == [False, True]
    assert store.latest_for_listing(quick).image_digest == "B"
    # A submitted again after B: the listing's photo is A now (a row of its own after B's)
    current = store.record(submitted(listing, "A", 3))
    assert current.newly_stored and not current.published and not current.classification.superseded
    assert store.latest_for_listing(listing).sequence == current.classification.sequence
    # then a late C (submitted before A's return): superseded again
    assert store.record(submitted(listing, "C", 2)).classification.superseded
    assert store.latest_for_listing(listing).sequence == current.classification.sequence
    # where either side has no submission time, the order events arrive in decides, as before
    store.record(submitted(untimed, "B", 2))
    assert not store.record(submitted(untimed, "A", 0)).classification.superseded
    assert not store.record(submitted(untimed, "C", 1)).classification.superseded  # A's row has no time
    assert store.latest_for_listing(untimed).image_digest == "C"


def test_a_listing_back_to_its_photo_after_a_failure_and_quick_edits_in_one_batch(store):
    listing, quick = f"after-failure-{id(store)}", f"quick-{id(store)}"
    store.record(submitted(listing, "A", 1))
    store.record(submitted(listing, "", 2, status=common_pb2.CLASSIFICATION_STATUS_FAILED))
    # one batch: the first listing back to A; the second edited A -> B -> A within the batch, with A's row stored
    # before the batch; between them another listing's event
    store.record(submitted(quick, "A", 1))
    batch = [submitted(listing, "A", 3), submitted(quick, "B", 2), submitted(f"other-{id(store)}", "C", 2),
             submitted(quick, "A", 3)]
    results = store.record_many(batch)
    assert [r.newly_stored for r in results] == [True, True, True, True]
    assert [r.classification.listing_id for r in results] == [c.listing_id for c in batch]
    assert store.latest_for_listing(listing).image_digest == "A"
    assert store.latest_for_listing(quick).sequence == results[3].classification.sequence
    assert results[3].classification.sequence > results[1].classification.sequence
    assert store.record_many(batch)[3].classification.sequence == results[3].classification.sequence


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_replicas_recording_the_same_photo_back_at_once_store_it_once(backend, tmp_path, postgres_url):
    """A rebalance hands the event to a second result replica while the first still records it: both see the same
    latest row, both make the same key, one row is stored and both answer with it."""
    import threading

    url = postgres_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'store.sqlite3'}"
    replicas = [ClassificationStore(url), ClassificationStore(url)]
    for replica in replicas:
        replica.start()
    listing = f"two-back-{uuid.uuid4().hex[:8]}"
    try:
        replicas[0].record(submitted(listing, "A", 1))
        replicas[0].record(submitted(listing, "B", 2))
        start, answers = threading.Barrier(2), [None, None]

        def record(which: int) -> None:
            start.wait()
            answers[which] = replicas[which].record_many([submitted(listing, "A", 3)])[0]

        threads = [threading.Thread(target=record, args=(which,)) for which in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert answers[0].classification.sequence == answers[1].classification.sequence
        assert sorted(answer.newly_stored for answer in answers) == [False, True]
        assert replicas[0].count_for_listing(listing) == 3
        assert replicas[1].latest_for_listing(listing).sequence == answers[0].classification.sequence
    finally:
        for replica in replicas:
            replica.stop()


@pytest.mark.parametrize("table, column", [("classifications", "superseded"), ("classifications", "error_kind"),
                                           ("corrections", "carried_from")])
def test_a_store_an_earlier_version_made_gets_the_columns_added_since(table, column, tmp_path, postgres_url):
    """Each backend: the column dropped (as a database an earlier version made has it), then a start adds it."""
    for url in (f"sqlite:///{tmp_path / 'old.sqlite3'}", postgres_url):
        for statement in (f"ALTER TABLE {table} DROP COLUMN {column}", f"SELECT {column} FROM {table} WHERE 1 = 0"):
            store = ClassificationStore(url)
            store.start()
            try:
                with store.transaction() as cursor:
                    cursor.execute(statement)  # the SELECT raises unless the start added the column back
            finally:
                store.stop()


def test_a_replica_starting_beside_running_transactions_takes_no_table_lock(postgres_url):
    """Another replica's transaction holds both tables (it read them and has not committed). Before, a starting
    replica's `ADD COLUMN IF NOT EXISTS` and `CREATE INDEX IF NOT EXISTS` locked the tables even with nothing to
    add: it waited for that transaction, every query behind it waited too, and a transaction reading the two tables
    in the other order deadlocked with it (a fresh clone's chaos test). Now a schema that is there takes no lock."""
    import psycopg

    first = ClassificationStore(postgres_url)
    first.start()  # the schema is there
    first.stop()
    with psycopg.connect(postgres_url, autocommit=False) as running:
        running.execute("SELECT COUNT(*) FROM classifications")
        running.execute("SELECT COUNT(*) FROM corrections")
        running.execute("INSERT INTO thumbnails (image_digest, jpeg, stored_at) VALUES (%s, %s, 0) "
                        "ON CONFLICT DO NOTHING", ("lock-test-" + uuid.uuid4().hex, b"x"))
        starting, thread, failed = _start_in_thread(postgres_url)
        thread.join(15)
        started = not thread.is_alive()
        running.rollback()  # lets a start that waited on it go on
    thread.join(30)
    starting.stop()
    assert started and not failed, f"the start waited on the running transaction: {failed}"


@pytest.fixture
def own_schema_url(postgres_url):
    """A schema of this test's own in the session's database (a start builds what is missing in it): what a test
    drops or holds there touches no other test's tables."""
    import psycopg

    schema = f"s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    store = ClassificationStore(url)
    store.start()  # the whole schema, as a running release has it
    store.stop()
    yield url
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _insert_row(connection) -> None:
    connection.execute("INSERT INTO classifications (idempotency_key, listing_id, marketplace, status, payload, "
                       "stored_at) VALUES (%s, 'l', 'm', 1, %s, 0)", (uuid.uuid4().hex, b""))


def _wait_until_waiting(url: str, query_start: str, timeout_s: float = 15.0) -> None:
    """Until a session runs a statement starting so and waits for a lock (a row lock or another transaction)."""
    import time

    import psycopg

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            if watcher.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE btrim(query, E' \\n') ILIKE %s "
                               "AND wait_event_type = 'Lock'", (query_start + "%",)).fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError(f"no session waited in {query_start!r} within {timeout_s} s")


def _index_is_valid(connection, name: str) -> bool | None:
    row = connection.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                             "JOIN pg_namespace n ON n.oid = c.relnamespace "
                             "WHERE c.relname = %s AND n.nspname = current_schema()", (name,)).fetchone()
    return None if row is None else bool(row[0])


def _start_in_thread(url: str):
    import threading

    store, failures = ClassificationStore(url), []

    def start() -> None:
        try:
            store.start()
        except Exception as error:  # noqa: BLE001
            failures.append(error)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return store, thread, failures


def _wait_for_valid_index(url: str, name: str, timeout_s: float = 30.0) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as watcher:
        _wait_for(lambda: _index_is_valid(watcher, name), f"index {name} built", timeout_s)


def _indexes_to_build() -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("product_classification_store_indexes_to_build")


def _wait_for(condition, what: str, timeout_s: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


def _a_start_builds_the_failures_index(url: str) -> None:
    store = ClassificationStore(url)
    store.start()
    try:
        _wait_for_valid_index(url, "classifications_failed")
    finally:
        store.stop()


def test_an_index_a_new_release_adds_is_built_while_running_replicas_go_on_writing(own_schema_url, caplog):
    """A running replica's transaction has inserted and not committed when a new release starts and builds an index
    the table lacks. A plain CREATE INDEX waited for that transaction with the table's SHARE lock asked for, so the
    other replicas' inserts queued behind it (and would have waited out the whole build): here one times out. The
    start itself does not wait for the build (it could outlast the start-up probe)."""
    import psycopg

    with psycopg.connect(own_schema_url, autocommit=True) as admin:
        admin.execute("DROP INDEX classifications_failed")
    with psycopg.connect(own_schema_url) as running:
        _insert_row(running)  # holds the table's ROW EXCLUSIVE lock until it commits
        starting, thread, failures = _start_in_thread(own_schema_url)
        try:
            _wait_until_waiting(own_schema_url, "CREATE INDEX")
            thread.join(15)
            assert not thread.is_alive() and not failures, f"the start waited for the index: {failures}"
            with psycopg.connect(own_schema_url) as other_replica:
                other_replica.execute("SET lock_timeout = '3s'")
                _insert_row(other_replica)  # raises LockNotAvailable if it queued behind the build
                other_replica.commit()
            starting.record(classification("written-while-the-index-is-built"))  # the new replica serves
            assert _indexes_to_build() == 1
            running.commit()
            _wait_for_valid_index(own_schema_url, "classifications_failed")
            _wait_for(lambda: _indexes_to_build() == 0, "the gauge of indexes to build back at 0")
            with psycopg.connect(own_schema_url) as check:
                assert check.execute("SELECT COUNT(*) FROM classifications").fetchone()[0] == 3
        finally:
            running.rollback()
            thread.join(30)
            starting.stop()
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


def test_an_index_build_stopped_midway_is_built_again_by_the_next_start(own_schema_url):
    """A concurrent build that is stopped (its replica killed, the statement cancelled) leaves an index PostgreSQL
    keeps but never uses. Before, the next start saw the name and left it so: the failures' list read the whole
    table from then on."""
    import threading

    import psycopg

    with psycopg.connect(own_schema_url, autocommit=True) as admin:
        admin.execute("DROP INDEX classifications_failed")
        with psycopg.connect(own_schema_url) as running:
            _insert_row(running)
            builder = psycopg.connect(own_schema_url, autocommit=True)
            pid = builder.info.backend_pid
            stopped = []

            def build() -> None:
                try:
                    builder.execute("CREATE INDEX CONCURRENTLY classifications_failed ON classifications (sequence) "
                                    "WHERE status = 2")
                except psycopg.Error as error:
                    stopped.append(error)

            thread = threading.Thread(target=build, daemon=True)
            thread.start()
            _wait_until_waiting(own_schema_url, "CREATE INDEX CONCURRENTLY")
            admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
            thread.join(15)
            builder.close()
            running.commit()
        assert stopped, "the build was not stopped"
        assert _index_is_valid(admin, "classifications_failed") is False
    _a_start_builds_the_failures_index(own_schema_url)


def test_a_replica_stopped_while_it_builds_an_index_stops_at_once_and_the_next_start_builds_it(own_schema_url):
    """Its shutdown does not wait for the build (a rollout's grace period could not know how long it takes)."""
    import time

    import psycopg

    with psycopg.connect(own_schema_url, autocommit=True) as admin:
        admin.execute("DROP INDEX classifications_failed")
    with psycopg.connect(own_schema_url) as running:
        _insert_row(running)  # the build waits for it
        store = ClassificationStore(own_schema_url)
        store.start()
        _wait_until_waiting(own_schema_url, "CREATE INDEX")
        began = time.monotonic()
        store.stop()
        assert time.monotonic() - began < 8, "stop waited for the build"
        running.commit()
    with psycopg.connect(own_schema_url) as check:
        assert _index_is_valid(check, "classifications_failed") is not True
    _a_start_builds_the_failures_index(own_schema_url)


def test_two_replicas_starting_while_an_index_is_built_both_start_and_one_builds_it(own_schema_url, caplog):
    """The second replica starts while the first builds the index concurrently. Waiting inside pg_advisory_lock, a
    transaction kept a snapshot the build waits for: each waited for the other, and PostgreSQL's deadlock check
    failed one of the two (now a logged error of the background build)."""
    import time

    import psycopg

    with psycopg.connect(own_schema_url, autocommit=True) as admin:
        admin.execute("DROP INDEX classifications_failed")
    with psycopg.connect(own_schema_url) as running:
        _insert_row(running)
        first, first_thread, first_failures = _start_in_thread(own_schema_url)
        second, second_thread, second_failures = None, None, []
        try:
            _wait_until_waiting(own_schema_url, "CREATE INDEX")
            second, second_thread, second_failures = _start_in_thread(own_schema_url)
            time.sleep(1.5)  # the second one's build waits for the index lock
            first_thread.join(15)
            second_thread.join(15)
            assert not first_thread.is_alive() and not second_thread.is_alive(), "a start waited for the build"
            assert not first_failures and not second_failures, first_failures + second_failures
            running.commit()
            _wait_for_valid_index(own_schema_url, "classifications_failed")
            time.sleep(1.0)  # the second one's build finds it built
        finally:
            running.rollback()
            for store, thread in ((first, first_thread), (second, second_thread)):
                if thread is not None:
                    thread.join(30)
                    store.stop()
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert not errors, errors


def test_a_column_a_new_release_adds_beside_a_long_transaction_does_not_stop_other_writes(own_schema_url):
    """A long transaction (an operator's export, say) has read the table when a new release starts and adds a
    column. ALTER TABLE waited for it with the table's exclusive lock asked for, and every other replica's query
    queued behind it: here an insert times out. Now each try waits a moment and lets the queue go."""
    import psycopg

    with psycopg.connect(own_schema_url, autocommit=True) as admin:
        admin.execute("ALTER TABLE classifications DROP COLUMN error_kind")
    with psycopg.connect(own_schema_url) as long_reader:
        long_reader.execute("SELECT COUNT(*) FROM classifications")
        starting, thread, failures = _start_in_thread(own_schema_url)
        try:
            _wait_until_waiting(own_schema_url, "ALTER TABLE")
            for _ in range(3):
                with psycopg.connect(own_schema_url) as other_replica:
                    other_replica.execute("SET lock_timeout = '2s'")
                    _insert_row(other_replica)
                    other_replica.commit()
            assert thread.is_alive(), "the column was added while a transaction held the table"
            long_reader.rollback()
            thread.join(30)
            assert not thread.is_alive() and not failures, failures
            with psycopg.connect(own_schema_url) as check:
                check.execute("SELECT error_kind FROM classifications")
        finally:
            long_reader.rollback()
            thread.join(30)
            starting.stop()
