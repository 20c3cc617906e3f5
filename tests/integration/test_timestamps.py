"""RFC 3161 timestamps against a real TSA (``openssl ts -reply``, tests/integration/tsa.py).

Tokens are checked three ways: ``verify_timestamp`` (rfc3161-client), ``openssl ts -verify``
on its own, and the real ``tenantkeys verify`` with a key revoked between two tokens.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
from pathlib import Path

import pytest

from tenantkeys.errors import ErrorCode, TenantKeysError
from tenantkeys.providers.local import LocalProvider
from tenantkeys.signing import Signature
from tenantkeys.signing.timestamps import (
    Timestamper,
    latest_time,
    request_timestamp,
    stamped_bytes,
    verify_timestamp,
)
from tests.conftest import free_port
from tests.helpers import make_runner
from tests.integration.cli_runner import CODED_LINE, cli_deployment
from tests.integration.tsa import LocalTsa, local_tsa, make_pki

pytestmark = pytest.mark.integration
__all__ = ["local_tsa"]  # the fixture, imported for the tests below

JWS = "eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoiayJ9..c2lnbmF0dXJlLWJ5dGVz"


def openssl_verifies(tsa: LocalTsa, token: str, jws: str, tmp_path: Path) -> bool:
    """``openssl ts -verify`` alone, as docs/verifying.md#timestamps shows it."""
    segment, reply = tmp_path / "segment", tmp_path / "token.tsr"
    segment.write_bytes(jws.split(".")[2].encode("ascii"))
    reply.write_bytes(base64.b64decode(token))
    done = subprocess.run(
        ["openssl", "ts", "-verify", "-data", str(segment), "-in", str(reply),
         "-CAfile", str(tsa.ca_file)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return done.returncode == 0 and "Verification: OK" in done.stdout


def code_of(exc: pytest.ExceptionInfo[TenantKeysError]) -> ErrorCode:
    return ErrorCode(exc.value.code)


def test_token_over_the_signature_verifies_here_and_with_openssl(
    local_tsa: LocalTsa, tmp_path: Path
) -> None:
    token = request_timestamp(local_tsa.url, JWS, timeout=10)
    assert local_tsa.answered == 1
    gen_time = verify_timestamp(token, JWS, local_tsa.ca_pem)
    assert verify_timestamp(token, JWS, local_tsa.ca_file) == gen_time  # PEM bytes or a path
    assert gen_time.tzinfo is not None and latest_time(token) > gen_time  # accuracy 1 ms
    assert openssl_verifies(local_tsa, token, JWS, tmp_path)
    # It can fail: another signature, seen by openssl as by us.
    other = JWS[:-4] + "AAAA"
    assert not openssl_verifies(local_tsa, token, other, tmp_path)
    with pytest.raises(TenantKeysError) as wrong_jws:
        verify_timestamp(token, other, local_tsa.ca_pem)
    assert code_of(wrong_jws) is ErrorCode.TIMESTAMP_INVALID


def test_token_from_an_untrusted_tsa_or_altered_is_refused(
    local_tsa: LocalTsa, tmp_path: Path
) -> None:
    token = request_timestamp(local_tsa.url, JWS, timeout=10)
    stranger, _, _ = make_pki(tmp_path, name="another")
    with pytest.raises(TenantKeysError) as untrusted:
        verify_timestamp(token, JWS, stranger)
    assert code_of(untrusted) is ErrorCode.TIMESTAMP_INVALID
    der = bytearray(base64.b64decode(token))
    der[-10] ^= 0x01  # inside the CMS signature
    with pytest.raises(TenantKeysError) as altered:
        verify_timestamp(base64.b64encode(der).decode(), JWS, local_tsa.ca_pem)
    assert code_of(altered) is ErrorCode.TIMESTAMP_INVALID
    for garbage in ("not base64!", base64.b64encode(b"\x30\x03\x02\x01\x00").decode()):
        with pytest.raises(TenantKeysError) as unreadable:
            verify_timestamp(garbage, JWS, local_tsa.ca_pem)
        assert code_of(unreadable) is ErrorCode.TIMESTAMP_INVALID
    with pytest.raises(TenantKeysError) as no_ca:
        verify_timestamp(token, JWS, b"no certificate here")
    assert code_of(no_ca) is ErrorCode.INVALID_ARGUMENT


def test_mangled_tokens_are_coded_never_a_parser_exception(local_tsa: LocalTsa) -> None:
    token = base64.b64decode(request_timestamp(local_tsa.url, JWS, timeout=10))
    genuine = verify_timestamp(base64.b64encode(token).decode(), JWS, local_tsa.ca_pem)
    rng, refused = random.Random(3161), 0
    for _ in range(400):
        mangled = bytearray(token)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(mangled))
            if rng.random() < 0.7:
                mangled[at] = rng.randrange(256)
            else:
                del mangled[at : at + rng.randint(1, 40)]
        try:
            stamped = verify_timestamp(base64.b64encode(mangled).decode(), JWS, local_tsa.ca_pem)
        except TenantKeysError as exc:
            assert exc.code == ErrorCode.TIMESTAMP_INVALID
            refused += 1
        else:  # a byte outside what the TSA signed (say, the status text): same proof
            assert stamped == genuine
    assert refused > 350  # (found: rfc3161-client raised bare ValueError on some of these)


def test_tsa_outage_is_transient_and_a_refusal_is_not(local_tsa: LocalTsa) -> None:
    local_tsa.fail_with = 503
    with pytest.raises(TenantKeysError) as down:
        request_timestamp(local_tsa.url, JWS, timeout=10)
    assert code_of(down) is ErrorCode.TSA_UNAVAILABLE and down.value.action == "retry"
    assert local_tsa.refused == 1 and local_tsa.answered == 0  # the fault hit the request
    local_tsa.fail_with = 404
    with pytest.raises(TenantKeysError) as wrong_url:
        request_timestamp(local_tsa.url, JWS, timeout=10)
    assert code_of(wrong_url) is ErrorCode.TSA_REFUSED and wrong_url.value.action != "retry"
    with pytest.raises(TenantKeysError) as nobody:
        request_timestamp(f"http://127.0.0.1:{free_port()}/tsr", JWS, timeout=2)
    assert code_of(nobody) is ErrorCode.TSA_UNAVAILABLE
    with pytest.raises(TenantKeysError) as not_jws:
        stamped_bytes("no dots")
    assert code_of(not_jws) is ErrorCode.INVALID_JWS


def test_signature_json_with_and_without_timestamp() -> None:
    old = {
        "jws": JWS,
        "kid": "k",
        "tenant_id": "acme",
        "alg": "Ed25519",
        "payload_sha256": "00",
        "signed_at": "2026-01-01T00:00:00.000+00:00",
    }
    parsed = Signature.from_dict(old)
    assert parsed.timestamp is None and parsed.to_dict() == old  # old results still parse
    stamped = Signature.from_dict({**old, "timestamp": "dG9rZW4="})
    assert stamped.timestamp == "dG9rZW4=" and stamped.to_dict()["timestamp"] == "dG9rZW4="


def test_runner_stamps_every_batch_item_and_retries_when_the_tsa_is_down(
    local_tsa: LocalTsa, tmp_path: Path
) -> None:
    runner = make_runner(tmp_path, LocalProvider(tmp_path / "master.key"), max_retries=3)
    runner.timestamper = Timestamper(local_tsa.url, 10.0, local_tsa.ca_file)
    items = [
        {"tenant_id": "acme", "payload": base64.b64encode(b"e%d" % i).decode()} for i in range(3)
    ]
    outcome = runner.sign_batch({"items": items}, job_id="j1")
    results = outcome.result["result"]["results"]  # type: ignore[index]
    assert [r["ok"] for r in results] == [True] * 3 and local_tsa.answered == 3
    for entry in results:
        signature = Signature.from_dict(entry["result"])
        assert signature.timestamp is not None
        verify_timestamp(signature.timestamp, signature.jws, local_tsa.ca_pem)

    local_tsa.fail_with = 503
    down = runner.sign({"tenant_id": "acme", "payload": "ZQ=="}, job_id="j2")
    assert down.retry_in is not None and down.error is not None
    assert down.error.code == ErrorCode.TSA_UNAVAILABLE and local_tsa.refused == 1
    # A batch asks a failing TSA once, not once per item (each would wait out the timeout).
    batch_down = runner.sign_batch({"items": items}, job_id="j3")
    assert batch_down.retry_in is not None and local_tsa.refused == 2


def test_verify_says_signed_before_revocation_and_refuses_a_later_token(
    local_tsa: LocalTsa, tmp_path: Path
) -> None:
    with cli_deployment(tmp_path) as cli:
        cli.env.update(
            TENANTKEYS_DATABASE_URL=f"sqlite:///{tmp_path / 'keys.db'}",
            TENANTKEYS_LOCAL_MASTER_KEY_FILE=str(tmp_path / "master.key"),
            TENANTKEYS_TSA_URL=local_tsa.url,
            TENANTKEYS_TSA_CA_FILE=str(local_tsa.ca_file),
        )
        cli.ok("keys", "create", "--tenant", "acme")
        signed = json.loads(cli.ok("sign", "--tenant", "acme", "--data", "evidence"))
        assert signed["timestamp"] and local_tsa.answered == 1
        signature_file = tmp_path / "signature.json"
        signature_file.write_text(json.dumps(signed))
        verify = ("verify", "--tenant", "acme", "--data", "evidence")

        live = json.loads(cli.ok(*verify, "--signature", str(signature_file)))
        assert live["status"] == "active" and live["timestamp_verdict"] == "timestamp valid"

        cli.ok("keys", "revoke", "--tenant", "acme", "--kid", signed["kid"])
        before = json.loads(cli.ok(*verify, "--signature", str(signature_file)))
        assert before["valid"] is True and before["status"] == "revoked"
        assert before["timestamp_verdict"] == "signed before the key was revoked"
        assert before["timestamp"] < before["revoked_at"]

        # The same JWS stamped now, after the revocation: refused, with the reason.
        later = request_timestamp(local_tsa.url, signed["jws"], timeout=10)
        after = cli.run(*verify, "--signature", str(signature_file), "--timestamp", later)
        assert after.returncode == 1
        line = CODED_LINE.match(after.stderr.strip())
        assert line is not None and line["code"] == "TK-KEY-REVOKED", after.stderr
        assert "not before the key was revoked" in line["message"]
        # No timestamp at all: a revoked key's signature is refused as before.
        bare = cli.run(*verify, "--jws", signed["jws"])
        assert bare.returncode == 1 and "TK-KEY-REVOKED" in bare.stderr
        # A valid early token does not vouch for another payload.
        other = cli.run(
            "verify", "--tenant", "acme", "--data", "forged", "--signature", str(signature_file)
        )
        assert other.returncode == 1 and "TK-SIGNATURE-INVALID" in other.stderr
        # A token from another TSA is refused before any verdict.
        stranger, _, _ = make_pki(tmp_path, name="another")
        untrusted = cli.run(*verify, "--signature", str(signature_file), "--tsa-ca", str(stranger))
        assert untrusted.returncode == 1 and "TK-TIMESTAMP-INVALID" in untrusted.stderr
        # No CA to check the token against, or no JWS at all: coded, one line each.
        no_ca = cli.run(
            *verify, "--signature", str(signature_file), env={"TENANTKEYS_TSA_CA_FILE": ""}
        )
        assert no_ca.returncode == 1 and "TK-INVALID-ARGUMENT" in no_ca.stderr
        assert "--tsa-ca" in no_ca.stderr
        neither = cli.run(*verify)
        assert neither.returncode != 0 and CODED_LINE.match(neither.stderr.strip())
        errors = untrusted.stderr + after.stderr + other.stderr + no_ca.stderr + neither.stderr
        assert "Traceback" not in errors
