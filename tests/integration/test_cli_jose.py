"""The CLI end to end, checked by independent JOSE libraries given only ``tenantkeys jwks``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from joserfc import jws as jose_jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

pytestmark = pytest.mark.integration


class Cli:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd

    def run(
        self, *args: str, stdin: bytes | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "tenantkeys", *args],
            check=False,
            env=self.env,
            cwd=self.cwd,
            input=stdin.decode() if stdin is not None else None,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args).stdout)


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, redis_prefix: str) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKEYS_")}
    env.update(
        TENANTKEYS_DATABASE_URL=f"sqlite:///{tmp_path / 'keys.db'}",
        TENANTKEYS_LOCAL_MASTER_KEY_FILE=str(tmp_path / "master.key"),
        TENANTKEYS_REDIS_URL=redis_url,
        TENANTKEYS_REDIS_PREFIX=redis_prefix,
    )
    return Cli(env, tmp_path)


def joserfc_verify(jwks: dict, compact: str, payload: bytes) -> bool:
    keyset = KeySet.import_key_set({"keys": jwks["keys"]})
    # joserfc refuses header members it does not know unless told otherwise; RFC 7515 section 4
    # says they are ignored. tenant_id is such a member. joserfc also wants "EdDSA" (RFC 8037)
    # allowed explicitly, as RFC 9864 prefers the fully-specified "Ed25519" name.
    registry = jose_jws.JWSRegistry(strict_check_header=False, algorithms=["EdDSA"])
    try:
        jose_jws.deserialize_compact(
            compact, keyset, payload=payload, algorithms=["EdDSA"], registry=registry
        )
    except (JoseError, ValueError):
        return False
    return True


def pyjwt_verify(jwks: dict, compact: str, payload: bytes) -> bool:
    header = jwt.get_unverified_header(compact)
    matches = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    if not matches:
        return False
    key = jwt.PyJWK(matches[0])
    # RFC 7515 appendix F: a detached JWS is verified by putting the encoded payload back.
    protected, _, signature = compact.split(".")
    attached = f"{protected}.{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}.{signature}"
    try:
        jwt.api_jws.decode_complete(attached, key=key, algorithms=["EdDSA"])
    except jwt.InvalidSignatureError:
        return False
    return True


def test_signature_verifies_with_independent_jose_libraries_across_rotations(
    cli: Cli, tmp_path: Path
) -> None:
    evidence = tmp_path / "evidence.json"
    evidence.write_bytes(b'{"control": "AC-2", "result": "pass"}')
    cli.run("keys", "create", "--tenant", "alpha")
    cli.run("keys", "create", "--tenant", "beta")
    first = cli.json("sign", "--tenant", "alpha", "--file", str(evidence))
    assert set(first) == {"jws", "kid", "tenant_id", "alg", "payload_sha256", "signed_at"}
    payload = evidence.read_bytes()
    for verify in (joserfc_verify, pyjwt_verify):
        assert verify(cli.json("jwks", "--tenant", "alpha"), first["jws"], payload)

    cli.run("keys", "rotate", "--tenant", "alpha", "--purpose", "signing")
    second = cli.json("sign", "--tenant", "alpha", "--data", "second")
    cli.run("keys", "rotate", "--tenant", "alpha", "--purpose", "signing")
    jwks = cli.json("jwks", "--tenant", "alpha")
    assert [k["status"] for k in jwks["keys"]] == ["active", "retired", "retired"]
    for verify in (joserfc_verify, pyjwt_verify):
        assert verify(jwks, first["jws"], payload)  # after two rotations
        assert verify(jwks, second["jws"], b"second")
        assert not verify(jwks, first["jws"], payload + b" ")  # and it can fail
    assert (
        cli.run(
            "verify", "--tenant", "alpha", "--file", str(evidence), "--jws", first["jws"]
        ).returncode
        == 0
    )

    # Revoked: refused by our verify and absent from the JWKS other libraries read.
    cli.run("keys", "revoke", "--tenant", "alpha", "--kid", second["kid"])
    jwks = cli.json("jwks", "--tenant", "alpha")
    assert second["kid"] in [r["kid"] for r in jwks["revoked"]]
    for verify in (joserfc_verify, pyjwt_verify):
        assert not verify(jwks, second["jws"], b"second")
    refused = cli.run(
        "verify", "--tenant", "alpha", "--data", "second", "--jws", second["jws"], ok=False
    )
    assert refused.returncode == 1 and "TK-KEY-REVOKED" in refused.stderr

    # Tenant A's signature never verifies as tenant B, with our verify or with B's JWKS.
    beta_jwks = cli.json("jwks", "--tenant", "beta")
    for verify in (joserfc_verify, pyjwt_verify):
        assert not verify(beta_jwks, first["jws"], payload)
    cross = cli.run(
        "verify", "--tenant", "beta", "--file", str(evidence), "--jws", first["jws"], ok=False
    )
    assert cross.returncode == 1 and "TK-TENANT-MISMATCH" in cross.stderr


def test_stdin_and_canonical_json(cli: Cli) -> None:
    cli.run("keys", "create", "--tenant", "alpha", "--purpose", "signing")
    out = json.loads(
        cli.run("sign", "--tenant", "alpha", "--canonical-json", "-", stdin=b'{"b":2,"a":1}').stdout
    )
    ok = cli.run(
        "verify",
        "--tenant",
        "alpha",
        "--canonical-json",
        "--data",
        '{"a": 1, "b": 2}',
        "--jws",
        out["jws"],
    )
    assert json.loads(ok.stdout)["valid"] is True


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["sign", "--tenant", "no such", "--data", "x"], "TK-INVALID-TENANT"),
        (["sign", "--tenant", "-x", "--data", "x"], "TK-INVALID"),
        (["sign", "--tenant", "alpha", "--data", "x" * 70], "TK-PAYLOAD-TOO-LARGE"),
        (["sign", "--tenant", "alpha"], "TK-INVALID-ARGUMENT"),
        (["sign", "--tenant", "ghost", "--data", "x"], "TK-KEY-NOT-FOUND"),
        (["sign", "--tenant", "alpha", "--file", "/nonexistent"], "TK-INVALID-ARGUMENT"),
        (["verify", "--tenant", "alpha", "--data", "x", "--jws", "%%%"], "TK-INVALID-JWS"),
        (["verify", "--tenant", "alpha", "--data", "x", "--jws", "a.b.c"], "TK-JWS-NONCANONICAL"),
        (
            [
                "verify",
                "--tenant",
                "alpha",
                "--data",
                "x",
                "--jws",
                "eyJhbGciOiJFZERTQSIsImtpZCI6IngiLCJ0ZW5hbnRfaWQiOiJhbHBoYSJ9..AAAA",
            ],
            "TK-UNKNOWN-KID",
        ),
        (["keys", "revoke", "--tenant", "alpha", "--kid", "nope"], "TK-UNKNOWN-KID"),
        (["keys", "create", "--tenant", "alpha", "--purpose", "mining"], "TK-INVALID-ARGUMENT"),
        (["nonsense"], "TK-INVALID-ARGUMENT"),
    ],
)
def test_bad_input_is_one_coded_line_without_traceback(
    cli: Cli, args: list[str], code: str
) -> None:
    cli.env["TENANTKEYS_MAX_PAYLOAD_BYTES"] = "64"
    cli.run("keys", "create", "--tenant", "alpha", "--purpose", "signing")
    done = cli.run(*args, ok=False)
    assert done.returncode in (1, 2)
    assert code in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_bad_settings_stop_the_cli_with_the_reason(cli: Cli) -> None:
    cli.env["TENANTKEYS_KMS_PROVIDER"] = "aws"
    done = cli.run("config", "check", ok=False)
    assert done.returncode == 2 and "TK-CONFIG-MISSING-SETTING" in done.stderr
    assert "TENANTKEYS_AWS_KMS_KEY_ID" in done.stderr and "Traceback" not in done.stderr
    cli.env.update(TENANTKEYS_KMS_PROVIDER="local", TENANTKEYS_ENVIRONMENT="production")
    done = cli.run("keys", "list", "--tenant", "alpha", ok=False)
    assert "TK-CONFIG-LOCAL-IN-PRODUCTION" in done.stderr


def test_config_check_masks_secrets(cli: Cli) -> None:
    cli.env["TENANTKEYS_DATABASE_URL"] = cli.env["TENANTKEYS_DATABASE_URL"]
    cli.env["TENANTKEYS_ADMIN_TOKEN_SHA256"] = "f" * 64
    out = cli.json("config", "check")
    assert out["ok"] is True and out["provider"] == "local"
    assert "f" * 64 not in json.dumps(out)
