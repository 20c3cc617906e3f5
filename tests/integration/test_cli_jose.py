"""The CLI end to end, checked by independent JOSE libraries given only ``tenantkeys jwks``.

The libraries run the verification kit of docs/verifying.md as written there (joserfc, PyJWT,
jwcrypto; tests/interop/test_verification_kit.py runs it with Node's jose too).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenantkeys import signing
from tests.interop.kit import Verify, python_verifiers

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


KITS = python_verifiers()


def verifies(verify: Verify, jwks: dict, compact: str, payload: bytes, tenant: str) -> bool:
    try:
        verify(jwks, compact, payload, tenant)
    except Exception:  # each library refuses in its own way
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
    assert first["alg"] == "Ed25519"  # the default for new keys (RFC 9864)
    payload = evidence.read_bytes()
    for verify in KITS.values():
        assert verifies(
            verify, cli.json("jwks", "--tenant", "alpha"), first["jws"], payload, "alpha"
        )

    cli.run("keys", "rotate", "--tenant", "alpha", "--purpose", "signing")
    second = cli.json("sign", "--tenant", "alpha", "--data", "second")
    cli.run("keys", "rotate", "--tenant", "alpha", "--purpose", "signing")
    jwks = cli.json("jwks", "--tenant", "alpha")
    assert [k["status"] for k in jwks["keys"]] == ["active", "retired", "retired"]
    for verify in KITS.values():
        assert verifies(verify, jwks, first["jws"], payload, "alpha")  # after two rotations
        assert verifies(verify, jwks, second["jws"], b"second", "alpha")
        assert not verifies(verify, jwks, first["jws"], payload + b" ", "alpha")  # it can fail
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
    for verify in KITS.values():
        assert not verifies(verify, jwks, second["jws"], b"second", "alpha")
    refused = cli.run(
        "verify", "--tenant", "alpha", "--data", "second", "--jws", second["jws"], ok=False
    )
    assert refused.returncode == 1 and "TK-KEY-REVOKED" in refused.stderr

    # Tenant A's signature never verifies as tenant B, with our verify or with B's JWKS.
    beta_jwks = cli.json("jwks", "--tenant", "beta")
    for verify in KITS.values():
        assert not verifies(verify, beta_jwks, first["jws"], payload, "beta")
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
    # The header says the payload is canonical JSON, so verify needs no flag, and every kit
    # library verifies the re-serialized JSON too.
    header = json.loads(signing.b64url_decode(out["jws"].split(".")[0]))
    assert header == {"alg": "Ed25519", "kid": out["kid"], "tenant_id": "alpha", "jcs": True}
    again = cli.run("verify", "--tenant", "alpha", "--data", '{"a":1.0,"b":2}', "--jws", out["jws"])
    assert json.loads(again.stdout)["valid"] is True
    jwks = cli.json("jwks", "--tenant", "alpha")
    for verify in KITS.values():
        assert verifies(verify, jwks, out["jws"], b'{ "a": 1, "b": 2.0 }', "alpha")
        assert not verifies(verify, jwks, out["jws"], b'{"a": 1, "b": 3}', "alpha")


def test_signing_algorithm_setting_keeps_eddsa_for_new_keys(cli: Cli) -> None:
    cli.env["TENANTKEYS_SIGNING_ALGORITHM"] = "EdDSA"
    cli.run("keys", "create", "--tenant", "alpha", "--purpose", "signing")
    old = cli.json("sign", "--tenant", "alpha", "--data", "old")
    assert old["alg"] == "EdDSA"
    cli.env["TENANTKEYS_SIGNING_ALGORITHM"] = "Ed25519"  # takes effect at the next rotation
    assert cli.json("sign", "--tenant", "alpha", "--data", "x")["alg"] == "EdDSA"
    cli.run("keys", "rotate", "--tenant", "alpha", "--purpose", "signing")
    new = cli.json("sign", "--tenant", "alpha", "--data", "new")
    assert new["alg"] == "Ed25519"
    jwks = cli.json("jwks", "--tenant", "alpha")
    assert [(k["alg"], k["status"]) for k in jwks["keys"]] == [
        ("Ed25519", "active"),
        ("EdDSA", "retired"),
    ]
    for verify in KITS.values():
        assert verifies(verify, jwks, old["jws"], b"old", "alpha")
        assert verifies(verify, jwks, new["jws"], b"new", "alpha")


def test_data_that_is_not_utf8_is_signed_as_given(cli: Cli) -> None:
    cli.run("keys", "create", "--tenant", "alpha", "--purpose", "signing")
    raw = b"\xff\xfe invoice \x80"
    done = subprocess.run(
        [sys.executable, "-m", "tenantkeys", "sign", "--tenant", "alpha", b"--data", raw],
        env=cli.env,
        cwd=cli.cwd,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    signature = json.loads(done.stdout)
    assert signature["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    jwks = cli.json("jwks", "--tenant", "alpha")
    for verify in KITS.values():
        assert verifies(verify, jwks, signature["jws"], raw, "alpha")


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
        (["sign", "--tenant", "alpha", "--canonical-json", "--data", "{"], "TK-INVALID-JSON"),
        # Bytes 0xff 0xfe (argv is bytes; Python shows them as lone surrogates).
        (
            ["sign", "--tenant", "alpha", "--canonical-json", "--data", "\udcff\udcfe"],
            "TK-INVALID-JSON",
        ),
        (
            ["sign", "--tenant", "alpha", "--canonical-json", "--data", "9007199254740993"],
            "TK-JSON-NOT-I-JSON",
        ),
        (
            ["sign", "--tenant", "alpha", "--canonical-json", "--data", '{"a":1,"a":2}'],
            "TK-JSON-NOT-I-JSON",
        ),
        (["sign", "--tenant", "alpha", "--canonical-json", "--data", "[" * 32 + "]" * 32], None),
        (
            ["sign", "--tenant", "alpha", "--canonical-json", "--file", "deep.json"],
            "TK-JSON-TOO-DEEP",
        ),
        (["keys", "create", "--tenant", "alpha", "--purpose", "mining"], "TK-INVALID-PURPOSE"),
        (["nonsense"], "TK-INVALID-ARGUMENT"),
    ],
)
def test_bad_input_is_one_coded_line_without_traceback(
    cli: Cli, args: list[str], code: str | None
) -> None:
    cli.env["TENANTKEYS_MAX_PAYLOAD_BYTES"] = "64"
    cli.run("keys", "create", "--tenant", "alpha", "--purpose", "signing")
    if code is None:  # a control: canonical JSON that fits is signed
        cli.run(*args)
        return
    if "deep.json" in args:  # one level past the depth limit, well within the size limit
        cli.env["TENANTKEYS_MAX_PAYLOAD_BYTES"] = "4096"
        (cli.cwd / "deep.json").write_text("[" * 129 + "]" * 129)
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
    out = cli.json("config", "check", "--json")
    assert out["ok"] is True and out["provider"] == "local"
    assert "f" * 64 not in json.dumps(out)
    assert out["settings"]["TENANTKEYS_ADMIN_TOKEN_SHA256"] == "***"
    table = cli.run("config", "check").stdout
    assert "TENANTKEYS_ADMIN_TOKEN_SHA256" in table and "f" * 64 not in table
    assert table.startswith("settings OK: provider local")


def test_config_check_lists_only_variables_that_exist(cli: Cli) -> None:
    """Every name it prints is one the settings read (prometheus-client's own included)."""
    from tenantkeys.config import Settings
    from tenantkeys.providers.local import LocalSettings

    cli.env["TENANTKEYS_CACHE_TTL_SECONDS"] = "3600"
    out = cli.json("config", "check", "--json")
    known = set(Settings.variables()) | {"TENANTKEYS_LOCAL_MASTER_KEY_FILE"}
    assert set(out["settings"]) <= known, set(out["settings"]) - known
    assert "PROMETHEUS_MULTIPROC_DIR" in out["settings"]
    assert "TENANTKEYS_PROMETHEUS_MULTIPROC_DIR" not in out["settings"]
    assert set(LocalSettings.model_fields) == {"master_key_file"}
    warned = " ".join(out["warnings"])
    for risky in ("TENANTKEYS_KMS_PROVIDER=local", "TENANTKEYS_ADMIN_TOKEN_SHA256", "3600"):
        assert risky in warned, (risky, out["warnings"])
