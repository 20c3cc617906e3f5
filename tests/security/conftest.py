"""Fixtures of the security tests: a local-KMS KeyService on SQLite with its L2 on the real
Redis (database 6, a unique prefix deleted afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tenantkeys.keys.service import KeyService
from tenantkeys.providers.local import LocalProvider
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.helpers import make_service

SECURITY_REDIS_DB = 6


@pytest.fixture
def l2_redis() -> Iterator[tuple[redis.Redis, str]]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=SECURITY_REDIS_DB)
    prefix = f"tksec-{uuid.uuid4().hex[:10]}"
    yield client, prefix
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def services(
    tmp_path: Path, l2_redis: tuple[redis.Redis, str]
) -> Iterator[Callable[[], KeyService]]:
    """``services()`` -> a new KeyService (fresh L1) over the same store, KMS and L2."""
    client, prefix = l2_redis
    made: list[KeyService] = []

    def build() -> KeyService:
        service = make_service(
            f"sqlite:///{tmp_path / 'keys.db'}",
            LocalProvider(tmp_path / "master.key"),
            redis_client=client,
            prefix=prefix,
        )
        made.append(service)
        return service

    yield build
    for service in made:
        service.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.security.hostile import CASES, CASES_PATH, REQUIRED_CASES, write_cases

    if not CASES:
        return
    write_cases()
    total = sum(CASES.values())
    terminalreporter.section("hostile input: generated cases")
    for category, count in sorted(CASES.items()):
        terminalreporter.write_line(f"{count:>7}  {category}")
    terminalreporter.write_line(f"{total:>7}  total (required per full run: {REQUIRED_CASES})")
    terminalreporter.write_line(f"written to {CASES_PATH}")
