"""`tenantkeys demo` (with a running Redis and with none); `tenantkeys dev` + sign --via-queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, port_open, service_missing
from tests.e2e.harness import REDIS_DB, wait_for

pytestmark = pytest.mark.e2e
ENTRY = "import sys; from tenantkeys.cli import main; sys.exit(main())"


def cli_env(tmp: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKEYS_")}
    env.update(
        {
            "TENANTKEYS_REDIS_URL": redis_url,
            "TENANTKEYS_DATABASE_URL": f"sqlite:///{tmp / 'keys.db'}",
            "TENANTKEYS_LOCAL_MASTER_KEY_FILE": str(tmp / "master.key"),
            "TENANTKEYS_DEAD_LETTER_KEY_FILE": str(tmp / "deadletter.key"),
            "TENANTKEYS_DATA_DIR": str(tmp),
            "TENANTKEYS_REDIS_PREFIX": f"tkproc{free_port()}",
        }
    )
    return env


@pytest.mark.parametrize("redis", ["running", "none"])
def test_demo_exits_zero(redis: str, tmp_path: Path) -> None:
    if redis == "running":
        if not port_open(REDIS_HOST, REDIS_PORT):
            service_missing("Redis")
        url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    else:
        url = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers: the bundled one starts
    done = subprocess.run(  # noqa: PLW1510
        [sys.executable, "-c", ENTRY, "demo"],
        env=cli_env(tmp_path, url),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["signed_through_queue"] == 1000 and summary["verified"] == 1001
    assert summary["rotated"]["old_kid"] != summary["rotated"]["new_kid"]
    print(f"\ndemo ({redis} Redis): {summary['jobs_per_second']} jobs/s")


def test_dev_serves_sign_via_queue_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # bundled Redis on the configured port
    env = cli_env(tmp_path, url)
    dev = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "dev", "--no-flower"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(  # noqa: PLW1510
                [sys.executable, "-c", ENTRY, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
            )

        wait_for(
            lambda: port_open("127.0.0.1", int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])),
            60,
            "the bundled Redis",
        )
        created = wait_for(
            lambda: (r := run("keys", "create", "--tenant", "acme")).returncode == 0 and r,
            60,
            "keys create",
        )
        assert created
        signed = run(
            "sign", "--tenant", "acme", "--data", "hello", "--via-queue", "--timeout", "60"
        )
        assert signed.returncode == 0, signed.stderr
        result = json.loads(signed.stdout)
        assert set(result) == {"jws", "kid", "tenant_id", "alg", "payload_sha256", "signed_at"}
        verified = run("verify", "--tenant", "acme", "--data", "hello", "--jws", result["jws"])
        assert verified.returncode == 0, verified.stderr
    finally:
        os.killpg(dev.pid, signal.SIGTERM)  # the dev command stops its own children
        dev.wait(timeout=60)
    assert not port_open("127.0.0.1", int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]))
