"""The compact sign_batch with real workers on each broker: its signatures verify with a standard
JOSE library against the tenant's JWKS in every form (msgpack, JSON ``items``, compact JSON);
msgpack is msgpack on the wire; with message signing on, an ``auth-msgpack`` job is accepted,
an unsigned msgpack job refused, and a scoped producer cannot sign for another tenant; a
transient failure re-queues it as its JSON twin; a dead-lettered one replays from JSON."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from jwcrypto import jwk
from jwcrypto import jws as jose
from kombu import Connection, Exchange, Producer

from tenantkeys import jobs
from tenantkeys.client import SigningClient
from tenantkeys.config import load_settings
from tenantkeys.errors import InvalidRequest, ScopeDenied, TenantKeysError
from tenantkeys.queue.config import celery_config
from tenantkeys.signing import Signature, canonicalize
from tests.e2e.faults.sending import results
from tests.e2e.harness import Deployment, on_broker, redis_deployment, sign_and_scope, wait_for
from tests.helpers import self_signed_identity

pytestmark = pytest.mark.e2e

PAYLOADS = [b"first", b"\x00\xff raw bytes \x80", b"", b'{"b": 2, "a": 1}']
SCOPES = {
    "producers": [
        {"name": "billing", "certificate_subject": "CN=billing", "tenants": ["acme"]},
        {"name": "ops", "certificate_subject": "CN=ops", "tenants": ["*"]},
    ]
}


def verifies(jwks: dict[str, Any], token: str, payload: bytes) -> bool:
    """jwcrypto's verdict on the detached ``token`` over ``payload`` with the tenant's JWKS."""
    keys = jwk.JWKSet.from_json(json.dumps(jwks))
    parsed = jose.JWS()
    parsed.deserialize(token)
    parsed.verify(keys.get_key(parsed.jose_header["kid"]), detached_payload=payload)
    return parsed.is_valid


def jwks_of(deployment: Deployment, tenant: str) -> dict[str, Any]:
    runtime = deployment.runtime()
    try:
        return runtime.service.jwks(tenant)
    finally:
        runtime.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    yield from on_broker(request.param, tmp_path)


def test_every_form_gives_signatures_a_jose_library_verifies(deployment: Deployment) -> None:
    deployment.worker("w1")
    with deployment.client() as client:
        client.create_keys("acme", timeout=60)
        binary = client.sign_many("acme", PAYLOADS, timeout=60)
        items = client.sign_many("acme", PAYLOADS, binary=False, timeout=60)
        twin = {"tenant_id": "acme", "payloads": [jobs.encode_payload(p) for p in PAYLOADS]}
        compact_json = client.wait(client.send(jobs.SIGN_BATCH, twin), 60)
        canonical = client.sign_many("acme", [b'{"z": [1.0], "a": "x"}'], canonical_json=True)
    jwks = jwks_of(deployment, "acme")
    assert all(isinstance(s, Signature) for s in binary + items + canonical)
    signed = [s.jws for s in binary]  # type: ignore[union-attr]
    # Ed25519 is deterministic: the three forms give the same JWS, each verified on its own.
    assert signed == [s.jws for s in items] == compact_json["jws"]  # type: ignore[union-attr]
    assert compact_json["errors"] == [] and compact_json["tenant_id"] == "acme"
    for token, payload in zip(signed, PAYLOADS, strict=True):
        assert verifies(jwks, token, payload)
    assert verifies(jwks, canonical[0].jws, canonicalize(b'{"z": [1.0], "a": "x"}'))  # type: ignore[union-attr]
    with pytest.raises(Exception):
        verifies(jwks, signed[0], b"not the payload")


def _queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_a_binary_batch_is_msgpack_on_the_wire(tmp_path: Path) -> None:
    with redis_deployment(tmp_path) as deployment:
        runtime = deployment.runtime()  # the tenant's key first: the worker starts later
        runtime.service.create_keys("acme")
        runtime.close()
        with deployment.client() as client:
            binary = client.submit_batch("acme", PAYLOADS)
            as_json = client.submit_batch("acme", PAYLOADS, binary=False)
        wire = redis.Redis.from_url(deployment.redis_db.url)
        try:
            queued = {m["headers"]["id"]: m for m in _queued(wire, jobs.SIGN_QUEUE)}
        finally:
            wire.close()
        raw = queued[binary.job_id]
        assert raw["content-type"] == "application/x-msgpack"
        assert raw["content-encoding"] == "binary"
        body = base64.b64decode(raw["body"])
        args, kwargs, _embed = msgpack.unpackb(body, raw=False)
        assert args == [] and kwargs == {"tenant_id": "acme", "payloads": PAYLOADS}
        assert not any(jobs.encode_payload(p) in body.decode("latin-1") for p in PAYLOADS if p)
        assert queued[as_json.job_id]["content-type"] == "application/json"
        # And the worker takes both, each with its own result form.
        deployment.worker("w1")
        signed = binary.results(60)
        assert [s.jws for s in signed] == [s.jws for s in as_json.results(60)]  # type: ignore[union-attr]
        stored = results(deployment, [binary.job_id, as_json.job_id])
        assert "jws" in stored[binary.job_id]["result"]
        assert "results" in stored[as_json.job_id]["result"]


# -- message signing and producer scopes ---------------------------------------------------------


@pytest.fixture(params=["redis", "rabbitmq"])
def signing_on(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Deployment, Path]]:
    for deployment in on_broker(request.param, tmp_path):
        yield deployment, sign_and_scope(deployment, tmp_path, SCOPES)


def producer(deployment: Deployment, trusted: Path, name: str) -> SigningClient:
    """A client signing with its own certificate (kombu keeps one signer per process: the
    last client made signs, so producers take turns)."""
    key, cert = self_signed_identity(trusted, name)
    values = {
        **deployment.values,
        "message_signing_key_file": str(key),
        "message_signing_cert_file": str(cert),
    }
    return SigningClient.from_settings(load_settings(**values))


def _publish_unsigned(deployment: Deployment, kwargs: dict[str, Any]) -> str:
    options = deployment.settings
    transport = celery_config(options)["broker_transport_options"]
    job_id = str(uuid.uuid4())
    with Connection(options.effective_broker_url, transport_options=transport) as conn:
        Producer(conn, exchange=Exchange(jobs.EXCHANGE, type="direct")).publish(
            msgpack.packb([[], kwargs, {}], use_bin_type=True),
            routing_key=jobs.SIGN_QUEUE,
            headers={"id": job_id, "task": jobs.SIGN_BATCH, "lang": "py"},
            content_type="application/x-msgpack",
            content_encoding="binary",
            serializer=None,
            declare=[],
        )
    return job_id


def test_signed_msgpack_is_accepted_unsigned_refused_and_scopes_hold(
    signing_on: tuple[Deployment, Path],
) -> None:
    deployment, trusted = signing_on
    deployment.worker("w1")
    ops = producer(deployment, trusted, "ops")
    with ops:
        ops.create_keys("acme", timeout=60)
        ops.create_keys("globex", timeout=60)
        pending = ops.submit_batch("acme", PAYLOADS)
        signed = pending.results(60)
    assert all(isinstance(s, Signature) for s in signed)
    jwks = jwks_of(deployment, "acme")
    for item, payload in zip(signed, PAYLOADS, strict=True):
        assert verifies(jwks, item.jws, payload)  # type: ignore[union-attr]

    billing = producer(deployment, trusted, "billing")
    with billing:
        assert billing.producer.app.conf.task_serializer == "auth"
        inside = billing.sign_many("acme", [b"in scope"], timeout=60)
        assert isinstance(inside[0], Signature)
        outside = billing.submit_batch("globex", [b"not billing's", b"nor this"])
        with pytest.raises(ScopeDenied) as denied:
            outside.results(60)
        assert denied.value.code == "TK-SCOPE-DENIED"
    stored = results(deployment, [outside.job_id])[outside.job_id]
    assert stored["ok"] is False and stored["error"]["code"] == "TK-SCOPE-DENIED"
    assert "jws" not in json.dumps(stored)

    unsigned = _publish_unsigned(
        deployment, {"tenant_id": "acme", "payloads": [b"unsigned-marker-7f3a"]}
    )
    store = deployment.deadletters()

    def refused() -> str | None:
        found = results(deployment, [unsigned]).get(unsigned)
        if found is not None:
            return str(found["error"]["code"])
        return next((e.code for e in store.entries() if e.job_id == unsigned), None)

    assert wait_for(refused, 60, "the unsigned msgpack job's refusal") == "TK-MESSAGE-UNSIGNED"
    assert "unsigned-marker-7f3a" not in deployment.log("w1")


def test_bad_items_fail_alone_in_a_real_worker(deployment: Deployment) -> None:
    deployment.worker("w1")
    with deployment.client() as client:
        client.create_keys("acme", timeout=60)
        found = client.sign_many(
            "acme", [b'{"ok": 1}', b"x" * (1_048_576 + 1), b"{no"], canonical_json=True
        )
        with pytest.raises(TenantKeysError) as missing:
            client.sign_many("nokeys", [b"a"], timeout=60)
    assert missing.value.code == "TK-KEY-NOT-FOUND"
    assert isinstance(found[0], Signature)
    assert isinstance(found[1], InvalidRequest) and found[1].code == "TK-PAYLOAD-TOO-LARGE"
    assert isinstance(found[2], InvalidRequest) and found[2].code == "TK-INVALID-JSON"


# -- retries and dead letters (AWS KMS on moto, behind a proxy we switch off) --------------------

AWS_ROOT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class WireTap:
    """Content types a job's messages had on the Redis broker, queued or held unacked (a
    retry's countdown keeps it in kombu's ``unacked`` hash), polled until ``done``."""

    def __init__(self, deployment: Deployment, job_id: str) -> None:
        self.client = redis.Redis.from_url(deployment.redis_db.url)
        self.job_id = job_id
        self.seen: list[str] = []

    def poll(self) -> None:
        raws = [json.loads(v)[0] for v in self.client.hvals("unacked")]
        raws += [json.loads(v) for v in self.client.lrange(jobs.SIGN_QUEUE, 0, -1)]
        for raw in raws:
            if raw.get("headers", {}).get("id") == self.job_id:
                kind = f"{raw['content-type']} retries={raw['headers'].get('retries')}"
                if kind not in self.seen:
                    self.seen.append(kind)


def test_retries_requeue_the_json_twin_and_dead_letters_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto_kms = pytest.importorskip("tenantkeys.testing.moto_kms")
    from tests.e2e.harness import TcpProxy

    for name, value in AWS_ROOT.items():
        monkeypatch.setenv(name, value)
    with (
        moto_kms.moto_kms_server(str(tmp_path / "moto.log")) as server,
        redis_deployment(
            tmp_path,
            kms_provider="aws",
            aws_kms_key_id=server.key_id,
            aws_region=moto_kms.REGION,
            retry_base_seconds=0.5,
            retry_cap_seconds=1.0,
            breaker_fail_max=100,
        ) as deployment,
    ):
        proxy = TcpProxy(server.port)
        proxy.start()
        deployment.values["aws_endpoint_url"] = proxy.url
        try:
            deployment.worker("signer", queues=jobs.SIGN_QUEUE, concurrency=1, extra_env=AWS_ROOT)
            deployment.worker("keys", queues=jobs.KEYS_QUEUE, concurrency=1, extra_env=AWS_ROOT)
            with deployment.client() as client:
                client.create_keys("acme", ["signing"], timeout=60)
                client.create_keys("globex", ["signing"], timeout=60)
                proxy.stop()  # the KMS is gone: the signer has no unlocked key yet
                retried = client.submit_batch("globex", PAYLOADS)
                first = WireTap(deployment, retried.job_id)

                def requeued() -> bool:
                    first.poll()
                    return any(s.startswith("application/json") for s in first.seen)

                wait_for(requeued, 30, "the compact job's re-queued JSON twin", 0.01)
                proxy.start()  # back before the retries run out: the retry signs
                recovered = retried.results(60)
                first.client.close()
                assert first.seen[0].startswith("application/x-msgpack"), first.seen
                assert all(isinstance(r, Signature) for r in recovered), recovered
                globex = jwks_of(deployment, "globex")
                for item, payload in zip(recovered, PAYLOADS, strict=True):
                    assert verifies(globex, item.jws, payload)  # type: ignore[union-attr]
                stored = results(deployment, [retried.job_id])[retried.job_id]["result"]
                assert set(stored) >= {"jws", "errors", "kid"} and "results" not in stored

                proxy.stop()  # gone again, for acme's first signature: a dead letter
                pending = client.submit_batch("acme", PAYLOADS)
                tap = WireTap(deployment, pending.job_id)
                store = deployment.deadletters()

                def dead() -> list[Any]:
                    tap.poll()
                    return [e for e in store.entries() if e.job_id == pending.job_id]

                entry = wait_for(dead, 60, "the compact job's dead letter", 0.01)[0]
                tap.client.close()
                with pytest.raises(TenantKeysError, match="dead-lettered"):
                    pending.results(30)
            assert entry.code == "TK-KMS-UNAVAILABLE" and entry.attempts == 4, entry
            assert entry.task == jobs.SIGN_BATCH and entry.arguments["payload_count"] == 4
            # The first delivery was msgpack; every re-queued attempt went as JSON.
            assert tap.seen[0].startswith("application/x-msgpack"), tap.seen
            assert any(s.startswith("application/json") for s in tap.seen[1:]), tap.seen
            assert all(s.startswith("application/json") for s in tap.seen[1:]), tap.seen
            # The sealed arguments are the JSON twin: base64 payloads, nothing raw.
            sealed = store._sealer.open(  # the store has no reader of sealed kwargs
                entry.id, store._client.hget(store._entry_key(entry.id), "sealed").decode()
            )
            assert sealed["kwargs"] == jobs.json_safe({"tenant_id": "acme", "payloads": PAYLOADS})
            assert json.loads(json.dumps(sealed["kwargs"])) == sealed["kwargs"]

            proxy.start()  # the KMS is back: the operator replays
            replay = deployment.spawn(
                "replay",
                [
                    __import__("sys").executable,
                    "-c",
                    "import sys; from tenantkeys.cli import main; sys.exit(main())",
                    "dlq",
                    "replay",
                    "--all",
                ],
                AWS_ROOT,
            )
            assert replay.wait(120) == 0, deployment.log("replay")
            with deployment.client() as client:
                replayed = client.wait(pending.job_id, 60)
            assert store.depth() == 0
            assert replayed["errors"] == [] and len(replayed["jws"]) == len(PAYLOADS)
            jwks = jwks_of(deployment, "acme")
            for token, payload in zip(replayed["jws"], PAYLOADS, strict=True):
                assert verifies(jwks, token, payload)
            for name in ("signer", "keys", "replay"):
                log = deployment.log(name)
                assert jobs.encode_payload(PAYLOADS[1]) not in log and "raw bytes" not in log
        finally:
            proxy.stop()
