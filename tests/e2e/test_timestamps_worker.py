"""Sign jobs through a real worker with TENANTKEYS_TSA_URL on: each signature carries a token.

The TSA is the local ``openssl ts`` one (tests/integration/tsa.py), reached by the worker over
HTTP. An outage during a job makes the job wait (retried), never sign without a token.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkeys.signing import Signature
from tenantkeys.signing.timestamps import verify_timestamp
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.harness import Deployment, wait_for
from tests.integration.tsa import LocalTsa, local_tsa

pytestmark = pytest.mark.e2e
__all__ = ["local_tsa"]  # the fixture, imported for the tests below


@pytest.fixture
def deployment(tmp_path: Path, local_tsa: LocalTsa) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    # Eight retries capped at 0.5 s: a few seconds in which the TSA outage below can end.
    made = Deployment(
        tmp_path / "deployment",
        tsa_url=local_tsa.url,
        tsa_ca_file=str(local_tsa.ca_file),
        retry_max=8,
    )
    made.tmp.mkdir()
    yield made
    made.stop()


def openssl_verifies(tsa: LocalTsa, signature: Signature, tmp: Path) -> bool:
    assert signature.timestamp is not None
    segment, token = tmp / "segment", tmp / "token.tsr"
    segment.write_bytes(signature.jws.split(".")[2].encode("ascii"))
    token.write_bytes(base64.b64decode(signature.timestamp))
    done = subprocess.run(
        ["openssl", "ts", "-verify", "-data", str(segment), "-in", str(token),
         "-CAfile", str(tsa.ca_file)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return done.returncode == 0


def test_worker_signatures_carry_tokens_and_wait_out_a_tsa_outage(
    deployment: Deployment, local_tsa: LocalTsa, tmp_path: Path
) -> None:
    deployment.worker("w1")
    with deployment.client() as client:
        client.create_keys("acme", timeout=30)
        signature = client.sign("acme", b"evidence", timeout=30)
        assert signature.timestamp is not None and local_tsa.answered == 1
        verify_timestamp(signature.timestamp, signature.jws, local_tsa.ca_pem)
        assert openssl_verifies(local_tsa, signature, tmp_path)
        deployment.runtime().service.verify("acme", b"evidence", signature.jws)

        batch = client.sign_many("acme", [b"one", b"two", b"three"])
        assert all(isinstance(s, Signature) and s.timestamp for s in batch)
        assert local_tsa.answered == 4  # one token per item
        for item in batch:
            assert isinstance(item, Signature) and item.timestamp is not None
            verify_timestamp(item.timestamp, item.jws, local_tsa.ca_pem)

        # The TSA fails while a job is in flight: the job retries, then signs with a token.
        local_tsa.fail_with = 503
        pending = client.submit("acme", b"during the outage")
        wait_for(lambda: local_tsa.refused >= 1, 30, "the worker to hit the failing TSA", 0.02)
        local_tsa.fail_with = None
        late = pending.result(timeout=30)
        assert isinstance(late, Signature) and late.timestamp is not None
        verify_timestamp(late.timestamp, late.jws, local_tsa.ca_pem)
        assert local_tsa.answered == 5
    retried = [line for line in deployment.log("w1").splitlines() if "retried=1" in line]
    assert any(pending.job_id in line for line in retried)  # retried, not signed unstamped
