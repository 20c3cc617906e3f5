"""The published wire contract (docs/contract/) says what the code does.

* The committed JSON Schemas are what ``python -m tenantkeys.jobs.published`` generates from
  the job contract; a schema that drifts (a field removed, a contract changed) fails.
* The AsyncAPI document names the queues, routes and tasks of :mod:`tenantkeys.jobs.contract`,
  each message refers to its generated schema, and its examples validate against them.
* Real messages: what :class:`tenantkeys.client.SigningClient` publishes (JSON, and the
  compact sign_batch in msgpack), and what a real worker stores as SUCCESS and FAILURE,
  validate against the schemas (``jsonschema``).

The document itself is validated by the AsyncAPI parser in tests/interop/test_asyncapi.py.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import msgpack  # type: ignore[import-untyped]
import pytest
import redis
import yaml
from kombu.connection import Connection
from referencing import Registry
from referencing.jsonschema import DRAFT7

from tenantkeys import jobs
from tenantkeys.errors import ErrorCode, TenantKeysError
from tenantkeys.jobs import contract, published
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.docs import markdown
from tests.e2e.harness import AMQP_HOST, Deployment, rabbitmq_vhost, redis_deployment

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "contract"
SCHEMAS = ROOT / published.SCHEMA_DIR
DOCUMENT = CONTRACT / "asyncapi.yaml"
README = CONTRACT / "README.md"
TROUBLESHOOTING = ROOT / "docs" / "setup" / "KMS_TROUBLESHOOTING.md"


def committed() -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.json"))}


def validator(name: str) -> jsonschema.Draft7Validator:
    """A validator of the committed schema ``name``; refs between files resolve by file name."""
    registry: Registry[Any] = Registry().with_resources(
        (file, DRAFT7.create_resource(schema)) for file, schema in committed().items()
    )
    return jsonschema.Draft7Validator({"$ref": name}, registry=registry)


def errors_of(name: str, instance: object) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(name).iter_errors(instance)
    ]


def json_instance(value: object) -> object:
    """A decoded msgpack body as JSON Schema sees it: each bin (bytes) a string, which the
    compact body's schema describes as ``format: binary``. Check that they are bytes apart."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list):
        return [json_instance(v) for v in value]
    if isinstance(value, dict):
        return {k: json_instance(v) for k, v in value.items()}
    return value


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


# -- (a) the committed schemas are the generated ones ------------------------------------


@pytest.mark.unit
def test_the_committed_schemas_are_the_generated_ones() -> None:
    assert published.differences(SCHEMAS) == [], "run: python -m tenantkeys.jobs.published"
    assert published.main(["--check", "--dir", str(SCHEMAS)]) == 0
    for schema in committed().values():
        jsonschema.Draft7Validator.check_schema(schema)


@pytest.mark.unit
def test_a_schema_with_a_field_removed_fails_the_check(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy)
    arguments = copy / published.arguments_file(jobs.SIGN)
    edited = json.loads(arguments.read_text())
    del edited["properties"]["canonical_json"]
    arguments.write_text(published.render(edited))
    (copy / "old.json").write_text("{}\n")
    assert published.differences(copy) == [
        f"{arguments.name}: differs",
        "old.json: not generated (stale)",
    ]
    assert published.main(["--check", "--dir", str(copy)]) == 1
    assert published.main(["--dir", str(copy)]) == 0  # writes, and drops the stale file
    assert published.differences(copy) == []
    assert not (copy / "old.json").exists()


@pytest.mark.unit
def test_a_changed_contract_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real = contract.json_schemas

    def without_kid() -> dict[str, dict[str, Any]]:
        shapes = real()
        del shapes[jobs.REVOKE_KEY]["arguments"]["properties"]["kid"]
        return shapes

    monkeypatch.setattr(contract, "json_schemas", without_kid)
    assert published.differences(SCHEMAS) == [
        f"{published.arguments_file(jobs.REVOKE_KEY)}: differs"
    ]


# -- (c) the document says what the code does ---------------------------------------------


def ref_of(node: Mapping[str, Any]) -> str:
    return str(node["$ref"])


def schema_file(ref: str) -> str:
    assert ref.startswith("./schemas/"), ref
    return ref.removeprefix("./schemas/")


def body_files(task: str) -> set[str]:
    """The bodies a message of ``task`` may have: its own, and a sign_batch's compact one."""
    files = {published.body_file(task)}
    if task == jobs.SIGN_BATCH:
        files.add(published.body_file(published.COMPACT_BATCH))
    return files


def content_of(doc: Mapping[str, Any], message: Mapping[str, Any]) -> tuple[str, str]:
    """A message's content type and AMQP content encoding, its own or from its traits."""
    found = {"contentType": doc.get("defaultContentType"), "contentEncoding": None}
    traits = doc["components"].get("messageTraits", {})
    for layer in [traits[ref_of(t).rsplit("/", 1)[1]] for t in message.get("traits", [])] + [
        message
    ]:
        found["contentType"] = layer.get("contentType", found["contentType"])
        amqp = layer.get("bindings", {}).get("amqp", {})
        found["contentEncoding"] = amqp.get("contentEncoding", found["contentEncoding"])
    return str(found["contentType"]), str(found["contentEncoding"])


def message_task(message: Mapping[str, Any]) -> str:
    """The task a message's headers pin (``task: const``)."""
    pinned = [
        part["properties"]["task"]["const"]
        for part in message["headers"]["allOf"]
        if "properties" in part
    ]
    assert len(pinned) == 1, message["name"]
    return str(pinned[0])


def document_problems(
    doc: Mapping[str, Any],
    routes: Mapping[str, str],
    queues: tuple[str, ...],
    generated: Mapping[str, Any],
) -> list[str]:
    """Where ``doc`` disagrees with the contract (``routes``, ``queues``) and the schemas."""
    problems: list[str] = []
    messages = doc["components"]["messages"]
    channels = doc["channels"]
    by_address = {c["address"]: c for c in channels.values()}
    if set(by_address) - {"celery-task-meta-{jobId}"} != set(queues):
        problems.append(f"queue channels {sorted(by_address)} are not the queues {queues}")
    for queue in queues:
        channel = by_address.get(queue, {"messages": {}})
        amqp = channel.get("bindings", {}).get("amqp", {})
        if amqp.get("exchange", {}).get("name") != contract.EXCHANGE:
            problems.append(f"{queue}: exchange is not {contract.EXCHANGE}")
        sent = {messages[ref_of(m).rsplit("/", 1)[1]]["name"] for m in channel["messages"].values()}
        routed = {task for task, target in routes.items() if target == queue}
        if sent != routed:
            problems.append(f"{queue}: messages {sorted(sent)}, routed tasks {sorted(routed)}")
    results = by_address.get("celery-task-meta-{jobId}", {"messages": {}})
    stored = set()
    for ref in results["messages"].values():
        message = messages[ref_of(ref).rsplit("/", 1)[1]]
        stored.add((message["name"], schema_file(ref_of(message["payload"]))))
    expected = {(task, published.success_file(task)) for task in routes}
    expected.add((jobs.SIGN_BATCH, published.success_file(published.COMPACT_BATCH)))
    expected.add(("failure", published.FAILURE_FILE))
    if stored != expected:
        problems.append(f"result messages {sorted(stored)} are not {sorted(expected)}")
    json_content = (published.CONTENT_TYPE, published.CONTENT_ENCODING)
    msgpack_content = (published.BINARY_CONTENT_TYPE, published.BINARY_CONTENT_ENCODING)
    compact_body = published.body_file(published.COMPACT_BATCH)
    compact_contents = set()
    for key, message in messages.items():
        if "headers" not in message:
            continue  # a result: checked above
        task = message["name"]
        body = schema_file(ref_of(message["payload"]))
        content = content_of(doc, message)
        if task not in routes or message_task(message) != task:
            problems.append(f"message {key}: {task} is not a task, or its header pins another")
        elif body not in body_files(task):
            problems.append(f"message {key}: payload is not one of {sorted(body_files(task))}")
        elif content not in (json_content, msgpack_content):
            problems.append(f"message {key}: content {content} is neither JSON nor msgpack")
        elif content == msgpack_content and body != compact_body:
            problems.append(f"message {key}: only a compact sign_batch travels as msgpack")
        if body == compact_body:
            compact_contents.add(content)
    if compact_contents != {json_content, msgpack_content}:
        problems.append(f"the compact sign_batch is sent as {sorted(compact_contents)}")
    sent_by_operations = {
        messages[ref_of(m).rsplit("/", 1)[1]]["name"]
        for op in doc["operations"].values()
        if op["action"] == "send"
        for m in op["messages"]
    }
    if sent_by_operations != set(routes):
        problems.append(f"send operations cover {sorted(sent_by_operations)}")
    refs = re.findall(r"\./schemas/([A-Za-z0-9_.-]+\.json)", json.dumps(doc))
    problems += [f"{ref} is not a generated schema" for ref in refs if ref not in generated]
    return problems


@pytest.mark.unit
def test_the_document_names_the_queues_routes_and_tasks_of_the_code() -> None:
    doc = document()
    assert doc["asyncapi"].startswith("3.")
    assert document_problems(doc, contract.ROUTES, contract.QUEUES, published.schemas()) == []


@pytest.mark.unit
def test_a_document_that_disagrees_with_the_code_fails() -> None:
    generated = published.schemas()
    moved = {**contract.ROUTES, jobs.REVOKE_KEY: jobs.SIGN_QUEUE}
    assert document_problems(document(), moved, contract.QUEUES, generated)
    added = {**contract.ROUTES, "tenantkeys.verify": jobs.SIGN_QUEUE}
    assert document_problems(document(), added, contract.QUEUES, generated)
    doc = document()
    doc["components"]["messages"]["sign"]["payload"]["$ref"] = "./schemas/tenantkeys.sign.json"
    assert document_problems(doc, contract.ROUTES, contract.QUEUES, generated)
    doc = document()
    del doc["channels"]["keys"]
    assert document_problems(doc, contract.ROUTES, contract.QUEUES, generated)
    # The compact sign_batch: its msgpack message, its content type, its result.
    doc = document()
    doc["components"]["messages"]["signBatchCompact"]["traits"] = [
        {"$ref": "#/components/messageTraits/celeryTask"}
    ]
    assert document_problems(doc, contract.ROUTES, contract.QUEUES, generated) == [
        "the compact sign_batch is sent as [('application/json', 'utf-8')]"
    ]
    doc = document()
    doc["components"]["messageTraits"]["celeryBinaryTask"]["bindings"]["amqp"][
        "contentEncoding"
    ] = "utf-8"
    assert document_problems(doc, contract.ROUTES, contract.QUEUES, generated)
    doc = document()
    doc["components"]["messages"]["sign"]["traits"] = [
        {"$ref": "#/components/messageTraits/celeryBinaryTask"}
    ]
    assert document_problems(doc, contract.ROUTES, contract.QUEUES, generated) == [
        "message sign: only a compact sign_batch travels as msgpack"
    ]
    doc = document()
    del doc["channels"]["results"]["messages"]["signBatchCompactResult"]
    assert document_problems(doc, contract.ROUTES, contract.QUEUES, generated)


@pytest.mark.unit
def test_the_document_examples_validate_against_the_schemas() -> None:
    checked = set()
    for key, message in document()["components"]["messages"].items():
        for example in message.get("examples", []):
            if "headers" in message:
                assert errors_of(published.HEADERS_FILE, example["headers"]) == [], key
            payload = schema_file(ref_of(message["payload"]))
            assert errors_of(payload, example["payload"]) == [], key
            checked.add(key)
    assert {
        "sign",
        "signResult",
        "signBatchCompactJson",
        "signBatchCompactResult",
        "failure",
    } <= checked


@pytest.mark.unit
def test_the_readme_quotes_only_codes_that_exist() -> None:
    text = README.read_text()
    quoted = set(re.findall(r"\bTK-[A-Z0-9-]*[A-Z0-9]\b", text))
    codes = {str(code) for code in ErrorCode}
    assert quoted and quoted <= codes, sorted(quoted - codes)
    assert str(contract.MAX_BATCH_ITEMS) in text.replace(",", "")
    for queue in contract.QUEUES:
        assert f"`{queue}`" in text


@pytest.mark.unit
def test_the_readme_links_resolve() -> None:
    targets = [t for t in markdown.links(README.read_text()) if not re.match(r"^[a-z]+:", t)]
    assert targets
    for target in targets:
        path, _, anchor = target.partition("#")
        page = (README.parent / path).resolve()
        assert page.exists(), f"broken link {target}"
        if anchor:
            assert anchor in markdown.anchors(page.read_text()), f"no #{anchor} in {path}"


# -- (d) real messages validate ----------------------------------------------------------


def kwargs_of(task: str) -> dict[str, Any]:
    """Valid arguments of every job (sent, never run, by the capture test)."""
    payload = jobs.encode_payload(b"invoice 42")
    every: dict[str, dict[str, Any]] = {
        jobs.SIGN: {"tenant_id": "acme", "payload": payload, "canonical_json": False},
        jobs.SIGN_BATCH: {"items": [{"tenant_id": "acme", "payload": payload}]},
        jobs.CREATE_KEYS: {"tenant_id": "acme", "purposes": ["signing"]},
        jobs.ROTATE_KEY: {"tenant_id": "acme", "purpose": "signing", "expected_version": 1},
        jobs.REVOKE_KEY: {"tenant_id": "acme", "kid": "some-kid"},
        jobs.ROTATION_SWEEP: {},
    }
    return every[task]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with redis_deployment(tmp_path) as made:
        yield made


@pytest.fixture
def rabbitmq_deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    if not port_open(AMQP_HOST, 5672):
        service_missing(f"RabbitMQ at {AMQP_HOST}:5672")
    with rabbitmq_vhost() as url:
        made = Deployment(tmp_path, broker_url=url)
        yield made
        made.stop()


#: Raw payloads of the compact sign_batch the capture tests send (one is not UTF-8).
COMPACT_PAYLOADS = [b"invoice 42", b"invoice \x00\x01\xff 43"]


def send_every_job(deployment: Deployment) -> dict[str, str]:
    """One job of each task, as SigningClient publishes it (no worker runs): id -> task, and
    the compact sign_batch (msgpack) as ``sign_many`` sends it by default."""
    sent = {}
    with deployment.client() as client:
        for task in contract.JOBS:
            sent[client.send(task, kwargs_of(task))] = task
        pending = client.submit("acme", b"one more", canonical_json=True)  # as sign() sends
        sent[pending.job_id] = jobs.SIGN
        batch = client.submit_batch("acme", COMPACT_PAYLOADS)
        sent[batch.job_id] = published.COMPACT_BATCH
    return sent


def check_message(
    headers: Mapping[str, Any], body: bytes | str, queue: str, content_type: str
) -> tuple[str, str]:
    """The problems of one published message, as validation errors; returns its job id and
    its task (:data:`published.COMPACT_BATCH` for a compact sign_batch in msgpack)."""
    task = headers["task"]
    assert contract.ROUTES[task] == queue
    assert errors_of(published.HEADERS_FILE, headers) == []
    if content_type == published.BINARY_CONTENT_TYPE:
        decoded = msgpack.unpackb(body, raw=False)
        assert decoded[1]["payloads"] == COMPACT_PAYLOADS  # raw bytes: msgpack bin
        task = published.COMPACT_BATCH
        assert errors_of(published.body_file(task), json_instance(decoded)) == []
    else:
        assert content_type == published.CONTENT_TYPE
        assert errors_of(published.body_file(task), json.loads(body)) == []
    assert "invoice" not in headers["kwargsrepr"]  # hashes and sizes, not payloads
    return str(headers["id"]), task


def raw_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@pytest.mark.integration
def test_what_the_client_publishes_on_redis_validates(deployment: Deployment) -> None:
    sent = send_every_job(deployment)
    broker = raw_redis(deployment.settings.effective_broker_url)
    found = {}
    for queue in contract.QUEUES:
        for item in broker.lrange(queue, 0, -1):
            envelope = json.loads(item)
            assert errors_of(published.REDIS_ENVELOPE_FILE, envelope) == []
            assert envelope["properties"]["delivery_info"]["routing_key"] == queue
            assert envelope["properties"]["body_encoding"] == "base64"
            body = base64.b64decode(envelope["body"])
            job_id, task = check_message(envelope["headers"], body, queue, envelope["content-type"])
            found[job_id] = task
            if task == published.COMPACT_BATCH:
                assert envelope["content-encoding"] == published.BINARY_CONTENT_ENCODING
    broker.close()
    assert found == sent
    # The schemas can fail: a message without its delivery tag, or with positional arguments.
    assert errors_of(published.REDIS_ENVELOPE_FILE, {**envelope, "properties": {}})
    assert errors_of(published.body_file(jobs.SIGN), [["acme"], {}, {}])
    batch = published.arguments_file(jobs.SIGN_BATCH)
    item = kwargs_of(jobs.SIGN_BATCH)["items"][0]
    assert errors_of(batch, {"items": [item] * contract.MAX_BATCH_ITEMS}) == []
    assert errors_of(batch, {"items": [item] * (contract.MAX_BATCH_ITEMS + 1)})
    assert errors_of(batch, {"items": []})


@pytest.mark.integration
def test_what_the_client_publishes_on_rabbitmq_validates(
    rabbitmq_deployment: Deployment,
) -> None:
    sent = send_every_job(rabbitmq_deployment)
    found = {}
    url = rabbitmq_deployment.settings.effective_broker_url
    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        for queue in contract.QUEUES:
            while (message := channel.basic_get(queue, no_ack=True)) is not None:
                encoding = {
                    published.CONTENT_TYPE: published.CONTENT_ENCODING,
                    published.BINARY_CONTENT_TYPE: published.BINARY_CONTENT_ENCODING,
                }
                assert message.content_encoding == encoding[message.content_type]
                assert message.properties["delivery_mode"] == 2
                assert message.properties["correlation_id"] == message.headers["id"]
                assert message.delivery_info["routing_key"] == queue
                assert message.delivery_info["exchange"] in ("", contract.EXCHANGE)
                job_id, task = check_message(
                    message.headers, message.body, queue, message.content_type
                )
                found[job_id] = task
    assert found == sent


def stored_result(deployment: Deployment, job_id: str) -> dict[str, Any]:
    backend = raw_redis(deployment.settings.effective_result_backend)
    raw = backend.get(f"celery-task-meta-{job_id}")
    backend.close()
    assert raw is not None, f"no celery-task-meta-{job_id}"
    found: dict[str, Any] = json.loads(raw)
    return found


@pytest.mark.e2e
def test_what_a_real_worker_stores_validates(deployment: Deployment) -> None:
    deployment.worker("w1", concurrency=1)
    payload = jobs.encode_payload(b"invoice 42")
    good = {"tenant_id": "acme", "payload": payload}
    jobs_sent: list[tuple[str, dict[str, Any], ErrorCode | None]] = [
        (jobs.CREATE_KEYS, {"tenant_id": "acme"}, None),
        (jobs.SIGN, good, None),
        (jobs.SIGN, {"tenant_id": "nobody", "payload": payload}, ErrorCode.KEY_NOT_FOUND),
        (jobs.SIGN, {"tenant_id": "acme", "payload": "not base64!"}, ErrorCode.INVALID_ENCODING),
        (jobs.SIGN_BATCH, {"items": [good, {"tenant_id": "nobody", "payload": payload}]}, None),
        (jobs.SIGN_BATCH, {"items": [{**good, "extra": 1}]}, ErrorCode.INVALID_ARGUMENT),
        (jobs.SIGN_BATCH, {"items": []}, ErrorCode.INVALID_ARGUMENT),  # 1 to MAX_BATCH_ITEMS
        (jobs.ROTATE_KEY, {"tenant_id": "acme", "purpose": "signing"}, None),
        ("tenantkeys.no_such_task", good, ErrorCode.INVALID_ARGUMENT),
    ]
    with deployment.client() as client:
        for task, kwargs, failing in jobs_sent:  # one after the other: create_keys first
            job_id = client.send(task, kwargs)
            try:
                client.wait(job_id, 60)
            except TenantKeysError as exc:
                assert exc.code == failing, (task, exc)
            else:
                assert failing is None, task
            record = stored_result(deployment, job_id)
            assert record["task_id"] == job_id
            if failing is None:
                assert errors_of(published.success_file(task), record) == [], task
                assert errors_of(published.FAILURE_FILE, record)  # and it is no failure
            else:
                assert errors_of(published.FAILURE_FILE, record) == [], task
                assert record["result"]["exc_message"][1]["code"] == failing
                assert record["result"]["exc_message"][1]["retryable"] is False
    unknown = record["result"]["exc_message"][1]
    assert unknown["dead_letter"]  # the unknown task was dead-lettered, and says where
    check_compact_results(deployment)


def check_compact_results(deployment: Deployment) -> None:
    """Compact sign_batch jobs, in msgpack and as their JSON twin: each SUCCESS validates
    against the compact result's schema (and the task's), each FAILURE against failure.json;
    a bad payload fails alone, in ``errors`` with its code."""
    compact_success = published.success_file(published.COMPACT_BATCH)
    twin = jobs.encode_payload(b"invoice 42")
    sent: list[tuple[dict[str, Any], bool, ErrorCode | None, list[ErrorCode | None]]] = [
        (
            {"tenant_id": "acme", "payloads": [b'{"a": 1}', b"not json"], "canonical_json": True},
            True,
            None,
            [None, ErrorCode.INVALID_JSON],
        ),
        (
            {"tenant_id": "acme", "payloads": [twin, "not base64!"]},
            False,
            None,
            [None, ErrorCode.INVALID_ENCODING],
        ),
        ({"tenant_id": "nobody", "payloads": [b"x"]}, True, ErrorCode.KEY_NOT_FOUND, []),
        ({"tenant_id": "acme", "payloads": []}, True, ErrorCode.INVALID_ARGUMENT, []),
    ]
    with deployment.client() as client:
        for kwargs, binary, failing, codes in sent:
            job_id = client.send(jobs.SIGN_BATCH, kwargs, binary=binary)
            try:
                client.wait(job_id, 60)
            except TenantKeysError as exc:
                assert exc.code == failing, (kwargs["tenant_id"], exc)
            else:
                assert failing is None, kwargs["tenant_id"]
            record = stored_result(deployment, job_id)
            if failing is not None:
                assert errors_of(published.FAILURE_FILE, record) == []
                assert record["result"]["exc_message"][1]["code"] == failing
                continue
            assert errors_of(compact_success, record) == []
            assert errors_of(published.success_file(jobs.SIGN_BATCH), record) == []
            result = record["result"]["result"]
            found = {entry["index"]: entry["error"]["code"] for entry in result["errors"]}
            assert [found.get(i) for i in range(len(codes))] == codes
            assert [jws is None for jws in result["jws"]] == [c is not None for c in codes]
            # An items result is no compact one: the schemas tell the two forms apart.
            items = {**record, "result": {"ok": True, "result": {"results": []}}}
            assert errors_of(compact_success, items)
