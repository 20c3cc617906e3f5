"""Canonical JSON through the queue: a real worker on Redis rejects bad JSON, never dead-letters it.

Before, JSON nested deeper than Python's recursion limit raised RecursionError in the worker,
which the runner dead-lettered as TK-INTERNAL. Now each refusal is the job's own error result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkeys import signing
from tenantkeys.errors import InvalidRequest
from tenantkeys.signing import Signature
from tests.e2e.harness import Deployment, redis_deployment

pytestmark = pytest.mark.e2e

DEEP = b"[" * 5000 + b"]" * 5000


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with redis_deployment(tmp_path) as made:
        yield made


def test_bad_canonical_json_is_rejected_by_the_worker_not_dead_lettered(
    deployment: Deployment,
) -> None:
    deployment.worker("w1")
    runtime = deployment.runtime()
    with deployment.client() as client:
        client.create_keys("acme", timeout=30)
        for payload, code in (
            (DEEP, "TK-JSON-TOO-DEEP"),
            (b'{"id": 9007199254740993}', "TK-JSON-NOT-I-JSON"),
            (b'{"a": 1, "a": 2}', "TK-JSON-NOT-I-JSON"),
            (b"\xff\xfe", "TK-INVALID-JSON"),
        ):
            with pytest.raises(InvalidRequest) as refused:
                client.sign("acme", payload, canonical_json=True, timeout=30)
            assert refused.value.code == code, refused.value
        mixed = client.sign_many("acme", [b'{"b":2,"a":1}', DEEP], canonical_json=True)
        assert isinstance(mixed[1], InvalidRequest) and mixed[1].code == "TK-JSON-TOO-DEEP"
        signed = mixed[0]
        assert isinstance(signed, Signature)
    header = json.loads(signing.b64url_decode(signed.jws.split(".")[0]))
    assert header["alg"] == "Ed25519" and header[signing.CANONICAL_HEADER] is True
    runtime.service.verify("acme", b'{ "a": 1, "b": 2 }', signed.jws)
    assert deployment.deadletters().depth() == 0  # every refusal was the job's own result
    runtime.close()
