"""``tenantkeys admin validate | status`` in process: JSON out, exit 0 when every step passed,
1 when one failed (a stopped KMS, a denied permission)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tenantkeys.cli import cli
from tenantkeys.testing.moto_kms import REGION
from tests.integration.test_api_support import environment
from tests.servers.fixtures import ProviderFactory

pytestmark = pytest.mark.integration
#: The API tests' fixtures: api_redis_url (own Redis DB), api_prefix, api_overrides, api_settings.
pytest_plugins = ["tests.integration.test_api_support"]


def run(overrides: dict[str, Any], *args: str) -> Result:
    return CliRunner().invoke(cli, ["admin", *args], env=environment(overrides))


def report_of(result: Result) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def steps(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step"]: step for step in report["steps"]}


def aws(provider_factory: ProviderFactory, overrides: dict[str, Any]) -> dict[str, Any]:
    moto = provider_factory.server("aws")
    return {
        **overrides,
        "kms_provider": "aws",
        "aws_kms_key_id": moto.key_id,
        "aws_region": REGION,
        "aws_endpoint_url": moto.endpoint,
        "kms_timeout_seconds": 2.0,
    }


def test_validate_and_status_pass_on_a_working_deployment(api_overrides: dict[str, Any]) -> None:
    result = run(api_overrides, "validate")
    assert result.exit_code == 0, result.output
    report = report_of(result)
    assert report["ok"] is True and report["provider"] == "local"
    assert all(step["ok"] for step in report["steps"])

    result = run(api_overrides, "status")
    assert result.exit_code == 0, result.output
    status = report_of(result)
    assert status["provider"]["name"] == "local" and status["errors"] == {}
    assert status["dead_letters"] == {"depth": 0, "oldest_age_seconds": 0.0}


def test_validate_names_the_failed_steps_when_the_kms_is_stopped(
    provider_factory: ProviderFactory, api_overrides: dict[str, Any]
) -> None:
    provider_factory("aws")
    overrides = aws(provider_factory, api_overrides)
    with provider_factory.outage("aws"):
        result = run(overrides, "validate")
    assert result.exit_code == 1, result.output
    report = report_of(result)
    assert report["ok"] is False
    assert {"generate", "encrypt", "describe"} <= set(report["failed_steps"])
    assert steps(report)["describe"]["error_code"] == "TK-KMS-UNAVAILABLE"
    assert "failed steps: generate, encrypt" in result.stderr


def test_validate_names_the_missing_permission(
    provider_factory: ProviderFactory, api_overrides: dict[str, Any]
) -> None:
    overrides = aws(provider_factory, api_overrides)
    with provider_factory.denied("aws"):
        result = run(overrides, "validate")
    assert result.exit_code == 1, result.output
    found = steps(report_of(result))
    assert found["encrypt"]["error_code"] == "TK-KMS-ACCESS-DENIED"
    assert "kms:Encrypt" in found["encrypt"]["remedy"]
    assert "kms:GenerateDataKey" in found["generate"]["remedy"]
    assert found["describe"]["ok"] is True
