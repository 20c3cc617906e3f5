"""Producers written from the contract alone sign through real workers, on both brokers.

Raw Redis (LPUSH of kombu's envelope) and raw AMQP (pika) from docs/contract/examples/, each in
a process that cannot import Celery, kombu or tenantkeys; and a Node producer (redis, amqplib,
jose). The worker runs with default key prefixes (Celery's keys carry none). Each producer sends
two ``sign`` jobs and one ``sign_batch`` for a tenant with keys and for one without: the
signatures verify with PyJWT (the docs/verifying.md snippet) against the tenant's JWKS, and
the unknown tenant gets ``TK-KEY-NOT-FOUND``: a FAILURE for a ``sign`` job, an error per item
in a ``sign_batch`` result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import redis

from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.docs.test_contract import errors_of
from tests.e2e.harness import AMQP_HOST, Deployment, rabbitmq_vhost
from tests.interop.kit import python_verifiers
from tests.node import Node, install
from tests.producers.examples import example, run_example

pytestmark = pytest.mark.e2e

NODE_PROJECT = Path(__file__).resolve().parent / "node"
TENANT, UNKNOWN = "acme", "nobody-here"
PAYLOADS = (b"invoice 42 paid: 99.50 EUR\n", b'{"invoice": 43, "paid": true}')
#: The Python example for each broker.
PYTHON_PRODUCER = {"redis": "python_redis.py", "rabbitmq": "python_amqp.py"}


class Site:
    """A running deployment as a producer sees it: broker and result URLs, the tenant's JWKS."""

    def __init__(self, broker: str, deployment: Deployment, jwks: dict[str, Any]) -> None:
        self.broker = broker
        self.deployment = deployment
        self.broker_url = deployment.settings.effective_broker_url
        self.result_url = deployment.settings.effective_result_backend
        self.jwks = jwks

    def files(self) -> list[str]:
        paths = []
        for index, data in enumerate(PAYLOADS):
            path = self.deployment.tmp / f"evidence-{index}"
            path.write_bytes(data)
            paths.append(str(path))
        return paths


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """One worker per broker, shared by the Python and Node producers of this module."""
    broker: str = request.param
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    tmp = tmp_path_factory.mktemp(f"producers-{broker}")
    if broker == "redis":
        yield from _running(broker, Deployment(tmp))
        return
    if not port_open(AMQP_HOST, 5672):
        service_missing(f"RabbitMQ at {AMQP_HOST}:5672")
    with rabbitmq_vhost() as url:
        yield from _running(broker, Deployment(tmp, broker_url=url))


def _running(broker: str, deployment: Deployment) -> Iterator[Site]:
    try:
        deployment.worker("w1")
        with deployment.client() as client:
            client.create_keys(TENANT, timeout=30)
        runtime = deployment.runtime()
        try:
            jwks = runtime.service.jwks(TENANT)
        finally:
            runtime.close()
        yield Site(broker, deployment, jwks)
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def node() -> Node:
    return install(NODE_PROJECT)


def verify_pyjwt(jwks: dict[str, Any], jws: str, payload: bytes) -> None:
    """The docs' PyJWT snippet accepts ``jws`` for ``payload`` and refuses a changed byte."""
    verify = python_verifiers()["python-pyjwt"]
    assert verify(jwks, jws, payload, TENANT) == payload
    with pytest.raises(Exception, match=r"[Ss]ignature"):
        verify(jwks, jws, payload + b" ", TENANT)


def check_published(lines: list[dict[str, Any]]) -> None:
    """Each stored result is one the published schemas (docs/contract/schemas) describe."""
    for line in lines:
        stored = {k: v for k, v in line.items() if k not in ("task", "job_id", "verified")}
        assert stored["task_id"] == line["job_id"]
        schema = f"{line['task']}.success.json" if stored["status"] == "SUCCESS" else "failure.json"
        assert errors_of(schema, stored) == [], (schema, stored)


def check_signed(site: Site, lines: list[dict[str, Any]]) -> list[str]:
    """Two sign jobs and a sign_batch of the same payloads, every signature verified."""
    assert [line["task"] for line in lines] == ["tenantkeys.sign"] * 2 + ["tenantkeys.sign_batch"]
    check_published(lines)
    assert [line["status"] for line in lines] == ["SUCCESS"] * 3, lines
    singles = [line["result"]["result"] for line in lines[:2]]
    items = lines[2]["result"]["result"]["results"]
    assert [item["ok"] for item in items] == [True, True], items
    batched = [item["result"] for item in items]
    for signature, data in zip(singles + batched, PAYLOADS + PAYLOADS, strict=True):
        assert signature["tenant_id"] == TENANT
        assert signature["payload_sha256"] == hashlib.sha256(data).hexdigest()
        assert signature["kid"] in {key["kid"] for key in site.jwks["keys"]}
        verify_pyjwt(site.jwks, signature["jws"], data)
    return [signature["jws"] for signature in singles + batched]


def check_refused(lines: list[dict[str, Any]]) -> None:
    """The unknown tenant: FAILURE with its code for each sign job, an error per batch item."""
    check_published(lines)
    for line in lines[:2]:
        assert line["status"] == "FAILURE", line
        failure = line["result"]
        assert failure["exc_type"] == "KeyNotFound"
        one_line, detail = failure["exc_message"]
        assert one_line.startswith("TK-KEY-NOT-FOUND: ")
        assert detail["code"] == "TK-KEY-NOT-FOUND" and detail["retryable"] is False
    batch = lines[2]
    assert batch["status"] == "SUCCESS", batch
    items = batch["result"]["result"]["results"]
    assert [(item["ok"], item["error"]["code"]) for item in items] == [
        (False, "TK-KEY-NOT-FOUND")
    ] * 2


def test_python_producer_without_celery(site: Site) -> None:
    script = PYTHON_PRODUCER[site.broker]
    signed = run_example(script, site.broker_url, site.result_url, TENANT, *site.files())
    check_signed(site, signed)
    check_refused(run_example(script, site.broker_url, site.result_url, UNKNOWN, *site.files()))


def test_node_producer(site: Site, node: Node) -> None:
    transport = {"redis": "redis", "rabbitmq": "amqp"}[site.broker]
    jwks = site.deployment.tmp / "jwks.json"
    jwks.write_text(json.dumps(site.jwks))
    for tenant in (TENANT, UNKNOWN):
        out = node.run(
            "producer.mjs",
            transport,
            site.broker_url,
            site.result_url,
            tenant,
            str(jwks),
            *site.files(),
        )
        lines = [json.loads(line) for line in out.splitlines()]
        if tenant == TENANT:
            check_signed(site, lines)  # Node's jose said yes; PyJWT agrees
            assert [line["verified"] for line in lines] == [[True], [True], [True, True]]
        else:
            check_refused(lines)
            assert [line["verified"] for line in lines] == [[], [], []]


def test_task_and_id_are_the_only_headers_a_job_needs(site: Site) -> None:
    """The worker fills in every other Celery header (retries 0, no ETA, no time limits)."""
    wire = example("celery_message")
    full = wire.task_message("tenantkeys.sign", wire.sign_job(TENANT, PAYLOADS[0]))
    least = dataclasses.replace(full, headers={"task": "tenantkeys.sign", "id": full.job_id})
    if site.broker == "redis":
        with redis.Redis.from_url(site.broker_url) as broker:
            example("python_redis").publish(broker, least)
    else:
        connection = pika.BlockingConnection(pika.URLParameters(site.broker_url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            example("python_amqp").publish(channel, least)
        finally:
            connection.close()
    with redis.Redis.from_url(site.result_url) as results:
        found = wire.wait_result(results.get, least.job_id)
    assert found["status"] == "SUCCESS", found
    verify_pyjwt(site.jwks, found["result"]["result"]["jws"], PAYLOADS[0])
