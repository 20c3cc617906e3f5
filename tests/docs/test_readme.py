"""The README: its configuration table names every setting, and only real ones; its links
resolve; and its walk reaches a verified signature from a fresh clone with no Redis running.

The walk runs as a newcomer would (the convention is in a comment at the top of the walk in
README.md): a copy of what a clone holds, with no ``.venv``; ``scripts/run`` creates one from
the lock and starts the stack, Redis included (its URL points at a port where none answers,
so the bundled server starts, as on a machine with no Redis); once it prints "service
running", every ```bash block of the README runs in order, in its own shell, against that
stack; then the stack is stopped. Nothing asserts on time: the durations are printed (clone
to verified signature), each step has a generous bound.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tenantkeys.keys.kms import setting_variables
from tests.conftest import free_port, port_open
from tests.docs import markdown
from tests.docs.test_quickstart import clean_checkout, run_block, runnable_blocks

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
#: Pages the README must lead to (issue 16: quickstart, verifying, the reference pages).
LINKED = (
    "docs/setup/KMS_QUICKSTART.md",
    "docs/verifying.md",
    "docs/architecture.md",
    "docs/performance.md",
    "docs/reliability.md",
    "docs/runbooks/README.md",
    "docs/kb/README.md",
    "docs/development.md",
)
#: A first run installs .venv (seconds from a warm uv cache, about a minute from an empty one)
#: before the stack starts; a bound, never waited out.
START_SECONDS = 600
STOP_SECONDS = 90
RUNNING = "service running"
WALK = "From a clone to a verified signature"


@pytest.mark.unit
def test_every_setting_is_in_the_readme() -> None:
    missing = sorted(v for v in setting_variables() if f"`{v}`" not in README)
    assert not missing, f"README configuration table lacks {missing}"


@pytest.mark.unit
def test_every_variable_in_the_readme_is_a_setting() -> None:
    named = set(re.findall(r"`(TENANTKEYS_[A-Z0-9_]+)`", README))
    assert named - setting_variables() == set()


@pytest.mark.unit
def test_the_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    assert "scripts/run" in first_block and "scripts/test" in first_block
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.unit
def test_the_readme_links_resolve_and_lead_to_every_guide() -> None:
    targets = [t for t in markdown.links(README) if not re.match(r"^[a-z]+:", t)]
    for target in targets:
        path, _, anchor = target.partition("#")
        page = ROOT / path if path else ROOT / "README.md"
        assert page.exists(), f"README: broken link {target}"
        if anchor and page.suffix == ".md":
            assert anchor in markdown.anchors(page.read_text()), f"README: no #{anchor} in {path}"
    linked = {t.partition("#")[0] for t in targets}
    assert set(LINKED) <= linked, f"README does not link {sorted(set(LINKED) - linked)}"


@pytest.mark.unit
def test_the_walk_signs_through_the_queue_and_verifies_twice() -> None:
    lines = README.splitlines()
    first = lines.index(f"## {WALK}") + 1
    last = next(n for n in range(first, len(lines)) if lines[n].startswith("## "))
    walk = [b for b in markdown.blocks(README) if first < b.line <= last]
    assert walk and walk[0].info == "console" and walk[0].text.startswith("$ scripts/run\n")
    runnable = runnable_blocks(README)
    assert all(first < b.line <= last for b in runnable), (
        "a ```bash block outside the walk would run against the stack: fence it ```console"
    )
    scripts = "\n".join(block.text for block in runnable)
    for step in ("keys create", "--via-queue", "tenantkeys jwks", "tenantkeys verify", "jwt"):
        assert step in scripts, f"the walk no longer runs `{step}`"


# -- the walk, from a fresh clone ----------------------------------------------------------


def newcomer_env(redis_port: int, metrics_port: int) -> dict[str, str]:
    """The caller's environment without any tenantkeys, KMS or virtualenv setting; the stack's
    ports moved off the defaults so that it runs beside any other stack on this machine."""
    dropped = ("TENANTKEYS_", "VAULT_", "BAO_", "AWS_", "GOOGLE_", "AZURE_", "PROMETHEUS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    env["TENANTKEYS_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    env["TENANTKEYS_WORKER_METRICS_PORT"] = str(metrics_port)
    return env


@contextmanager
def service(
    checkout: Path, env: dict[str, str], flower_port: int
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``scripts/run`` in the foreground of its own session, its output in a file; stopped
    (SIGTERM, as Ctrl-C) at the end, and whatever it left stopped by ``tenantkeys dev --stop``."""
    out = checkout / "scripts-run.out"
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            ["scripts/run", "--flower-port", str(flower_port)],
            cwd=checkout, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process, out
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)  # scripts/run execs the dev command
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if (checkout / ".venv" / "bin" / "tenantkeys").exists():
            subprocess.run(
                [".venv/bin/tenantkeys", "dev", "--stop"],
                cwd=checkout, env=env, capture_output=True, timeout=STOP_SECONDS, check=False,
            )  # fmt: skip


def wait_running(process: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    """Wait for "service running"; the processes the pid file then lists, by name."""
    deadline = time.monotonic() + START_SECONDS
    while RUNNING not in (text := out.read_text(errors="replace")):
        assert process.poll() is None, f"scripts/run exited {process.returncode}:\n{text}"
        assert time.monotonic() < deadline, f"no {RUNNING!r} after {START_SECONDS} s:\n{text}"
        time.sleep(0.5)
    pidfile = out.parent / ".tenantkeys" / "dev.pid"
    return {p["name"]: p for p in json.loads(pidfile.read_text())["processes"]}


@pytest.mark.e2e
def test_a_fresh_clone_walks_the_readme_to_a_verified_signature(tmp_path: Path) -> None:
    blocks = runnable_blocks(README)
    assert len(blocks) >= 4, "the README lost its walk"
    started = time.monotonic()
    checkout = clean_checkout(tmp_path / "clone", venv=None)
    redis_port = free_port()
    assert not port_open("127.0.0.1", redis_port)
    env = newcomer_env(redis_port, metrics_port=free_port())

    with service(checkout, env, flower_port=free_port()) as (process, out):
        processes = wait_running(process, out)
        up = time.monotonic() - started
        assert {"redis", "worker", "beat", "flower"} <= set(processes), processes
        assert processes["redis"]["ports"] == [redis_port], "not the bundled Redis"
        outputs = [run_block(block, checkout, env, page="README") for block in blocks]
        walked = time.monotonic() - started

    assert not (tmp_path / "clone" / ".venv").is_symlink()
    assert any('"valid": true' in output for output in outputs), "tenantkeys verified nothing"
    assert any("verified with PyJWT" in output for output in outputs), "no independent check"
    print(
        f"\nfresh clone: copy, .venv from uv.lock and the stack up in {up:.1f} s; "
        f"README walked to a verified signature at {walked:.1f} s"
    )
