"""Producers written from the contract alone sign through real workers, on both brokers.

Raw Redis (LPUSH of kombu's envelope) and raw AMQP (pika) from docs/contract/examples/, each in
a process that cannot import Celery, kombu or tenantkeys; and a Node producer (redis, amqplib,
jose, @msgpack/msgpack). The worker runs with default key prefixes (Celery's keys carry none).
Each producer sends a ``sign`` job per file, one ``sign_batch`` of their ``items`` (JSON) and
one compact ``sign_batch`` of their raw bytes (msgpack), for a tenant with keys and for one
without. The signatures verify with PyJWT (the docs/verifying.md snippet) against the tenant's
JWKS and fail once a byte of their payload changes; a file over the payload limit fails alone
with ``TK-PAYLOAD-TOO-LARGE`` (in the compact result's ``errors``); the unknown tenant gets
``TK-KEY-NOT-FOUND``: a FAILURE for a ``sign`` job and for a compact ``sign_batch``, an error
per item in an ``items`` result. Every stored result validates against its published schema.
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

from tenantkeys.jobs import published
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
#: The deployment's TENANTKEYS_MAX_PAYLOAD_BYTES, small so a payload over it is cheap to send.
PAYLOAD_LIMIT = 4096
#: One byte over the limit, and with bytes JSON has no string for (msgpack carries them raw).
TOO_BIG = bytes(range(256)) * (PAYLOAD_LIMIT // 256) + b"\x00"
SIGN, SIGN_BATCH = "tenantkeys.sign", "tenantkeys.sign_batch"
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

    def files(self, payloads: tuple[bytes, ...] = PAYLOADS) -> list[str]:
        paths = []
        for index, data in enumerate(payloads):
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
        yield from _running(broker, Deployment(tmp, max_payload_bytes=PAYLOAD_LIMIT))
        return
    if not port_open(AMQP_HOST, 5672):
        service_missing(f"RabbitMQ at {AMQP_HOST}:5672")
    with rabbitmq_vhost() as url:
        yield from _running(
            broker, Deployment(tmp, broker_url=url, max_payload_bytes=PAYLOAD_LIMIT)
        )


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
    flipped = payload[:-1] + bytes([payload[-1] ^ 1])
    for changed in (payload + b" ", flipped):
        with pytest.raises(Exception, match=r"[Ss]ignature"):
            verify(jwks, jws, changed, TENANT)


def schemas_of(lines: list[dict[str, Any]]) -> list[str]:
    """The published schema of each stored result: a sign job per file, then the items form
    of a sign_batch, then its compact form (which has a result schema of its own)."""
    names = []
    for index, line in enumerate(lines):
        task = published.COMPACT_BATCH if index == len(lines) - 1 else line["task"]
        ok = line["status"] == "SUCCESS"
        names.append(published.success_file(task) if ok else published.FAILURE_FILE)
    return names


def check_published(lines: list[dict[str, Any]]) -> None:
    """Each stored result is one the published schemas (docs/contract/schemas) describe."""
    for line, schema in zip(lines, schemas_of(lines), strict=True):
        stored = {k: v for k, v in line.items() if k not in ("task", "job_id", "verified")}
        assert stored["task_id"] == line["job_id"]
        assert errors_of(schema, stored) == [], (schema, stored)


def failure_code(line: dict[str, Any]) -> str:
    """The stable code of a stored FAILURE (its ``exc_message`` is ``[one line, detail]``)."""
    assert line["status"] == "FAILURE", line
    one_line, detail = line["result"]["exc_message"]
    assert one_line.startswith(f"{detail['code']}: ") and detail["retryable"] is False
    return str(detail["code"])


def check_signed(site: Site, lines: list[dict[str, Any]], payloads: tuple[bytes, ...]) -> None:
    """A sign job per payload, then a sign_batch of their items and a compact one: each
    payload within the limit signed three times (the same JWS: Ed25519 is deterministic) and
    verified; the one over it refused alone with TK-PAYLOAD-TOO-LARGE, in each form."""
    count = len(payloads)
    assert [line["task"] for line in lines] == [SIGN] * count + [SIGN_BATCH] * 2
    check_published(lines)
    singles, batch, compact = lines[:count], lines[count], lines[count + 1]
    assert batch["status"] == compact["status"] == "SUCCESS", (batch, compact)
    items = batch["result"]["result"]["results"]
    signed = compact["result"]["result"]
    assert signed["tenant_id"] == TENANT
    assert signed["kid"] in {key["kid"] for key in site.jwks["keys"]}
    assert len(items) == len(signed["jws"]) == count
    too_big = [index for index, data in enumerate(payloads) if len(data) > PAYLOAD_LIMIT]
    assert too_big, "the run needs a payload over the limit"
    assert [(e["index"], e["error"]["code"]) for e in signed["errors"]] == [
        (index, "TK-PAYLOAD-TOO-LARGE") for index in too_big
    ]
    for index, (single, item, data) in enumerate(zip(singles, items, payloads, strict=True)):
        if index in too_big:
            assert failure_code(single) == "TK-PAYLOAD-TOO-LARGE"
            assert (item["ok"], item["error"]["code"]) == (False, "TK-PAYLOAD-TOO-LARGE")
            assert signed["jws"][index] is None
            continue
        assert single["status"] == "SUCCESS" and item["ok"] is True, (single, item)
        for signature in (single["result"]["result"], item["result"]):
            assert signature["tenant_id"] == TENANT
            assert signature["payload_sha256"] == hashlib.sha256(data).hexdigest()
            assert signature["kid"] == signed["kid"]
            verify_pyjwt(site.jwks, signature["jws"], data)
        verify_pyjwt(site.jwks, signed["jws"][index], data)
        if signed["alg"] == "Ed25519":
            assert signed["jws"][index] == item["result"]["jws"]


def check_refused(lines: list[dict[str, Any]]) -> None:
    """The unknown tenant: FAILURE TK-KEY-NOT-FOUND for each sign job and for the compact
    sign_batch (it names one tenant), an error per item in the items form."""
    check_published(lines)
    assert [line["task"] for line in lines] == [SIGN] * len(PAYLOADS) + [SIGN_BATCH] * 2
    *singles, batch, compact = lines
    for line in [*singles, compact]:
        assert failure_code(line) == "TK-KEY-NOT-FOUND"
        assert line["result"]["exc_type"] == "KeyNotFound"
    assert batch["status"] == "SUCCESS", batch
    items = batch["result"]["result"]["results"]
    assert [(item["ok"], item["error"]["code"]) for item in items] == [
        (False, "TK-KEY-NOT-FOUND")
    ] * len(PAYLOADS)


def test_python_producer_without_celery(site: Site) -> None:
    script = PYTHON_PRODUCER[site.broker]
    payloads = (*PAYLOADS, TOO_BIG)
    files = site.files(payloads)
    check_signed(
        site, run_example(script, site.broker_url, site.result_url, TENANT, *files), payloads
    )
    check_refused(run_example(script, site.broker_url, site.result_url, UNKNOWN, *site.files()))


def test_node_producer(site: Site, node: Node) -> None:
    transport = {"redis": "redis", "rabbitmq": "amqp"}[site.broker]
    jwks = site.deployment.tmp / "jwks.json"
    jwks.write_text(json.dumps(site.jwks))
    payloads = (*PAYLOADS, TOO_BIG)
    for tenant, sent in ((TENANT, payloads), (UNKNOWN, PAYLOADS)):
        out = node.run(
            "producer.mjs",
            transport,
            site.broker_url,
            site.result_url,
            tenant,
            str(jwks),
            *site.files(sent),
        )
        lines = [json.loads(line) for line in out.splitlines()]
        if tenant == TENANT:
            check_signed(site, lines, sent)  # Node's jose said yes; PyJWT agrees
            # sign, sign, sign (too big), the items batch, the compact batch
            verified = [[True], [True], [], [True, True], [True, True]]
            assert [line["verified"] for line in lines] == verified
        else:
            check_refused(lines)
            assert [line["verified"] for line in lines] == [[]] * len(lines)


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
