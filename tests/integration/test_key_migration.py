"""Jobs and results under the old prefixed Celery keys move where Celery looks now, on a real
Redis: nothing lost, nothing copied twice (two movers at once), oldest first, expiry kept."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import redis

from tenantkeys import jobs
from tenantkeys.client import SigningClient
from tenantkeys.config import Settings, load_settings
from tenantkeys.errors import ConfigurationError, ErrorCode, InvalidRequest, TransientError
from tenantkeys.queue.broker import BrokerProbe
from tenantkeys.queue.migrate import PRIORITY_SEP, migrate_keys
from tests.conftest import free_port
from tests.integration.cli_runner import CODED_LINE, clean_environment
from tests.integration.old_keys import old_client, take_and_die

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, url: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "environment": "development",
        "database_url": f"sqlite:///{tmp_path / 'keys.db'}",
        "local_master_key_file": str(tmp_path / "master.key"),
        "redis_url": url,
        "broker_url": url,
        "result_backend": url,
        "redis_prefix": "tkold",
        **extra,
    }
    return load_settings(**values)


def _seed(settings: Settings, count: int) -> list[str]:
    """``count`` sign jobs published by the old producer; their ids, oldest first."""
    ids = [f"old-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    with old_client(settings) as client:
        client.submit_many([("acme", f"p{i}".encode()) for i in range(count)], job_ids=ids)
    return ids


def _queued_ids(raw: redis.Redis, key: str) -> list[str]:
    """Job ids of a kombu list, in the order a consumer takes them (its right end first)."""
    return [json.loads(m)["headers"]["id"] for m in raw.lrange(key, 0, -1)[::-1]]


def _scores(raw: redis.Redis, key: str) -> dict[bytes, float]:
    return {bytes(tag): float(score) for tag, score in raw.zscan_iter(key)}


def test_queued_jobs_move_oldest_first_behind_nothing_and_a_dry_run_moves_none(
    tmp_path: Path, redis_database: str
) -> None:
    settings = _settings(tmp_path, redis_database)
    raw = redis.Redis.from_url(redis_database)
    ids = _seed(settings, 40)
    assert raw.llen(f"tkold:{jobs.SIGN_QUEUE}") == 40  # where the old versions put them
    with old_client(settings) as client:  # one on a priority list, as kombu writes it
        client.app.send_task(
            jobs.SIGN,
            kwargs={"tenant_id": "acme", "payload": jobs.encode_payload(b"x")},
            task_id="old-priority",
            queue=jobs.SIGN_QUEUE,
            priority=6,
        )
    assert raw.llen(f"tkold:{jobs.SIGN_QUEUE}{PRIORITY_SEP}6") == 1

    dry = migrate_keys(settings, dry_run=True)
    assert dry.queued == {jobs.SIGN_QUEUE: 41, jobs.KEYS_QUEUE: 0, jobs.MAINTENANCE_QUEUE: 0}
    assert raw.llen(f"tkold:{jobs.SIGN_QUEUE}") == 40 and raw.llen(jobs.SIGN_QUEUE) == 0

    # A job published by this version meanwhile waits behind the old ones.
    with SigningClient.from_settings(settings) as client:
        client.submit("acme", b"new", job_id="new-one")
    moved = migrate_keys(settings)
    assert moved.queued[jobs.SIGN_QUEUE] == 41 and moved.total == 41
    assert _queued_ids(raw, jobs.SIGN_QUEUE) == [*ids, "new-one"]
    assert _queued_ids(raw, f"{jobs.SIGN_QUEUE}{PRIORITY_SEP}6") == ["old-priority"]
    assert BrokerProbe.from_settings(settings).queue_depths()[jobs.SIGN_QUEUE] == 42
    assert not list(raw.scan_iter(f"tkold:{jobs.SIGN_QUEUE}*"))
    assert migrate_keys(settings).total == 0  # twice: nothing more
    raw.close()


def test_two_movers_at_once_move_each_job_exactly_once(tmp_path: Path, redis_database: str) -> None:
    settings = _settings(tmp_path, redis_database)
    ids = _seed(settings, 1500)
    counts: list[int] = []
    start = threading.Barrier(3)

    def mover() -> None:
        start.wait()
        counts.append(migrate_keys(settings).queued[jobs.SIGN_QUEUE])

    threads = [threading.Thread(target=mover) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    raw = redis.Redis.from_url(redis_database)
    assert sum(counts) == 1500, counts
    assert _queued_ids(raw, jobs.SIGN_QUEUE) == ids  # each once, in order
    raw.close()


def test_unacked_records_of_a_dead_old_worker_keep_their_timestamp(
    tmp_path: Path, redis_database: str
) -> None:
    settings = _settings(tmp_path, redis_database)
    raw = redis.Redis.from_url(redis_database)
    _seed(settings, 6)
    take_and_die(settings, jobs.SIGN_QUEUE, 4)
    held = raw.hgetall("tkold:unacked")
    scores = _scores(raw, "tkold:unacked_index")
    assert len(held) == 4 and set(scores) == set(held)
    raw.zadd("tkold:unacked_index", {"orphan": 1.0})  # an index entry without its record

    assert migrate_keys(settings, dry_run=True).unacked == 4
    assert raw.hlen("tkold:unacked") == 4 and raw.hlen("unacked") == 0
    moved = migrate_keys(settings)
    assert (moved.unacked, moved.queued[jobs.SIGN_QUEUE]) == (4, 2)
    assert raw.hgetall("unacked") == held
    assert _scores(raw, "unacked_index") == scores
    assert not raw.exists("tkold:unacked", "tkold:unacked_index")
    raw.close()


def test_results_move_with_their_expiry_and_a_newer_result_wins(
    tmp_path: Path, redis_database: str
) -> None:
    settings = _settings(tmp_path, redis_database)
    raw = redis.Redis.from_url(redis_database)
    with old_client(settings) as old:
        old.app.backend.store_result("done-before", {"ok": True, "old": True}, "SUCCESS")
        old.app.backend.store_result("ran-again", {"ok": True, "old": True}, "SUCCESS")
    with SigningClient.from_settings(settings) as client:
        client.app.backend.store_result("ran-again", {"ok": True, "old": False}, "SUCCESS")
        assert client.producer.state("done-before").status == "PENDING"  # not found yet
        assert migrate_keys(settings, dry_run=True).results == 2
        moved = migrate_keys(settings)
        assert moved.results == 1
        assert client.producer.state("done-before").result == {"ok": True, "old": True}
        assert client.producer.state("ran-again").result == {"ok": True, "old": False}
    ttl = raw.ttl("celery-task-meta-done-before")
    assert 0 < ttl <= settings.result_expires_seconds
    assert not list(raw.scan_iter("tkold:celery-task-meta-*"))
    raw.close()


def test_refusals_are_coded(tmp_path: Path, redis_database: str) -> None:
    settings = _settings(tmp_path, redis_database)
    with pytest.raises(InvalidRequest) as bad:
        migrate_keys(settings, prefix="no spaces")
    assert bad.value.code == ErrorCode.INVALID_ARGUMENT
    raw = redis.Redis.from_url(redis_database)
    raw.set(f"tkold:{jobs.SIGN_QUEUE}", "not a list")
    with pytest.raises(ConfigurationError) as wrong:
        migrate_keys(settings)
    assert wrong.value.code == ErrorCode.CONFIG_INVALID
    raw.close()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(TransientError) as down:
        migrate_keys(_settings(tmp_path, redis_database, broker_url=dead))
    assert down.value.code == ErrorCode.BROKER_UNAVAILABLE


def test_the_command_counts_moves_and_refuses_with_one_coded_line(
    tmp_path: Path, redis_database: str
) -> None:
    settings = _settings(tmp_path, redis_database)
    ids = _seed(settings, 5)
    env = clean_environment()
    env.update(TENANTKEYS_REDIS_URL=redis_database, TENANTKEYS_REDIS_PREFIX="tkold")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tenantkeys", "queue", "migrate-keys", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    dry = run("--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["queued"][jobs.SIGN_QUEUE] == 5
    assert json.loads(dry.stdout)["dry_run"] is True
    done = run()
    assert done.returncode == 0, done.stderr
    assert f"{jobs.SIGN_QUEUE}: moved 5 queued job(s)" in done.stdout
    again = run("--json")
    assert json.loads(again.stdout)["total"] == 0
    raw = redis.Redis.from_url(redis_database)
    assert _queued_ids(raw, jobs.SIGN_QUEUE) == ids
    raw.close()
    refused = run("--prefix", "no spaces")
    assert refused.returncode == 2
    line = CODED_LINE.match(refused.stderr.strip().splitlines()[-1])
    assert line is not None and line["code"] == ErrorCode.INVALID_ARGUMENT, refused.stderr
