"""Shared fixtures: real services on loopback, skipped locally when absent, failed under CI."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.servers.fixtures"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_HOST = os.environ.get("TK_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TK_TEST_REDIS_PORT", "6379"))
#: Redis database the core tests use; every test writes under its own prefix and cleans it.
REDIS_TEST_DB = 11
POSTGRES_URL = os.environ.get(
    "TK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def service_missing(what: str) -> None:
    """Skip when a service is absent on a developer machine; fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI but is not available", pytrace=False)
    pytest.skip(f"{what} not available")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_url() -> str:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix; every key under it is deleted after the test."""
    import redis

    prefix = f"tktest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_database(redis_url: str) -> Iterator[str]:
    """The URL of a Redis database leased to this test alone (for Celery's unprefixed queue and
    result keys); flushed before and after (:mod:`tests.redis_databases`)."""
    from tests.redis_databases import lease_database

    leased = lease_database("pytest")
    yield leased.url
    leased.release()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards."""
    import sqlalchemy as sa

    if not port_open("127.0.0.1", 5432):
        service_missing("PostgreSQL at 127.0.0.1:5432")
    schema = f"tk_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def master_key_file(tmp_path: Path) -> Path:
    return tmp_path / "master.key"
