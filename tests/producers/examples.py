"""The producer examples of docs/contract/examples/, as a module and as a separate process.

In a process of their own (:func:`run_example`) the examples run where ``celery``, ``kombu``,
``amqp`` (kombu's RabbitMQ client) and ``tenantkeys`` cannot be imported, and with no
``TENANTKEYS_*`` setting: they work from the contract and their arguments alone.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "contract" / "examples"
#: Modules a producer written from the contract must not need.
FORBIDDEN = ("celery", "kombu", "amqp", "tenantkeys", "celery_batches")

_LAUNCH = f"""
import runpy, sys
sys.modules.update(dict.fromkeys({FORBIDDEN!r}))  # each import of them raises ImportError
sys.path.insert(0, {str(EXAMPLES)!r})
script = sys.argv.pop(1)
runpy.run_path(script, run_name="__main__")
"""


def example(name: str) -> ModuleType:
    """Import ``docs/contract/examples/<name>.py`` in this process (for unit tests)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def run_example(script: str, *args: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Run an example as its own process; the JSON lines it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKEYS_")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCH, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=EXAMPLES,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in done.stdout.splitlines()]
