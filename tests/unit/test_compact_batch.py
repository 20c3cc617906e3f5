"""The compact sign_batch in the worker: KeyService.sign_many, detached_signer, the runner's
compact path, its metrics, and how its arguments are made JSON-safe and redacted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jwcrypto import jwk
from jwcrypto import jws as jose
from prometheus_client import REGISTRY

from tenantkeys import jobs, signing, telemetry
from tenantkeys.errors import ErrorCode
from tenantkeys.jobs.runner import JobRunner
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.service import KeyService
from tenantkeys.providers.local import LocalProvider
from tenantkeys.signing.jws import P256_N
from tests.helpers import FlakyLocal, make_runner, make_service

pytestmark = pytest.mark.unit

PAYLOADS = [b"first", b"", b"\x00\xff binary \x80", b'{"b": 2, "a": 1}']


def verifies(jwks: dict[str, Any], token: str, payload: bytes) -> bool:
    """Whether jwcrypto (a standard JOSE library) verifies the detached ``token``."""
    keys = jwk.JWKSet.from_json(json.dumps(jwks))
    parsed = jose.JWS()
    parsed.deserialize(token)
    kid = parsed.jose_header["kid"]
    parsed.verify(keys.get_key(kid), detached_payload=payload)
    return parsed.is_valid


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def service(tmp_path: Path) -> Iterator[KeyService]:
    made = make_service(f"sqlite:///{tmp_path / 'k.db'}", LocalProvider(tmp_path / "m.key"))
    made.create_keys("acme")
    yield made
    made.close()


@pytest.fixture
def runner(tmp_path: Path) -> JobRunner:
    return make_runner(tmp_path, FlakyLocal(tmp_path / "master.key"), max_retries=2)


# -- KeyService.sign_many ------------------------------------------------------------------------


def test_sign_many_gives_what_sign_gives_one_by_one_with_one_key_lookup(
    service: KeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_by_one = [service.sign("acme", p).jws for p in PAYLOADS]
    lookups: list[tuple[str, Purpose]] = []
    active_key = service.active_key

    def counted(tenant_id: str, purpose: Purpose) -> Any:
        lookups.append((tenant_id, purpose))
        return active_key(tenant_id, purpose)

    monkeypatch.setattr(service, "active_key", counted)
    batch = service.sign_many("acme", PAYLOADS)
    assert lookups == [("acme", Purpose.SIGNING)]
    assert batch.jws == one_by_one and batch.errors == []
    assert batch.alg == "EdDSA" and batch.tenant_id == "acme"
    assert batch.kid == service.sign("acme", b"x").kid
    for token, payload in zip(batch.jws, PAYLOADS, strict=True):
        assert token is not None and verifies(service.jwks("acme"), token, payload)


def test_sign_many_with_canonical_json_matches_sign(service: KeyService) -> None:
    payloads = [b'{"b": 2, "a": [1.0, "x"]}', b"[3, 2, 1]"]
    batch = service.sign_many("acme", payloads, canonical_json=True)
    assert batch.jws == [service.sign("acme", p, canonical_json=True).jws for p in payloads]
    assert verifies(service.jwks("acme"), str(batch.jws[0]), b'{"a":[1,"x"],"b":2}')


def test_es256_batch_signatures_verify_and_are_low_s(tmp_path: Path) -> None:
    service = make_service(
        f"sqlite:///{tmp_path / 'k.db'}",
        LocalProvider(tmp_path / "m.key"),
        signing_algorithm="ES256",
    )
    service.create_keys("globex")
    payloads = [b"%d" % i for i in range(40)]
    batch = service.sign_many("globex", payloads)
    assert batch.alg == "ES256" and batch.errors == []
    half_n = P256_N // 2
    for token, payload in zip(batch.jws, payloads, strict=True):
        assert token is not None and verifies(service.jwks("globex"), token, payload)
        raw = signing.b64url_decode(token.split(".")[2])
        assert len(raw) == 64 and int.from_bytes(raw[32:], "big") <= half_n
        service.verify("globex", payload, token)
    service.close()


def test_bad_payloads_fail_alone_at_their_index(service: KeyService) -> None:
    limit = service.options.max_payload_bytes
    payloads: list[object] = [b"ok", b"x" * (limit + 1), b"also ok"]
    batch = service.sign_many("acme", payloads)
    assert [t is None for t in batch.jws] == [False, True, False]
    assert [(i, e.code) for i, e in batch.errors] == [(1, ErrorCode.PAYLOAD_TOO_LARGE)]
    assert batch.jws[2] == service.sign("acme", b"also ok").jws

    json_batch = service.sign_many("acme", [b'{"a": 1}', b"{not json", b"[]"], canonical_json=True)
    assert [t is None for t in json_batch.jws] == [False, True, False]
    assert [(i, e.code) for i, e in json_batch.errors] == [(1, ErrorCode.INVALID_JSON)]
    # No error message quotes the payload it refused.
    assert all("not json" not in e.message for _i, e in json_batch.errors)


def test_sign_many_for_a_tenant_without_a_key_fails_whole(service: KeyService) -> None:
    with pytest.raises(Exception) as failed:
        service.sign_many("nokeys", [b"a"])
    assert getattr(failed.value, "code", None) == ErrorCode.KEY_NOT_FOUND


# -- signing.detached_signer ---------------------------------------------------------------------


@pytest.mark.parametrize("canonical_json", [False, True])
def test_detached_signer_is_sign_encoded(canonical_json: bool) -> None:
    key, _secret = signing.generate("EdDSA")
    protected = signing.encode_protected({"alg": "EdDSA", "kid": key.kid, "tenant_id": "acme"})
    sign = signing.detached_signer(key, protected, canonical_json=canonical_json)
    for payload in [b"", b"a", b"ab", b"abc", bytes(range(256)), b'{"a":1}']:
        expected = signing.sign_encoded(
            key, protected, payload, detached=True, canonical_json=canonical_json
        )
        assert sign(payload) == expected
        _head, middle, _sig = expected.split(".")
        assert middle == "" and "=" not in expected


def test_detached_signer_es256_verifies_like_sign_encoded() -> None:
    key, _secret = signing.generate("ES256")
    protected = signing.encode_protected({"alg": "ES256", "kid": key.kid})
    token = signing.detached_signer(key, protected)(b"payload")
    assert token.split(".")[0] == protected and token.split(".")[1] == ""
    signing.verify_parsed(signing.parse_compact(token), b"payload", "ES256", key.public_bytes)


# -- the runner's compact path -------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, jobs.MAX_BATCH_ITEMS + 1])
def test_batch_bounds_are_invalid_argument(runner: JobRunner, count: int) -> None:
    outcome = runner.sign_batch({"tenant_id": "acme", "payloads": [b"a"] * count}, job_id="b")
    assert outcome.retry_in is None and outcome.result is not None
    assert outcome.result["ok"] is False
    assert outcome.result["error"]["code"] == ErrorCode.INVALID_ARGUMENT
    assert runner.deadletters.depth() == 0


def test_batch_of_the_maximum_size_signs(runner: JobRunner) -> None:
    payloads = [b"%d" % i for i in range(jobs.MAX_BATCH_ITEMS)]
    outcome = runner.sign_batch({"tenant_id": "acme", "payloads": payloads}, job_id="b")
    result = jobs.unwrap(outcome.result)
    assert len(result["jws"]) == jobs.MAX_BATCH_ITEMS and result["errors"] == []
    assert outcome.signatures == ("ok",) * jobs.MAX_BATCH_ITEMS


def test_json_form_bad_base64_fails_only_its_item(runner: JobRunner) -> None:
    kwargs = {
        "tenant_id": "acme",
        "payloads": [jobs.encode_payload(b"a"), "not base64!", jobs.encode_payload(b"c")],
    }
    outcome = runner.sign_batch(kwargs, job_id="b")
    result = jobs.unwrap(outcome.result)
    assert [t is None for t in result["jws"]] == [False, True, False]
    assert [(e["index"], e["error"]["code"]) for e in result["errors"]] == [
        (1, ErrorCode.INVALID_ENCODING)
    ]
    service = runner.service
    assert result["jws"][0] == service.sign("acme", b"a").jws
    assert result["jws"][2] == service.sign("acme", b"c").jws
    assert sorted(outcome.signatures) == ["ok", "ok", "rejected"]


def test_msgpack_and_json_forms_give_the_same_result(runner: JobRunner) -> None:
    raw = jobs.unwrap(runner.sign_batch({"tenant_id": "acme", "payloads": PAYLOADS}).result)
    twin = jobs.json_safe({"tenant_id": "acme", "payloads": PAYLOADS})
    encoded = jobs.unwrap(runner.sign_batch(twin).result)
    assert raw["jws"] == encoded["jws"] and raw["kid"] == encoded["kid"]
    assert set(raw) == {"tenant_id", "kid", "alg", "signed_at", "jws", "errors"}


def test_tenant_without_a_key_fails_the_whole_job(runner: JobRunner) -> None:
    outcome = runner.sign_batch({"tenant_id": "nokeys", "payloads": [b"a", b"b"]}, job_id="b")
    assert outcome.retry_in is None and outcome.result is not None
    assert outcome.result["ok"] is False
    assert outcome.result["error"]["code"] == ErrorCode.KEY_NOT_FOUND
    assert len(outcome.signatures) == 2 and "ok" not in outcome.signatures


def test_metric_labels_are_one_per_item(runner: JobRunner) -> None:
    limit = runner.service.options.max_payload_bytes
    payloads = [b"a", b"x" * (limit + 1), b"b", b"c"]
    outcome = runner.sign_batch({"tenant_id": "acme", "payloads": payloads}, job_id="b")
    assert sorted(outcome.signatures) == ["ok", "ok", "ok", "rejected"]
    # The same labels (as a multiset: the counter has no order) as the items form gives.
    items = [{"tenant_id": "acme", "payload": jobs.encode_payload(p)} for p in payloads]
    assert sorted(runner.sign_batch({"items": items}).signatures) == sorted(outcome.signatures)
    labels = ("ok", "rejected")
    before = {label: sample("tenantkeys_signatures_total", {"outcome": label}) for label in labels}
    outcome.record_metrics(None)
    after = {label: sample("tenantkeys_signatures_total", {"outcome": label}) for label in labels}
    assert after["ok"] - before["ok"] == 3 and after["rejected"] - before["rejected"] == 1


# -- telemetry.record_signature(count=n) ---------------------------------------------------------


def _histogram() -> dict[str, float]:
    found: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "tenantkeys_sign_latency_seconds":
            for s in metric.samples:
                found[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    return found


@pytest.mark.parametrize("seconds", [0.0, 0.003, 0.25, 1.0, 7.5, 1e9, -2.0])
def test_record_signature_count_is_n_single_calls(seconds: float) -> None:
    n = 7
    counter = ("tenantkeys_signatures_total", {"outcome": "ok"})
    start, counted = _histogram(), sample(*counter)
    for _ in range(n):
        telemetry.record_signature("ok", seconds)
    singles, singles_counted = _histogram(), sample(*counter)
    telemetry.record_signature("ok", seconds, count=n)
    batched, batched_counted = _histogram(), sample(*counter)
    assert singles_counted - counted == batched_counted - singles_counted == n
    for name, value in start.items():
        one_by_one, at_once = singles[name] - value, batched[name] - singles[name]
        if "_sum" in name:
            assert at_once == pytest.approx(one_by_one, rel=1e-12, abs=1e-12), name
        elif "_created" not in name:
            assert at_once == one_by_one, name
    assert (
        batched["tenantkeys_sign_latency_seconds_count{}"]
        - singles["tenantkeys_sign_latency_seconds_count{}"]
        == n
    )


# -- json_safe and redact ------------------------------------------------------------------------


SECRET = b"\x01secret-payload-bytes\xfe" * 3


def test_json_safe_turns_raw_payloads_into_base64() -> None:
    kwargs = {"tenant_id": "acme", "payloads": [SECRET, b"", "YQ=="], "canonical_json": False}
    safe = jobs.json_safe(kwargs)
    assert safe["payloads"] == [jobs.encode_payload(SECRET), "", "YQ=="]
    assert [jobs.decode_payload(p) for p in safe["payloads"][:2]] == [SECRET, b""]
    json.dumps(safe)  # JSON can carry it
    assert kwargs["payloads"][0] == SECRET  # the job's own arguments are untouched
    items = {"items": [{"tenant_id": "acme", "payload": "YQ=="}]}
    assert jobs.json_safe(items) == items


def test_redact_shows_no_payload_byte() -> None:
    kwargs = {"tenant_id": "acme", "payloads": [SECRET, SECRET[:5]], "canonical_json": True}
    shown = jobs.redact(kwargs)
    assert shown["payload_count"] == 2 and shown["payload_bytes"] == len(SECRET) + 5
    assert "payloads" not in shown and shown["tenant_id"] == "acme"
    text = json.dumps(shown)
    for form in (SECRET.hex(), jobs.encode_payload(SECRET), SECRET.decode("latin-1"), "secret"):
        assert form not in text
    _args, kwargsrepr = jobs.argsrepr((), kwargs)
    assert "secret" not in kwargsrepr and jobs.encode_payload(SECRET) not in kwargsrepr
    encoded = jobs.redact(jobs.json_safe(kwargs))
    assert "secret" not in json.dumps(encoded)


# -- hostile msgpack shapes the worker's consumer refuses before Celery sees them ----------------


class _Message:
    """The members of a kombu message that the consumer's checks read."""

    def __init__(self, body: object, task: str = jobs.SIGN_BATCH) -> None:
        self.headers: dict[str, Any] = {"id": "j1", "task": task}
        self._body = body

    def decode(self) -> object:
        return self._body


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([[], {"tenant_id": "acme", "payloads": [SECRET]}, {}], None),
        ([[], {b"tenant_id": "acme"}, {}], "string keys"),
        ([[], {"tenant_id": "acme"}, {b"chain": None}], "string keys"),
        ([[], {"tenant_id": "acme", "payloads": _nested(900)}, {}], "nested deeper"),
        ([[], {"items": [{"tenant_id": "acme", "payload": "YQ=="}]}, {}], None),
    ],
)
def test_consumer_refuses_bin_keys_and_deep_nesting(body: object, problem: str | None) -> None:
    from workers.consumer import shape_problem

    found = shape_problem(_Message(body))
    assert (found is None) if problem is None else (problem in str(found))


def test_redacted_reprs_of_hostile_msgpack_arguments_never_raise() -> None:
    from workers.consumer import redact_reprs

    for kwargs in (
        {b"tenant_id": "acme", "payload": "YQ==", "tenant": SECRET},
        {"items": [{b"payload": SECRET, "tenant_id": "acme"}]},
        {"tenant_id": "acme", "payloads": [_nested(900), 2**64 - 1, SECRET]},
    ):
        message = _Message([[], kwargs, {}])
        redact_reprs(message)
        shown = message.headers["kwargsrepr"]
        json.loads(shown)
        assert "secret" not in shown and jobs.encode_payload(SECRET) not in shown


class _LosingProducer:
    """A producer whose first message of each job is lost: the client must send it again."""

    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, job: Any) -> None:
        self.published.append(job)

    def state(self, job_id: str) -> Any:
        from tenantkeys.queue.producer import JobState

        sent = [job for job in self.published if job.job_id == job_id]
        if len(sent) < 2:
            return JobState("PENDING")
        return JobState("SUCCESS", {"ok": True, "result": {"resent": True}})

    def close(self) -> None:
        pass


def test_a_job_without_a_result_is_sent_again_in_the_form_it_first_went_in() -> None:
    """The compact batch again as msgpack with its raw payloads (not its larger JSON twin),
    a single job as it was; both under their first job id."""
    from tenantkeys.client import PendingBatch, PendingSignature, SigningClient

    producer = _LosingProducer()
    client = SigningClient(producer, resend_after=0.0)  # type: ignore[arg-type]
    batch = client.submit_batch("acme", [b"\x00raw", b"two"])
    assert isinstance(batch, PendingBatch)
    assert client.wait(batch.job_id, 5, resend=batch._resend) == {"resent": True}
    first, again = producer.published
    assert again == first and again.binary is True
    assert again.kwargs[jobs.COMPACT_BATCH_FIELD] == [b"\x00raw", b"two"]

    single = client.submit("acme", b"one")
    assert isinstance(single, PendingSignature)
    assert client.wait(single.job_id, 5, resend=single._resend) == {"resent": True}
    assert producer.published[2] == producer.published[3]
    assert producer.published[3].binary is False
