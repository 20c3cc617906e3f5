"""Builders shared by the core tests: a KeyService on a given database, Redis and provider."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tenantkeys.jobs.deadletters import ArgumentSealer, DeadLetterStore
from tenantkeys.jobs.runner import JobRunner
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.kms import ProviderSet
from tenantkeys.keys.material import UnlockedKey
from tenantkeys.keys.redis_cache import WrappedKeyCache
from tenantkeys.keys.service import KeyService, KeyServiceOptions, utcnow
from tenantkeys.keys.store import KeyStore
from tenantkeys.providers import Context, KmsProvider
from tenantkeys.providers.local import LocalProvider
from tenantkeys.resilience import RetryPolicy


class StatementCounter:
    """Counts SQL statements an engine executes (to prove cache hits skip the database)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1


def make_service(
    db_url: str,
    provider: KmsProvider,
    *,
    redis_client: redis.Redis | None = None,
    prefix: str = "tk",
    ttl: float = 300,
    clock: Callable[[], datetime] = utcnow,
    extra_providers: tuple[KmsProvider, ...] = (),
    **options: Any,
) -> KeyService:
    store = KeyStore.from_url(db_url)
    store.migrate()
    l2 = WrappedKeyCache(redis_client, prefix, 3600) if redis_client is not None else None
    l1: LocalKeyCache[UnlockedKey] = LocalKeyCache(ttl, 1000)
    return KeyService(
        store,
        ProviderSet.of(provider, *extra_providers),
        l1,
        l2,
        KeyServiceOptions(**options),
        clock=clock,
    )


class FlakyLocal(LocalProvider):
    """The local provider, whose decrypt can be told to raise (a KMS failing on demand)."""

    fail_with: Exception | None = None

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        if self.fail_with is not None:
            raise self.fail_with
        return super().decrypt(ciphertext, context)


def make_runner(tmp_path: Path, provider: KmsProvider, max_retries: int) -> JobRunner:
    """A JobRunner over SQLite and fakeredis with L1 off, so every signature needs the KMS."""
    import fakeredis

    store = KeyStore.from_url(f"sqlite:///{tmp_path / 'keys.db'}")
    store.migrate()
    service = KeyService(store, ProviderSet.of(provider), LocalKeyCache(0, 10))
    service.create_keys("acme")
    deadletters = DeadLetterStore(fakeredis.FakeRedis(), "tk", ArgumentSealer(os.urandom(32)))
    return JobRunner(service, deadletters, RetryPolicy(max_retries, 0.1, 1.0), worker="w1")


def self_signed_identity(directory: Path, name: str, days: int = 30) -> tuple[Path, Path]:
    """A private key (0600) and a self-signed certificate, as PEM files named ``name``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
