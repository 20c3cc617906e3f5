"""The real ``tenantkeys`` command in a subprocess, with a clean environment of our own.

Shared by the CLI mistakes table and the key-store location tests: a Redis database leased to
the deployment alone (Celery's queue and result keys carry no prefix), flushed afterwards.
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


def clean_environment() -> dict[str, str]:
    """This process's environment without tenantkeys' variables or prometheus-client's."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TENANTKEYS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }


@contextmanager
def cli_deployment(cwd: Path) -> Iterator[Cli]:
    """A :class:`Cli` on a Redis database of its own, under a fresh prefix; flushed afterwards."""
    from tests.redis_databases import lease_database

    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    leased = lease_database("cli")
    prefix = f"tkcli-{uuid.uuid4().hex[:12]}"
    env = clean_environment()
    env.update(TENANTKEYS_REDIS_URL=leased.url, TENANTKEYS_REDIS_PREFIX=prefix)
    try:
        yield Cli(env, cwd)
    finally:
        leased.release()
