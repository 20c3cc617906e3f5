"""Per-producer tenant scopes on the queue path, against a real worker on each broker.

Message signing is on; the scopes file lets ``billing`` sign for ``acme`` only and
``ops-java`` for every tenant; ``stranger``'s certificate is trusted but in no scope. A job
inside its producer's scope is signed; a sign and a sign_batch outside it end in FAILURE with
``TK-SCOPE-DENIED``, are counted in ``tenantkeys_scope_refusals_total`` and never signed; a
job that reuses another producer's job id is dead-lettered as ``TK-JOB-ID-CONFLICT`` and the
first producer's result stays as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tenantkeys import jobs
from tenantkeys.queue.config import celery_config
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.deployment import on_broker
from tests.e2e.faults.sending import results
from tests.e2e.harness import Deployment, sign_and_scope, wait_for
from tests.e2e.test_observability import sample, scrape, start_worker
from tests.helpers import self_signed_identity

pytestmark = pytest.mark.e2e

SCOPES = {
    "producers": [
        {"name": "billing", "certificate_subject": "CN=billing", "tenants": ["acme"]},
        {"name": "ops-java", "certificate_subject": "CN=ops-java", "tenants": ["*"]},
    ]
}


class Signed:
    """A producer signing its task messages with its own key (Celery's ``auth`` serializer).

    kombu keeps one ``auth`` serializer per process: each :meth:`send` registers this
    producer's before publishing, so producers can take turns in one test process.
    """

    def __init__(self, deployment: Deployment, trusted: Path, name: str) -> None:
        self.key, self.cert = self_signed_identity(trusted, name)
        self.trusted = trusted
        self.app = Celery(name, set_as_current=False)
        self.app.conf.update(celery_config(deployment.settings))

    def send(self, task: str, kwargs: dict[str, Any], job_id: str | None = None) -> str:
        self.register()
        job_id = job_id or str(uuid.uuid4())
        self.app.send_task(task, kwargs=kwargs, task_id=job_id, queue=jobs.ROUTES[task])
        return job_id

    def register(self) -> None:
        """Make this producer's key the one kombu's ``auth`` serializer signs with."""
        self.app.conf.update(task_serializer="auth", accept_content=["auth"])
        self.app.setup_security(
            allowed_serializers=["json"],
            key=str(self.key),
            cert=str(self.cert),
            store=str(self.trusted / "*.pem"),
            digest="sha256",
            serializer="json",
        )


@pytest.fixture(params=["redis", "rabbitmq"])
def scoped(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Deployment, Path]]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    for deployment in on_broker(request.param, tmp_path):
        yield deployment, sign_and_scope(deployment, tmp_path, SCOPES)


def _payload(text: str) -> str:
    return jobs.encode_payload(text.encode())


def test_scopes_on_the_queue(scoped: tuple[Deployment, Path]) -> None:
    deployment, trusted = scoped
    billing = Signed(deployment, trusted, "billing")
    ops = Signed(deployment, trusted, "ops-java")
    stranger = Signed(deployment, trusted, "stranger")
    worker = start_worker(deployment, "scoped")
    port = deployment.settings.worker_metrics_port
    before = scrape(port)

    # ops-java (every tenant) creates the keys; billing signs for acme, in its scope.
    keys = [ops.send(jobs.CREATE_KEYS, {"tenant_id": t}) for t in ("acme", "globex")]
    wait_for(lambda: len(results(deployment, keys)) == 2, 60, "the tenants' keys")
    assert all(e["ok"] for e in results(deployment, keys).values())
    good = billing.send(jobs.SIGN, {"tenant_id": "acme", "payload": _payload("in scope")})
    out_sign = billing.send(jobs.SIGN, {"tenant_id": "globex", "payload": _payload("out")})
    out_batch = billing.send(
        jobs.SIGN_BATCH,
        {
            "items": [
                {"tenant_id": "acme", "payload": _payload("fine alone")},
                {"tenant_id": "globex", "payload": _payload("not billing's")},
            ]
        },
    )
    out_rotate = billing.send(jobs.ROTATE_KEY, {"tenant_id": "globex", "purpose": "signing"})
    unlisted = stranger.send(jobs.SIGN, {"tenant_id": "acme", "payload": _payload("who?")})
    # Work the worker would publish itself, under its own certificate: refused too.
    chained = billing.app.signature(
        jobs.SIGN, kwargs={"tenant_id": "acme", "payload": _payload("first")}
    )
    chained.link(
        billing.app.signature(
            jobs.SIGN, kwargs={"tenant_id": "globex", "payload": _payload("smuggled")}
        )
    )
    billing.register()
    chain_id = chained.apply_async(queue=jobs.SIGN_QUEUE).id
    refused = [out_sign, out_batch, out_rotate, unlisted, chain_id]
    ids = [good, *refused]
    wait_for(lambda: len(results(deployment, ids)) == len(ids), 60, "every job's outcome")
    done = results(deployment, ids)
    assert done[good]["ok"], done[good]
    for job_id in refused:
        assert not done[job_id]["ok"], done[job_id]
        assert done[job_id]["error"]["code"] == "TK-SCOPE-DENIED", done[job_id]
    assert "'billing'" in done[out_batch]["error"]["message"]
    assert "'globex'" in done[out_batch]["error"]["message"]
    assert "callbacks" in done[chain_id]["error"]["message"]

    # Never signed: one signature made (the job in scope), one refusal per signature asked.
    counted = scrape(port)
    signatures = "tenantkeys_signatures_total"
    assert sample(counted, signatures, outcome="ok") - sample(before, signatures, outcome="ok") == 1
    rejected = sample(counted, signatures, outcome="rejected")
    assert rejected - sample(before, signatures, outcome="rejected") == 1 + 2 + 1 + 1

    # Replay of billing's job id by ops-java: refused, dead-lettered, billing's result kept.
    first = done[good]
    ops.send(jobs.SIGN, {"tenant_id": "globex", "payload": _payload("replayed")}, job_id=good)
    store = deployment.deadletters()
    wait_for(lambda: good in {e.job_id for e in store.entries()}, 60, "the conflict's dead letter")
    entry = next(e for e in store.entries() if e.job_id == good)
    assert entry.code == "TK-JOB-ID-CONFLICT" and not entry.replayable
    assert results(deployment, [good])[good] == first
    # billing sending its own id again is an idempotent resubmission, not a conflict.
    again = billing.send(jobs.SIGN, {"tenant_id": "acme", "payload": _payload("again")}, good)
    assert again == good

    after = scrape(port)

    def grew(name: str, producer: str) -> float:
        labels = {"producer": producer, "path": "queue"}
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("tenantkeys_scope_refusals_total", "billing") == 4
    assert grew("tenantkeys_scope_refusals_total", "unlisted") == 1
    assert grew("tenantkeys_job_id_conflicts_total", "ops-java") == 1
    # No tenant id in any label of the new counters.
    for line in after.splitlines():
        if line.startswith(("tenantkeys_scope_refusals", "tenantkeys_job_id_conflicts")):
            assert "globex" not in line and "acme" not in line, line
    assert worker.poll() is None, "the worker died"
    log = deployment.log("scoped")
    assert "Traceback" not in log, log[-3000:]
