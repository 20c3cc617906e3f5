"""How a fault's outcome is counted: taps on every stored result and task event, the bounded
wait with its one re-send, and the account that fills a :class:`FaultRecord`.

Counting rules (the same for every fault, so the table compares like with like):

* a job is *signed* when its final result is an ``ok`` envelope whose JWS verifies for the
  job's tenant and payload; *dead-lettered* when its final result names a dead letter;
  *rejected* when it is any other error envelope (bad input);
* *lost* is a job with no final result at the end of the bounded wait, after one re-send
  under the same job id (what :class:`tenantkeys.client.SigningClient` does on its own);
  jobs that needed that re-send are counted apart (``resent``);
* *duplicated* counts, over every result write the backend published (not only the last one),
  the distinct signatures of a job beyond the first: Ed25519 is deterministic, so a job run
  twice must store the same JWS;
* *retried* is the number of jobs with at least one ``task-retried`` event;
* *recover_seconds* runs from the end of the fault (service back, or the last kill) until every
  job sent had its final result (dead letters replayed, where the test replays them).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import redis

from tenantkeys.client import SigningClient
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, wait_all
from tests.e2e.harness import Deployment

# -- taps: every stored result, every task event ---------------------------------------------


class ResultTap:
    """Every result write of a deployment, from the backend's publish (Redis backend only)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._pattern = "celery-task-meta-*"  # the database is the deployment's alone
        self._cut = len(self._pattern) - 1
        self.writes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.raw: list[bytes] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ResultTap:
        self._thread.start()
        assert self._ready.wait(10), "result tap did not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()

    def _run(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(self._pattern)
        self._ready.set()
        while not self._stop.is_set():
            try:
                message = pubsub.get_message(timeout=0.2)
            except redis.RedisError:
                time.sleep(0.2)
                continue
            if message is None:
                continue
            channel = message["channel"].decode()
            self.raw.append(message["data"])
            with suppress(ValueError):
                self.writes[channel[self._cut :]].append(json.loads(message["data"]))
        pubsub.close()

    def signatures(self, job_id: str) -> set[str]:
        found = set()
        for meta in self.writes.get(job_id, []):
            envelope = meta.get("result")
            if isinstance(envelope, Mapping) and envelope.get("ok"):
                result = envelope.get("result") or {}
                if isinstance(result, Mapping) and "jws" in result:
                    found.add(str(result["jws"]))
        return found


class EventCapture:
    """Task events as Flower receives them (celery's event receiver on the broker)."""

    def __init__(self, deployment: Deployment) -> None:
        self._client = SigningClient.from_settings(deployment.settings)
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()

    def _run(self) -> None:
        app = self._client.app
        while not self._stop.is_set():
            try:
                with app.connection_for_read() as conn:
                    receiver = app.events.Receiver(conn, handlers={"*": self.events.append})
                    for _ in receiver.itercapture(limit=None, timeout=0.5, wakeup=False):
                        if self._stop.is_set():
                            return
            except TimeoutError:
                continue
            except Exception:  # broker gone for a while (a fault): reconnect
                if self._stop.wait(0.5):
                    return

    def retried(self) -> set[str]:
        return {str(e.get("uuid")) for e in self.events if e.get("type") == "task-retried"}


# -- the bounded wait and the account -----------------------------------------------------


def settle(
    deployment: Deployment,
    sent: list[Job],
    record: FaultRecord,
    *,
    timeout: float,
    resend_timeout: float = 30.0,
) -> dict[str, Any]:
    """Wait for every job; re-send (same id) those still without a result once; count them."""
    found = wait_all(deployment, sent, timeout)
    missing = [job for job in sent if job.job_id not in found]
    if missing:
        record.resent = len(missing)
        record.notes.append(
            f"{len(missing)} job(s) had no result after {timeout:g} s and were re-sent "
            "under the same id"
        )
        with deployment.client() as client:
            for job in missing:
                client.send(job.task, job.kwargs, job_id=job.job_id)
        found = wait_all(deployment, sent, resend_timeout)
    return found


def account(
    deployment: Deployment,
    sent: list[Job],
    found: Mapping[str, Any],
    record: FaultRecord,
    *,
    tap: ResultTap | None = None,
    events: EventCapture | None = None,
) -> None:
    """Fill ``record`` from the final results; verify every signature for its own job."""
    runtime = deployment.runtime()
    unpublished = 0
    try:
        record.jobs_sent += len(sent)
        for job in sent:
            envelope = found.get(job.job_id)
            if envelope is None:
                record.lost += 1
                continue
            final: set[str] = set()
            if envelope.get("ok"):
                result = envelope["result"]
                assert result["tenant_id"] == job.tenant, (job, result)
                runtime.service.verify(job.tenant, job.payload, result["jws"])
                record.signed += 1
                final = {str(result["jws"])}
            elif envelope["error"].get("dead_letter"):
                record.dead_lettered += 1
            else:
                record.rejected += 1
            if tap is not None:
                # A worker SIGKILLed inside its result pipeline can leave a SET whose PUBLISH
                # never ran; the stored result is then the first and stands (never overwritten),
                # so it joins the writes the tap saw.
                unpublished += not tap.writes.get(job.job_id)
                record.duplicated += max(0, len(tap.signatures(job.job_id) | final) - 1)
        if unpublished:
            record.notes.append(
                f"{unpublished} result write(s) were stored but not published (a kill inside "
                "the result pipeline); counted from the stored result"
            )
        if events is not None:
            ids = {job.job_id for job in sent}
            record.retried += len(events.retried() & ids)
    finally:
        runtime.close()
