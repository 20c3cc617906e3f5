"""Flower shows every job truthfully: a real worker, a real Flower (``tenantkeys flower``) and
headless chromium reading its pages, plus Flower's JSON API.

Four jobs: a signed ``sign`` (batched by celery-batches), a ``sign_batch``, a ``sign`` rejected
for an unknown tenant and a ``sign`` dead-lettered (its stored key tampered with, so the
envelope fails to open). Each must appear under its real name and final state, with received,
started and finished times, runtime, worker and redacted arguments (payload hash and size);
a failure shows its TK code. The Workers page counts 4 processed, 2 failed, 2 succeeded. No
payload byte, raw or base64, appears in any page, in the API or in the worker log, which has
one INFO line per signing batch with its ids and outcome counts.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tenantkeys import jobs
from tenantkeys.errors import TenantKeysError
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, port_open, service_missing
from tests.e2e.harness import Deployment, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
#: Payloads no page may show: each carries a marker that would be found raw or in base64.
SECRET = f"flower-secret-{uuid.uuid4().hex}"


def payload(n: int) -> bytes:
    return f"{SECRET}-{n}-".encode() * 3


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    if shutil.which(CHROMIUM) is None:
        service_missing(f"headless chromium at {CHROMIUM} (scripts/install-test-servers)")
    pytest.importorskip("flower")
    made = Deployment(tmp_path)
    yield made
    made.stop()


class Flower:
    """``tenantkeys flower`` on a free loopback port, read through its API and chromium."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        deployment.spawn(
            "flower",
            [sys.executable, "-m", "tenantkeys", "flower", "--port", str(self.port)],
            # Loopback only and no basic auth: Flower's JSON API must be opened explicitly.
            {"FLOWER_UNAUTHENTICATED_API": "true"},
        )
        self.chrome_profile = deployment.tmp / "chromium-profile"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=15) as reply:
            return json.loads(reply.read())

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/healthcheck", timeout=2).close()
        except OSError:
            return False
        return True

    def page(self, path: str) -> str:
        """The page's DOM after its scripts ran, as headless chromium renders it."""
        shown = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--user-data-dir={self.chrome_profile}",
                "--virtual-time-budget=8000",
                "--dump-dom",
                self.url + path,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shown.returncode == 0 and "<html" in shown.stdout, shown.stderr[-2000:]
        return shown.stdout


def tamper_with_key(deployment: Deployment, tenant: str) -> None:
    """Flip the last byte of the tenant's sealed secret: the envelope no longer opens."""
    engine = sa.create_engine(deployment.settings.database_url)
    with engine.begin() as conn:
        row = conn.execute(
            sa.text("SELECT id, wrapped_secret FROM key_versions WHERE tenant_id = :t"),
            {"t": tenant},
        ).one()
        sealed = bytearray(row.wrapped_secret)
        sealed[-1] ^= 0x01
        conn.execute(
            sa.text("UPDATE key_versions SET wrapped_secret = :s WHERE id = :i"),
            {"s": bytes(sealed), "i": row.id},
        )
    engine.dispose()


def row_cells(page: str, marker: str) -> list[str]:
    """The text of each cell of the table row holding ``marker``, as the browser rendered it."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S):
        if marker in row:
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            return [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in cells]
    raise AssertionError(f"no table row with {marker!r} in the page")


def no_payload_in(text: str, where: str) -> None:
    encoded = [base64.b64encode(payload(n)).decode()[:24] for n in range(4)]
    assert SECRET not in text, f"a payload shows in {where}"
    for fragment in encoded:
        assert fragment not in text, f"a base64 payload shows in {where}"


def test_flower_shows_every_job_truthfully(deployment: Deployment) -> None:
    runtime = deployment.runtime()
    runtime.service.create_keys("acme", ["signing"])
    runtime.service.create_keys("doomed", ["signing"])
    runtime.close()
    tamper_with_key(deployment, "doomed")

    deployment.worker("w1", concurrency=1)
    flower = Flower(deployment)
    wait_for(flower.answers, 60, "Flower to answer", 0.3)
    # Flower hears the worker's heartbeat events: its event receiver is connected.
    worker = wait_for(
        lambda: next(iter(flower.get("/workers?json=1").get("data", [])), None),
        30,
        "Flower to see the worker's events",
        0.5,
    )
    hostname = worker["hostname"]
    assert hostname.startswith("w1@")

    with deployment.client() as client:
        signed = client.submit("acme", payload(0)).job_id
        batch = client.send(
            jobs.SIGN_BATCH,
            {
                "items": [
                    {"tenant_id": "acme", "payload": jobs.encode_payload(payload(1))},
                    {"tenant_id": "acme", "payload": jobs.encode_payload(payload(2))},
                ]
            },
        )
        rejected = client.submit("ghost", payload(3)).job_id
        dead = client.submit("doomed", payload(0)).job_id
        client.wait(signed, 60)
        assert len(client.wait(batch, 60)["results"]) == 2
        with pytest.raises(TenantKeysError) as unknown:
            client.wait(rejected, 60)
        with pytest.raises(TenantKeysError) as lettered:
            client.wait(dead, 60)
    rejected_code, dead_code = unknown.value.code, lettered.value.code
    assert rejected_code == "TK-KEY-NOT-FOUND"
    assert "dead-lettered" in str(lettered.value) and deployment.deadletters().depth() == 1
    expected = {
        signed: (jobs.SIGN, "SUCCESS", [sha(payload(0))], None),
        batch: (jobs.SIGN_BATCH, "SUCCESS", [sha(payload(1)), sha(payload(2))], None),
        rejected: (jobs.SIGN, "FAILURE", [sha(payload(3))], rejected_code),
        dead: (jobs.SIGN, "FAILURE", [sha(payload(0))], dead_code),
    }

    # -- Flower's JSON API ------------------------------------------------------------------
    def settled() -> dict[str, Any] | None:
        tasks = flower.get("/api/tasks")
        done = all(tasks.get(i, {}).get("state") in ("SUCCESS", "FAILURE") for i in expected)
        return tasks if done else None

    tasks = wait_for(settled, 60, "Flower to see the four jobs finish", 0.5)
    for job_id, (name, state, hashes, code) in expected.items():
        task = tasks[job_id]
        assert task["name"] == name, job_id
        assert task["state"] == state, job_id
        assert task["worker"] == hostname
        for stamp in ("received", "started", "succeeded" if state == "SUCCESS" else "failed"):
            assert task[stamp], f"{name} {job_id} has no {stamp} time"
        assert task["received"] <= task["started"]
        assert task["runtime"] is not None and task["runtime"] >= 0
        for digest in hashes:
            assert digest in task["kwargs"], f"{job_id}: redacted arguments missing"
        if code is not None:
            assert code in task["exception"]
    no_payload_in(json.dumps(tasks), "Flower's /api/tasks")

    counts = flower.get("/workers?json=1")["data"][0]
    assert (counts["task-received"], counts["task-succeeded"], counts["task-failed"]) == (4, 2, 2)
    # The worker's own count, in its heartbeats (Celery's worker state, which celery-batches
    # does not update by itself): every job, batched or not.
    wait_for(
        lambda: flower.get("/workers?json=1")["data"][0].get("processed") == 4,
        30,
        "the worker's heartbeat to count 4 processed jobs",
        0.5,
    )
    # Flower's worker API asks the worker itself (`celery inspect` stats, conf, queues): the
    # reply must encode as JSON (the fast-path transport setting is a path, not a class).
    inspected = wait_for(
        lambda: flower.get("/api/workers?refresh=1").get(hostname),
        30,
        "Flower's /api/workers to hold the worker's own answers",
        0.5,
    )
    assert inspected.get("stats", {}).get("total", {}).get("tenantkeys.sign") == 3, inspected
    assert inspected.get("conf", {}).get("broker_transport"), inspected.get("conf")

    # -- the pages, as an operator's browser shows them ------------------------------------
    workers_page = flower.page("/workers")
    cells = row_cells(workers_page, f'title="{hostname}"')
    assert cells[0] == hostname and cells[1] == "Online", cells
    assert cells[3:6] == ["4", "2", "2"], f"Processed, Failed, Succeeded: {cells}"
    no_payload_in(workers_page, "the Workers page")

    tasks_page = flower.page("/tasks")
    for job_id, (name, state, _hashes, _code) in expected.items():
        cells = row_cells(tasks_page, job_id)  # the Tasks page lists every job, named
        assert name in cells and state in cells, cells
    no_payload_in(tasks_page, "the Tasks page")

    for job_id, (name, state, hashes, code) in expected.items():
        shown = html.unescape(flower.page(f"/task/{job_id}"))
        assert f">{name}<" in shown, f"/task/{job_id} names no task"
        assert state in shown and hostname in shown
        for digest in hashes:
            assert digest in shown
        if code is not None:
            assert code in shown
        no_payload_in(shown, f"the page of {name} {job_id}")

    # -- the worker's log: one INFO line per signing batch, ids and counts -----------------
    log = deployment.log("w1")
    no_payload_in(log, "the worker log")
    lines = re.findall(
        r"INFO.*signing batch of (\d+) jobs: ok=(\d+) rejected=(\d+) dead_lettered=(\d+) "
        r"failed=(\d+) retried=(\d+) handed_back=(\d+) not_stored=(\d+) in [\d.]+ ms; ids (\S+)",
        log,
    )
    assert lines, log[-3000:]
    totals = [sum(int(line[k]) for line in lines) for k in range(8)]
    assert totals[:5] == [3, 1, 1, 1, 0], f"jobs, ok, rejected, dead_lettered, failed: {totals}"
    logged_ids = {i for line in lines for i in line[8].split(",")}
    assert {signed, rejected, dead} == logged_ids
