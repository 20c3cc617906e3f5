"""The HTTP front door with a real worker: an HTTP client (urllib, no tenantkeys import on its
side of the wire) gets signatures that independent verifiers accept, a job for a tenant
outside its scope is refused, counted and never reaches the worker, and job ids are shared
with the queue producers: neither path can read or overwrite the other's job."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tenantkeys import jobs
from tenantkeys.queue.broker import BrokerProbe
from tests.e2e.faults.sending import results
from tests.e2e.harness import Deployment, sign_and_scope, wait_for
from tests.e2e.test_observability import sample, scrape, start_worker
from tests.e2e.test_scopes import Signed
from tests.helpers import self_signed_identity
from tests.integration.test_api_support import ApiProcess, api_process, sha256_hex
from tests.interop.kit import python_verifiers

pytestmark = pytest.mark.e2e

TOKEN = "billing-" + uuid.uuid4().hex
PRODUCER = {"Authorization": f"Bearer {TOKEN}"}
PAYLOAD = b'{"invoice": "2026-000123", "amount": 12}'


def call(
    api: ApiProcess, method: str, path: str, body: Any = None, headers: Mapping[str, str] = PRODUCER
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        api.url + path,
        data=data,
        method=method,
        headers={**headers, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return int(reply.status), json.loads(reply.read()), _lower(reply.headers)
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read()), _lower(exc.headers)


def deploy(tmp_path: Path, *, api_signs_as: str) -> Iterator[tuple[Deployment, ApiProcess]]:
    """Message signing on, the scopes file on the workers and the API, one worker, the API.

    ``api_signs_as="front-door"``: the deployment the deploy guide describes; the API signs
    its task messages as ``CN=front-door``, whose scope is every tenant (it has checked each
    HTTP producer's scope before publishing). ``"worker"``: the API shares the workers'
    settings and signs with their own certificate. ``billing-java`` is a queue producer.
    """
    producers = [
        {"name": "billing", "token_sha256": sha256_hex(TOKEN), "tenants": ["acme"]},
        {"name": "front-door", "certificate_subject": "CN=front-door", "tenants": ["*"]},
        {"name": "billing-java", "certificate_subject": "CN=billing-java", "tenants": ["acme"]},
    ]
    deployment = Deployment(tmp_path)
    trusted = sign_and_scope(deployment, tmp_path, {"producers": producers})
    try:
        runtime = deployment.runtime()
        runtime.service.create_keys("acme")
        runtime.service.create_keys("initech")
        runtime.close()
        start_worker(deployment, "w1")  # `tenantkeys worker`: it serves its metrics
        api_identity: dict[str, str] = {}
        if api_signs_as != "worker":
            api_key, api_cert = self_signed_identity(trusted, api_signs_as)
            api_identity = {
                "TENANTKEYS_MESSAGE_SIGNING_KEY_FILE": str(api_key),
                "TENANTKEYS_MESSAGE_SIGNING_CERT_FILE": str(api_cert),
            }
        api_env = deployment.env(api_identity)
        with api_process(api_env, tmp_path / "api.log") as api:
            yield deployment, api
    finally:
        deployment.stop()


def _lower(headers: Any) -> dict[str, str]:
    """Header names in lower case: HTTP/1.1 servers may send them in any case."""
    return {str(name).lower(): str(value) for name, value in headers.items()}


@pytest.fixture
def front_door(tmp_path: Path) -> Iterator[tuple[Deployment, ApiProcess]]:
    yield from deploy(tmp_path, api_signs_as="front-door")


@pytest.fixture(params=["front-door", "worker"])
def either_signer(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Deployment, ApiProcess]]:
    yield from deploy(tmp_path, api_signs_as=request.param)


def test_signatures_through_the_front_door(front_door: tuple[Deployment, ApiProcess]) -> None:
    _, api = front_door
    encoded = jobs.encode_payload(PAYLOAD)
    _, jwks, _ = call(api, "GET", "/tenants/acme/jwks.json", headers={})
    verifiers = python_verifiers()

    # Submit and wait: the answer carries the signature.
    status, waited, _ = call(
        api, "POST", "/v1/jobs/sign?wait=10", {"tenant_id": "acme", "payload": encoded}
    )
    assert status == 200, waited
    assert waited["state"] == "SUCCESS"
    for name, verify in verifiers.items():
        assert verify(jwks, waited["result"]["jws"], PAYLOAD, "acme") == PAYLOAD, name

    # Submit, then poll the URL it gave.
    job_id = f"invoice-{uuid.uuid4().hex}"
    body = {"job_id": job_id, "tenant_id": "acme", "payload": encoded, "canonical_json": True}
    status, accepted, headers = call(api, "POST", "/v1/jobs/sign", body)
    assert status == 202 and headers["location"] == f"/v1/jobs/{job_id}"

    def signed() -> dict[str, Any]:
        found = call(api, "GET", accepted["url"])[1]
        return found if found["state"] in ("SUCCESS", "FAILURE") else {}

    polled = wait_for(signed, 60, f"job {job_id} to finish")
    assert polled["state"] == "SUCCESS", polled
    # canonical_json: the bytes signed are the payload's RFC 8785 form.
    covered = verifiers["python-pyjwt"](jwks, polled["result"]["jws"], PAYLOAD, "acme")
    assert json.loads(covered) == json.loads(PAYLOAD) and covered != PAYLOAD
    # Sent again, it is the same job with the same signature (not signed twice).
    status, again, _ = call(api, "POST", "/v1/jobs/sign", body)
    assert status == 200 and again["result"] == polled["result"]

    # A batch: one verified signature per item, and a bad tenant fails alone as the worker says.
    items = [{"tenant_id": "acme", "payload": encoded}] * 3
    status, batch, _ = call(api, "POST", "/v1/jobs/sign-batch?wait=10", {"items": items})
    assert status == 200, batch
    results = batch["result"]["results"]
    assert len(results) == 3 and all(item["ok"] for item in results)
    for item in results:
        assert verifiers["python-jwcrypto"](jwks, item["result"]["jws"], PAYLOAD, "acme")


def test_a_job_outside_the_scope_never_reaches_the_worker(
    front_door: tuple[Deployment, ApiProcess],
) -> None:
    deployment, api = front_door
    encoded = jobs.encode_payload(PAYLOAD)
    refused_id = f"refused-{uuid.uuid4().hex}"
    status, error, _ = call(
        api,
        "POST",
        "/v1/jobs/sign",
        {"job_id": refused_id, "tenant_id": "initech", "payload": encoded},
    )
    assert status == 403 and error["error"]["code"] == "TK-SCOPE-DENIED"
    # A job sent after it is signed: the worker has taken everything queued before it.
    later = f"later-{uuid.uuid4().hex}"
    status, done, _ = call(
        api,
        "POST",
        "/v1/jobs/sign?wait=10",
        {"job_id": later, "tenant_id": "acme", "payload": encoded},
    )
    assert status == 200 and done["state"] == "SUCCESS"
    probe = BrokerProbe.from_settings(deployment.settings)
    try:
        assert probe.queue_depths()[jobs.SIGN_QUEUE] == 0
    finally:
        probe.close()
    with deployment.client() as client:
        assert client.producer.state(refused_id).status == "PENDING"  # no result: never ran
        assert client.producer.state(later).status == "SUCCESS"
    # The worker logs the ids of the jobs it signs: the later one, never the refused one.
    assert later in deployment.log("w1") and refused_id not in deployment.log("w1")
    status, missing, _ = call(api, "GET", f"/v1/jobs/{refused_id}")
    assert status == 404 and missing["error"]["code"] == "TK-JOB-NOT-FOUND"
    _, metrics = api.get("/metrics")
    assert b'tenantkeys_scope_refusals_total{path="http",producer="billing"} 1.0' in metrics


QUEUE_PAYLOAD = b'{"invoice": "queue-only", "amount": 99}'


def test_an_id_a_queue_producer_used_is_refused_over_http(
    either_signer: tuple[Deployment, ApiProcess],
) -> None:
    """The HTTP caller may neither take the id nor read the queue producer's result."""
    deployment, api = either_signer
    java = Signed(deployment, deployment.tmp / "trusted", "billing-java")
    taken = java.send(
        jobs.SIGN, {"tenant_id": "acme", "payload": jobs.encode_payload(QUEUE_PAYLOAD)}
    )
    wait_for(lambda: taken in results(deployment, [taken]), 60, "the queue producer's job")
    queue_result = results(deployment, [taken])[taken]
    assert queue_result["ok"], queue_result
    body = {"job_id": taken, "tenant_id": "acme", "payload": jobs.encode_payload(PAYLOAD)}
    status, error, _ = call(api, "POST", "/v1/jobs/sign?wait=5", body)
    assert status == 409 and error["error"]["code"] == "TK-JOB-ID-CONFLICT", error
    status, missing, _ = call(api, "GET", f"/v1/jobs/{taken}")
    assert status == 404 and missing["error"]["code"] == "TK-JOB-NOT-FOUND", missing
    assert results(deployment, [taken])[taken] == queue_result  # untouched


def test_an_id_taken_over_http_is_refused_on_the_queue(
    either_signer: tuple[Deployment, ApiProcess],
) -> None:
    """The queue producer's later job under the id is dead-lettered and counted; the HTTP
    caller reads its own signature. (With the API signing as ``CN=front-door`` the worker
    claimed the id when it ran the HTTP job; with the workers' own certificate it claims
    nothing, and only the front door's claim keeps the queue job from overwriting the result.)
    """
    deployment, api = either_signer
    java = Signed(deployment, deployment.tmp / "trusted", "billing-java")
    port = deployment.settings.worker_metrics_port
    before = scrape(port)
    mine = f"invoice-{uuid.uuid4().hex}"
    body = {"job_id": mine, "tenant_id": "acme", "payload": jobs.encode_payload(PAYLOAD)}
    status, accepted, _ = call(api, "POST", "/v1/jobs/sign?wait=10", body)
    assert status == 200 and accepted["state"] == "SUCCESS", accepted
    java.send(jobs.SIGN, {"tenant_id": "acme", "payload": jobs.encode_payload(QUEUE_PAYLOAD)}, mine)
    store = deployment.deadletters()
    wait_for(lambda: mine in {e.job_id for e in store.entries()}, 60, "the conflict's dead letter")
    entry = next(e for e in store.entries() if e.job_id == mine)
    assert entry.code == "TK-JOB-ID-CONFLICT" and not entry.replayable
    conflicts = {"producer": "billing-java", "path": "queue"}
    grew = sample(scrape(port), "tenantkeys_job_id_conflicts_total", **conflicts) - sample(
        before, "tenantkeys_job_id_conflicts_total", **conflicts
    )
    assert grew == 1
    # The HTTP caller reads its own job's signature: over its payload, for its tenant.
    status, polled, _ = call(api, "GET", f"/v1/jobs/{mine}")
    assert status == 200 and polled["result"] == accepted["result"], polled
    _, jwks, _ = call(api, "GET", "/tenants/acme/jwks.json", headers={})
    for name, verify in python_verifiers().items():
        assert verify(jwks, polled["result"]["jws"], PAYLOAD, "acme") == PAYLOAD, name
