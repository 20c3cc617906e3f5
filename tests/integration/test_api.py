"""The ops API in process (TestClient) on a local-KMS deployment with real Redis and SQLite:
authentication matrix, error shape, JWKS, dead letters, status, and no secret in any answer."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tenantkeys.api import create_app
from tenantkeys.api.services import ApiServices
from tenantkeys.config import Settings, load_settings
from tenantkeys.errors import KmsPermissionError
from tenantkeys.jobs.deadletters import DeadLetterStore
from tenantkeys.keys.rotation import RotationSweep
from tenantkeys.keys.runtime import redis_client
from tenantkeys.queue.broker import BrokerProbe
from tests.integration.test_api_support import (
    ADMIN,
    ADMIN_TOKEN,
    READER,
    READER_TOKEN,
    bearer,
)

pytestmark = pytest.mark.integration
#: The API tests' fixtures: api_redis_url (own Redis DB), api_prefix, api_overrides, api_settings.
pytest_plugins = ["tests.integration.test_api_support"]

PAYLOAD = b"top-secret-payload-" + b"x" * 40
#: (method, path, body, roles allowed)
ROUTES: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("GET", "/api/admin/kms/status", None, {"admin", "reader"}),
    ("POST", "/api/admin/kms/validate", None, {"admin"}),
    ("GET", "/api/admin/dlq", None, {"admin"}),
    ("GET", "/api/admin/dlq/" + "0" * 32, None, {"admin"}),
    ("POST", "/api/admin/dlq/replay", {"all": True}, {"admin"}),
]
CALLERS = {
    "none": {},
    "forged": bearer("not-a-token"),
    "wrong-scheme": {"Authorization": f"Basic {ADMIN_TOKEN}"},
    "reader": READER,
    "admin": ADMIN,
}


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def services(client: TestClient) -> ApiServices:
    found: ApiServices = client.app.state.services  # type: ignore[attr-defined]
    return found


def call(client: TestClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.request(method, path, json=body, headers=headers)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize(("method", "path", "body", "allowed"), ROUTES, ids=str)
def test_auth_matrix(
    client: TestClient, method: str, path: str, body: Any, allowed: set[str], caller: str
) -> None:
    response = call(client, method, path, body, CALLERS[caller])
    if caller in ("none", "forged", "wrong-scheme"):
        assert_error(response, 401, "TK-AUTH-REQUIRED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    elif caller not in allowed:
        assert_error(response, 403, "TK-AUTH-FORBIDDEN")
    else:
        assert response.status_code in (200, 404), response.text  # 404: the unknown dlq id


def test_no_token_configured_refuses_every_admin_route(api_overrides: dict[str, Any]) -> None:
    settings = load_settings(
        **{**api_overrides, "admin_token_sha256": None, "reader_token_sha256": None}
    )
    with TestClient(create_app(settings)) as bare:
        for method, path, body, _ in ROUTES:
            for headers in CALLERS.values():
                assert_error(call(bare, method, path, body, headers), 401, "TK-AUTH-REQUIRED")


def test_a_token_setting_that_is_not_a_digest_stops_the_start(
    api_overrides: dict[str, Any],
) -> None:
    from tenantkeys.errors import ConfigurationError

    settings = load_settings(**{**api_overrides, "admin_token_sha256": ADMIN_TOKEN})
    with pytest.raises(ConfigurationError, match="SHA-256 hex digest"):
        create_app(settings)


def test_unauthenticated_routes_answer_without_a_token(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "UP"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"broker", "redis", "database", "kms"}
    kms = client.get("/health/kms").json()
    assert kms["status"] == "UP" and kms["provider"] == "local"
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "tenantkeys ops API"


def test_jwks_lists_the_tenant_keys_and_is_public(client: TestClient) -> None:
    service = services(client).runtime().service
    (key,) = service.create_keys("acme", ["signing"])
    response = client.get("/tenants/acme/jwks.json")
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"].startswith("public")
    (jwk,) = response.json()["keys"]
    assert jwk["kid"] == key.kid and jwk["kty"] == "OKP" and "d" not in jwk
    service.rotate("acme", "signing")
    statuses = {k["kid"]: k["status"] for k in client.get("/tenants/acme/jwks.json").json()["keys"]}
    assert statuses[key.kid] == "retired" and len(statuses) == 2


@pytest.mark.parametrize("tenant", ["-starts-with-dash", "a" * 65, "sp ace", "semi;colon"])
def test_jwks_rejects_an_invalid_tenant_id(client: TestClient, tenant: str) -> None:
    assert_error(client.get(f"/tenants/{tenant}/jwks.json"), 400, "TK-INVALID-TENANT")


def test_jwks_of_an_unknown_tenant_is_404(client: TestClient) -> None:
    assert_error(client.get("/tenants/nobody/jwks.json"), 404, "TK-KEY-NOT-FOUND")


def test_validation_errors_and_unknown_routes_have_a_code(client: TestClient) -> None:
    error = assert_error(
        client.post("/api/admin/dlq/replay", json={"unexpected": 1}, headers=ADMIN),
        422,
        "TK-INVALID-ARGUMENT",
    )
    assert ["body", "ReplayAll", "unexpected"] in [d["loc"] for d in error["details"]]
    assert_error(client.get("/api/admin/dlq?limit=0", headers=ADMIN), 422, "TK-INVALID-ARGUMENT")
    assert_error(client.get("/no/such/route"), 404, "TK-INVALID-ARGUMENT")
    for ambiguous in ({"all": True, "tenant_id": "acme"}, {"all": False}, {}):
        response = client.post("/api/admin/dlq/replay", json=ambiguous, headers=ADMIN)
        assert_error(response, 422, "TK-INVALID-ARGUMENT")


def test_unexpected_exception_is_a_coded_500_without_details(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode() -> None:
        raise RuntimeError("password=hunter2 at db.internal")

    monkeypatch.setattr(services(client), "validate_kms", explode)
    response = client.post("/api/admin/kms/validate", headers=ADMIN)
    error = assert_error(response, 500, "TK-INTERNAL")
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert error["message"] == "unexpected RuntimeError; see the API log"


def test_tenantkeys_errors_map_to_their_status(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied() -> None:
        raise KmsPermissionError("AWS KMS denied kms:Encrypt", provider="aws")

    monkeypatch.setattr(services(client), "validate_kms", denied)
    response = client.post("/api/admin/kms/validate", headers=ADMIN)
    assert_error(response, 503, "TK-KMS-ACCESS-DENIED")
    assert response.headers["Retry-After"]


def test_validate_passes_on_a_working_kms(client: TestClient) -> None:
    body = client.post("/api/admin/kms/validate", headers=ADMIN).json()
    assert body["ok"] is True and body["failed_steps"] == []
    assert [s["step"] for s in body["steps"]] == [
        "generate",
        "encrypt",
        "decrypt",
        "describe",
        "wrong_context_decrypt",
    ]


def _dead_letter(settings: Settings, tenant: str) -> str:
    store = DeadLetterStore.from_settings(settings, redis_client(settings))
    entry = store.add(
        task="tenantkeys.sign",
        job_id=f"job-{tenant}",
        kwargs={"tenant_id": tenant, "payload": base64.b64encode(PAYLOAD).decode()},
        arguments={"tenant_id": tenant, "payload_size": len(PAYLOAD)},
        error=KmsPermissionError("AWS KMS denied kms:Decrypt", provider="aws"),
        attempts=1,
        worker="test",
        queue="tenantkeys.sign",
    )
    return entry.id


def test_dead_letters_list_show_and_replay(client: TestClient, api_settings: Settings) -> None:
    first, second = _dead_letter(api_settings, "acme"), _dead_letter(api_settings, "globex")
    listed = client.get("/api/admin/dlq", headers=ADMIN).json()
    assert listed["depth"] == 2 and {e["id"] for e in listed["entries"]} == {first, second}
    only = client.get("/api/admin/dlq?tenant_id=acme", headers=ADMIN).json()["entries"]
    assert [e["id"] for e in only] == [first]
    assert client.get(f"/api/admin/dlq/{first}", headers=ADMIN).json()["code"] == (
        "TK-KMS-ACCESS-DENIED"
    )
    assert_error(
        client.get("/api/admin/dlq/" + "f" * 32, headers=ADMIN), 404, "TK-DEAD-LETTER-NOT-FOUND"
    )
    assert_error(
        client.post("/api/admin/dlq/replay", json={"id": "nope"}, headers=ADMIN),
        404,
        "TK-DEAD-LETTER-NOT-FOUND",
    )

    broker = BrokerProbe.from_settings(api_settings)
    try:
        replayed = client.post("/api/admin/dlq/replay", json={"id": first}, headers=ADMIN).json()
        assert replayed == {"replayed": [first], "failed": []}
        assert broker.queue_depths()["tenantkeys.sign"] == 1
        by_tenant = client.post(
            "/api/admin/dlq/replay", json={"tenant_id": "globex"}, headers=ADMIN
        ).json()
        assert by_tenant["replayed"] == [second]
        assert broker.queue_depths()["tenantkeys.sign"] == 2
    finally:
        broker.close()
    assert client.get("/api/admin/dlq", headers=ADMIN).json()["depth"] == 0


def test_status_reports_every_part(client: TestClient, api_settings: Settings) -> None:
    runtime = services(client).runtime()
    runtime.service.create_keys("acme")
    runtime.service.sign("acme", b"hello")
    RotationSweep(runtime.service.store, runtime.redis, api_settings.redis_prefix).run(
        lambda version: None
    )
    _dead_letter(api_settings, "acme")
    status = client.get("/api/admin/kms/status", headers=READER).json()
    assert status["errors"] == {}
    assert status["provider"]["name"] == "local"
    assert status["breakers"] == {"local": "closed"}
    assert status["rotation"]["active_keys"] == 2 and status["rotation"]["overdue"] == 0
    assert status["rotation"]["last_sweep_at"] is not None
    assert status["rotation"]["next_rotation_at"] is not None
    assert status["dead_letters"]["depth"] == 1
    assert status["queues"] == {
        "tenantkeys.sign": 0,
        "tenantkeys.keys": 0,
        "tenantkeys.maintenance": 0,
    }
    assert status["cache"]["process"]["l1"]["misses"] >= 1
    assert status["kms"]["calls_total_this_process"] >= 1


def test_no_secret_in_any_response(
    client: TestClient, api_settings: Settings, tmp_path: Path
) -> None:
    service = services(client).runtime().service
    service.create_keys("acme")
    _dead_letter(api_settings, "acme")
    secrets = [ADMIN_TOKEN, READER_TOKEN, PAYLOAD.decode(), base64.b64encode(PAYLOAD).decode()]
    for version in service.list_keys("acme"):
        assert version.wrapped_secret and version.wrapped_data_key
        secrets += [
            base64.b64encode(version.wrapped_secret).decode()[:24],
            base64.b64encode(version.wrapped_data_key).decode()[:24],
        ]
    for key_file in ("master.key", "deadletter.key"):
        raw = (tmp_path / key_file).read_bytes()
        secrets += [raw.hex()[:24], base64.b64encode(raw).decode()[:24]]
    bodies = [
        client.get(p, headers=ADMIN).text
        for p in (
            "/health/ready",
            "/health/kms",
            "/metrics",
            "/tenants/acme/jwks.json",
            "/api/admin/kms/status",
            "/api/admin/dlq",
            "/openapi.json",
        )
    ]
    bodies.append(client.post("/api/admin/kms/validate", headers=ADMIN).text)
    bodies.append(json.dumps(dict(client.get("/health/kms").headers)))
    for body in bodies:
        for secret in secrets:
            assert secret not in body
