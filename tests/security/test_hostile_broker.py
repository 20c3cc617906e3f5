"""Raw broker messages published with kombu straight into the queues of a real worker:
not JSON, no task header, unknown tasks, oversized bodies, and real task names with generated
arguments. The worker keeps running; every message ends in the dead-letter store or with an
error result under its id -- none is silently dropped. The issue's named bad inputs (wrong
shapes, unknown task, missing and extra fields, payload over the limit, invalid base64,
non-UTF-8 tenant ids, invalid UTF-8, huge and empty batches) each end with their own code.
(JSON bodies of the wrong *shape*: see also test_malformed_body.py.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Exchange, Producer

from tenantkeys import jobs
from tenantkeys.queue.config import celery_config
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.deployment import fault_deployment, on_broker
from tests.e2e.faults.sending import results
from tests.e2e.harness import Deployment, wait_for
from tests.helpers import self_signed_identity
from tests.security.hostile import (
    MSGPACK,
    SECRET_PAYLOAD,
    count_case,
    hostile_msgpack_bodies,
    json_values,
    packed,
)
from tests.security.test_hostile_input import hostile_kwargs

pytestmark = pytest.mark.e2e
RAW_EXAMPLES, TASK_EXAMPLES = 60, 60


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = fault_deployment(tmp_path)
    yield made
    made.stop()


@st.composite
def raw_messages(draw: st.DrawFn) -> dict[str, Any]:
    """(body, content type, headers) of a message no producer of ours would send."""
    kind = draw(st.sampled_from(["not-json", "unknown-task", "no-task"]))
    headers: dict[str, Any] = {"id": str(uuid.uuid4()), "task": jobs.SIGN, "lang": "py"}
    content_type = "application/json"
    if kind == "not-json":
        body = draw(st.binary(min_size=1, max_size=200).filter(lambda b: not _is_json(b)))
        content_type = draw(st.sampled_from([content_type, "application/x-python-serialize"]))
    elif kind == "unknown-task":
        headers["task"] = "tenantkeys." + draw(st.text("abcdefgh_", min_size=1, max_size=12))
        body = json.dumps([[], {"tenant_id": "acme"}, {}]).encode()
    else:
        del headers["task"]
        body = json.dumps(draw(json_values)).encode()
    return {"kind": kind, "body": body, "content_type": content_type, "headers": headers}


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _publish(deployment: Deployment, messages: list[dict[str, Any]]) -> None:
    options = deployment.settings
    transport = celery_config(options)["broker_transport_options"]
    with Connection(options.effective_broker_url, transport_options=transport) as conn:
        producer = Producer(conn, exchange=Exchange(jobs.EXCHANGE, type="direct"))
        for message in messages:
            producer.publish(
                message["body"],
                routing_key=message.get("queue", jobs.SIGN_QUEUE),
                headers=message["headers"],
                content_type=message["content_type"],
                content_encoding=message.get("content_encoding", "utf-8"),
                serializer=None,
                declare=[],
            )


def test_raw_messages_never_stop_the_worker_and_none_is_dropped(
    deployment: Deployment,
) -> None:
    messages: list[dict[str, Any]] = []

    @settings(max_examples=RAW_EXAMPLES, deadline=None, database=None)
    @given(raw_messages())
    def collect(message: dict[str, Any]) -> None:
        count_case("raw broker messages (real worker)")
        messages.append(message)

    collect()

    @settings(
        max_examples=TASK_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from([jobs.SIGN, jobs.SIGN_BATCH, jobs.CREATE_KEYS]), hostile_kwargs())
    def collect_tasks(task: str, kwargs: Any) -> None:
        count_case("task arguments (real worker)")
        queue = jobs.ROUTES[task]
        body = json.dumps([[], kwargs if isinstance(kwargs, dict) else {"x": kwargs}, {}])
        headers = {"id": str(uuid.uuid4()), "task": task, "lang": "py"}
        messages.append(
            {
                "kind": "task",
                "body": body.encode(),
                "content_type": "application/json",
                "headers": headers,
                "queue": queue,
            }
        )

    collect_tasks()
    oversized = {"tenant_id": "acme", "payload": jobs.encode_payload(b"x" * (3 * 1_048_576))}
    messages.append(
        {
            "kind": "oversized-task",
            "body": json.dumps([[], oversized, {}]).encode(),
            "content_type": "application/json",
            "headers": {"id": str(uuid.uuid4()), "task": jobs.SIGN, "lang": "py"},
        }
    )
    messages.append(
        {
            "kind": "oversized-garbage",
            "body": b"\xff" * (4 * 1_048_576),
            "content_type": "application/json",
            "headers": {"id": str(uuid.uuid4()), "task": jobs.SIGN, "lang": "py"},
        }
    )

    worker = deployment.worker("w1", concurrency=2)
    with deployment.client() as client:
        client.create_keys("acme", timeout=60)
    _publish(deployment, messages)
    ids = [m["headers"]["id"] for m in messages]
    store = deployment.deadletters()

    def accounted() -> list[str]:
        done = results(deployment, ids)
        dead = {entry.job_id for entry in store.entries()}
        return [i for i in ids if i not in done and i not in dead]

    try:
        wait_for(lambda: not accounted(), 60, "every hostile message to be accounted for", 0.5)
    except AssertionError:
        missing = set(accounted())
        kinds = [(m["kind"], m["body"][:80]) for m in messages if m["headers"]["id"] in missing]
        raise AssertionError(
            f"{len(missing)} message(s) silently dropped: {kinds[:10]}\n"
            + deployment.log("w1")[-4000:]
        ) from None
    done = results(deployment, ids)
    for message in messages:
        envelope = done.get(message["headers"]["id"])
        if envelope is not None and not envelope["ok"]:
            assert str(envelope["error"]["code"]).startswith("TK-"), envelope
    for entry in store.entries():
        assert entry.code.startswith("TK-") and entry.job_id in ids
    assert worker.poll() is None, "the worker died"
    with deployment.client() as client:  # and it still signs
        client.sign("acme", b"still signing", timeout=30)
    log = deployment.log("w1")
    assert "Traceback" not in log, log[-3000:]


def _named(task: str, body: bytes | str, **extra: Any) -> dict[str, Any]:
    """A raw message of one named case: JSON text as a producer in any language could send."""
    return {
        "body": body.encode() if isinstance(body, str) else body,
        "content_type": "application/json",
        "headers": {"id": str(uuid.uuid4()), "task": task, "lang": "py"},
        "queue": jobs.ROUTES.get(task, jobs.SIGN_QUEUE),
        **extra,
    }


def _job(task: str, kwargs_json: str, args_json: str = "[]") -> str:
    return f"[{args_json}, {kwargs_json}, {{}}]"


_A = jobs.encode_payload(b"a")
_OVER = jobs.encode_payload(b"x" * (1_048_576 + 1))
_ITEM = f'{{"tenant_id": "acme", "payload": "{_A}"}}'
#: The issue's "bad input" list, one message each: (case, message, the code it must end with).
NAMED_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("body is an object", _named(jobs.SIGN, '{"tenant_id": "acme"}'), "TK-INVALID-ARGUMENT"),
    ("kwargs is a list", _named(jobs.SIGN, "[[], [], {}]"), "TK-INVALID-ARGUMENT"),
    ("positional arguments", _named(jobs.SIGN, _job(jobs.SIGN, "{}", '["acme"]')), "TK-"),
    ("unknown task", _named("tenantkeys.nope", _job("", '{"tenant_id": "acme"}')), "TK-"),
    ("missing payload", _named(jobs.SIGN, _job("", '{"tenant_id": "acme"}')), "TK-"),
    (
        "extra field",
        _named(jobs.SIGN, _job("", f'{{"tenant_id": "acme", "payload": "{_A}", "x": 1}}')),
        "TK-INVALID-ARGUMENT",
    ),
    (
        "payload over the limit",
        _named(jobs.SIGN, _job("", f'{{"tenant_id": "acme", "payload": "{_OVER}"}}')),
        "TK-PAYLOAD-TOO-LARGE",
    ),
    (
        "invalid base64",
        _named(jobs.SIGN, _job("", '{"tenant_id": "acme", "payload": "not base64!"}')),
        "TK-INVALID-ENCODING",
    ),
    (
        "unpadded base64",
        _named(jobs.SIGN, _job("", '{"tenant_id": "acme", "payload": "YQ"}')),
        "TK-INVALID-ENCODING",
    ),
    (
        "lone surrogate tenant id",
        _named(jobs.SIGN, _job("", f'{{"tenant_id": "\\udc80", "payload": "{_A}"}}')),
        "TK-INVALID-TENANT",
    ),
    (
        "lone surrogate tenant id (create_keys)",
        _named(jobs.CREATE_KEYS, _job("", '{"tenant_id": "a\\ud800b"}')),
        "TK-INVALID-TENANT",
    ),
    (
        "invalid UTF-8 in the body",
        _named(jobs.SIGN, b'[[], {"tenant_id": "\xff\xfe", "payload": "YQ=="}, {}]'),
        "TK-INVALID-ENCODING",
    ),
    (
        "tenant id with a NUL",
        _named(jobs.SIGN, _job("", f'{{"tenant_id": "ac\\u0000me", "payload": "{_A}"}}')),
        "TK-INVALID-TENANT",
    ),
    (
        "batch over the item limit",
        _named(
            jobs.SIGN_BATCH,
            _job("", '{"items": [' + ", ".join([_ITEM] * (jobs.MAX_BATCH_ITEMS + 1)) + "]}"),
        ),
        "TK-INVALID-ARGUMENT",
    ),
    (
        "batch items not a list",
        _named(jobs.SIGN_BATCH, _job("", '{"items": {"tenant_id": "acme"}}')),
        "TK-INVALID-ARGUMENT",
    ),
    ("empty batch", _named(jobs.SIGN_BATCH, _job("", '{"items": []}')), "TK-INVALID-ARGUMENT"),
]


def test_each_named_bad_input_ends_with_its_code(deployment: Deployment) -> None:
    """Every case of the issue's list: a FAILURE with its code (or a dead letter with it),
    the worker alive, nothing silently dropped."""
    worker = deployment.worker("w1", concurrency=2)
    with deployment.client() as client:
        client.create_keys("acme", timeout=60)
    messages = [message for _case, message, _code in NAMED_CASES]
    for _case in NAMED_CASES:
        count_case("named bad input (real worker)")
    _publish(deployment, messages)
    ids = [m["headers"]["id"] for m in messages]
    store = deployment.deadletters()

    def outcomes() -> dict[str, str]:
        found = {
            # A failure that is not ours has no code: shown whole, it fails the check below.
            job_id: str(envelope["error"].get("code", envelope["error"]))
            for job_id, envelope in results(deployment, ids).items()
            if not envelope["ok"]
        }
        for entry in store.entries():
            found.setdefault(entry.job_id, entry.code)
        return found

    try:
        wait_for(lambda: len(outcomes()) == len(ids), 60, "every named case's outcome", 0.5)
    except AssertionError:
        got = outcomes()
        missing = [case for case, m, _code in NAMED_CASES if m["headers"]["id"] not in got]
        raise AssertionError(f"no outcome for {missing}\n" + deployment.log("w1")[-3000:]) from None
    got = outcomes()
    wrong = [
        (case, got[message["headers"]["id"]], code)
        for case, message, code in NAMED_CASES
        if not got[message["headers"]["id"]].startswith(code)
    ]
    assert not wrong, wrong
    assert worker.poll() is None, "the worker died"
    log = deployment.log("w1")
    assert "Traceback" not in log, log[-3000:]


def _msgpack(task: str, body: bytes) -> dict[str, Any]:
    return {**_named(task, body), "content_type": MSGPACK, "content_encoding": "binary"}


@pytest.fixture(params=["redis", "rabbitmq"])
def either_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    yield from on_broker(request.param, tmp_path)


def test_hostile_msgpack_bodies_end_with_their_code(either_broker: Deployment) -> None:
    """Workers accept msgpack (the compact sign_batch): ext types, non-string map keys, deep
    nesting, huge ints, bin where strings belong, truncated bodies and a msgpack body for every
    task name each end with a coded FAILURE or a dead letter; the worker keeps running, no job
    is lost, and no payload byte reaches the log."""
    deployment = either_broker
    worker = deployment.worker("w1", concurrency=2)
    with deployment.client() as client:
        client.create_keys("acme", timeout=60)
    cases = hostile_msgpack_bodies()
    messages = [_msgpack(task, body) for _case, task, body, _code in cases]
    control = _msgpack(
        jobs.SIGN_BATCH, packed([[], {"tenant_id": "acme", "payloads": [SECRET_PAYLOAD]}, {}])
    )
    for _case in cases:
        count_case("hostile msgpack body (real worker)")
    _publish(deployment, [*messages, control])
    ids = [m["headers"]["id"] for m in messages]
    store = deployment.deadletters()

    def outcomes() -> dict[str, str]:
        found = {
            job_id: str(envelope["error"].get("code", envelope["error"]))
            for job_id, envelope in results(deployment, ids).items()
            if not envelope["ok"]
        }
        for entry in store.entries():
            found.setdefault(entry.job_id, entry.code)
        return found

    try:
        wait_for(lambda: len(outcomes()) == len(ids), 60, "every msgpack case's outcome", 0.5)
    except AssertionError:
        got = outcomes()
        missing = [
            case
            for (case, *_), m in zip(cases, messages, strict=True)
            if m["headers"]["id"] not in got
        ]
        raise AssertionError(f"no outcome for {missing}\n" + deployment.log("w1")[-4000:]) from None
    got = outcomes()
    wrong = [
        (case, got[message["headers"]["id"]], code)
        for (case, _task, _body, code), message in zip(cases, messages, strict=True)
        if not got[message["headers"]["id"]].startswith(code)
    ]
    assert not wrong, wrong
    # The valid compact job among them is signed: the worker took msgpack all along.
    signed = wait_for(lambda: results(deployment, [control["headers"]["id"]]), 30, "the control")
    envelope = signed[control["headers"]["id"]]
    assert envelope["ok"] and envelope["result"]["errors"] == [], envelope
    assert envelope["result"]["jws"][0].count(".") == 2
    assert worker.poll() is None, "the worker died"
    with deployment.client() as client:  # and it still signs
        client.sign("acme", b"still signing", timeout=30)
    log = deployment.log("w1")
    assert "Traceback" not in log, log[-3000:]
    for shown in (
        SECRET_PAYLOAD.decode("latin-1"),
        "hostile-secret-payload",
        SECRET_PAYLOAD.hex(),
        jobs.encode_payload(SECRET_PAYLOAD)[:40],
    ):
        assert shown not in log, "a payload reached the worker log"


# -- message signing on: what a trusted signer may put inside the signed envelope ----------------


class _Marker:
    """Unpickled, creates its file: proof that a worker ran a producer's pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.fixture
def signing_deployment(tmp_path: Path) -> Iterator[tuple[Deployment, Path]]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = fault_deployment(tmp_path)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    key, cert = self_signed_identity(trusted, "worker")
    made.values.update(
        message_signing=True,
        message_signing_key_file=str(key),
        message_signing_cert_file=str(cert),
        message_signing_cert_store=str(trusted),
    )
    yield made, trusted
    made.stop()


def test_a_signed_envelope_around_pickle_is_never_unpickled(
    signing_deployment: tuple[Deployment, Path],
) -> None:
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    deployment, trusted = signing_deployment
    key, cert = self_signed_identity(trusted, "producer")
    marker = deployment.tmp / "unpickled"
    worker = deployment.worker("w1", concurrency=1)
    envelope = SecureSerializer(
        PrivateKey(key.read_text()), Certificate(cert.read_text()), None, "sha256", "pickle"
    )
    message = _named(jobs.SIGN_BATCH, envelope.serialize([[], {"x": _Marker(marker)}, {}]))
    message["content_type"] = "application/data"
    _publish(deployment, [message])
    job_id = message["headers"]["id"]
    store = deployment.deadletters()
    wait_for(
        lambda: (
            job_id in results(deployment, [job_id])
            or any(e.job_id == job_id for e in store.entries())
        ),
        60,
        "the pickle job's outcome",
        0.2,
    )
    assert worker.poll() is None
    assert not marker.exists(), "the worker unpickled a producer's message body"
