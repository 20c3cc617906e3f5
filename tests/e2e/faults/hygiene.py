"""The secret scan: look for key material and signed payloads everywhere a run leaves data.

Secrets are obtained in the test process: every key version still holding a wrapped secret is
opened through the deployment's own KeyService (the Ed25519 seed or ES256 scalar, the AES key
of an encryption version) and its data key unwrapped by the KMS; payloads are the distinctive
random bytes each fault test signs. Each secret is searched in raw, hex, base64 and base64url
form. Places: every Redis key of the deployment's database (all types, field names too), every
row of every table of the key store, the dead-letter entries, every result write the backend
published, every task event (what Flower receives) and every process log of the run.

Broker queues (``tenantkeys.*`` lists and kombu's ``unacked`` hash) carry payloads by design
while a job is in flight; a payload found there is counted as in transit, not as a leak. Key
material is never allowed anywhere.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tenantkeys import jobs
from tenantkeys.keys.schema import key_versions
from tenantkeys.keys.store import _to_version
from tests.e2e.harness import Deployment

#: Redis key suffixes of broker structures (messages in flight carry their payload by design).
BROKER_KEYS = (*jobs.QUEUES, "unacked", "unacked_index", "unacked_mutex")


def forms(secret: bytes) -> list[bytes]:
    """The encodings a leaked secret would most likely take."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def private_bytes(material: Any) -> bytes:
    key = material.private_key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.private_numbers().private_value.to_bytes(32, "big")


@dataclass
class SecretScan:
    """Secrets and haystacks of one fault test; :meth:`check` asserts no secret is found."""

    key_secrets: dict[str, bytes] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)
    haystacks: dict[str, bytes] = field(default_factory=dict)
    in_transit: dict[str, bytes] = field(default_factory=dict)
    checked: bool = False
    payloads_in_transit: int = 0

    def add_payloads(self, items: Iterable[tuple[str, bytes]]) -> None:
        for name, payload in items:
            self.payloads[name] = payload

    def add_key_material(self, deployment: Deployment) -> None:
        """Open every stored key version that still has a secret; remember its bytes."""
        runtime = deployment.runtime()
        try:
            service = runtime.service
            with service.store.engine.connect() as conn:
                rows = list(conn.execute(sa.select(key_versions)))
            for row in rows:
                version = _to_version(row)
                if not version.has_secret or version.status.value == "revoked":
                    continue
                unlocked = service._unlock(version)
                name = f"{version.tenant_id}/{version.purpose.value}/v{version.version}"
                if unlocked.material is not None:
                    self.key_secrets[name + "/private"] = private_bytes(unlocked.material)
                if unlocked.secret is not None:
                    self.key_secrets[name + "/aes"] = bytes(unlocked.secret)
                assert version.wrapped_data_key is not None
                provider = service.providers.get(version.provider)
                data_key = provider.decrypt(version.wrapped_data_key, version.context)
                self.key_secrets[name + "/data-key"] = bytes(data_key)
        finally:
            runtime.close()

    def add_deployment(
        self,
        deployment: Deployment,
        *,
        redis_urls: Iterable[str] = (),
        results: Iterable[bytes] = (),
        events: Iterable[dict[str, Any]] = (),
    ) -> None:
        """Every place of ``deployment`` where data stays after a run."""
        settings = deployment.settings
        urls = {settings.redis_url, settings.effective_result_backend, *redis_urls}
        for url in urls:
            if url.startswith("redis"):
                self._redis(url)
        engine = sa.create_engine(settings.database_url)
        try:
            meta = sa.MetaData()
            meta.reflect(engine)
            with engine.connect() as conn:
                for table in meta.sorted_tables:
                    for i, row in enumerate(conn.execute(sa.select(table))):
                        self.haystacks[f"db:{table.name}:{i}"] = _bytes(tuple(row))
        finally:
            engine.dispose()
        try:
            entries = deployment.deadletters().entries()
        except redis.RedisError:
            entries = []
        for entry in entries:
            self.haystacks[f"dlq:{entry.id}"] = json.dumps(entry.to_dict()).encode()
        for i, raw in enumerate(results):
            self.haystacks[f"result-write:{i}"] = raw
        for i, event in enumerate(events):
            self.haystacks[f"event:{i}"] = json.dumps(event, default=str).encode()
        for log in sorted(Path(deployment.tmp).glob("*.log")):
            self.haystacks[f"log:{log.name}"] = log.read_bytes()

    def _redis(self, url: str) -> None:
        """Every key: each URL is a database of the deployment's own, or a private server."""
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            for key in client.scan_iter(count=1000):
                name = key.decode(errors="replace")
                kind = client.type(key).decode()
                if kind == "string":
                    value = client.get(key) or b""
                elif kind == "hash":
                    value = _bytes(client.hgetall(key))
                elif kind == "list":
                    value = _bytes(client.lrange(key, 0, -1))
                elif kind == "set":
                    value = _bytes(client.smembers(key))
                elif kind == "zset":
                    value = _bytes(client.zrange(key, 0, -1, withscores=True))
                elif kind == "stream":
                    value = _bytes(client.xrange(key))
                else:
                    value = b""
                where = self.in_transit if name.endswith(BROKER_KEYS) else self.haystacks
                where[f"redis:{name}"] = key + b"\x00" + value
        except redis.RedisError:
            pass
        finally:
            client.close()

    def findings(self) -> list[str]:
        """``secret -> place`` for every secret found outside broker queues."""
        found = []
        every_place = {**self.haystacks, **self.in_transit}
        for name, secret in self.key_secrets.items():
            for form in forms(secret):
                found += [f"key {name} in {p}" for p, hay in every_place.items() if form in hay]
        for name, payload in self.payloads.items():
            for form in forms(payload)[:1] + forms(payload)[2:]:
                found += [f"payload {name} in {p}" for p, h in self.haystacks.items() if form in h]
        return sorted(set(found))

    def check(self) -> None:
        self.checked = True
        assert self.key_secrets, "the scan needs the deployment's key material"
        assert self.haystacks, "the scan found nowhere to look"
        self.payloads_in_transit = sum(
            1
            for payload in self.payloads.values()
            if any(base64.b64encode(payload) in hay for hay in self.in_transit.values())
        )
        leaks = self.findings()
        assert not leaks, "secrets found: " + "; ".join(leaks[:20])

    def summary(self) -> dict[str, int]:
        return {
            "key_secrets": len(self.key_secrets),
            "payloads": len(self.payloads),
            "places": len(self.haystacks) + len(self.in_transit),
            "bytes_scanned": sum(len(h) for h in self.haystacks.values())
            + sum(len(h) for h in self.in_transit.values()),
            "payloads_in_transit": self.payloads_in_transit,
            "leaks": 0,
        }


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return b"\x00".join(_bytes(k) + b"=" + _bytes(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return b"\x00".join(_bytes(v) for v in value)
    return str(value).encode()


def scan_run(
    scan: SecretScan,
    deployment: Deployment,
    payloads: Iterable[tuple[str, bytes]],
    *,
    results: Iterable[bytes] = (),
    events: Iterable[dict[str, Any]] = (),
    redis_urls: Iterable[str] = (),
) -> None:
    """Collect everything of one fault test's run and assert that no secret is in it."""
    events = list(events)
    assert events, "no task events were captured: the scan would miss what Flower sees"
    scan.add_payloads(payloads)
    scan.add_key_material(deployment)
    scan.add_deployment(deployment, redis_urls=redis_urls, results=results, events=events)
    scan.check()
