"""The real ``tenantkeys`` command in a subprocess, with a clean environment of our own.

Shared by the CLI mistakes table and the key-store location tests: Redis DB 4 (no other test
uses it), a unique key prefix per deployment, every key under it deleted afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing

#: The CLI tests' own Redis database.
CLI_REDIS_DB = 4
#: One coded line: ``[invalid: ]TK-CODE: message (see docs/...md#anchor)``.
CODED_LINE = re.compile(
    r"^(?:invalid: )?(?P<code>TK-[A-Z0-9-]+): (?P<message>.+) "
    r"\(see (?P<page>docs/[\w/.-]+\.md)#(?P<anchor>[a-z0-9-]+)\)$"
)


@dataclass
class Cli:
    """Runs ``python -m tenantkeys`` with ``env`` (no TENANTKEYS_* of the developer's)."""

    env: dict[str, str]
    cwd: Path
    extra: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tenantkeys", *args],
            check=False,
            env={**self.env, **(env or {})},
            cwd=cwd or self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        done = self.run(*args, cwd=cwd)
        assert done.returncode == 0, done.stderr
        return done.stdout


def redis_url() -> str:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{CLI_REDIS_DB}"


def clean_environment() -> dict[str, str]:
    """This process's environment without tenantkeys' variables or prometheus-client's."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TENANTKEYS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }


@contextmanager
def cli_deployment(cwd: Path) -> Iterator[Cli]:
    """A :class:`Cli` on Redis DB 4 under a fresh prefix; its keys are deleted afterwards."""
    import redis

    url = redis_url()
    prefix = f"tkcli-{uuid.uuid4().hex[:12]}"
    env = clean_environment()
    env.update(TENANTKEYS_REDIS_URL=url, TENANTKEYS_REDIS_PREFIX=prefix)
    try:
        yield Cli(env, cwd)
    finally:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()
