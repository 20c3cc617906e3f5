"""L2 on a real Redis, and invalidation across processes over pub/sub."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tenantkeys.keys.model import Purpose
from tenantkeys.providers.local import LocalProvider
from tests.helpers import StatementCounter, make_service

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def test_l1_miss_reads_l2_not_the_database(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    client = redis.Redis.from_url(redis_url)
    first = make_service(
        db, LocalProvider(tmp_path / "m.key"), redis_client=client, prefix=redis_prefix
    )
    first.create_keys("acme")
    first.sign("acme", b"warm")  # fills L2
    second = make_service(
        db, LocalProvider(tmp_path / "m.key"), redis_client=client, prefix=redis_prefix
    )
    counter = StatementCounter(second.store.engine)
    second.sign("acme", b"p")
    assert counter.count == 0  # L2 hit: no database read ...
    assert second.providers.total_calls() == 1  # ... and exactly one KMS unwrap
    assert second.l2 is not None and second.l2.stats.hits == 1
    first.close()
    second.close()


def test_l2_outage_degrades_to_the_store(tmp_path: Path) -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    svc = make_service(
        f"sqlite:///{tmp_path / 'k.db'}", LocalProvider(tmp_path / "m.key"), redis_client=dead
    )
    svc.create_keys("acme")
    assert svc.sign("acme", b"p").kid
    assert svc.rotate("acme", "signing").rotated  # invalidation fails, rotation does not
    svc.close()


def test_rotation_in_one_process_invalidates_l1_in_another(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    master = tmp_path / "m.key"
    rotator = make_service(
        db, LocalProvider(master), redis_client=redis.Redis.from_url(redis_url), prefix=redis_prefix
    )
    rotator.create_keys("acme")
    other = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.signer_process",
            db,
            redis_url,
            redis_prefix,
            str(master),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdin and other.stdout
        assert json.loads(other.stdout.readline())["ready"]

        def ask() -> dict[str, object]:
            assert other.stdin and other.stdout
            other.stdin.write("acme\n")
            other.stdin.flush()
            return json.loads(other.stdout.readline())

        warm = ask()
        cached = ask()
        assert cached["kid"] == warm["kid"]
        assert (
            cached["kms_calls"] == warm["kms_calls"]
            and cached["db_statements"] == warm["db_statements"]
        )
        rotator.rotate("acme", "signing")
        new_kid = rotator.store.active("acme", Purpose.SIGNING).kid  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        seen = ask()
        while seen["kid"] != new_kid and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = ask()
        assert seen["kid"] == new_kid
    finally:
        other.kill()
        other.wait()
        rotator.close()
