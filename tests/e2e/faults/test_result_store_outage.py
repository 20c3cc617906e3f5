"""The result store refusing connections for longer than Celery's reconnect retries.

Results go through a loopback TCP proxy to the fault Redis; the broker, cache and dead letters
use that Redis directly. The proxy is switched off for ``TK_FAULT_RESULT_OUTAGE_SECONDS``
(60 s by default: three times the ~20 s Celery spends retrying one result write) while signing
jobs keep arriving. A signing batch whose results cannot be stored must not ack its jobs: they
go back to the queue and are signed again once the store is back. Nothing is re-sent by the
test, so a job acked without its result would show as lost.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import REDIS_PORT
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import fault_deployment
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, send_sign_jobs
from tests.e2e.harness import TcpProxy

pytestmark = pytest.mark.e2e
OUTAGE_SECONDS = float(os.environ.get("TK_FAULT_RESULT_OUTAGE_SECONDS", "60"))
#: Worker log lines of a batch whose signed jobs went back to the queue (results not stored).
_NOT_STORED = re.compile(r"results of (\d+) signed jobs not stored")


def test_a_result_store_outage_longer_than_every_retry_loses_no_job(
    tmp_path: Path, record: FaultRecord
) -> None:
    record.fault = f"result store refusing connections {OUTAGE_SECONDS:g} s"
    proxy = TcpProxy(REDIS_PORT)
    proxy.start()
    deployment = fault_deployment(tmp_path, result_backend=f"redis://127.0.0.1:{proxy.port}/{{db}}")
    sent: list[Job] = []
    try:
        with ResultTap(deployment.redis_db.url) as tap:
            deployment.worker("w1", concurrency=2)
            with EventCapture(deployment) as events, deployment.client() as client:
                tenants = ["s1", "s2"]
                for tenant in tenants:
                    client.create_keys(tenant, ["signing"], timeout=60)
                sent += send_sign_jobs(client, tenants, 50, "before")
                proxy.stop()  # the result store is gone; the broker is not
                started = time.monotonic()
                wave = 0
                while time.monotonic() - started < OUTAGE_SECONDS:
                    sent += send_sign_jobs(client, tenants, 20, f"during{wave}")
                    wave += 1
                    time.sleep(2.0)
                record.fault_seconds = time.monotonic() - started
                proxy.start()
                recovery_started = time.monotonic()
                found = settle(deployment, sent, record, timeout=120)
                record.recover_seconds = time.monotonic() - recovery_started
            account(deployment, sent, found, record, tap=tap, events=events)
        caught = sum(int(n) for n in _NOT_STORED.findall(deployment.log("w1")))
        record.notes.append(
            f"{caught} signed job(s) found the result store down and went back to the queue "
            "instead of being acked (counted per attempt)"
        )
    finally:
        deployment.stop()
        proxy.stop()
    # The fault must have hit work in flight, or this run proves nothing.
    assert caught > 0, "void run: no signed job met the result-store outage"
    assert record.resent == 0, record  # nothing needed the client's re-send
    assert record.lost == 0 and record.duplicated == 0 and record.dead_lettered == 0, record
    assert record.signed == len(sent), record
