"""The real local stack for integration tests: tansu broker, tritonserver on CPU, PostgreSQL, three service processes."""

from __future__ import annotations

import pytest

from services.common.contracts.product_classification.v1 import gateway_pb2_grpc, results_pb2_grpc
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.results.store import ClassificationStore


@pytest.fixture(scope="package")
def stack(postgres_url, tmp_path_factory):
    """One stack for the integration tests, stopped when they end (the unit tests after them run without it)."""
    work_dir = tmp_path_factory.mktemp("stack")
    with LocalStack(StackOptions(work_dir=work_dir, database_url=postgres_url, console=True)) as running:
        yield running
    print(f"local stack logs were in {work_dir}")


@pytest.fixture(scope="package")
def kafka(stack):
    return stack.kafka_settings


@pytest.fixture(scope="package")
def gateway(stack):
    with stack.gateway_channel() as channel:
        yield gateway_pb2_grpc.ListingClassifierStub(channel)


@pytest.fixture(scope="package")
def results(stack):
    with stack.internal_channel("results") as channel:
        yield results_pb2_grpc.ClassificationResultsStub(channel)


@pytest.fixture(scope="package")
def store(stack):
    """Direct read access to the same PostgreSQL database the result service writes."""
    direct = ClassificationStore(stack.database_url)
    direct.start()
    yield direct
    direct.stop()


__all__ = ["REPOSITORY_ROOT"]
