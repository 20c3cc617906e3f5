"""The secret scan of the fault suite finds what it is meant to find (so "no leak" means
something): key bytes and payloads in every encoding it searches, in every kind of place."""

from __future__ import annotations

import base64

import pytest

from tests.e2e.faults.hygiene import SecretScan, forms

pytestmark = pytest.mark.unit
SECRET = bytes(range(32))
PAYLOAD = b"tkfault-payload:selfcheck:0123456789abcdef"


@pytest.mark.parametrize("form", forms(SECRET), ids=["raw", "hex", "b64", "b64url"])
@pytest.mark.parametrize("place", ["redis:p:key", "db:key_versions:0", "log:w1.log", "event:3"])
def test_key_material_is_found_in_any_form_and_place(form: bytes, place: str) -> None:
    scan = SecretScan(key_secrets={"t/signing/v1/private": SECRET})
    scan.haystacks[place] = b"prefix " + form + b" suffix"
    assert scan.findings() == [f"key t/signing/v1/private in {place}"]


def test_payloads_are_found_outside_broker_queues_only() -> None:
    scan = SecretScan(key_secrets={"k": SECRET}, payloads={"job": PAYLOAD})
    scan.in_transit["redis:p:tenantkeys.sign"] = base64.b64encode(PAYLOAD)
    scan.haystacks["result-write:0"] = b'{"jws": "..."}'
    scan.check()  # in a queue: in transit by design, not a leak
    assert scan.payloads_in_transit == 1
    scan.haystacks["log:w1.log"] = b"signed " + base64.b64encode(PAYLOAD)
    with pytest.raises(AssertionError, match=r"payload job in log:w1\.log"):
        scan.check()
