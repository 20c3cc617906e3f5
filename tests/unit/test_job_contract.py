"""The typed job contract: every job's arguments are checked against it, its JSON Schemas are
complete, and the producer's side of it stays light (no database code on import)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tenantkeys import jobs
from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.jobs import contract

pytestmark = pytest.mark.unit


def test_every_routed_task_has_arguments_and_a_result_in_the_contract() -> None:
    assert set(contract.JOBS) == set(contract.ROUTES)
    schemas = contract.json_schemas()
    for task, schema in schemas.items():
        arguments = schema["arguments"]
        # A sign_batch has two forms (items, and the compact one): each is a closed object.
        forms = (
            [arguments["$defs"][ref["$ref"].rsplit("/", 1)[1]] for ref in arguments["anyOf"]]
            if "anyOf" in arguments
            else [arguments]
        )
        for form in forms:
            assert form["type"] == "object", task
            assert form.get("additionalProperties") is False, task
        json.dumps(schema)  # JSON all the way down
    batch_forms = schemas[jobs.SIGN_BATCH]["arguments"]["$defs"]
    assert batch_forms["SignBatchArgs"]["required"] == ["items"]
    assert batch_forms["SignBatchCompactArgs"]["required"] == ["tenant_id", "payloads"]
    sign = schemas[jobs.SIGN]
    assert sign["arguments"]["required"] == ["tenant_id", "payload"]
    assert set(sign["result"]["properties"]) == {
        "jws",
        "kid",
        "tenant_id",
        "alg",
        "payload_sha256",
        "signed_at",
        "timestamp",  # RFC 3161, only when a TSA is configured
    }
    assert "timestamp" not in sign["result"].get("required", [])


@pytest.mark.parametrize(
    ("task", "kwargs", "field"),
    [
        (jobs.SIGN, {"tenant_id": "acme"}, "payload"),
        (jobs.SIGN, {"tenant_id": "acme", "payload": "AA==", "extra": 1}, "extra"),
        (jobs.SIGN, {"tenant_id": 7, "payload": "AA=="}, "tenant_id"),
        (jobs.SIGN, {"tenant_id": "a", "payload": "AA==", "canonical_json": "yes"}, "canonical"),
        (jobs.SIGN_BATCH, {"items": "not a list"}, "items"),
        (
            jobs.ROTATE_KEY,
            {"tenant_id": "a", "purpose": "signing", "expected_version": True},
            "expected",
        ),
        (jobs.REVOKE_KEY, ["acme", "kid"], "arguments"),
    ],
)
def test_arguments_outside_the_contract_are_rejected_naming_the_field(
    task: str, kwargs: object, field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        contract.parse_arguments(task, kwargs)
    assert refused.value.code == ErrorCode.INVALID_ARGUMENT
    assert field in refused.value.message
    # The message names fields, never the values (a value may be a payload).
    assert "AA==" not in refused.value.message


def test_the_contract_parses_what_the_client_sends() -> None:
    sent = {"tenant_id": "acme", "payload": jobs.encode_payload(b"x"), "canonical_json": True}
    assert contract.parse_arguments(jobs.SIGN, sent) == sent
    assert contract.parse_arguments(jobs.ROTATION_SWEEP, {}) == {}


def test_importing_the_producer_client_pulls_in_no_database_code() -> None:
    probe = (
        "import sys, tenantkeys.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'alembic'}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "[]"
