"""The HTTP front door in process (TestClient) with real Redis: submit, poll, wait, idempotent
and conflicting resubmits, size caps, scope refusals and bad input, each with its TK code.

No worker runs here: a job's result is stored the way a worker stores it (the result backend's
``store_result`` with a real signature), and ``tests/e2e/test_front_door.py`` runs the real
thing. Every test has a Redis database of its own (broker, results and our keys), flushed
afterwards, so the queue depth it reads is its own jobs only.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from tenantkeys import jobs
from tenantkeys.api import create_app
from tenantkeys.api.services import ApiServices
from tenantkeys.config import Settings, load_settings
from tenantkeys.errors import InvalidRequest, KmsPermissionError
from tenantkeys.jobs.scopes import UNLISTED, JobOwners
from tenantkeys.queue.broker import BrokerProbe
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.integration.test_api_support import ADMIN, bearer, overrides_for, sha256_hex
from tests.interop.kit import python_verifiers
from tests.redis_databases import RedisDatabase, lease_database

pytestmark = pytest.mark.integration

BILLING_TOKEN = "billing-" + uuid.uuid4().hex
EVERYONE_TOKEN = "everyone-" + uuid.uuid4().hex
BILLING = bearer(BILLING_TOKEN)
EVERYONE = bearer(EVERYONE_TOKEN)
PAYLOAD = b'{"amount": 12, "currency": "EUR", "secret-marker": "p4yl0ad"}'
ENCODED = base64.b64encode(PAYLOAD).decode()
MAX_BODY = 4_096


@pytest.fixture
def door_db() -> Iterator[RedisDatabase]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    leased = lease_database("front-door")
    yield leased
    leased.release()


def write_scopes(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "producers": [
                    {
                        "name": "billing",
                        "token_sha256": sha256_hex(BILLING_TOKEN),
                        "tenants": ["acme", "globex"],
                    },
                    {
                        "name": "everyone",
                        "token_sha256": sha256_hex(EVERYONE_TOKEN),
                        "tenants": ["*"],
                    },
                ]
            }
        )
    )
    return path


@pytest.fixture
def make_client(tmp_path: Path, door_db: RedisDatabase) -> Iterator[Callable[..., TestClient]]:
    """A TestClient on a front door with the two producers above (extra settings allowed)."""
    opened: list[TestClient] = []

    def make(**extra: Any) -> TestClient:
        values = {
            "producer_scopes_file": write_scopes(tmp_path / "scopes.json"),
            "front_door_max_body_bytes": MAX_BODY,
            "max_payload_bytes": 1_024,
            **extra,
        }
        settings = load_settings(**overrides_for(tmp_path, door_db.url, "tkfd", **values))
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        services(client).runtime().service.create_keys("acme")
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def services(client: TestClient) -> ApiServices:
    found: ApiServices = client.app.state.services  # type: ignore[attr-defined]
    return found


def settings_of(client: TestClient) -> Settings:
    return services(client).settings


def queued(client: TestClient) -> int:
    """Jobs waiting on the sign queue of this test's own broker database."""
    probe = BrokerProbe.from_settings(settings_of(client))
    try:
        return probe.queue_depths()[jobs.SIGN_QUEUE]
    finally:
        probe.close()


def finish(client: TestClient, job_id: str, tenant: str = "acme") -> dict[str, str]:
    """Store a real signature as the job's result, the way a worker does."""
    signature = services(client).runtime().service.sign(tenant, PAYLOAD).to_dict()
    backend = services(client).sender().producer.app.backend
    backend.store_result(job_id, jobs.ok(signature), "SUCCESS")
    return signature


def fail(client: TestClient, job_id: str) -> None:
    error = KmsPermissionError("kms:Decrypt is denied for the worker role")
    failure = jobs.job_failure({**error.to_dict(), "dead_letter": "f" * 32})
    backend = services(client).sender().producer.app.backend
    backend.store_result(job_id, failure, "FAILURE")


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"] and error["doc"].endswith("#" + code.lower())
    return error


def refusals(producer: str) -> float:
    labels = {"producer": producer, "path": "http"}
    return REGISTRY.get_sample_value("tenantkeys_scope_refusals_total", labels) or 0.0


# -- on, off and who may call --------------------------------------------------------------


def test_front_door_is_off_without_a_scopes_file(tmp_path: Path, door_db: RedisDatabase) -> None:
    settings = load_settings(**overrides_for(tmp_path, door_db.url, "tkfd"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as off:
        for response in (
            off.post(
                "/v1/jobs/sign", json={"tenant_id": "acme", "payload": ENCODED}, headers=ADMIN
            ),
            off.post("/v1/jobs/sign-batch", json={"items": []}, headers=ADMIN),
            off.get("/v1/jobs/some-job", headers=ADMIN),
        ):
            error = assert_error(response, 404, "TK-FRONT-DOOR-OFF")
            assert "TENANTKEYS_PRODUCER_SCOPES_FILE" in error["message"]
        assert queued(off) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("not-a-producer"),
        ADMIN,  # an ops token is not a producer's
        {"Authorization": f"Basic {BILLING_TOKEN}"},
        bearer("x" * 600),
    ],
    ids=["none", "forged", "admin-token", "wrong-scheme", "huge"],
)
def test_unknown_callers_get_401_and_nothing_is_queued(
    client: TestClient, headers: dict[str, str]
) -> None:
    body = {"tenant_id": "acme", "payload": ENCODED}
    assert_error(client.post("/v1/jobs/sign", json=body, headers=headers), 401, "TK-AUTH-REQUIRED")
    response = client.get("/v1/jobs/anything", headers=headers)
    assert_error(response, 401, "TK-AUTH-REQUIRED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert queued(client) == 0


# -- submit, poll, wait ------------------------------------------------------------------------


def test_submit_then_poll_until_signed(client: TestClient) -> None:
    job_id = f"invoice-{uuid.uuid4().hex}"
    body = {"job_id": job_id, "tenant_id": "acme", "payload": ENCODED}
    response = client.post("/v1/jobs/sign", json=body, headers=BILLING)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/jobs/{job_id}"
    assert response.json() == {"job_id": job_id, "state": "PENDING", "url": f"/v1/jobs/{job_id}"}
    assert queued(client) == 1

    pending = client.get(f"/v1/jobs/{job_id}", headers=BILLING)
    assert pending.status_code == 200
    assert pending.json()["state"] == "PENDING" and "result" not in pending.json()

    signature = finish(client, job_id)
    done = client.get(f"/v1/jobs/{job_id}", headers=BILLING).json()
    assert done["state"] == "SUCCESS"
    assert {k: v for k, v in done["result"].items() if v is not None} == signature
    # Independent verifiers (PyJWT, joserfc, jwcrypto, as docs/verifying.md shows them)
    # accept it with the tenant's public JWKS.
    jwks = client.get("/tenants/acme/jwks.json").json()
    for name, verify in python_verifiers().items():
        assert verify(jwks, done["result"]["jws"], PAYLOAD, "acme") == PAYLOAD, name


def test_a_job_id_is_made_when_absent(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs/sign", json={"tenant_id": "acme", "payload": ENCODED}, headers=BILLING
    )
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert uuid.UUID(job_id) and response.headers["Location"] == f"/v1/jobs/{job_id}"


def test_wait_answers_200_with_the_result_when_it_comes_in_time(client: TestClient) -> None:
    job_id = uuid.uuid4().hex
    # The "worker" stores the result while the request is waiting.
    worker = threading.Timer(0.3, finish, args=(client, job_id))
    worker.start()
    try:
        response = client.post(
            "/v1/jobs/sign?wait=10",
            json={"job_id": job_id, "tenant_id": "acme", "payload": ENCODED},
            headers=BILLING,
        )
    finally:
        worker.join()
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "SUCCESS"
    assert response.json()["result"]["tenant_id"] == "acme"
    assert "Location" not in response.headers


def test_wait_answers_202_when_the_result_does_not_come(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(front_door_max_wait_seconds=0.2)
    # A longer ask is cut to the setting; nothing finishes the job, so it is still queued.
    response = client.post(
        "/v1/jobs/sign?wait=300",
        json={"tenant_id": "acme", "payload": ENCODED},
        headers=BILLING,
    )
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "PENDING"
    assert response.headers["Location"] == response.json()["url"]


def test_a_failed_job_shows_its_coded_error(client: TestClient) -> None:
    job_id = uuid.uuid4().hex
    body = {"job_id": job_id, "tenant_id": "acme", "payload": ENCODED}
    client.post("/v1/jobs/sign", json=body, headers=BILLING)
    fail(client, job_id)
    shown = client.get(f"/v1/jobs/{job_id}", headers=BILLING)
    assert shown.status_code == 200  # the job failed; the request did not
    assert shown.json()["state"] == "FAILURE"
    error = shown.json()["error"]
    assert error["code"] == "TK-KMS-ACCESS-DENIED" and error["dead_letter"] == "f" * 32
    assert "result" not in shown.json()


def test_a_batch_is_one_job_with_one_result_per_item(client: TestClient) -> None:
    items = [{"tenant_id": "acme", "payload": ENCODED}, {"tenant_id": "globex", "payload": ENCODED}]
    response = client.post("/v1/jobs/sign-batch", json={"items": items}, headers=BILLING)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert queued(client) == 1
    signature = services(client).runtime().service.sign("acme", PAYLOAD).to_dict()
    refused = InvalidRequest("no key", code=None).to_dict()
    envelope = {"results": [jobs.ok(signature), {"ok": False, "error": refused}]}
    services(client).sender().producer.app.backend.store_result(
        job_id, jobs.ok(envelope), "SUCCESS"
    )
    results = client.get(f"/v1/jobs/{job_id}", headers=BILLING).json()["result"]["results"]
    assert results[0]["ok"] and results[0]["result"]["jws"] == signature["jws"]
    assert not results[1]["ok"] and results[1]["error"]["code"] == "TK-INVALID-ARGUMENT"


def test_a_compact_batch_is_queued_as_its_json_twin_and_read_back(client: TestClient) -> None:
    body = {"tenant_id": "acme", "payloads": [ENCODED, ENCODED]}
    response = client.post("/v1/jobs/sign-batch", json=body, headers=BILLING)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert queued(client) == 1
    # What a worker makes of that very message, stored as the job's result.
    runner = services(client).runtime().service
    signed = runner.sign_many("acme", [PAYLOAD, PAYLOAD])
    compact = {
        "tenant_id": "acme",
        "kid": signed.kid,
        "alg": signed.alg,
        "signed_at": signed.signed_at,
        "jws": [signed.jws[0], None],
        "errors": [{"index": 1, "error": InvalidRequest("no", code=None).to_dict()}],
    }
    services(client).sender().producer.app.backend.store_result(job_id, jobs.ok(compact), "SUCCESS")
    result = client.get(f"/v1/jobs/{job_id}", headers=BILLING).json()["result"]
    assert result["jws"] == [signed.jws[0], None]
    assert result["errors"][0]["index"] == 1
    assert signed.jws[0] == runner.sign("acme", PAYLOAD).jws


def test_compact_batches_are_checked_as_items_are(
    client: TestClient, make_client: Callable[..., TestClient]
) -> None:
    for body, status, code in (
        ({"tenant_id": "acme", "payloads": []}, 422, "TK-INVALID-ARGUMENT"),
        ({"tenant_id": "acme", "payloads": [ENCODED, "!"]}, 400, "TK-INVALID-ENCODING"),
        ({"tenant_id": "acme", "payloads": [ENCODED], "items": []}, 422, "TK-INVALID-ARGUMENT"),
        ({"payloads": [ENCODED]}, 422, "TK-INVALID-ARGUMENT"),
    ):
        error = assert_error(
            client.post("/v1/jobs/sign-batch", json=body, headers=BILLING), status, code
        )
        if code == "TK-INVALID-ENCODING":
            assert error["message"].startswith("payloads[1]")
    big = make_client(front_door_max_body_bytes=1_048_576)
    over = {"tenant_id": "acme", "payloads": ["eA=="] * (jobs.MAX_BATCH_ITEMS + 1)}
    error = assert_error(
        big.post("/v1/jobs/sign-batch", json=over, headers=BILLING), 422, "TK-INVALID-ARGUMENT"
    )
    assert f"not {jobs.MAX_BATCH_ITEMS + 1}" in error["message"]
    # A tenant outside the producer's scope: refused like an items batch, never queued.
    outside = {"tenant_id": "initech", "payloads": [ENCODED]}
    assert_error(
        client.post("/v1/jobs/sign-batch", json=outside, headers=BILLING), 403, "TK-SCOPE-DENIED"
    )
    assert queued(client) == 0 and queued(big) == 0


# -- idempotency -----------------------------------------------------------------------------


def test_the_same_job_sent_again_is_the_same_job(client: TestClient) -> None:
    job_id = f"evidence-{uuid.uuid4().hex}"
    body = {"job_id": job_id, "tenant_id": "acme", "payload": ENCODED}
    first = client.post("/v1/jobs/sign", json=body, headers=BILLING)
    # canonical_json false is the default: the same job.
    again = client.post("/v1/jobs/sign", json={**body, "canonical_json": False}, headers=BILLING)
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"] == job_id
    assert queued(client) == 1  # enqueued once
    finish(client, job_id)
    done = client.post("/v1/jobs/sign", json=body, headers=BILLING)
    assert done.status_code == 200 and done.json()["state"] == "SUCCESS"
    assert queued(client) == 1


def test_concurrent_submits_of_one_id_enqueue_once(client: TestClient) -> None:
    job_id = uuid.uuid4().hex
    body = {"job_id": job_id, "tenant_id": "acme", "payload": ENCODED}
    statuses: list[int] = []
    start = threading.Barrier(8)

    def submit() -> None:
        start.wait()
        statuses.append(client.post("/v1/jobs/sign", json=body, headers=BILLING).status_code)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [202] * 8
    assert queued(client) == 1


def test_a_reused_id_with_another_body_or_producer_is_a_conflict(client: TestClient) -> None:
    job_id = uuid.uuid4().hex
    body = {"job_id": job_id, "tenant_id": "acme", "payload": ENCODED}
    assert client.post("/v1/jobs/sign", json=body, headers=BILLING).status_code == 202
    other_body = {**body, "canonical_json": True}
    error = assert_error(
        client.post("/v1/jobs/sign", json=other_body, headers=BILLING), 409, "TK-JOB-ID-CONFLICT"
    )
    assert job_id in error["message"]
    conflicts = REGISTRY.get_sample_value(
        "tenantkeys_job_id_conflicts_total", {"producer": "everyone", "path": "http"}
    )
    # Another producer may neither take the id over nor read the job.
    assert_error(
        client.post("/v1/jobs/sign", json=body, headers=EVERYONE), 409, "TK-JOB-ID-CONFLICT"
    )
    after = REGISTRY.get_sample_value(
        "tenantkeys_job_id_conflicts_total", {"producer": "everyone", "path": "http"}
    )
    assert (after or 0) == (conflicts or 0) + 1
    assert_error(client.get(f"/v1/jobs/{job_id}", headers=EVERYONE), 404, "TK-JOB-NOT-FOUND")
    assert_error(client.get("/v1/jobs/never-sent", headers=BILLING), 404, "TK-JOB-NOT-FOUND")
    assert queued(client) == 1


def test_job_ids_are_shared_with_the_queue_producers(client: TestClient) -> None:
    """One registry of job ids for both paths (the workers' ``JobOwners``): an id a queue
    producer used first is refused here, and an id taken here is held against them."""
    settings = settings_of(client)
    workers = JobOwners(services(client).redis, settings.redis_prefix, 60)
    queue_id, http_id = f"queue-{uuid.uuid4().hex}", f"http-{uuid.uuid4().hex}"
    assert workers.claim(queue_id, "billing-java") is None  # as a worker claims it
    body = {"job_id": queue_id, "tenant_id": "acme", "payload": ENCODED}
    assert_error(
        client.post("/v1/jobs/sign", json=body, headers=BILLING), 409, "TK-JOB-ID-CONFLICT"
    )
    assert_error(client.get(f"/v1/jobs/{queue_id}", headers=BILLING), 404, "TK-JOB-NOT-FOUND")
    assert queued(client) == 0
    # Taken over HTTP first (signing off here: under the reserved name no producer has).
    body = {"job_id": http_id, "tenant_id": "acme", "payload": ENCODED}
    assert client.post("/v1/jobs/sign", json=body, headers=BILLING).status_code == 202
    assert workers.claim(http_id, "billing-java") == UNLISTED
    assert client.post("/v1/jobs/sign", json=body, headers=BILLING).status_code == 202  # same job
    assert queued(client) == 1


# -- caps, scopes and bad input: refused, never queued ------------------------------------------


def test_oversized_requests_are_refused_before_anything_is_queued(client: TestClient) -> None:
    big = "A" * (MAX_BODY + 10)
    # Content-Length says it all: refused before the body is read.
    declared = client.post(
        "/v1/jobs/sign",
        content=json.dumps({"tenant_id": "acme", "payload": big}),
        headers={**BILLING, "Content-Type": "application/json"},
    )
    assert_error(declared, 413, "TK-PAYLOAD-TOO-LARGE")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield b'{"tenant_id": "acme", "payload": "'
        for _ in range(10):
            yield b"A" * 1_000
        yield b'"}'

    streamed = client.post("/v1/jobs/sign", content=chunks(), headers=BILLING)
    assert_error(streamed, 413, "TK-PAYLOAD-TOO-LARGE")
    # A payload over TENANTKEYS_MAX_PAYLOAD_BYTES (1,024 here) in a body under the cap.
    payload = base64.b64encode(b"x" * 1_025).decode()
    error = assert_error(
        client.post(
            "/v1/jobs/sign", json={"tenant_id": "acme", "payload": payload}, headers=BILLING
        ),
        413,
        "TK-PAYLOAD-TOO-LARGE",
    )
    assert "TENANTKEYS_MAX_PAYLOAD_BYTES" in error["message"]
    assert queued(client) == 0


def test_a_batch_over_the_item_limit_is_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(front_door_max_body_bytes=1_048_576)
    items = [{"tenant_id": "acme", "payload": "eA=="}] * (jobs.MAX_BATCH_ITEMS + 1)
    response = client.post("/v1/jobs/sign-batch", json={"items": items}, headers=BILLING)
    # As the worker refuses it on the queue: the same code, the same words.
    error = assert_error(response, 422, "TK-INVALID-ARGUMENT")
    assert f"1 to {jobs.MAX_BATCH_ITEMS} items, not {jobs.MAX_BATCH_ITEMS + 1}" in error["message"]
    assert queued(client) == 0


def test_a_tenant_outside_the_scope_is_refused_counted_and_never_queued(
    client: TestClient,
) -> None:
    before = refusals("billing")
    single = {"tenant_id": "initech", "payload": ENCODED}
    error = assert_error(
        client.post("/v1/jobs/sign", json=single, headers=BILLING), 403, "TK-SCOPE-DENIED"
    )
    assert "billing" in error["message"] and "initech" in error["message"]
    batch = {"items": [{"tenant_id": "acme", "payload": ENCODED}, single]}
    assert_error(
        client.post("/v1/jobs/sign-batch", json=batch, headers=BILLING), 403, "TK-SCOPE-DENIED"
    )
    assert refusals("billing") == before + 2
    assert queued(client) == 0
    # The producer with "*" may.
    assert client.post("/v1/jobs/sign", json=single, headers=EVERYONE).status_code == 202


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"tenant_id": "acme", "payload": "not base64!"}, 400, "TK-INVALID-ENCODING"),
        ({"tenant_id": "acme", "payload": "eA="}, 400, "TK-INVALID-ENCODING"),
        ({"tenant_id": "../etc", "payload": ENCODED}, 400, "TK-INVALID-TENANT"),
        ({"tenant_id": "a" * 65, "payload": ENCODED}, 400, "TK-INVALID-TENANT"),
        ({"tenant_id": "acme", "payload": ENCODED, "extra": 1}, 422, "TK-INVALID-ARGUMENT"),
        ({"tenant_id": "acme"}, 422, "TK-INVALID-ARGUMENT"),
        ({"tenant_id": 7, "payload": ENCODED}, 422, "TK-INVALID-ARGUMENT"),
        (
            {"tenant_id": "acme", "payload": ENCODED, "canonical_json": "yes"},
            422,
            "TK-INVALID-ARGUMENT",
        ),
        ({"job_id": "../x", "tenant_id": "acme", "payload": ENCODED}, 400, "TK-INVALID-ARGUMENT"),
        ({"job_id": 5, "tenant_id": "acme", "payload": ENCODED}, 400, "TK-INVALID-ARGUMENT"),
        (["acme", ENCODED], 422, "TK-INVALID-ARGUMENT"),
    ],
    ids=[
        "bad-base64",
        "unpadded-base64",
        "bad-tenant",
        "long-tenant",
        "unknown-field",
        "missing-payload",
        "wrong-type",
        "non-bool-flag",
        "bad-job-id",
        "job-id-not-a-string",
        "not-an-object",
    ],
)
def test_bad_input_gets_its_code_and_is_never_queued(
    client: TestClient, body: Any, status: int, code: str
) -> None:
    assert_error(client.post("/v1/jobs/sign", json=body, headers=BILLING), status, code)
    assert queued(client) == 0


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"tenant_id": "acme\xff", "payload": "eA=="}', "TK-INVALID-ARGUMENT"),  # not UTF-8
        (b'{"tenant_id": "acme\\udcff", "payload": "eA=="}', "TK-INVALID-TENANT"),  # lone surrogate
        (b"[" * 100_000 + b"]" * 100_000, "TK-INVALID-ARGUMENT"),  # deeper than the parser goes
        (b"not json", "TK-INVALID-ARGUMENT"),
        (b"", "TK-INVALID-ARGUMENT"),
    ],
    ids=["not-utf8", "surrogate", "deep", "not-json", "empty"],
)
def test_raw_bodies_that_are_not_a_job(
    make_client: Callable[..., TestClient], raw: bytes, code: str
) -> None:
    client = make_client(front_door_max_body_bytes=1_048_576)
    response = client.post(
        "/v1/jobs/sign", content=raw, headers={**BILLING, "Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["code"] == code
    assert queued(client) == 0


def test_batch_items_are_checked_one_by_one(client: TestClient) -> None:
    for items, status, code in (
        ([], 422, "TK-INVALID-ARGUMENT"),
        (
            [{"tenant_id": "acme", "payload": ENCODED}, {"tenant_id": "acme", "payload": "!"}],
            400,
            "TK-INVALID-ENCODING",
        ),
        ([{"tenant_id": "acme", "payload": ENCODED, "x": 1}], 422, "TK-INVALID-ARGUMENT"),
    ):
        error = assert_error(
            client.post("/v1/jobs/sign-batch", json={"items": items}, headers=BILLING), status, code
        )
        if code == "TK-INVALID-ENCODING":
            assert error["message"].startswith("items[1]")
    assert queued(client) == 0


def test_no_payload_and_no_token_in_the_logs(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    job_id = uuid.uuid4().hex
    body = {"job_id": job_id, "tenant_id": "acme", "payload": ENCODED}
    client.post("/v1/jobs/sign", json=body, headers=BILLING)
    client.post("/v1/jobs/sign", json={**body, "tenant_id": "initech"}, headers=BILLING)
    client.post("/v1/jobs/sign", json={"tenant_id": "acme", "payload": "!!"}, headers=BILLING)
    finish(client, job_id)
    shown = client.get(f"/v1/jobs/{job_id}", headers=BILLING)
    logged = caplog.text
    assert shown.status_code == 200
    for secret in (ENCODED, "p4yl0ad", BILLING_TOKEN):
        assert secret not in logged
        assert secret not in shown.text


def test_the_routes_are_documented(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    sign = spec["paths"]["/v1/jobs/sign"]["post"]
    body = sign["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"job_id", "tenant_id", "payload", "canonical_json"}
    assert body["required"] == ["tenant_id", "payload"] and body["additionalProperties"] is False
    assert sign["security"] == [{"producerAuth": []}]
    for status in ("200", "202", "400", "401", "403", "409", "413", "422"):
        assert status in sign["responses"], status
    assert "Location" in sign["responses"]["202"]["headers"]
    batch = spec["paths"]["/v1/jobs/sign-batch"]["post"]["requestBody"]["content"]
    items_form, compact_form = batch["application/json"]["schema"]["oneOf"]
    assert items_form["properties"]["items"]["maxItems"] == jobs.MAX_BATCH_ITEMS
    assert compact_form["required"] == ["tenant_id", "payloads"]
    assert compact_form["properties"]["payloads"]["maxItems"] == jobs.MAX_BATCH_ITEMS
    assert "404" in spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
