"""The provider contract against real cloud accounts; skipped unless credentials are set.

Each provider runs only when its variables are present (the SDK's own credential chain
supplies the identity):

* aws   -- ``TK_LIVE_AWS_KMS_KEY_ID``, ``TK_LIVE_AWS_REGION``; credentials from the AWS default
  chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` / role).
* vault -- ``TK_LIVE_VAULT_ADDR``, ``TK_LIVE_VAULT_KEY_NAME`` (a derived aes256-gcm96 Transit
  key), optional ``TK_LIVE_VAULT_MOUNT`` (default ``transit``), ``TK_LIVE_VAULT_NAMESPACE``;
  token from ``VAULT_TOKEN``.
* gcp   -- ``TK_LIVE_GCP_KEY_NAME`` (full CryptoKey resource name); Application Default
  Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server).
* azure -- ``TK_LIVE_AZURE_VAULT_URL``, ``TK_LIVE_AZURE_KEY_NAME`` (an RSA key); credentials
  from ``DefaultAzureCredential`` (``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``,
  ``AZURE_CLIENT_SECRET``, workload or managed identity).

They never create, disable or delete cloud keys; they wrap and unwrap throw-away bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tenantkeys.errors import IntegrityError
from tenantkeys.providers import KmsProvider, create_provider

pytestmark = [pytest.mark.integration, pytest.mark.live]

CONTEXT = {"tenant_id": "live-a", "purpose": "encryption", "version": "1", "kid": "live-kid"}


def _options(name: str) -> dict[str, Any] | None:
    env = os.environ.get
    if name == "aws" and env("TK_LIVE_AWS_KMS_KEY_ID") and env("TK_LIVE_AWS_REGION"):
        return {"key_id": env("TK_LIVE_AWS_KMS_KEY_ID"), "region": env("TK_LIVE_AWS_REGION")}
    if name == "vault" and env("TK_LIVE_VAULT_ADDR") and env("TK_LIVE_VAULT_KEY_NAME"):
        return {
            "addr": env("TK_LIVE_VAULT_ADDR"),
            "key_name": env("TK_LIVE_VAULT_KEY_NAME"),
            "mount": env("TK_LIVE_VAULT_MOUNT", "transit"),
            "namespace": env("TK_LIVE_VAULT_NAMESPACE"),
        }
    if name == "gcp" and env("TK_LIVE_GCP_KEY_NAME"):
        return {"key_name": env("TK_LIVE_GCP_KEY_NAME")}
    if name == "azure" and env("TK_LIVE_AZURE_VAULT_URL") and env("TK_LIVE_AZURE_KEY_NAME"):
        return {
            "vault_url": env("TK_LIVE_AZURE_VAULT_URL"),
            "key_name": env("TK_LIVE_AZURE_KEY_NAME"),
        }
    return None


@pytest.fixture(params=["aws", "vault", "gcp", "azure"])
def live_provider(request: pytest.FixtureRequest) -> Iterator[KmsProvider]:
    options = _options(request.param)
    if options is None:
        pytest.skip(f"no live {request.param} credentials (see this module's docstring)")
    provider = create_provider(request.param, options)
    yield provider
    provider.close()


def test_live_round_trip_and_context_binding(live_provider: KmsProvider) -> None:
    data_key = live_provider.generate_data_key(CONTEXT)
    assert live_provider.decrypt(data_key.wrapped, CONTEXT) == data_key.plaintext
    with pytest.raises(IntegrityError):
        live_provider.decrypt(data_key.wrapped, {**CONTEXT, "tenant_id": "live-b"})


def test_live_describe_and_health(live_provider: KmsProvider) -> None:
    assert live_provider.describe().enabled is True
    report = live_provider.health()
    assert report.ok is True, report.detail
    assert report.latency_ms > 0
