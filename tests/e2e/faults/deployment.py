"""The fault suite's deployments: each in a Redis database leased to it alone, under a private
prefix, flushed afterwards, and the operator's dead-letter replay run against them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e import harness
from tests.e2e.harness import Deployment


def fault_deployment(tmp: Path, broker_url: str | None = None, **overrides: Any) -> Deployment:
    """A :class:`Deployment` (its own Redis database) under a ``tkfault-`` prefix.

    A string in ``overrides`` may name the leased database: ``{leased}`` (its URL) or ``{db}``
    (its number, for a URL that reaches it through a proxy).
    """
    made = Deployment(tmp)
    leased = {"leased": made.redis_db.url, "db": made.redis_db.number}
    for name, value in overrides.items():
        made.values[name] = value.format(**leased) if isinstance(value, str) else value
    made.values["broker_url"] = broker_url or made.values["redis_url"]
    made.prefix = f"tkfault-{uuid.uuid4().hex[:10]}"
    made.values["redis_prefix"] = made.prefix
    return made


def on_broker(broker: str, tmp: Path) -> Iterator[Deployment]:
    """A fault deployment on ``broker`` (see :func:`tests.e2e.harness.on_broker`)."""
    yield from harness.on_broker(broker, tmp, fault_deployment)


def replay_all(deployment: Deployment, extra_env: dict[str, str] | None = None) -> str:
    """``tenantkeys dlq replay --all`` as an operator runs it; returns its output."""
    done = subprocess.run(
        [
            os.environ.get("TK_PYTHON", sys.executable),
            "-c",
            "import sys; from tenantkeys.cli import main; sys.exit(main())",
            "dlq",
            "replay",
            "--all",
        ],
        env=deployment.env(extra_env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout
