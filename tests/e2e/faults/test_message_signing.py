"""Producer authentication (docs/reliability.md, "Producer authentication"): Celery message
signing. With ``TENANTKEYS_MESSAGE_SIGNING=true`` the worker accepts only messages signed by a
certificate in ``TENANTKEYS_MESSAGE_SIGNING_CERT_STORE``; an unsigned job and one signed by an
untrusted certificate get no signature and are recorded in the dead-letter store as
``TK-MESSAGE-UNSIGNED``, while a job from a trusted producer is signed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tenantkeys import jobs
from tenantkeys.queue.config import celery_config
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.deployment import fault_deployment
from tests.e2e.faults.sending import Job, distinctive_payload, results
from tests.e2e.harness import Deployment, wait_for
from tests.helpers import self_signed_identity

pytestmark = pytest.mark.e2e


def make_identity(directory: Path, name: str) -> tuple[Path, Path]:
    """A private key and a self-signed certificate (PEM files) for producer ``name``."""
    return self_signed_identity(directory, name)


def producer(deployment: Deployment, key: Path, cert: Path, store: Path) -> Celery:
    app = Celery("producer", set_as_current=False)
    app.conf.update(celery_config(deployment.settings))
    app.conf.update(task_serializer="auth", accept_content=["auth"])
    app.setup_security(
        allowed_serializers=["json"],
        key=str(key),
        cert=str(cert),
        store=str(store / "*.pem"),
        digest="sha256",
        serializer="json",
    )
    return app


@pytest.fixture
def signed_deployment(tmp_path: Path) -> Iterator[tuple[Deployment, Path]]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    key, cert = make_identity(trusted, "worker")
    made = fault_deployment(tmp_path)
    extra = {
        "TENANTKEYS_MESSAGE_SIGNING": "true",
        "TENANTKEYS_MESSAGE_SIGNING_KEY_FILE": str(key),
        "TENANTKEYS_MESSAGE_SIGNING_CERT_FILE": str(cert),
        "TENANTKEYS_MESSAGE_SIGNING_CERT_STORE": str(trusted),
    }
    made.worker("w1", concurrency=1, extra_env=extra)
    yield made, trusted
    made.stop()


def _send(app: Celery, job: Job) -> None:
    app.send_task(jobs.SIGN, kwargs=job.kwargs, task_id=job.job_id, queue=jobs.SIGN_QUEUE)


def test_only_messages_signed_by_a_trusted_producer_are_signed(
    signed_deployment: tuple[Deployment, Path], tmp_path: Path
) -> None:
    deployment, trusted = signed_deployment
    key, cert = make_identity(trusted, "producer")
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    rogue_key, rogue_cert = make_identity(rogue_dir, "rogue")
    good, unsigned, forged = (Job(str(uuid.uuid4()), "acme", distinctive_payload(k)) for k in "guf")
    app = producer(deployment, key, cert, trusted)
    app.send_task(jobs.CREATE_KEYS, kwargs={"tenant_id": "acme"}, queue=jobs.KEYS_QUEUE)
    _send(app, good)
    with deployment.client() as plain:  # no signature at all
        plain.send(jobs.SIGN, unsigned.kwargs, job_id=unsigned.job_id)
    _send(producer(deployment, rogue_key, rogue_cert, rogue_dir), forged)  # untrusted cert

    store = deployment.deadletters()
    wait_for(
        lambda: good.job_id in results(deployment, [good.job_id]),
        30,
        "the signed job's signature",
    )
    envelope = results(deployment, [good.job_id])[good.job_id]
    assert envelope["ok"], envelope
    wait_for(lambda: store.depth() >= 2, 30, "two dead letters")
    dead = {entry.job_id: entry for entry in store.entries()}
    assert {unsigned.job_id, forged.job_id} <= dead.keys()
    assert dead[unsigned.job_id].code == dead[forged.job_id].code == "TK-MESSAGE-UNSIGNED"
    assert not dead[forged.job_id].replayable
    for job in (unsigned, forged):
        envelope = results(deployment, [job.job_id]).get(job.job_id)
        assert envelope is None or not envelope["ok"], envelope
