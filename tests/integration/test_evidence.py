"""Offline evidence bundles end to end (docs/evidence.md), with the real ``tenantkeys`` command.

Keys live in a real SQLite key store (local KMS, L2 on the real Redis); timestamps come from a
real RFC 3161 TSA (``openssl ts -reply``, tests/integration/tsa.py). The bundle is then checked
with the key store moved away, no TENANTKEYS_* variable, and no network at all (a network
namespace of its own, ``unshare -rn``): by ``tenantkeys evidence verify`` and by the
independent script of docs/evidence.md, read from the page as it stands.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tenantkeys.signing.timestamps import request_timestamp
from tests.conftest import service_missing
from tests.integration.cli_runner import CODED_LINE
from tests.integration.test_cli_jose import Cli, cli
from tests.integration.tsa import LocalTsa, local_tsa, make_pki

pytestmark = pytest.mark.integration
__all__ = ["cli", "local_tsa"]  # the fixtures, imported for the tests below

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "evidence.md"
SCRIPT = re.compile(r"<!-- evidence-script -->\n```python\n(?P<code>.*?)\n```", re.S)
SCRIPT_MAX_LINES = 50
NO_PROOF = "key since revoked; no proof of signing time"


def doc_script(tmp_path: Path) -> Path:
    found = SCRIPT.search(DOC.read_text())
    assert found, f"{DOC} has no <!-- evidence-script --> block"
    code = found["code"]
    assert len(code.splitlines()) <= SCRIPT_MAX_LINES, "the independent verifier grew past 50"
    assert "tenantkeys" not in code.replace("tenantkeys-evidence/1", ""), "it must not import us"
    path = tmp_path / "verify_bundle.py"
    path.write_text(code + "\n")
    return path


def offline(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` in a network namespace with no interface up and no TENANTKEYS_* setting."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode
    ):
        service_missing("unshare -rn (a network namespace without network)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKEYS_")}
    return subprocess.run(
        ["unshare", "-rn", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def verify_cli(bundle: Path, cwd: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = offline(
        [sys.executable, "-m", "tenantkeys", "evidence", "verify", str(bundle), "--json", *extra],
        cwd,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def verify_script(script: Path, bundle: Path, cwd: Path) -> tuple[int, dict[str, str]]:
    done = offline([sys.executable, str(script), str(bundle)], cwd)
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    return done.returncode, lines


def sign(cli: Cli, tmp_path: Path, tenant: str, name: str, data: bytes, *flags: str) -> dict:
    (tmp_path / name).write_bytes(data)
    record = cli.json("sign", "--tenant", tenant, "--file", str(tmp_path / name), *flags)
    assert isinstance(record, dict)
    return record


def rewrite(
    bundle: Path, out: Path, change: dict[str, bytes], *, drop: str = "", manifest: bool = True
) -> None:
    """A copy of ``bundle`` with members replaced (and ``drop`` left out); the manifest's
    digests follow when ``manifest``, as a forger would make them."""
    with zipfile.ZipFile(bundle) as source:
        members = {name: source.read(name) for name in source.namelist() if name != drop}
    members.update(change)
    if manifest:
        data = json.loads(members["manifest.json"])
        data["files"].pop(drop, None)
        for name, content in change.items():
            data["files"][name] = hashlib.sha256(content).hexdigest()
        members["manifest.json"] = json.dumps(data).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target:
        for name, content in members.items():
            target.writestr(name, content)
    out.write_bytes(buffer.getvalue())


def test_bundle_verified_offline_by_the_cli_and_by_the_doc_script(
    cli: Cli, local_tsa: LocalTsa, tmp_path: Path
) -> None:
    es256 = Cli({**cli.env, "TENANTKEYS_SIGNING_ALGORITHM": "ES256"}, cli.cwd)
    cli.run("keys", "create", "--tenant", "acme")
    es256.run("keys", "create", "--tenant", "beta")
    # Key 1 of acme signs three payloads; the first is stamped now, before any revocation.
    stamped = sign(cli, tmp_path, "acme", "p1.txt", b"invoice 1 paid")
    stamped["timestamp"] = request_timestamp(local_tsa.url, stamped["jws"], timeout=10)
    unstamped = sign(cli, tmp_path, "acme", "p2.json", b'{"b": 1, "a": [1.50]}', "--canonical-json")
    late = sign(cli, tmp_path, "acme", "p3.txt", b"invoice 3 paid")
    cli.run("keys", "rotate", "--tenant", "acme")
    current = sign(cli, tmp_path, "acme", "p4.txt", b"invoice 4 paid")
    other = sign(es256, tmp_path, "beta", "p5.txt", b"beta's report")
    cli.run("keys", "revoke", "--tenant", "acme", "--kid", stamped["kid"])
    # A token taken after the revocation bounds the signing time from above only.
    late["timestamp"] = request_timestamp(local_tsa.url, late["jws"], timeout=10)
    assert local_tsa.answered == 2
    records = [stamped, unstamped, late, current, other]
    (tmp_path / "sigs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    bundle = tmp_path / "bundle.zip"
    payloads = [
        f"--payload={tmp_path / f'p{i}.{ext}'}"
        for i, ext in [(1, "txt"), (2, "json"), (3, "txt"), (4, "txt"), (5, "txt")]
    ]
    summary = cli.json(
        "evidence",
        "export",
        "--out",
        str(bundle),
        "--tsa-ca",
        str(local_tsa.ca_file),
        *payloads,
        str(tmp_path / "sigs.jsonl"),
    )
    assert summary == {
        "path": str(bundle),
        "signatures": 5,
        "payloads": 5,
        "keys": 3,
        "tenants": ["acme", "beta"],
        "hashes_only": False,
        "timestamps": 2,
    }
    # Evidence outlives the service: no key store, no master key, no settings, no network.
    (tmp_path / "keys.db").rename(tmp_path / "gone.db")
    (tmp_path / "master.key").unlink()
    elsewhere = tmp_path / "auditor"
    elsewhere.mkdir()

    status, report = verify_cli(bundle, elsewhere)
    verdicts = [(v["verdict"], v["key_status"]) for v in report["verdicts"]]
    assert verdicts == [
        ("valid", "revoked"),  # revoked later, and the timestamp proves it
        ("revoked-no-proof", "revoked"),  # no timestamp
        ("revoked-no-proof", "revoked"),  # a timestamp after the revocation
        ("valid", "active"),
        ("valid", "active"),
    ], report
    assert status == 1 and report["valid"] is False
    first, second, third = report["verdicts"][:3]
    assert first["timestamp_time"] and "after this signature" in first["reason"]
    assert second["code"] == "TK-EVIDENCE-REVOKED-NO-PROOF" and "no timestamp" in second["reason"]
    assert "not before the revocation" in third["reason"]
    assert not (elsewhere / ".tenantkeys").exists() and not (tmp_path / "keys.db").exists()

    # The auditor's own CA copy replaces the bundle's: another TSA's CA fails the tokens.
    (tmp_path / "other-pki").mkdir()
    other_ca, _, _ = make_pki(tmp_path / "other-pki", name="another")
    status, report = verify_cli(bundle, elsewhere, "--tsa-ca", str(other_ca))
    bad_token = "TK-EVIDENCE-TIMESTAMP-INVALID"
    assert [v["code"] for v in report["verdicts"]] == [
        bad_token,
        "TK-EVIDENCE-REVOKED-NO-PROOF",
        bad_token,
        None,
        None,
    ], report

    script = doc_script(tmp_path)
    status, lines = verify_script(script, bundle, elsewhere)
    assert status == 1
    assert lines == {
        "signatures/1.json": NO_PROOF,  # the script does not check timestamps (openssl does)
        "signatures/2.json": NO_PROOF,
        "signatures/3.json": NO_PROOF,
        "signatures/4.json": "valid",
        "signatures/5.json": "valid",
    }

    # Only the valid ones: both verifiers pass the bundle.
    valid = tmp_path / "valid.zip"
    (tmp_path / "valid.jsonl").write_text(json.dumps(current) + "\n" + json.dumps(other) + "\n")
    cli_env = Cli(
        {**cli.env, "TENANTKEYS_DATABASE_URL": f"sqlite:///{tmp_path / 'gone.db'}"}, tmp_path
    )
    cli_env.run("evidence", "export", "--out", str(valid), *payloads, str(tmp_path / "valid.jsonl"))
    assert verify_cli(valid, elsewhere)[0] == 0
    assert verify_script(script, valid, elsewhere) == (
        0,
        {"signatures/1.json": "valid", "signatures/2.json": "valid"},
    )

    # Tampering: a payload changed (digests updated to match) fails the signature in both.
    altered = tmp_path / "altered.zip"
    digest = current["payload_sha256"]
    forged = b"invoice 4 paid twice"
    forged_digest = hashlib.sha256(forged).hexdigest()
    record = json.dumps({**current, "payload_sha256": forged_digest}).encode()
    rewrite(
        valid,
        altered,
        {f"payloads/{forged_digest}": forged, "signatures/1.json": record},
        drop=f"payloads/{digest}",
    )
    status, report = verify_cli(altered, elsewhere)
    assert status == 1 and report["verdicts"][0]["verdict"] == "invalid"
    assert report["verdicts"][1]["verdict"] == "valid"
    status, lines = verify_script(script, altered, elsewhere)
    assert status == 1 and lines["signatures/1.json"].startswith("invalid")
    assert lines["signatures/2.json"] == "valid"

    # A member changed without its digest: the whole bundle is refused, with a code.
    broken = tmp_path / "broken.zip"
    rewrite(valid, broken, {f"payloads/{digest}": b"x"}, manifest=False)
    done = offline(
        [sys.executable, "-m", "tenantkeys", "evidence", "verify", str(broken)], elsewhere
    )
    assert done.returncode == 2 and done.stdout == ""
    line = CODED_LINE.match(done.stderr.strip())
    assert line and line["code"] == "TK-EVIDENCE-MALFORMED", done.stderr
    assert verify_script(script, broken, elsewhere)[0] != 0


def test_hashes_only_bundle_needs_the_payloads_to_pass(cli: Cli, tmp_path: Path) -> None:
    cli.run("keys", "create", "--tenant", "acme")
    first = sign(cli, tmp_path, "acme", "a.txt", b"private record 1")
    second = sign(cli, tmp_path, "acme", "b.txt", b"private record 2")
    (tmp_path / "sigs.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    bundle = tmp_path / "hashes.zip"
    summary = cli.json(
        "evidence",
        "export",
        "--hashes-only",
        "--tenant",
        "acme",
        "--out",
        str(bundle),
        str(tmp_path / "sigs.jsonl"),
    )
    assert summary["payloads"] == 0 and summary["hashes_only"] is True
    with zipfile.ZipFile(bundle) as archive:
        assert not [n for n in archive.namelist() if n.startswith("payloads/")]
    status, report = verify_cli(bundle, tmp_path)
    assert status == 1
    assert [v["verdict"] for v in report["verdicts"]] == ["payload-missing"] * 2
    status, report = verify_cli(bundle, tmp_path, "--payload", str(tmp_path / "a.txt"))
    assert [v["verdict"] for v in report["verdicts"]] == ["valid", "payload-missing"]
    status, report = verify_cli(
        bundle, tmp_path, "--payload", str(tmp_path / "a.txt"), "--payload", str(tmp_path / "b.txt")
    )
    assert status == 0 and report["valid"] is True


def test_export_refuses_what_would_make_a_bad_bundle(
    cli: Cli, local_tsa: LocalTsa, tmp_path: Path
) -> None:
    cli.run("keys", "create", "--tenant", "acme")
    record = sign(cli, tmp_path, "acme", "a.txt", b"record")
    (tmp_path / "sig.json").write_text(json.dumps(record))
    stamped = {**record, "timestamp": request_timestamp(local_tsa.url, record["jws"], timeout=10)}
    (tmp_path / "stamped.json").write_text(json.dumps(stamped))
    (tmp_path / "pki").mkdir()
    other_ca, _, _ = make_pki(tmp_path / "pki", name="another")
    (tmp_path / "wrong.txt").write_bytes(b"another record")
    forged = {**record, "kid": "A" * 43}
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    (tmp_path / "junk.jsonl").write_text('{"jws": "a.b.c"}\nnot json\n')
    out = str(tmp_path / "out.zip")
    cases = {
        "TK-EVIDENCE-INPUT": ["--payload", str(tmp_path / "wrong.txt"), str(tmp_path / "sig.json")],
        "TK-EVIDENCE-INPUT ": [str(tmp_path / "forged.json"), "--hashes-only"],
        "TK-EVIDENCE-INPUT  ": [str(tmp_path / "junk.jsonl")],
        "TK-KEY-NOT-FOUND": ["--tenant", "nobody", str(tmp_path / "sig.json"), "--hashes-only"],
        "TK-EVIDENCE-TIMESTAMP-INVALID": [
            "--tsa-ca",
            str(other_ca),
            "--hashes-only",
            str(tmp_path / "stamped.json"),
        ],
    }
    for code, args in cases.items():
        done = cli.run("evidence", "export", "--out", out, *args, ok=False)
        line = CODED_LINE.match(done.stderr.strip())
        assert done.returncode == 2 and line and line["code"] == code.strip(), (args, done.stderr)
        assert not Path(out).exists()
    assert local_tsa.answered == 1
    # With the TSA's own CA the same record goes in.
    summary = cli.json(
        "evidence",
        "export",
        "--out",
        out,
        "--tsa-ca",
        str(local_tsa.ca_file),
        "--hashes-only",
        str(tmp_path / "stamped.json"),
    )
    assert summary["timestamps"] == 1
    # A store that does not exist is not created by an export (a read path).
    Path(out).unlink()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    elsewhere = Cli({**cli.env, "TENANTKEYS_DATABASE_URL": f"sqlite:///{fresh / 'k.db'}"}, fresh)
    done = elsewhere.run("evidence", "export", "--out", out, str(tmp_path / "sig.json"), ok=False)
    assert "TK-STORE-NOT-FOUND" in done.stderr and not (fresh / "k.db").exists()
