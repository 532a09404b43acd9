"""Fixtures shared by every test: a fresh PostgreSQL database per session on the machine's real server."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

# The machine's PostgreSQL (trust auth). Override with TEST_POSTGRES_ADMIN_URL.
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_url():
    """A database of its own for this test session, dropped afterwards."""
    name = f"product_classification_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
