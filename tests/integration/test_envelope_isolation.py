"""Tenant isolation and secret hygiene of the envelope, on the local and AWS (moto) providers."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from tenantkeys.errors import ErrorCode, IntegrityError, KmsConfigError
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.schema import key_versions
from tenantkeys.keys.service import KeyService
from tenantkeys.providers import Context, DataKey, KmsProvider, create_provider
from tests.helpers import make_service
from tests.servers.fixtures import ProviderFactory

pytestmark = pytest.mark.integration


class RecordingProvider(KmsProvider):
    """Delegates to a real provider and remembers every plaintext data key it handed out."""

    def __init__(self, inner: KmsProvider) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.data_keys: list[bytes] = []

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def generate_data_key(self, context: Context) -> DataKey:
        made = self.inner.generate_data_key(context)
        self.data_keys.append(bytes(made.plaintext))
        return made

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        return self.inner.encrypt(plaintext, context)

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        return self.inner.decrypt(ciphertext, context)

    def describe(self):  # type: ignore[no-untyped-def]
        return self.inner.describe()


@pytest.fixture(params=["local", "aws"])
def provider(request: pytest.FixtureRequest, provider_factory: ProviderFactory) -> KmsProvider:
    return RecordingProvider(provider_factory(request.param))


@pytest.fixture
def service(
    provider: KmsProvider, postgres_url: str, redis_url: str, redis_prefix: str
) -> Iterator[KeyService]:
    svc = make_service(
        postgres_url, provider, redis_client=redis.Redis.from_url(redis_url), prefix=redis_prefix
    )
    yield svc
    svc.close()


def swap_wrapped_columns(service: KeyService, a: str, b: str) -> None:
    t = key_versions
    with service.store.engine.begin() as conn:
        rows = {
            row.tenant_id: row
            for row in conn.execute(
                sa.select(t.c.tenant_id, t.c.wrapped_secret, t.c.wrapped_data_key).where(
                    t.c.tenant_id.in_([a, b]), t.c.purpose == "signing"
                )
            )
        }
        for mine, theirs in ((a, b), (b, a)):
            conn.execute(
                t.update()
                .where(t.c.tenant_id == mine, t.c.purpose == "signing")
                .values(
                    wrapped_secret=rows[theirs].wrapped_secret,
                    wrapped_data_key=rows[theirs].wrapped_data_key,
                )
            )


def test_swapped_rows_make_both_tenants_fail_to_open(service: KeyService) -> None:
    service.create_keys("alpha")
    service.create_keys("beta")
    swap_wrapped_columns(service, "alpha", "beta")
    service.l1.clear()
    for tenant in ("alpha", "beta"):
        if service.l2 is not None:
            service.l2.invalidate(tenant, "signing")
        with pytest.raises(IntegrityError) as err:
            service.sign(tenant, b"p")
        assert err.value.code in {ErrorCode.KMS_INVALID_CIPHERTEXT}
    swap_wrapped_columns(service, "alpha", "beta")  # put back: both open again
    assert service.sign("alpha", b"p").tenant_id == "alpha"


def test_no_secret_bytes_in_redis_or_the_database(
    service: KeyService, provider: RecordingProvider, redis_url: str, redis_prefix: str
) -> None:
    for tenant in ("alpha", "beta", "gamma"):
        service.create_keys(tenant)
        service.sign(tenant, b"evidence")
        service.encrypt(tenant, b"record")
    service.rotate("alpha", "signing")
    service.sign("alpha", b"after rotation")
    secrets: list[bytes] = list(provider.data_keys)
    for tenant in ("alpha", "beta", "gamma"):
        signing_key = service.active_key(tenant, Purpose.SIGNING)
        assert signing_key.material is not None
        from cryptography.hazmat.primitives import serialization

        secrets.append(
            signing_key.material.private_key.private_bytes(  # type: ignore[union-attr]
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
        enc = service.active_key(tenant, Purpose.ENCRYPTION)
        assert enc.secret is not None
        secrets.append(enc.secret)
        assert "material" not in repr(signing_key) and signing_key.version.kid in repr(signing_key)
    assert len(secrets) >= 12

    def forms(secret: bytes) -> list[bytes]:
        return [
            secret,
            secret.hex().encode(),
            base64.b64encode(secret).rstrip(b"="),
            base64.urlsafe_b64encode(secret).rstrip(b"="),
        ]

    client = redis.Redis.from_url(redis_url)
    blobs: list[bytes] = []
    for key in client.scan_iter(match=f"{redis_prefix}:*"):
        kind = client.type(key)
        if kind == b"string":
            blobs.append(client.get(key) or b"")
    assert blobs, "expected L2 records in Redis"
    with service.store.engine.connect() as conn:
        for row in conn.execute(sa.select(key_versions)):
            blobs.extend(
                bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row
            )
    for secret in secrets:
        for form in forms(secret):
            assert not any(form in blob for blob in blobs)


def test_unknown_aws_key_is_a_configuration_error(provider_factory: ProviderFactory) -> None:
    moto = provider_factory.server("aws")
    provider_factory("aws")  # sets the credentials
    unknown = create_provider(
        "aws",
        {
            "key_id": "11111111-2222-3333-4444-555555555555",
            "region": "us-east-1",
            "endpoint_url": moto.endpoint,
        },
    )
    with pytest.raises(KmsConfigError) as err:
        unknown.encrypt(
            b"k" * 32, {"tenant_id": "alpha", "purpose": "signing", "version": "1", "kid": "x"}
        )
    assert err.value.code == ErrorCode.KMS_KEY_NOT_FOUND
    assert err.value.provider_code
    assert not unknown.health().ok


def test_aws_wrong_encryption_context_is_its_own_error(provider_factory: ProviderFactory) -> None:
    aws = provider_factory("aws")
    context = {"tenant_id": "alpha", "purpose": "signing", "version": "1", "kid": "x"}
    wrapped = aws.encrypt(b"k" * 32, context)
    with pytest.raises(IntegrityError) as err:
        aws.decrypt(wrapped, {**context, "tenant_id": "beta"})
    assert err.value.code == ErrorCode.KMS_INVALID_CIPHERTEXT
    assert err.value.provider_code == "InvalidCiphertextException"
