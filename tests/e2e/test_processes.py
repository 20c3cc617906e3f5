"""`tenantkeys demo` (with a running Redis and with none); `tenantkeys dev` + sign --via-queue;
the local stack's life cycle: stopped whole on SIGHUP (through `scripts/run`), one per data dir
(a second one names the first), a stale pid file ignored, a taken port named with its option.

Every process is real; every wait is bounded. Ports are free ones and the data dir is the
test's own, so nothing here collides with a stack or worker running beside the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, port_open, service_missing
from tests.e2e.harness import wait_for
from tests.redis_databases import lease_database

pytestmark = pytest.mark.e2e
ENTRY = "import sys; from tenantkeys.cli import main; sys.exit(main())"
ROOT = Path(__file__).resolve().parents[2]
HAS_PROC = Path("/proc/self/stat").is_file()
STACK = ("dev", "redis", "worker", "beat", "flower")
#: The stack starts in a few seconds and stops in about five; generous bounds, never waited out.
START_SECONDS = 90
STOP_SECONDS = 60


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
            # Not the default 9808: a worker beside the tests may hold it, and dev refuses then.
            "TENANTKEYS_WORKER_METRICS_PORT": str(free_port()),
        }
    )
    return env


@pytest.mark.parametrize("redis", ["running", "none"])
def test_demo_exits_zero(redis: str, tmp_path: Path) -> None:
    leased = None
    if redis == "running":
        if not port_open(REDIS_HOST, REDIS_PORT):
            service_missing("Redis")
        leased = lease_database("demo")  # the demo's queues carry no prefix
        url = leased.url
    else:
        url = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers: the bundled one starts
    try:
        done = subprocess.run(  # noqa: PLW1510
            [sys.executable, "-c", ENTRY, "demo"],
            env=cli_env(tmp_path, url),
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
        )
    finally:
        if leased is not None:
            leased.release()
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


# -- the local stack's life cycle ----------------------------------------------------------


def started(pid: int) -> str | None:
    """The start time of a running process (/proc field 22), None if gone or a zombie: an
    orphan's zombie stays while this machine's init does not reap it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    return None if fields[0] in "ZXx" else fields[19]


def alive(pid: int) -> bool:
    if HAS_PROC:
        return started(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def still_ours(entry: dict[str, Any]) -> bool:
    """Whether the process a pid file entry names still runs (its PID not reused)."""
    return started(entry["pid"]) == entry["started"] if HAS_PROC else alive(entry["pid"])


def stack_env(tmp: Path) -> tuple[dict[str, str], dict[str, int]]:
    """An environment for a whole stack on free ports; Redis on a port nothing answers."""
    ports = {"redis": free_port(), "worker": free_port(), "flower": free_port()}
    env = cli_env(tmp, f"redis://127.0.0.1:{ports['redis']}/0")  # the bundled one starts
    env["TENANTKEYS_WORKER_METRICS_PORT"] = str(ports["worker"])
    return env, ports


def recorded(tmp: Path) -> dict[str, dict[str, Any]]:
    """The processes ``<data_dir>/dev.pid`` lists, by name; {} while there is none."""
    try:
        entries = json.loads((tmp / "dev.pid").read_text())["processes"]
    except (FileNotFoundError, ValueError):
        return {}
    return {entry["name"]: entry for entry in entries}


def strangers(tmp: Path, stack: dict[str, Any]) -> set[int]:
    """Live processes of this test's data dir (children inherit the variable) outside the
    process groups of ``stack``: each of its processes leads one, pool and server included."""
    marker = f"TENANTKEYS_DATA_DIR={tmp}".encode()
    groups = {entry["pid"] for entry in stack.values()}
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                pid = int(entry.name)
                environ = (entry / "environ").read_bytes().split(b"\0")
                if marker in environ and alive(pid) and os.getpgid(pid) not in groups:
                    found.add(pid)
    return found


class Dev:
    """One `tenantkeys dev` (or `scripts/run`) under test, its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], tmp: Path) -> None:
        self.tmp = tmp
        self.out = tmp / f"dev-{len(list(tmp.glob('dev-*.out')))}.out"
        # SIGHUP at its default, as a terminal's shell starts it, even if this runs under nohup.
        hangup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
        try:
            with open(self.out, "wb") as out:
                self.process = subprocess.Popen(
                    argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
                    start_new_session=True,
                )  # fmt: skip
        finally:
            signal.signal(signal.SIGHUP, hangup)
        self.seen: dict[str, dict[str, Any]] = {}

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def running(self, ports: dict[str, int]) -> dict[str, Any]:
        """Wait until the pid file lists the whole stack and every port answers; the file."""

        def up() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"dev exited {self.process.returncode}: {self.output()}")
            self.seen = recorded(self.tmp) or self.seen
            if set(STACK) <= set(self.seen) and all(
                port_open("127.0.0.1", p) for p in ports.values()
            ):
                return self.seen
            return None

        return wait_for(up, START_SECONDS, "the whole stack to run", 0.2)

    def cleanup(self) -> None:
        """Whatever the test did: dev stopped, and nothing it recorded left running."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for entry in (recorded(self.tmp) or self.seen).values():
            if entry["name"] != "dev" and still_ours(entry):
                with suppress(ProcessLookupError):
                    os.killpg(entry["pid"], signal.SIGKILL)


@contextmanager
def dev_running(argv: list[str], env: dict[str, str], tmp: Path) -> Iterator[Dev]:
    dev = Dev(argv, env, tmp)
    try:
        yield dev
    finally:
        dev.cleanup()


def assert_all_gone(stack: dict[str, Any], ports: dict[str, int]) -> None:
    left = {name: entry["pid"] for name, entry in stack.items() if still_ours(entry)}
    assert not left, f"still running: {left}"
    bound = {name: port for name, port in ports.items() if port_open("127.0.0.1", port)}
    assert not bound, f"still bound: {bound}"


def sandboxed_run_script(tmp: Path) -> Path:
    """scripts/run as in a checkout, with this repository's venv and a no-op bootstrap.

    The real bootstrap installs the `all` extras when they are missing: minutes and the network.
    """
    scripts = tmp / "checkout" / "scripts"
    scripts.mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "run", scripts / "run")
    (scripts / "bootstrap").write_text("#!/usr/bin/env bash\nexit 0\n")
    (scripts / "bootstrap").chmod(0o755)
    (tmp / "checkout" / ".venv").symlink_to(ROOT / ".venv")
    return scripts / "run"


def test_sighup_to_scripts_run_stops_the_whole_stack_redis_last(tmp_path: Path) -> None:
    env, ports = stack_env(tmp_path)
    run = sandboxed_run_script(tmp_path)
    with dev_running([str(run), "--flower-port", str(ports["flower"])], env, tmp_path) as dev:
        stack = dev.running(ports)
        assert stack["dev"]["pid"] == dev.process.pid, "scripts/run must exec the dev command"
        assert {n: e["ports"] for n, e in stack.items()} == {
            "dev": [], "redis": [ports["redis"]], "worker": [ports["worker"]], "beat": [],
            "flower": [ports["flower"]],
        }  # fmt: skip
        started = time.monotonic()
        os.kill(dev.process.pid, signal.SIGHUP)  # the terminal closed
        assert dev.process.wait(timeout=STOP_SECONDS) == 0, dev.output()
        took = time.monotonic() - started
        assert_all_gone(stack, ports)
        assert not (tmp_path / "dev.pid").exists()
        stops = [
            line.split()[1]
            for line in dev.output().splitlines()
            if line.startswith("stopping ") and "(pid" in line
        ]
        assert stops == ["flower", "beat", "worker", "redis"], dev.output()
        worker_log = (tmp_path / "logs" / "worker.log").read_text(errors="replace")
        assert "Warm shutdown" in worker_log
        assert "Cannot connect to redis" not in worker_log  # Redis outlived the worker
        print(f"\nstack stopped {took:.1f} s after SIGHUP")


def test_a_second_dev_names_the_running_one_and_starts_nothing(tmp_path: Path) -> None:
    env, ports = stack_env(tmp_path)
    argv = [sys.executable, "-c", ENTRY, "dev", "--flower-port", str(ports["flower"])]
    with dev_running(argv, env, tmp_path) as dev:
        stack = dev.running(ports)
        pidfile = (tmp_path / "dev.pid").read_text()
        second = subprocess.run(  # noqa: PLW1510
            argv, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert second.returncode == 2, second.stdout + second.stderr
        line = second.stderr.strip()
        assert line.startswith("TK-PORT-IN-USE: tenantkeys dev already runs from"), line
        for entry in stack.values():
            assert f"{entry['name']} pid {entry['pid']}" in line, line
        for port in ports.values():
            assert str(port) in line, line
        assert "`tenantkeys dev --stop`" in line and f"`kill {dev.process.pid}`" in line, line
        assert "service running" not in second.stdout
        assert (tmp_path / "dev.pid").read_text() == pidfile
        if HAS_PROC:
            assert not strangers(tmp_path, stack), "the second dev started something"

        stop = subprocess.run(  # noqa: PLW1510
            [sys.executable, "-c", ENTRY, "dev", "--stop"],
            env=env, capture_output=True, text=True, timeout=STOP_SECONDS + 30, cwd=tmp_path,
        )  # fmt: skip
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert dev.process.wait(timeout=10) == 0
        assert_all_gone(stack, ports)
        assert not (tmp_path / "dev.pid").exists()


@pytest.mark.skipif(not HAS_PROC, reason="telling a reused PID apart needs /proc")
def test_a_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    env, ports = stack_env(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stranger = subprocess.Popen(["sleep", "120"], start_new_session=True)
    stale = [  # a process that exited, and a live PID that is another process now (reused)
        {"name": "dev", "pid": gone.pid, "started": "1", "ports": []},
        {"name": "worker", "pid": stranger.pid, "started": "1", "ports": [ports["worker"]]},
    ]
    (tmp_path / "dev.pid").write_text(json.dumps({"processes": stale}))
    argv = [sys.executable, "-c", ENTRY, "dev", "--flower-port", str(ports["flower"])]
    try:
        with dev_running(argv, env, tmp_path) as dev:
            stack = dev.running(ports)
            assert stack["dev"]["pid"] == dev.process.pid
            assert "TK-" not in dev.output()
            dev.process.send_signal(signal.SIGTERM)
            assert dev.process.wait(timeout=STOP_SECONDS) == 0, dev.output()
            assert_all_gone(stack, ports)
        assert stranger.poll() is None, "the PID of a stale entry was signalled"
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize(
    ("case", "names"),
    [
        pytest.param("flower --port", "tenantkeys flower --port P", id="flower"),
        pytest.param("dev --flower-port", "tenantkeys dev --flower-port P", id="dev-flower"),
        pytest.param("dev, worker metrics", "TENANTKEYS_WORKER_METRICS_PORT=P", id="dev-metrics"),
        pytest.param(
            "dev, bundled Redis", "TENANTKEYS_REDIS_URL=redis://127.0.0.1:P/0", id="dev-redis"
        ),
        pytest.param("api --port", "tenantkeys api --port P", id="api"),
    ],
)
def test_a_taken_port_is_one_coded_line_naming_it(case: str, names: str, tmp_path: Path) -> None:
    env, ports = stack_env(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        argv = {
            "flower --port": ["flower", "--port", str(taken)],
            "dev --flower-port": ["dev", "--flower-port", str(taken)],
            "dev, worker metrics": ["dev", "--flower-port", str(ports["flower"])],
            "dev, bundled Redis": ["dev", "--flower-port", str(ports["flower"])],
            "api --port": ["api", "--port", str(taken)],
        }[case]
        if case == "dev, worker metrics":
            env["TENANTKEYS_WORKER_METRICS_PORT"] = str(taken)
        if case == "dev, bundled Redis":
            env["TENANTKEYS_REDIS_URL"] = f"redis://127.0.0.1:{taken}/0"  # answers no PING
        done = subprocess.run(  # noqa: PLW1510
            [sys.executable, "-c", ENTRY, *argv],
            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    line = done.stderr.strip()
    assert done.returncode == 2, done.stdout + line
    assert line.startswith(f"TK-PORT-IN-USE: port {taken} "), line
    assert names in line and "#tk-port-in-use" in line, line
    assert "\n" not in line
    assert not (tmp_path / "dev.pid").exists() and not (tmp_path / "logs").exists()
