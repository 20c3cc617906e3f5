"""Shared fixtures and helpers of the ops API tests (no tests here).

They live in a ``test_api_*`` module because that is the API tests' own namespace; the test
modules import the fixtures by name. Redis: database 10, one fresh key prefix per test, deleted
afterwards. Processes started here are stopped by their own handle.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from tenantkeys.config import ENV_PREFIX, Settings, load_settings
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, port_open, service_missing
from tests.redis_databases import lease_database

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
READER_TOKEN = "reader-" + uuid.uuid4().hex
ROOT = Path(__file__).resolve().parents[2]


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)
READER = bearer(READER_TOKEN)


@pytest.fixture
def api_redis_url() -> Iterator[str]:
    """A Redis database of this test's own: Celery's queue and result keys carry no prefix."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    leased = lease_database("api")
    yield leased.url
    leased.release()


@pytest.fixture
def api_prefix(api_redis_url: str) -> Iterator[str]:
    """A unique Redis key prefix; every key under it is deleted after the test."""
    prefix = f"tkapi-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(api_redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def overrides_for(tmp_path: Path, redis_url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    """Settings of a private deployment: SQLite store, local KMS, our Redis DB and prefix."""
    return {
        "environment": "development",
        "kms_provider": "local",
        "database_url": f"sqlite:///{tmp_path / 'keys.db'}",
        "local_master_key_file": tmp_path / "master.key",
        "dead_letter_key_file": tmp_path / "deadletter.key",
        "data_dir": tmp_path,
        "redis_url": redis_url,
        "broker_url": redis_url,
        "result_backend": redis_url,
        "redis_prefix": prefix,
        "embedded_redis": False,
        "admin_token_sha256": sha256_hex(ADMIN_TOKEN),
        "reader_token_sha256": sha256_hex(READER_TOKEN),
        "kms_health_cache_seconds": 0.2,
        **extra,
    }


def environment(overrides: Mapping[str, Any]) -> dict[str, str]:
    """``TENANTKEYS_*`` variables for ``overrides`` (for a subprocess or CliRunner)."""
    return {ENV_PREFIX + name.upper(): str(value) for name, value in overrides.items()}


@pytest.fixture
def api_overrides(tmp_path: Path, api_redis_url: str, api_prefix: str) -> dict[str, Any]:
    return overrides_for(tmp_path, api_redis_url, api_prefix)


@pytest.fixture
def api_settings(api_overrides: dict[str, Any]) -> Settings:
    return load_settings(**api_overrides)


def wait_for(
    predicate: Callable[[], Any], what: str, attempts: int = 100, pause: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns something truthy; a bounded number of attempts."""
    for _ in range(attempts):
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError(f"gave up waiting for {what} after {attempts} attempts")


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=15) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class ApiProcess:
    """``tenantkeys api`` in a subprocess on a free loopback port."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "tenantkeys", "api", "--port", str(self.port)]
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(log_path.parent),
            )

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        return http_get(self.url + path, headers)

    def wait_live(self) -> None:
        def live() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the API exited: {self.log_path.read_text()[-3000:]}")
            try:
                return self.get("/health/live")[0] == 200
            except OSError:
                return False

        wait_for(live, "the API to answer /health/live", attempts=300)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@contextmanager
def api_process(env: Mapping[str, str], log_path: Path) -> Iterator[ApiProcess]:
    """A running API process for the block, stopped (by its own handle) afterwards."""
    started = ApiProcess(env, log_path)
    try:
        started.wait_live()
        yield started
    finally:
        started.stop()
