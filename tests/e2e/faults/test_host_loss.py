"""One of two worker hosts lost in the middle of a run: every job is signed, once.

A "host" here is what a machine runs of the service: a worker process group with its own
hostname, working directory, temporary directory and metrics directory (no shared files but the
deployment's key store, as a shared database would be). Network namespaces would make the hosts
more separate still; the broker sees what it sees when a machine goes: connections that stop
answering, then die.

Each burst is published while both hosts are frozen, then both are thawed. The host is lost
in two steps, as a machine that loses power or its network is: first it stops
answering (SIGSTOP to its whole process group), then its processes are gone (SIGKILL). Between
the two, the other host drains everything it can; what is then still unfinished, not queued, is
exactly what the lost host holds. A round where it held nothing does not count: the host is
thawed and the next burst tried, and a run where no round caught a job fails as void.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkeys import jobs
from tenantkeys.queue.broker import BrokerProbe
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import on_broker
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, burst, results
from tests.e2e.harness import Deployment, wait_for

pytestmark = pytest.mark.e2e

#: Bursts tried before the run is void (a host that held nothing is thawed and tried again).
ROUNDS = 5
#: Jobs per burst: several times one host's prefetch (16 x 2), so both hosts hold some.
BURST = 600
TENANTS = ["h1", "h2", "h3", "h4"]


def _unfinished(deployment: Deployment, probe: BrokerProbe, sent: list[Job]) -> tuple[int, int]:
    """(jobs waiting in the queue, jobs sent without a result and not waiting)."""
    waiting = probe.queue_depths()[jobs.SIGN_QUEUE]
    done = len(results(deployment, [job.job_id for job in sent]))
    return waiting, max(0, len(sent) - done - waiting)


def _host(deployment: Deployment, name: str) -> tuple[Path, dict[str, str]]:
    """A host's own directories: working, temporary and metrics."""
    root = deployment.tmp / name
    for sub in ("tmp", "metrics"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root, {
        "TMPDIR": str(root / "tmp"),
        "HOME": str(root),
        "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics"),
    }


@pytest.fixture(params=["redis", "rabbitmq"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    yield from on_broker(request.param, tmp_path)


def test_a_worker_host_lost_mid_run_loses_nothing(
    deployment: Deployment, record: FaultRecord, secret_scan: SecretScan
) -> None:
    record.fault = "one of two worker hosts lost (frozen, then killed)"
    record.broker = (
        "redis" if deployment.settings.effective_broker_url.startswith("redis") else "rabbitmq"
    )
    probe = BrokerProbe.from_settings(deployment.settings)
    lost_root, lost_env = _host(deployment, "host-a")
    kept_root, kept_env = _host(deployment, "host-b")
    with ResultTap(deployment.settings.effective_result_backend) as tap:
        lost = deployment.worker("host-a", extra_env=lost_env, cwd=lost_root)
        kept = deployment.worker("host-b", extra_env=kept_env, cwd=kept_root)
        with EventCapture(deployment) as events, deployment.client() as client:
            for tenant in TENANTS:
                client.create_keys(tenant, ["signing"], timeout=60)
            sent: list[Job] = []
            caught = 0
            fault_started = time.monotonic()
            for round_ in range(ROUNDS):
                # The burst is published while both hosts are frozen, so neither can finish it
                # before anyone looks (hosts that keep up with the publisher hold nothing).
                for host in (lost, kept):
                    os.killpg(host.pid, signal.SIGSTOP)
                sent.extend(burst(client, TENANTS, BURST, f"round-{round_}"))
                for host in (lost, kept):
                    os.killpg(host.pid, signal.SIGCONT)
                # Freeze host A once the fleet holds work, never on a timer.
                wait_for(
                    lambda: _unfinished(deployment, probe, sent)[1],
                    60,
                    "the hosts to hold jobs",
                    0.005,
                )
                os.killpg(lost.pid, signal.SIGSTOP)
                # Host B drains the queue; what then stays unfinished is what host A holds.
                # (Read well within the visibility timeout, after which Redis would hand host
                # A's jobs to host B even though A is only frozen.)
                wait_for(
                    lambda: _unfinished(deployment, probe, sent)[0] == 0, 30, "the queue to drain"
                )
                held, steady_since = -1, time.monotonic()
                while time.monotonic() - steady_since < 1.0:
                    now = _unfinished(deployment, probe, sent)[1]
                    if now != held:
                        held, steady_since = now, time.monotonic()
                    time.sleep(0.05)
                record.notes.append(f"round {round_ + 1}: host A held {held} of {len(sent)} sent")
                if held > 0:
                    caught = held
                    break
                os.killpg(lost.pid, signal.SIGCONT)  # it held nothing: thaw it, try again
            deployment.kill(lost)  # SIGKILL to the frozen group: the host is gone
            record.fault_seconds = time.monotonic() - fault_started
            recovery_started = time.monotonic()
            found = settle(
                deployment,
                sent,
                record,
                timeout=deployment.settings.broker_visibility_timeout_seconds * 4,
            )
            record.recover_seconds = time.monotonic() - recovery_started
        account(deployment, sent, found, record, tap=tap, events=events)
        scan_run(
            secret_scan,
            deployment,
            [(job.job_id, job.payload) for job in sent],
            results=tap.raw,
            events=events.events,
        )
    probe.close()
    assert caught > 0, f"void run: host A held no job in {ROUNDS} rounds ({record.notes})"
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.resent == 0, record  # every job came back through the broker, none re-sent
    assert record.signed == len(sent), record
    assert kept.poll() is None, "the surviving host's worker exited"
