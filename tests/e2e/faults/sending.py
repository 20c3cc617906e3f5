"""Sending sign jobs to a fault deployment and reading their stored results."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from tenantkeys import jobs
from tenantkeys.client import SigningClient
from tests.e2e.harness import Deployment


@dataclass
class Job:
    job_id: str
    tenant: str
    payload: bytes
    task: str = jobs.SIGN

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant, "payload": jobs.encode_payload(self.payload)}


def distinctive_payload(tag: str) -> bytes:
    """A payload nobody else writes: what the secret scan looks for."""
    return f"tkfault-payload:{tag}:{uuid.uuid4().hex}{uuid.uuid4().hex}".encode()


def send_sign_jobs(client: SigningClient, tenants: list[str], count: int, tag: str) -> list[Job]:
    made = []
    for i in range(count):
        job = Job(str(uuid.uuid4()), tenants[i % len(tenants)], distinctive_payload(f"{tag}-{i}"))
        client.send(jobs.SIGN, job.kwargs, job_id=job.job_id)
        made.append(job)
    return made


def burst(client: SigningClient, tenants: list[str], count: int, tag: str) -> list[Job]:
    """``count`` jobs published together (pipelined), round-robin over ``tenants``."""
    made = [
        Job(str(uuid.uuid4()), tenants[i % len(tenants)], distinctive_payload(f"{tag}-{i}"))
        for i in range(count)
    ]
    client.submit_many([(j.tenant, j.payload) for j in made], job_ids=[j.job_id for j in made])
    return made


def results(deployment: Deployment, job_ids: list[str]) -> dict[str, Any]:
    """The final outcome of each job that has one (Redis backend, read in one MGET), as an
    envelope: a FAILURE (rejected, dead-lettered) becomes ``{"ok": false, "error": detail}``."""
    client = redis.Redis.from_url(deployment.settings.effective_result_backend)
    try:
        keys = [f"celery-task-meta-{job_id}" for job_id in job_ids]
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            for job_id, raw in zip(
                job_ids[start : start + 500], client.mget(keys[start : start + 500]), strict=True
            ):
                if raw is not None:
                    meta = json.loads(raw)
                    if meta.get("status") == "SUCCESS":
                        found[job_id] = meta.get("result")
                    elif meta.get("status") == "FAILURE":  # a job's error, as any client reads it
                        detail = jobs.failure_detail(meta.get("result"))
                        found[job_id] = {"ok": False, "error": detail or meta.get("result")}
        return found
    finally:
        client.close()


def wait_all(deployment: Deployment, sent: list[Job], timeout: float) -> dict[str, Any]:
    """Poll until every job has a final result or ``timeout`` passes; returns what is there."""
    ids = [job.job_id for job in sent]
    deadline = time.monotonic() + timeout
    while True:
        found = results(deployment, ids)
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)
