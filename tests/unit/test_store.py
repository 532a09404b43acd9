"""The result store on SQLite and on the real PostgreSQL: idempotent writes, queries in order."""

import pytest

from services.common.contracts.product_classification.v1 import common_pb2
from services.results.store import ClassificationStore


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
