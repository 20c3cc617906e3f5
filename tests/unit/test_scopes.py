"""Per-producer tenant scopes: the file, the look-ups and the check (no services)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tenantkeys import telemetry
from tenantkeys.config import load_settings
from tenantkeys.errors import ConfigurationError, ErrorCode, InvalidRequest
from tenantkeys.jobs.scopes import ProducerScopes, ScopeDenied, normalized_subject

pytestmark = pytest.mark.unit

TOKEN = "billing-token-1"
FILE: dict[str, Any] = {
    "producers": [
        {
            "name": "billing",
            "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
            "tenants": ["acme", "globex"],
        },
        {
            "name": "evidence-java",
            "certificate_subject": "CN=evidence-java,O=Example Corp",
            "tenants": ["*"],
        },
        {"name": "reports", "certificate_subject": "CN=reports", "tenants": ["acme"]},
    ]
}


def write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "scopes.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


@pytest.fixture
def scopes(tmp_path: Path) -> ProducerScopes:
    return ProducerScopes.from_file(write(tmp_path, FILE))


def test_token_finds_its_producer_and_only_it(scopes: ProducerScopes) -> None:
    producer = scopes.by_token(TOKEN)
    assert producer is not None and producer.name == "billing"
    assert producer.allows("acme") and not producer.allows("initech")
    assert scopes.by_token("billing-token-2") is None
    assert scopes.by_token("\udc80") is None  # a lone surrogate is not a crash


@pytest.mark.parametrize(
    "subject",
    [
        "CN=evidence-java,O=Example Corp",
        "cn=Evidence-Java,o=example  corp",
        "2.5.4.3=evidence-java,2.5.4.10=Example Corp",
    ],
)
def test_subjects_compare_normalized(scopes: ProducerScopes, subject: str) -> None:
    producer = scopes.by_subject(subject)
    assert producer is not None and producer.name == "evidence-java"
    assert producer.tenants is None and producer.allows("anyone")


@pytest.mark.parametrize(
    "subject", ["O=Example Corp,CN=evidence-java", "CN=evidence-java", "CN=evil", "=="]
)
def test_other_subjects_are_no_producer(scopes: ProducerScopes, subject: str) -> None:
    assert scopes.by_subject(subject) is None


def test_check_refuses_naming_producer_and_count(scopes: ProducerScopes) -> None:
    producer = scopes.by_subject("CN=reports")
    assert producer is not None
    scopes.check(producer, ["acme", "acme"])
    before = _refusals("reports", "queue")
    with pytest.raises(ScopeDenied) as err:
        scopes.check(producer, ["acme", "globex", "initech"], path="queue")
    assert err.value.code == ErrorCode.SCOPE_DENIED
    assert isinstance(err.value, InvalidRequest) and err.value.action == "reject"
    assert err.value.http_status == 403
    assert "'reports'" in err.value.message and "'globex' and 1 more" in err.value.message
    assert _refusals("reports", "queue") == before + 1


def test_check_without_path_counts_nothing(scopes: ProducerScopes) -> None:
    producer = scopes.by_subject("CN=reports")
    assert producer is not None
    before = _refusals("reports", "http")
    with pytest.raises(ScopeDenied):
        scopes.check(producer, ["globex"])
    assert _refusals("reports", "http") == before


def test_metric_label_is_a_producer_name_only() -> None:
    with pytest.raises(ValueError):
        telemetry.record_scope_refusal("not a name!", "queue")
    with pytest.raises(ValueError):
        telemetry.record_scope_refusal("billing", "smtp")  # type: ignore[arg-type]


def _entry(**fields: object) -> dict[str, Any]:
    return {"producers": [{"name": "p", "tenants": ["acme"], **fields}]}


_TOKEN = "ab" * 32


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("{not json", "is not JSON"),
        ([], 'one key, "producers"'),
        ({"producers": {}}, "must be a list"),
        ({"producers": ["x"]}, "producer #1 must be a JSON object"),
        ({"producers": [{"name": "bad name", "tenants": ["*"]}]}, '"name" must be'),
        ({"producers": [{"name": "unlisted", "tenants": ["*"]}]}, "is reserved"),
        (_entry(), "exactly one of"),
        (_entry(token_sha256=_TOKEN, certificate_subject="CN=p"), "exactly one of"),
        (_entry(token_sha256="abc"), "64 hex digits"),
        (_entry(certificate_subject="not a dn"), "RFC 4514"),
        (_entry(certificate_subject=""), "RFC 4514"),
        (_entry(token_sha256=_TOKEN, extra=1), "unknown field(s) 'extra'"),
        ({"producers": [{"name": "p", "token_sha256": _TOKEN, "tenants": []}]}, "non-empty"),
        (
            {"producers": [{"name": "p", "token_sha256": _TOKEN, "tenants": ["*", "a"]}]},
            "only entry",
        ),
        (
            {"producers": [{"name": "p", "token_sha256": _TOKEN, "tenants": ["\udc80"]}]},
            "'\\udc80' is not a tenant id",
        ),
        (
            {
                "producers": [
                    {"name": "p", "token_sha256": _TOKEN, "tenants": ["a"]},
                    {"name": "p", "certificate_subject": "CN=q", "tenants": ["a"]},
                ]
            },
            "producer 'p': the name is used twice",
        ),
        (
            {
                "producers": [
                    {"name": "p", "token_sha256": _TOKEN, "tenants": ["a"]},
                    {"name": "q", "token_sha256": _TOKEN.upper(), "tenants": ["a"]},
                ]
            },
            "producer 'q': the token is also 'p''s",
        ),
        (
            {
                "producers": [
                    {"name": "p", "certificate_subject": "CN=x", "tenants": ["a"]},
                    {"name": "q", "certificate_subject": "cn=X", "tenants": ["a"]},
                ]
            },
            "subject is also 'p''s",
        ),
    ],
)
def test_bad_files_are_config_invalid_naming_entry(
    tmp_path: Path, document: object, says: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        ProducerScopes.from_file(write(tmp_path, document))
    assert err.value.code == ErrorCode.CONFIG_INVALID
    assert "TENANTKEYS_PRODUCER_SCOPES_FILE" in err.value.message
    assert says in err.value.message


def test_missing_file_is_config_invalid(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as err:
        ProducerScopes.from_file(tmp_path / "absent.json")
    assert err.value.code == ErrorCode.CONFIG_INVALID and "cannot be read" in err.value.message


def test_from_settings_off_when_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENANTKEYS_PRODUCER_SCOPES_FILE", raising=False)
    assert ProducerScopes.from_settings(load_settings()) is None
    monkeypatch.setenv("TENANTKEYS_PRODUCER_SCOPES_FILE", "")
    assert ProducerScopes.from_settings(load_settings()) is None
    monkeypatch.setenv("TENANTKEYS_PRODUCER_SCOPES_FILE", str(write(tmp_path, FILE)))
    found = ProducerScopes.from_settings(load_settings())
    assert found is not None and {p.name for p in found.producers} == {
        "billing",
        "evidence-java",
        "reports",
    }


def test_normalized_subject_keeps_rdn_order() -> None:
    assert normalized_subject("CN=a,O=b") != normalized_subject("O=b,CN=a")
    assert normalized_subject("CN=a+OU=x,O=b") == normalized_subject("OU=X+CN=A,O=B")


def _refusals(producer: str, path: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "tenantkeys_scope_refusals_total", {"producer": producer, "path": path}
    )
    return value or 0.0


# -- the queue path: workers/producers.py over signed message bodies ------------------------


class _Message:
    """What the consumer hands the checks: headers, the raw body, and its decoded form."""

    def __init__(self, body: bytes, task: str | None, job_id: str, decoded: object) -> None:
        self.headers = {"id": job_id, **({"task": task} if task else {})}
        self.body = body
        self.content_type = "application/data"
        self._decoded = decoded

    def decode(self) -> object:
        return self._decoded


class _Producers:
    """Signing identities in one trusted store, and a signed message maker per identity."""

    def __init__(self, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from tenantkeys.queue import message_signing

        self.store = store
        self.identities: dict[str, tuple[Path, Path]] = {}
        for name in ("worker", "billing", "ops", "stranger"):
            self.identities[name] = _identity(store, name)
        self.trusted = message_signing.TrustedCertificates(store)
        monkeypatch.setattr(message_signing, "_trusted", self.trusted)

    def message(
        self,
        who: str,
        task: str | None,
        kwargs: dict[str, Any],
        *,
        job_id: str = "j1",
        **embed: Any,
    ) -> _Message:
        from celery.security.certificate import Certificate
        from celery.security.key import PrivateKey
        from celery.security.serialization import SecureSerializer

        key, cert = self.identities[who]
        signer = SecureSerializer(
            PrivateKey(key.read_text()), Certificate(cert.read_text()), self.trusted, "sha256"
        )
        body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, **embed}]
        signed = signer.serialize(body)
        # What kombu's decode would give: the serializer verifies and returns the body.
        return _Message(signed, task, job_id, signer.deserialize(signed))


def _identity(directory: Path, name: str) -> tuple[Path, Path]:
    """A key and a certificate with subject ``O=Example Corp, CN=<name>`` (two attributes)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
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
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


QUEUE_SCOPES: dict[str, Any] = {
    "producers": [
        {
            "name": "billing",
            "certificate_subject": "CN=billing,O=Example Corp",
            "tenants": ["acme"],
        },
        {"name": "ops", "certificate_subject": "CN=ops,O=Example Corp", "tenants": ["*"]},
    ]
}


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, _Producers, Any]:
    import fakeredis

    from tenantkeys.jobs.scopes import JobOwners
    from workers.producers import QueueScopes

    store = tmp_path / "trusted"
    store.mkdir()
    producers = _Producers(store, monkeypatch)
    client = fakeredis.FakeRedis()
    owners = JobOwners(client, "tkunit", 60)
    scopes = ProducerScopes.from_file(write(tmp_path, QUEUE_SCOPES))
    subject = "CN=worker,O=Example Corp"
    return QueueScopes(scopes, subject, owners), producers, client


def _code(refusal: Any) -> str | None:
    return None if refusal is None else str(refusal.error.code)


def test_signer_subject_is_the_certificate_that_signed(queue: tuple[Any, _Producers, Any]) -> None:
    from tenantkeys.queue.message_signing import signer_subject

    _checks, producers, _client = queue
    message = producers.message("billing", jobs_sign(), {"tenant_id": "acme"})
    assert signer_subject(message.body) == "CN=billing,O=Example Corp"
    assert signer_subject(b"not an envelope") is None
    assert signer_subject("") is None
    # A big body: the signer is read from the envelope's head.
    big = producers.message("ops", jobs_sign(), {"tenant_id": "acme", "payload": "A" * 100_000})
    assert len(big.body) > 100_000 and signer_subject(big.body) == "CN=ops,O=Example Corp"


def jobs_sign() -> str:
    from tenantkeys import jobs

    return jobs.SIGN


def test_queue_checks(queue: tuple[Any, _Producers, Any]) -> None:
    from tenantkeys import jobs

    checks, producers, client = queue
    sign = {"tenant_id": "acme", "payload": "YQ=="}
    other = {"tenant_id": "globex", "payload": "YQ=="}
    m = producers.message
    # In scope, the workers' own, and "*": let through.
    assert checks.refusal(m("billing", jobs.SIGN, sign, job_id="a")) is None
    assert checks.refusal(m("worker", jobs.SIGN, other, job_id="w")) is None
    assert checks.refusal(m("ops", jobs.ROTATION_SWEEP, {}, job_id="o1")) is None
    assert checks.refusal(m("ops", jobs.SIGN, other, job_id="o2", callbacks=[{}])) is None
    # Out of scope, every way.
    denied = [
        m("billing", jobs.SIGN, other, job_id="b1"),
        m("billing", jobs.SIGN_BATCH, {"items": [sign, other]}, job_id="b2"),
        m("billing", jobs.CREATE_KEYS, {"tenant_id": "globex"}, job_id="b3"),
        m("billing", jobs.ROTATION_SWEEP, {}, job_id="b4"),
        m("billing", "celery.chain", {}, job_id="b5"),
        m("billing", jobs.SIGN, sign, job_id="b6", callbacks=[{"task": jobs.SIGN}]),
        m("billing", jobs.SIGN, sign, job_id="b7", chain=[{"task": jobs.SIGN}]),
        m("stranger", jobs.SIGN, sign, job_id="s1"),
    ]
    refusals = [checks.refusal(message) for message in denied]
    assert [_code(r) for r in refusals] == ["TK-SCOPE-DENIED"] * len(denied)
    assert [r.producer for r in refusals] == ["billing"] * 7 + ["unlisted"]
    # A tenant id that is not a string is no tenant: the contract rejects it, not the scope.
    assert checks.refusal(m("billing", jobs.SIGN, {"tenant_id": ["globex"]}, job_id="x")) is None
    # A signed message whose signer cannot be named is refused; an unsigned one is Celery's.
    garbled = m("billing", jobs.SIGN, sign, job_id="g1")
    garbled.body = b"garbled"
    assert _code(checks.refusal(garbled)) == "TK-SCOPE-DENIED"
    garbled.content_type = "application/json"
    assert checks.refusal(garbled) is None
    # Protocol 1 (no task header) is refused while scopes are on.
    assert _code(checks.refusal(m("billing", None, sign, job_id="p1"))) == "TK-INVALID-ARGUMENT"
    # Job ids: billing's "a" is billing's; ops reusing it is a conflict, billing again is not.
    conflict = checks.refusal(m("ops", jobs.SIGN, sign, job_id="a"))
    assert _code(conflict) == "TK-JOB-ID-CONFLICT" and conflict.keeps_result
    assert conflict.producer == "ops" and "'billing'" in conflict.error.message
    assert checks.refusal(m("billing", jobs.SIGN, sign, job_id="a")) is None
    # Out of scope under someone else's id: the conflict wins, so no result is overwritten.
    assert _code(checks.refusal(m("billing", jobs.SIGN, other, job_id="o2"))) == (
        "TK-JOB-ID-CONFLICT"
    )
    # A refused job claims no id: the id stays free for its rightful producer.
    assert checks.refusal(m("ops", jobs.SIGN, sign, job_id="b1")) is None
    assert 0 < client.ttl(next(iter(client.scan_iter("tkunit:job-producer:*")))) <= 60


def test_redis_down_skips_only_the_job_id_check(queue: tuple[Any, _Producers, Any]) -> None:
    import redis

    from tenantkeys import jobs

    checks, producers, _client = queue

    def down(*_: Any, **__: Any) -> Any:
        raise redis.ConnectionError("down")

    checks.owners.claim = down
    checks.owners.owner_other_than = down
    other = {"tenant_id": "globex", "payload": "YQ=="}
    assert checks.refusal(producers.message("billing", jobs.SIGN, {"tenant_id": "acme"})) is None
    refused = checks.refusal(producers.message("billing", jobs.SIGN, other))
    assert _code(refused) == "TK-SCOPE-DENIED"


def test_scopes_without_message_signing_stop_the_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from workers.producers import QueueScopes

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENANTKEYS_PRODUCER_SCOPES_FILE", str(write(tmp_path, FILE)))
    monkeypatch.delenv("TENANTKEYS_MESSAGE_SIGNING", raising=False)
    with pytest.raises(ConfigurationError) as err:
        QueueScopes.from_settings(load_settings())
    assert err.value.code == ErrorCode.CONFIG_INVALID
    assert "TENANTKEYS_MESSAGE_SIGNING" in err.value.message
    monkeypatch.delenv("TENANTKEYS_PRODUCER_SCOPES_FILE")
    assert QueueScopes.from_settings(load_settings()) is None
