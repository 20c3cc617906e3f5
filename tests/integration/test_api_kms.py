"""The ops API against AWS KMS (moto's server): a stopped KMS and a denied permission.

The outage test runs the real ``tenantkeys api`` process: with the KMS stopped, ``/health/kms``
and ``/health/ready`` turn 503 naming KMS within one check interval, the breaker gauge shows
open, and ``validate`` reports which steps failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tenantkeys.api import create_app
from tenantkeys.config import load_settings
from tenantkeys.testing.moto_kms import REGION
from tests.integration.test_api_support import (
    ADMIN,
    api_process,
    environment,
    wait_for,
)
from tests.servers.fixtures import ProviderFactory

pytestmark = pytest.mark.integration
#: The API tests' fixtures: api_redis_url (own Redis DB), api_prefix, api_overrides, api_settings.
pytest_plugins = ["tests.integration.test_api_support"]

STEPS = ["generate", "encrypt", "decrypt", "describe", "wrong_context_decrypt"]


@pytest.fixture
def aws_overrides(
    provider_factory: ProviderFactory, api_overrides: dict[str, Any]
) -> dict[str, Any]:
    """Settings for the moto KMS, with the admin IAM user's credentials in the environment."""
    provider_factory("aws")  # sets AWS_ACCESS_KEY_ID etc. of the kms:* user
    moto = provider_factory.server("aws")
    return {
        **api_overrides,
        "kms_provider": "aws",
        "aws_kms_key_id": moto.key_id,
        "aws_region": REGION,
        "aws_endpoint_url": moto.endpoint,
        "kms_timeout_seconds": 2.0,
        "breaker_fail_max": 2,
        "breaker_reset_timeout_seconds": 600,
    }


@pytest.fixture
def aws_client(aws_overrides: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(load_settings(**aws_overrides))) as client:
        yield client


def steps_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step"]: step for step in report["steps"]}


def breaker_state(metrics: str, provider: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(f'tenantkeys_circuit_breaker_state{{provider="{provider}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_validate_passes_against_a_working_aws_kms(aws_client: TestClient) -> None:
    report = aws_client.post("/api/admin/kms/validate", headers=ADMIN).json()
    assert report["ok"] is True, report
    assert [s["step"] for s in report["steps"]] == STEPS
    assert report["provider"] == "aws"


def test_stopped_kms_is_reported_by_health_ready_breaker_and_validate(
    provider_factory: ProviderFactory, aws_overrides: dict[str, Any], tmp_path: Path
) -> None:
    env = environment(aws_overrides)
    with api_process(env, tmp_path / "api.log") as api:
        status, body = api.get("/health/kms")
        assert status == 200, body
        assert json.loads(body)["status"] == "UP"
        with provider_factory.outage("aws"):
            # Within one check interval (0.2 s here); the poll is bounded, not timed.
            status, body = wait_for(
                lambda: (r := api.get("/health/kms"))[0] == 503 and r, "/health/kms to be 503"
            )
            kms = json.loads(body)
            assert kms["status"] == "DOWN" and kms["provider"] == "aws"
            assert kms["error"]["code"] in (
                "TK-KMS-UNAVAILABLE",
                "TK-KMS-CIRCUIT-OPEN",
                "TK-KMS-TIMEOUT",
            )

            status, body = api.get("/health/ready")
            ready = json.loads(body)
            assert status == 503 and ready["failing"] == ["kms"], ready
            assert "kms" in ready["error"]["message"]
            assert ready["checks"]["redis"]["status"] == "UP"

            # Failed health checks count toward the shared breaker (fail_max=2 here).
            wait_for(
                lambda: (
                    api.get("/health/kms")
                    and breaker_state(api.get("/metrics")[1].decode(), "aws") == 2
                ),
                "the breaker gauge to show open",
                attempts=50,
            )
            status, body = api.get("/api/admin/kms/status", ADMIN)
            assert json.loads(body)["breakers"] == {"aws": "open"}

            status, body = api_post(api.url + "/api/admin/kms/validate")
            report = json.loads(body)
            assert status == 200 and report["ok"] is False
            steps = steps_by_name(report)
            # validate bypasses the open breaker: the KMS's own failure is what it reports.
            for name in ("generate", "encrypt", "describe"):
                assert steps[name]["ok"] is False
                assert steps[name]["error_code"] == "TK-KMS-UNAVAILABLE", steps[name]
                assert "reachable" in steps[name]["remedy"]
            assert steps["decrypt"]["skipped"] and steps["wrong_context_decrypt"]["skipped"]
            assert set(report["failed_steps"]) == set(STEPS)


def api_post(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=b"", method="POST", headers=ADMIN)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def test_denied_permission_is_named_by_validate(
    provider_factory: ProviderFactory, aws_overrides: dict[str, Any]
) -> None:
    # The IAM user may only kms:DescribeKey; the app is built inside, with its credentials.
    with (
        provider_factory.denied("aws"),
        TestClient(create_app(load_settings(**aws_overrides))) as client,
    ):
        report = client.post("/api/admin/kms/validate", headers=ADMIN).json()
        kms = client.get("/health/kms").json()
    steps = steps_by_name(report)
    assert report["ok"] is False
    assert steps["describe"]["ok"] is True, steps["describe"]
    assert kms["status"] == "UP"  # describe is allowed: health alone cannot see this
    for name, permission in (("generate", "kms:GenerateDataKey"), ("encrypt", "kms:Encrypt")):
        step = steps[name]
        assert step["error_code"] == "TK-KMS-ACCESS-DENIED", step
        assert f"denied {permission}" in step["remedy"], step["remedy"]
        assert "docs/" in step["remedy"]
    assert steps["decrypt"]["skipped"] is True
